"""Block-level OpSpecs -> torch.nn modules (random weights). Imported only when torch is wanted.

Each block becomes one module built from standard torch layers, so tracing the module
(latbench.lower) recovers the block's operators independently of `ops.expand`.
"""
from __future__ import annotations

import functools

from ..errors import OpError, require
from ..ops import OpSpec

torch = require("torch", "torch")
nn = torch.nn

_ACTS = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hswish": nn.Hardswish,
    "hsigmoid": nn.Hardsigmoid,
    "sigmoid": nn.Sigmoid,
    "swish": nn.SiLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
}


def act_module(name: str) -> nn.Module:
    return _ACTS[name]()


class ConvBNAct(nn.Module):
    """Conv2d, optional BatchNorm2d, optional activation."""

    def __init__(self, cin, cout, kernel, stride=1, padding=None, groups=1, bias=False, bn=True,
                 act="none", dilation=1):
        super().__init__()
        if padding is None:
            padding = (kernel - 1) // 2 * dilation
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, dilation=dilation, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(cout) if bn else None
        self.act = act_module(act) if act != "none" else None

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.act is not None:
            x = self.act(x)
        return x


class SqueezeExcite(nn.Module):
    """Global average pool, 1x1 conv + ReLU, 1x1 conv + gate, multiply (MobileNetV3 / OFA SE)."""

    def __init__(self, channels, hidden, gate="hsigmoid"):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, hidden, 1, bias=True)
        self.relu = nn.ReLU()
        self.expand = nn.Conv2d(hidden, channels, 1, bias=True)
        self.gate = act_module(gate)

    def forward(self, x):
        y = self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))
        return x * y


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand] -> [shuffle] -> kxk depthwise -> [SE] -> 1x1 project -> [+x];
    groups > 1 groups both 1x1 convs and shuffles after the expansion (FBNet / HW-NAS-Bench
    ConvBlock); with se_pos='out' (PaddleSlim LightNAS) the SE runs on the block output:
    relu(out + se(linear_out))."""

    def __init__(self, op: OpSpec):
        super().__init__()
        self.expand = ConvBNAct(op.c, op.mid, 1, groups=op.groups, act=op.act) if op.expand_conv else None
        self.shuffle = channel_shuffle(op.groups) if op.groups > 1 else None
        self.depthwise = ConvBNAct(op.mid, op.mid, op.kernel, op.stride, groups=op.mid, act=op.act)
        self.se = SqueezeExcite(op.mid if op.se_pos == "dw" else op.out, op.se, op.se_act) if op.se else None
        self.se_pos = op.se_pos
        self.project = ConvBNAct(op.mid, op.out, 1, groups=op.groups)
        self.residual = op.residual
        self.out_relu = nn.ReLU() if op.se and op.se_pos == "out" else None

    def forward(self, x):
        y = self.expand(x) if self.expand is not None else x
        if self.shuffle is not None:
            y = self.shuffle(y)
        y = self.depthwise(y)
        if self.se is not None and self.se_pos == "dw":
            y = self.se(y)
        lin = self.project(y)
        out = lin + x if self.residual else lin
        if self.out_relu is not None:
            out = self.out_relu(out + self.se(lin))
        return out


class ResBlock(nn.Module):
    """ResNet basic (two kxk convs) or bottleneck (1x1, kxk, 1x1) block with its shortcut."""

    def __init__(self, op: OpSpec):
        super().__init__()
        if op.kind == "bottleneck":
            self.body = nn.Sequential(
                ConvBNAct(op.c, op.mid, 1, act=op.act),
                ConvBNAct(op.mid, op.mid, op.kernel, op.stride, act=op.act),
                ConvBNAct(op.mid, op.out, 1),
            )
        else:
            self.body = nn.Sequential(
                ConvBNAct(op.c, op.out, op.kernel, op.stride, act=op.act),
                ConvBNAct(op.out, op.out, op.kernel),
            )
        self.shortcut = ConvBNAct(op.c, op.out, 1, op.stride) if op.proj else None
        self.act = act_module(op.act)

    def forward(self, x):
        y = self.body(x)
        s = self.shortcut(x) if self.shortcut is not None else x
        return self.act(y + s)


class LinearAct(nn.Module):
    """Flatten, Linear, optional activation."""

    def __init__(self, op: OpSpec):
        super().__init__()
        self.fc = nn.Linear(op.c, op.out, bias=op.bias)
        self.act = act_module(op.act) if op.act != "none" else None

    def forward(self, x):
        x = self.fc(torch.flatten(x, 1))
        return self.act(x) if self.act is not None else x


class Eltwise(nn.Module):
    """x op other: an eltwise op built alone takes its second operand as a constant buffer
    (shape (n, c, 1, 1) when it broadcasts, as the SE multiply does)."""

    def __init__(self, kind: str, other_shape: tuple[int, ...]):
        super().__init__()
        self.kind = kind
        self.register_buffer("other", torch.randn(*other_shape))

    def forward(self, x):
        y = self.other
        if self.kind == "add":
            return x + y
        if self.kind == "mul":
            return x * y
        return torch.maximum(x, y)


def channel_shuffle(groups: int) -> nn.Module:
    """torch.nn.ChannelShuffle (a torch.nn leaf, so torch.fx keeps it one call), made exportable
    to ONNX first: the TorchScript exporter has no symbolic for aten::channel_shuffle."""
    register_onnx_symbolics()
    return nn.ChannelShuffle(groups)


@functools.cache
def register_onnx_symbolics() -> None:
    """Export aten::channel_shuffle as Reshape (n, g, c/g, h, w) -> Transpose -> Reshape (n, c, h, w),
    the graph device_agents.onnx_build times and latbench.lower maps back to a shuffle op (once)."""
    from torch.onnx import register_custom_op_symbolic, symbolic_helper as sh

    @sh.parse_args("v", "i")
    def symbolic(g, x, groups):
        sizes = sh._get_tensor_sizes(x)
        if sizes is None or len(sizes) != 4 or None in sizes:
            return sh._unimplemented("channel_shuffle", "a 4-D input of known shape", x)
        n, c, h, w = sizes
        five = g.op("Constant", value_t=torch.tensor([n, groups, c // groups, h, w], dtype=torch.int64))
        four = g.op("Constant", value_t=torch.tensor([n, c, h, w], dtype=torch.int64))
        t = g.op("Transpose", g.op("Reshape", x, five), perm_i=[0, 2, 1, 3, 4])
        return g.op("Reshape", t, four)

    register_custom_op_symbolic("aten::channel_shuffle", symbolic, 9)  # opset 9 and every later one


def module_for(op: OpSpec) -> nn.Module:
    """One torch module computing `op` (op or block granularity)."""
    k = op.kind
    if k == "conv":
        return ConvBNAct(op.c, op.out, op.kernel, op.stride, op.padding, op.groups, op.bias, op.bn,
                         op.act, op.dilation)
    if k == "mbconv":
        return MBConv(op)
    if k in ("bottleneck", "basic"):
        return ResBlock(op)
    if k == "linear":
        return LinearAct(op)
    if k == "pool":
        if op.global_pool:
            return nn.AdaptiveAvgPool2d(1) if op.pool == "avg" else nn.AdaptiveMaxPool2d(1)
        if op.pool == "max":
            return nn.MaxPool2d(op.kernel, op.stride, op.padding, ceil_mode=op.ceil_mode)
        return nn.AvgPool2d(op.kernel, op.stride, op.padding, ceil_mode=op.ceil_mode,
                            count_include_pad=op.count_pad)
    if k == "activation":
        return act_module(op.act)
    if k == "batch_norm":
        bn = nn.BatchNorm2d(op.c)
        return nn.Sequential(bn, act_module(op.act)) if op.act != "none" else bn
    if k == "softmax":
        return nn.Softmax(dim=op.axis)
    if k == "eltwise":
        return Eltwise(op.eltwise, (op.n, op.c, 1, 1) if op.broadcast else op.in_shape)
    if k == "shuffle":
        return channel_shuffle(op.groups)
    raise OpError(f"no torch module for op kind {k!r}")


def build_blocks(blocks: list[OpSpec]) -> nn.Module:
    """nn.Sequential of one module per block, in eval mode."""
    return nn.Sequential(*(module_for(b) for b in blocks)).eval()

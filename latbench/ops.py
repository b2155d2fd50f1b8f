"""OpSpec: one operator (or fused block) configuration, its canonical key and its cost figures.

The key is the only join between enumerate, store and predict: equal ops have equal keys.
Shapes are NCHW; FLOPs count 2 per multiply-add (as torch's FlopCounterMode does), bytes assume
float32 and count input + weights + output.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
import functools
from functools import cached_property
from typing import Any

from .errors import OpError

OP_KINDS = ("conv", "pool", "eltwise", "softmax", "activation", "batch_norm", "linear", "shuffle", "node")
BLOCK_KINDS = ("mbconv", "bottleneck", "basic")
KINDS = OP_KINDS + BLOCK_KINDS
ACTIVATIONS = ("relu", "relu6", "hswish", "hsigmoid", "sigmoid", "swish", "tanh", "gelu")
ELTWISE = ("add", "mul", "max")
POOLS = ("max", "avg")
# Once-for-All's names for the non-MBConv layers of its MobileNetV3 (block-level table keys).
OFA_ROLES = ("Conv", "Conv_1", "Conv_2", "AvgPool2D", "Logits")
BYTES_PER_ELEMENT = 4


def make_divisible(v: float, divisor: int = 8, min_val: int | None = None) -> int:
    """Round channels the way MobileNet / Once-for-All do (never down by more than 10%)."""
    if min_val is None:
        min_val = divisor
    new_v = max(min_val, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return int(new_v)


def conv_out(size: int, kernel: int, stride: int, padding: int, dilation: int = 1, ceil: bool = False) -> int:
    """Spatial output size of a conv or pool window (symmetric padding)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if ceil:
        out = -(-span // stride) + 1
        # torch/paddle rule: the last window must start inside the input or left padding
        if (out - 1) * stride >= size + padding:
            out -= 1
        return out
    return span // stride + 1


@dataclass(frozen=True)
class OpSpec:
    """One operator configuration. Fields that do not apply to `kind` keep their defaults.

    Block kinds (mbconv, bottleneck, basic) describe a small fused subgraph; `expand(op)` lists
    its operators. `role` names an Once-for-All layer (Conv, Conv_1, ...) so its key is OFA's.
    """

    kind: str
    n: int
    c: int
    h: int
    w: int
    out: int = 0  # output channels (conv, blocks) or features (linear)
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1  # conv groups; shuffle groups; mbconv: groups of its two 1x1 convs (shuffled between)
    bias: bool = False
    bn: bool = False  # conv followed by batch norm (folded, as runtimes run it)
    act: str = "none"  # fused activation; for kind=activation the activation itself
    pool: str = ""  # max | avg
    global_pool: bool = False
    ceil_mode: bool = False
    count_pad: bool = False  # avg pool divides by the full window, padding included
    eltwise: str = ""  # add | mul | max
    broadcast: bool = False  # eltwise: second operand is (n, c, 1, 1)
    axis: int = 1  # softmax
    mid: int = 0  # mbconv expanded channels / bottleneck inner channels
    expand_conv: bool = True  # mbconv has its 1x1 expansion conv
    se: int = 0  # squeeze-excite hidden channels, 0 = no SE
    se_act: str = "hsigmoid"  # SE gate
    se_pos: str = "dw"  # dw: SE after the depthwise conv (MobileNetV3); out: on the block output (LightNAS)
    residual: bool = False
    proj: bool = False  # resnet block with a 1x1 conv + BN shortcut
    role: str = ""
    node: str = ""  # kind=node: the node's key (latbench.nodes), which describes it whole

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        k = self.kind
        if self.se == 0 and (self.se_act != "hsigmoid" or self.se_pos != "dw"):
            # SE details mean nothing without an SE: normalise so equal ops compare equal
            object.__setattr__(self, "se_act", "hsigmoid")
            object.__setattr__(self, "se_pos", "dw")
        if self.count_pad and (self.padding == 0 or self.global_pool):
            object.__setattr__(self, "count_pad", False)  # no padding: both divisors agree
        if k not in KINDS:
            raise OpError(f"unknown op kind {k!r} (known: {', '.join(KINDS)})")
        if k == "node" or self.node:
            self._check_node()
            return
        for name in ("n", "c", "h", "w"):
            if getattr(self, name) < 1:
                raise OpError(f"{k}: {name} must be >= 1, got {getattr(self, name)}")
        if k in ("conv", "linear") + BLOCK_KINDS and self.out < 1:
            raise OpError(f"{k}: out channels must be >= 1, got {self.out}")
        if self.kernel < 1 or self.stride < 1 or self.dilation < 1 or self.padding < 0:
            raise OpError(f"{k}: kernel/stride/dilation must be >= 1 and padding >= 0")
        if k == "conv":
            if self.groups < 1 or self.c % self.groups or self.out % self.groups:
                raise OpError(f"conv: groups={self.groups} must divide in={self.c} and out={self.out}")
        if k == "shuffle" and (self.groups < 2 or self.c % self.groups):
            raise OpError(f"shuffle: groups={self.groups} must be >= 2 and divide the {self.c} channels")
        if self.act not in ("none",) + ACTIVATIONS:
            raise OpError(f"{k}: unknown activation {self.act!r} (known: {', '.join(ACTIVATIONS)})")
        if k == "activation" and self.act == "none":
            raise OpError("activation: act must name the activation")
        if k == "pool" and self.pool not in POOLS:
            raise OpError(f"pool: type must be one of {POOLS}, got {self.pool!r}")
        if k == "eltwise" and self.eltwise not in ELTWISE:
            raise OpError(f"eltwise: type must be one of {ELTWISE}, got {self.eltwise!r}")
        if k == "mbconv":
            if self.mid < 1:
                raise OpError("mbconv: mid (expanded channels) must be >= 1")
            if not self.expand_conv and self.mid != self.c:
                raise OpError("mbconv: without an expansion conv mid must equal in channels")
            if self.se_pos not in ("dw", "out") or self.se_act not in ACTIVATIONS:
                raise OpError("mbconv: se_pos must be dw|out and se_act an activation")
            g = self.groups
            if g < 1 or self.c % g or self.mid % g or self.out % g:
                raise OpError(f"mbconv: groups={g} must divide in={self.c}, mid={self.mid} and out={self.out}")
            if g > 1 and not self.expand_conv:
                raise OpError("mbconv: groups > 1 needs the expansion conv (the channel shuffle follows it)")
        if k in ("bottleneck",) and self.mid < 1:
            raise OpError("bottleneck: mid channels must be >= 1")
        if k in BLOCK_KINDS and self.residual and not self.proj:
            oh, ow = self.out_hw
            if (self.c, self.h, self.w) != (self.out, oh, ow):
                raise OpError(f"{k}: identity residual needs equal input and output shapes")
        if self.role and self.role not in OFA_ROLES:
            raise OpError(f"unknown role {self.role!r} (known: {', '.join(OFA_ROLES)})")
        oh, ow = self.out_hw
        if oh < 1 or ow < 1:
            raise OpError(f"{k}: output would be empty for input {self.h}x{self.w}")

    def _check_node(self) -> None:
        """A node op is its node key and the shape derived from it, nothing else."""
        if self.kind != "node" or not self.node:
            raise OpError(f"{self.kind}: only a node op has a node description")
        spec = self.graph_node
        if self.in_shape != spec.display_shape:
            raise OpError(f"node: shape {self.in_shape} disagrees with its node's {spec.display_shape}")
        if any(getattr(self, f.name) != f.default for f in _ATTR_FIELDS if f.name != "node"):
            raise OpError("node: a node op has no fields but its node description")

    @property
    def graph_node(self):
        """kind=node: the latbench.nodes.NodeSpec this op times (parsed once per key)."""
        from .nodes import parse_node

        return parse_node(self.node, "node op")

    # ------------------------------------------------------------------ shapes
    @property
    def in_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.h, self.w)

    @property
    def out_hw(self) -> tuple[int, int]:
        k = self.kind
        if k == "linear":
            return (1, 1)
        if k == "pool" and self.global_pool:
            return (1, 1)
        if k in ("conv", "pool", "mbconv", "bottleneck", "basic"):
            pad = self.padding if k in ("conv", "pool") else (self.kernel - 1) // 2
            ceil = self.ceil_mode if k == "pool" else False
            dil = self.dilation if k == "conv" else 1
            return (
                conv_out(self.h, self.kernel, self.stride, pad, dil, ceil),
                conv_out(self.w, self.kernel, self.stride, pad, dil, ceil),
            )
        return (self.h, self.w)

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        if self.kind == "node":
            return self.graph_node.display_out_shape
        oh, ow = self.out_hw
        if self.kind in ("conv", "linear") + BLOCK_KINDS:
            return (self.n, self.out, oh, ow)
        return (self.n, self.c, oh, ow)

    # ------------------------------------------------------------------ key
    @cached_property
    def key(self) -> str:
        """Canonical, human-readable string; equal ops have equal keys."""
        return self.node if self.kind == "node" else _key(self)

    # ------------------------------------------------------------------ cost figures
    @cached_property
    def macs(self) -> int:
        """Multiply-adds of conv and linear parts (0 for other ops)."""
        if self.kind in BLOCK_KINDS:
            return sum(o.macs for o in expand(self))
        if self.kind == "node":
            return self.graph_node.macs
        n, oc, oh, ow = self.out_shape
        if self.kind == "conv":
            return n * oc * oh * ow * (self.c // self.groups) * self.kernel * self.kernel
        if self.kind == "linear":
            return n * self.c * self.out
        return 0

    @cached_property
    def flops(self) -> int:
        """2 per multiply-add for conv/linear (bias not counted, as FlopCounterMode); elementwise
        ops count one per output element (bn: 2, softmax: 3, pool: window size)."""
        if self.kind in BLOCK_KINDS or self.bn or (self.kind in ("conv", "linear") and self.act != "none"):
            return sum(o.flops for o in expand(self))
        if self.kind in ("conv", "linear"):
            return 2 * self.macs
        if self.kind == "node":
            return self.graph_node.flops
        if self.kind == "shuffle":
            return 0  # a permutation of channels: data movement only
        elems = _prod(self.out_shape)
        if self.kind == "batch_norm":
            return 2 * elems + (elems if self.act != "none" else 0)
        if self.kind == "softmax":
            return 3 * elems
        if self.kind == "pool":
            window = self.h * self.w if self.global_pool else self.kernel * self.kernel
            return elems * window
        return elems

    @cached_property
    def params(self) -> int:
        """Trainable parameters (BN: scale and shift)."""
        k = self.kind
        if k == "node":
            return self.graph_node.params
        if k in BLOCK_KINDS or (k == "conv" and self.bn):
            return sum(o.params for o in expand(self))
        if k == "conv":
            return self.out * (self.c // self.groups) * self.kernel**2 + (self.out if self.bias else 0)
        if k == "linear":
            return self.c * self.out + (self.out if self.bias else 0)
        if k == "batch_norm":
            return 2 * self.c
        return 0

    @cached_property
    def bytes(self) -> int:
        """float32 bytes moved: inputs + weights + output (a node: every tensor in its dtype)."""
        if self.kind == "node":
            return self.graph_node.bytes
        inputs = _prod(self.in_shape)
        if self.kind == "eltwise":
            inputs += self.n * self.c if self.broadcast else inputs
        return BYTES_PER_ELEMENT * (inputs + self.params + _prod(self.out_shape))

    # ------------------------------------------------------------------ plain data
    def to_dict(self) -> dict[str, Any]:
        """Kind, shape and every field that differs from its default."""
        d: dict[str, Any] = {"kind": self.kind, "n": self.n, "c": self.c, "h": self.h, "w": self.w}
        for f in _ATTR_FIELDS:
            v = getattr(self, f.name)
            if v != f.default:
                d[f.name] = v
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OpSpec":
        known = _FIELDS
        unknown = set(d) - set(known)
        if unknown:
            raise OpError(f"unknown OpSpec field(s): {', '.join(sorted(unknown))}")
        kw = {}
        for name, v in d.items():
            typ = known[name].type
            if typ == "bool":
                v = bool(v) if not isinstance(v, str) else v.lower() in ("1", "true", "yes")
            elif typ == "int":
                v = int(v)
            kw[name] = v
        return cls(**kw)

    def replace(self, **changes: Any) -> "OpSpec":
        return dataclasses.replace(self, **changes)


_FIELDS = {f.name: f for f in fields(OpSpec)}  # read once: from_dict and to_dict run per row
_ATTR_FIELDS = fields(OpSpec)[5:]  # the fields after kind and shape


def _prod(shape) -> int:
    p = 1
    for s in shape:
        p *= s
    return p


# ---------------------------------------------------------------------- constructors
def conv(shape, out, kernel=1, stride=1, padding=None, dilation=1, groups=1, bias=False, bn=False,
         act="none", role="") -> OpSpec:
    """A conv; padding defaults to 'same' for odd kernels ((k-1)//2 * dilation)."""
    n, c, h, w = shape
    if padding is None:
        padding = (kernel - 1) // 2 * dilation
    return OpSpec("conv", n, c, h, w, out=out, kernel=kernel, stride=stride, padding=padding,
                  dilation=dilation, groups=groups, bias=bias, bn=bn, act=act, role=role)


def pool(shape, pool_type, kernel=1, stride=1, padding=0, global_pool=False, ceil_mode=False,
         count_pad=False, role="") -> OpSpec:
    n, c, h, w = shape
    if global_pool:
        kernel, stride, padding, ceil_mode = h if h == w else max(h, w), 1, 0, False
    return OpSpec("pool", n, c, h, w, pool=pool_type, kernel=kernel, stride=stride, padding=padding,
                  global_pool=global_pool, ceil_mode=ceil_mode, count_pad=count_pad, role=role)


def node(spec) -> OpSpec:
    """The op that times one runtime graph node (a latbench.nodes.NodeSpec)."""
    n, c, h, w = spec.display_shape
    return OpSpec("node", n, c, h, w, node=spec.key)


def eltwise(shape, eltwise_type, broadcast=False) -> OpSpec:
    n, c, h, w = shape
    return OpSpec("eltwise", n, c, h, w, eltwise=eltwise_type, broadcast=broadcast)


def activation(shape, act) -> OpSpec:
    n, c, h, w = shape
    return OpSpec("activation", n, c, h, w, act=act)


def batch_norm(shape, act="none") -> OpSpec:
    n, c, h, w = shape
    return OpSpec("batch_norm", n, c, h, w, act=act)


def softmax(shape, axis=1) -> OpSpec:
    n, c, h, w = shape
    return OpSpec("softmax", n, c, h, w, axis=axis)


def linear(n, in_features, out_features, bias=True, act="none", role="") -> OpSpec:
    return OpSpec("linear", n, in_features, 1, 1, out=out_features, bias=bias, act=act, role=role)


def mbconv(shape, out, mid, kernel, stride, act, se=0, se_act="hsigmoid", se_pos="dw",
           residual=False, expand_conv=True, groups=1) -> OpSpec:
    """An inverted residual block; `groups` > 1 groups its two 1x1 convs and shuffles the
    channels after the expansion (FBNet's g2 blocks)."""
    n, c, h, w = shape
    return OpSpec("mbconv", n, c, h, w, out=out, mid=mid, kernel=kernel, stride=stride,
                  padding=(kernel - 1) // 2, act=act, se=se, se_act=se_act, se_pos=se_pos,
                  residual=residual, expand_conv=expand_conv, groups=groups)


def shuffle(shape, groups) -> OpSpec:
    """ShuffleNet's channel shuffle: (n, g, c/g, h, w) -> (n, c/g, g, h, w), viewed as (n, c, h, w)."""
    n, c, h, w = shape
    return OpSpec("shuffle", n, c, h, w, groups=groups)


def resblock(kind, shape, out, kernel, stride, mid=0, act="relu") -> OpSpec:
    """A ResNet basic or bottleneck block; a projection shortcut when the shape changes."""
    n, c, h, w = shape
    proj = stride != 1 or c != out
    return OpSpec(kind, n, c, h, w, out=out, mid=mid, kernel=kernel, stride=stride,
                  padding=(kernel - 1) // 2, act=act, residual=True, proj=proj)


# ---------------------------------------------------------------------- expansion
def expand(op: OpSpec) -> list[OpSpec]:
    """The op-granularity operators of `op`, in execution order (an op expands to itself).

    A conv with a folded BN / fused activation expands to conv, batch_norm, activation, which is
    how a framework without fusion (torch eager) runs it.
    """
    return list(_expand_cached(op))


@functools.lru_cache(maxsize=1 << 16)
def _expand_cached(op: OpSpec) -> tuple[OpSpec, ...]:
    """expand, computed once per distinct op: decoding configs at op granularity (a search, a
    predictor) expands the same few thousand blocks over and over (OpSpec is frozen, all fields compared)."""
    return tuple(_expand(op))


def _expand(op: OpSpec) -> list[OpSpec]:
    k = op.kind
    if k == "conv":
        if not op.bn and op.act == "none":
            return [op.replace(role="")] if op.role else [op]
        base = op.replace(bn=False, act="none", role="")
        out = [base]
        if op.bn:
            out.append(batch_norm(base.out_shape))
        if op.act != "none":
            out.append(activation(base.out_shape, op.act))
        return out
    if k == "linear":
        if op.act == "none" and not op.role:
            return [op]
        base = op.replace(act="none", role="")
        return [base] + ([activation(base.out_shape, op.act)] if op.act != "none" else [])
    if k == "pool" and op.role:
        return [op.replace(role="")]
    if k == "batch_norm" and op.act != "none":
        return [op.replace(act="none"), activation(op.in_shape, op.act)]
    if k == "mbconv":
        return _expand_mbconv(op)
    if k in ("bottleneck", "basic"):
        return _expand_resblock(op)
    return [op]


def _se_ops(shape, hidden, gate) -> list[OpSpec]:
    n, c, h, w = shape
    pooled = (n, c, 1, 1)
    return [
        pool(shape, "avg", global_pool=True),
        conv(pooled, hidden, bias=True),
        activation((n, hidden, 1, 1), "relu"),
        conv((n, hidden, 1, 1), c, bias=True),
        activation(pooled, gate),
        eltwise(shape, "mul", broadcast=True),
    ]


def _expand_mbconv(op: OpSpec) -> list[OpSpec]:
    ops: list[OpSpec] = []
    x = op.in_shape
    if op.expand_conv:
        ops += expand(conv(x, op.mid, 1, groups=op.groups, bn=True, act=op.act))
        x = (op.n, op.mid, op.h, op.w)
        if op.groups > 1:
            ops.append(shuffle(x, op.groups))
    dw = conv(x, op.mid, op.kernel, op.stride, groups=op.mid, bn=True, act=op.act)
    ops += expand(dw)
    x = dw.out_shape
    if op.se and op.se_pos == "dw":
        ops += _se_ops(x, op.se, op.se_act)
    proj = conv(x, op.out, 1, groups=op.groups, bn=True)
    ops += expand(proj)
    y = proj.out_shape
    if op.residual:
        ops.append(eltwise(y, "add"))
    if op.se and op.se_pos == "out":
        ops += _se_ops(y, op.se, op.se_act)
        ops.append(eltwise(y, "add"))
        ops.append(activation(y, "relu"))
    return ops


def _expand_resblock(op: OpSpec) -> list[OpSpec]:
    ops: list[OpSpec] = []
    x = op.in_shape
    if op.kind == "bottleneck":
        a = conv(x, op.mid, 1, bn=True, act=op.act)
        b = conv(a.out_shape, op.mid, op.kernel, op.stride, bn=True, act=op.act)
        c = conv(b.out_shape, op.out, 1, bn=True)
        chain = [a, b, c]
    else:
        a = conv(x, op.out, op.kernel, op.stride, bn=True, act=op.act)
        b = conv(a.out_shape, op.out, op.kernel, bn=True)
        chain = [a, b]
    for cv in chain:
        ops += expand(cv)
    y = chain[-1].out_shape
    if op.proj:
        ops += expand(conv(x, op.out, 1, op.stride, bn=True))
    ops.append(eltwise(y, "add"))
    ops.append(activation(y, op.act))
    return ops


# ---------------------------------------------------------------------- keys
def _b(v: bool) -> int:
    return 1 if v else 0


def _nchw(op: OpSpec) -> str:
    if op.kind == "linear":
        return f"{op.n}x{op.c}"
    return f"{op.n}x{op.c}x{op.h}x{op.w}"


def _hwc(shape) -> str:
    n, c, h, w = shape
    return f"{h}x{w}x{c}"


def is_ofa_mbconv(op: OpSpec) -> bool:
    """True when an mbconv follows Once-for-All's conventions, so OFA's key describes it fully."""
    return (
        op.kind == "mbconv" and op.n == 1 and op.act in ("relu", "hswish")
        and op.expand_conv == (op.mid != op.c) and op.se_pos == "dw" and op.se_act == "hsigmoid"
        and op.se in (0, make_divisible(op.mid // 4, 8)) and op.groups == 1
    )


def _key(op: OpSpec) -> str:
    k = op.kind
    if op.role:
        if op.role == "Logits":
            return f"Logits-input:1x1x{op.c}-output:{op.out}"
        return f"{op.role}-input:{_hwc(op.in_shape)}-output:{_hwc(op.out_shape)}"
    if k == "mbconv" and is_ofa_mbconv(op):
        return (f"expanded_conv-input:{_hwc(op.in_shape)}-output:{_hwc(op.out_shape)}"
                f"-expand:{op.mid}-kernel:{op.kernel}-stride:{op.stride}-idskip:{_b(op.residual)}"
                f"-se:{_b(op.se > 0)}-hs:{_b(op.act == 'hswish')}")
    parts = [k, f"input:{_nchw(op)}"]
    if k == "conv":
        parts += [f"out:{op.out}", f"k:{op.kernel}", f"s:{op.stride}", f"p:{op.padding}",
                  f"d:{op.dilation}", f"g:{op.groups}", f"bias:{_b(op.bias)}", f"bn:{_b(op.bn)}",
                  f"act:{op.act}"]
    elif k == "linear":
        parts += [f"out:{op.out}", f"bias:{_b(op.bias)}", f"act:{op.act}"]
    elif k == "pool":
        parts += [f"type:{op.pool}", f"global:{_b(op.global_pool)}", f"k:{op.kernel}",
                  f"s:{op.stride}", f"p:{op.padding}", f"ceil:{_b(op.ceil_mode)}",
                  f"countpad:{_b(op.count_pad)}"]
    elif k == "eltwise":
        parts += [f"type:{op.eltwise}", f"bcast:{_b(op.broadcast)}"]
    elif k == "activation":
        parts += [f"type:{op.act}"]
    elif k == "batch_norm":
        parts += [f"act:{op.act}"]
    elif k == "softmax":
        parts += [f"axis:{op.axis}"]
    elif k == "shuffle":
        parts += [f"g:{op.groups}"]
    elif k == "mbconv":
        parts += [f"out:{op.out}", f"mid:{op.mid}", f"k:{op.kernel}", f"s:{op.stride}"]
        if op.groups > 1:  # only then: every key of an ungrouped block stays as it was
            parts += [f"g:{op.groups}"]
        parts += [f"act:{op.act}", f"expconv:{_b(op.expand_conv)}", f"se:{op.se}"]
        if op.se:
            parts += [f"seact:{op.se_act}", f"sepos:{op.se_pos}"]
        parts += [f"res:{_b(op.residual)}"]
    else:  # resnet blocks
        parts += [f"out:{op.out}"] + ([f"mid:{op.mid}"] if k == "bottleneck" else [])
        parts += [f"k:{op.kernel}", f"s:{op.stride}", f"act:{op.act}", f"proj:{_b(op.proj)}"]
    return "-".join(parts)


def unique(ops) -> list[OpSpec]:
    """Ops in first-seen order without repeats (by key)."""
    seen: dict[str, OpSpec] = {}
    for op in ops:
        seen.setdefault(op.key, op)
    return list(seen.values())


__all__ = [
    "OpSpec", "KINDS", "OP_KINDS", "BLOCK_KINDS", "ACTIVATIONS", "OFA_ROLES", "make_divisible",
    "conv", "pool", "eltwise", "activation", "batch_norm", "softmax", "linear", "mbconv", "shuffle",
    "resblock", "node", "expand", "unique", "is_ofa_mbconv", "conv_out",
]


# ---------------------------------------------------------------------- runtime fusion
@dataclass(frozen=True)
class Fusion:
    """Which op-level patterns a runtime runs as one kernel: conv+BN (folded) and conv+act."""

    name: str
    bn: bool = False
    acts: frozenset = frozenset()


FUSIONS = {
    "none": Fusion("none"),  # torch eager, PaddleSlim op lists: every op on its own
    # ONNX Runtime folds BN at BASIC and fuses Relu/Clip/Sigmoid/Tanh/HardSigmoid into FusedConv
    "ort": Fusion("ort", True, frozenset({"relu", "relu6", "sigmoid", "tanh", "hsigmoid"})),
    "ort-basic": Fusion("ort-basic", True),  # ORT_ENABLE_BASIC folds BN but fuses no activation
    # TFLite has no BN op (converters fold it); converters fuse RELU and RELU6 into conv options
    "tflite": Fusion("tflite", True, frozenset({"relu", "relu6"})),
}


def get_fusion(name: str) -> Fusion:
    """A fusion by name: a FUSIONS entry, or BASE:ACT,ACT,... - BASE's batch-norm folding with the
    activations listed fused into the conv (what the ort agent read off the installed runtime's
    optimised graph when it differs from BASE's list, e.g. 'ort:hsigmoid,hswish,relu,relu6,sigmoid,tanh')."""
    if name in FUSIONS:
        return FUSIONS[name]
    base, sep, listed = name.partition(":")
    acts = frozenset(a for a in listed.split(",") if a)
    if not sep or base not in FUSIONS or not acts <= set(ACTIVATIONS):
        raise OpError(f"unknown fusion {name!r} (known: {', '.join(FUSIONS)}, or BASE:ACT,ACT,... with "
                      f"activations among {', '.join(ACTIVATIONS)})")
    return Fusion(name, FUSIONS[base].bn, acts)


def fusion_name(base: str, acts) -> str:
    """The name of BASE's fusion with `acts` fused: BASE itself when they are BASE's own list."""
    acts = frozenset(acts)
    return base if acts == FUSIONS[base].acts else f"{base}:{','.join(sorted(acts))}"


def fuse(op_list: list[OpSpec], fusion: Fusion | str = "none") -> list[OpSpec]:
    """Merge conv -> batch_norm -> activation runs the way `fusion`'s runtime executes them: the BN
    folded into the conv's bias, the activation fused into the conv."""
    f = get_fusion(fusion) if isinstance(fusion, str) else fusion
    if not f.bn and not f.acts:
        return list(op_list)
    out: list[OpSpec] = []
    for op in op_list:
        prev = out[-1] if out else None
        if prev is not None and prev.kind == "conv" and op.in_shape == prev.out_shape:
            if op.kind == "batch_norm" and f.bn and not prev.bn and prev.act == "none" and op.act == "none":
                # a folded BN leaves a conv with a bias: exactly what an exported graph holds
                out[-1] = prev.replace(bias=True)
                continue
            if op.kind == "activation" and op.act in f.acts and prev.act == "none":
                out[-1] = prev.replace(act=op.act)
                continue
        out.append(op)
    return out

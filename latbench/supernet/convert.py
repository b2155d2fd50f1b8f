"""Convert: turn an ordinary torch model (Conv2d, BatchNorm2d, Linear) into a supernet, as
PaddleSlim's `Convert(supernet(kernel_size=[3, 5, 7], expand_ratio=[1, 2, 4])).convert(model)`.

Each Conv2d with a kernel > 1 gets the largest candidate kernel (with OFA's kernel transform
matrices); every weight layer's widths are multiplied by the largest expand ratio, except the input
channels of the first weight layer and the outputs of the last one; BatchNorm2d layers before the
last weight layer widen with them. The model's own forward is unchanged: each converted layer reads
its active `kernel_size` / `expand_ratio` (set by OFA) and its input width from the tensor it gets.

Unlike PaddleSlim, the original weights are kept: they fill the slice of the original widths (and
the centre of the larger kernel, zero around it), so the subnet at expand ratio 1 computes the
original model's function until training changes it. Widths are elastic per layer: a model whose
layers meet in residual additions must be given equal ratios there (no shortcut analysis is done).
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

from ..errors import UsageError, require
from .layers import DynamicBatchNorm2d, DynamicConv2d, DynamicLinear, centre

torch = require("torch", "torch")
nn = torch.nn
F = torch.nn.functional


class SuperLayer:
    """Mixin of converted layers: `candidate_config` (task -> choices) and the `active` choice."""

    candidate_config: dict[str, list]
    active: dict[str, Any]
    last_in: int = 0

    def _ratio(self) -> float:
        cands = self.candidate_config.get("expand_ratio")
        return self.active.get("expand_ratio", max(cands)) if cands else 1.0


class SuperConv2d(nn.Module, SuperLayer):
    """A converted Conv2d: elastic kernel and width."""

    def __init__(self, conv: "nn.Conv2d", kernel_size: Sequence[int] | None, expand: Sequence[float] | None,
                 first: bool, last: bool):
        super().__init__()
        k0 = conv.kernel_size[0]
        if conv.kernel_size[0] != conv.kernel_size[1] or k0 % 2 == 0:
            raise UsageError(f"Convert: only square odd kernels can be elastic, got {conv.kernel_size}")
        self.depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
        if conv.groups != 1 and not self.depthwise:
            raise UsageError(f"Convert: grouped convs (groups={conv.groups}) are not supported")
        self.candidate_config = {}
        ks = [k0]
        if kernel_size and k0 != 1:
            ks = sorted(set(int(k) for k in kernel_size))
            self.candidate_config["kernel_size"] = ks
        e = max(expand) if expand else 1
        self.base_in, self.base_out = conv.in_channels, conv.out_channels
        self.first, self.last = first, last
        self.scale_in = 1 if first else e
        self.scale_out = 1 if last else e
        if expand and not last and not self.depthwise:
            self.candidate_config["expand_ratio"] = sorted(expand)
        max_in = int(round(self.base_in * self.scale_in))
        max_out = max_in if self.depthwise else int(round(self.base_out * self.scale_out))
        self.conv = DynamicConv2d(max_in, max_out, ks, depthwise=self.depthwise, bias=conv.bias is not None,
                                  transform=len(ks) > 1)
        self.stride, self.dilation = conv.stride, conv.dilation
        self.padding = conv.padding
        self.active = {}
        with torch.no_grad():
            s = centre(self.conv.max_k, k0)
            self.conv.weight[:conv.out_channels, :conv.weight.shape[1]] = 0
            self.conv.weight[:conv.out_channels, :conv.weight.shape[1], s, s] = conv.weight
            if conv.bias is not None:
                self.conv.bias[:conv.out_channels] = conv.bias

    def out_width(self, cin: int) -> int:
        if self.depthwise:
            return cin
        return self.base_out if self.last else max(1, int(round(self.base_out * self._ratio())))

    def forward(self, x):
        k = self.active.get("kernel_size", self.conv.max_k)
        cin = x.shape[1]
        self.last_in = cin
        cout = self.out_width(cin)
        pad = (k - 1) // 2 * self.dilation[0] if "kernel_size" in self.candidate_config else self.padding
        return F.conv2d(x, self.conv.active_weight(cin, cout, k), self.conv.active_bias(cout), self.stride, pad,
                        self.dilation, cin if self.depthwise else 1)

    def to_static(self) -> "nn.Conv2d":
        """A plain Conv2d of the active sizes holding the active (transformed) weights."""
        cin = self.last_in
        cout, k = self.out_width(cin), self.active.get("kernel_size", self.conv.max_k)
        pad = (k - 1) // 2 * self.dilation[0] if "kernel_size" in self.candidate_config else self.padding
        m = nn.Conv2d(cin, cout, k, self.stride, pad, self.dilation, cin if self.depthwise else 1,
                      bias=self.conv.bias is not None)
        with torch.no_grad():
            m.weight.copy_(self.conv.active_weight(cin, cout, k))
            if m.bias is not None:
                m.bias.copy_(self.conv.active_bias(cout))
        return m


class SuperBatchNorm2d(DynamicBatchNorm2d, SuperLayer):
    """A converted BatchNorm2d: normalises the first channels it is given."""

    def __init__(self, bn: "nn.BatchNorm2d", scale: float):
        super().__init__(int(round(bn.num_features * scale)), bn.eps, bn.momentum if bn.momentum is not None else 0.1)
        self.candidate_config, self.active = {}, {}
        with torch.no_grad():
            n = bn.num_features
            if bn.weight is not None:
                self.weight[:n] = bn.weight
                self.bias[:n] = bn.bias
            if bn.running_mean is not None:
                self.running_mean[:n] = bn.running_mean
                self.running_var[:n] = bn.running_var

    def forward(self, x):
        self.last_in = x.shape[1]
        return super().forward(x)

    def to_static(self) -> "nn.BatchNorm2d":
        c = self.last_in
        m = nn.BatchNorm2d(c, self.eps, self.momentum)
        with torch.no_grad():
            m.weight.copy_(self.weight[:c])
            m.bias.copy_(self.bias[:c])
            m.running_mean.copy_(self.running_mean[:c])
            m.running_var.copy_(self.running_var[:c])
        return m


class SuperLinear(nn.Module, SuperLayer):
    """A converted Linear: elastic in (from the input) and out (by expand ratio) features."""

    def __init__(self, fc: "nn.Linear", expand: Sequence[float] | None, first: bool, last: bool):
        super().__init__()
        e = max(expand) if expand else 1
        self.base_out, self.last = fc.out_features, last
        self.candidate_config = {"expand_ratio": sorted(expand)} if expand and not last else {}
        self.fc = DynamicLinear(int(round(fc.in_features * (1 if first else e))),
                                int(round(fc.out_features * (1 if last else e))), fc.bias is not None)
        self.active = {}
        with torch.no_grad():
            self.fc.weight[:fc.out_features, :fc.in_features] = fc.weight
            if fc.bias is not None:
                self.fc.bias[:fc.out_features] = fc.bias

    def out_width(self) -> int:
        return self.base_out if self.last else max(1, int(round(self.base_out * self._ratio())))

    def forward(self, x):
        self.last_in = x.shape[-1]
        return self.fc(x, self.out_width())

    def to_static(self) -> "nn.Linear":
        fin, fout = self.last_in, self.out_width()
        m = nn.Linear(fin, fout, bias=self.fc.bias is not None)
        with torch.no_grad():
            m.weight.copy_(self.fc.active_weight(fin, fout))
            if m.bias is not None:
                m.bias.copy_(self.fc.active_bias(fout))
        return m


class supernet:  # noqa: N801 - PaddleSlim's name
    """The search space of a conversion: `supernet(kernel_size=[3, 5, 7], expand_ratio=[1, 2, 4])`;
    also a context manager yielding its Convert, as in PaddleSlim."""

    def __init__(self, kernel_size: Sequence[int] | None = None, expand_ratio: Sequence[float] | None = None,
                 **unsupported: Any):
        if unsupported:
            raise UsageError(f"supernet(): unsupported option(s) {', '.join(sorted(unsupported))} "
                             "(kernel_size and expand_ratio are)")
        self.kernel_size = list(kernel_size) if kernel_size else None
        self.expand_ratio = list(expand_ratio) if expand_ratio else None
        if self.kernel_size and any(int(k) % 2 == 0 or int(k) < 1 for k in self.kernel_size):
            raise UsageError(f"supernet(): kernel sizes must be odd, got {self.kernel_size}")
        if self.expand_ratio and any(e <= 0 for e in self.expand_ratio):
            raise UsageError(f"supernet(): expand ratios must be > 0, got {self.expand_ratio}")
        self.expand = max(self.expand_ratio) if self.expand_ratio else None

    def __enter__(self) -> "Convert":
        return Convert(self)

    def __exit__(self, *exc) -> None:
        return None


def _set(root: "nn.Module", name: str, module: "nn.Module") -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)


class Convert:
    """Replace a model's Conv2d / BatchNorm2d / Linear layers (in place) by elastic ones."""

    def __init__(self, context: supernet):
        self.context = context

    def convert(self, network: "nn.Module | list") -> "nn.Module | list":
        """The converted network (the same object; a list of layers is converted item by item)."""
        if isinstance(network, list):
            seq = nn.Sequential(*network)
            self.convert(seq)
            return list(seq)
        layers = [(n, m) for n, m in network.named_modules() if n and not list(m.children())]
        weight_idx = [i for i, (_, m) in enumerate(layers) if isinstance(m, (nn.Conv2d, nn.Linear))]
        if not weight_idx:
            raise UsageError("Convert: the model has no Conv2d or Linear layer")
        first, last = weight_idx[0], weight_idx[-1]
        ks, er = self.context.kernel_size, self.context.expand_ratio
        for i, (name, m) in enumerate(layers):
            if isinstance(m, nn.Conv2d):
                _set(network, name, SuperConv2d(m, ks, er, i == first, i == last))
            elif isinstance(m, nn.Linear):
                _set(network, name, SuperLinear(m, er, i == first, i == last))
            elif isinstance(m, nn.BatchNorm2d):
                _set(network, name, SuperBatchNorm2d(m, self.context.expand if er and i < last else 1))
        return network


def export_converted(model: "nn.Module", dummy, origin_model: "nn.Module | None" = None,
                     load_weights: bool = True) -> "nn.Module":
    """A copy of the Convert-ed `model` (or of `origin_model`, the unconverted architecture) with
    plain layers of the active subnet's sizes; one forward on `dummy` records the input widths."""
    was = model.training
    model.eval()
    with torch.no_grad():
        model(dummy)
    model.train(was)
    target = copy.deepcopy(origin_model if origin_model is not None else model)
    for name, m in model.named_modules():
        if isinstance(m, SuperLayer):
            static = m.to_static()
            if not load_weights:
                static.reset_parameters()
            _set(target, name, static)
    return target.eval()


__all__ = ["Convert", "supernet", "SuperLayer", "SuperConv2d", "SuperBatchNorm2d", "SuperLinear", "export_converted"]

"""Dynamic layers: one max-size weight each, sliced (and kernel-transformed) to the active size.

Channel selection keeps the first k channels (Once-for-All, BigNAS). A smaller kernel is the
centre crop of the larger one, optionally passed through OFA's learned kernel transform matrices
(7->5 a 25x25, 5->3 a 9x9 matrix, shared by all channels of the conv, initialised to identity).
Every slice is a view of the shared parameter, so gradients from any subnet reach the shared
weights, and exporting a subnet copies exactly what the dynamic forward uses.

Because "first k" decides which channels a smaller width keeps, Once-for-All re-sorts the channels
of a block's inner (expanded) width by importance before each elastic-width phase
(`re_organize_middle_weights`); `importance_order`, `permute_` and the layers' `permute_*`
methods below do that in place.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

from ..errors import OpError, require

torch = require("torch", "torch")
nn = torch.nn
F = torch.nn.functional
Tensor = torch.Tensor

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "none": lambda x: x,
    "relu": F.relu,
    "relu6": F.relu6,
    "hswish": F.hardswish,
    "hsigmoid": F.hardsigmoid,
    "sigmoid": torch.sigmoid,
    "swish": F.silu,
    "tanh": torch.tanh,
    "gelu": F.gelu,
}


def act(name: str, x: Tensor) -> Tensor:
    """Apply activation `name` (latbench's names, as torch_build's modules compute them)."""
    return ACTIVATIONS[name](x)


def centre(size: int, sub: int) -> slice:
    """The centre `sub` x `sub` window of a `size` x `size` kernel, as a slice per axis."""
    start = (size - sub) // 2
    return slice(start, start + sub)


class DynamicConv2d(nn.Module):
    """Conv2d with elastic out/in channels and kernel size; dense or depthwise.

    `transform=True` adds OFA's kernel transform matrices between consecutive kernel sizes.
    """

    def __init__(self, max_in: int, max_out: int, kernel_sizes: Sequence[int] = (1,), *,
                 depthwise: bool = False, bias: bool = False, transform: bool = False):
        super().__init__()
        self.ks_set = tuple(sorted(set(int(k) for k in kernel_sizes)))
        if any(k % 2 == 0 for k in self.ks_set):
            raise OpError(f"elastic kernels must be odd, got {list(self.ks_set)}")
        if depthwise and max_in != max_out:
            raise OpError(f"a depthwise conv has equal in and out channels, got {max_in} and {max_out}")
        self.max_in, self.max_out, self.depthwise = max_in, max_out, depthwise
        self.max_k = self.ks_set[-1]
        self.weight = nn.Parameter(torch.empty(max_out, 1 if depthwise else max_in, self.max_k, self.max_k))
        self.bias = nn.Parameter(torch.empty(max_out)) if bias else None
        self.transform = bool(transform) and len(self.ks_set) > 1
        if self.transform:
            for small, large in zip(self.ks_set, self.ks_set[1:]):
                self.register_parameter(self.matrix_name(large, small), nn.Parameter(torch.eye(small * small)))
        self.reset_parameters()

    @staticmethod
    def matrix_name(src: int, dst: int) -> str:
        """Parameter name of the src->dst kernel transform matrix."""
        return f"transform_{src}to{dst}"

    def reset_parameters(self) -> None:
        """nn.Conv2d's default initialisation at the max size."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.max_k * self.max_k
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def active_weight(self, cin: int, cout: int, k: int) -> Tensor:
        """The weight of the (cin -> cout, k x k) sub-conv: channel slice, then crop/transform."""
        if k not in self.ks_set:
            raise OpError(f"kernel {k} is not one of this conv's kernels {list(self.ks_set)}")
        if cout > self.max_out or (not self.depthwise and cin > self.max_in):
            raise OpError(f"conv {cin}->{cout} exceeds the supernet's {self.max_in}->{self.max_out}")
        w = self.weight[:cout] if self.depthwise else self.weight[:cout, :cin]
        if k == self.max_k:
            return w
        if not self.transform:
            s = centre(self.max_k, k)
            return w[:, :, s, s]
        i = len(self.ks_set) - 1
        while self.ks_set[i] > k:
            src, dst = self.ks_set[i], self.ks_set[i - 1]
            s = centre(src, dst)
            flat = w[:, :, s, s].reshape(-1, dst * dst)
            w = F.linear(flat, getattr(self, self.matrix_name(src, dst))).reshape(w.shape[0], w.shape[1], dst, dst)
            i -= 1
        return w

    def active_bias(self, cout: int) -> Tensor | None:
        return None if self.bias is None else self.bias[:cout]

    def in_importance(self) -> Tensor:
        """L1 norm of the weights reading each input channel (summed over out channels and kernel):
        Once-for-All's importance of the channels this conv consumes."""
        if self.depthwise:
            raise OpError("a depthwise conv's input channels are its output channels; rank them downstream")
        return self.weight.detach().abs().sum(dim=(0, 2, 3))

    def permute_out_(self, idx: Tensor, optimizer_state: dict | None = None) -> None:
        """Reorder the output channels (and bias) in place: new channel j is old channel idx[j]."""
        permute_(self.weight, idx, 0, optimizer_state)
        if self.bias is not None:
            permute_(self.bias, idx, 0, optimizer_state)

    def permute_in_(self, idx: Tensor, optimizer_state: dict | None = None) -> None:
        """Reorder the input channels in place (a depthwise conv: its channels, out and in alike)."""
        if self.depthwise:
            self.permute_out_(idx, optimizer_state)
        else:
            permute_(self.weight, idx, 1, optimizer_state)

    def forward(self, x: Tensor, cout: int | None = None, k: int | None = None, stride: int = 1,
                padding: int | None = None, dilation: int = 1) -> Tensor:
        cin = x.shape[1]
        cout = cin if self.depthwise else (cout or self.max_out)
        k = k or self.max_k
        pad = (k - 1) // 2 * dilation if padding is None else padding
        return F.conv2d(x, self.active_weight(cin, cout, k), self.active_bias(cout), stride, pad, dilation,
                        cin if self.depthwise else 1)


class DynamicBatchNorm2d(nn.Module):
    """BatchNorm2d over the first c channels of a max-size BN; `calibrating` makes it re-estimate
    the active slice's running statistics as a plain average over the batches it sees (calib_bn)."""

    def __init__(self, max_c: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.max_c, self.eps, self.momentum = max_c, eps, momentum
        self.weight = nn.Parameter(torch.ones(max_c))
        self.bias = nn.Parameter(torch.zeros(max_c))
        self.register_buffer("running_mean", torch.zeros(max_c))
        self.register_buffer("running_var", torch.ones(max_c))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.calib_seen = -1  # >= 0 while calibrating: batches averaged so far

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        if c > self.max_c:
            raise OpError(f"batch norm over {c} channels exceeds the supernet's {self.max_c}")
        mean, var = self.running_mean[:c], self.running_var[:c]
        if self.calib_seen >= 0:
            if self.calib_seen == 0:
                mean.zero_()
                var.fill_(1.0)
            self.calib_seen += 1
            return F.batch_norm(x, mean, var, self.weight[:c], self.bias[:c], True, 1.0 / self.calib_seen, self.eps)
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(x, mean, var, self.weight[:c], self.bias[:c], self.training, self.momentum, self.eps)

    def permute_channels_(self, idx: Tensor, optimizer_state: dict | None = None) -> None:
        """Reorder the channels in place: weight, bias, running_mean and running_var."""
        for t in (self.weight, self.bias, self.running_mean, self.running_var):
            permute_(t, idx, 0, optimizer_state)


class DynamicLinear(nn.Module):
    """Linear with elastic in and out features (first k of each)."""

    def __init__(self, max_in: int, max_out: int, bias: bool = True):
        super().__init__()
        self.max_in, self.max_out = max_in, max_out
        self.weight = nn.Parameter(torch.empty(max_out, max_in))
        self.bias = nn.Parameter(torch.empty(max_out)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(max_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def active_weight(self, fin: int, fout: int) -> Tensor:
        if fin > self.max_in or fout > self.max_out:
            raise OpError(f"linear {fin}->{fout} exceeds the supernet's {self.max_in}->{self.max_out}")
        return self.weight[:fout, :fin]

    def active_bias(self, fout: int) -> Tensor | None:
        return None if self.bias is None else self.bias[:fout]

    def forward(self, x: Tensor, fout: int | None = None) -> Tensor:
        fout = fout or self.max_out
        return F.linear(x, self.active_weight(x.shape[-1], fout), self.active_bias(fout))


class DynamicSE(nn.Module):
    """Squeeze-and-excite with elastic channels and hidden width (MobileNetV3 / OFA DynamicSE)."""

    def __init__(self, max_c: int, max_hidden: int):
        super().__init__()
        self.reduce = DynamicConv2d(max_c, max_hidden, (1,), bias=True)
        self.expand = DynamicConv2d(max_hidden, max_c, (1,), bias=True)

    def forward(self, x: Tensor, hidden: int, gate: str = "hsigmoid") -> Tensor:
        y = F.adaptive_avg_pool2d(x, 1)
        y = F.relu(self.reduce(y, hidden))
        y = act(gate, self.expand(y, x.shape[1]))
        return x * y

    def permute_channels_(self, idx: Tensor, optimizer_state: dict | None = None) -> None:
        """Reorder the gated channels in place: the reduce conv's inputs, the expand conv's outputs
        and bias (what OFA does to a block's SE when it re-sorts the expanded channels)."""
        self.reduce.permute_in_(idx, optimizer_state)
        self.expand.permute_out_(idx, optimizer_state)

    def sort_hidden_(self, optimizer_state: dict | None = None) -> Tensor:
        """Sort the hidden channels by importance (L1 of the expand conv's weights reading each),
        descending, as OFA's re_organize_middle_weights does: the reduce conv's outputs and bias,
        the expand conv's inputs. Returns the permutation."""
        idx = importance_order(self.expand.in_importance())
        self.reduce.permute_out_(idx, optimizer_state)
        self.expand.permute_in_(idx, optimizer_state)
        return idx

    def export_state(self, c: int, hidden: int, prefix: str = "") -> dict[str, Tensor]:
        """State dict of torch_build.SqueezeExcite(c, hidden) with the active slices."""
        return {
            f"{prefix}reduce.weight": self.reduce.active_weight(c, hidden, 1),
            f"{prefix}reduce.bias": self.reduce.active_bias(hidden),
            f"{prefix}expand.weight": self.expand.active_weight(hidden, c, 1),
            f"{prefix}expand.bias": self.expand.active_bias(c),
        }


def bn_state(bn: DynamicBatchNorm2d, c: int, prefix: str) -> dict[str, Tensor]:
    """State dict entries of an nn.BatchNorm2d(c) cut from a dynamic BN."""
    return {
        f"{prefix}weight": bn.weight[:c],
        f"{prefix}bias": bn.bias[:c],
        f"{prefix}running_mean": bn.running_mean[:c],
        f"{prefix}running_var": bn.running_var[:c],
        f"{prefix}num_batches_tracked": bn.num_batches_tracked,
    }


def importance_order(importance: Tensor, widths: Sequence[int] = (), expand_ratio_stage: int = 0) -> Tensor:
    """Channel order by importance, descending (stable: ties keep their order).

    As Once-for-All's re_organize_middle_weights: at `expand_ratio_stage` s > 0 the channels are
    sorted within the buckets that the s + 1 largest of `widths` cut (widths 96, 64, 48 at stage 1:
    [0, 64) and [64, 96)), so the channels an already-trained smaller width used stay inside that
    width; stage 0 sorts all channels together.
    """
    order = torch.sort(importance.detach(), descending=True, stable=True).indices
    if expand_ratio_stage > 0 and widths:
        bucket = torch.zeros(len(importance), dtype=torch.long, device=order.device)
        for cut in sorted({int(w) for w in widths}, reverse=True)[:expand_ratio_stage + 1]:
            bucket[cut:] += 1
        order = order[torch.sort(bucket[order], stable=True).indices]
    return order


def permute_(t: Tensor, idx: Tensor, dim: int, optimizer_state: dict | None = None) -> None:
    """Reorder `t` along `dim` in place (storage, strides and identity kept: new j = old idx[j]);
    with an optimizer's `state`, also the state tensors of t's shape (momentum buffers, Adam's
    moments), so the optimizer keeps following each channel."""
    with torch.no_grad():
        t.copy_(t.index_select(dim, idx.to(t.device)))
        if optimizer_state is not None and t in optimizer_state:
            for v in optimizer_state[t].values():
                if isinstance(v, Tensor) and v.shape == t.shape:
                    v.copy_(v.index_select(dim, idx.to(v.device)))


__all__ = ["importance_order", "permute_", "DynamicConv2d", "DynamicBatchNorm2d", "DynamicLinear", "DynamicSE", "act", "bn_state", "centre",
           "ACTIVATIONS"]

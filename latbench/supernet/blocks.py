"""Dynamic blocks: one per slot position of a space, computing any of that position's OpSpecs.

Each block is built from every OpSpec its position takes over the space (its *variants*) and holds
weights at their largest size. `forward(x, op)` computes exactly what torch_build's module for `op`
computes; `export_state(op)` returns that module's state dict cut from the shared weights.

Blocks with an inner width that no residual ties (MBConv's expanded channels, a bottleneck's mid
channels, a basic block's first conv outputs) have `sort_channels(expand_ratio_stage)`: Once-for-All's
re_organize_middle_weights, which re-sorts those channels by importance so that "the first k" a
smaller width keeps are the most important ones; the full-width function is unchanged.
"""
from __future__ import annotations

from typing import Sequence

from ..errors import SpaceError, require
from ..ops import OpSpec
from .layers import DynamicBatchNorm2d, DynamicConv2d, DynamicLinear, DynamicSE, act, bn_state, importance_order

torch = require("torch", "torch")
nn = torch.nn
F = torch.nn.functional
Tensor = torch.Tensor

TRANSFORM_MODES = ("depthwise", "all", "none")


def _uses_transform(mode: str, depthwise: bool) -> bool:
    if mode not in TRANSFORM_MODES:
        raise SpaceError(f"kernel transform must be one of {', '.join(TRANSFORM_MODES)}, got {mode!r}")
    return mode == "all" or (mode == "depthwise" and depthwise)


class DynConvBNAct(nn.Module):
    """Dynamic conv + optional dynamic BN; the activation comes with each call."""

    def __init__(self, max_in: int, max_out: int, kernels: Sequence[int] = (1,), *, depthwise: bool = False,
                 bias: bool = False, bn: bool = True, transform: str = "depthwise"):
        super().__init__()
        self.conv = DynamicConv2d(max_in, max_out, kernels, depthwise=depthwise, bias=bias,
                                  transform=_uses_transform(transform, depthwise))
        self.bn = DynamicBatchNorm2d(max_out) if bn else None

    def forward(self, x: Tensor, cout: int, k: int = 1, stride: int = 1, padding: int | None = None,
                act_name: str = "none", use_bn: bool = True, use_bias: bool = True, dilation: int = 1) -> Tensor:
        if self.conv.depthwise:
            cout = x.shape[1]
        w = self.conv.active_weight(x.shape[1], cout, k)
        b = self.conv.active_bias(cout) if use_bias else None
        pad = (k - 1) // 2 * dilation if padding is None else padding
        x = F.conv2d(x, w, b, stride, pad, dilation, x.shape[1] if self.conv.depthwise else 1)
        if use_bn and self.bn is not None:
            x = self.bn(x)
        return act(act_name, x)

    def permute_out_(self, idx: Tensor, optimizer_state: dict | None = None) -> None:
        """Reorder the output channels in place: the conv's (and its bias) and the BN's."""
        self.conv.permute_out_(idx, optimizer_state)
        if self.bn is not None:
            self.bn.permute_channels_(idx, optimizer_state)

    def export_state(self, cin: int, cout: int, k: int, prefix: str, use_bn: bool = True,
                     use_bias: bool = True) -> dict[str, Tensor]:
        """torch_build.ConvBNAct's state dict for the (cin -> cout, k) sub-conv."""
        out = {f"{prefix}conv.weight": self.conv.active_weight(cin, cout, k)}
        if use_bias and self.conv.bias is not None:
            out[f"{prefix}conv.bias"] = self.conv.active_bias(cout)
        if use_bn and self.bn is not None:
            out.update(bn_state(self.bn, cout, f"{prefix}bn."))
        return out


def _one(variants: Sequence[OpSpec], field: str, where: str):
    vals = {getattr(v, field) for v in variants}
    if len(vals) != 1:
        raise SpaceError(f"{where}: {field} differs between configs ({sorted(map(str, vals))}); "
                         "a shared-weight supernet needs it fixed")
    return vals.pop()


class ConvBlock(nn.Module):
    """A conv OpSpec (with its folded BN and activation): dense or depthwise."""

    def __init__(self, variants: Sequence[OpSpec], where: str, transform: str):
        super().__init__()
        dw = {v.groups == v.c == v.out and v.groups > 1 for v in variants}
        self.depthwise = dw.pop() if len(dw) == 1 else None
        if self.depthwise is None or (not self.depthwise and any(v.groups != 1 for v in variants)):
            raise SpaceError(f"{where}: only dense (groups=1) or depthwise convs can be elastic")
        self.body = DynConvBNAct(max(v.c for v in variants), max(v.out for v in variants),
                                 sorted({v.kernel for v in variants}), depthwise=self.depthwise,
                                 bias=any(v.bias for v in variants), bn=any(v.bn for v in variants),
                                 transform=transform)

    def forward(self, x: Tensor, op: OpSpec) -> Tensor:
        return self.body(x, op.out, op.kernel, op.stride, op.padding, op.act, op.bn, op.bias, op.dilation)

    def export_state(self, op: OpSpec) -> dict[str, Tensor]:
        return self.body.export_state(op.c, op.out, op.kernel, "", op.bn, op.bias)


class MBConvBlock(nn.Module):
    """Inverted residual with elastic kernel, expanded width, SE width and in/out channels."""

    def __init__(self, variants: Sequence[OpSpec], where: str, transform: str):
        super().__init__()
        self.se_pos = _one([v for v in variants if v.se] or variants[:1], "se_pos", where)
        max_c = max(v.c for v in variants)
        max_mid = max(v.mid for v in variants)
        max_out = max(v.out for v in variants)
        self.expand = DynConvBNAct(max_c, max_mid) if any(v.expand_conv for v in variants) else None
        self.depthwise = DynConvBNAct(max_mid, max_mid, sorted({v.kernel for v in variants}), depthwise=True,
                                      transform=transform)
        max_se = max(v.se for v in variants)
        self.se = DynamicSE(max_mid if self.se_pos == "dw" else max_out, max_se) if max_se else None
        self.project = DynConvBNAct(max_mid, max_out)
        # the expanded widths, largest first; a variant without expansion conv reads its input
        # channels as the "expanded" ones, which the previous block owns: those are never re-sorted
        self.mid_widths = sorted({v.mid for v in variants}, reverse=True)
        self.sortable = self.expand is not None and all(v.expand_conv for v in variants)

    def sort_channels(self, expand_ratio_stage: int = 0, optimizer_state: dict | None = None) -> Tensor | None:
        """Once-for-All's re_organize_middle_weights: sort the expanded (middle) channels by
        importance, the L1 norm of the projection conv's weights reading each, descending, and
        apply that permutation to the expansion conv's outputs and BN, the depthwise conv and its
        BN, the SE's gated channels (when the SE sits on the depthwise output) and the projection
        conv's inputs; then sort the SE's hidden channels by their own importance, as OFA does.

        `expand_ratio_stage` s > 0 keeps the channels inside the buckets the s + 1 largest expanded
        widths cut (see `importance_order`). With an optimizer's `state`, its per-parameter buffers
        are permuted alike. Returns the middle permutation (new j = old idx[j]), or None where the
        block has no expansion conv (its middle channels are its input's, tied to the previous
        block, which OFA leaves alone too).
        """
        if not self.sortable:
            return None
        idx = importance_order(self.project.conv.in_importance(), self.mid_widths, expand_ratio_stage)
        self.expand.permute_out_(idx, optimizer_state)
        self.depthwise.permute_out_(idx, optimizer_state)
        if self.se is not None and self.se_pos == "dw":
            self.se.permute_channels_(idx, optimizer_state)
        self.project.conv.permute_in_(idx, optimizer_state)
        if self.se is not None:
            self.se.sort_hidden_(optimizer_state)
        return idx

    def forward(self, x: Tensor, op: OpSpec) -> Tensor:
        y = self.expand(x, op.mid, act_name=op.act) if op.expand_conv else x
        y = self.depthwise(y, op.mid, op.kernel, op.stride, act_name=op.act)
        if op.se and op.se_pos == "dw":
            y = self.se(y, op.se, op.se_act)
        lin = self.project(y, op.out)
        out = lin + x if op.residual else lin
        if op.se and op.se_pos == "out":
            out = F.relu(out + self.se(lin, op.se, op.se_act))
        return out

    def export_state(self, op: OpSpec) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        if op.expand_conv:
            out.update(self.expand.export_state(op.c, op.mid, 1, "expand."))
        out.update(self.depthwise.export_state(op.mid, op.mid, op.kernel, "depthwise."))
        if op.se:
            out.update(self.se.export_state(op.mid if op.se_pos == "dw" else op.out, op.se, "se."))
        out.update(self.project.export_state(op.mid, op.out, 1, "project."))
        return out


class ResBlockDyn(nn.Module):
    """ResNet basic or bottleneck block with elastic widths, kernel and an optional projection."""

    def __init__(self, variants: Sequence[OpSpec], where: str, transform: str):
        super().__init__()
        self.kind = _one(variants, "kind", where)
        max_c = max(v.c for v in variants)
        max_out = max(v.out for v in variants)
        ks = sorted({v.kernel for v in variants})
        if self.kind == "bottleneck":
            max_mid = max(v.mid for v in variants)
            self.body = nn.ModuleList([DynConvBNAct(max_c, max_mid), DynConvBNAct(max_mid, max_mid, ks, transform=transform),
                                       DynConvBNAct(max_mid, max_out)])
        else:
            self.body = nn.ModuleList([DynConvBNAct(max_c, max_out, ks, transform=transform),
                                       DynConvBNAct(max_out, max_out, ks, transform=transform)])
        self.shortcut = DynConvBNAct(max_c, max_out) if any(v.proj for v in variants) else None
        self.inner_widths = sorted({v.mid if self.kind == "bottleneck" else v.out for v in variants}, reverse=True)

    def sort_channels(self, expand_ratio_stage: int = 0, optimizer_state: dict | None = None) -> list[Tensor]:
        """Once-for-All's re-sorting of the inner widths by importance (its ResNet bottleneck's
        re_organize_middle_weights), from the last inner width back: a bottleneck's second mid
        width by the L1 of the last conv's weights reading each channel, then its first mid width
        by the L1 of the kxk conv's weights reading each; a basic block's first conv outputs by the
        L1 of the second conv's weights reading each. Each permutation goes to the producing conv's
        outputs and BN and to the consuming conv's inputs, so the full-width function is unchanged.

        The block's output width (and so a basic block's second conv outputs) meets the shortcut in
        the residual add: sorting it would need the same permutation on every block of the stage
        (and on whatever reads the stage's output), so it is left as it is. Returns the
        permutations applied (new j = old idx[j]), last inner width first.
        """
        out = []
        for prod, cons in reversed(list(zip(self.body[:-1], self.body[1:]))):
            idx = importance_order(cons.conv.in_importance(), self.inner_widths, expand_ratio_stage)
            prod.permute_out_(idx, optimizer_state)
            cons.conv.permute_in_(idx, optimizer_state)
            out.append(idx)
        return out

    def forward(self, x: Tensor, op: OpSpec) -> Tensor:
        if self.kind == "bottleneck":
            y = self.body[0](x, op.mid, act_name=op.act)
            y = self.body[1](y, op.mid, op.kernel, op.stride, act_name=op.act)
            y = self.body[2](y, op.out)
        else:
            y = self.body[0](x, op.out, op.kernel, op.stride, act_name=op.act)
            y = self.body[1](y, op.out, op.kernel)
        s = self.shortcut(x, op.out, 1, op.stride) if op.proj else x
        return act(op.act, y + s)

    def export_state(self, op: OpSpec) -> dict[str, Tensor]:
        if self.kind == "bottleneck":
            out = self.body[0].export_state(op.c, op.mid, 1, "body.0.")
            out.update(self.body[1].export_state(op.mid, op.mid, op.kernel, "body.1."))
            out.update(self.body[2].export_state(op.mid, op.out, 1, "body.2."))
        else:
            out = self.body[0].export_state(op.c, op.out, op.kernel, "body.0.")
            out.update(self.body[1].export_state(op.out, op.out, op.kernel, "body.1."))
        if op.proj:
            out.update(self.shortcut.export_state(op.c, op.out, 1, "shortcut."))
        return out


class LinearBlock(nn.Module):
    """Flatten + dynamic linear + activation."""

    def __init__(self, variants: Sequence[OpSpec], where: str, transform: str):
        super().__init__()
        self.fc = DynamicLinear(max(v.c for v in variants), max(v.out for v in variants),
                                any(v.bias for v in variants))

    def forward(self, x: Tensor, op: OpSpec) -> Tensor:
        x = torch.flatten(x, 1)
        b = self.fc.active_bias(op.out) if op.bias else None
        return act(op.act, F.linear(x, self.fc.active_weight(x.shape[1], op.out), b))

    def export_state(self, op: OpSpec) -> dict[str, Tensor]:
        out = {"fc.weight": self.fc.active_weight(op.c, op.out)}
        if op.bias:
            out["fc.bias"] = self.fc.active_bias(op.out)
        return out


class BatchNormBlock(nn.Module):
    """A batch_norm OpSpec (optionally with its activation) over elastic channels."""

    def __init__(self, variants: Sequence[OpSpec], where: str, transform: str):
        super().__init__()
        self.bn = DynamicBatchNorm2d(max(v.c for v in variants))

    def forward(self, x: Tensor, op: OpSpec) -> Tensor:
        return act(op.act, self.bn(x))

    def export_state(self, op: OpSpec) -> dict[str, Tensor]:
        return bn_state(self.bn, op.c, "0." if op.act != "none" else "")


class StatelessBlock(nn.Module):
    """Pool, activation or softmax: no weights, computed by torch_build's module for the op."""

    def __init__(self, variants: Sequence[OpSpec], where: str, transform: str):
        super().__init__()
        self._modules_by_op: dict[OpSpec, nn.Module] = {}

    def forward(self, x: Tensor, op: OpSpec) -> Tensor:
        m = self._modules_by_op.get(op)
        if m is None:
            from ..spaces.torch_build import module_for

            m = self._modules_by_op[op] = module_for(op)
        return m(x)

    def export_state(self, op: OpSpec) -> dict[str, Tensor]:
        return {}


class EltwiseBlock(nn.Module):
    """An eltwise op whose second operand is learned (e.g. LightNAS's classifier bias, which
    PaddleSlim lists as an eltwise add), over elastic channels; torch_build.Eltwise holds it as
    the buffer `other`."""

    def __init__(self, variants: Sequence[OpSpec], where: str, transform: str):
        super().__init__()
        shapes = [_eltwise_operand(v) for v in variants]
        fill = 1.0 if all(v.eltwise == "mul" for v in variants) else 0.0  # starts as the identity
        self.other = nn.Parameter(torch.full((1, *(max(s[i] for s in shapes) for i in range(3))), fill))

    def forward(self, x: Tensor, op: OpSpec) -> Tensor:
        c, h, w = _eltwise_operand(op)
        y = self.other[:, :c, :h, :w]
        return x + y if op.eltwise == "add" else (x * y if op.eltwise == "mul" else torch.maximum(x, y))

    def export_state(self, op: OpSpec) -> dict[str, Tensor]:
        c, h, w = _eltwise_operand(op)
        return {"other": self.other[:, :c, :h, :w].expand(op.n, c, h, w)}


def _eltwise_operand(op: OpSpec) -> tuple[int, int, int]:
    """(c, h, w) of an eltwise op's second operand, as torch_build.Eltwise shapes it."""
    return (op.c, 1, 1) if op.broadcast else (op.c, op.h, op.w)


BLOCKS = {
    "conv": ConvBlock, "mbconv": MBConvBlock, "basic": ResBlockDyn, "bottleneck": ResBlockDyn,
    "linear": LinearBlock, "batch_norm": BatchNormBlock, "pool": StatelessBlock,
    "activation": StatelessBlock, "softmax": StatelessBlock, "eltwise": EltwiseBlock,
}


def block_for(variants: Sequence[OpSpec], where: str, transform: str = "depthwise") -> nn.Module:
    """The dynamic block computing every OpSpec in `variants` (one slot position of a space)."""
    kinds = {v.kind for v in variants}
    if len(kinds) != 1:
        raise SpaceError(f"{where}: block kind differs between configs ({', '.join(sorted(kinds))})")
    kind = kinds.pop()
    if kind not in BLOCKS:
        raise SpaceError(f"{where}: {kind} blocks cannot be part of a shared-weight supernet")
    return BLOCKS[kind](list(variants), where, transform)


__all__ = ["block_for", "DynConvBNAct", "ConvBlock", "MBConvBlock", "ResBlockDyn", "LinearBlock",
           "BatchNormBlock", "StatelessBlock", "EltwiseBlock", "TRANSFORM_MODES"]

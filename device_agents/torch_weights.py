"""Weights read back from torch modules in the canonical format (device_agents.weights.op_weights):
the inverse of torch_local.reference_module, for building a .tflite of a trained network with
tflite_build.build_tflite_chain (latbench.supernet.export).

A block's module (latbench.spaces.torch_build: ConvBNAct, MBConv, SqueezeExcite, ResBlock,
LinearAct, ...) is walked in execution order and lined up with `ops.expand(block)`: each conv part
gets {weight OIHW, bias if the part has one}, each batch_norm {gamma, beta, mean, var} (the
builder folds them into the conv before it, with BN_EPS; a module eps other than BN_EPS is
absorbed into var, so the folded result is the module's), each linear {weight (out, in), bias},
a standalone eltwise {other}, everything else {}. Kinds, activations, shapes, strides, padding
and groups are checked part by part: a module that does not compute its block is an OpError
naming both, never a silently different model.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from latbench import ops as O
from latbench.errors import OpError
from latbench.ops import OpSpec

from .weights import BN_EPS, Weights

# the block kinds tflite_build.build_tflite_chain lowers (its _Net.emit)
TFLITE_KINDS = ("conv", "linear", "mbconv", "bottleneck", "basic", "pool", "activation", "batch_norm",
                "softmax", "shuffle", "eltwise")


def _leaves(m) -> Iterator[tuple[str, Any]]:
    """(part kind, module) of a torch_build module in execution order, as `expand` lists them."""
    from torch import nn

    from latbench.spaces import torch_build as TB

    acts = tuple(TB._ACTS.values())
    if isinstance(m, TB.ConvBNAct):
        yield "conv", m.conv
        if m.bn is not None:
            yield "batch_norm", m.bn
        if m.act is not None:
            yield "activation", m.act
    elif isinstance(m, TB.SqueezeExcite):
        yield "pool", m.pool
        yield "conv", m.reduce
        yield "activation", m.relu
        yield "conv", m.expand
        yield "activation", m.gate
        yield "eltwise", None  # x * gate
    elif isinstance(m, TB.MBConv):
        if m.expand is not None:
            yield from _leaves(m.expand)
        if m.shuffle is not None:
            yield "shuffle", m.shuffle
        yield from _leaves(m.depthwise)
        if m.se is not None and m.se_pos == "dw":
            yield from _leaves(m.se)
        yield from _leaves(m.project)
        if m.residual:
            yield "eltwise", None
        if m.out_relu is not None:
            yield from _leaves(m.se)
            yield "eltwise", None
            yield "activation", m.out_relu
    elif isinstance(m, TB.ResBlock):
        for sub in m.body:
            yield from _leaves(sub)
        if m.shortcut is not None:
            yield from _leaves(m.shortcut)
        yield "eltwise", None
        yield "activation", m.act
    elif isinstance(m, TB.LinearAct):
        yield "linear", m.fc
        if m.act is not None:
            yield "activation", m.act
    elif isinstance(m, TB.Eltwise):
        yield "eltwise", m
    elif isinstance(m, nn.Sequential):
        for sub in m:
            yield from _leaves(sub)
    elif isinstance(m, nn.Conv2d):
        yield "conv", m
    elif isinstance(m, nn.Linear):
        yield "linear", m
    elif isinstance(m, nn.BatchNorm2d):
        yield "batch_norm", m
    elif isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d)):
        yield "pool", m
    elif isinstance(m, nn.Softmax):
        yield "softmax", m
    elif isinstance(m, nn.ChannelShuffle):
        yield "shuffle", m
    elif isinstance(m, acts):
        yield "activation", m
    else:
        raise OpError(f"no canonical weights for a {type(m).__name__} module")


def _np(t) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _conv_weights(p: OpSpec, m, where: str) -> dict[str, np.ndarray]:
    from torch import nn

    if not isinstance(m, nn.Conv2d):
        raise OpError(f"{where}: expected a Conv2d, found {type(m).__name__}")
    want = (p.out, p.c // p.groups, p.kernel, p.kernel)
    got = tuple(m.weight.shape)
    if got != want:
        raise OpError(f"{where}: conv weight {got}, the block's conv needs {want}")
    if (_pair(m.stride), _pair(m.padding), _pair(m.dilation), m.groups) != (
            (p.stride,) * 2, (p.padding,) * 2, (p.dilation,) * 2, p.groups):
        raise OpError(f"{where}: conv stride/padding/dilation/groups {m.stride}/{m.padding}/{m.dilation}/{m.groups} "
                      f"differ from the block's {p.stride}/{p.padding}/{p.dilation}/{p.groups}")
    if (m.bias is not None) != bool(p.bias):
        raise OpError(f"{where}: the module's conv {'has' if m.bias is not None else 'has no'} bias, the block's "
                      f"{'has' if p.bias else 'has none'}")
    w = {"weight": _np(m.weight)}
    if m.bias is not None:
        w["bias"] = _np(m.bias)
    return w


def _bn_weights(p: OpSpec, m, where: str) -> dict[str, np.ndarray]:
    from torch import nn

    if not isinstance(m, nn.BatchNorm2d):
        raise OpError(f"{where}: expected a BatchNorm2d, found {type(m).__name__}")
    if m.running_mean is None or m.running_var is None:
        raise OpError(f"{where}: BatchNorm2d without running statistics cannot be folded for inference")
    if m.num_features != p.c:
        raise OpError(f"{where}: BatchNorm2d of {m.num_features} channels, the block's has {p.c}")
    c = m.num_features
    gamma = _np(m.weight) if m.weight is not None else np.ones(c, np.float32)
    beta = _np(m.bias) if m.bias is not None else np.zeros(c, np.float32)
    # the builder folds with BN_EPS: var + (eps - BN_EPS) keeps the module's var + eps (float64 first)
    var = m.running_var.detach().cpu().double().numpy() + (float(m.eps) - BN_EPS)
    return {"gamma": gamma, "beta": beta, "mean": _np(m.running_mean), "var": var.astype(np.float32)}


def _linear_weights(p: OpSpec, m, where: str) -> dict[str, np.ndarray]:
    from torch import nn

    if not isinstance(m, nn.Linear):
        raise OpError(f"{where}: expected a Linear, found {type(m).__name__}")
    if tuple(m.weight.shape) != (p.out, p.c):
        raise OpError(f"{where}: linear weight {tuple(m.weight.shape)}, the block's needs {(p.out, p.c)}")
    if (m.bias is not None) != bool(p.bias):
        raise OpError(f"{where}: bias presence differs between the module's linear and the block's")
    w = {"weight": _np(m.weight)}
    if m.bias is not None:
        w["bias"] = _np(m.bias)
    return w


def module_weights(op: OpSpec, module) -> Weights:
    """The weights of block `op` read from its torch module, one dict per `ops.expand(op)` part in
    exactly op_weights' format (what tflite_build.build_tflite_chain takes). The module must be
    the block's own (space.build / torch_build.module_for): an OpError names what differs."""
    from latbench.spaces.torch_build import _ACTS

    if op.kind not in TFLITE_KINDS:
        raise OpError(f"{op.key}: block kind {op.kind!r} has no TFLite lowering in latbench's builder "
                      f"(it takes {', '.join(TFLITE_KINDS)})")
    parts = O.expand(op)
    leaves = list(_leaves(module))
    got = [k for k, _ in leaves]
    want = [p.kind for p in parts]
    if got != want:
        raise OpError(f"{op.key}: the {type(module).__name__} module runs [{', '.join(got)}] but the block "
                      f"expands to [{', '.join(want)}]")
    out: Weights = []
    for i, (p, (_, m)) in enumerate(zip(parts, leaves)):
        where = f"{op.key} part {i} ({p.kind})"
        if p.kind == "conv":
            out.append(_conv_weights(p, m, where))
        elif p.kind == "batch_norm":
            out.append(_bn_weights(p, m, where))
        elif p.kind == "linear":
            out.append(_linear_weights(p, m, where))
        elif p.kind == "activation":
            if type(m) is not _ACTS.get(p.act):
                raise OpError(f"{where}: the module's activation is {type(m).__name__}, the block's is {p.act!r}")
            out.append({})
        elif p.kind == "eltwise" and len(parts) == 1:
            out.append({"other": _np(m.other)})
        else:
            out.append({})
    return out


def network_weights(blocks: Sequence[OpSpec], modules) -> list[Weights]:
    """module_weights for each block of a whole network (`space.blocks(config)` and the matching
    `space.build(config)` / SuperNet.export_module(config) nn.Sequential, one module per block)."""
    modules = list(modules)
    if len(modules) != len(blocks):
        raise OpError(f"{len(blocks)} blocks but {len(modules)} modules")
    return [module_weights(b, m) for b, m in zip(blocks, modules)]


__all__ = ["module_weights", "network_weights", "TFLITE_KINDS"]

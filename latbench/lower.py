"""Real models -> op-granularity OpSpecs, by tracing the module (torch.fx + shape propagation).

Ops that cannot be mapped are listed by name in `Lowering.unmapped`, never dropped silently;
shape-only ops (flatten, view, dropout in eval, identity) are listed in `Lowering.free`.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

from . import ops as O
from .errors import require
from .ops import OpSpec


@dataclass
class Lowering:
    """The result of lowering a model: its ops in execution order and what could not be mapped."""

    ops: list[OpSpec] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # module path (or node name) of each op
    unmapped: list[str] = field(default_factory=list)
    free: list[str] = field(default_factory=list)


_FREE_METHODS = {"view", "reshape", "flatten", "contiguous", "size", "squeeze", "unsqueeze", "dim"}


def lower_torch(module, input_shape: tuple[int, ...]) -> Lowering:
    """Trace `module` on a random input of `input_shape` and map every node to an OpSpec."""
    torch = require("torch", "torch")
    from torch.fx import symbolic_trace
    from torch.fx.passes.shape_prop import ShapeProp

    nn, F = torch.nn, torch.nn.functional
    acts = {
        nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hswish", nn.Hardsigmoid: "hsigmoid",
        nn.Sigmoid: "sigmoid", nn.SiLU: "swish", nn.Tanh: "tanh", nn.GELU: "gelu",
    }
    fn_acts = {
        F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.hardswish: "hswish",
        F.hardsigmoid: "hsigmoid", torch.sigmoid: "sigmoid", F.silu: "swish", torch.tanh: "tanh",
        F.gelu: "gelu",
    }
    free_modules = (nn.Dropout, nn.Identity, nn.Flatten)
    eltwise_fns = {operator.add: "add", torch.add: "add", operator.mul: "mul", torch.mul: "mul",
                   torch.maximum: "max"}
    free_fns = {torch.flatten, torch.reshape, operator.getitem}

    was_training = module.training
    module.eval()
    # a container keeps a bare leaf layer (BatchNorm2d, Softmax...) a module call when traced
    gm = symbolic_trace(nn.Sequential(module))
    gen = torch.Generator().manual_seed(0)  # leave the global RNG alone
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.randn(*input_shape, generator=gen))
    module.train(was_training)
    modules = dict(gm.named_modules())
    low = Lowering()

    def shape4(node) -> tuple[int, int, int, int]:
        s = tuple(node.meta["tensor_meta"].shape)
        return s + (1,) * (4 - len(s)) if len(s) < 4 else s

    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        args = [a for a in node.args if hasattr(a, "meta")]
        x = shape4(args[0]) if args and "tensor_meta" in args[0].meta else None
        name = _node_name(node, modules)
        op = None
        if node.op == "call_module":
            m = modules[node.target]
            if isinstance(m, nn.Conv2d):
                k, s, p, d = m.kernel_size, m.stride, m.padding, m.dilation
                if isinstance(p, tuple) and k[0] == k[1] and s[0] == s[1] and p[0] == p[1] and d[0] == d[1]:
                    op = O.conv(x, m.out_channels, k[0], s[0], p[0], d[0], m.groups, m.bias is not None)
            elif isinstance(m, nn.BatchNorm2d):
                op = O.batch_norm(x)
            elif type(m) in acts:
                op = O.activation(x, acts[type(m)])
            elif isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
                size = m.output_size
                if size in (1, (1, 1)):
                    op = O.pool(x, "avg" if isinstance(m, nn.AdaptiveAvgPool2d) else "max", global_pool=True)
            elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
                k, s, p = (_int(m.kernel_size), _int(m.stride), _int(m.padding))
                if None not in (k, s, p):
                    if isinstance(m, nn.MaxPool2d):
                        op = O.pool(x, "max", k, s, p, ceil_mode=m.ceil_mode)
                    else:
                        op = O.pool(x, "avg", k, s, p, ceil_mode=m.ceil_mode,
                                    count_pad=bool(m.count_include_pad) and p > 0)
            elif isinstance(m, nn.Linear):
                op = O.linear(x[0], m.in_features, m.out_features, m.bias is not None)
            elif isinstance(m, nn.Softmax):
                op = O.softmax(x, m.dim if m.dim is not None else 1)
            elif isinstance(m, free_modules):
                low.free.append(name)
                continue
        elif node.op == "call_function":
            t = node.target
            if t in eltwise_fns and len(args) == 2:
                a, b = shape4(args[0]), shape4(args[1])
                big, small = (a, b) if _numel(a) >= _numel(b) else (b, a)
                bcast = big != small
                if not bcast or (small[2:] == (1, 1) and small[:2] == big[:2]):
                    op = O.eltwise(big, eltwise_fns[t], broadcast=bcast)
            elif t in fn_acts:
                op = O.activation(x, fn_acts[t])
            elif t in free_fns:
                low.free.append(name)
                continue
        elif node.op == "call_method" and node.target in _FREE_METHODS:
            low.free.append(name)
            continue
        if op is None:
            low.unmapped.append(name)
        else:
            low.ops.append(op)
            low.sources.append(_strip_root(str(node.target)) if node.op == "call_module" else node.name)
    return low


def _strip_root(path: str) -> str:
    """Module path inside the traced model (drop the wrapping container's '0' prefix)."""
    return "" if path == "0" else path[2:] if path.startswith("0.") else path


def _node_name(node, modules) -> str:
    """'Conv2d(blocks.3.conv)', 'add(add_2)', 'view(view)': what the user sees for an unmapped op."""
    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__}({_strip_root(str(node.target)) or 'model'})"
    target = getattr(node.target, "__name__", str(node.target))
    return f"{target}({node.name})"


def _int(v):
    if isinstance(v, int):
        return v
    if isinstance(v, tuple) and len(set(v)) == 1:
        return v[0]
    return None


def _numel(s) -> int:
    p = 1
    for v in s:
        p *= v
    return p

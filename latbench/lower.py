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


# ---------------------------------------------------------------------- ONNX
_ONNX_ACTS = {"Relu": "relu", "HardSwish": "hswish", "Sigmoid": "sigmoid", "Tanh": "tanh", "Gelu": "gelu"}
_ONNX_ELTWISE = {"Add": "add", "Mul": "mul", "Max": "max"}
_ONNX_FREE = {"Flatten", "Reshape", "Identity", "Dropout", "Squeeze", "Unsqueeze", "Shape", "Constant",
              "Gather", "Concat"}


def lower_onnx(model) -> Lowering:
    """An ONNX model (path, bytes or ModelProto) -> op-granularity OpSpecs, in graph order.

    Shapes come from ONNX shape inference; x * Sigmoid(x) is read as swish, Clip(0, 6) as relu6,
    HardSigmoid(1/6, 1/2) as hsigmoid, Gemm / MatMul(+Add) as linear.
    """
    onnx = require("onnx", "ort")
    from onnx import numpy_helper, shape_inference

    if isinstance(model, (str, bytes)) and not isinstance(model, bytes):
        model = onnx.load(model)
    elif isinstance(model, bytes):
        model = onnx.load_from_string(model)
    model = shape_inference.infer_shapes(model)
    g = model.graph
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = tuple(d.dim_value if d.dim_value > 0 else 1 for d in dims)
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)
    for name, arr in consts.items():
        shapes.setdefault(name, tuple(arr.shape))
    sigmoid_of: dict[str, str] = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Sigmoid"}
    used_by_swish: set[str] = set()
    for n in g.node:  # x * Sigmoid(x): the Sigmoid is part of a swish, not an op of its own
        if n.op_type == "Mul" and len(n.input) == 2:
            a, b = n.input
            if sigmoid_of.get(b) == a or sigmoid_of.get(a) == b:
                used_by_swish.add(b if sigmoid_of.get(b) == a else a)
    consumers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1

    low = Lowering()

    def x4(name: str) -> tuple[int, int, int, int]:
        s = shapes.get(name)
        if s is None:
            raise KeyError(name)
        return tuple(s) + (1,) * (4 - len(s)) if len(s) < 4 else tuple(s[:4])

    for node in g.node:
        t = node.op_type
        label = f"{t}({node.name or node.output[0]})"
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        op = None
        try:
            if t in _ONNX_FREE:
                low.free.append(label)
                continue
            if t == "Sigmoid" and node.output[0] in used_by_swish and consumers.get(node.output[0]) == 1:
                continue
            x = x4(node.input[0]) if node.input else None
            if t == "Conv":
                w = shapes[node.input[1]]
                k = tuple(attrs.get("kernel_shape", w[2:]))
                s = tuple(attrs.get("strides", (1, 1)))
                d = tuple(attrs.get("dilations", (1, 1)))
                p = tuple(attrs.get("pads", (0, 0, 0, 0)))
                if len(set(k)) == 1 and len(set(s)) == 1 and len(set(d)) == 1 and len(set(p)) == 1:
                    op = O.conv(x, w[0], k[0], s[0], p[0], d[0], attrs.get("group", 1), len(node.input) > 2)
            elif t == "BatchNormalization":
                op = O.batch_norm(x)
            elif t in _ONNX_ACTS:
                op = O.activation(x, _ONNX_ACTS[t])
            elif t == "Clip":
                lo, hi = _clip_bounds(node, attrs, consts)
                if (lo, hi) == (0.0, 6.0):
                    op = O.activation(x, "relu6")
            elif t == "HardSigmoid":
                if abs(attrs.get("alpha", 0.2) - 1 / 6) < 1e-6 and abs(attrs.get("beta", 0.5) - 0.5) < 1e-6:
                    op = O.activation(x, "hsigmoid")
            elif t == "Mul" and any(i in used_by_swish for i in node.input):
                op = O.activation(x4(node.output[0]), "swish")
            elif t in _ONNX_ELTWISE and len(node.input) == 2:
                a, b = x4(node.input[0]), x4(node.input[1])
                big, small = (a, b) if _numel(a) >= _numel(b) else (b, a)
                if big == small or (small[2:] == (1, 1) and small[:2] == big[:2]):
                    op = O.eltwise(big, _ONNX_ELTWISE[t], broadcast=big != small)
            elif t in ("GlobalAveragePool", "GlobalMaxPool"):
                op = O.pool(x, "avg" if t == "GlobalAveragePool" else "max", global_pool=True)
            elif t in ("AveragePool", "MaxPool"):
                k, s = attrs["kernel_shape"], attrs.get("strides", attrs["kernel_shape"])
                p = attrs.get("pads", (0, 0, 0, 0))
                if len(set(k)) == 1 and len(set(s)) == 1 and len(set(p)) == 1:
                    kind = "avg" if t == "AveragePool" else "max"
                    op = O.pool(x, kind, k[0], s[0], p[0], ceil_mode=bool(attrs.get("ceil_mode", 0)),
                                count_pad=bool(attrs.get("count_include_pad", 0)))
            elif t == "Gemm" and not attrs.get("transA", 0):
                w = shapes[node.input[1]]
                out, cin = (w[0], w[1]) if attrs.get("transB", 0) else (w[1], w[0])
                op = O.linear(shapes[node.input[0]][0], cin, out, bias=len(node.input) > 2)
            elif t == "MatMul" and len(shapes.get(node.input[1], ())) == 2:
                cin, out = shapes[node.input[1]]
                op = O.linear(shapes[node.input[0]][0], cin, out, bias=False)
            elif t == "Softmax":
                axis = attrs.get("axis", -1)
                rank = len(shapes[node.input[0]])
                op = O.softmax(x, axis % rank if axis < 0 else axis)
        except (KeyError, IndexError, ValueError) as e:
            low.unmapped.append(f"{label}: {e}")
            continue
        if op is None:
            low.unmapped.append(label)
        else:
            low.ops.append(op)
            low.sources.append(node.name or node.output[0])
    return low


def _clip_bounds(node, attrs, consts) -> tuple[float | None, float | None]:
    """Clip's min/max from attributes (old opsets) or constant inputs (opset >= 11)."""
    lo, hi = attrs.get("min"), attrs.get("max")
    if len(node.input) > 1 and node.input[1] in consts:
        lo = float(consts[node.input[1]])
    if len(node.input) > 2 and node.input[2] in consts:
        hi = float(consts[node.input[2]])
    return (None if lo is None else float(lo), None if hi is None else float(hi))

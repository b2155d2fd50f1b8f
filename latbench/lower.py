"""Real models -> op-granularity OpSpecs: ONNX files by shape inference (`lower_onnx`, latbench's
typed ops), a runtime's own optimised graph node by node (`lower_graph`, node ops), and torch
modules by tracing (`lower_torch`: latbench's own built subnets, whose module paths place their
weights; a user's module goes through its ONNX export, latbench.modelops, the one path).

Compute that cannot be mapped is listed in `Lowering.unmapped` (op type, node, reason), never
dropped silently; shape-only nodes (views such as flatten/reshape/identity/dropout in eval, and
in ONNX the shape arithmetic a runtime folds away) are listed in `Lowering.free` and cost nothing.
"""
from __future__ import annotations

import operator
import os
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

from . import ops as O
from .errors import FormatError, OpError, UsageError, require
from .ops import OpSpec


class Unmapped(NamedTuple):
    """A compute node no OpSpec describes: never priced, always reported."""

    op_type: str  # ONNX op type, torch module class or function name
    name: str  # ONNX node name; torch module path or fx node name
    reason: str = ""  # why, where more than "latbench has no op of this type"

    @property
    def label(self) -> str:
        return f"{self.op_type}({self.name})" + (f": {self.reason}" if self.reason else "")

    @property
    def why(self) -> str:
        """The reason, never empty: an empty `reason` means latbench has no op of this type."""
        return self.reason or f"latbench has no op for {self.op_type}"


@dataclass
class Lowering:
    """The result of lowering a model: its ops in execution order and what could not be mapped."""

    ops: list[OpSpec] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # module path (or node name) of each op
    unmapped: list[Unmapped] = field(default_factory=list)
    free: list[str] = field(default_factory=list)  # shape-only nodes, as "OpType(name)"


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
            elif isinstance(m, nn.ChannelShuffle):  # one call: torch.fx keeps torch.nn layers whole
                op = O.shuffle(x, m.groups)
            elif isinstance(m, free_modules):
                low.free.append(_node_label(node, modules))
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
                low.free.append(_node_label(node, modules))
                continue
        elif node.op == "call_method" and node.target in _FREE_METHODS:
            low.free.append(_node_label(node, modules))
            continue
        if op is None:
            low.unmapped.append(Unmapped(*_node_type_and_name(node, modules)))
        else:
            low.ops.append(op)
            low.sources.append(_strip_root(str(node.target)) if node.op == "call_module" else node.name)
    return low


def _strip_root(path: str) -> str:
    """Module path inside the traced model (drop the wrapping container's '0' prefix)."""
    return "" if path == "0" else path[2:] if path.startswith("0.") else path


def _node_type_and_name(node, modules) -> tuple[str, str]:
    """('Conv2d', 'blocks.3.conv'), ('add', 'add_2'), ('view', 'view'): what the user sees of a node."""
    if node.op == "call_module":
        return type(modules[node.target]).__name__, _strip_root(str(node.target)) or "model"
    return getattr(node.target, "__name__", str(node.target)), node.name


def _node_label(node, modules) -> str:
    """'Flatten(head.flatten)': a node as `Lowering.free` lists it."""
    return "{}({})".format(*_node_type_and_name(node, modules))


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
# nodes that give their input's data a new shape or pass it on: runtimes make them views or drop them
_ONNX_VIEWS = {"Flatten", "Reshape", "Identity", "Dropout", "Squeeze", "Unsqueeze"}
# nodes whose output is known before any input data is: a constant, a tensor's shape or size
_ONNX_STATIC = {"Constant", "Shape", "Size"}


class _Unmappable(Exception):
    """A node of a type latbench maps, with shapes or attributes no latbench op describes."""


@dataclass
class _OnnxGraph:
    """What lowering reads of an ONNX graph: every tensor's shape (None for a dim inference could
    not tell), the constant tensors, and the tensors known without the input's data."""

    shapes: dict[str, tuple[int | None, ...]]
    consts: dict[str, Any]  # name -> TensorProto: initializers and Constant outputs
    static: set[str]

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's full shape; a shape inference left open makes the node unmappable."""
        s = self.shapes.get(name)
        if s is None:
            raise _Unmappable(f"the shape of {name!r} is unknown")
        if None in s:
            raise _Unmappable(f"the shape of {name!r} is unknown ({'x'.join('?' if d is None else str(d) for d in s)})")
        return s  # type: ignore[return-value]

    def x4(self, name: str) -> tuple[int, int, int, int]:
        """A tensor as (n, c, h, w): lower ranks padded with trailing 1s, higher ranks unmappable."""
        s = self.shape(name)
        if len(s) > 4:
            raise _Unmappable(f"{name!r} has rank {len(s)}; latbench ops take up to 4 dims")
        return tuple(s) + (1,) * (4 - len(s))  # type: ignore[return-value]


def read_onnx(model, input_shape: Sequence[int] | None = None) -> tuple[Any, str]:
    """(ModelProto with its input dims set to `input_shape`, the name errors use) of an ONNX path,
    bytes or ModelProto; errors as lower_onnx gives them."""
    onnx = require("onnx", "ort")
    proto, name = _load_onnx(onnx, model)
    return _set_input_shape(onnx, proto, name, input_shape), name


def lower_onnx(model, input_shape: Sequence[int] | None = None) -> Lowering:
    """An ONNX model (a path, bytes or a ModelProto) -> op-granularity OpSpecs, in graph order.

    Symbolic input dims need `input_shape` (one UsageError naming them otherwise); shapes come
    from ONNX shape inference with data propagation, and a node whose shape stays unknown is
    unmapped, never priced at a guessed size. Each node is one of three: shape-only (`free`:
    views - Reshape, Flatten, Squeeze, Unsqueeze, Identity, Dropout - and nodes whose every output
    is known without the input's data - Constant, Shape, Size, and Gather/Concat/Cast/... of such
    values or initializers, which runtimes fold away), compute mapped to an OpSpec (x * Sigmoid(x)
    as swish, Clip(0, 6) as relu6, HardSigmoid(1/6, 1/2) as hsigmoid, Gemm / MatMul by a 2-d
    weight as linear, a 5-D Transpose (0, 2, 1, 3, 4) between Reshapes as a channel shuffle), or
    compute listed in `unmapped` with the reason where there is one.
    """
    onnx = require("onnx", "ort")
    proto, name = read_onnx(model, input_shape)
    graph = _read_graph(onnx, proto, name)
    swish = _swish_sigmoids(proto.graph)
    low = Lowering()
    for node in proto.graph.node:
        label = node.name or node.output[0]
        if node.op_type in _ONNX_VIEWS or all(o in graph.static for o in node.output if o):
            low.free.append(f"{node.op_type}({label})")
            continue
        if node.op_type == "Sigmoid" and node.output[0] in swish:
            continue  # priced with the Mul that makes it a swish
        try:
            op = _onnx_op(onnx, node, graph, swish)
        except (_Unmappable, OpError) as e:
            low.unmapped.append(Unmapped(node.op_type, label, str(e)))
            continue
        if op is None:
            low.unmapped.append(Unmapped(node.op_type, label))
        else:
            low.ops.append(op)
            low.sources.append(label)
    return low


def _load_onnx(onnx, model) -> tuple[Any, str]:
    """(ModelProto, the name errors use) from a path, bytes or a ModelProto; a file that is not
    an ONNX model is one FormatError naming it."""
    from google.protobuf.message import DecodeError

    if isinstance(model, onnx.ModelProto):
        return model, "the ONNX model"
    if isinstance(model, (bytes, bytearray, memoryview)):
        name, load = "the ONNX bytes", lambda: onnx.load_from_string(bytes(model))
    else:
        try:
            path = os.fsdecode(os.fspath(model))
        except TypeError:
            raise UsageError(f"lower_onnx takes a path, bytes or an onnx.ModelProto, not "
                             f"{type(model).__name__}") from None
        if not os.path.isfile(path):
            raise UsageError(f"{path}: no such ONNX file")
        name, load = path, lambda: onnx.load(path, load_external_data=False)
    try:
        proto = load()
    except DecodeError as e:
        raise FormatError(f"{name}: not an ONNX model ({e})") from None
    except OSError as e:
        raise FormatError(f"{name}: cannot read it ({e.strerror or e})") from None
    if proto.ir_version <= 0 or not proto.graph.node:
        raise FormatError(f"{name}: not an ONNX model (it has no IR version or no graph nodes)")
    return proto, name


def _dims_text(dims) -> str:
    return "x".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)


def _set_input_shape(onnx, proto, name: str, input_shape: Sequence[int] | None):
    """The model with its one data input's dims set to `input_shape` (a copy); without one,
    symbolic input dims are a UsageError naming the input and its dims."""
    inits = {t.name for t in proto.graph.initializer}
    inputs = [vi for vi in proto.graph.input if vi.name not in inits]
    if input_shape is None:
        for vi in inputs:
            dims = vi.type.tensor_type.shape.dim
            sym = [d.dim_param or "?" for d in dims if not d.HasField("dim_value")]
            if sym:
                raise UsageError(f"{name}: input {vi.name!r} has symbolic dims {', '.join(sym)} "
                                 f"(shape {_dims_text(dims)}); give its shape with --input-shape N,C,H,W")
        return proto
    shape = [int(v) for v in input_shape]
    if not shape or any(v < 1 for v in shape):
        raise UsageError(f"an input shape is positive sizes, e.g. 1,3,224,224; got {input_shape!r}")
    if len(inputs) != 1:
        raise UsageError(f"{name}: an input shape sets the shape of a model with one input; this one has "
                         f"{len(inputs)} ({', '.join(vi.name for vi in inputs)})")
    dims = inputs[0].type.tensor_type.shape.dim
    given = ",".join(map(str, shape))
    if len(dims) != len(shape):
        raise UsageError(f"{name}: input {inputs[0].name!r} has {len(dims)} dims ({_dims_text(dims)}); "
                         f"the input shape {given} has {len(shape)}")
    for i, (d, v) in enumerate(zip(dims, shape)):
        if d.HasField("dim_value") and d.dim_value != v:
            raise UsageError(f"{name}: input {inputs[0].name!r} is {_dims_text(dims)}, fixed at {d.dim_value} "
                             f"in dim {i}; the input shape {given} has {v} there")
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    target = next(vi for vi in out.graph.input if vi.name == inputs[0].name)
    for d, v in zip(target.type.tensor_type.shape.dim, shape):
        d.dim_value = v  # replaces dim_param (one of the two)
    return out


def _read_graph(onnx, proto, name: str) -> _OnnxGraph:
    """Shapes by ONNX shape inference (data propagation resolves Shape->Concat->Reshape chains),
    constant tensors, and the static set: constants, Shape/Size outputs and what only they feed."""
    from onnx import shape_inference

    try:
        proto = shape_inference.infer_shapes(proto, data_prop=True)
    except (shape_inference.InferenceError, ValueError) as e:
        raise FormatError(f"{name}: ONNX shape inference failed ({' '.join(str(e).split())})") from None
    g = proto.graph
    shapes: dict[str, tuple[int | None, ...]] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                    for d in vi.type.tensor_type.shape.dim)
    consts: dict[str, Any] = {t.name: t for t in g.initializer}
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = a.t
    for cname, t in consts.items():
        shapes.setdefault(cname, tuple(t.dims))
    static = set(consts)
    for node in g.node:
        inputs = [i for i in node.input if i]
        if node.op_type in _ONNX_STATIC or (inputs and all(i in static for i in inputs)):
            static.update(o for o in node.output if o)
    return _OnnxGraph(shapes, consts, static)


def _swish_sigmoids(g) -> set[str]:
    """Outputs of Sigmoid(x) whose one consumer is Mul(x, Sigmoid(x)): a swish, priced once."""
    sigmoid_of = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Sigmoid"}
    consumers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    out = set()
    for n in g.node:
        if n.op_type == "Mul" and len(n.input) == 2:
            for s, x in (n.input, n.input[::-1]):
                if sigmoid_of.get(s) == x and consumers.get(s) == 1:
                    out.add(s)
    return out


def _one(what: str, values, n: int = 2) -> int:
    """The one value of a square 2-d attribute (kernel, strides, pads as 4 values...)."""
    values = [int(v) for v in values]
    if len(values) != n or len(set(values)) != 1:
        raise _Unmappable(f"{what} {values}: latbench ops take one value for both spatial dims")
    return values[0]


def _onnx_op(onnx, node, graph: _OnnxGraph, swish: set[str]) -> OpSpec | None:
    """The OpSpec of one compute node; None for a type latbench has no op for."""
    t = node.op_type
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if t == "Conv":
        w = graph.shape(node.input[1])
        k = _one("kernel_shape", attrs.get("kernel_shape", w[2:]))
        s = _one("strides", attrs.get("strides", (1, 1)))
        d = _one("dilations", attrs.get("dilations", (1, 1)))
        x = graph.x4(node.input[0])
        p = _one("pads", _pads(attrs, x, k, s, d), 4)
        return O.conv(x, w[0], k, s, p, d, attrs.get("group", 1), len(node.input) > 2)
    if t == "BatchNormalization":
        return O.batch_norm(graph.x4(node.input[0]))
    if t in _ONNX_ACTS:
        return O.activation(graph.x4(node.input[0]), _ONNX_ACTS[t])
    if t == "Clip":
        bounds = _clip_bounds(node, attrs, graph.consts)
        if bounds != (0.0, 6.0):
            raise _Unmappable(f"Clip{bounds} is not relu6 (0, 6)")
        return O.activation(graph.x4(node.input[0]), "relu6")
    if t == "HardSigmoid":
        if abs(attrs.get("alpha", 0.2) - 1 / 6) > 1e-6 or abs(attrs.get("beta", 0.5) - 0.5) > 1e-6:
            raise _Unmappable("alpha/beta other than hsigmoid's 1/6, 1/2")
        return O.activation(graph.x4(node.input[0]), "hsigmoid")
    if t == "Mul" and any(i in swish for i in node.input):
        return O.activation(graph.x4(node.output[0]), "swish")
    if t in _ONNX_ELTWISE and len(node.input) == 2:
        return _eltwise(graph.x4(node.input[0]), graph.x4(node.input[1]), _ONNX_ELTWISE[t])
    if t in ("GlobalAveragePool", "GlobalMaxPool"):
        return O.pool(graph.x4(node.input[0]), "avg" if t == "GlobalAveragePool" else "max", global_pool=True)
    if t in ("AveragePool", "MaxPool"):
        return _onnx_pool(graph.x4(node.input[0]), t, attrs)
    if t == "Gemm":
        if attrs.get("transA", 0):
            raise _Unmappable("transA: latbench's linear takes (n, in) inputs")
        w = graph.shape(node.input[1])
        out, cin = (w[0], w[1]) if attrs.get("transB", 0) else (w[1], w[0])
        return O.linear(graph.shape(node.input[0])[0], cin, out, bias=len(node.input) > 2)
    if t == "MatMul":
        x, w = graph.shape(node.input[0]), graph.shape(node.input[1])
        if len(x) != 2 or len(w) != 2 or node.input[1] not in graph.static:
            raise _Unmappable(f"{'x'.join(map(str, x))} by {'x'.join(map(str, w))}: latbench's linear is "
                              f"a 2-d input by a 2-d weight")
        return O.linear(x[0], w[0], w[1], bias=False)
    if t == "Softmax":
        axis, rank = attrs.get("axis", -1), len(graph.shape(node.input[0]))
        return O.softmax(graph.x4(node.input[0]), axis % rank)
    if t == "Transpose":
        return _onnx_shuffle(graph.shape(node.input[0]), attrs.get("perm"))
    return None


_SHUFFLE_PERM = [0, 2, 1, 3, 4]


def _onnx_shuffle(x: tuple[int, ...], perm) -> OpSpec:
    """Transpose (n, g, c/g, h, w) -> (n, c/g, g, h, w): a channel shuffle's data movement (the
    Reshapes around it, as torch_build's export and onnx_build write it, are views)."""
    if len(x) != 5 or perm is None or list(perm) != _SHUFFLE_PERM or x[1] < 2:
        shown = "reversed axes" if perm is None else f"perm {list(perm)}"
        raise _Unmappable(f"{shown} of a {'x'.join(map(str, x))} tensor: latbench times a transpose only as "
                          f"a channel shuffle's (n, g, c/g, h, w) with perm {_SHUFFLE_PERM}")
    n, g, cg, h, w = x
    return O.shuffle((n, g * cg, h, w), g)


def _eltwise(a: tuple[int, int, int, int], b: tuple[int, int, int, int], kind: str) -> OpSpec:
    """Same shapes, or a per-channel (n, c, 1, 1) operand: the two forms latbench measures."""
    big, small = (a, b) if _numel(a) >= _numel(b) else (b, a)
    if big != small and not (small[2:] == (1, 1) and small[:2] == big[:2]):
        raise _Unmappable(f"operands {'x'.join(map(str, a))} and {'x'.join(map(str, b))}: latbench's "
                          f"eltwise takes equal shapes or a per-channel (n, c, 1, 1) operand")
    return O.eltwise(big, kind, broadcast=big != small)


def _pads(attrs: dict, x: tuple[int, int, int, int], k: int, s: int, d: int = 1) -> list[int]:
    """A conv's or pool's pads (top, left, bottom, right) as ONNX gives them: `pads`, or what
    `auto_pad` means for this input (VALID: none; SAME_UPPER / SAME_LOWER: the output is
    ceil(in / stride), the odd pixel of an odd total at the end / the start). Asymmetric pads
    stay as they are: `_one` refuses them, naming them."""
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto == "NOTSET":
        return [int(v) for v in attrs.get("pads", (0, 0, 0, 0))]
    if auto == "VALID":
        return [0, 0, 0, 0]
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise _Unmappable(f"auto_pad {auto}")
    begin, end = [], []
    for size in x[2:]:
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small = total // 2
        begin.append(small if auto == "SAME_UPPER" else total - small)
        end.append(total - begin[-1])
    return begin + end


def _onnx_pool(x: tuple[int, int, int, int], t: str, attrs: dict) -> OpSpec:
    """AveragePool / MaxPool (ONNX's default strides are 1)."""
    k = _one("kernel_shape", attrs["kernel_shape"])
    s = _one("strides", attrs.get("strides", (1, 1)))
    p = _one("pads", _pads(attrs, x, k, s), 4)
    if _one("dilations", attrs.get("dilations", (1, 1))) != 1:
        raise _Unmappable("dilated pooling: latbench's pool has no dilation")
    ceil = bool(attrs.get("ceil_mode", 0))
    if t == "MaxPool":
        return O.pool(x, "max", k, s, p, ceil_mode=ceil)
    return O.pool(x, "avg", k, s, p, ceil_mode=ceil, count_pad=bool(attrs.get("count_include_pad", 0)) and p > 0)


def _clip_bounds(node, attrs, consts) -> tuple[float | None, float | None]:
    """Clip's min/max from attributes (old opsets) or constant inputs (opset >= 11)."""
    from onnx import numpy_helper

    lo, hi = attrs.get("min"), attrs.get("max")
    if len(node.input) > 1 and node.input[1] in consts:
        lo = float(numpy_helper.to_array(consts[node.input[1]]))
    if len(node.input) > 2 and node.input[2] in consts:
        hi = float(numpy_helper.to_array(consts[node.input[2]]))
    return (None if lo is None else float(lo), None if hi is None else float(hi))


# ---------------------------------------------------------------------- runtime graphs
# values kept in a node's key: small integer tensors (shape arithmetic: Reshape's shape, Slice's
# starts, Pad's pads), float constant scalars (Clip's bounds, a Pow's exponent, an epsilon, the
# attention scale) and the float inputs that say what an op does (Resize's roi and scales); never
# weights or biases, whose values change nothing of the kernel's work
INT_VALUES_MAX = 64
_FLOAT_PARAMS = {("", "Resize"): (1, 2), ("", "Upsample"): (1,)}


def lower_graph(proto, tensors: dict[str, Any]) -> Lowering:
    """A runtime's own graph (e.g. ONNX Runtime's optimised model, contrib domains and NCHWc
    layout included) -> one node op (latbench.nodes) per node, in graph order.

    `tensors` maps every tensor the graph computes (graph input included) to its TensorSpec
    (`tensor_spec` of its value in one run of the graph): shapes and dtypes are what the runtime
    really produced, small integer values (shape arithmetic) too. Constant nodes are `free`; a node with a subgraph
    (If, Loop, Scan) is unmapped - it is control flow, not one kernel."""
    onnx = require("onnx", "ort")
    from onnx import numpy_helper

    from .nodes import EmptyList, NodeSpec, TensorSpec

    g = proto.graph
    versions = {o.domain if o.domain != "ai.onnx" else "": o.version for o in proto.opset_import}
    consts = {t.name: t for t in g.initializer}
    AT = onnx.AttributeProto

    def spec(name: str, param: bool = False) -> TensorSpec | None:
        if not name:
            return None
        if name in consts:
            return tensor_spec(numpy_helper.to_array(consts[name]), const=True, param=param)
        if name not in tensors:
            raise _Unmappable(f"the run of the graph gave no value for {name!r}")
        return tensors[name]

    def attr(a) -> Any:
        if a.type in (AT.GRAPH, AT.GRAPHS):
            raise _Unmappable("control flow (a subgraph attribute) is not one kernel")
        if a.type in (AT.SPARSE_TENSOR, AT.SPARSE_TENSORS, AT.TENSORS, AT.TYPE_PROTO, AT.TYPE_PROTOS):
            raise _Unmappable(f"attribute {a.name!r} of a type latbench does not time ({a.type})")
        v = onnx.helper.get_attribute_value(a)
        if a.type == AT.TENSOR:
            return tensor_spec(numpy_helper.to_array(v), const=True)
        if a.type == AT.STRING:
            return v.decode()
        if a.type in (AT.INTS, AT.FLOATS, AT.STRINGS):
            if not v:
                return () if a.type == AT.INTS else EmptyList("f" if a.type == AT.FLOATS else "s")
            return tuple(x.decode() if isinstance(x, bytes) else x for x in v)
        return v

    low = Lowering()
    for node in g.node:
        label = node.name or node.output[0]
        if node.op_type == "Constant" and not node.domain:
            low.free.append(f"Constant({label})")
            continue
        domain = node.domain if node.domain != "ai.onnx" else ""
        params = _FLOAT_PARAMS.get((domain, node.op_type), ())
        try:
            spec_ = NodeSpec(node.op_type, domain, versions.get(domain, 1),
                             tuple(spec(n, i in params) for i, n in enumerate(node.input)),
                             tuple(spec(o) for o in node.output),
                             tuple(sorted((a.name, attr(a)) for a in node.attribute)))
        except (_Unmappable, OpError) as e:
            low.unmapped.append(Unmapped(f"{node.domain + '/' if node.domain else ''}{node.op_type}", label, str(e)))
            continue
        low.ops.append(O.node(spec_))
        low.sources.append(label)
    return low


def tensor_spec(arr, const: bool = False, param: bool = False):
    """A tensor's spec (latbench.nodes.TensorSpec) from its value (a numpy array): values kept
    where they decide what a node does (small integer tensors; float constants that are scalars
    or, `param`, an op's parameter input). A dtype no node op takes raises OpError."""
    from .nodes import DTYPES, TensorSpec

    dtype = str(arr.dtype)
    if dtype not in DTYPES:
        raise OpError(f"a {dtype} tensor: node ops take {', '.join(DTYPES)}")
    is_float = dtype.startswith(("float", "bfloat"))
    keep = const and (arr.size <= 1 or param) if is_float else arr.size <= INT_VALUES_MAX
    values = tuple(arr.reshape(-1).tolist()) if keep else None
    return TensorSpec(tuple(int(d) for d in arr.shape), dtype, const, values)

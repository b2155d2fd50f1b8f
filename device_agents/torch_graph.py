"""A torch module as torch eager runs it: the ATen operator calls `torch.export` records, each
one a node op (latbench.nodes, domain "aten") that the torch agents rebuild and call alone.

Eager runs a module as a sequence of ATen operator calls (aten.conv2d, aten.linear,
aten.layer_norm, aten.scaled_dot_product_attention, aten.gelu, aten.transpose...), one dispatch
each. `torch.export.export(module, (x,), strict=False)` records exactly those calls with every
argument: tensors (shape and dtype from its fake run), parameters and buffers (constants of the
model), and the plain arguments (ints, floats, lists, dtypes). A node's key holds them all, so a
table row is one operator call with one set of arguments, shared across models.

Rebuilding a call reads the operator's own schema: which positions take tensors, which take a
bool, a dtype or a list. Only `torch.ops.aten` operators are called, by name; nothing else from
a key is ever evaluated.
"""
from __future__ import annotations

import operator
from typing import Any, Callable, Sequence

import numpy as np

from latbench import ops as O
from latbench.errors import OpError, UsageError, require
from latbench.lower import Lowering, Unmapped, tensor_spec
from latbench.nodes import DTYPES, EmptyList, NodeSpec, TensorSpec

from .weights import spec_values

torch = require("torch", "torch")

ATEN = "aten"
_ENUMS = ("ScalarType", "Layout", "Device", "MemoryFormat")
_EXPORT_ONLY = ("_assert", "sym_")  # calls torch.export adds to check its own assumptions


def _dtype_name(dtype) -> str:
    name = str(dtype).replace("torch.", "")
    if name not in DTYPES:
        raise OpError(f"a {name} tensor: node ops take {', '.join(DTYPES)}")
    return name


def _fake_spec(val, const: bool = False, real=None) -> TensorSpec:
    """A TensorSpec from an exported graph's value (a FakeTensor); `real` the parameter's data,
    whose values are kept where latbench.lower.tensor_spec keeps them (float scalars, small
    integer tensors; numpy has no bfloat16, so such a constant keeps none)."""
    dtype = _dtype_name(val.dtype)
    if real is not None and dtype != "bfloat16":
        return tensor_spec(real.detach().cpu().numpy(), const=True)
    return TensorSpec(tuple(int(d) for d in val.shape), dtype, const, None)


def _plain(value, where: str) -> Any:
    """A non-tensor argument as a key value (ints, floats, strings, tuples of them; enums by name)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        if not value:
            return ()
        return tuple(_plain(v, where) for v in value)
    if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)):
        return str(value).replace("torch.", "")
    if isinstance(value, torch.device):
        return str(value)
    raise OpError(f"{where}: argument {value!r} of type {type(value).__name__} has no key form")


def lower_module(module, input_shape: Sequence[int]) -> Lowering:
    """`module` (eval mode, a float32 input of `input_shape`) as the ATen calls eager makes, one
    node op each, in order. Calls that only unpack a tuple result (getitem) are free; a call
    outside aten, or an argument with no key form, is unmapped with the reason."""
    module = module.eval()
    x = torch.zeros(tuple(int(d) for d in input_shape))
    try:
        with torch.no_grad():
            ep = torch.export.export(module, (x,), strict=False)
    except Exception as e:  # noqa: BLE001 - whatever export raises for a user's module, in one line
        raise UsageError(f"torch.export cannot record {type(module).__name__} "
                         f"({type(e).__name__}: {' '.join(str(e).split())[:300]}); price it on --device ort") from None
    sig = ep.graph_signature
    state = dict(ep.state_dict)
    state.update(getattr(ep, "constants", {}) or {})
    const_of = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
                **getattr(sig, "inputs_to_lifted_tensor_constants", {})}
    low = Lowering()
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        label = node.name
        target = node.target
        if target is operator.getitem:
            low.free.append(f"getitem({label})")
            continue
        if isinstance(target, torch._ops.OpOverload) and _op_name(target).startswith(_EXPORT_ONLY):
            low.free.append(f"{_op_name(target)}({label})")  # export's own checks: eager makes no such call
            continue
        if not isinstance(target, torch._ops.OpOverload) or target.namespace != ATEN:
            low.unmapped.append(Unmapped(str(target), label, "not an ATen operator call"))
            continue
        try:
            spec = _node_spec(node, target, const_of, state)
        except OpError as e:
            low.unmapped.append(Unmapped(f"aten.{_op_name(target)}", label, str(e)))
            continue
        low.ops.append(O.node(spec))
        low.sources.append(label)
    return low


def _op_name(target) -> str:
    """'linear.default' for aten.linear.default."""
    return f"{target._schema.name.split('::', 1)[1]}.{target._overloadname}"


def _node_spec(node, target, const_of: dict, state: dict) -> NodeSpec:
    where = f"aten.{_op_name(target)}"
    inputs: list[TensorSpec | None] = []
    attrs: dict[str, Any] = {"nargs": len(node.args)}

    def tensor(arg) -> TensorSpec:
        val = arg.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise OpError(f"{where}: input {arg.name} has no tensor value")
        if arg.op == "placeholder" and arg.name in const_of:
            real = state.get(const_of[arg.name])
            return _fake_spec(val, True, real)
        return _fake_spec(val)

    for i, arg in enumerate(node.args):
        if arg is None:
            inputs.append(None)
        elif isinstance(arg, torch.fx.Node):
            inputs.append(tensor(arg))
        elif isinstance(arg, (list, tuple)) and arg and all(isinstance(a, torch.fx.Node) for a in arg):
            attrs[f"t{i}"] = len(arg)  # a list of tensors (cat, stack)
            inputs.extend(tensor(a) for a in arg)
        else:
            attrs[f"a{i}"] = _plain(arg, where)
    for name, arg in node.kwargs.items():
        if arg is None:
            continue
        if isinstance(arg, torch.fx.Node):
            raise OpError(f"{where}: tensor keyword argument {name!r}")
        attrs[f"k_{name}"] = _plain(arg, where)
    val = node.meta.get("val")
    outs = val if isinstance(val, (list, tuple)) else (val,)
    outputs = tuple(_fake_spec(v) if isinstance(v, torch.Tensor) else None for v in outs)
    if not any(o is not None for o in outputs):
        raise OpError(f"{where}: it returns no tensor")
    return NodeSpec(_op_name(target), ATEN, 0, tuple(inputs), outputs, tuple(sorted(attrs.items())))


# ---------------------------------------------------------------------- calling one node
def aten_operator(spec: NodeSpec):
    """The torch.ops.aten operator a node names (only that namespace is ever looked up)."""
    if spec.domain != ATEN:
        raise OpError(f"{spec.qualified}: not an ATen node")
    name, _, overload = spec.op_type.partition(".")
    packet = getattr(torch.ops.aten, name, None)
    op = getattr(packet, overload, None) if packet is not None else None
    if not isinstance(op, torch._ops.OpOverload):
        raise OpError(f"aten.{spec.op_type}: no such operator in torch {torch.__version__}")
    return op


def node_call(spec: NodeSpec, device, pool: np.ndarray) -> tuple[Callable[[], Any], list]:
    """(a call of the node's operator on fresh inputs of its shapes, those tensors): data and
    constant tensors from `pool` (floats; their recorded values where kept) or zeros (integers)."""
    op = aten_operator(spec)
    attrs = dict(spec.attrs)
    schema = op._schema
    tensors = iter(spec.inputs)
    made: list = []
    at = 0

    def next_tensor():
        nonlocal at
        t = next(tensors)
        if t is None:
            return None
        v = _make(t, pool, at, device)
        at += t.numel
        made.append(v)
        return v

    args = []
    for i in range(int(attrs.get("nargs", 0))):
        kind = _real_type(schema.arguments[i]) if i < len(schema.arguments) else None
        if f"a{i}" in attrs:
            args.append(_arg(attrs[f"a{i}"], kind))
        elif f"t{i}" in attrs:
            args.append([next_tensor() for _ in range(int(attrs[f"t{i}"]))])
        else:
            args.append(next_tensor())
    kw_types = {a.name: _real_type(a) for a in schema.arguments}
    kwargs = {k[2:]: _arg(v, kw_types.get(k[2:])) for k, v in attrs.items() if k.startswith("k_")}

    def call() -> Any:
        return op(*args, **kwargs)

    return call, made


def _real_type(argument):
    """An argument's declared type (ScalarType, Layout... where the schema's `type` says int)."""
    return getattr(argument, "real_type", argument.type)


def _arg(value: Any, kind) -> Any:
    """A key value as the schema's argument type wants it (bool, dtype, device...)."""
    text = str(kind) if kind is not None else ""
    base = text.rstrip("?")
    if base == "bool":
        return bool(value)
    if base == "bool[]" or base.startswith("bool["):
        return [bool(v) for v in value]
    if base in _ENUMS:
        if not isinstance(value, str):
            raise OpError(f"{value!r} is not a torch {base} name")
        if base == "Device":
            return torch.device(value)
        enum = getattr(torch, value, None)
        wanted = {"ScalarType": torch.dtype, "Layout": torch.layout, "MemoryFormat": torch.memory_format}[base]
        if not isinstance(enum, wanted):
            raise OpError(f"{value!r} is not a torch {base}")
        return enum
    if isinstance(value, EmptyList):
        return []
    if isinstance(value, tuple):
        return list(value)
    if base == "float" and isinstance(value, int):
        return float(value)
    return value


def _make(t: TensorSpec, pool: np.ndarray, at: int, device):
    """A tensor for `t` on `device` (weights.spec_values; bfloat16, which numpy lacks, via float32)."""
    spec = t if t.dtype != "bfloat16" else TensorSpec(t.shape, "float32", t.const, t.values)
    out = torch.from_numpy(np.ascontiguousarray(spec_values(spec, pool, at)))
    return out.to(getattr(torch, t.dtype)).to(device) if t.dtype == "bfloat16" else out.to(device)


__all__ = ["ATEN", "aten_operator", "lower_module", "node_call"]

"""A whole .tflite model as LiteRT runs it: its operators, one by one.

A .tflite file is already the runtime's own graph: the converter has fused, folded and laid it
out, and the interpreter runs its main subgraph's operators in the order listed. So every
operator becomes one node op (latbench.nodes, domain "tflite"): its BuiltinOperator name
(CONV_2D, FULLY_CONNECTED...), its opcode version, every input and output tensor with the shape
and dtype one seeded run of the model gave it (small integer values too: RESHAPE's shape,
SLICE's begin/size, PAD's paddings), and the fields of its builtin options object as attributes
(the schema's snake_case names, enums as ints, vectors as tuples, absent fields left out).

`tflite_node_model` rebuilds one operator from its NodeSpec alone as a one-operator .tflite:
constants as aligned buffers (recorded values, else cut from a pool / zeros), data inputs as the
subgraph's inputs with arrays to feed, the options object rebuilt field by field.

What a key cannot describe is unmapped, never dropped: custom operators, control flow (an
operator that calls another subgraph), quantized or sparse tensors, options that are nested
tables or a type other than the one the operator's name implies.
"""
from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

import flatbuffers
import numpy as np

from latbench import ops as O
from latbench.errors import FormatError, OpError
from latbench.lower import Lowering, Unmapped, tensor_spec
from latbench.nodes import EmptyList, NodeSpec, TensorSpec

from .tflite_build import SCHEMA_VERSION, S, _AlignedBuffer
from .weights import spec_values

DOMAIN = "tflite"
BO = S.BuiltinOperator
OPT = S.BuiltinOptions
OP_NAMES = {v: k for k, v in vars(BO).items() if not k.startswith("_")}
OPTION_NAMES = {v: k for k, v in vars(OPT).items() if not k.startswith("_")}

# TensorType <-> numpy dtype name (the dtypes node keys take)
_TT = S.TensorType
DTYPE_OF_TYPE = {_TT.FLOAT32: "float32", _TT.FLOAT16: "float16", _TT.FLOAT64: "float64", _TT.INT64: "int64",
                 _TT.INT32: "int32", _TT.INT16: "int16", _TT.INT8: "int8", _TT.UINT8: "uint8",
                 _TT.UINT16: "uint16", _TT.UINT32: "uint32", _TT.UINT64: "uint64", _TT.BOOL: "bool"}
if hasattr(_TT, "BFLOAT16"):
    DTYPE_OF_TYPE[_TT.BFLOAT16] = "bfloat16"
TYPE_OF_DTYPE = {v: k for k, v in DTYPE_OF_TYPE.items()}

# operators whose options type is not CamelCase(name) + "Options"
_OPTIONS_OF = {
    "AVERAGE_POOL_2D": "Pool2DOptions", "MAX_POOL_2D": "Pool2DOptions", "L2_POOL_2D": "Pool2DOptions",
    "MEAN": "ReducerOptions", "SUM": "ReducerOptions", "REDUCE_PROD": "ReducerOptions",
    "REDUCE_MAX": "ReducerOptions", "REDUCE_MIN": "ReducerOptions", "REDUCE_ANY": "ReducerOptions",
    "REDUCE_ALL": "ReducerOptions", "MAXIMUM": "MaximumMinimumOptions", "MINIMUM": "MaximumMinimumOptions",
    "L2_NORMALIZATION": "L2NormOptions", "PADV2": "PadV2Options", "TOPK_V2": "TopKV2Options",
    "BATCH_MATMUL": "BatchMatMulOptions", "ATAN2": "ATan2Options", "CONV_3D_TRANSPOSE": "Conv3DOptions",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "UnidirectionalSequenceLSTMOptions",
    "BIDIRECTIONAL_SEQUENCE_LSTM": "BidirectionalSequenceLSTMOptions",
    "BIDIRECTIONAL_SEQUENCE_RNN": "BidirectionalSequenceRNNOptions",
    "UNIDIRECTIONAL_SEQUENCE_RNN": "SequenceRNNOptions", "RANDOM_STANDARD_NORMAL": "RandomOptions",
    "RANDOM_UNIFORM": "RandomOptions", "MULTINOMIAL": "RandomOptions", "LSH_PROJECTION": "LSHProjectionOptions",
    "SVDF": "SVDFOptions", "RNN": "RNNOptions", "LSTM": "LSTMOptions",
}
# operators that run other subgraphs: control flow, not one kernel
_CALLS = {"IF", "WHILE", "CALL", "CALL_ONCE", "STABLEHLO_WHILE", "STABLEHLO_CASE", "STABLEHLO_COMPOSITE",
          "STABLEHLO_REDUCE", "STABLEHLO_REDUCE_WINDOW", "STABLEHLO_SORT", "STABLEHLO_SCATTER"}


class _Unmappable(Exception):
    pass


def options_type(op_type: str) -> int | None:
    """The BuiltinOptions type of operator `op_type` (None: it takes none latbench knows)."""
    name = _OPTIONS_OF.get(op_type)
    if name is None:
        parts = [p.upper() if re.fullmatch(r"\d+D|ND", p) else p.capitalize() for p in op_type.split("_")]
        name = "".join(parts) + "Options"
    return getattr(OPT, name, None)


def snake(name: str) -> str:
    """The schema's field name of an object-API attribute: strideH -> stride_h."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _options_class(code: int):
    return getattr(S, OPTION_NAMES[code] + "T")


# ---------------------------------------------------------------------- reading
def read_model(model: bytes, name: str = "<model>"):
    """The ModelT of .tflite bytes; anything else is one FormatError naming it."""
    buf = bytes(model)
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise FormatError(f"{name}: not a .tflite model (no TFL3 file identifier)")
    try:
        m = S.ModelT.InitFromPackedBuf(buf, 0)
    except Exception as e:  # noqa: BLE001 - a corrupt flatbuffer fails anywhere inside
        raise FormatError(f"{name}: not a readable .tflite model ({' '.join(str(e).split())[:200]})") from None
    if not m.subgraphs:
        raise FormatError(f"{name}: a .tflite model with no subgraph")
    return m


def _has_data(m, t) -> bool:
    b = m.buffers[t.buffer] if m.buffers and 0 <= t.buffer < len(m.buffers) else None
    if b is None:
        return False
    return (b.data is not None and len(b.data) > 0) or bool(getattr(b, "size", 0))


def _attr_value(field: str, v: Any) -> Any:
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, str):
        return v
    if isinstance(v, (list, tuple, np.ndarray)):
        arr = np.asarray(v)
        if arr.ndim != 1 or arr.dtype.kind not in "iufb":
            raise _Unmappable(f"option {field!r} is not a flat vector of numbers")
        if arr.size == 0:
            return EmptyList("f") if arr.dtype.kind == "f" else ()
        return tuple(float(x) for x in arr) if arr.dtype.kind == "f" else tuple(int(x) for x in arr)
    raise _Unmappable(f"option {field!r} is a {type(v).__name__} (a nested table), which a key cannot hold")


def op_attrs(op_type: str, op) -> tuple[tuple[str, Any], ...]:
    """The builtin options of operator `op` as sorted (snake_case field, value) pairs."""
    if getattr(op, "builtinOptions2Type", 0):
        raise _Unmappable("builtin options 2 (StableHLO) are not described by a key")
    if op.builtinOptionsType == OPT.NONE or op.builtinOptions is None:
        return ()
    attrs = tuple(sorted((snake(k), _attr_value(snake(k), v)) for k, v in vars(op.builtinOptions).items()
                         if v is not None))
    if attrs and options_type(op_type) != op.builtinOptionsType:
        raise _Unmappable(f"options {OPTION_NAMES.get(op.builtinOptionsType)} are not the ones {op_type} takes")
    return attrs


def _feeds(it, pool: np.ndarray) -> None:
    at = 0
    for d in it.get_input_details():
        shape, dtype = tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"])
        t = TensorSpec(shape, str(dtype)) if str(dtype) in TYPE_OF_DTYPE else None
        arr = spec_values(t, pool, at) if t is not None else np.zeros(shape, dtype)
        at += arr.size
        it.set_tensor(d["index"], arr)


def lower_tflite(model: bytes, interpreter_factory: Callable[..., Any], pool: np.ndarray,
                 name: str = "<model>") -> Lowering:
    """A .tflite model's main subgraph, one node op (domain "tflite") per operator in execution
    order. `interpreter_factory(model_bytes)` gives an allocated interpreter with every tensor
    preserved (experimental_preserve_all_tensors), run once on seeded inputs (floats from `pool`,
    integers zeros) so every tensor's shape, dtype and small integer values are the real ones.
    Reshape-like operators (RESHAPE, SQUEEZE, EXPAND_DIMS) are `free`: inside a model LiteRT runs
    them on its input's buffer (16 MB ADD -> RESHAPE -> ADD times as ADD -> ADD, XNNPACK or
    builtin), while one alone would copy its input, a cost the model never pays."""
    m = read_model(model, name)
    sg = m.subgraphs[0]
    it = interpreter_factory(bytes(model))
    _feeds(it, pool)
    it.invoke()
    cache: dict[int, TensorSpec] = {}

    def spec(i: int) -> TensorSpec | None:
        if i < 0:
            return None
        if i in cache:
            return cache[i]
        t = sg.tensors[i]
        q = t.quantization
        if q is not None and (q.scale is not None and len(q.scale) or q.details is not None):
            raise _Unmappable(f"tensor {_text(t.name)!r} is quantized; node keys hold float and plain integer tensors")
        if t.sparsity is not None:
            raise _Unmappable(f"tensor {_text(t.name)!r} is sparse")
        if t.isVariable:
            raise _Unmappable(f"tensor {_text(t.name)!r} is a variable (state kept between runs)")
        try:
            value = it.get_tensor(i)
        except ValueError as e:
            raise _Unmappable(f"the run of the model gave no value for tensor {_text(t.name)!r} ({e})") from None
        cache[i] = tensor_spec(np.asarray(value), const=_has_data(m, t))
        return cache[i]

    low = Lowering()
    for k, op in enumerate(sg.operators):
        oc = m.operatorCodes[op.opcodeIndex]
        code = max(oc.builtinCode, oc.deprecatedBuiltinCode)
        op_type = OP_NAMES.get(code, f"BUILTIN_{code}")
        outs = [] if op.outputs is None else list(op.outputs)
        label = f"{k}:{_text(sg.tensors[outs[0]].name) if outs and outs[0] >= 0 else op_type}"
        try:
            if op_type == "CUSTOM":
                raise _Unmappable(f"custom operator {_text(oc.customCode)!r}: its options are opaque bytes")
            if op_type in _CALLS:
                raise _Unmappable("control flow (it runs other subgraphs) is not one kernel")
            if op.intermediates is not None and len(op.intermediates):
                raise _Unmappable("an operator with intermediate tensors (a quantized LSTM)")
            ins = [] if op.inputs is None else list(op.inputs)
            spec_ = NodeSpec(op_type, DOMAIN, int(oc.version), tuple(spec(int(i)) for i in ins),
                             tuple(spec(int(o)) for o in outs), op_attrs(op_type, op))
        except (_Unmappable, OpError) as e:
            low.unmapped.append(Unmapped(f"{DOMAIN}/{op_type}", label, str(e)))
            continue
        if spec_.is_view:  # the runtime hands the input's buffer on: no kernel inside a model
            low.free.append(f"{op_type}({label})")
            continue
        low.ops.append(O.node(spec_))
        low.sources.append(label)
    return low


def _text(v) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


# ---------------------------------------------------------------------- rebuilding
class TfliteNodeModel(NamedTuple):
    """One operator as a model: .tflite bytes, the arrays to feed its data inputs (by tensor
    index in that model), and the tensor indices of its outputs (spec.outputs order, None skipped).
    Tensors are named in<i> / out<j> after their position in the operator."""

    model: bytes
    feeds: dict[int, np.ndarray]
    outputs: list[int]


def tflite_node_model(spec: NodeSpec, pool: np.ndarray, consts: dict[int, np.ndarray] | None = None) -> TfliteNodeModel:
    """`spec` (a node of domain "tflite") as a one-operator .tflite model. Constant inputs are
    buffers holding `consts[i]` where given (e.g. a model's real weights), else the recorded
    values, else values cut from `pool` (floats) / zeros (integers)."""
    if spec.domain != DOMAIN:
        raise OpError(f"{spec.qualified}: not a LiteRT node (domain {DOMAIN!r})")
    code = getattr(BO, spec.op_type, None)
    if code is None or spec.op_type == "CUSTOM":
        raise OpError(f"{spec.qualified}: not a builtin operator this LiteRT schema knows")
    consts = consts or {}
    tensors, buffers, feeds, sg_inputs = [], [None], {}, []
    op_in, at = [], 0
    for i, t in enumerate(spec.inputs):
        if t is None:
            op_in.append(-1)
            continue
        arr = np.asarray(consts[i], dtype=t.dtype).reshape(t.shape) if i in consts else spec_values(t, pool, at)
        at += t.numel
        idx = len(tensors)
        buf = 0
        if t.const:
            buffers.append(np.ascontiguousarray(arr))
            buf = len(buffers) - 1
        else:
            feeds[idx] = arr
            sg_inputs.append(idx)
        tensors.append(_tensor(t, f"in{i}", buf))
        op_in.append(idx)
    op_out, outputs = [], []
    for j, t in enumerate(spec.outputs):
        if t is None:
            op_out.append(-1)
            continue
        outputs.append(len(tensors))
        op_out.append(len(tensors))
        tensors.append(_tensor(t, f"out{j}", 0))
    o = S.OperatorT()
    o.opcodeIndex = 0
    o.inputs, o.outputs = op_in, op_out
    if spec.attrs:
        otype = options_type(spec.op_type)
        if otype is None:
            raise OpError(f"{spec.qualified}: has attributes but no options type latbench knows")
        o.builtinOptionsType, o.builtinOptions = otype, _options(otype, spec)
    oc = S.OperatorCodeT()
    oc.builtinCode = code
    oc.deprecatedBuiltinCode = min(code, 127)
    oc.version = spec.version
    sg = S.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.operators, sg.name = tensors, sg_inputs, outputs, [o], "main"
    bufs = []
    for raw in buffers:
        b = _AlignedBuffer()
        b.data = None if raw is None else (raw.view(np.uint8) if raw.dtype == np.bool_ else raw)
        bufs.append(b)
    m = S.ModelT()
    m.version, m.operatorCodes, m.subgraphs, m.buffers = SCHEMA_VERSION, [oc], [sg], bufs
    m.description = spec.key[:200]
    size = sum(0 if b is None else b.nbytes for b in buffers)
    builder = flatbuffers.Builder(size + 16 * 1024 + 64 * len(buffers))
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return TfliteNodeModel(bytes(memoryview(builder.Bytes)[builder.Head():]), feeds, outputs)


def _tensor(t: TensorSpec, name: str, buffer: int):
    if t.dtype not in TYPE_OF_DTYPE:
        raise OpError(f"a {t.dtype} tensor: LiteRT node tensors take {', '.join(TYPE_OF_DTYPE)}")
    x = S.TensorT()
    x.shape = list(t.shape)
    x.type = TYPE_OF_DTYPE[t.dtype]
    x.buffer = buffer
    x.name = name
    x.hasRank = True
    return x


def _options(otype: int, spec: NodeSpec):
    """The builtin options object of `spec` from its attributes, field by field."""
    obj = _options_class(otype)()
    fields = {snake(k): k for k in vars(obj)}
    for name, value in spec.attrs:
        if name not in fields:
            raise OpError(f"{spec.qualified}: {OPTION_NAMES[otype]} has no field {name!r}")
        field = fields[name]
        default = getattr(obj, field)
        if isinstance(value, (tuple, EmptyList)):
            value = [] if isinstance(value, EmptyList) else list(value)
        elif isinstance(default, bool):
            value = bool(value)
        elif isinstance(default, float):
            value = float(value)
        setattr(obj, field, value)
    return obj


__all__ = ["DOMAIN", "TfliteNodeModel", "lower_tflite", "op_attrs", "options_type", "read_model",
           "tflite_node_model"]

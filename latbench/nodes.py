"""NodeSpec: one node of a runtime's own graph (ONNX Runtime's optimised model), as an op to time.

Where latbench's typed ops (latbench.ops) describe a model in the runtime's place, a node op is
what the runtime itself runs after its optimiser has fused, folded and re-laid out the graph:
`com.microsoft/FusedConv`, `com.microsoft.nchwc/Conv`, its `ReorderInput`, `Gelu`,
`SkipLayerNormalization`, a `Gemm` over (1, 197, 192) tokens, a `Transpose`. Its key is its whole
description (op type, domain, opset, every input and output tensor, every attribute), so equal
nodes share one table entry across models, and the key alone rebuilds the node to time it.

Key grammar (one token, `-` only between fields; `~` stands for a minus sign inside numbers):
    node-op:[DOMAIN/]TYPE-v:OPSET-input:T,T,...-output:T,...[-ATTR:VALUE]...
    T      = none | [w]DIMS[~DTYPE][=V;V;...]   w: a constant (weight or parameter) tensor;
             DIMS = s (a scalar) or AxBxC; DTYPE omitted for float32; =values where they decide
             what the op does (shape arithmetic, small constants)
    VALUE  = 3 | 1.0 | 'text' | [1,1] | [1.0,2.0] | ['a','b'] | [] (ints) | [f] | [s] | t(T)
Pure Python: parsing and costing a node imports neither onnx nor numpy.
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

from .errors import OpError

KIND = "node"
# numpy dtype name -> key suffix (float32, the common case, has none)
DTYPES = {"float32": "", "float16": "f16", "float64": "f64", "bfloat16": "bf16", "int64": "i64",
          "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8", "uint16": "u16", "uint32": "u32",
          "uint64": "u64", "bool": "b"}
_DTYPE_OF = {v: k for k, v in DTYPES.items() if v}
ITEMSIZE = {"float32": 4, "float16": 2, "float64": 8, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
            "int8": 1, "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8, "bool": 1}
# ops whose cost is a matrix product (flops = 2 x output elements x reduction length)
# (LiteRT's, domain "tflite": CONV_2D weights OHWI, out channels first like ONNX's OIHW)
_CONVS = {("", "Conv"), ("com.microsoft", "FusedConv"), ("com.microsoft.nchwc", "Conv"), ("tflite", "CONV_2D")}
_MATMULS = {("", "MatMul"), ("com.microsoft", "FusedMatMul"), ("", "Gemm"), ("com.microsoft", "FusedGemm"),
            ("tflite", "BATCH_MATMUL")}
# ops that give their input a new shape without moving data: a runtime aliases output to input
# (LiteRT too, builtin kernels and XNNPACK alike: an ADD -> RESHAPE/SQUEEZE/EXPAND_DIMS -> ADD chain
# of 16 MB tensors runs as fast as ADD -> ADD, where one more ADD costs ~1 ms)
VIEWS = {("", "Reshape"), ("", "Flatten"), ("", "Squeeze"), ("", "Unsqueeze"), ("", "Identity"), ("", "Dropout"),
         ("tflite", "RESHAPE"), ("tflite", "SQUEEZE"), ("tflite", "EXPAND_DIMS")}
# ATen calls that only make a new view of their input's storage (torch eager: no data moves)
VIEWS |= {("aten", f"{name}.{overload}") for name, overload in (
    ("view", "default"), ("reshape", "default"), ("flatten", "using_ints"), ("unsqueeze", "default"),
    ("squeeze", "dim"), ("squeeze", "dims"), ("squeeze", "default"), ("transpose", "int"), ("permute", "default"),
    ("expand", "default"), ("t", "default"), ("slice", "Tensor"), ("select", "int"), ("alias", "default"),
    ("detach", "default"), ("dropout", "default"), ("unflatten", "int"), ("split", "Tensor"), ("chunk", "default"),
    ("unbind", "int"))}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_OP_TYPE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")  # aten: name.overload
_SAFE = re.compile(r"[^A-Za-z0-9_.]")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a node: shape, dtype, whether it is a constant of the model, and its
    values where they decide what the node does (None: any values of that shape will do)."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    const: bool = False
    values: tuple | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise OpError(f"node tensor: unsupported dtype {self.dtype!r}")
        if any(d < 0 for d in self.shape):
            raise OpError(f"node tensor: negative dim in {self.shape}")
        if self.values is not None and len(self.values) != self.numel:
            raise OpError(f"node tensor: {len(self.values)} values for shape {self.shape}")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * ITEMSIZE[self.dtype]

    @property
    def is_float(self) -> bool:
        return self.dtype.startswith(("float", "bfloat"))


@dataclass(frozen=True)
class NodeSpec:
    """One runtime graph node: `domain` '' is the standard ONNX domain; `attrs` sorted by name;
    None in `inputs`/`outputs` marks an omitted optional tensor."""

    op_type: str
    domain: str
    version: int
    inputs: tuple[TensorSpec | None, ...]
    outputs: tuple[TensorSpec | None, ...]
    attrs: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not _OP_TYPE.match(self.op_type) or (self.domain and not re.match(r"^[A-Za-z0-9_.]+$", self.domain)):
            raise OpError(f"node: bad op type or domain {self.domain!r}/{self.op_type!r}")
        if not any(o is not None for o in self.outputs):
            raise OpError(f"node {self.op_type}: it has no output")
        names = [a for a, _ in self.attrs]
        if names != sorted(set(names)) or not all(_NAME.match(a) for a in names):
            raise OpError(f"node {self.op_type}: attributes must be unique names in sorted order, got {names}")

    @property
    def qualified(self) -> str:
        """'Gemm', 'com.microsoft/FusedConv'."""
        return f"{self.domain}/{self.op_type}" if self.domain else self.op_type

    @property
    def data_inputs(self) -> list[TensorSpec]:
        """The inputs that flow in from other nodes (not constants of the model)."""
        return [t for t in self.inputs if t is not None and not t.const]

    @property
    def is_view(self) -> bool:
        """A reshape-like node: the runtime hands its input's buffer on as its output."""
        return (self.domain, self.op_type) in VIEWS

    def attr(self, name: str, default: Any = None) -> Any:
        return dict(self.attrs).get(name, default)

    # -------------------------------------------------------------- key
    @functools.cached_property
    def key(self) -> str:
        parts = [KIND, f"op:{self.qualified}", f"v:{self.version}",
                 "input:" + ",".join(map(_tensor_text, self.inputs)),
                 "output:" + ",".join(map(_tensor_text, self.outputs))]
        parts += [f"{name}:{_value_text(v)}" for name, v in self.attrs]
        return "-".join(parts)

    # -------------------------------------------------------------- costs
    @functools.cached_property
    def macs(self) -> int:
        """Multiply-adds of a convolution or matrix product (0 for other nodes)."""
        out = self.outputs[0]
        if out is None or len(self.inputs) < 2 or self.inputs[0] is None or self.inputs[1] is None:
            return 0
        a, b = self.inputs[0], self.inputs[1]
        if self.domain == "tflite" and self.op_type in _TFLITE_MACS:
            return _TFLITE_MACS[self.op_type](self, a, b, out)
        if self.domain == "aten":
            return _aten_macs(self, a, b, out)
        if (self.domain, self.op_type) in _CONVS and b.shape:
            # weight (out, in/groups, kh, kw[, blocks]) in any layout: each output reads numel/out
            return out.numel * (b.numel // max(b.shape[0], 1))
        if (self.domain, self.op_type) in _MATMULS and a.shape:
            if self.op_type in ("Gemm", "FusedGemm"):
                k = a.shape[0] if self.attr("transA", 0) else a.shape[-1]
            elif self.op_type == "BATCH_MATMUL":  # LiteRT: adj_x reads x as (..., K, M)
                k = a.shape[-2] if self.attr("adj_x", 0) and len(a.shape) > 1 else a.shape[-1]
            else:
                k = a.shape[-2] if self.attr("transA", 0) and len(a.shape) > 1 else a.shape[-1]
            return out.numel * k
        return 0

    @property
    def flops(self) -> int:
        """2 per multiply-add for convolutions and matrix products; otherwise one per element of
        the larger of the biggest input and the outputs (a reduction reads every input element)."""
        if self.macs:
            return 2 * self.macs
        if self.is_view:
            return 0
        sizes = [t.numel for t in self.inputs + self.outputs if t is not None and not t.const]
        return max(sizes, default=0)

    @property
    def params(self) -> int:
        """Elements of the node's constant float tensors (weights, biases, scales)."""
        return sum(t.numel for t in self.inputs if t is not None and t.const and t.is_float)

    @property
    def bytes(self) -> int:
        """Bytes read and written: every input and output tensor in its own dtype."""
        return sum(t.nbytes for t in self.inputs + self.outputs if t is not None)

    @property
    def display_shape(self) -> tuple[int, int, int, int]:
        """(n, c, h, w) of the first data input (the first output for a node without one), padded
        with 1s or with trailing dims folded into w: how tables and op lists show a node."""
        t = next(iter(self.data_inputs), None) or next(o for o in self.outputs if o is not None)
        return shape4(t.shape)

    @property
    def display_out_shape(self) -> tuple[int, int, int, int]:
        return shape4(next(o for o in self.outputs if o is not None).shape)


def _tflite_depthwise(spec: NodeSpec, a: TensorSpec, w: TensorSpec, out: TensorSpec) -> int:
    """DEPTHWISE_CONV_2D: weights (1, kh, kw, C*mult), one output channel each: kh*kw per output."""
    return out.numel * (w.numel // max(w.shape[-1], 1)) if w.shape else 0


def _tflite_fc(spec: NodeSpec, a: TensorSpec, w: TensorSpec, out: TensorSpec) -> int:
    """FULLY_CONNECTED: weights (out, in); every output (keep_num_dims or flattened) reads `in`."""
    return out.numel * w.shape[-1] if w.shape else 0


def _tflite_transpose_conv(spec: NodeSpec, a: TensorSpec, w: TensorSpec, out: TensorSpec) -> int:
    """TRANSPOSE_CONV (output_shape, weights OHWI, input NHWC[, bias]): each input element meets
    the O*kh*kw weights of its channel."""
    x = spec.inputs[2] if len(spec.inputs) > 2 else None
    return x.numel * (w.numel // max(w.shape[-1], 1)) if x is not None and w.shape else 0


_TFLITE_MACS = {"DEPTHWISE_CONV_2D": _tflite_depthwise, "FULLY_CONNECTED": _tflite_fc,
                "TRANSPOSE_CONV": _tflite_transpose_conv}

# ATen calls by their weight (conv: (out, in/groups, kh, kw); linear: (out, in)): numel/out per output
_ATEN_BY_WEIGHT = {"conv1d", "conv2d", "conv3d", "convolution", "linear"}
_ATEN_MATMULS = {"matmul", "mm", "bmm"}


def _aten_macs(spec: NodeSpec, a: TensorSpec, b: TensorSpec, out: TensorSpec) -> int:
    """Multiply-adds of an ATen call: convolutions and linear by their weight, matrix products
    by the reduction length, addmm/baddbmm by their second operand, and scaled dot-product
    attention as its two products (q (..., L, E) by k (..., S, E), then by v (..., S, Ev))."""
    name = spec.op_type.split(".", 1)[0]
    if name in _ATEN_BY_WEIGHT and b.shape:
        return out.numel * (b.numel // max(b.shape[0], 1))
    if name in _ATEN_MATMULS and a.shape:
        return out.numel * a.shape[-1]
    if name in ("addmm", "baddbmm") and len(spec.inputs) > 1 and b.shape:
        return out.numel * b.shape[-1]
    if name == "scaled_dot_product_attention" and len(spec.inputs) > 2 and spec.inputs[2] is not None:
        q, k, v = a, b, spec.inputs[2]
        rows = q.numel // max(q.shape[-1], 1)
        return rows * k.shape[-2] * (q.shape[-1] + v.shape[-1])
    return 0


def shape4(shape: Sequence[int]) -> tuple[int, int, int, int]:
    """Any shape as four positive sizes: padded with 1s, dims past the fourth folded into the last."""
    s = [max(int(d), 1) for d in shape]
    if len(s) > 4:
        s = s[:3] + [math.prod(s[3:])]
    return tuple(s + [1] * (4 - len(s)))  # type: ignore[return-value]


# ---------------------------------------------------------------------- rendering
def _num(v: Any) -> str:
    """An int or float as key text: '~' for a minus sign; floats keep a '.', 'e', inf or nan."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v).replace("-", "~")
    f = float(v)
    text = "nan" if math.isnan(f) else ("inf" if f > 0 else "-inf") if math.isinf(f) else repr(f)
    return text.replace("-", "~")


def _tensor_text(t: TensorSpec | None) -> str:
    if t is None:
        return "none"
    dims = "x".join(map(str, t.shape)) if t.shape else "s"
    text = ("w" if t.const else "") + dims + (f"~{DTYPES[t.dtype]}" if DTYPES[t.dtype] else "")
    if t.values is not None:
        text += "=" + ";".join(_num(v) for v in t.values)
    return text


def _quote(s: str) -> str:
    return "'" + _SAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), s) + "'"


def _value_text(v: Any) -> str:
    if isinstance(v, TensorSpec):
        return f"t({_tensor_text(v)})"
    if isinstance(v, EmptyList):
        return f"[{v.kind}]"
    if isinstance(v, str):
        return _quote(v)
    if isinstance(v, tuple):
        if not v:
            return "[]"
        return "[" + ",".join(_value_text(x) for x in v) + "]"
    return _num(v)


class EmptyList(str):
    """An empty float ('f') or string ('s') list attribute: () stands for an empty int list."""

    @property
    def kind(self) -> str:
        return str(self)


# ---------------------------------------------------------------------- parsing
def _parse_num(text: str, where: str) -> int | float:
    t = text.replace("~", "-")
    try:
        if re.fullmatch(r"-?\d+", t):
            return int(t)
        return float(t)
    except ValueError:
        raise OpError(f"{where}: bad number {text!r}") from None


def _parse_tensor(text: str, where: str) -> TensorSpec | None:
    if text == "none":
        return None
    body, eq, vals = text.partition("=")
    const = body.startswith("w")
    body = body[1:] if const else body
    dims, _, dt = body.partition("~")
    dtype = _DTYPE_OF.get(dt) if dt else "float32"
    if dtype is None:
        raise OpError(f"{where}: unknown dtype {dt!r} in tensor {text!r}")
    try:
        shape = () if dims == "s" else tuple(int(d) for d in dims.split("x"))
    except ValueError:
        raise OpError(f"{where}: bad dims in tensor {text!r}") from None
    values = None
    if eq:
        values = tuple(_parse_num(v, where) for v in vals.split(";")) if vals else ()
        if dtype == "bool":
            values = tuple(bool(v) for v in values)
        elif not dtype.startswith(("float", "bfloat")):
            values = tuple(int(v) for v in values)
        else:
            values = tuple(float(v) for v in values)
    return TensorSpec(shape, dtype, const, values)


def _split_top(text: str) -> list[str]:
    """Split at commas outside brackets, parentheses and quotes."""
    out, depth, cur, quoted = [], 0, "", False
    for ch in text:
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch in "[(":
            depth += 1
        elif not quoted and ch in "])":
            depth -= 1
        if ch == "," and depth == 0 and not quoted:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return out


def _parse_value(text: str, where: str) -> Any:
    if text.startswith("t(") and text.endswith(")"):
        t = _parse_tensor(text[2:-1], where)
        if t is None:
            raise OpError(f"{where}: a tensor attribute cannot be none")
        return t
    if text.startswith("'") and text.endswith("'") and len(text) >= 2:
        raw = text[1:-1]
        return re.sub(r"(%[0-9A-F]{2})+", lambda m: bytes.fromhex(m.group().replace("%", "")).decode(), raw)
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1]
        if inner in ("f", "s"):
            return EmptyList(inner)
        return tuple(_parse_value(x, where) for x in _split_top(inner)) if inner else ()
    return _parse_num(text, where)


@functools.lru_cache(maxsize=1 << 14)
def parse_node(key: str, where: str = "<key>") -> NodeSpec:
    """The NodeSpec of a node key; a malformed one is one OpError naming `where`."""
    try:
        return _parse_node(key, where)
    except OpError as e:
        if str(e).startswith(f"{where}:"):
            raise
        raise OpError(f"{where}: {e}") from None


def _parse_node(key: str, where: str) -> NodeSpec:
    parts = key.split("-")
    if len(parts) < 5 or parts[0] != KIND or not parts[1].startswith("op:") or not parts[2].startswith("v:") \
            or not parts[3].startswith("input:") or not parts[4].startswith("output:"):
        raise OpError(f"{where}: not a node key (node-op:TYPE-v:N-input:...-output:...): {key[:120]!r}")
    qual = parts[1][3:]
    domain, _, op_type = qual.rpartition("/")
    try:
        version = int(parts[2][2:])
    except ValueError:
        raise OpError(f"{where}: bad opset version in {parts[2]!r}") from None
    inputs = tuple(_parse_tensor(t, where) for t in _split_top(parts[3][6:])) if parts[3][6:] else ()
    outputs = tuple(_parse_tensor(t, where) for t in _split_top(parts[4][7:]))
    attrs = []
    for p in parts[5:]:
        name, sep, val = p.partition(":")
        if not sep:
            raise OpError(f"{where}: attribute {p!r} has no value")
        attrs.append((name, _parse_value(val, where)))
    spec = NodeSpec(op_type, domain, version, inputs, outputs, tuple(attrs))
    if spec.key != key:
        raise OpError(f"{where}: node key is not canonical (it reads back as {spec.key[:120]!r})")
    return spec


__all__ = ["KIND", "DTYPES", "VIEWS", "EmptyList", "NodeSpec", "TensorSpec", "parse_node", "shape4"]

"""OpSpecs -> .tflite flatbuffers, written with the schema's object API (no TensorFlow needed).

Every op and block of latbench becomes the graph a converter would emit for its torch module:
activations NHWC (model input and output too, as benchmark_model feeds them), CONV_2D weights
OHWI, DEPTHWISE_CONV_2D weights (1, H, W, C*mult), BN folded into the conv, RELU/RELU6 fused
into the op before them, torch's symmetric padding as SAME where TF's SAME equals it and as an
explicit PAD + VALID where it does not (stride 2 on even sizes). Constants come from the op's
canonical weights (device_agents.weights), so a model can be checked against the torch reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import flatbuffers
import numpy as np

from latbench import ops as O
from latbench.errors import MissingExtraError, OpError
from latbench.ops import OpSpec

from .weights import BN_EPS, Weights, fold_bn


def _load_schema():
    """The generated TFLite schema: ai-edge-litert's, else an older tflite_runtime's."""
    for name in ("ai_edge_litert.schema_py_generated", "tflite_runtime.schema_py_generated"):
        try:
            return __import__(name, fromlist=["ModelT"])
        except ImportError:
            continue
    raise MissingExtraError("the TFLite schema is not installed: pip install 'latbench[tflite]' (ai-edge-litert)")


S = _load_schema()
BO = S.BuiltinOperator
OPT = S.BuiltinOptions
FLOAT32 = S.TensorType.FLOAT32
INT32 = S.TensorType.INT32
SCHEMA_VERSION = 3
ALIGN = 16  # constant buffers start on 16-byte boundaries (XNNPACK / mmap-friendly)
_FUSED = {"relu": S.ActivationFunctionType.RELU, "relu6": S.ActivationFunctionType.RELU6}
_NONE = S.ActivationFunctionType.NONE
_LOWEST = np.float32(np.finfo(np.float32).min)  # max-pool padding value (acts as -inf)


class _AlignedBuffer(S.BufferT):
    """BufferT whose data vector starts on a 16-byte boundary (BufferT.Pack does not align)."""

    def Pack(self, builder: flatbuffers.Builder) -> int:
        data = None
        if self.data is not None:
            raw = self.data  # a contiguous ndarray: copied once, straight into the builder
            n = raw.nbytes
            builder.StartVector(1, n, ALIGN)
            builder.head -= n
            builder.Bytes[builder.head:builder.head + n] = memoryview(raw.reshape(-1)).cast("B")
            data = builder.EndVector()
        S.BufferStart(builder)
        if data is not None:
            S.BufferAddData(builder, data)
        return S.BufferEnd(builder)


@dataclass(frozen=True)
class _V:
    """A tensor in the graph being built: its index and NHWC (or (n, features)) shape."""

    idx: int
    shape: tuple[int, ...]


class _Graph:
    """One subgraph under construction: tensors, constant buffers, operators and opcodes."""

    def __init__(self) -> None:
        self.tensors: list = []
        self.buffers: list[np.ndarray | None] = [None]  # buffer 0: the empty sentinel
        self.operators: list = []
        self.codes: dict[int, int] = {}  # builtin code -> opcode index
        self.versions: list[int] = []
        self.const_bytes = 0

    def tensor(self, shape: Sequence[int], name: str, buffer: int = 0, dtype: int = FLOAT32) -> int:
        t = S.TensorT()
        t.shape = list(shape)
        t.type = dtype
        t.buffer = buffer
        t.name = name
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, arr: np.ndarray, name: str) -> _V:
        """A constant tensor holding `arr` (float32 or int32) in its own aligned buffer."""
        a = np.ascontiguousarray(arr)
        dtype = INT32 if a.dtype.kind in "iu" else FLOAT32
        a = a.astype(np.int32 if dtype == INT32 else np.float32, copy=False)
        self.buffers.append(a)
        self.const_bytes += a.nbytes
        return _V(self.tensor(a.shape, name, len(self.buffers) - 1, dtype), tuple(a.shape))

    def op(self, code: int, inputs: Sequence[int], out_shape: Sequence[int], name: str,
           opt_type: int = OPT.NONE, options=None, version: int = 1) -> _V:
        """Append an operator with one new float32 output tensor; -1 marks an omitted input."""
        if code not in self.codes:
            self.codes[code] = len(self.versions)
            self.versions.append(version)
        ci = self.codes[code]
        self.versions[ci] = max(self.versions[ci], version)
        out = self.tensor(out_shape, name)
        o = S.OperatorT()
        o.opcodeIndex = ci
        o.inputs = list(inputs)
        o.outputs = [out]
        o.builtinOptionsType = opt_type
        o.builtinOptions = options
        self.operators.append(o)
        return _V(out, tuple(out_shape))

    def finish(self, inputs: Sequence[int], outputs: Sequence[int], description: str) -> bytes:
        """Serialize to a TFL3 flatbuffer."""
        codes = []
        for code, ci in sorted(self.codes.items(), key=lambda kv: kv[1]):
            c = S.OperatorCodeT()
            c.builtinCode = code
            c.deprecatedBuiltinCode = min(code, 127)  # PLACEHOLDER_FOR_GREATER_OP_CODES above 127
            c.version = self.versions[ci]
            codes.append(c)
        sg = S.SubGraphT()
        sg.tensors = self.tensors
        sg.inputs = list(inputs)
        sg.outputs = list(outputs)
        sg.operators = self.operators
        sg.name = "main"
        bufs = []
        for raw in self.buffers:
            b = _AlignedBuffer()
            b.data = raw
            bufs.append(b)
        m = S.ModelT()
        m.version = SCHEMA_VERSION
        m.operatorCodes = codes
        m.subgraphs = [sg]
        m.description = description
        m.buffers = bufs
        builder = flatbuffers.Builder(self.const_bytes + 64 * 1024 + 512 * len(self.tensors))
        builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
        return bytes(memoryview(builder.Bytes)[builder.Head():])


class _Cursor:
    """Walks `expand(op)` and its canonical weights in order, checking each part's kind."""

    def __init__(self, op: OpSpec, weights: Weights):
        self.parts = O.expand(op)
        if len(weights) != len(self.parts):
            raise OpError(f"{op.key}: {len(weights)} weight entries for {len(self.parts)} expanded ops")
        self.weights = weights
        self.i = 0
        self.key = op.key

    def peek(self) -> OpSpec | None:
        return self.parts[self.i] if self.i < len(self.parts) else None

    def take(self, kind: str) -> tuple[OpSpec, dict[str, np.ndarray]]:
        p = self.peek()
        if p is None or p.kind != kind:
            raise OpError(f"{self.key}: expected a {kind} at part {self.i}, found {p.kind if p else 'the end'}")
        self.i += 1
        return p, self.weights[self.i - 1]

    def done(self) -> None:
        if self.i != len(self.parts):
            raise OpError(f"{self.key}: {len(self.parts) - self.i} expanded op(s) left unbuilt")


def _same_pads(size: int, k_eff: int, stride: int) -> tuple[int, int, int]:
    """TF SAME: (out, pad_before, pad_after) for one spatial dim."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k_eff - size, 0)
    return out, total // 2, total - total // 2


class _Net:
    """Emits latbench ops into a _Graph; values are NHWC tensors."""

    def __init__(self) -> None:
        self.g = _Graph()
        self.n_ops = 0

    def _name(self, what: str) -> str:
        self.n_ops += 1
        return f"{what}_{self.n_ops}"

    # ------------------------------------------------------------------ elementwise helpers
    def unary(self, x: _V, code: int, what: str, opt_type: int = OPT.NONE, options=None) -> _V:
        return self.g.op(code, [x.idx], x.shape, self._name(what), opt_type, options)

    def binary(self, x: _V, y: _V, kind: str, fused: str = "none") -> _V:
        """ADD/MUL/MAXIMUM with numpy broadcasting; RELU/RELU6 fused into ADD/MUL."""
        shape = tuple(np.broadcast_shapes(x.shape, y.shape))
        if fused not in ("none", *_FUSED):
            raise OpError(f"TFLite cannot fuse {fused!r} into a binary op")
        act = _FUSED.get(fused, _NONE)
        if kind == "add":
            o = S.AddOptionsT()
            o.fusedActivationFunction = act
            return self.g.op(BO.ADD, [x.idx, y.idx], shape, self._name("add"), OPT.AddOptions, o)
        if kind == "mul":
            o = S.MulOptionsT()
            o.fusedActivationFunction = act
            return self.g.op(BO.MUL, [x.idx, y.idx], shape, self._name("mul"), OPT.MulOptions, o)
        if kind == "max" and act == _NONE:
            return self.g.op(BO.MAXIMUM, [x.idx, y.idx], shape, self._name("maximum"),
                             OPT.MaximumMinimumOptions, S.MaximumMinimumOptionsT())
        raise OpError(f"no TFLite binary op for {kind!r} with fused {fused!r}")

    def scalar(self, v: float, what: str) -> _V:
        return self.g.const(np.array(v, dtype=np.float32), self._name(what))

    def activation(self, x: _V, act: str) -> _V:
        """One activation as converters emit it (hsigmoid: ADD+RELU6 fused, MUL; swish: LOGISTIC, MUL)."""
        if act == "relu":
            return self.unary(x, BO.RELU, "relu")
        if act == "relu6":
            return self.unary(x, BO.RELU6, "relu6")
        if act == "hswish":
            return self.unary(x, BO.HARD_SWISH, "hard_swish", OPT.HardSwishOptions, S.HardSwishOptionsT())
        if act == "sigmoid":
            return self.unary(x, BO.LOGISTIC, "logistic")
        if act == "tanh":
            return self.unary(x, BO.TANH, "tanh")
        if act == "gelu":
            o = S.GeluOptionsT()
            o.approximate = False  # torch nn.GELU() default: exact erf
            return self.unary(x, BO.GELU, "gelu", OPT.GeluOptions, o)
        if act == "hsigmoid":  # relu6(x + 3) / 6
            y = self.binary(x, self.scalar(3.0, "three"), "add", fused="relu6")
            return self.binary(y, self.scalar(1.0 / 6.0, "one_sixth"), "mul")
        if act == "swish":  # x * sigmoid(x)
            return self.binary(x, self.unary(x, BO.LOGISTIC, "logistic"), "mul")
        raise OpError(f"no TFLite lowering for activation {act!r}")

    def act_after(self, x: _V, act: str) -> _V:
        return x if act == "none" else self.activation(x, act)

    # ------------------------------------------------------------------ padding
    def pad(self, x: _V, ph: tuple[int, int], pw: tuple[int, int], value: float | None = None) -> _V:
        """Explicit spatial PAD (zeros) or PADV2 (a constant such as the lowest float)."""
        n, h, w, c = x.shape
        paddings = self.g.const(np.array([[0, 0], list(ph), list(pw), [0, 0]], dtype=np.int32), self._name("paddings"))
        shape = (n, h + ph[0] + ph[1], w + pw[0] + pw[1], c)
        if value is None:
            return self.g.op(BO.PAD, [x.idx, paddings.idx], shape, self._name("pad"), OPT.PadOptions, S.PadOptionsT())
        cval = self.g.const(np.array(value, dtype=np.float32), self._name("pad_value"))
        return self.g.op(BO.PADV2, [x.idx, paddings.idx, cval.idx], shape, self._name("padv2"),
                         OPT.PadV2Options, S.PadV2OptionsT())

    def window_padding(self, x: _V, k_eff: int, stride: int, pad: int, out_hw: tuple[int, int]) -> int | None:
        """S.Padding.SAME when TF's SAME reproduces torch's padding and output size, else None."""
        if pad == 0 and all((s - k_eff) // stride + 1 == o for s, o in zip(x.shape[1:3], out_hw)):
            return S.Padding.VALID
        for s, o in zip(x.shape[1:3], out_hw):
            out, before, _ = _same_pads(s, k_eff, stride)
            if out != o or before != pad:
                return None
        return S.Padding.SAME

    # ------------------------------------------------------------------ conv
    def conv(self, x: _V, p: OpSpec, weight: np.ndarray, bias: np.ndarray, act: str) -> _V:
        """CONV_2D / DEPTHWISE_CONV_2D (grouped: CONV_2D with OHWI filter of I/groups channels)."""
        n, h, w, c = x.shape
        oh, ow = p.out_hw
        k_eff = p.dilation * (p.kernel - 1) + 1
        padding = self.window_padding(x, k_eff, p.stride, p.padding, (oh, ow))
        if padding is None:
            x = self.pad(x, (p.padding, p.padding), (p.padding, p.padding))
            padding = S.Padding.VALID
        fused = _FUSED.get(act, _NONE)
        b = self.g.const(bias, self._name("bias"))
        out_shape = (n, oh, ow, p.out)
        if p.groups == p.c and p.groups > 1:  # depthwise, channel multiplier out/c
            f = self.g.const(weight.transpose(1, 2, 3, 0), self._name("dw_filter"))
            o = S.DepthwiseConv2DOptionsT()
            o.padding, o.strideH, o.strideW = padding, p.stride, p.stride
            o.dilationHFactor = o.dilationWFactor = p.dilation
            o.depthMultiplier = p.out // p.c
            o.fusedActivationFunction = fused
            y = self.g.op(BO.DEPTHWISE_CONV_2D, [x.idx, f.idx, b.idx], out_shape, self._name("depthwise_conv"),
                          OPT.DepthwiseConv2DOptions, o, version=2 if p.dilation > 1 else 1)
        else:
            f = self.g.const(weight.transpose(0, 2, 3, 1), self._name("filter"))
            o = S.Conv2DOptionsT()
            o.padding, o.strideH, o.strideW = padding, p.stride, p.stride
            o.dilationHFactor = o.dilationWFactor = p.dilation
            o.fusedActivationFunction = fused
            y = self.g.op(BO.CONV_2D, [x.idx, f.idx, b.idx], out_shape, self._name("conv"),
                          OPT.Conv2DOptions, o, version=6 if p.groups > 1 else 1)
        return y if fused != _NONE else self.act_after(y, act)

    def conv_group(self, x: _V, cur: _Cursor) -> _V:
        """A conv, its batch norm folded in and the activation after it (fused when RELU/RELU6)."""
        p, cw = cur.take("conv")
        nxt = cur.peek()
        if nxt is not None and nxt.kind == "batch_norm":
            _, bw = cur.take("batch_norm")
            weight, bias = fold_bn(cw, bw)
        else:
            weight = cw["weight"]
            bias = cw.get("bias", np.zeros(p.out, dtype=np.float32))
        act = "none"
        nxt = cur.peek()
        if nxt is not None and nxt.kind == "activation":
            act = cur.take("activation")[0].act
        return self.conv(x, p, weight, bias, act)

    # ------------------------------------------------------------------ other single ops
    def pool(self, x: _V, p: OpSpec) -> _V:
        """Pooling with torch's padding, ceil_mode and count_include_pad semantics."""
        n, h, w, c = x.shape
        if p.global_pool:
            axes = self.g.const(np.array([1, 2], dtype=np.int32), self._name("axes"))
            o = S.ReducerOptionsT()
            o.keepDims = True
            code, what = (BO.MEAN, "mean") if p.pool == "avg" else (BO.REDUCE_MAX, "reduce_max")
            return self.g.op(code, [x.idx, axes.idx], (n, 1, 1, c), self._name(what), OPT.ReducerOptions, o)
        oh, ow = p.out_hw
        k, s, pad = p.kernel, p.stride, p.padding
        padding = self.window_padding(x, k, s, pad, (oh, ow))
        if padding == S.Padding.SAME and p.pool == "avg" and p.count_pad and pad > 0:
            padding = None  # SAME divides by the in-image count; count_include_pad divides by k*k
        scale = None
        if padding is None:
            after = [max(0, (o - 1) * s + k - size - pad) for size, o in ((h, oh), (w, ow))]
            if p.pool == "max":
                x = self.pad(x, (pad, after[0]), (pad, after[1]), value=float(_LOWEST))
            else:
                x = self.pad(x, (pad, after[0]), (pad, after[1]))
                scale = _avg_correction(p, (h, w), (oh, ow))
            padding = S.Padding.VALID
        o = S.Pool2DOptionsT()
        o.padding, o.strideH, o.strideW, o.filterHeight, o.filterWidth = padding, s, s, k, k
        code, what = (BO.MAX_POOL_2D, "max_pool") if p.pool == "max" else (BO.AVERAGE_POOL_2D, "avg_pool")
        y = self.g.op(code, [x.idx], (n, oh, ow, c), self._name(what), OPT.Pool2DOptions, o)
        if scale is not None:
            y = self.binary(y, self.g.const(scale, self._name("avg_divisor_fix")), "mul")
        return y

    def reshape(self, x: _V, shape: tuple[int, ...]) -> _V:
        """RESHAPE to a static shape (given as the shape input and in the options, as converters do)."""
        new = self.g.const(np.array(shape, dtype=np.int32), self._name("shape"))
        o = S.ReshapeOptionsT()
        o.newShape = list(shape)
        return self.g.op(BO.RESHAPE, [x.idx, new.idx], shape, self._name("reshape"), OPT.ReshapeOptions, o)

    def shuffle(self, x: _V, p: OpSpec) -> _V:
        """Channel shuffle on NHWC: RESHAPE (n, h*w, g, c/g), TRANSPOSE (0, 1, 3, 2), RESHAPE back;
        a 4-D transpose (op version 1) that every LiteRT and benchmark_model build runs."""
        n, h, w, c = x.shape
        g = p.groups
        y = self.reshape(x, (n, h * w, g, c // g))
        perm = self.g.const(np.array([0, 1, 3, 2], dtype=np.int32), self._name("perm"))
        y = self.g.op(BO.TRANSPOSE, [y.idx, perm.idx], (n, h * w, c // g, g), self._name("transpose"),
                      OPT.TransposeOptions, S.TransposeOptionsT())
        return self.reshape(y, (n, h, w, c))

    def softmax(self, x: _V, p: OpSpec) -> _V:
        if p.axis not in (1, -3):
            raise OpError(f"{p.key}: TFLite SOFTMAX works on the last axis only; with NHWC activations that is "
                          f"NCHW axis 1 (channels), not axis {p.axis}")
        o = S.SoftmaxOptionsT()
        o.beta = 1.0
        return self.unary(x, BO.SOFTMAX, "softmax", OPT.SoftmaxOptions, o)

    def eltwise(self, x: _V, p: OpSpec, w: dict[str, np.ndarray]) -> _V:
        other = w["other"]  # NCHW: full shape or (n, c, 1, 1)
        return self.binary(x, self.g.const(other.transpose(0, 2, 3, 1), self._name("operand")), p.eltwise)

    def batch_norm(self, x: _V, p: OpSpec, w: dict[str, np.ndarray]) -> _V:
        """No BN op in TFLite: MUL by the folded scale, ADD the folded shift (RELU/RELU6 fused)."""
        scale = w["gamma"] / np.sqrt(w["var"] + BN_EPS)
        shift = w["beta"] - w["mean"] * scale
        y = self.binary(x, self.g.const(scale, self._name("bn_scale")), "mul")
        fused = p.act if p.act in _FUSED else "none"
        y = self.binary(y, self.g.const(shift, self._name("bn_shift")), "add", fused=fused)
        return y if fused != "none" else self.act_after(y, p.act)

    def linear(self, x: _V, cur: _Cursor) -> _V:
        """FULLY_CONNECTED on the flattened (n, c) input; RELU/RELU6 fused."""
        p, w = cur.take("linear")
        act = "none"
        nxt = cur.peek()
        if nxt is not None and nxt.kind == "activation":
            act = cur.take("activation")[0].act
        if len(x.shape) == 4 and x.shape[1:3] != (1, 1):
            raise OpError(f"{p.key}: linear needs a (n, c, 1, 1) input, got NHWC {x.shape}")
        fw = self.g.const(w["weight"], self._name("fc_weights"))
        # no bias: -1 marks the omitted optional input (2 inputs would make it FULLY_CONNECTED v6)
        bias = self.g.const(w["bias"], self._name("fc_bias")).idx if "bias" in w else -1
        ins = [x.idx, fw.idx, bias]
        o = S.FullyConnectedOptionsT()
        o.fusedActivationFunction = _FUSED.get(act, _NONE)
        y = self.g.op(BO.FULLY_CONNECTED, ins, (x.shape[0], p.out), self._name("fully_connected"),
                      OPT.FullyConnectedOptions, o)
        return y if act in _FUSED else self.act_after(y, act)

    # ------------------------------------------------------------------ blocks
    def se(self, x: _V, cur: _Cursor) -> _V:
        """Squeeze-excite: MEAN, 1x1 CONV_2D + RELU, 1x1 CONV_2D, gate, MUL."""
        s = self.pool(x, cur.take("pool")[0])
        s = self.conv_group(s, cur)  # reduce + fused relu
        s = self.conv_group(s, cur)  # expand + gate
        cur.take("eltwise")
        return self.binary(x, s, "mul")

    def mbconv(self, x: _V, op: OpSpec, cur: _Cursor) -> _V:
        """torch_build.MBConv: [expand] -> [shuffle] -> depthwise -> [SE] -> project -> [+x] (-> SE at out)."""
        y = self.conv_group(x, cur) if op.expand_conv else x
        nxt = cur.peek()
        if nxt is not None and nxt.kind == "shuffle":
            y = self.shuffle(y, cur.take("shuffle")[0])
        y = self.conv_group(y, cur)
        if op.se and op.se_pos == "dw":
            y = self.se(y, cur)
        lin = self.conv_group(y, cur)
        out = lin
        if op.residual:
            cur.take("eltwise")
            out = self.binary(lin, x, "add")
        if op.se and op.se_pos == "out":
            gated = self.se(lin, cur)
            cur.take("eltwise")
            cur.take("activation")
            out = self.binary(out, gated, "add", fused="relu")
        return out

    def resblock(self, x: _V, op: OpSpec, cur: _Cursor) -> _V:
        """torch_build.ResBlock: act(body(x) + shortcut(x)), activation fused into the ADD if it can be."""
        y = x
        for _ in range(3 if op.kind == "bottleneck" else 2):
            y = self.conv_group(y, cur)
        s = self.conv_group(x, cur) if op.proj else x
        cur.take("eltwise")
        act = cur.take("activation")[0].act
        out = self.binary(y, s, "add", fused=act if act in _FUSED else "none")
        return out if act in _FUSED else self.activation(out, act)

    # ------------------------------------------------------------------ dispatch
    def emit(self, x: _V, op: OpSpec, weights: Weights) -> _V:
        """Add `op` (op or block granularity) fed by `x`; returns its output."""
        cur = _Cursor(op, weights)
        k = op.kind
        if k == "conv":
            y = self.conv_group(x, cur)
        elif k == "linear":
            y = self.linear(x, cur)
        elif k == "mbconv":
            y = self.mbconv(x, op, cur)
        elif k in ("bottleneck", "basic"):
            y = self.resblock(x, op, cur)
        else:
            p, w = cur.take(k)
            if k == "pool":
                y = self.pool(x, p)
            elif k == "activation":
                y = self.activation(x, p.act)
            elif k == "batch_norm":
                nxt = cur.peek()  # expand() lists a BN's activation as its own op
                if p.act == "none" and nxt is not None and nxt.kind == "activation":
                    p = p.replace(act=cur.take("activation")[0].act)
                y = self.batch_norm(x, p, w)
            elif k == "softmax":
                y = self.softmax(x, p)
            elif k == "shuffle":
                y = self.shuffle(x, p)
            elif k == "eltwise":
                y = self.eltwise(x, p, w)
            else:
                raise OpError(f"no TFLite lowering for op kind {k!r}")
        cur.done()
        return y


def _avg_correction(p: OpSpec, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray | None:
    """Per-position k*k / torch's divisor (1, oh, ow, 1), None if all 1: VALID over a zero-padded
    input divides by k*k, torch by the in-image count or the window clipped to the padded input."""
    k, s, pad = p.kernel, p.stride, p.padding
    divs = []
    for size, out in zip(in_hw, out_hw):
        start = np.arange(out) * s - pad
        end = start + k
        if p.count_pad:
            d = np.minimum(end, size + pad) - start
        else:
            d = np.minimum(end, size) - np.maximum(start, 0)
        divs.append(d.astype(np.float64))
    div = np.outer(divs[0], divs[1])
    if np.all(div == k * k):
        return None
    return (k * k / div).astype(np.float32).reshape(1, out_hw[0], out_hw[1], 1)


def _nhwc(shape: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    n, c, h, w = shape
    return (n, h, w, c)


def build_tflite_chain(ops: Sequence[OpSpec], weights_list: Sequence[Weights]) -> bytes:
    """One .tflite model running `ops` in sequence (each output feeds the next): a whole subnet
    from `space.blocks(config)`. Input is the first op's in_shape in NHWC, output the last op's."""
    if not ops:
        raise OpError("build_tflite_chain needs at least one op")
    if len(weights_list) != len(ops):
        raise OpError(f"{len(ops)} ops but {len(weights_list)} weight lists")
    net = _Net()
    first = ops[0]
    x = _V(net.g.tensor(_nhwc(first.in_shape), "input"), _nhwc(first.in_shape))
    inp = x.idx
    for op, w in zip(ops, weights_list):
        want = _nhwc(op.in_shape)
        flat = len(x.shape) == 2  # after a FULLY_CONNECTED: (n, features)
        got = (x.shape[0], 1, 1, x.shape[1]) if flat else x.shape
        if got != want or (flat and op.kind not in ("linear", "activation", "softmax")):
            why = " (a flat FULLY_CONNECTED output feeds only linear, activation or softmax)" if flat else ""
            raise OpError(f"{op.key}: expects NHWC input {want}, the previous op gives {x.shape}{why}")
        x = net.emit(x, op, w)
    net.g.tensors[x.idx].name = "output"
    desc = ops[0].key if len(ops) == 1 else f"latbench chain of {len(ops)} ops"
    return net.g.finish([inp], [x.idx], desc)


def build_tflite(op: OpSpec, weights: Weights) -> bytes:
    """A .tflite model of one op or block with its canonical weights (NHWC input and output)."""
    return build_tflite_chain([op], [weights])


def output_shape(op: OpSpec) -> tuple[int, ...]:
    """The model's output shape for `op`: NHWC, or (n, out) for linear."""
    return (op.n, op.out) if op.kind == "linear" else _nhwc(op.out_shape)


def iter_ops(model: bytes) -> Iterator[str]:
    """Builtin operator names of a model in execution order (for tests and debugging)."""
    m = S.Model.GetRootAs(model, 0)
    names = {v: k for k, v in vars(BO).items() if not k.startswith("_")}
    sg = m.Subgraphs(0)
    for i in range(sg.OperatorsLength()):
        oc = m.OperatorCodes(sg.Operators(i).OpcodeIndex())
        yield names.get(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()), "?")


__all__ = ["build_tflite", "build_tflite_chain", "output_shape", "iter_ops"]

"""OpSpec + canonical weights -> a small ONNX graph (opset 17) with exactly the semantics of
latbench.spaces.torch_build: one graph per op or fused block, or a chain of them (a subnet).

Blocks are built as runtimes run them: BN folded into the conv before it, activations as their
own nodes, SE / residual / projection shortcut wired as in torch_build.MBConv and ResBlock.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from latbench import ops as O
from latbench.errors import OpError, require
from latbench.ops import OpSpec

from .weights import BN_EPS, Weights, fold_bn, op_weights

onnx = require("onnx", "ort")
from onnx import TensorProto, helper  # noqa: E402

OPSET = 17
IR_VERSION = 8  # the IR version that came with opset 17: every onnxruntime since 1.12 reads it
INPUT, OUTPUT = "x", "y"


class _Graph:
    """A model under construction, built in place (initializers are never copied from proto to
    proto: a 1280x960 conv would pay ~5 MB per copy), with unique names and shared scalars."""

    def __init__(self) -> None:
        self.proto = onnx.ModelProto(ir_version=IR_VERSION, producer_name="latbench")
        self.proto.opset_import.add(domain="", version=OPSET)
        self.graph = self.proto.graph
        self._scalars: dict[float, str] = {}
        self._count = 0

    def fresh(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def _init(self, arr: np.ndarray, stem: str, dtype: int) -> str:
        name = self.fresh(stem)
        t = self.graph.initializer.add()
        t.name, t.data_type = name, dtype
        t.dims.extend(arr.shape)
        t.raw_data = arr.tobytes()  # little-endian hosts only, as onnxruntime's CPU builds
        return name

    def const(self, arr: np.ndarray, stem: str = "w") -> str:
        return self._init(np.ascontiguousarray(arr, dtype="<f4"), stem, TensorProto.FLOAT)

    def scalar(self, value: float) -> str:
        """A float32 scalar initializer, shared by every node of the graph that uses the value."""
        if value not in self._scalars:
            self._scalars[value] = self.const(np.array(value, dtype=np.float32), "k")
        return self._scalars[value]

    def ints(self, values: Sequence[int]) -> str:
        return self._init(np.asarray(values, dtype="<i8"), "i", TensorProto.INT64)

    def node(self, op_type: str, inputs: Sequence[str], **attrs) -> str:
        out = self.fresh(op_type.lower())
        self.graph.node.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def model(self, in_shape: Sequence[int], out_name: str, out_shape: Sequence[int] | None,
              name: str) -> "onnx.ModelProto":
        """Close the graph: `out_name` becomes the output `y` (`out_shape` None = left to inference)."""
        for n in self.graph.node:
            for i, o in enumerate(n.output):
                if o == out_name:
                    n.output[i] = OUTPUT
            for i, o in enumerate(n.input):
                if o == out_name:
                    n.input[i] = OUTPUT
        self.graph.name = name
        self.graph.input.append(helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, list(in_shape)))
        self.graph.output.append(helper.make_tensor_value_info(
            OUTPUT, TensorProto.FLOAT, list(out_shape) if out_shape is not None else None))
        return self.proto


class _Parts:
    """The expanded ops of one OpSpec with their weights, consumed in execution order."""

    def __init__(self, op: OpSpec, weights: Weights) -> None:
        self.op = op
        self.parts = O.expand(op)
        if len(weights) != len(self.parts):
            raise OpError(f"{op.key}: {len(weights)} weight entries for {len(self.parts)} expanded ops")
        self.weights = weights
        self.i = 0

    def peek(self) -> str:
        return self.parts[self.i].kind if self.i < len(self.parts) else ""

    def take(self, kind: str) -> tuple[OpSpec, dict[str, np.ndarray]]:
        if self.peek() != kind:
            raise OpError(f"{self.op.key}: expected {kind} at expanded op {self.i}, found {self.peek() or 'the end'}")
        self.i += 1
        return self.parts[self.i - 1], self.weights[self.i - 1]

    def done(self) -> None:
        if self.i != len(self.parts):
            raise OpError(f"{self.op.key}: {len(self.parts) - self.i} expanded op(s) left unbuilt")


# ---------------------------------------------------------------------- single nodes
def _act(g: _Graph, x: str, act: str) -> str:
    """One activation as torch defines it (torch.nn.ReLU6, Hardsigmoid, SiLU, GELU exact...)."""
    if act == "relu":
        return g.node("Relu", [x])
    if act == "relu6":
        return g.node("Clip", [x, g.scalar(0.0), g.scalar(6.0)])
    if act == "hswish":
        return g.node("HardSwish", [x])
    if act == "hsigmoid":  # torch: relu6(x + 3) / 6 = clip(x/6 + 1/2, 0, 1)
        return g.node("HardSigmoid", [x], alpha=1.0 / 6.0, beta=0.5)
    if act == "sigmoid":
        return g.node("Sigmoid", [x])
    if act == "swish":
        return g.node("Mul", [x, g.node("Sigmoid", [x])])
    if act == "tanh":
        return g.node("Tanh", [x])
    if act == "gelu":  # exact form, 0.5 x (1 + erf(x / sqrt 2)); Gelu is an op only from opset 20
        e = g.node("Erf", [g.node("Div", [x, g.scalar(math.sqrt(2.0))])])
        return g.node("Mul", [g.node("Mul", [x, g.node("Add", [e, g.scalar(1.0)])]), g.scalar(0.5)])
    raise OpError(f"no ONNX form for activation {act!r}")


def _conv(g: _Graph, x: str, parts: _Parts) -> str:
    """A conv, with the batch norm right after it folded in and its activation (if any) after."""
    p, w = parts.take("conv")
    if parts.peek() == "batch_norm":
        _, bn = parts.take("batch_norm")
        weight, bias = fold_bn(w, bn)
    else:
        weight, bias = w["weight"], w.get("bias")
    inputs = [x, g.const(weight)] + ([g.const(bias, "b")] if bias is not None else [])
    k, s, d = p.kernel, p.stride, p.dilation
    y = g.node("Conv", inputs, kernel_shape=[k, k], strides=[s, s], pads=[p.padding] * 4,
               dilations=[d, d], group=p.groups)
    if parts.peek() == "activation":  # in expand(), an activation right after a conv is its own
        a, _ = parts.take("activation")
        y = _act(g, y, a.act)
    return y


def _shuffle(g: _Graph, x: str, p: OpSpec) -> str:
    """Channel shuffle as torch exports it (torch_build's symbolic): Reshape to (n, g, c/g, h, w),
    Transpose (0, 2, 1, 3, 4), Reshape back to (n, c, h, w)."""
    n, c, h, w = p.in_shape
    y = g.node("Reshape", [x, g.ints([n, p.groups, c // p.groups, h, w])])
    y = g.node("Transpose", [y], perm=[0, 2, 1, 3, 4])
    return g.node("Reshape", [y, g.ints([n, c, h, w])])


def _pool(g: _Graph, x: str, p: OpSpec) -> str:
    """Max/avg pool with torch's ceil_mode and count_include_pad semantics."""
    if p.global_pool:
        return g.node("GlobalAveragePool" if p.pool == "avg" else "GlobalMaxPool", [x])
    kind = "MaxPool" if p.pool == "max" else "AveragePool"
    k, s, pad = p.kernel, p.stride, p.padding
    attrs: dict = dict(kernel_shape=[k, k], strides=[s, s])
    if p.pool == "avg":
        attrs["count_include_pad"] = int(p.count_pad)
    out = p.out_hw
    floor = (O.conv_out(p.h, k, s, pad), O.conv_out(p.w, k, s, pad))
    if out == floor:  # ceil mode changes nothing here: floor mode says so to every reader
        return g.node(kind, [x], pads=[pad] * 4, ceil_mode=0, **attrs)
    if out == (_onnx_ceil_out(p.h, k, s, pad), _onnx_ceil_out(p.w, k, s, pad)):
        return g.node(kind, [x], pads=[pad] * 4, ceil_mode=1, **attrs)
    # torch drops a last ceil-mode window that would start in the right padding; ONNX's ceil
    # rule does not. When one axis drops and the other gains a window, write floor mode with extra
    # end padding (never counted) that yields torch's windows on both axes.
    eh, ew = ((o - 1) * s + k - (size + 2 * pad) for o, size in zip(out, (p.h, p.w)))
    eh, ew = max(0, eh), max(0, ew)
    if p.pool == "avg":
        attrs["count_include_pad"] = 0
        if p.count_pad and pad:  # counted padding: zero-pad for real, only the extra goes uncounted
            x = g.node("Pad", [x, g.ints([0, 0, pad, pad, 0, 0, pad, pad])])
            pad = 0
    return g.node(kind, [x], pads=[pad, pad, pad + eh, pad + ew], **attrs)


def _onnx_ceil_out(size: int, k: int, s: int, pad: int) -> int:
    """Output size by the ONNX spec's ceil rule (no torch last-window correction)."""
    return -(-(size + 2 * pad - k) // s) + 1


def _se(g: _Graph, x: str, parts: _Parts) -> str:
    """Squeeze-excite: global average pool, 1x1 conv + ReLU, 1x1 conv + gate, x * gate."""
    parts.take("pool")
    s = g.node("GlobalAveragePool", [x])
    s = _conv(g, s, parts)
    s = _conv(g, s, parts)
    parts.take("eltwise")
    return g.node("Mul", [x, s])


# ---------------------------------------------------------------------- ops and blocks
def _emit(g: _Graph, op: OpSpec, weights: Weights, x: str) -> str:
    """Append the nodes of `op` reading tensor `x`; return the name of its output."""
    parts = _Parts(op, weights)
    k = op.kind
    if k == "conv":
        y = _conv(g, x, parts)
    elif k == "mbconv":
        y = _mbconv(g, op, x, parts)
    elif k in ("bottleneck", "basic"):
        y = _resblock(g, op, x, parts)
    elif k == "linear":
        p, w = parts.take("linear")
        inputs = [x, g.const(w["weight"])] + ([g.const(w["bias"], "b")] if "bias" in w else [])
        y = g.node("Gemm", inputs, transB=1)
        if parts.peek() == "activation":
            y = _act(g, y, parts.take("activation")[0].act)
    elif k == "pool":
        y = _pool(g, x, parts.take("pool")[0])
    elif k == "eltwise":
        p, w = parts.take("eltwise")
        if "other" not in w:
            raise OpError(f"{op.key}: a standalone eltwise needs its constant operand 'other'")
        y = g.node({"add": "Add", "mul": "Mul", "max": "Max"}[p.eltwise], [x, g.const(w["other"], "other")])
    elif k == "activation":
        y = _act(g, x, parts.take("activation")[0].act)
    elif k == "batch_norm":
        p, w = parts.take("batch_norm")
        y = g.node("BatchNormalization", [x, g.const(w["gamma"]), g.const(w["beta"]),
                                          g.const(w["mean"]), g.const(w["var"])], epsilon=BN_EPS)
        if parts.peek() == "activation":  # expand() may list a BN's activation on its own
            y = _act(g, y, parts.take("activation")[0].act)
        elif p.act != "none":
            y = _act(g, y, p.act)
    elif k == "shuffle":
        y = _shuffle(g, x, parts.take("shuffle")[0])
    elif k == "softmax":
        if not -4 <= op.axis < 4:
            raise OpError(f"{op.key}: softmax axis {op.axis} is out of range for a 4-D input")
        y = g.node("Softmax", [x], axis=op.axis)
        parts.take("softmax")
    else:
        raise OpError(f"no ONNX form for op kind {k!r}")
    parts.done()
    return y


def _mbconv(g: _Graph, op: OpSpec, x: str, parts: _Parts) -> str:
    """torch_build.MBConv: [expand] -> [shuffle] -> depthwise -> [SE] -> project -> [+x];
    se_pos='out': relu(out + se(project output))."""
    y = _conv(g, x, parts) if op.expand_conv else x
    if parts.peek() == "shuffle":
        y = _shuffle(g, y, parts.take("shuffle")[0])
    y = _conv(g, y, parts)
    if op.se and op.se_pos == "dw":
        y = _se(g, y, parts)
    lin = _conv(g, y, parts)
    out = lin
    if op.residual:
        parts.take("eltwise")
        out = g.node("Add", [lin, x])
    if op.se and op.se_pos == "out":
        s = _se(g, lin, parts)
        parts.take("eltwise")
        out = g.node("Add", [out, s])
        out = _act(g, out, parts.take("activation")[0].act)
    return out


def _resblock(g: _Graph, op: OpSpec, x: str, parts: _Parts) -> str:
    """torch_build.ResBlock: act(body(x) + shortcut(x)), shortcut a 1x1 conv + BN when projecting."""
    y = x
    for _ in range(3 if op.kind == "bottleneck" else 2):
        y = _conv(g, y, parts)
    s = _conv(g, x, parts) if op.proj else x
    parts.take("eltwise")
    y = g.node("Add", [y, s])
    return _act(g, y, parts.take("activation")[0].act)


def graph_in_shape(op: OpSpec) -> tuple[int, ...]:
    """The graph input shape of `op`: NCHW, except (n, c) for linear (a Gemm input)."""
    return (op.n, op.c) if op.kind == "linear" else op.in_shape


def graph_out_shape(op: OpSpec) -> tuple[int, ...]:
    """The graph output shape of `op`: NCHW, except (n, out) for linear."""
    return (op.n, op.out) if op.kind == "linear" else op.out_shape


def build_onnx(op: OpSpec, weights: Weights | None = None) -> "onnx.ModelProto":
    """One ONNX model computing `op` (op or block granularity) with `weights` aligned with
    `expand(op)` (the canonical seed-0 weights when None)."""
    g = _Graph()
    y = _emit(g, op, weights if weights is not None else op_weights(op), INPUT)
    return g.model(graph_in_shape(op), y, graph_out_shape(op), op.kind)


def build_onnx_chain(ops: Sequence[OpSpec], weights_list: Sequence[Weights] | None = None) -> "onnx.ModelProto":
    """One ONNX model running `ops` in sequence, each output feeding the next (a whole subnet
    from `space.blocks(config)`); a Flatten goes before a linear fed by an NCHW tensor."""
    if not ops:
        raise OpError("build_onnx_chain needs at least one op")
    if weights_list is None:
        weights_list = [op_weights(op) for op in ops]
    if len(weights_list) != len(ops):
        raise OpError(f"build_onnx_chain: {len(weights_list)} weight lists for {len(ops)} ops")
    g = _Graph()
    x, rank = INPUT, len(graph_in_shape(ops[0]))
    for op, w in zip(ops, weights_list):
        if op.kind == "linear" and rank == 4:
            x = g.node("Flatten", [x], axis=1)
        elif op.kind != "linear" and rank == 2:
            x = g.node("Unsqueeze", [x, g.ints([2, 3])])
        x = _emit(g, op, w, x)
        rank = len(graph_out_shape(op))
    return g.model(graph_in_shape(ops[0]), x, graph_out_shape(ops[-1]), "chain")


__all__ = ["build_onnx", "build_onnx_chain", "graph_in_shape", "graph_out_shape", "OPSET"]

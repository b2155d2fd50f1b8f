"""A whole ONNX model as ONNX Runtime runs it: its optimised graph, node by node.

ONNX Runtime's optimiser decides what a model costs before any kernel runs: it folds batch norms
and constants, fuses Conv+activation (FusedConv, HardSwish included), MatMul+Add (Gemm), the Erf
form of GELU (Gelu), x*sigmoid(x) (QuickGelu), Add+LayerNormalization (SkipLayerNormalization),
Transpose+MatMul (FusedMatMul), and at level `all` rewrites convolutions into its blocked NCHWc
layout with ReorderInput/ReorderOutput where the layout starts and ends. No hand-kept list follows
that across versions, so latbench reads the optimised model the installed runtime writes
(`SessionOptions.optimized_model_filepath`) with the agent's own session options, and every node
of it becomes one node op (latbench.nodes, latbench.lower.lower_graph).

`node_model` rebuilds one node as a one-node model to time: its inputs where the runtime's graph
feeds them (NCHWc tensors stay NCHWc), its constants as initializers, run with optimisations off
(the node is optimised already). A reshape-like node writes into its input's buffer, as the
runtime's allocation planner lets it do inside a model (no copy).
"""
from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from latbench.errors import OpError, require
from latbench.nodes import EmptyList, NodeSpec, TensorSpec

from .onnx_build import build_onnx_chain
from .weights import op_weights, spec_values

ort = require("onnxruntime", "ort")
onnx = require("onnx", "ort")
from onnx import helper, numpy_helper  # noqa: E402

IR_VERSION = 8
DEFAULT_OPSET = 17
EXPOSE_PER_RUN = 48  # intermediate tensors read back per run of the graph (bounds its memory)


def optimised_model(model: bytes, sess_options, provider: str) -> "onnx.ModelProto":
    """The graph ONNX Runtime runs for `model` under `sess_options` (as it saves it)."""
    with tempfile.TemporaryDirectory(prefix="latbench-ort-") as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        sess_options.optimized_model_filepath = path
        try:
            ort.InferenceSession(model, sess_options, providers=[provider])
        finally:
            sess_options.optimized_model_filepath = ""
        return onnx.load(path)


@functools.lru_cache(maxsize=None)
def conv_fusion(opt_level: str, provider: str) -> str:
    """The fusion name (latbench.ops.get_fusion) of what the installed ONNX Runtime does to
    conv -> activation at `opt_level`: each of latbench's activations built after a conv (as
    onnx_build builds it) and the graph optimised; fused are those that leave no node of their own.
    Once per process and level (a few milliseconds a session)."""
    from latbench import ops as O

    from .ort import session_options

    fused = []
    for act in O.ACTIVATIONS:
        conv = O.conv((1, 8, 8, 8), 8, 3, bias=True)
        chain = [conv, O.activation(conv.out_shape, act), O.conv(conv.out_shape, 8, 1)]
        model = build_onnx_chain(chain, [op_weights(op) for op in chain]).SerializeToString()
        opt = optimised_model(model, session_options(1, opt_level), provider)
        if all(n.op_type in _CONV_NODES for n in opt.graph.node):
            fused.append(act)
    return O.fusion_name("ort", fused)


_CONV_NODES = {"Conv", "FusedConv", "ReorderInput", "ReorderOutput"}


def graph_feeds(proto: "onnx.ModelProto", pool: np.ndarray) -> dict[str, np.ndarray]:
    """Seeded inputs for every data input of `proto` (fixed dims; float from `pool`, others 0)."""
    inits = {t.name for t in proto.graph.initializer}
    feeds = {}
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tt.shape.dim]
        if any(d < 1 for d in dims):
            raise OpError(f"input {vi.name!r} has unknown dims {dims}: give its input shape")
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        feeds[vi.name] = spec_values(TensorSpec(tuple(dims), str(np.dtype(dtype))), pool)
    return feeds


def graph_tensors(proto: "onnx.ModelProto", feeds: dict[str, np.ndarray], cut_options,
                  provider: str, names: "list[str] | None" = None) -> dict[str, TensorSpec]:
    """Every tensor the graph computes (or the `names` given), as a TensorSpec of its value in one
    run on `feeds` (graph inputs included). Runs the graph once per EXPOSE_PER_RUN tensors read
    back, so the memory held at once stays that of a few dozen activations."""
    from latbench.lower import tensor_spec

    out = {name: tensor_spec(v) for name, v in feeds.items()}
    if names is None:
        names = [o for n in proto.graph.node for o in n.output if o]
    for start in range(0, len(names), EXPOSE_PER_RUN):
        chunk = names[start:start + EXPOSE_PER_RUN]
        probe = onnx.ModelProto()
        probe.CopyFrom(proto)
        del probe.graph.output[:]
        for name in chunk:
            probe.graph.output.append(helper.make_empty_tensor_value_info(name))
        sess = ort.InferenceSession(probe.SerializeToString(), cut_options, providers=[provider])
        for name, value in zip(chunk, sess.run(chunk, feeds)):
            out[name] = tensor_spec(np.asarray(value))
        del sess
    return out


@dataclass
class NodeModel:
    """One node as a model to time: the model, the feeds of its data inputs, and arrays for its
    outputs (a reshape-like node's output shares its input's buffer)."""

    model: bytes
    feeds: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


def node_model(spec: NodeSpec, pool: np.ndarray) -> NodeModel:
    """`spec` as a one-node model: constants as initializers (their recorded values, else cut
    from `pool` / zeros), data inputs as graph inputs with arrays to feed, outputs preallocated."""
    m = onnx.ModelProto(ir_version=IR_VERSION, producer_name="latbench")
    m.opset_import.add(domain="", version=spec.version if not spec.domain else DEFAULT_OPSET)
    if spec.domain:
        m.opset_import.add(domain=spec.domain, version=spec.version)
    g = m.graph
    g.name = "node"
    feeds: dict[str, np.ndarray] = {}
    ins, at = [], 0
    for i, t in enumerate(spec.inputs):
        if t is None:
            ins.append("")
            continue
        name = f"in{i}"
        ins.append(name)
        arr = spec_values(t, pool, at)
        at += t.numel
        if t.const:
            g.initializer.append(numpy_helper.from_array(arr, name))
        else:
            feeds[name] = placed(arr.shape, arr.dtype, len(feeds))
            feeds[name][...] = arr
            g.input.append(helper.make_tensor_value_info(name, _elem(t), list(t.shape)))
    outs, outputs = [], {}
    data = [feeds[n] for n in ins if n in feeds]
    for i, t in enumerate(spec.outputs):
        if t is None:
            outs.append("")
            continue
        name = f"out{i}"
        outs.append(name)
        g.output.append(helper.make_tensor_value_info(name, _elem(t), list(t.shape)))
        src = data[0] if data else None
        if i == 0 and spec.is_view and src is not None and src.dtype == np.dtype(t.dtype) and src.size == t.numel:
            outputs[name] = src.reshape(t.shape)  # the same buffer: no copy, as inside a model
        else:
            outputs[name] = placed(t.shape, np.dtype(t.dtype), len(feeds) + i)
    g.node.append(helper.make_node(spec.op_type, ins, outs, name=spec.op_type, domain=spec.domain or None))
    node = g.node[0]
    for name, value in spec.attrs:
        node.attribute.append(_attribute(name, value, pool))
    return NodeModel(m.SerializeToString(), feeds, outputs)


def placed(shape: Sequence[int], dtype: np.dtype, slot: int) -> np.ndarray:
    """A fresh array starting at its slot's own offset modulo 4 KiB (64 + 576 x slot bytes), so a
    node's inputs and outputs never sit 4 KiB apart: a load after a store to an address 4 KiB away
    stalls ("4K aliasing"), and numpy's page-aligned large buffers made a lone Concat 3-7x slower
    than the same node inside a model, by an amount that changed from run to run."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + 8192, dtype=np.uint8)
    start = (-raw.ctypes.data) % 4096 + (64 + 576 * slot) % 4096
    return raw[start:start + nbytes].view(dtype).reshape(tuple(shape))


def _elem(t: TensorSpec) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype))


def _attribute(name: str, value: Any, pool: np.ndarray):
    A = onnx.AttributeProto
    if isinstance(value, TensorSpec):
        return helper.make_attribute(name, numpy_helper.from_array(spec_values(value, pool)))
    if isinstance(value, EmptyList):
        return helper.make_attribute(name, [], attr_type=A.FLOATS if value.kind == "f" else A.STRINGS)
    if isinstance(value, tuple) and not value:
        return helper.make_attribute(name, [], attr_type=A.INTS)
    if isinstance(value, tuple):
        return helper.make_attribute(name, list(value))
    return helper.make_attribute(name, value)


__all__ = ["NodeModel", "graph_feeds", "graph_tensors", "node_model", "optimised_model"]

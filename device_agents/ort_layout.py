"""An op's ONNX Runtime graph as it runs between two convolutions inside a network (NCHWc, no
boundary reorders).

At optimisation level `all` ONNX Runtime rewrites convolutions into its blocked NCHWc layout and
puts a ReorderInput / ReorderOutput wherever a graph enters or leaves that layout. Inside a network
of convolutions, blocks hand NCHWc tensors to each other. A block timed as a graph of its own also
pays a reorder at its input and at its output, and its residual Add cannot fuse into its last
convolution. In one 176 px ofa-mbv3-w10 subnet the blocks' own graphs held 61 reorders where the
whole model has 25, plus 10 separate Adds: 6-8% of the subnet's time.

`network_graph` therefore optimises producer -> op -> consumer (two 1x1 convolutions) with the
agent's session options, and cuts the producer, the consumer and their reorders out of ONNX
Runtime's own optimised graph. What is left are the op's kernels exactly as ONNX Runtime runs them
between two convolutions; it is timed with graph optimisations off (they are applied already).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Callable

import numpy as np

from latbench import ops as O
from latbench.errors import require
from latbench.ops import OpSpec

from .onnx_build import build_onnx_chain, graph_in_shape, graph_out_shape
from .ort_graph import graph_tensors
from .weights import Weights

ort = require("onnxruntime", "ort")
onnx = require("onnx", "ort")

NCHWC = "com.microsoft.nchwc"
IMAGE_CHANNELS = 4


@dataclass(frozen=True)
class NetworkGraph:
    """An op's kernels cut out of ONNX Runtime's optimised graph, with the (padded, blocked) shapes
    of the tensors it reads and writes."""

    model: bytes
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


def can_cut(op: OpSpec) -> bool:
    """Ops with one NCHW input and output sit between convolutions in a network."""
    return len(graph_in_shape(op)) == 4 and len(graph_out_shape(op)) == 4


def network_graph(op: OpSpec, weights: Weights, weights_for: Callable[[OpSpec], Weights],
                  sess_options, cut_options, provider: str) -> NetworkGraph | None:
    """`op`'s graph (with `weights`) as ONNX Runtime runs it between two 1x1 convolutions (with
    `weights_for` theirs), optimised under `sess_options`; `cut_options` (optimisations off) run
    the optimised graph once to read its tensor shapes. None where the op is not between convolutions (not 4-D) or would
    vanish into one (ONNX Runtime fused it into the producer or consumer). Where ONNX Runtime does
    not convert to NCHWc (another optimisation level or provider), the cut is the op's own graph."""
    if not can_cut(op):
        return None
    # a network feeds its image (<= 4 channels) to the first op as it is: nothing produces it
    head = [O.conv(op.in_shape, op.in_shape[1], kernel=1)] if op.in_shape[1] > IMAGE_CHANNELS else []
    consumer = O.conv(op.out_shape, op.out_shape[1], kernel=1)
    chain = build_onnx_chain([*head, op, consumer], [*map(weights_for, head), weights, weights_for(consumer)])
    with tempfile.TemporaryDirectory(prefix="latbench-ort-") as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        sess_options.optimized_model_filepath = path
        try:
            ort.InferenceSession(chain.SerializeToString(), sess_options, providers=[provider])
        finally:
            sess_options.optimized_model_filepath = ""
        opt = onnx.load(path)
    cut = _cut(opt, bool(head))
    if cut is None:
        return None
    model, t_in, t_out = cut
    in_shape, out_shape = _tensor_shapes(opt, t_in, t_out, cut_options, provider)
    g = model.graph
    g.input.append(onnx.helper.make_tensor_value_info(t_in, onnx.TensorProto.FLOAT, list(in_shape)))
    g.output.append(onnx.helper.make_tensor_value_info(t_out, onnx.TensorProto.FLOAT, list(out_shape)))
    return NetworkGraph(model.SerializeToString(), in_shape, out_shape)


def _cut(opt, producer: bool = True):
    """(model without producer, consumer and their reorders, its input tensor, its output tensor),
    or None when the optimised graph does not hold both convolutions as plain convolutions (an
    activation or an Add of the op fused into one of them: the op would vanish with it)."""
    nodes = list(opt.graph.node)
    x, y = opt.graph.input[0].name, opt.graph.output[0].name
    by_out = {o: n for n in nodes for o in n.output}
    readers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            readers.setdefault(i, []).append(n)

    def only_reader(t: str):
        r = readers.get(t, [])
        return r[0] if len(r) == 1 else None

    drop = []
    t_in = x
    if producer:
        prod = only_reader(x)
        if prod is not None and (prod.domain, prod.op_type) == (NCHWC, "ReorderInput"):
            drop.append(prod)
            prod = only_reader(prod.output[0])
        if not _plain_conv(prod):
            return None
        drop.append(prod)
        t_in = prod.output[0]
    cons = by_out.get(y)
    if cons is not None and (cons.domain, cons.op_type) == (NCHWC, "ReorderOutput"):
        drop.append(cons)
        cons = by_out.get(cons.input[0])
    if not _plain_conv(cons) or any(cons is d for d in drop):
        return None
    t_out = cons.input[0]
    if only_reader(t_out) is not cons:  # the op's output feeds the consumer only
        return None
    drop.append(cons)
    keep = [n for n in nodes if all(n is not d for d in drop)]
    if not keep:
        return None
    used = {i for n in keep for i in n.input}
    model = onnx.ModelProto()
    model.CopyFrom(opt)
    g = model.graph
    del g.node[:]
    g.node.extend(keep)
    inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)
    del g.input[:]
    del g.output[:]
    del g.value_info[:]
    return model, t_in, t_out


def _plain_conv(n) -> bool:
    """A convolution with only its input and weight: nothing of the op fused into it."""
    return (n is not None and n.op_type == "Conv" and len(n.input) == 2
            and not any(a.name == "activation" for a in n.attribute))


def _tensor_shapes(opt, t_in: str, t_out: str, cut_options, provider: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The shapes ONNX Runtime gives the NCHWc tensors `t_in` and `t_out` (channels padded to its
    block size): read off one run of the optimised graph with both exposed as outputs."""
    i = opt.graph.input[0]
    x = np.zeros([d.dim_value for d in i.type.tensor_type.shape.dim], dtype=np.float32)
    got = graph_tensors(opt, {i.name: x}, cut_options, provider, names=[t_in, t_out])
    return got[t_in].shape, got[t_out].shape

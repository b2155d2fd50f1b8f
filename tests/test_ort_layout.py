"""ONNX Runtime ops timed as they run between convolutions (device_agents.ort_layout): the cut
graph computes the op, holds the kernels the whole network runs for it, and is used by the agent."""
from __future__ import annotations

import collections

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from device_agents.onnx_build import build_onnx  # noqa: E402
from device_agents.ort import OrtAgent, session_options  # noqa: E402
from device_agents.ort_layout import NCHWC, network_graph  # noqa: E402
from device_agents.weights import op_weights  # noqa: E402
from latbench import ops as O  # noqa: E402
from latbench.spaces import get_space  # noqa: E402
from device_agents.networks import export_onnx  # noqa: E402

PROVIDER = "CPUExecutionProvider"


def _cut(op):
    return network_graph(op, op_weights(op), lambda o: op_weights(o, 1), session_options(1, "all"),
                         session_options(1, "disable"), PROVIDER)


def _run(model: bytes, x: np.ndarray, level: str = "disable") -> np.ndarray:
    sess = ort.InferenceSession(model, session_options(1, level), providers=[PROVIDER])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _reorder(x: np.ndarray, to_blocked: bool, channels: int = 0) -> np.ndarray:
    """ONNX Runtime's own NCHW <-> NCHWc conversion (its contrib ops), to feed and read a cut graph."""
    from onnx import TensorProto, helper

    attrs = {} if to_blocked else {"channels": channels}
    node = helper.make_node("ReorderInput" if to_blocked else "ReorderOutput", ["x"], ["y"], domain=NCHWC, **attrs)
    g = helper.make_graph([node], "reorder", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(NCHWC, 1)])
    return _run(m.SerializeToString(), x)


@pytest.mark.parametrize("op", [
    O.mbconv((1, 24, 20, 20), 24, 72, 5, 1, "relu", residual=True),  # residual: its Add fuses into the last conv
    O.mbconv((1, 24, 20, 20), 40, 96, 7, 2, "hswish", se=24),  # SE: reorders around its Mul stay
    O.conv((1, 16, 12, 12), 32, kernel=3, bn=True, act="relu"),
], ids=["mbconv-residual", "mbconv-se", "conv"])
def test_cut_graph_computes_the_op(op) -> None:
    """Fed the op's input in NCHWc, the cut graph's output converted back is the op's own graph's
    output: the kernels timed are the op's, with nothing of the producer or consumer left."""
    cut = _cut(op)
    assert cut is not None
    m = onnx.load_from_string(cut.model)
    types = collections.Counter(n.op_type for n in m.graph.node)
    assert m.graph.input[0].name != "x" and m.graph.output[0].name != "y"
    first = [n for n in m.graph.node if m.graph.input[0].name in n.input]
    last = [n for n in m.graph.node if m.graph.output[0].name in n.output]
    assert all(n.op_type != "ReorderInput" for n in first) and all(n.op_type != "ReorderOutput" for n in last)
    if op.kind == "mbconv" and not op.se:
        assert "Add" not in types and types["Conv"] == 3  # the residual Add is inside the last conv
    x = np.random.default_rng(0).standard_normal(op.in_shape).astype(np.float32)
    want = _run(build_onnx(op).SerializeToString(), x, "all")
    xb = _reorder(x, True)
    assert tuple(xb.shape) == cut.in_shape and cut.in_shape[1] % 8 == 0
    got = _reorder(_run(cut.model, xb), False, op.out_shape[1])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_cut_blocks_hold_the_whole_models_reorders() -> None:
    """Over a subnet's blocks the cut graphs hold the reorders ONNX Runtime runs in the whole model
    (blocks' own graphs hold about 2.5x as many): at most the classifier's one is missing."""
    sp = get_space("ofa-mbv3-w10")
    cfg = sp.sample(0, 1)[0]
    def count(model: bytes, level: str) -> collections.Counter:
        import os
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            so = session_options(1, level)
            so.optimized_model_filepath = os.path.join(tmp, "m.onnx")
            ort.InferenceSession(model, so, providers=[PROVIDER])
            return collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)

    whole = count(export_onnx(sp, cfg), "all")
    cut, own = collections.Counter(), collections.Counter()
    for b in sp.blocks(cfg):
        c = _cut(b)
        own += count(build_onnx(b, op_weights(b)).SerializeToString(), "all")
        cut += count(c.model, "disable") if c is not None else count(build_onnx(b).SerializeToString(), "all")
    reorders = lambda c: c["ReorderInput"] + c["ReorderOutput"]  # noqa: E731
    assert reorders(whole) - 1 <= reorders(cut) <= reorders(whole)
    assert reorders(own) > 2 * reorders(whole)
    assert cut["Conv"] == whole["Conv"] and "Add" not in cut and own["Add"] > 0


def test_what_is_not_cut() -> None:
    """No cut where the op is not between convolutions or would vanish into one: a linear (2-D), a
    lone activation (ONNX Runtime fuses it into the producer). Without NCHWc (level extended) the
    cut is the op's own NCHW graph, which is why the agent cuts at level all only."""
    assert _cut(O.linear(1, 64, 10)) is None
    assert _cut(O.activation((1, 16, 8, 8), "relu")) is None
    conv = O.conv((1, 16, 12, 12), 32, kernel=3)
    plain = network_graph(conv, op_weights(conv), op_weights, session_options(1, "extended"),
                          session_options(1, "disable"), PROVIDER)
    nodes = onnx.load_from_string(plain.model).graph.node
    assert [(n.domain, n.op_type) for n in nodes] == [("", "Conv")] and plain.in_shape == conv.in_shape
    stem = _cut(O.conv((1, 3, 32, 32), 16, kernel=3, stride=2, bn=True, act="hswish"))
    assert stem is not None and stem.in_shape == (1, 3, 32, 32)  # a network feeds its image as it is


def test_agent_times_the_cut_graph_and_says_so() -> None:
    from latbench.measure import TimingSettings

    timing = TimingSettings(warmup=1, warmup_s=0.0, min_samples=3, max_samples=5, max_time_s=0.02)
    ops = [O.mbconv((1, 16, 16, 16), 16, 48, 3, 1, "relu", residual=True), O.linear(1, 64, 10)]
    a, b = OrtAgent(), OrtAgent(boundary="graph")
    try:
        got = {m.key: m.extra["graph"] for m in a.measure(ops, timing)}
        assert got == {ops[0].key: "between convolutions", ops[1].key: "own"}
        assert {m.extra["graph"] for m in b.measure(ops, timing)} == {"own"}
        with pytest.raises(Exception, match="boundary must be one of"):
            OrtAgent(boundary="sideways")
    finally:
        a.close()
        b.close()

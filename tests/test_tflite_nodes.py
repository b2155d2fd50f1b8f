"""Node ops of LiteRT: a .tflite model lowered operator by operator (domain "tflite") and each
operator rebuilt from its key alone as a one-operator .tflite and timed by the LiteRT agent.

Checked against independent references: the model rebuilt operator by operator from the keys
(its real weights put back) and run in the interpreter one operator at a time computes what the
whole model computes; single CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, ADD, RESHAPE and
BATCH_MATMUL nodes give what numpy gives; FLOPs by hand; the CLI lists, profiles and prices a
.tflite as the sum of its operators' rows, and the ONNX Runtime agent refuses LiteRT nodes."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from device_agents.litert import LiteRTAgent  # noqa: E402
from device_agents.tflite_build import BO, OPT, S, _Graph  # noqa: E402
from device_agents.tflite_graph import DTYPE_OF_TYPE, read_model, tflite_node_model  # noqa: E402
from latbench import ops as O  # noqa: E402
from latbench.errors import FormatError, UsageError  # noqa: E402
from latbench.formats.oplist import parse_key  # noqa: E402
from latbench.nodes import NodeSpec, TensorSpec  # noqa: E402


@pytest.fixture(scope="module")
def agent() -> LiteRTAgent:
    return LiteRTAgent(threads=1, seed=0)


@pytest.fixture(scope="module")
def subnet(agent) -> bytes:
    """A whole latbench subnet (tiny space) as one .tflite: CONV_2D, DEPTHWISE_CONV_2D, PAD,
    HARD_SWISH, MEAN, ADD, MUL, FULLY_CONNECTED."""
    from latbench.spaces import get_space

    space = get_space("tiny")
    return agent.network_model(space, space.sample(0, 1)[0]).model


def attention() -> bytes:
    """A hand-built token block: RESHAPE to tokens, FULLY_CONNECTED v5 (keep_num_dims), q @ q^T
    (BATCH_MATMUL adj_y), SOFTMAX (beta 0.5), @ q, TRANSPOSE, MEAN over tokens, EXPAND_DIMS."""
    rng = np.random.default_rng(3)
    g = _Graph()
    x = g.tensor((1, 4, 4, 8), "x")
    shape = g.const(np.array([1, 16, 8], np.int32), "shape")
    t = g.op(BO.RESHAPE, [x, shape.idx], (1, 16, 8), "tokens")
    o = S.FullyConnectedOptionsT()
    o.keepNumDims = True
    w, b = g.const(rng.standard_normal((12, 8)).astype(np.float32) / 3, "w"), g.const(rng.standard_normal(12).astype(np.float32), "b")
    q = g.op(BO.FULLY_CONNECTED, [t.idx, w.idx, b.idx], (1, 16, 12), "q", OPT.FullyConnectedOptions, o, version=5)
    o = S.BatchMatMulOptionsT()
    o.adjY = True
    s = g.op(BO.BATCH_MATMUL, [q.idx, q.idx], (1, 16, 16), "scores", OPT.BatchMatMulOptions, o)
    o = S.SoftmaxOptionsT()
    o.beta = 0.5
    p = g.op(BO.SOFTMAX, [s.idx], (1, 16, 16), "probs", OPT.SoftmaxOptions, o)
    a = g.op(BO.BATCH_MATMUL, [p.idx, q.idx], (1, 16, 12), "attn", OPT.BatchMatMulOptions, S.BatchMatMulOptionsT())
    perm = g.const(np.array([0, 2, 1], np.int32), "perm")
    tr = g.op(BO.TRANSPOSE, [a.idx, perm.idx], (1, 12, 16), "transposed")
    axes = g.const(np.array([2], np.int32), "axes")
    o = S.ReducerOptionsT()
    o.keepDims = False
    m = g.op(BO.MEAN, [tr.idx, axes.idx], (1, 12), "mean", OPT.ReducerOptions, o)
    axis = g.const(np.array(1, np.int32), "axis")
    e = g.op(BO.EXPAND_DIMS, [m.idx, axis.idx], (1, 1, 12), "expanded")
    return g.finish([x], [e.idx], "attention")


# ---------------------------------------------------------------------- helpers
def whole_run(agent, model: bytes, x: np.ndarray) -> list[np.ndarray]:
    it = agent.interpreter(model)
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()]


def run_node_by_node(agent, model: bytes, x: np.ndarray) -> list[np.ndarray]:
    """The model's operators, each rebuilt from its key alone (its real constants put back) and
    invoked on its own in the interpreter, values flowing between them by tensor index."""
    m = read_model(model)
    sg = m.subgraphs[0]
    low = agent.lower_model(model)
    assert not low.unmapped and len(low.ops) + len(low.free) == len(sg.operators) == len(low.sources) + len(low.free)
    timed = {int(src.split(":", 1)[0]): op for op, src in zip(low.ops, low.sources)}
    values = {sg.inputs[0]: x}
    for index, top in enumerate(sg.operators):
        if index not in timed:  # a free reshape-like operator: its input's data in its output's shape
            out = sg.tensors[top.outputs[0]]
            assert any(f.endswith(f"({index}:{out.name.decode()})") for f in low.free), index
            values[top.outputs[0]] = values[top.inputs[0]].reshape(tuple(out.shape))
            continue
        op = timed[index]
        spec = parse_key(op.key).graph_node  # the key alone
        consts = {}
        for i, ti in enumerate(top.inputs):
            if ti >= 0 and spec.inputs[i].const:
                t = sg.tensors[ti]
                consts[i] = np.frombuffer(m.buffers[t.buffer].data.tobytes(), DTYPE_OF_TYPE[t.type])
        nm = tflite_node_model(spec, agent.pool, consts)
        it = agent.interpreter(nm.model)
        present = [i for i, t in enumerate(spec.inputs) if t is not None]  # tensor k = k-th present input
        for k in nm.feeds:
            it.set_tensor(k, values[top.inputs[present[k]]])
        it.invoke()
        outs = [j for j, t in enumerate(spec.outputs) if t is not None]
        for k, j in zip(nm.outputs, outs):
            values[top.outputs[j]] = it.get_tensor(k)
    return [values[i] for i in sg.outputs]


def node_inputs(spec: NodeSpec, nm) -> list[np.ndarray | None]:
    """The arrays a rebuilt node runs on: its feeds and its constant buffers, by input position."""
    m = read_model(nm.model)
    sg = m.subgraphs[0]
    out: list[np.ndarray | None] = []
    for i, t in enumerate(spec.inputs):
        if t is None:
            out.append(None)
            continue
        k = next(k for k, x in enumerate(sg.tensors) if x.name == f"in{i}".encode())
        if k in nm.feeds:
            out.append(nm.feeds[k])
        else:
            raw = m.buffers[sg.tensors[k].buffer].data.tobytes()
            out.append(np.frombuffer(raw, t.dtype).reshape(t.shape))
    return out


def _act(y: np.ndarray, fused: int) -> np.ndarray:
    A = S.ActivationFunctionType
    return {A.NONE: y, A.RELU: np.maximum(y, 0), A.RELU6: np.clip(y, 0, 6)}[fused]


def conv_ref(x, w, b, attrs: dict, depthwise: bool) -> np.ndarray:
    """NHWC convolution with TF's SAME/VALID padding; w OHWI (conv) or 1HWC (depthwise)."""
    sh, sw = attrs["stride_h"], attrs["stride_w"]
    dh, dw = attrs["dilation_h_factor"], attrs["dilation_w_factor"]
    kh, kw = w.shape[1:3]
    n, h, wd, c = x.shape
    if attrs["padding"] == S.Padding.SAME:
        oh, ow = -(-h // sh), -(-wd // sw)
        ph = max((oh - 1) * sh + (kh - 1) * dh + 1 - h, 0)
        pw = max((ow - 1) * sw + (kw - 1) * dw + 1 - wd, 0)
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        oh, ow = (h - (kh - 1) * dh - 1) // sh + 1, (wd - (kw - 1) * dw - 1) // sw + 1
    x = x.astype(np.float64)
    y = np.zeros((n, oh, ow, w.shape[-1] if depthwise else w.shape[0]))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw, :]
            if depthwise:
                y += np.repeat(patch, w.shape[-1] // c, axis=-1) * w[0, i, j]
            else:
                y += patch @ w[:, i, j, :].T
    return _act(y + b, attrs["fused_activation_function"])


def reference(spec: NodeSpec, ins: list) -> np.ndarray:
    a = dict(spec.attrs)
    t = spec.op_type
    if t in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        return conv_ref(ins[0], ins[1], ins[2], a, t == "DEPTHWISE_CONV_2D")
    if t == "FULLY_CONNECTED":
        w = ins[1]
        y = ins[0].reshape(-1, w.shape[1]).astype(np.float64) @ w.T + (0 if ins[2] is None else ins[2])
        y = _act(y, a["fused_activation_function"])
        return y.reshape(spec.outputs[0].shape)
    if t in ("ADD", "MUL"):
        return _act(ins[0] + ins[1] if t == "ADD" else ins[0] * ins[1], a["fused_activation_function"])
    if t == "RESHAPE":
        return ins[0].reshape(ins[1])
    if t == "BATCH_MATMUL":
        x, y = ins[0].astype(np.float64), ins[1]
        return (np.swapaxes(x, -1, -2) if a.get("adj_x") else x) @ (np.swapaxes(y, -1, -2) if a.get("adj_y") else y)
    raise AssertionError(t)


# ---------------------------------------------------------------------- lowering
def test_every_operator_is_one_node_and_keys_read_back(agent, subnet) -> None:
    m = read_model(subnet)
    low = agent.lower_model(subnet)
    assert not low.unmapped and len(low.ops) + len(low.free) == len(m.subgraphs[0].operators)
    types = [op.graph_node.op_type for op in low.ops]
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "PAD", "HARD_SWISH", "MEAN", "ADD", "MUL", "FULLY_CONNECTED"} <= set(types)
    for op in low.ops:
        spec = op.graph_node
        assert spec.domain == "tflite" and parse_key(op.key) == op
    conv = next(op.graph_node for op in low.ops if op.graph_node.op_type == "CONV_2D")
    assert conv.inputs[1].const and conv.inputs[1].values is None and not conv.inputs[0].const
    assert {"stride_h", "stride_w", "padding", "fused_activation_function", "dilation_h_factor"} <= dict(conv.attrs).keys()
    pad = next(op.graph_node for op in low.ops if op.graph_node.op_type == "PAD")
    assert pad.inputs[1].dtype == "int32" and pad.inputs[1].values is not None  # paddings kept
    hand = agent.lower_model(attention())
    # reshape-like operators are free: LiteRT runs them on their input's buffer inside a model
    assert [op.graph_node.op_type for op in hand.ops] == ["FULLY_CONNECTED", "BATCH_MATMUL", "SOFTMAX",
                                                          "BATCH_MATMUL", "TRANSPOSE", "MEAN"]
    assert [f.split("(", 1)[0] for f in hand.free] == ["RESHAPE", "EXPAND_DIMS"]
    fc = hand.ops[0].graph_node
    assert fc.version == 5 and fc.attr("keep_num_dims") == 1 and fc.outputs[0].shape == (1, 16, 12)
    assert hand.ops[1].graph_node.attr("adj_y") == 1 and hand.ops[2].graph_node.attr("beta") == 0.5


@pytest.mark.parametrize("which", ["subnet", "attention"])
def test_nodes_rebuilt_from_keys_compute_the_whole_model(agent, subnet, which) -> None:
    model = subnet if which == "subnet" else attention()
    shape = tuple(read_model(model).subgraphs[0].tensors[read_model(model).subgraphs[0].inputs[0]].shape)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    want = whole_run(agent, model, x)
    got = run_node_by_node(agent, model, x)
    for g, w in zip(got, want):
        assert g.shape == w.shape and np.allclose(g, w, rtol=1e-5, atol=1e-5 * float(np.abs(w).max())), \
            float(np.abs(g - w).max())


def test_single_nodes_match_numpy(agent, subnet) -> None:
    reshape = NodeSpec("RESHAPE", "tflite", 1, (TensorSpec((1, 16, 8)), TensorSpec((2,), "int32", True, (16, 8))),
                       (TensorSpec((16, 8)),))  # free in a lowering, and still a node one can time
    ops = O.unique(agent.lower_model(subnet).ops + agent.lower_model(attention()).ops + [O.node(reshape)])
    checked = set()
    for op in ops:
        spec = op.graph_node
        if spec.op_type not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "RESHAPE", "BATCH_MATMUL"):
            continue
        got = agent.run_node(op)
        ins = node_inputs(spec, tflite_node_model(spec, agent.pool))
        want = reference(spec, ins)
        assert len(got) == 1 and got[0].shape == want.shape == spec.outputs[0].shape, op.key
        np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-4 * max(float(np.abs(want).max()), 1), err_msg=op.key)
        checked.add(spec.op_type)
    assert checked == {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "RESHAPE", "BATCH_MATMUL"}


def test_costs_by_hand() -> None:
    T = TensorSpec
    conv = NodeSpec("CONV_2D", "tflite", 1, (T((1, 8, 8, 16)), T((32, 3, 3, 16), const=True), T((32,), const=True)),
                    (T((1, 4, 4, 32)),))
    assert conv.macs == 4 * 4 * 32 * 3 * 3 * 16 and conv.flops == 2 * conv.macs
    dw = NodeSpec("DEPTHWISE_CONV_2D", "tflite", 1, (T((1, 8, 8, 16)), T((1, 3, 3, 32), const=True), T((32,), const=True)),
                  (T((1, 8, 8, 32)),), (("depth_multiplier", 2),))
    assert dw.macs == 8 * 8 * 32 * 9
    fc = NodeSpec("FULLY_CONNECTED", "tflite", 5, (T((1, 197, 192)), T((576, 192), const=True), None),
                  (T((1, 197, 576)),), (("keep_num_dims", 1),))
    assert fc.macs == 197 * 576 * 192
    bmm = NodeSpec("BATCH_MATMUL", "tflite", 1, (T((1, 3, 64, 197)), T((1, 3, 64, 197))), (T((1, 3, 197, 197)),),
                   (("adj_x", 1), ("adj_y", 0)))
    assert bmm.macs == 3 * 197 * 197 * 64
    reshape = NodeSpec("RESHAPE", "tflite", 1, (T((1, 197, 192)), T((2,), "int32", True, (197, 192))), (T((197, 192)),))
    assert reshape.is_view and reshape.flops == 0


def test_lower_model_refuses_a_wrong_shape_and_a_non_tflite(agent, subnet, tmp_path) -> None:
    path = tmp_path / "net.tflite"
    path.write_bytes(subnet)
    shape = read_model(subnet).subgraphs[0].tensors[0].shape
    assert agent.lower_model(path, list(shape)).ops == agent.lower_model(subnet).ops
    with pytest.raises(UsageError, match="fixed at .*disagrees"):
        agent.lower_model(path, [1, 3, 64, 64])
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(FormatError, match="bad.tflite: not a .tflite model") as e:
        agent.lower_model(bad)
    assert "\n" not in str(e.value)


def test_a_node_prepared_for_timing_runs_and_touches(agent) -> None:
    spec = NodeSpec("ADD", "tflite", 1, (TensorSpec((1, 8, 8, 16)), TensorSpec((1, 1, 1, 16), const=True)),
                    (TensorSpec((1, 8, 8, 16)),), (("fused_activation_function", 0), ("pot_scale_int16", 1)))
    prepared = agent.prepare_op(O.node(spec))
    prepared()
    prepared.touch()
    assert agent.runs_node(spec) and agent.check_ops([O.node(spec)]) is None


# ---------------------------------------------------------------------- commands
def test_ops_profile_and_predict_a_tflite_model(tmp_path, cli, subnet) -> None:
    from latbench.modelops import model_ops
    from latbench.runmeta import invocation_ms
    from latbench.store import LatencyTable

    path = tmp_path / "x.tflite"
    path.write_bytes(subnet)
    code, out, err = cli("ops", "--model", str(path), "--device", "tflite", "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert listed["ops"] and all(k.startswith("node-op:tflite/") for k in listed["ops"])
    table = tmp_path / "t.sqlite"
    code, out, err = cli("profile", "--device", "tflite", "--threads", "1", "--model", str(path), "--out", str(table),
                         "--max-time", "0.02", "--min-samples", "3", "--rounds", "2")
    assert code == 0, err
    lowered = model_ops(str(path), None, "tflite", threads=1).ops
    with LatencyTable.open(table, readonly=True) as t:
        assert t.run_settings.context == "warm"  # LiteRT's model_context: back to back
        assert t.keys(status="ok") == set(listed["ops"])
        est, inv = t.estimates(), invocation_ms(t)
    code, out, err = cli("predict", "--table", str(table), "--model", str(path), "--json")
    assert code == 0, err
    (row,) = json.loads(out)["predictions"]
    assert row["misses"] == 0 and row["keys"] == len(lowered), row
    assert row["ms"] == pytest.approx(inv + sum(max(0.0, est[op.key] - inv) for op in lowered), rel=1e-9)


def test_ort_refuses_tflite_nodes_in_one_line(tmp_path, cli, subnet) -> None:
    pytest.importorskip("onnxruntime")
    path = tmp_path / "x.tflite"
    path.write_bytes(subnet)
    keys = tmp_path / "nodes.txt"
    keys.write_text(LiteRTAgent(threads=1).lower_model(subnet).ops[0].key + "\n")
    code, _, err = cli("profile", "--device", "ort", "--ops", str(keys), "--out", str(tmp_path / "t.sqlite"))
    assert code == 2 and "nodes of a LiteRT (.tflite) graph" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "t.sqlite").exists()
    code, _, err = cli("ops", "--model", str(path), "--device", "ort")
    assert code == 2 and "--device tflite" in err and len(err.strip().splitlines()) == 1, err

"""Node ops: a model lowered as ONNX Runtime runs it (the nodes of its optimised graph) and each
node rebuilt from its key alone and timed by the ort agent.

Checked against independent references: the node keys round-trip through every op-list format;
FLOPs and bytes against hand-computed figures; the optimised graph rebuilt node by node from keys
(the model's real weights put back) computes what torch computes for the module; single
standard-domain nodes give what onnx's reference evaluator gives; a reshape writes into its input
(no copy, as inside a model); a table profiled from a model prices it as the sum of its rows."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="exporting a module needs torch")
ort = pytest.importorskip("onnxruntime", reason="node ops are ONNX Runtime's: pip install 'latbench[ort]'")
onnx = pytest.importorskip("onnx", reason="node ops are ONNX Runtime's: pip install 'latbench[ort]'")

from latbench import ops as O  # noqa: E402
from latbench.errors import FormatError, OpError  # noqa: E402
from latbench.formats.oplist import parse_key, read_any_ops, write_csv, write_jsonl, write_keys  # noqa: E402
from latbench.modelops import export_module, model_ops  # noqa: E402
from latbench.nodes import EmptyList, NodeSpec, TensorSpec, parse_node  # noqa: E402
from latbench.store import LatencyTable  # noqa: E402

SHAPE = (1, 3, 32, 32)


def hybrid():
    """A small CNN + transformer: conv-bn-hardswish, a depthwise conv with squeeze-excite, then a
    pre-norm attention block and a GELU MLP over the 64 tokens, mean pooling and a classifier."""
    from torch import nn

    class SE(nn.Module):
        def __init__(self, c: int):
            super().__init__()
            self.fc1, self.fc2 = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)

        def forward(self, x):
            s = x.mean((2, 3), keepdim=True)
            return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))

    class Block(nn.Module):
        def __init__(self, d: int, heads: int):
            super().__init__()
            self.heads = heads
            self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)
            x = x + self.proj((a @ v).transpose(1, 2).reshape(b, t, d))
            return x + self.mlp(self.norm2(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
            self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 2, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
            self.se = SE(16)
            self.block = Block(16, 2)
            self.head = nn.Linear(16, 10)

        def forward(self, x):
            x = self.se(self.dw(self.stem(x)))
            x = self.block(x.flatten(2).transpose(1, 2))
            return self.head(x.mean(1))

    net = Net().eval()
    with torch.no_grad():  # batch norms with statistics of their own, not the identity
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net


@pytest.fixture(scope="module")
def net_onnx(tmp_path_factory) -> tuple[Path, object]:
    module = hybrid()
    path = tmp_path_factory.mktemp("nodes") / "hybrid.onnx"
    path.write_bytes(export_module(module, SHAPE))
    return path, module


@pytest.fixture(scope="module")
def agent():
    from device_agents import get_agent

    a = get_agent("ort", threads=1)
    yield a
    a.close()


def _lowered(agent, path: Path):
    """(optimised model, graph tensors, Lowering) as OrtAgent.lower_model makes them."""
    from device_agents.ort_graph import graph_feeds, graph_tensors, optimised_model
    from latbench.lower import lower_graph

    opt = optimised_model(path.read_bytes(), agent._sess_options, agent.provider)
    tensors = graph_tensors(opt, graph_feeds(opt, agent.pool), agent._cut_options, agent.provider)
    return opt, lower_graph(opt, tensors)


# ---------------------------------------------------------------------- keys
SPEC = NodeSpec(
    "Conv", "com.microsoft.nchwc", 1,
    (TensorSpec((1, 64, 56, 56)), TensorSpec((64, 64, 3, 3), const=True), TensorSpec((64,), const=True), None),
    (TensorSpec((1, 64, 56, 56)),),
    (("activation", "Relu"), ("activation_params", (0.0, 6.0)), ("alpha", -1e-05), ("dilations", (1, 1)),
     ("empty_f", EmptyList("f")), ("empty_i", ()), ("group", 1), ("mode", "half-pixel 'x'"),
     ("names", ("a", "b-c")), ("value", TensorSpec((2,), "int64", True, (-3, 7)))))


def test_a_node_key_describes_the_node_whole_and_reads_back() -> None:
    key = SPEC.key
    assert key.startswith("node-op:com.microsoft.nchwc/Conv-v:1-input:1x64x56x56,w64x64x3x3,w64,none-output:")
    assert not any(ch.isspace() for ch in key) and key.count("-") == 4 + len(SPEC.attrs)
    assert parse_node(key) == SPEC
    op = O.node(SPEC)
    assert op.key == key and op.in_shape == (1, 64, 56, 56) and op.out_shape == (1, 64, 56, 56)
    assert O.OpSpec.from_dict(op.to_dict()) == op
    assert parse_key(key) == op


@pytest.mark.parametrize("write", [write_jsonl, write_csv, write_keys])
def test_node_ops_round_trip_through_op_list_files(tmp_path, write) -> None:
    other = NodeSpec("Transpose", "", 17, (TensorSpec((1, 197, 3, 64)),), (TensorSpec((1, 3, 197, 64)),),
                     (("perm", (0, 2, 1, 3)),))
    ops = [O.node(SPEC), O.node(other), O.conv((1, 8, 8, 8), 8, 3)]
    path = tmp_path / f"ops{ {write_jsonl: '.jsonl', write_csv: '.csv', write_keys: '.txt'}[write] }"
    write(ops, path)
    assert read_any_ops(str(path)) == ops


@pytest.mark.parametrize("key,message", [
    ("node-op:Relu-v:x-input:4-output:4", "bad opset version"),
    ("node-op:Relu-v:17-input:4~q9-output:4", "unknown dtype"),
    ("node-op:Relu-v:17-input:4-output:4-b:1-a:2", "sorted order"),
    ("node-op:Relu-v:17-input:04-output:4", "not canonical"),
    ("node-op:Relu-v:17-output:4", "not a node key"),
    ("node-op:Relu-v:17-input:4-output:4-axis", "has no value"),
])
def test_a_malformed_node_key_is_one_clear_error(key, message) -> None:
    with pytest.raises(OpError, match=message):
        parse_node(key, "ops.txt:3")
    with pytest.raises(FormatError, match="ops.txt:3"):
        parse_key(key, "ops.txt:3")


def test_a_node_op_is_its_key_and_nothing_else() -> None:
    op = O.node(SPEC)
    with pytest.raises(OpError, match="disagrees"):
        O.OpSpec("node", 1, 1, 1, 1, node=SPEC.key)
    with pytest.raises(OpError, match="no fields but"):
        op.replace(kernel=3)
    with pytest.raises(OpError, match="only a node op"):
        O.OpSpec("conv", 1, 8, 8, 8, out=8, node=SPEC.key)


def test_costs_by_hand() -> None:
    gemm = NodeSpec("Gemm", "", 17, (TensorSpec((197, 192)), TensorSpec((768, 192), const=True),
                                     TensorSpec((768,), const=True)),
                    (TensorSpec((197, 768)),), (("transB", 1),))
    assert gemm.flops == 2 * 197 * 768 * 192 and gemm.params == 768 * 192 + 768
    assert gemm.bytes == 4 * (197 * 192 + 768 * 192 + 768 + 197 * 768)
    mm = NodeSpec("FusedMatMul", "com.microsoft", 1, (TensorSpec((1, 3, 197, 64)), TensorSpec((1, 3, 197, 64))),
                  (TensorSpec((1, 3, 197, 197)),), (("alpha", 0.125), ("transB", 1)))
    assert mm.flops == 2 * 3 * 197 * 197 * 64 and mm.params == 0
    assert SPEC.flops == 2 * 64 * 56 * 56 * 64 * 9
    gelu = NodeSpec("Gelu", "com.microsoft", 1, (TensorSpec((1, 197, 768)),), (TensorSpec((1, 197, 768)),))
    assert gelu.flops == 197 * 768 and gelu.bytes == 8 * 197 * 768
    mean = NodeSpec("ReduceMean", "", 17, (TensorSpec((1, 64, 56, 56)),), (TensorSpec((1, 64, 1, 1)),))
    assert mean.flops == 64 * 56 * 56  # a reduction reads every input element
    reshape = NodeSpec("Reshape", "", 17, (TensorSpec((1, 197, 192)), TensorSpec((2,), "int64", True, (197, 192))),
                       (TensorSpec((197, 192)),))
    assert reshape.flops == 0 and reshape.bytes == 4 * 2 * 197 * 192 + 16 and reshape.is_view


# ---------------------------------------------------------------------- lowering
def test_the_lowering_is_the_graph_onnx_runtime_runs(net_onnx, agent) -> None:
    """Every node of ORT's optimised graph is one op, in order, none unmapped; the fusions are
    ORT's own (HardSwish and Clip(0, 6) into the conv, GELU's Erf form as one node)."""
    path, _ = net_onnx
    opt, low = _lowered(agent, path)
    assert not low.unmapped and len(low.ops) == len(opt.graph.node) == len(low.sources)
    types = [op.graph_node.qualified for op in low.ops]
    raw = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert {"Erf", "HardSwish", "Clip", "Sigmoid", "ReduceMean"} <= set(raw)  # what the export holds
    assert not {"Erf", "HardSwish", "Clip"} & {t.rsplit("/", 1)[-1] for t in types}
    convs = [op.graph_node for op in low.ops if op.graph_node.op_type in ("Conv", "FusedConv")]
    assert convs[0].attr("activation") == "HardSwish"
    assert convs[1].attr("activation") == "Clip" and convs[1].attr("activation_params") == (0.0, 6.0)
    assert "com.microsoft/Gelu" in types
    assert {"LayerNormalization", "com.microsoft/SkipLayerNormalization"} & set(types)
    assert agent.lower_model(path).ops == low.ops  # the agent's own entry point, the same ops
    # the torch module and its export are one path: the same nodes
    assert [o.key for o in model_ops(hybrid(), SHAPE, "ort", threads=1).ops] == [o.key for o in low.ops]


def test_nodes_rebuilt_from_their_keys_compute_the_model(net_onnx, agent) -> None:
    """The optimised graph run node by node, each node a one-node model built from its key alone
    (the model's real weights put back in place of the timing weights): the output is what torch
    computes for the module."""
    from onnx import numpy_helper

    from device_agents.ort_graph import node_model
    from device_agents.ort import session_options

    path, module = net_onnx
    opt, low = _lowered(agent, path)
    inits = {t.name: numpy_helper.to_array(t) for t in opt.graph.initializer}
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    values = {opt.graph.input[0].name: x}
    so = session_options(1, "disable")
    for node, op in zip(opt.graph.node, low.ops):
        nm = node_model(op.graph_node, agent.pool)
        m = onnx.load_from_string(nm.model)
        for t in m.graph.initializer:  # in<i>: the node's i-th input
            t.CopyFrom(numpy_helper.from_array(inits[node.input[int(t.name[2:])]], t.name))
        feeds = {f"in{i}": values[name] for i, name in enumerate(node.input) if f"in{i}" in nm.feeds}
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        outs = sess.run(None, feeds)
        for o, name in zip(sess.get_outputs(), [n for n in node.output if n]):
            values[name] = outs[[p.name for p in sess.get_outputs()].index(o.name)]
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    got = values[opt.graph.output[0].name]
    assert got.shape == want.shape and np.allclose(got, want, atol=1e-4), np.abs(got - want).max()


def test_standard_nodes_match_onnxs_reference_evaluator(net_onnx, agent) -> None:
    """Each standard-domain node (Gemm, Transpose, Softmax, LayerNormalization, ...) run by the
    ort agent from its key gives what onnx.reference gives for the same model and inputs."""
    from onnx.reference import ReferenceEvaluator

    from device_agents.ort_graph import node_model

    path, _ = net_onnx
    standard = O.unique(op for op in agent.lower_model(path).ops if not op.graph_node.domain)
    assert len({op.graph_node.op_type for op in standard}) >= 5
    for op in standard:
        nm = node_model(op.graph_node, agent.pool)
        want = ReferenceEvaluator(onnx.load_from_string(nm.model)).run(None, nm.feeds)
        got = agent.run_node(op)
        for name, w in zip(sorted(got), want):
            assert got[name].shape == w.shape and np.allclose(got[name], w, atol=1e-4), op.key


def test_a_reshape_writes_into_its_input_as_inside_a_model(agent) -> None:
    spec = NodeSpec("Reshape", "", 17, (TensorSpec((1, 64, 196)), TensorSpec((2,), "int64", True, (64, 196))),
                    (TensorSpec((64, 196)),))
    prepared = agent.prepare_op(O.node(spec))
    prepared()
    _, _, nm = prepared.keep
    (x,), (y,) = nm.feeds.values(), nm.outputs.values()
    assert np.shares_memory(x, y) and np.array_equal(y, x.reshape(64, 196))
    agent.close()


def test_a_nodes_buffers_never_sit_4k_apart(agent) -> None:
    """A Concat's two inputs and its output start at distinct offsets modulo 4 KiB, 64-byte aligned
    (4K aliasing made a lone Concat 3-7x slower than inside a model), and it still concatenates."""
    from device_agents.ort_graph import node_model

    spec = NodeSpec("Concat", "", 17, (TensorSpec((2, 16, 24, 32)), TensorSpec((2, 16, 24, 32))),
                    (TensorSpec((2, 32, 24, 32)),), (("axis", 1),))
    nm = node_model(spec, agent.pool)
    arrays = [*nm.feeds.values(), *nm.outputs.values()]
    offsets = [a.ctypes.data % 4096 for a in arrays]
    assert len(set(offsets)) == 3 and all(o % 64 == 0 for o in offsets), offsets
    prepared = agent.prepare_op(O.node(spec))
    prepared()
    (a, b), (y,) = prepared.keep[2].feeds.values(), prepared.keep[2].outputs.values()
    assert np.array_equal(y, np.concatenate([a, b], axis=1))
    agent.close()


# ---------------------------------------------------------------------- commands
def test_ops_profile_and_predict_a_model_as_ort_runs_it(tmp_path, cli, net_onnx) -> None:
    """`ops --model --device ort` lists the graph's nodes (exit 0: nothing unmapped); `profile
    --model` stores exactly those; `predict --model` prices the model as the per-call cost once
    plus each row's work (row less the cost, 0 below it)."""
    path, _ = net_onnx
    out_file = tmp_path / "ops.jsonl"
    code, out, err = cli("ops", "--model", str(path), "--device", "ort", "-o", str(out_file))
    assert code == 0 and "every compute node mapped" in err, err
    listed = read_any_ops(str(out_file))
    assert listed and all(op.kind == "node" for op in listed)
    table = tmp_path / "hybrid.sqlite"
    code, out, err = cli("profile", "--device", "ort", "--threads", "1", "--model", str(path), "--out", str(table),
                         "--max-time", "0.02", "--min-samples", "3", "--rounds", "2")
    assert code == 0, err
    lowered = model_ops(str(path), None, "ort", threads=1).ops
    from latbench.runmeta import invocation_ms

    with LatencyTable.open(table, readonly=True) as t:
        assert t.keys(status="ok") == {op.key for op in listed}
        est, inv = t.estimates(), invocation_ms(t)
        # network context by default: the model's weight bytes read before each timed call
        from latbench.profiler import network_context_bytes

        want = network_context_bytes(None, 4 * sum(op.params for op in lowered) / (1 << 20))[0]
        assert t.run_settings.context == "network" and t.run_settings.context_bytes == want > 0
    code, out, err = cli("predict", "--table", str(table), "--model", str(path), "--json")
    assert code == 0, err
    (row,) = json.loads(out)["predictions"]
    assert row["misses"] == 0 and row["keys"] == len(lowered) and row["lowering"] == "ort graph", row
    assert inv > 0
    by_hand = inv + sum(max(0.0, est[op.key] - inv) for op in lowered)
    assert row["ms"] == pytest.approx(by_hand, rel=1e-9)


@pytest.mark.parametrize("device", ["cpu", "tflite"])
def test_devices_that_cannot_run_nodes_refuse_them_in_one_line(tmp_path, cli, device) -> None:
    path = tmp_path / "nodes.txt"
    path.write_text(SPEC.key + "\n")
    code, out, err = cli("profile", "--device", device, "--ops", str(path), "--out", str(tmp_path / "t.sqlite"))
    assert code == 2 and "nodes of an ONNX Runtime graph" in err and "Traceback" not in err, err
    assert not (tmp_path / "t.sqlite").exists()


def test_formats_that_cannot_hold_a_node_say_so() -> None:
    from latbench.formats.paddleslim import op_to_line

    with pytest.raises(FormatError, match="runtime graph node has no PaddleSlim line.*csv\\|jsonl"):
        op_to_line(O.node(SPEC))

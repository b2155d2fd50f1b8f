"""ATen node ops: a torch module priced as torch eager runs it (the ATen calls torch.export
records), each call rebuilt from its key alone and timed by the torch cpu agent.

Checked against independent references: the nodes' multiply-adds against torch's FlopCounterMode
on the module; single calls against numpy; keys round-trip; a table profiled from a module
prices it as the sum of its rows; the other runtimes refuse ATen nodes in one line."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="ATen nodes are torch's")

from latbench import ops as O  # noqa: E402
from latbench.formats.oplist import parse_key, read_any_ops  # noqa: E402
from latbench.modelops import model_ops  # noqa: E402
from latbench.nodes import NodeSpec, TensorSpec  # noqa: E402
from latbench.store import LatencyTable  # noqa: E402

from test_node_ops import SHAPE, hybrid  # noqa: E402

MODULE = '''
from test_node_ops import hybrid


def net():
    return hybrid()
'''


@pytest.fixture(scope="module")
def agent():
    from device_agents import get_agent

    a = get_agent("cpu", threads=1)
    yield a
    a.close()


@pytest.fixture(scope="module")
def lowered(agent):
    return agent.lower_model(hybrid(), SHAPE)


def test_a_module_lowers_to_the_aten_calls_eager_makes(lowered) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    assert not lowered.unmapped and lowered.ops
    names = {op.graph_node.op_type for op in lowered.ops}
    assert {"conv2d.default", "linear.default", "layer_norm.default", "softmax.int", "gelu.default",
            "hardswish.default", "sigmoid.default", "mean.dim"} <= names, names
    assert all(op.graph_node.domain == "aten" and parse_key(op.key) == op for op in lowered.ops)
    bn = [op for op in lowered.ops if op.graph_node.op_type.startswith(("batch_norm", "_native_batch_norm"))]
    assert bn and all(op.graph_node.inputs[1].const for op in bn)  # eager runs its batch norms: not folded
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        hybrid()(torch.zeros(SHAPE))
    assert sum(2 * op.macs for op in lowered.ops) == fc.get_total_flops()


def test_single_calls_match_numpy(agent) -> None:
    linear = NodeSpec("linear.default", "aten", 0, (TensorSpec((1, 5, 8)), TensorSpec((6, 8), const=True),
                                                    TensorSpec((6,), const=True)),
                      (TensorSpec((1, 5, 6)),), (("nargs", 3),))
    transpose = NodeSpec("transpose.int", "aten", 0, (TensorSpec((1, 5, 8)),), (TensorSpec((1, 8, 5)),),
                         (("a1", 1), ("a2", 2), ("nargs", 3)))
    softmax = NodeSpec("softmax.int", "aten", 0, (TensorSpec((2, 7)),), (TensorSpec((2, 7)),),
                       (("a1", -1), ("nargs", 2)))
    from device_agents.torch_graph import node_call

    for spec, reference in ((linear, lambda x, w, b: x @ w.T + b), (transpose, lambda x: x.transpose(0, 2, 1)),
                            (softmax, lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True))):
        call, made = node_call(spec, torch.device("cpu"), agent.pool)
        got = call().numpy()
        want = reference(*[t.numpy() for t in made])
        assert got.shape == spec.outputs[0].shape and np.allclose(got, want, atol=1e-5), spec.op_type
        op = O.node(spec)
        assert [y.shape for y in agent.run_node(op)] == [spec.outputs[0].shape]
    # a dtype argument: the schema says int, its declared type ScalarType takes the name
    cast = NodeSpec("to.dtype", "aten", 0, (TensorSpec((2, 3), "int64", values=(1, 2, 3, 4, 5, 6)),),
                    (TensorSpec((2, 3)),), (("a1", "float32"), ("nargs", 2)))
    call, _ = node_call(cast, torch.device("cpu"), agent.pool)
    y = call()
    assert y.dtype == torch.float32 and y.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    bad = NodeSpec("no_such_op.default", "aten", 0, (TensorSpec((2,)),), (TensorSpec((2,)),), (("nargs", 1),))
    with pytest.raises(Exception, match="no such operator"):
        node_call(bad, torch.device("cpu"), agent.pool)


def test_ops_profile_and_predict_a_module_as_eager_runs_it(tmp_path, cli, monkeypatch) -> None:
    """`ops --model module:callable --device cpu`: its ATen calls, nothing unmapped; `profile
    --model` stores exactly those; `predict --model` prices the module as the sum of their rows
    less the per-call cost, plus it once."""
    from latbench.runmeta import invocation_ms

    (tmp_path / "hybrid_net.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = ["--model", "hybrid_net:net", "--input-shape", ",".join(map(str, SHAPE))]
    code, out, err = cli("ops", *spec, "--device", "cpu", "-o", str(tmp_path / "ops.jsonl"))
    assert code == 0 and "every compute node mapped" in err, err
    code, out, err = cli("ops", "--model", "hybrid_net:net", "--device", "cpu")  # no input shape: named by its flag
    assert code == 2 and "--input-shape" in err and "Traceback" not in err, err
    listed = read_any_ops(str(tmp_path / "ops.jsonl"))
    assert listed and all(op.graph_node.domain == "aten" for op in listed)
    table = tmp_path / "cpu.sqlite"
    code, out, err = cli("profile", "--device", "cpu", "--threads", "1", *spec, "--out", str(table),
                         "--max-time", "0.01", "--min-samples", "3", "--rounds", "1")
    assert code == 0, err
    with LatencyTable.open(table, readonly=True) as t:
        assert t.keys(status="ok") == {op.key for op in listed}
        est, inv = t.estimates(), invocation_ms(t)
    code, out, err = cli("predict", "--table", str(table), *spec, "--json")
    assert code == 0, err
    (row,) = json.loads(out)["predictions"]
    lowered = model_ops(hybrid(), SHAPE, "cpu", threads=1).ops
    assert row["misses"] == 0 and row["keys"] == len(lowered) and row["lowering"] == "cpu graph", row
    assert row["ms"] == pytest.approx(inv + sum(max(0.0, est[op.key] - inv) for op in lowered), rel=1e-9)
    # ort times ONNX Runtime's nodes, not torch's
    code, out, err = cli("profile", "--device", "ort", "--ops", str(tmp_path / "ops.jsonl"), "--out",
                         str(tmp_path / "ort.sqlite"))
    assert code == 2 and "which this device does not time" in err and "Traceback" not in err, err

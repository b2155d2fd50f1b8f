"""`latbench predict --model` and `lower_onnx`: real ONNX files (onnx.helper, and a torch export)
priced against a table built here. Unmapped compute is listed and makes the result partial
(exit 3), shape-only nodes are not compute, symbolic dims need --input-shape, a file that is not
ONNX is one line naming it; the mapped part's price is the hand sum of its table entries."""
from __future__ import annotations

import io
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from cli_result import run_cli  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from latbench import ops as O  # noqa: E402
from latbench.device import DeviceProfile  # noqa: E402
from latbench.errors import FormatError, UsageError  # noqa: E402
from latbench.lower import Unmapped, lower_onnx  # noqa: E402
from latbench.measure import Measurement, Stats  # noqa: E402
from latbench.store import LatencyTable  # noqa: E402
from latbench.tablemeta import CompanionEntry, RunSettings

PROFILE = DeviceProfile(agent="ort", runtime="onnxruntime", runtime_version="1.32.0", threads=1,
                        device="Test CPU", abi="x86_64", cores=2)
INVOCATION_MS = 0.003  # the table's per-call cost: a network pays it once


def samples_for(i: int) -> list[float]:
    """21 samples around a distinct base per op (odd count: the median is one of them)."""
    base = 0.05 + 0.0173 * i
    return [base * (1 + 0.01 * ((j * 7) % 11 - 5)) for j in range(21)]


def write_table(path: Path, ops: list[O.OpSpec]) -> dict[str, float]:
    """An op-level table holding `ops` with real statistics; returns each key's median (the
    value the table prices it with), computed here with statistics.median."""
    medians = {}
    with LatencyTable.open(path, PROFILE) as t:
        for i, op in enumerate(ops):
            s = samples_for(i)
            t.add(Measurement(key=op.key, profile_id=PROFILE.id, op=op.to_dict(), stats=Stats.from_samples(s),
                              settings={"threads": 1}, wall_s=0.1, timed_s=0.05, taken_at=1.7e9 + i))
            medians[op.key] = statistics.median(s)
        t.set_run_settings(RunSettings("op"))
        t.set_invocation(CompanionEntry(estimate_ms=INVOCATION_MS))
    return medians


def hand_price(medians: dict[str, float], ops: list[O.OpSpec]) -> float:
    """That cost once plus every entry's work: entry less the per-call cost, 0 below it."""
    return INVOCATION_MS + math.fsum(max(0.0, medians[o.key] - INVOCATION_MS) for o in ops)


def mflops(ops) -> str:
    return f"{sum(o.flops for o in ops) / 1e6:.1f}"


def init(name: str, *shape: int) -> TensorProto:
    size = math.prod(shape)
    return numpy_helper.from_array(np.linspace(-1, 1, size, dtype=np.float32).reshape(shape), name)


def save(graph, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


# ---------------------------------------------------------------------- models by hand
def lrn_model(path: Path) -> tuple[Path, list[O.OpSpec]]:
    """Conv -> LRN -> Relu -> LRN -> GlobalAveragePool -> Flatten -> Gemm on 1x3x8x8, and the ops
    latbench maps it to (the two LRN are compute it has no op for; Flatten moves no data)."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("LRN", ["c"], ["n1"], name="norm1", size=3),
        helper.make_node("Relu", ["n1"], ["r"], name="relu"),
        helper.make_node("LRN", ["r"], ["n2"], name="norm2", size=3),
        helper.make_node("GlobalAveragePool", ["n2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "lrn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
                              [init("w", 4, 3, 3, 3), init("b", 4), init("fw", 5, 4), init("fb", 5)])
    ops = [O.conv((1, 3, 8, 8), 4, 3, 1, 1, 1, 1, True), O.activation((1, 4, 8, 8), "relu"),
           O.pool((1, 4, 8, 8), "avg", global_pool=True), O.linear(1, 4, 5, bias=True)]
    return save(graph, path), ops


def dynamic_model(path: Path) -> Path:
    """Conv -> Relu -> GlobalMaxPool -> Flatten -> Gemm with input dims N x 3 x H x W."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalMaxPool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fw"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                              [init("w", 6, 3, 3, 3), init("fw", 5, 6)])
    return save(graph, path)


def dynamic_ops(n: int, h: int, w: int) -> list[O.OpSpec]:
    ho, wo = (h + 1) // 2, (w + 1) // 2  # 3x3, stride 2, pad 1
    return [O.conv((n, 3, h, w), 6, 3, 2, 1, 1, 1, False), O.activation((n, 6, ho, wo), "relu"),
            O.pool((n, 6, ho, wo), "max", global_pool=True), O.linear(n, 6, 5, bias=False)]


# ---------------------------------------------------------------------- unmapped compute: exit 3
def test_lrn_is_listed_and_the_mapped_price_is_partial(tmp_path: Path, cli) -> None:
    model, ops = lrn_model(tmp_path / "lrn.onnx")
    table = tmp_path / "t.db"
    medians = write_table(table, ops)
    hand = hand_price(medians, ops)
    code, out, err = cli("predict", "-t", str(table), "--model", str(model))
    assert code == 3
    assert out.splitlines() == [
        (f"{hand:.4f} ms PARTIAL: the 4 mapped ops only, 2 compute node(s) not priced (uncalibrated; 0 of 4 keys "
         f"priced by the fallback; {mflops(ops)} MFLOPs mapped) {model}"),
        "not priced: LRN x2: norm1, norm2",
    ]
    assert err.splitlines() == [(f"latbench: partial result: {model}: 2 compute node(s) not priced (LRN x2); "
                                 f"the {hand:.4f} ms covers the 4 mapped ops only")]
    code, out, err = cli("predict", "-t", str(table), "--model", str(model), "--json")
    assert code == 3 and len(err.splitlines()) == 1
    doc = json.loads(out)
    (row,) = doc["predictions"]
    assert doc["partial"] is True and row["partial"] is True
    assert row["ms"] == pytest.approx(hand, rel=1e-12, abs=1e-15) and row["misses"] == 0 and row["keys"] == 4
    assert row["unmapped"] == [{"op_type": "LRN", "count": 2,
                                "nodes": [{"name": "norm1", "reason": "latbench has no op for LRN"},
                                          {"name": "norm2", "reason": "latbench has no op for LRN"}]}]
    assert row["ops"] == 4 and row["shape_only"] == 1  # the Flatten


def test_fully_mapped_model_exits_0_at_the_hand_sum(tmp_path: Path, cli) -> None:
    path = tmp_path / "dyn.onnx"
    dynamic_model(path)
    ops = dynamic_ops(2, 16, 12)
    table = tmp_path / "t.db"
    medians = write_table(table, ops)
    hand = hand_price(medians, ops)
    code, out, err = cli("predict", "-t", str(table), "--model", str(path), "--input-shape", "2,3,16,12")
    assert (code, err) == (0, "")
    assert out.splitlines() == [(f"{hand:.4f} ms (uncalibrated; 0 of 4 keys priced by the fallback; "
                                 f"{mflops(ops)} MFLOPs) {path}")]
    code, out, err = cli("predict", "-t", str(table), "--model", str(path), "--input-shape", "2,3,16,12", "--json")
    (row,) = json.loads(out)["predictions"]
    assert code == 0 and row["partial"] is False and row["input_shape"] == [2, 3, 16, 12]
    assert row["ms"] == pytest.approx(hand, rel=1e-12, abs=1e-15)


# ---------------------------------------------------------------------- symbolic dims
def test_symbolic_dims_need_input_shape(tmp_path: Path, cli) -> None:
    path = dynamic_model(tmp_path / "dyn.onnx")
    table = tmp_path / "t.db"
    write_table(table, dynamic_ops(1, 8, 8))
    code, out, err = cli("predict", "-t", str(table), "--model", str(path))
    assert (code, out) == (2, "")
    assert err.splitlines() == [(f"latbench: error: {path}: input 'x' has symbolic dims N, H, W (shape Nx3xHxW); "
                                 f"give its shape with --input-shape N,C,H,W")]
    bad = {"1,4,8,8": f"{path}: input 'x' is Nx3xHxW, fixed at 3 in dim 1; the input shape 1,4,8,8 has 4 there",
           "1,3,8": f"{path}: input 'x' has 4 dims (Nx3xHxW); the input shape 1,3,8 has 3",
           "1,3,0,8": "--input-shape takes positive sizes separated by commas, e.g. 1,3,224,224; got '1,3,0,8'",
           "a,b": "--input-shape takes positive sizes separated by commas, e.g. 1,3,224,224; got 'a,b'"}
    for shape, msg in bad.items():
        code, out, err = cli("predict", "-t", str(table), "--model", str(path), "--input-shape", shape)
        assert (code, err.splitlines()) == (2, [f"latbench: error: {msg}"]), shape
    code, out, err = cli("predict", "-t", str(table), "-s", "tiny", "--random", "1", "--input-shape", "1,3,8,8")
    assert (code, err.splitlines()) == (2, ["latbench: error: --input-shape goes with --model"])


def test_input_shape_is_applied_not_a_1x1_input(tmp_path: Path) -> None:
    path = dynamic_model(tmp_path / "dyn.onnx")
    for shape in ((1, 3, 32, 32), (3, 3, 9, 21)):
        low = lower_onnx(path, shape)
        assert [o.key for o in low.ops] == [o.key for o in dynamic_ops(*shape[:1], *shape[2:])]
        assert low.unmapped == [] and low.free == ["Flatten(flatten)"]
    with pytest.raises(UsageError, match=r"input 'x' has symbolic dims N, H, W"):
        lower_onnx(path)


# ---------------------------------------------------------------------- what is compute
def test_shape_arithmetic_is_free_and_data_movement_is_compute(tmp_path: Path) -> None:
    """Gather/Concat of shape values fold away; Gather/Concat of activations move data."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Shape", ["r"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "i0"], ["s0"], name="gather_shape", axis=0),
        helper.make_node("Unsqueeze", ["s0", "ax"], ["s0u"], name="unsq"),
        helper.make_node("Concat", ["s0u", "minus1"], ["newshape"], name="concat_shape", axis=0),
        helper.make_node("Gather", ["r", "idx"], ["g"], name="gather_channels", axis=1),
        helper.make_node("Concat", ["r", "g"], ["cat"], name="concat_data", axis=1),
        helper.make_node("Reshape", ["cat", "newshape"], ["y"], name="reshape"),
    ]
    consts = [numpy_helper.from_array(np.array(0, dtype=np.int64), "i0"),
              numpy_helper.from_array(np.array([0], dtype=np.int64), "ax"),
              numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus1"),
              numpy_helper.from_array(np.array([0, 2], dtype=np.int64), "idx")]
    graph = helper.make_graph(nodes, "shapes", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 216])], consts)
    low = lower_onnx(save(graph, tmp_path / "s.onnx").read_bytes())
    assert [o.key for o in low.ops] == [O.activation((1, 4, 6, 6), "relu").key]
    assert low.unmapped == [Unmapped("Gather", "gather_channels"), Unmapped("Concat", "concat_data")]
    assert low.free == ["Shape(shape)", "Gather(gather_shape)", "Unsqueeze(unsq)", "Concat(concat_shape)",
                        "Reshape(reshape)"]


def test_torch_export_lists_resize_not_its_shape_nodes(tmp_path: Path, cli) -> None:
    """A torch model exported by the TorchScript exporter with a dynamic batch: the Resize is
    listed, the Shape->Gather->Unsqueeze->Concat->Reshape chain of view(x.size(0), -1) is not."""
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(8)
            self.up = torch.nn.Upsample(scale_factor=2)
            self.fc = torch.nn.Linear(8, 10)

        def forward(self, x):
            y = self.up(torch.nn.functional.relu6(self.bn(self.conv(x))))
            y = torch.nn.functional.adaptive_avg_pool2d(y, 1)
            return self.fc(y.view(y.size(0), -1))

    buf = io.BytesIO()
    torch.onnx.export(Net().eval(), (torch.randn(1, 3, 16, 16),), buf, dynamo=False, opset_version=17,
                      input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    path = tmp_path / "net.onnx"
    path.write_bytes(buf.getvalue())
    resize = [n.name for n in onnx.load(path).graph.node if n.op_type == "Resize"]
    assert len(resize) == 1
    # the BN folds into the conv (its bias); relu6 is Clip(0, 6)
    ops = [O.conv((2, 3, 16, 16), 8, 3, 1, 1, 1, 1, True), O.activation((2, 8, 16, 16), "relu6"),
           O.pool((2, 8, 32, 32), "avg", global_pool=True), O.linear(2, 8, 10, bias=True)]
    table = tmp_path / "t.db"
    medians = write_table(table, ops)
    hand = hand_price(medians, ops)
    code, out, err = cli("predict", "-t", str(table), "--model", str(path), "--input-shape", "2,3,16,16")
    assert code == 3
    assert out.splitlines() == [
        (f"{hand:.4f} ms PARTIAL: the 4 mapped ops only, 1 compute node(s) not priced (uncalibrated; 0 of 4 keys "
         f"priced by the fallback; {mflops(ops)} MFLOPs mapped) {path}"),
        f"not priced: Resize x1: {resize[0]}",
    ]
    assert err.splitlines() == [(f"latbench: partial result: {path}: 1 compute node(s) not priced (Resize x1); "
                                 f"the {hand:.4f} ms covers the 4 mapped ops only")]
    code, out, err = cli("predict", "-t", str(table), "--model", str(path))
    assert code == 2 and "input 'x' has symbolic dims batch (shape batchx3x16x16)" in err


# ---------------------------------------------------------------------- files
def test_lower_onnx_takes_a_path_str_bytes_and_a_proto(tmp_path: Path) -> None:
    model, ops = lrn_model(tmp_path / "lrn.onnx")
    keys = [o.key for o in ops]
    for src in (model, str(model), model.read_bytes(), onnx.load(model)):
        low = lower_onnx(src)
        assert [o.key for o in low.ops] == keys
        assert [u.op_type for u in low.unmapped] == ["LRN", "LRN"]
    with pytest.raises(UsageError, match="takes a path, bytes or an onnx.ModelProto, not int"):
        lower_onnx(3)


def test_not_an_onnx_file_is_one_line_naming_it(tmp_path: Path, cli) -> None:
    table = tmp_path / "t.db"
    write_table(table, [O.activation((1, 4, 8, 8), "relu")])
    text = tmp_path / "notes.onnx"
    text.write_text("this is not an onnx model\n")
    r = run_cli(cli, "predict", "-t", str(table), "--model", str(text))
    assert r.returncode == 1 and r.stdout == ""
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"latbench: error: {text}: not an ONNX model (") and "internal error" not in line
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    r = run_cli(cli, "predict", "-t", str(table), "--model", str(empty))
    assert (r.returncode, r.stderr.splitlines()) == (
        1, [f"latbench: error: {empty}: not an ONNX model (it has no IR version or no graph nodes)"])
    r = run_cli(cli, "predict", "-t", str(table), "--model", str(tmp_path / "missing.onnx"))
    assert (r.returncode, r.stderr.splitlines()) == (
        2, [f"latbench: error: {tmp_path / 'missing.onnx'}: no such ONNX file"])
    with pytest.raises(FormatError, match="notes.onnx: not an ONNX model"):
        lower_onnx(text)


def test_fallback_share_of_a_model(tmp_path: Path, cli) -> None:
    """One of four keys missing is over the 10% share: an error, unless --allow-fallback."""
    path = dynamic_model(tmp_path / "dyn.onnx")
    ops = dynamic_ops(1, 8, 8)
    table = tmp_path / "t.db"
    write_table(table, ops[:3] + [O.linear(1, 6, 7, bias=False), O.linear(1, 12, 5, bias=False)])
    code, out, err = cli("predict", "-t", str(table), "--model", str(path), "--input-shape", "1,3,8,8")
    assert code == 1 and err.splitlines() == [
        (f"latbench: error: {table} prices {path} with 1 of 4 keys missing, over the 10% allowed; "
         f"--allow-fallback prices them with the fallback regression")]
    code, out, err = cli("predict", "-t", str(table), "--model", str(path), "--input-shape", "1,3,8,8",
                         "--allow-fallback")
    assert code == 0 and "1 of 4 keys priced by the fallback" in out

"""A whole model's op list as a runtime runs it (`latbench ops --model`, latbench.modelops) and
`latbench profile --model`: one path for torch modules and ONNX files (the export recipe), each
runtime's fusions applied, unmapped nodes listed by type and count (exit 3), and a table profiled
from a model prices that model with no key missing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="exporting a module needs torch: pip install 'latbench[torch]'")
pytest.importorskip("onnx", reason="lowering ONNX needs onnx: pip install 'latbench[ort]'")

from latbench import ops as O  # noqa: E402
from latbench.formats.oplist import parse_key, read_any_ops  # noqa: E402
from latbench.modelops import export_module, model_ops  # noqa: E402
from latbench.store import LatencyTable  # noqa: E402

SHAPE = (1, 3, 16, 16)
NET = '''
import torch
from torch import nn


class Net(nn.Module):
    """conv-bn-relu, a depthwise conv-bn-relu6, global average pool, linear{extra}."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU6(){norm})
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x):
        return self.head(self.body(x))


def net():
    return Net().eval()
'''


def write_net(d: Path, name: str = "zoo_net", norm: bool = False):
    """The module file `name`.py in `d` (with a LayerNorm after the body when `norm`); its net()."""
    src = NET.format(extra=", a LayerNorm" if norm else "", norm=", nn.LayerNorm([8, 8, 8])" if norm else "")
    (d / f"{name}.py").write_text(src)
    ns: dict = {}
    exec(compile(src, f"{name}.py", "exec"), ns)
    return ns["net"]()


# the net's ops by hand: what each runtime runs (BN folded by the export; activations fused or not)
def expected(fusion: str) -> list[str]:
    fused = fusion in ("ort", "tflite")
    ops = [O.conv(SHAPE, 8, 3, bias=True, act="relu" if fused else "none")]
    ops += [] if fused else [O.activation((1, 8, 16, 16), "relu")]
    ops += [O.conv((1, 8, 16, 16), 8, 3, stride=2, groups=8, bias=True, act="relu6" if fused else "none")]
    ops += [] if fused else [O.activation((1, 8, 8, 8), "relu6")]
    return [op.key for op in ops]


@pytest.mark.parametrize("device,fusion", [("tflite", "tflite"), ("cpu", "none")])
def test_ops_lists_the_model_as_the_devices_runtime_runs_it(tmp_path, cli, device, fusion) -> None:
    path = tmp_path / "net.onnx"
    path.write_bytes(export_module(write_net(tmp_path), SHAPE))
    code, out, err = cli("ops", "--model", str(path), "--device", device, "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["fusion"] == fusion and rep["unmapped"] == []
    keys = rep["ops"]
    assert keys[:len(expected(fusion))] == expected(fusion), keys
    assert [k.split("-", 1)[0] for k in keys[len(expected(fusion)):]] == ["pool", "linear"], keys
    assert "every compute node mapped" in err


def test_ops_on_ort_lists_the_nodes_of_its_optimised_graph(tmp_path, cli) -> None:
    """On ort the op list is ONNX Runtime's own optimised graph: the convs with their activations
    fused in (Relu, and ReLU6 as Clip(0, 6)), then the pooling, its layout reorder where the
    runtime puts one, the flatten and the classifier as one Gemm."""
    path = tmp_path / "net.onnx"
    path.write_bytes(export_module(write_net(tmp_path), SHAPE))
    code, out, err = cli("ops", "--model", str(path), "--device", "ort", "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["fusion"] == "ort graph (opt level all)" and rep["unmapped"] == []
    nodes = [parse_key(k).graph_node for k in rep["ops"]]
    relu, relu6 = nodes[:2]
    assert relu.op_type == relu6.op_type == "Conv" or relu.op_type == relu6.op_type == "FusedConv"
    assert relu.attr("activation") == "Relu" and relu.attr("group") == 1
    assert relu6.attr("activation") == "Clip" and relu6.attr("activation_params") == (0.0, 6.0)
    assert relu6.attr("group") == 8 and relu6.attr("strides") == (2, 2)
    assert [n.op_type for n in nodes[2:]] in (["GlobalAveragePool", "ReorderOutput", "Flatten", "Gemm"],
                                             ["GlobalAveragePool", "Flatten", "Gemm"])
    gemm = nodes[-1]
    assert [t.shape for t in gemm.inputs] == [(1, 8), (10, 8), (10,)] and gemm.flops == 2 * 8 * 10


def test_a_torch_module_goes_through_its_onnx_export(tmp_path, cli, monkeypatch) -> None:
    """module:callable, a module object and the module's ONNX export give the same ops."""
    module = write_net(tmp_path, "my_net")
    path = tmp_path / "net.onnx"
    path.write_bytes(export_module(module, SHAPE))
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("ops", "--model", "my_net:net", "--input-shape", "1,3,16,16", "--device", "ort", "--json")
    assert code == 0, err
    by_spec = json.loads(out)["ops"]
    assert by_spec == [op.key for op in model_ops(str(path), None, "ort").ops]
    assert by_spec == [op.key for op in model_ops(module, SHAPE, "ort").ops]
    code, out, err = cli("ops", "--model", "my_net:net", "--device", "ort")
    assert code == 2 and "--input-shape" in err
    code, out, err = cli("ops", "--model", "my_net:nothing", "--input-shape", "1,3,16,16", "--device", "ort")
    assert code == 2 and "no callable 'nothing'" in err


def test_unmapped_nodes_are_listed_by_type_and_count_and_exit_3(tmp_path, cli) -> None:
    path = tmp_path / "norm.onnx"
    path.write_bytes(export_module(write_net(tmp_path, norm=True), SHAPE))
    out_file = tmp_path / "ops.jsonl"
    code, out, err = cli("ops", "--model", str(path), "--device", "cpu", "-o", str(out_file))
    assert code == 3 and "unmapped: LayerNormalization x1 (not priced, not profiled)" in err, err
    mo = model_ops(str(path), None, "cpu")
    assert [op.key for op in read_any_ops(str(out_file))] == [op.key for op in mo.unique]  # the file round-trips


def test_profile_model_times_its_ops_as_predict_prices_them(tmp_path, cli) -> None:
    """`profile --model` stores exactly the model's ops as ORT runs them (op rows), so `predict
    --model` on that table prices every one of them from the table."""
    path = tmp_path / "net.onnx"
    path.write_bytes(export_module(write_net(tmp_path), SHAPE))
    table = tmp_path / "net-ort.sqlite"
    code, out, err = cli("profile", "--device", "ort", "--model", str(path), "--out", str(table), "--max-time", "0.02",
                         "--min-samples", "3", "--rounds", "2")
    assert code == 0, err
    with LatencyTable.open(table, readonly=True) as t:
        assert t.keys(status="ok") == {op.key for op in model_ops(str(path), None, "ort").ops}
        from device_agents.ort import OrtAgent

        assert t.run_settings.granularity == "op" and t.run_settings.fusion == OrtAgent().fusion
    code, out, err = cli("predict", "--table", str(table), "--model", str(path), "--json")
    assert code == 0, err
    (row,) = json.loads(out)["predictions"]
    assert row["misses"] == 0 and row["keys"] == len(model_ops(str(path), None, "ort").ops) and not row["partial"], row
    code, out, err = cli("profile", "--device", "ort", "--model", str(path), "--space", "tiny", "--out", str(table))
    assert code == 2 and "one of --space, --ops or --model" in err


def test_predict_prices_a_module_callable_as_its_export(tmp_path, cli, monkeypatch) -> None:
    """`predict --model module:callable` goes through the module's ONNX export (the one path): the
    same price, to the bit, as the export file itself."""
    path = tmp_path / "net.onnx"
    path.write_bytes(export_module(write_net(tmp_path, "priced_net"), SHAPE))
    table = tmp_path / "t.sqlite"
    code, out, err = cli("profile", "--device", "ort", "--model", str(path), "--out", str(table), "--max-time", "0.02",
                         "--min-samples", "3", "--rounds", "2")
    assert code == 0, err
    monkeypatch.chdir(tmp_path)
    prices = []
    for model in (str(path), "priced_net:net"):
        code, out, err = cli("predict", "--table", str(table), "--model", model, "--input-shape", "1,3,16,16", "--json")
        assert code == 0, err
        (row,) = json.loads(out)["predictions"]
        prices.append((row["ms"], row["keys"], row["misses"]))
    assert prices[0] == prices[1] and prices[0][2] == 0, prices


def test_an_op_list_is_profiled_at_op_granularity_unless_it_lists_blocks(tmp_path, cli) -> None:
    """`profile --ops` without --granularity: an op list's rows are ops, as the runtime runs them;
    a list holding blocks (Once-for-All keys, a space's block keys) keeps block rows."""
    from latbench.enumerate import enumerate_ops
    from latbench.spaces import get_space

    blocks = enumerate_ops(get_space("tiny"), resolutions=[24], granularity="block")
    blocks = [blocks[0], next(op for op in blocks if op.kind in O.BLOCK_KINDS)]  # a conv stem and an MBConv
    ops = [O.conv((1, 8, 8, 8), 8, 3), O.activation((1, 8, 8, 8), "relu")]
    for name, listed, gran in (("blocks.txt", blocks, "block"), ("ops.txt", ops, "op")):
        (tmp_path / name).write_text("".join(op.key + "\n" for op in listed))
        table = tmp_path / f"{name}.sqlite"
        code, out, err = cli("profile", "--device", "ort", "--ops", str(tmp_path / name), "--out", str(table),
                             "--max-time", "0.01", "--min-samples", "2", "--rounds", "1")
        assert code == 0, err
        with LatencyTable.open(table, readonly=True) as t:
            assert t.run_settings.granularity == gran and t.keys() == {op.key for op in listed}


@pytest.mark.parametrize("op_type,auto_pad,stride,pads", [
    ("Conv", "SAME_UPPER", 1, 1), ("Conv", "SAME_LOWER", 1, 1), ("Conv", "VALID", 1, 0), ("Conv", "VALID", 2, 0),
    ("MaxPool", "SAME_UPPER", 1, 1), ("Conv", "SAME_UPPER", 2, None), ("Conv", "SAME_LOWER", 2, None)])
def test_auto_pad_is_lowered_to_the_pads_it_means(op_type, auto_pad, stride, pads) -> None:
    """ONNX auto_pad (as TF-exported and HF EfficientNet convs carry it): VALID is no padding,
    SAME_* pads so the output is ceil(in / stride); the op's output shape is the one ONNX shape
    inference gives. An odd total (stride 2 on an even input) pads one side more: latbench's ops
    pad both sides alike, so that node stays unmapped, its reason naming the pads."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper, shape_inference

    from latbench.lower import lower_onnx

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    kw = dict(kernel_shape=[3, 3], strides=[stride, stride], auto_pad=auto_pad)
    if op_type == "Conv":
        w = numpy_helper.from_array(np.ones((6, 4, 3, 3), np.float32), "w")
        node, inits = helper.make_node("Conv", ["x", "w"], ["y"], **kw), [w]
    else:
        node, inits = helper.make_node("MaxPool", ["x"], ["y"], **kw), []
    model = helper.make_model(helper.make_graph([node], "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    low = lower_onnx(model.SerializeToString())
    if pads is None:
        (gap,) = low.unmapped
        assert gap.op_type == "Conv" and "pads [" in gap.reason and not low.ops, gap
        return
    (op,) = low.ops
    want = (O.conv((1, 4, 8, 8), 6, 3, stride, pads) if op_type == "Conv"
            else O.pool((1, 4, 8, 8), "max", 3, stride, pads))
    assert op.key == want.key
    inferred = shape_inference.infer_shapes(model).graph.output[0].type.tensor_type.shape.dim
    assert op.out_shape == tuple(d.dim_value for d in inferred)

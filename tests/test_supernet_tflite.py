"""A supernet's subnet exported to .tflite by latbench's own flatbuffer builder (no TensorFlow, no
litert-torch): the trained weights read back in the canonical format (device_agents.torch_weights),
the LiteRT output checked against the supernet, the model timed by the tflite agent end to end
and its config priced from a tflite table; a corrupted weight fails the check."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")
torch = pytest.importorskip("torch")

from device_agents.litert import LiteRTAgent  # noqa: E402
from device_agents.tflite_build import iter_ops  # noqa: E402
from device_agents.torch_weights import module_weights, network_weights  # noqa: E402
from device_agents.weights import op_weights  # noqa: E402
from latbench import ops as O  # noqa: E402
from latbench.errors import OpError  # noqa: E402
from latbench.measure import TimingSettings  # noqa: E402
from latbench.spaces import get_space  # noqa: E402
from latbench.supernet import export as E  # noqa: E402
from latbench.supernet.model import SuperNet  # noqa: E402
from test_supernet import randomize  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = TimingSettings(warmup=1, warmup_s=0.0, min_samples=3, max_samples=10, max_time_s=0.05)


def _configs(space, seed: int, res: int | None) -> list[np.ndarray]:
    cfgs = list(space.sample(np.random.default_rng(seed), 2)) + [space.largest()]
    if res is not None:
        for c in cfgs:
            c[space.resolution_position] = space.positions[space.resolution_position].choices.index(res)
    return cfgs


@pytest.fixture(scope="module")
def tiny_net():
    net = SuperNet(get_space("tiny")).eval()
    randomize(net, 1, fan_in_gain=1.2)
    return net


# ---------------------------------------------------------------------- the weight mapping
def test_module_weights_inverts_the_canonical_weights() -> None:
    """module_weights(op, module loaded with op_weights) gives op_weights back, part for part
    (conv, BN with a non-default eps absorbed into var, SE, shuffle, resblock, linear, eltwise)."""
    from device_agents.torch_local import reference_module

    s = (1, 16, 12, 12)
    ops = [O.conv(s, 24, 3, 2, bn=True, act="relu"), O.mbconv(s, 16, 64, 5, 1, "hswish", se=16, residual=True),
           O.mbconv(s, 32, 64, 3, 2, "relu", groups=2), O.linear(1, 16, 10, bias=True, act="relu"),
           O.eltwise(s, "mul", broadcast=True)]
    ops += get_space("bignas-resnet").blocks(get_space("bignas-resnet").smallest())[:3]
    for op in ops:
        want = op_weights(op, 5)
        got = module_weights(op, reference_module(op, want))
        assert [sorted(g) for g in got] == [sorted(w) for w in want], op.key
        for g, w in zip(got, want):
            for k in w:
                np.testing.assert_allclose(g[k], w[k], rtol=1e-6, atol=1e-7, err_msg=f"{op.key} {k}")
    # a BN eps other than the builder's: var absorbs the difference, the folded BN is the module's
    op = O.conv(s, 8, 3, bn=True)
    m = reference_module(op, op_weights(op))
    m.bn.eps = 1e-3
    w = module_weights(op, m)
    np.testing.assert_allclose(w[1]["var"], m.bn.running_var.numpy() + 1e-3 - 1e-5, rtol=1e-6)


def test_module_that_is_not_the_block_is_a_clear_error() -> None:
    from latbench.spaces.torch_build import module_for

    s = (1, 16, 12, 12)
    a, b = O.conv(s, 24, 3, bn=True, act="relu"), O.conv(s, 24, 3, bn=True, act="hswish")
    with pytest.raises(OpError, match="activation is ReLU, the block's is 'hswish'"):
        module_weights(b, module_for(a))
    with pytest.raises(OpError, match="conv weight"):
        module_weights(O.conv(s, 32, 3, bn=True, act="relu"), module_for(a))
    with pytest.raises(OpError, match="runs \\[conv, batch_norm, activation\\]"):
        module_weights(O.mbconv(s, 16, 32, 3, 1, "relu"), module_for(a))
    from latbench.nodes import NodeSpec, TensorSpec

    odd = O.node(NodeSpec("Gelu", "com.microsoft", 1, (TensorSpec((1, 197, 768)),), (TensorSpec((1, 197, 768)),)))
    with pytest.raises(OpError, match="block kind 'node' has no TFLite lowering"):
        module_weights(odd, module_for(a))
    with pytest.raises(OpError, match="2 blocks but 1 modules"):
        network_weights([a, a], [module_for(a)])


# ---------------------------------------------------------------------- export and the LiteRT check
@pytest.mark.parametrize("name,res", [("tiny", None), ("ofa-mbv3-w10", 128)])
def test_tflite_export_matches_supernet(name, res, tiny_net, tmp_path) -> None:
    if name == "tiny":
        net = tiny_net
    else:
        torch.manual_seed(0)
        net = SuperNet(get_space(name)).eval()
        randomize(net, 2, fan_in_gain=1.2)
    space = net.space
    for i, cfg in enumerate(_configs(space, 4, res)):
        path = tmp_path / f"{name}-{i}.tflite"
        rep = E.export_subnet(net, cfg, path, "tflite")
        assert rep["converter"] == "latbench" and rep["max_abs_diff"] < E.TOLERANCE
        assert 0 <= rep["tflite_max_abs_diff"] <= rep["tflite_tolerance"], rep
        assert 0 <= rep["float32_rel_error"] < 1e-5  # a well-conditioned net: the bound is 1e-4 relative
        # the file is what the report checked: run it again here, against the supernet's output
        x = torch.randn(*net.input_shape(1), generator=torch.Generator().manual_seed(0))
        net.set_active(cfg)
        with torch.no_grad():
            ref = net(x).numpy()
        out = E.run_tflite(path.read_bytes(), x.numpy())
        scale = float(np.abs(ref).max())
        assert out.shape == ref.shape and scale > 0.1  # non-trivial logits
        diff = float(np.abs(out - ref).max())
        assert diff <= E.TFLITE_RTOL * scale + E.TFLITE_ATOL, (name, i, diff, scale)
        assert rep["tflite_tolerance"] == pytest.approx(E.TFLITE_RTOL * scale + E.TFLITE_ATOL)
        assert rep["tflite_max_abs_diff"] / scale < 1e-5  # measured: ~1e-7..1e-6 relative
        # the same graph as the validation path's model of that config (only the weights differ)
        canon = LiteRTAgent(threads=1).network_model(space, cfg)
        assert list(iter_ops(path.read_bytes())) == list(iter_ops(canon.model))


def test_corrupted_weight_fails_the_check(tiny_net, tmp_path, monkeypatch) -> None:
    """Two output channels of a conv swapped in the module the .tflite is built from (after the
    torch module check passed): the LiteRT check raises ExportMismatchError and writes nothing."""
    cfg = get_space("tiny").largest()
    real = E.subnet_tflite

    def swapped(space, config, module):
        conv = module[1].depthwise.conv if hasattr(module[1], "depthwise") else module[1].conv
        with torch.no_grad():
            conv.weight[[0, 1]] = conv.weight[[1, 0]].clone()
        return real(space, config, module)

    monkeypatch.setattr(E, "subnet_tflite", swapped)
    with pytest.raises(E.ExportMismatchError, match="LiteRT output differs from the supernet's by [0-9.e+-]+ "
                                                    "\\(tolerance [0-9.e+-]+\\); nothing was written"):
        E.export_subnet(tiny_net, cfg, tmp_path / "bad.tflite", "tflite")
    assert not (tmp_path / "bad.tflite").exists()
    monkeypatch.setattr(E, "subnet_tflite", real)
    rep = E.export_subnet(tiny_net, cfg, tmp_path / "good.tflite", "tflite")
    assert rep["tflite_max_abs_diff"] <= rep["tflite_tolerance"]


# ---------------------------------------------------------------------- timed and priced
def test_exported_tflite_is_timed_end_to_end_and_priced(tiny_net, tmp_path) -> None:
    """The tflite agent times the exported file as validation times a subnet (plain_model: the
    yardstick's plain call; prepare_model: latbench's estimator), and a tflite table of the
    config's blocks prices it."""
    import latbench
    from device_agents.base import NetworkModel
    from latbench.predict import Predictor

    space = tiny_net.space
    cfg = space.sample(np.random.default_rng(9), 1)[0]
    cfg[space.resolution_position] = space.positions[space.resolution_position].choices.index(24)
    path = tmp_path / "sub.tflite"
    E.export_subnet(tiny_net, cfg, path, "tflite")
    agent = LiteRTAgent(threads=1)
    model = NetworkModel("tflite", path.read_bytes(), tuple(space.input_shape(cfg)))
    plain = agent.plain_model(model)
    plain()  # one invoke on the agent's seeded inputs
    stats = agent.measure_model(model, timing=FAST)
    assert stats.n >= FAST.min_samples and stats.median > 0
    assert agent.measure_model(path, timing=FAST).median > 0  # from the path too
    table = tmp_path / "tiny-tflite.sqlite"
    latbench.profile(space.blocks(cfg), device=agent, out=str(table), granularity="block", timing=FAST)
    pred = Predictor.from_table(str(table), space, strict=True)
    priced = pred.predict(cfg)
    assert priced > 0 and np.isfinite(priced)


# ---------------------------------------------------------------------- CLI
def test_cli_export_tflite_without_litert_torch(tiny_net, tmp_path, cli, monkeypatch) -> None:
    from latbench.supernet.checkpoint import save_checkpoint, space_meta

    monkeypatch.setattr(E, "_tflite_converter", lambda: None)  # litert-torch absent, whatever is installed
    assert E.tflite_available() and not E.litert_torch_available()
    ck = tmp_path / "tiny.pt"
    save_checkpoint(ck, {"model": tiny_net.state_dict()}, {**space_meta(tiny_net.space), "transform": "depthwise"})
    cfg = tiny_net.space.smallest()
    cfg_file = tmp_path / "best.json"
    cfg_file.write_text(json.dumps({"config": tiny_net.space.to_published(cfg)}))
    out_path = tmp_path / "sub.tflite"
    code, out, err = cli("supernet", "export", "--checkpoint", str(ck), "--config", str(cfg_file), "--format",
                         "tflite", "--no-calib", "-o", str(out_path), "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["converter"] == "latbench" and rep["tflite_max_abs_diff"] <= rep["tflite_tolerance"]
    assert out_path.read_bytes()[4:8] == b"TFL3"
    code, out, err = cli("supernet", "export", "--checkpoint", str(ck), "--config", str(cfg_file), "--format",
                         "tflite", "--no-calib", "-o", str(out_path), "--converter", "litert-torch")
    assert code == 1 and "litert-torch" in err and len(err.strip().splitlines()) == 1

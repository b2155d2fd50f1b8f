"""ONNX Runtime agent: every op and block graph computes what torch_build's module computes, with
the canonical weights; graphs are valid ONNX; timing, profiles and failures behave."""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

import onnx  # noqa: E402

from device_agents.onnx_build import build_onnx, build_onnx_chain  # noqa: E402
from device_agents.ort import OrtAgent, timing_weights  # noqa: E402
from device_agents.weights import op_weights  # noqa: E402
from latbench import ops as O  # noqa: E402
from latbench.errors import OpError  # noqa: E402
from latbench.measure import TimingSettings  # noqa: E402
from latbench.ops import OpSpec  # noqa: E402

FAST = TimingSettings(warmup=1, warmup_s=0.0, min_samples=5, max_samples=20, max_time_s=0.1)
RTOL = 1e-4

S = (1, 8, 10, 10)
S_ODD = (2, 6, 9, 9)

OPS: list[OpSpec] = [
    # conv: plain, bias, strided, depthwise, grouped, dilated, no padding, bn, bn+act, bias+bn
    O.conv(S, 12, 3), O.conv(S, 12, 1, bias=True), O.conv(S_ODD, 10, 5, stride=2, bias=True),
    O.conv(S, 8, 3, groups=8), O.conv(S, 8, 5, stride=2, groups=8, bias=True),
    O.conv(S, 16, 3, groups=4, bias=True), O.conv(S, 12, 3, dilation=2), O.conv(S, 12, 3, padding=0),
    O.conv(S, 12, 3, bn=True), O.conv(S, 12, 3, 2, bn=True, act="hswish"),
    O.conv(S, 8, 3, groups=8, bn=True, act="relu6"), O.conv(S, 12, 1, bias=True, bn=True, act="gelu"),
    O.conv((1, 3, 32, 32), 16, 3, 2, bn=True, act="hswish", role="Conv"),
    *[O.activation(S_ODD, a) for a in O.ACTIVATIONS],
    O.batch_norm(S), O.batch_norm(S_ODD, act="relu"),
    # pools: max/avg, padded, count_pad, ceil_mode (incl. torch's dropped last window), global
    O.pool(S, "max", 3, 2, 1), O.pool(S, "max", 2, 2), O.pool(S_ODD, "max", 3, 2, 0, ceil_mode=True),
    O.pool((1, 4, 5, 5), "max", 2, 2, 1, ceil_mode=True),  # torch drops a window ONNX keeps
    O.pool((1, 4, 5, 6), "max", 3, 3, 1, ceil_mode=True),  # one axis drops, the other gains
    O.pool(S, "avg", 3, 2, 1), O.pool(S, "avg", 3, 1, 1, count_pad=True),
    O.pool(S_ODD, "avg", 3, 2, 1, ceil_mode=True, count_pad=True),
    O.pool(S_ODD, "avg", 3, 2, 1, ceil_mode=True),
    O.pool((1, 4, 5, 5), "avg", 2, 2, 1, ceil_mode=True, count_pad=True),
    O.pool((1, 4, 5, 6), "avg", 3, 3, 1, ceil_mode=True, count_pad=True),
    O.pool((1, 4, 5, 6), "avg", 3, 3, 1, ceil_mode=True),
    O.pool(S, "avg", global_pool=True), O.pool(S_ODD, "max", global_pool=True),
    O.pool((1, 8, 7, 7), "avg", global_pool=True, role="AvgPool2D"),
    *[O.eltwise(S, e, b) for e in O.ELTWISE for b in (False, True)],
    O.softmax(S, 1), O.softmax(S, 3), O.softmax(S_ODD, -1),
    O.linear(2, 32, 10), O.linear(1, 16, 8, bias=False), O.linear(3, 16, 8, act="relu6"),
    O.linear(1, 64, 100, role="Logits"),
]

BLOCKS: list[OpSpec] = [
    O.mbconv(S, 16, 24, 3, 2, "relu"),  # expansion conv, strided
    O.mbconv(S, 8, 8, 3, 1, "relu", residual=True, expand_conv=False),  # no expansion conv
    O.mbconv(S, 8, 32, 5, 1, "hswish", se=8, residual=True),  # SE after the depthwise conv
    O.mbconv(S, 12, 24, 7, 2, "hswish", se=8),  # SE, no residual
    O.mbconv(S, 12, 24, 3, 1, "relu", se=8, se_pos="out"),  # SE on the output (LightNAS)
    O.mbconv(S, 8, 24, 3, 1, "swish", se=8, se_act="sigmoid", se_pos="out", residual=True),
    O.resblock("bottleneck", S, 16, 3, 2, mid=4),  # projection shortcut
    O.resblock("bottleneck", S, 8, 3, 1, mid=4),  # identity shortcut
    O.resblock("basic", S, 12, 3, 2),  # projection
    O.resblock("basic", S, 8, 3, 1),  # identity
    O.resblock("basic", S, 8, 5, 1, act="relu6"),
]


def _reference(op: OpSpec, weights) -> "torch.nn.Module":
    """torch_build's module for `op` with the canonical weights (the conformance suite's helper)."""
    from device_agents.torch_local import reference_module

    return reference_module(op, weights)


def _rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / max(float(np.abs(ref).max()), 1e-6))


@pytest.fixture(scope="module")
def agent():
    a = OrtAgent()
    yield a
    a.close()


@pytest.mark.parametrize("op", OPS + BLOCKS, ids=[o.key for o in OPS + BLOCKS])
def test_graph_matches_torch(agent: OrtAgent, op: OpSpec) -> None:
    weights = agent.weights(op)
    onnx.checker.check_model(build_onnx(op, weights), full_check=True)
    x = np.random.default_rng(7).standard_normal(op.in_shape, dtype=np.float32)
    with torch.inference_mode():
        ref = _reference(op, weights)(torch.from_numpy(x)).numpy()
    out = agent.run(op, x)
    assert out.shape == op.out_shape and out.dtype == np.float32
    assert _rel_err(out.reshape(ref.shape), ref) <= RTOL, op.key


def _node_types(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


def test_blocks_are_fused_subgraphs() -> None:
    """BN is folded into the conv before it: a conv+bn+act is one Conv and its activation."""
    assert _node_types(build_onnx(O.conv(S, 12, 3, bn=True, act="relu"))) == ["Conv", "Relu"]
    assert _node_types(build_onnx(O.conv(S, 12, 3, bn=True))) == ["Conv"]
    mb = _node_types(build_onnx(BLOCKS[2]))
    assert "BatchNormalization" not in mb and mb.count("Conv") == 5 and mb[-1] == "Add"
    assert "GlobalAveragePool" in mb and "HardSigmoid" in mb
    assert _node_types(build_onnx(O.activation(S, "hsigmoid"))) == ["HardSigmoid"]
    assert _node_types(build_onnx(O.pool(S_ODD, "max", 3, 2, 0, ceil_mode=True))) == ["MaxPool"]


def test_timing_weights_have_the_canonical_layout() -> None:
    pool = np.random.default_rng(0).standard_normal(1000, dtype=np.float32)  # small: forces tiling
    for op in OPS + BLOCKS:
        fast, canon = timing_weights(op, pool), op_weights(op)
        assert [{k: v.shape for k, v in w.items()} for w in fast] == \
               [{k: v.shape for k, v in w.items()} for w in canon], op.key
        assert all(v.dtype == np.float32 for w in fast for v in w.values())
        assert all((w["var"] > 0).all() for w in fast if "var" in w)


def _load_net(net: "torch.nn.Module", blocks: list[OpSpec], weights: list) -> None:
    """Canonical weights into a whole subnet, placed by one trace (lower_torch's module paths)."""
    from latbench.lower import lower_torch

    low = lower_torch(net, blocks[0].in_shape)
    parts = [(p, w) for b, ws in zip(blocks, weights) for p, w in zip(O.expand(b), ws)]
    assert [o.kind for o in low.ops] == [p.kind for p, _ in parts] and not low.unmapped
    params = {"weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
              "mean": "running_mean", "var": "running_var"}
    with torch.no_grad():
        for src, (p, w) in zip(low.sources, parts):
            m = net.get_submodule(src) if w else None
            for key, value in w.items():
                t = getattr(m, params[key])
                assert tuple(t.shape) == value.shape, (src, key)
                t.copy_(torch.from_numpy(value))


def test_chain_of_a_real_subnet_matches_space_build() -> None:
    from latbench.spaces import get_space

    space = get_space("ofa-mbv3-w10")
    config = space.to_published(space.sample(np.random.default_rng(3), 1)[0])
    config["r"] = [128]
    blocks = space.blocks(config)
    weights = [op_weights(b, seed=i) for i, b in enumerate(blocks)]
    model = build_onnx_chain(blocks, weights)
    onnx.checker.check_model(model, full_check=True)
    net = space.build(config)
    _load_net(net, blocks, weights)
    x = np.random.default_rng(5).standard_normal(blocks[0].in_shape, dtype=np.float32)
    with torch.inference_mode():
        ref = net(torch.from_numpy(x)).numpy()
    agent = OrtAgent()
    out = agent.session(model).run(None, {"x": x})[0]
    assert out.shape == ref.shape == (1, 1000)
    assert _rel_err(out, ref) <= RTOL
    stats = agent.measure_model(model, blocks[0].in_shape, FAST)
    assert stats.n >= FAST.min_samples and 0 < stats.min <= stats.median <= stats.max


def test_measure_one_result_per_op() -> None:
    agent = OrtAgent(opt_level="extended")
    ops = [O.conv(S, 12, 3, bn=True, act="relu"), BLOCKS[2], O.activation(S, "gelu"), O.linear(1, 16, 8)]
    results = list(agent.measure(ops, FAST))
    assert [m.key for m in results] == [op.key for op in ops]
    for m in results:
        assert m.ok, m.error
        s = m.stats
        assert FAST.min_samples <= s.n <= FAST.max_samples
        assert 0 < s.min <= s.p25 <= s.median <= s.p75 <= s.max
        assert m.profile_id == agent.profile.id and m.settings["opt_level"] == "extended"
        assert m.wall_s >= m.timed_s > 0
    agent.close()


def test_opt_levels_are_distinct_profiles() -> None:
    ids = {lvl: OrtAgent(opt_level=lvl).profile for lvl in ("all", "extended", "basic", "disable")}
    assert len({p.id for p in ids.values()}) == 4
    p = ids["all"]
    assert p.agent == "ort" and p.runtime == "onnxruntime" and p.delegate == "CPUExecutionProvider"
    assert dict(p.options) == {"opt_level": "all", "boundary": "network"}
    own = OrtAgent(boundary="graph").profile  # as tables from before boundaries were recorded
    assert dict(own.options) == {"opt_level": "all"} and own.id != p.id
    assert dict(ids["extended"].options) == {"opt_level": "extended"}  # no NCHWc: own graphs run
    assert OrtAgent(threads=2).profile.id != p.id
    assert OrtAgent(opt_level="basic").fusion == "ort-basic" and OrtAgent(opt_level="disable").fusion == "none"


@pytest.mark.parametrize("level", ["all", "extended"])
def test_the_conv_fusion_list_is_the_installed_runtimes(level) -> None:
    """The activations the agent's fusion fuses into a conv are exactly those ONNX Runtime's own
    optimised graph (lowered node by node) holds no node for after a conv."""
    from latbench.modelops import model_ops

    from device_agents.onnx_build import build_onnx_chain
    from device_agents.weights import op_weights

    agent = OrtAgent(opt_level=level)
    fusion = O.get_fusion(agent.fusion)
    assert fusion.bn and {"relu", "relu6"} <= fusion.acts
    for act in O.ACTIVATIONS:
        conv = O.conv((1, 8, 8, 8), 8, 3, bias=True)
        chain = [conv, O.activation(conv.out_shape, act), O.conv(conv.out_shape, 8, 1)]
        model = build_onnx_chain(chain, [op_weights(op) for op in chain]).SerializeToString()
        nodes = {op.graph_node.op_type for op in model_ops(model, None, "ort", opt_level=level).ops}
        runtime_fused = nodes <= {"Conv", "FusedConv", "ReorderInput", "ReorderOutput"}
        assert (act in fusion.acts) == runtime_fused, (act, nodes)
        assert len(O.fuse(chain, fusion)) == (2 if runtime_fused else 3)


def test_fusion_names() -> None:
    assert O.get_fusion("ort") is O.FUSIONS["ort"]
    f = O.get_fusion("ort:hswish,relu")
    assert f.bn and f.acts == {"hswish", "relu"} and f.name == "ort:hswish,relu"
    assert O.fusion_name("ort", O.FUSIONS["ort"].acts) == "ort"
    assert O.fusion_name("ort", {"relu", "hswish"}) == "ort:hswish,relu"
    for bad in ("onnx", "ort:warp", "nope:relu"):
        with pytest.raises(OpError, match="unknown fusion"):
            O.get_fusion(bad)


def test_bad_settings_and_bad_op() -> None:
    from latbench.errors import DeviceUnavailableError, UsageError

    with pytest.raises(UsageError):
        OrtAgent(opt_level="max")
    with pytest.raises(DeviceUnavailableError):
        OrtAgent(provider="NoSuchExecutionProvider")
    agent = OrtAgent()
    bad, good = O.softmax(S, axis=7), O.pool(S, "max", 3, 2, 1)
    failed, ok = agent.measure([bad, good], FAST)
    assert failed.status == "failed" and failed.stats is None and "axis" in failed.error
    assert ok.ok and ok.stats.n >= FAST.min_samples


def test_sessions_do_not_pile_up() -> None:
    """Preparing the next op frees the previous op's session once its callable is dropped."""
    agent = OrtAgent()
    fn = agent.prepare_op(O.conv(S, 12, 3))
    fn()
    ref = weakref.ref(fn.run.session)
    del fn
    agent.prepare_op(O.conv(S, 16, 3))()
    gc.collect()
    assert ref() is None
    agent.close()
    assert agent._live is None


def test_prepared_session_reads_the_array_touch_reads() -> None:
    """Network-context timing re-reads the op's input through `touch`: that must be the very
    buffer the session reads, so writing into it changes the next run's output."""
    agent = OrtAgent()
    op = O.activation((1, 4, 5, 5), "relu")
    p = agent.prepare_op(op)
    _, _, x, outs = p.keep
    p()
    assert np.array_equal(outs[0].numpy(), np.maximum(x, 0))
    x[...] = -np.abs(x) - 1.0  # every input negative now: relu gives zeros
    p.touch()
    p()
    assert not outs[0].numpy().any()
    agent.close()

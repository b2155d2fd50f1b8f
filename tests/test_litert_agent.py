"""LiteRT agent and the .tflite builder: every op kind, activation and block runs in LiteRT (XNNPACK
on and off) and matches the torch reference with the same canonical weights; padding, layout and
fusion choices are pinned by the op sequence of the built model."""
from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")
torch = pytest.importorskip("torch")

from device_agents.litert import LiteRTAgent  # noqa: E402
from device_agents.tflite_build import S as SCHEMA  # noqa: E402
from device_agents.tflite_build import build_tflite, build_tflite_chain, iter_ops  # noqa: E402
from device_agents.weights import Weights, op_weights  # noqa: E402
from latbench import ops as O  # noqa: E402
from latbench.errors import OpError  # noqa: E402
from latbench.measure import TimingSettings  # noqa: E402
from latbench.ops import OpSpec  # noqa: E402

RTOL = 1e-4
FAST = TimingSettings(warmup=1, warmup_s=0.0, min_samples=5, max_samples=20, max_time_s=0.1)
S = (1, 16, 12, 12)  # even spatial size: TF SAME != torch padding at stride 2
S_ODD = (1, 16, 13, 13)


def reference(op: OpSpec, weights: Weights) -> "torch.nn.Module":
    """The shared torch reference: module_for(op) loaded with the canonical weights."""
    from device_agents.torch_local import reference_module

    return reference_module(op, weights)


@pytest.fixture(scope="module", params=[True, False], ids=["xnnpack", "builtin"])
def agent(request) -> LiteRTAgent:
    return LiteRTAgent(threads=1, xnnpack=request.param, seed=0)


_REFERENCE: dict[tuple[str, int], np.ndarray] = {}  # (op key, seed) -> the reference's output: both delegates share it


def check_close(agent: LiteRTAgent, op: OpSpec) -> None:
    x = np.random.default_rng(7).standard_normal(op.in_shape, dtype=np.float32)
    ref = _REFERENCE.get((op.key, agent.seed))
    if ref is None:
        with torch.inference_mode():
            ref = _REFERENCE[(op.key, agent.seed)] = reference(op, agent.weights(op))(torch.from_numpy(x)).numpy()
    out = agent.run(op, x)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    scale = float(np.abs(ref).max())
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=RTOL * scale, err_msg=op.key)


# ---------------------------------------------------------------------- op granularity
CONVS = [
    *[O.conv(shape, 24, k, 2, bias=True) for k in (3, 5, 7) for shape in (S, S_ODD)],
    O.conv(S, 24, 3), O.conv(S, 24, 1), O.conv(S, 24, 1, 2),
    O.conv(S, 24, 3, padding=0), O.conv(S, 24, 3, padding=2),  # VALID; wider than SAME
    O.conv(S, 16, 3, groups=16, bias=True),  # depthwise
    O.conv(S, 32, 5, 2, groups=16),  # depthwise, channel multiplier 2, stride 2 even
    O.conv(S_ODD, 16, 7, 2, groups=16),
    O.conv(S, 32, 3, groups=4, bias=True), O.conv(S, 16, 3, 2, groups=2),  # grouped
    O.conv(S, 24, 3, dilation=2, bias=True), O.conv(S, 16, 3, 2, dilation=2, groups=16),  # dilated
    O.conv((2, 8, 12, 13), 16, 3, 2, bias=True), O.conv((1, 8, 9, 14), 8, 2, 2),  # batch 2, non-square, even k
]
POOLS = [
    O.pool(S, "max", 3, 2, 1), O.pool(S_ODD, "max", 3, 2, 1), O.pool(S, "max", 2, 2),
    O.pool(S, "avg", 3, 2, 1), O.pool(S_ODD, "avg", 3, 2, 1),  # padding excluded from the divisor
    O.pool(S, "avg", 3, 2, 1, count_pad=True), O.pool(S_ODD, "avg", 3, 1, 1, count_pad=True),
    O.pool(S, "avg", 3, 1, 1),
    O.pool(S, "max", 3, 2, 0, ceil_mode=True), O.pool(S_ODD, "max", 2, 2, 0, ceil_mode=True),
    O.pool(S, "max", 3, 2, 1, ceil_mode=True),
    O.pool(S, "avg", 3, 2, 0, ceil_mode=True), O.pool(S_ODD, "avg", 2, 2, 0, ceil_mode=True),
    O.pool(S_ODD, "avg", 3, 2, 1, ceil_mode=True), O.pool(S_ODD, "avg", 3, 2, 1, ceil_mode=True, count_pad=True),
    O.pool(S, "avg", global_pool=True), O.pool(S, "max", global_pool=True),
    O.pool((1, 8, 7, 5), "avg", global_pool=True),
    O.pool((2, 8, 12, 13), "avg", 3, 2, 1), O.pool((1, 8, 9, 14), "max", 3, 2, 1, ceil_mode=True),
]
OTHERS = [
    *[O.activation(S, a) for a in O.ACTIVATIONS],
    *[O.eltwise(S, e, broadcast=b) for e in O.ELTWISE for b in (False, True)],
    O.batch_norm(S), O.batch_norm(S, act="relu"), O.batch_norm(S, act="hswish"),
    O.softmax(S, axis=1), O.softmax((2, 10, 1, 1), axis=1),
    O.linear(2, 64, 10), O.linear(1, 32, 16, bias=False), O.linear(1, 32, 16, act="relu"),
    O.linear(1, 32, 16, act="hswish"),
]
FUSED = [
    O.conv(S, 24, 3, bn=True, act="relu"), O.conv(S, 24, 3, 2, bn=True, act="relu6"),
    O.conv(S_ODD, 24, 3, 2, bn=True, act="hswish"), O.conv(S, 16, 5, groups=16, bn=True, act="swish"),
    O.conv(S, 24, 1, bn=True), O.conv(S, 24, 3, act="gelu", bias=True),
]
BLOCKS = [
    O.mbconv(S, 24, 48, 3, 2, "relu"),  # expand conv, stride 2 even
    O.mbconv(S_ODD, 24, 48, 7, 2, "hswish", se=16),  # SE at dw, stride 2 odd
    O.mbconv(S, 16, 16, 3, 1, "relu", residual=True, expand_conv=False),  # no expand conv
    O.mbconv(S, 16, 64, 5, 1, "hswish", se=16, residual=True),  # SE at dw + residual
    O.mbconv(S, 24, 48, 3, 1, "relu", se=8, se_pos="out"),  # LightNAS: SE on the output
    O.mbconv(S, 16, 48, 5, 1, "relu6", se=8, se_act="sigmoid", se_pos="out", residual=True),
    O.resblock("bottleneck", S, 32, 3, 2, mid=8), O.resblock("bottleneck", (1, 32, 12, 12), 32, 3, 1, mid=8),
    O.resblock("basic", S, 24, 3, 2), O.resblock("basic", S, 16, 3, 1),
    O.resblock("basic", S_ODD, 16, 5, 1, act="hswish"),
    O.mbconv((2, 16, 10, 11), 24, 48, 5, 2, "hswish", se=8),  # batch 2: SE gate (2, 1, 1, C)
]
ALL = CONVS + POOLS + OTHERS + FUSED + BLOCKS


@pytest.mark.parametrize("op", ALL, ids=[op.key for op in ALL])
def test_matches_torch_reference(agent: LiteRTAgent, op: OpSpec) -> None:
    """LiteRT output == torch output (same weights) to 1e-4 relative, XNNPACK on and off."""
    check_close(agent, op)


# ---------------------------------------------------------------------- what the model contains
def ops_of(op: OpSpec) -> list[str]:
    return list(iter_ops(build_tflite(op, op_weights(op))))


@pytest.mark.parametrize("op, want", [
    (O.conv(S_ODD, 8, 3, 2), ["CONV_2D"]),  # SAME == torch padding on odd sizes
    (O.conv(S, 8, 3, 2), ["PAD", "CONV_2D"]),  # stride 2 on even sizes: explicit PAD + VALID
    (O.conv(S, 8, 3, 2, padding=0), ["CONV_2D"]),
    (O.conv(S, 8, 3, bn=True, act="relu"), ["CONV_2D"]),  # BN folded, RELU fused
    (O.conv(S, 8, 3, bn=True, act="hswish"), ["CONV_2D", "HARD_SWISH"]),
    (O.conv(S, 16, 3, groups=16), ["DEPTHWISE_CONV_2D"]),
    (O.conv(S, 16, 3, groups=4), ["CONV_2D"]),  # grouped conv: one CONV_2D (version 6)
    (O.activation(S, "hsigmoid"), ["ADD", "MUL"]),  # relu6 fused into the ADD
    (O.activation(S, "swish"), ["LOGISTIC", "MUL"]),
    (O.batch_norm(S, act="relu"), ["MUL", "ADD"]),
    (O.pool(S, "avg", global_pool=True), ["MEAN"]),
    (O.pool(S, "max", 3, 2, 1), ["PADV2", "MAX_POOL_2D"]),
    (O.pool(S_ODD, "max", 3, 2, 1), ["MAX_POOL_2D"]),
    (O.pool(S, "avg", 3, 2, 1, count_pad=True), ["PAD", "AVERAGE_POOL_2D"]),
    (O.pool(S, "avg", 3, 2, 1), ["PAD", "AVERAGE_POOL_2D", "MUL"]),  # divisor fix at borders
    (O.linear(1, 32, 16, act="relu"), ["FULLY_CONNECTED"]),
    (O.mbconv(S_ODD, 24, 48, 3, 1, "relu", se=8), ["CONV_2D", "DEPTHWISE_CONV_2D", "MEAN", "CONV_2D",
                                                   "CONV_2D", "ADD", "MUL", "MUL", "CONV_2D"]),
    (O.resblock("basic", S, 16, 3, 1), ["CONV_2D", "CONV_2D", "ADD"]),
])
def test_model_op_sequence(op: OpSpec, want: list[str]) -> None:
    assert ops_of(op) == want


def test_flatbuffer_layout() -> None:
    """TFL3 identifier, empty buffer 0, 16-byte aligned constants, NHWC IO, opcode versions."""
    op = O.conv(S, 16, 3, 2, groups=4, bias=True)
    raw = build_tflite(op, op_weights(op))
    assert raw[4:8] == b"TFL3"
    m = SCHEMA.Model.GetRootAs(raw, 0)
    assert m.Version() == 3 and m.Buffers(0).DataLength() == 0
    for i in range(1, m.BuffersLength()):
        b = m.Buffers(i)
        if b.DataLength():
            assert b._tab.Vector(b._tab.Offset(4)) % 16 == 0
    sg = m.Subgraphs(0)
    assert tuple(sg.Tensors(sg.Inputs(0)).ShapeAsNumpy()) == (1, 12, 12, 16)
    assert tuple(sg.Tensors(sg.Outputs(0)).ShapeAsNumpy()) == (1, 6, 6, 16)
    codes = {m.OperatorCodes(i).BuiltinCode(): m.OperatorCodes(i) for i in range(m.OperatorCodesLength())}
    conv = codes[SCHEMA.BuiltinOperator.CONV_2D]
    assert conv.Version() == 6 and conv.DeprecatedBuiltinCode() == SCHEMA.BuiltinOperator.CONV_2D
    gelu = build_tflite(O.activation(S, "gelu"), [{}])
    gm = SCHEMA.Model.GetRootAs(gelu, 0).OperatorCodes(0)
    assert gm.BuiltinCode() == SCHEMA.BuiltinOperator.GELU and gm.DeprecatedBuiltinCode() == 127


def test_softmax_on_other_axes_is_a_clear_error() -> None:
    with pytest.raises(OpError, match="last axis"):
        build_tflite(O.softmax(S, axis=2), [{}])


def test_build_is_milliseconds() -> None:
    """Building a model stays far below the time it is then measured for."""
    ops = [O.mbconv((1, 40, 28, 28), 40, 240, 5, 1, "hswish", se=64, residual=True),
           O.conv((1, 64, 56, 56), 64, 3, bn=True, act="relu"), O.activation(S, "hsigmoid")]
    for op in ops:
        w = op_weights(op)
        build_tflite(op, w)
        t0 = time.perf_counter()
        for _ in range(5):
            build_tflite(op, w)
        per = (time.perf_counter() - t0) / 5
        assert per < 0.05, f"{op.key}: {per * 1e3:.1f} ms to build"


# ---------------------------------------------------------------------- whole subnets
def test_chain_equals_ofa_subnet() -> None:
    """A whole OFA-MBv3 subnet at 128 px in one .tflite equals space.build(config), same weights."""
    from latbench.spaces import get_space

    space = get_space("ofa-mbv3-w10")
    cfg = space.sample(3, 1)[0]
    cfg[space.resolution_position] = space.positions[space.resolution_position].choices.index(128)
    blocks = space.blocks(cfg)
    weights = [op_weights(b, seed=i) for i, b in enumerate(blocks)]
    model = space.build(cfg)
    with torch.no_grad():
        for i, (b, w) in enumerate(zip(blocks, weights)):
            model[i].load_state_dict(reference(b, w).state_dict())
    raw = build_tflite_chain(blocks, weights)
    x = np.random.default_rng(0).standard_normal(blocks[0].in_shape, dtype=np.float32)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    for xnn in (True, False):
        agent = LiteRTAgent(xnnpack=xnn)
        it = agent.interpreter(raw)
        it.set_tensor(it.get_input_details()[0]["index"], x.transpose(0, 2, 3, 1).copy())
        it.invoke()
        out = it.get_tensor(it.get_output_details()[0]["index"])
        assert out.shape == ref.shape == (1, 1000)
        np.testing.assert_allclose(out, ref, rtol=RTOL, atol=RTOL * float(np.abs(ref).max()))
    stats = LiteRTAgent().measure_model(raw, timing=FAST)
    assert stats.n >= FAST.min_samples and stats.median > 0


def test_chain_rejects_shape_mismatch() -> None:
    a, b = O.conv(S, 24, 3), O.conv(S, 24, 3)
    with pytest.raises(OpError, match="previous op"):
        build_tflite_chain([a, b], [op_weights(a), op_weights(b)])


# ---------------------------------------------------------------------- agent API
def test_measure_one_per_op_and_bad_op_fails_alone(agent: LiteRTAgent) -> None:
    ops = [O.conv(S, 24, 3), O.softmax(S, axis=2), O.mbconv(S, 16, 64, 5, 1, "hswish", se=16, residual=True)]
    res = list(agent.measure(ops, FAST))
    assert [m.key for m in res] == [op.key for op in ops]
    assert res[0].ok and res[2].ok and res[0].stats.median > 0
    bad = res[1]
    assert bad.status == "failed" and bad.stats is None
    assert "OpError" in bad.error and "last axis" in bad.error and "\n" not in bad.error
    assert res[2].settings["delegate"] == ("xnnpack" if agent.xnnpack else "builtin")


def test_fingerprint_and_measure_model_from_path(tmp_path) -> None:
    from importlib import metadata

    on, off = LiteRTAgent(), LiteRTAgent(xnnpack=False, threads=2)
    p_on, p_off = on.fingerprint(), off.fingerprint()
    assert (p_on.agent, p_on.runtime, p_on.delegate, p_on.threads) == ("tflite", "litert", "xnnpack", 1)
    assert p_on.runtime_version == metadata.version("ai-edge-litert")
    assert (p_off.delegate, p_off.threads) == ("builtin", 2) and p_on.id != p_off.id
    assert LiteRTAgent(xnnpack="false").fingerprint().delegate == "builtin"  # CLI options come as text
    assert on.fusion == "tflite"
    op = O.conv(S, 24, 3, bn=True, act="relu")
    path = tmp_path / "conv.tflite"
    path.write_bytes(on.model(op))
    stats = off.measure_model(path, timing=FAST)
    assert stats.median > 0 and stats.n >= FAST.min_samples


def test_network_context_timing_reads_inputs_without_holding_them() -> None:
    """touch() reads the interpreter's input buffer through views it drops at once (invoke
    refuses to run while a numpy view of internal data is alive); measure in network context
    then gives one call per sample."""
    from latbench.measure import TimingSettings

    agent = LiteRTAgent()
    op = O.conv((1, 8, 12, 12), 16, 3)
    p = agent.prepare_op(op)
    for _ in range(3):
        p.touch()
        p()
    timing = TimingSettings(warmup=1, warmup_s=0.0, min_samples=5, max_samples=5, context="network",
                            context_bytes=1 << 20)
    (m,) = agent.measure([op], timing)
    assert m.ok and m.stats.block == 1 and m.stats.n == 5
    assert m.settings["timing"]["context"] == "network"

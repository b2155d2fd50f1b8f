"""The fbnet space (HW-NAS-Bench's FBNet, ImageNet 224) and the channel shuffle op it needs:
the built module against a forward written here from torch.nn.functional, decode against the
traced module, hand-counted FLOPs, config forms, and the shuffle op on torch, ONNX Runtime and
LiteRT against numpy."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

from latbench import ops as O
from latbench.errors import ConfigError, OpError
from latbench.lower import lower_onnx, lower_torch
from latbench.spaces import get_space
from latbench.spaces.fbnet import BLOCKS, CHANNELS, CHOICES, LAYERS, STRIDES

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HELP_CONFIG = "7 8 1 8 4 8 8 8 7 4 1 4 7 3 2 7 3 2 4 2 4 5"  # a config as HW-NAS-Bench / HELP write it
SKIP = CHOICES.index("skip")
FIRST = [sum(LAYERS[:s]) for s in range(len(LAYERS))]  # stage-first layers: 0 1 5 9 13 17 21
# every choice somewhere (layer 1: g2 at stride 2 with more channels; 17: skip as a strided conv);
# skips on every stage-first layer (identity, strided, and stride 1 with more channels) among g2 blocks
CFG_ALL = [i % len(CHOICES) for i in range(22)]
CFG_SKIPS = [SKIP if i in FIRST else (1, 5)[i % 2] for i in range(22)]


@pytest.fixture(scope="module")
def space():
    return get_space("fbnet")


# ---------------------------------------------------------------------- the reference network
def hwnas_shuffle(x, groups: int):
    """HW-NAS-Bench's ChannelShuffle: view (n, g, c/g, h, w), permute (0, 2, 1, 3, 4), view back."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).contiguous().view(n, c, h, w)


def reference_forward(module, config, x):
    """FBNet_Infer.forward from F calls, reading the built module's weights in creation order."""
    params = iter(m for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear)))

    def conv(x, cout, k, stride=1, groups=1):
        m = next(params)
        assert isinstance(m, torch.nn.Conv2d) and m.bias is None
        assert tuple(m.weight.shape) == (cout, x.shape[1] // groups, k, k)
        return F.conv2d(x, m.weight, None, stride, (k - 1) // 2, 1, groups)

    def bn(x, relu=True):
        m = next(params)
        y = F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)
        return F.relu(y) if relu else y

    x = bn(conv(x, 16, 3, 2))
    layer = 0
    for stage, n in enumerate(LAYERS):
        for j in range(n):
            cin, cout = x.shape[1], CHANNELS[stage]
            stride = STRIDES[stage] if j == 0 else 1
            spec = BLOCKS[CHOICES[config[layer]]]
            layer += 1
            if spec is None:
                if stride != 1 or cin != cout:
                    x = bn(conv(x, cout, 1, stride))
                continue
            k, e, g = spec
            y = bn(conv(x, cin * e, 1, groups=g))
            if g > 1:
                y = hwnas_shuffle(y, g)
            y = bn(conv(y, cin * e, k, stride, groups=cin * e))
            y = bn(conv(y, cout, 1, groups=g), relu=False)
            x = y + x if (cin == cout and stride == 1) else y
    x = bn(conv(x, 1984, 1))
    fc = next(params)
    assert isinstance(fc, torch.nn.Linear) and next(params, None) is None
    return F.linear(F.adaptive_avg_pool2d(x, 1).flatten(1), fc.weight, fc.bias)


@pytest.mark.parametrize("config", [CFG_ALL, CFG_SKIPS, HELP_CONFIG], ids=["every-choice", "skips-g2", "help"])
def test_built_module_is_hwnas_fbnet_and_decode_is_its_trace(space, config):
    """space.build(config) computes the reference forward (BN statistics made non-trivial), and
    decode(config, 'op') is exactly what lower_torch traces in it."""
    torch.manual_seed(0)
    module = space.build(config)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(space.input_shape(config))
    with torch.no_grad():
        got, want = module(x), reference_forward(module, space.index(config), x)
    assert got.shape == (1, 1000)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    low = lower_torch(module, space.input_shape(config))
    assert low.unmapped == []
    assert [o.key for o in space.decode(config, "op")] == [o.key for o in low.ops]


def test_layer_blocks_follow_the_published_choices(space):
    """Kinds and shapes per layer: g2 blocks hold a shuffle, skips vanish or become a 1x1 conv."""
    blocks = space.blocks(CFG_SKIPS)
    assert [b.kind for b in blocks[:3]] == ["conv", "conv", "mbconv"]  # stem; layer 0 (identity) gone
    convs = [b for b in blocks[1:-3] if b.kind == "conv"]
    assert [(b.c, b.out, b.stride) for b in convs] == [(16, 24, 2), (24, 32, 2), (32, 64, 2), (64, 112, 1),
                                                      (112, 184, 2), (184, 352, 1)]
    g2 = [b for b in blocks if b.kind == "mbconv"]
    assert len(g2) == 15 and all(b.groups == 2 and b.mid == b.c and b.residual for b in g2)
    assert all(O.expand(b)[3].kind == "shuffle" for b in g2)
    assert blocks[-3].out == 1984 and blocks[-1].out == 1000 and blocks[-1].bias
    assert space.input_shape(CFG_SKIPS) == (1, 3, 224, 224) and space.resolutions == (224,)
    assert space.size == 9**22 and space.n_positions == 22


def test_flops_of_all_k3_e1_by_hand(space):
    """All k3_e1: every conv's multiply-adds counted here (2 FLOPs each), plus BN 2, ReLU 1, add 1
    per element, the 7x7 pool 49 per output, the linear 2 per weight."""
    macs, elementwise = 3 * 16 * 9 * 112 * 112, (2 + 1) * 16 * 112 * 112
    c, hw = 16, 112
    for stage, n in enumerate(LAYERS):
        for j in range(n):
            cout, s = CHANNELS[stage], STRIDES[stage] if j == 0 else 1
            ohw = hw // s
            macs += c * c * hw * hw + 9 * c * ohw * ohw + c * cout * ohw * ohw
            elementwise += 3 * c * hw * hw + 3 * c * ohw * ohw + 2 * cout * ohw * ohw
            if s == 1 and c == cout:
                elementwise += cout * ohw * ohw
            c, hw = cout, ohw
    macs += 352 * 1984 * 7 * 7
    elementwise += 3 * 1984 * 7 * 7 + 1984 * 49
    macs += 1984 * 1000
    config = [CHOICES.index("k3_e1")] * 22
    ops = space.decode(config, "op")
    assert sum(o.flops for o in ops if o.kind in ("conv", "linear")) == 2 * macs == 2 * 118_371_152
    assert sum(o.flops for o in ops) == 2 * macs + elementwise


def test_smallest_and_largest(space):
    """skip everywhere has the fewest ops on every layer and the fewest FLOPs but on the first layers
    of stages 4 and 6 (where the g2 blocks count fewer); k5_e6 the most FLOPs on every layer."""
    def layer_cost(i, choice):
        cfg = space.smallest()
        cfg[i] = choice
        ops = space.decode(cfg, "op")
        return len(ops), sum(o.flops for o in ops)

    assert space.config_string(space.smallest()) == " ".join(["8"] * 22)
    for i in range(22):
        costs = [layer_cost(i, c) for c in range(9)]
        assert min(costs)[0] == costs[SKIP][0]
        assert int(np.argmax([f for _, f in costs])) == CHOICES.index("k5_e6")
        cheaper = [c for c in range(9) if costs[c][1] < costs[SKIP][1]]
        assert cheaper == {13: [1], 21: [1, 5]}.get(i, []), (i, costs)
    def flops(cfg) -> int:
        return sum(o.flops for o in space.decode(cfg, "op"))

    assert flops(space.smallest()) < flops(space.sample(0, 1)[0]) < flops(space.largest())


# ---------------------------------------------------------------------- config forms
def test_config_forms_round_trip(space):
    idx = space.index(HELP_CONFIG)
    assert idx.tolist() == [int(t) for t in HELP_CONFIG.split()]
    assert space.to_published(idx) == idx.tolist()
    assert space.config_string(idx.tolist()) == HELP_CONFIG
    for cfg in space.sample(3, 20):
        np.testing.assert_array_equal(space.index(space.config_string(cfg)), cfg)
        np.testing.assert_array_equal(space.index(space.to_published(cfg)), cfg)
        np.testing.assert_array_equal(space.index(tuple(space.to_published(cfg))), cfg)
    assert space.index("  7 8\t1 8 4 8 8 8 7 4 1 4 7 3 2 7 3 2 4 2 4 5\n").tolist() == idx.tolist()


@pytest.mark.parametrize("bad,needle", [
    (HELP_CONFIG + " 1", "a config has 22 layers (indices 0-8), got 23 tokens"),
    ([0] * 23, "got 23 entries"),
    ([0] * 21, "got 21 entries"),
    ([0] * 3 + [9] + [0] * 18, "layer3 has index 9; choices are 0-8 (0 k3_e1, 1 k3_e1_g2"),
    ([0] * 5 + [-1] + [0] * 16, "layer5 has index -1"),
    ("0 " * 4 + "x " + "0 " * 17, "layer4 is 'x', not a choice index 0-8"),
    ("0 " * 4 + "1.0 " + "0 " * 17, "layer4 is '1.0', not a choice index 0-8"),
    ([0] * 2 + [1.5] + [0] * 19, "layer2 is 1.5, not a choice index 0-8"),
    ([0] * 2 + [True] + [0] * 19, "layer2 is True, not a choice index 0-8"),
    ({"op_idx_list": [0] * 22}, "got dict"),
    (np.zeros((2, 22), dtype=np.int64), "a config is one row of 22 choice indices, got an array of shape (2, 22)"),
])
def test_bad_configs_are_one_line_config_errors(space, bad, needle):
    with pytest.raises(ConfigError) as e:
        space.index(bad)
    assert needle in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith("fbnet: ")


# ---------------------------------------------------------------------- the shuffle op
def numpy_shuffle(x: np.ndarray, groups: int) -> np.ndarray:
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)


def test_shuffle_op_key_costs_and_checks():
    op = O.shuffle((1, 48, 112, 112), 2)
    assert op.key == "shuffle-input:1x48x112x112-g:2" and "shuffle" in O.OP_KINDS
    assert op.out_shape == op.in_shape and op.flops == 0 and op.params == 0
    assert op.bytes == 2 * 4 * 48 * 112 * 112
    for groups in (1, 5):
        with pytest.raises(OpError, match=f"shuffle: groups={groups} must be >= 2 and divide the 48 channels"):
            O.shuffle((1, 48, 8, 8), groups)


def test_mbconv_groups_keep_ungrouped_keys_and_add_a_shuffle():
    plain = O.mbconv((1, 24, 56, 56), 24, 24, 3, 1, "relu", residual=True)
    assert plain.key == "mbconv-input:1x24x56x56-out:24-mid:24-k:3-s:1-act:relu-expconv:1-se:0-res:1"
    g2 = O.mbconv((1, 24, 56, 56), 24, 24, 3, 1, "relu", residual=True, groups=2)
    assert g2.key == "mbconv-input:1x24x56x56-out:24-mid:24-k:3-s:1-g:2-act:relu-expconv:1-se:0-res:1"
    assert [o.kind for o in O.expand(g2)] == ["conv", "batch_norm", "activation", "shuffle", "conv",
                                             "batch_norm", "activation", "conv", "batch_norm", "eltwise"]
    parts = O.expand(g2)
    assert parts[0].groups == parts[7].groups == 2 and parts[4].groups == 24 and parts[3].groups == 2
    # each 1x1 conv does half its 24x24 multiply-adds per pixel (2 FLOPs each); the shuffle is free
    assert g2.flops == plain.flops - 2 * 2 * (24 * 24 // 2) * 56 * 56
    wide = O.mbconv((1, 64, 14, 14), 64, 384, 3, 1, "relu", residual=True)
    assert O.is_ofa_mbconv(wide) and not O.is_ofa_mbconv(wide.replace(groups=2))
    with pytest.raises(OpError, match="groups=3 must divide in=24, mid=24 and out=32"):
        O.mbconv((1, 24, 8, 8), 32, 24, 3, 1, "relu", groups=3)
    with pytest.raises(OpError, match="needs the expansion conv"):
        O.mbconv((1, 24, 8, 8), 24, 24, 3, 1, "relu", groups=2, expand_conv=False)


def test_torch_channel_shuffle_is_hwnas_view_permute():
    x = torch.randn(2, 48, 5, 7)
    for g in (2, 3, 4, 6):
        assert torch.equal(torch.nn.ChannelShuffle(g)(x), hwnas_shuffle(x, g))
        assert torch.equal(hwnas_shuffle(x, g), torch.from_numpy(numpy_shuffle(x.numpy(), g)))


@pytest.mark.parametrize("name", ["cpu", "ort", "tflite"])
def test_single_op_shuffle_builds_match_numpy(name):
    """Each agent's single-op model of a shuffle (torch module, ONNX graph, .tflite) against numpy."""
    from device_agents import get_agent

    agent = get_agent(name)
    try:
        for shape, g in (((1, 12, 7, 5), 2), ((1, 12, 7, 5), 3), ((2, 16, 4, 4), 4)):
            op = O.shuffle(shape, g)
            x = np.random.default_rng(g).standard_normal(shape, dtype=np.float32)
            np.testing.assert_array_equal(agent.run(op, x), numpy_shuffle(x, g))
    finally:
        agent.close()


def test_single_op_models_are_reshape_transpose_reshape():
    pytest.importorskip("onnx")
    from device_agents.onnx_build import build_onnx
    from device_agents.tflite_build import build_tflite, iter_ops
    from device_agents.weights import op_weights

    op = O.shuffle((1, 48, 28, 28), 2)
    model = build_onnx(op)
    assert [n.op_type for n in model.graph.node] == ["Reshape", "Transpose", "Reshape"]
    low = lower_onnx(model)  # the typed lowering maps the pattern back to the op
    assert [o.key for o in low.ops] == [op.key] and not low.unmapped
    assert list(iter_ops(build_tflite(op, op_weights(op)))) == ["RESHAPE", "TRANSPOSE", "RESHAPE"]
    block = O.mbconv((1, 24, 14, 14), 24, 24, 5, 1, "relu", residual=True, groups=2)
    lowered = O.fuse(lower_onnx(build_onnx(block)).ops, "ort")  # BN folded as the graph holds it
    assert [o.key for o in lowered] == [o.key for o in O.fuse(O.expand(block), "ort")]


def test_lower_onnx_refuses_other_transposes_by_name():
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    node = helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 3, 1])
    graph = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 8])])
    low = lower_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert low.ops == [] and len(low.unmapped) == 1
    assert "perm [0, 2, 3, 1] of a 1x8x4x4 tensor" in low.unmapped[0].label


def test_hwnas_view_permute_shuffle_exports_to_a_shuffle_op():
    """HW-NAS-Bench's own view/permute/view shuffle, exported by torch, lowers to the shuffle op."""
    pytest.importorskip("onnx")

    class Shuffle(torch.nn.Module):
        def forward(self, x):
            return hwnas_shuffle(x, 2)

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Shuffle(), (torch.randn(1, 24, 14, 14),), buf, dynamo=False, opset_version=17)
    low = lower_onnx(buf.getvalue())
    assert [o.key for o in low.ops] == ["shuffle-input:1x24x14x14-g:2"] and not low.unmapped


def test_exported_network_lowers_as_traced(space):
    """The torch export of a g2 subnet (aten::channel_shuffle as Reshape-Transpose-Reshape) lowers to
    the traced ops, fused as ONNX Runtime runs them, and ONNX Runtime computes the module's output."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    module = space.build(CFG_SKIPS)
    shape = space.input_shape(CFG_SKIPS)
    x = torch.randn(shape)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=17, do_constant_folding=True)
    lo = lower_onnx(buf.getvalue())
    assert not lo.unmapped
    assert [o.key for o in O.fuse(lo.ops, "ort")] == [o.key for o in O.fuse(lower_torch(module, shape).ops, "ort")]
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, module(x).numpy(), rtol=1e-4, atol=1e-4)

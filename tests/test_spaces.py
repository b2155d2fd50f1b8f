"""Search spaces against real torch: decode == traced module, enumerate == what configs reach,
published forms, sampling, size, LightNAS facts, and YAML error messages."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from latbench import lower
from latbench import ops as O
from latbench.errors import ConfigError, SpaceError
from latbench.spaces import get_space, list_spaces
from latbench.spaces.lightnas import LightNASSpace

torch = pytest.importorskip("torch")
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

DATA = Path(__file__).parent / "data"
MIXED = str(DATA / "mixed_space.yaml")
TINY = str(DATA / "tiny_space.yaml")
SPACES = list_spaces() + [MIXED]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: small convs, one thread


@pytest.fixture(scope="module", params=SPACES, ids=lambda s: Path(s).stem if s.endswith(".yaml") else s)
def space(request):
    return get_space(request.param)


def test_builtins_registered():
    assert {"ofa-mbv3-w10", "ofa-mbv3-w12", "lightnas", "bignas-resnet"} <= set(list_spaces())


def _configs(space, n_random: int = 2, seed: int = 0) -> list[np.ndarray]:
    return [space.smallest(), space.largest()] + list(space.sample(seed, n_random))


# ---------------------------------------------------------------------- decode vs torch
def test_decode_matches_traced_module_and_flops(space):
    """decode(config, 'op') is exactly what torch.fx sees in the built module; conv+linear FLOPs
    agree with FlopCounterMode within 1%."""
    for cfg in _configs(space):
        module = space.build(cfg)
        shape = space.input_shape(cfg)
        low = lower.lower_torch(module, shape)
        assert low.unmapped == []
        decoded = space.decode(cfg, "op")
        assert [o.key for o in decoded] == [o.key for o in low.ops]
        ours = sum(o.flops for o in decoded if o.kind in ("conv", "linear"))
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            module(torch.randn(*shape))
        assert ours == pytest.approx(counter.get_total_flops(), rel=0.01)


# ---------------------------------------------------------------------- enumerate
def _witnessed_blocks(space, resolutions) -> dict[str, tuple[O.OpSpec, np.ndarray]]:
    """Every block some config reaches, each with a config (witness) that reaches it.

    Walks the slots like enumerate does, but carries one concrete index assignment per state,
    so each block found comes with a real config to decode and check."""
    choices = [list(range(len(p.choices))) for p in space.positions]
    rp = space.resolution_position
    if rp is not None:
        choices[rp] = [space.positions[rp].choices.index(r) for r in resolutions]
    read_later: list[set] = []
    acc: set = set()
    for slot in reversed(space.slots):
        read_later.append(set(acc))
        acc |= set(slot.reads)
    read_later.reverse()
    states: dict = {(None, ()): {}}
    found: dict[str, tuple[O.OpSpec, np.ndarray]] = {}
    for i, slot in enumerate(space.slots):
        nxt: dict = {}
        for (state, bound), witness in states.items():
            bound_d = dict(bound)
            free = [p for p in slot.reads if p not in bound_d]
            for combo in itertools.product(*(choices[p] for p in free)):
                idx = {**bound_d, **dict(zip(free, combo))}
                wit = {**witness, **idx}
                blocks, st2 = slot.fn(state, tuple(space.positions[p].choices[idx[p]] for p in slot.reads))
                for b in blocks:
                    if b.key not in found:
                        cfg = np.zeros(space.n_positions, dtype=np.int64)
                        for p, v in wit.items():
                            cfg[p] = v
                        if rp is not None and rp not in wit:
                            cfg[rp] = choices[rp][0]
                        found[b.key] = (b, cfg)
                keep = tuple(sorted((p, v) for p, v in idx.items() if p in read_later[i]))
                nxt.setdefault((st2, keep), wit)
        states = nxt
    return found


def test_enumerate_has_no_phantom_blocks(space):
    """Each enumerated block is reached by a concrete config (decoded to check), and
    enumerate_blocks returns exactly the witnessed set."""
    res = sorted({space.resolutions[0], space.resolutions[-1]})
    witnessed = _witnessed_blocks(space, res)
    assert {b.key for b in space.enumerate_blocks(res)} == set(witnessed)
    for key, (block, cfg) in witnessed.items():
        assert key in {b.key for b in space.blocks(cfg)}, f"{key} not in its witness config"


def test_decoded_ops_are_enumerated(space):
    """The union of decode over many random configs lies in enumerate (block and op level)."""
    blocks = space.enumerate_blocks()
    block_keys = {b.key for b in blocks}
    op_keys = {o.key for b in blocks for o in O.expand(b)}
    seen_blocks, seen_ops = set(), set()
    for cfg in list(space.sample(1, 200)) + [space.smallest(), space.largest()]:
        seen_blocks |= {b.key for b in space.decode(cfg, "block")}
        seen_ops |= {o.key for o in space.decode(cfg, "op")}
    assert seen_blocks <= block_keys
    assert seen_ops <= op_keys


def test_tiny_space_exhaustive():
    """Walking every config of a tiny space: enumerate equals the union exactly, and size equals
    the number of distinct subnets (per-block choices beyond the depth do not count)."""
    space = get_space(TINY)
    card = [len(p.choices) for p in space.positions]
    assert int(np.prod(card)) == 512
    union, nets = set(), set()
    for idx in itertools.product(*(range(c) for c in card)):
        blocks = space.blocks(np.array(idx))
        union |= {b.key for b in blocks}
        nets.add(tuple(b.key for b in blocks))
    assert union == {b.key for b in space.enumerate_blocks()}
    assert space.size == len(nets) == 320


# ---------------------------------------------------------------------- configs
def test_published_round_trip(space):
    for cfg in _configs(space, n_random=20, seed=3):
        pub = space.to_published(cfg)
        back = space.index(json.loads(json.dumps(pub)))
        np.testing.assert_array_equal(back, cfg)


def test_sample_deterministic_and_in_range(space):
    a, b = space.sample(7, 64), space.sample(7, 64)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, space.sample(8, 64))
    assert a.shape == (64, space.n_positions) and a.dtype == np.int64
    assert (a >= 0).all() and (a < space.cardinalities).all()


def test_ofa_published_form_takes_any_equal_number_and_names_the_bad_entry():
    """numpy ints and 3.0 are the choices they equal (r too); a bad value is named by its index,
    a wrong length by the length given."""
    space = get_space("ofa-mbv3-w10")
    pub = space.to_published(space.sample(np.random.default_rng(0), 1)[0])
    want = space.index(pub)
    alike = {"ks": [float(v) for v in pub["ks"]], "e": [np.int64(v) for v in pub["e"]], "d": pub["d"],
             "r": [np.int64(pub["r"][0])]}
    assert np.array_equal(space.index(alike), want)
    assert np.array_equal(space.index({**pub, "r": float(pub["r"][0])}), want)
    with pytest.raises(ConfigError, match=r"ks\[19\]=4 is not one of \[3, 5, 7\]"):
        space.index({**pub, "ks": [3.0] * 19 + [4]})
    with pytest.raises(ConfigError, match=r"'ks' must be a list of 20 values, got 2 values"):
        space.index({**pub, "ks": [3, 3]})
    with pytest.raises(ConfigError, match=r"d\[0\]=True is not one of"):
        space.index({**pub, "d": [True] + pub["d"][1:]})
    with pytest.raises(ConfigError, match=r"r=130 is not one of 128..224 step 4"):
        space.index({**pub, "r": [130]})


def test_yaml_published_form_checks_names_and_values():
    space = get_space(MIXED)
    pub = space.to_published(space.smallest())
    assert pub["r"] == 32 and pub["s1.b2.kernel"] == 3 and pub["s2.expand"] == 0.25
    with pytest.raises(ConfigError, match="unknown position 's9.out'"):
        space.from_published({**pub, "s9.out": 8})
    with pytest.raises(ConfigError, match="lacks position"):
        space.from_published({k: v for k, v in pub.items() if k != "r"})
    with pytest.raises(ConfigError, match="s0.kernel=7"):
        space.from_published({**pub, "s0.kernel": 7})


def test_bignas_resnet_space():
    """United-Perception big_resnet_basic numbers, written as ranges in the shipped YAML."""
    space = get_space("bignas-resnet")
    ch = {p.name: p.choices for p in space.positions}
    assert ch["stem.out"] == (32, 48, 64) and ch["stem.kernel"] == (3, 5, 7)
    assert ch["s0.out"] == (32, 48, 64, 80, 96) and ch["s3.out"] == tuple(range(256, 769, 64))
    assert all(ch[f"s{i}.depth"] == (1, 2, 3) for i in range(4))
    assert space.resolutions == (192, 224, 256)
    blocks = space.blocks(space.largest())
    assert [b.kind for b in blocks] == ["conv", "pool"] + ["basic"] * 12 + ["pool", "linear"]
    assert blocks[1].pool == "max" and blocks[1].ceil_mode and blocks[2].h == 64  # 256 / 2 / 2


# ---------------------------------------------------------------------- LightNAS
MBV2_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                 (6, 160, 3, 2), (6, 320, 1, 1)]


def test_lightnas_tokens():
    space = get_space("lightnas")
    assert isinstance(space, LightNASSpace)
    assert space.range_table() == [4, 3, 3, 2, 2, 2] * 5
    assert space.init_tokens() == [3, 1, 1, 0, 1, 0] * 5
    assert space.n_positions == 30 and space.resolutions == (224,)
    assert space.to_published(space.init_tokens()) == space.init_tokens()
    with pytest.raises(ConfigError):
        space.index([4] + [0] * 29)


def test_lightnas_init_tokens_network():
    """init_tokens is MobileNetV2 (t=6; c 24..160; n 2,3,4,3,3; k=3; shortcut) with PaddleSlim's
    always-present expand conv; params against a hand sum and against torch."""
    space = get_space("lightnas")
    blocks = space.blocks(space.init_tokens())
    units = [b for b in blocks if b.kind == "mbconv"]
    assert len(units) == 17
    outs, strides, residual, mids = [], [], [], []
    hand = 3 * 32 * 9 + 2 * 32  # conv1 + BN
    c_in = 32
    for t, c, n, s in MBV2_SETTINGS:
        for j in range(n):
            mid = c_in * t
            outs.append(c)
            strides.append(s if j == 0 else 1)
            residual.append(j > 0)
            mids.append(mid)
            hand += c_in * mid + 2 * mid + mid * 9 + 2 * mid + mid * c + 2 * c
            c_in = c
    hand += 320 * 1280 + 2 * 1280 + 1280 * 1000 + 1000
    assert [u.out for u in units] == outs
    assert [u.stride for u in units] == strides
    assert [u.residual for u in units] == residual
    assert [u.mid for u in units] == mids and all(u.expand_conv for u in units)
    assert all(u.act == "relu6" and u.kernel == 3 and u.se == 0 for u in units)
    # torchvision's MobileNetV2 has 3,504,872 params; PaddleSlim adds a 32->32 expand conv + BN
    assert hand == 3_504_872 + 32 * 32 + 2 * 32
    # the classifier is PaddleSlim's: a 1x1 conv, its 1000 biases the constant operand of an
    # eltwise add (counted as no parameter, by OpSpec and by torch_build's buffer), a softmax
    assert sum(b.params for b in blocks) == hand - 1000
    assert sum(p.numel() for p in space.build(space.init_tokens()).parameters()) == hand - 1000
    assert [b.kind for b in blocks[-5:]] == ["conv", "pool", "conv", "eltwise", "softmax"]
    assert not blocks[-3].bias and blocks[-3].out == 1000 and blocks[-5].out == 1280


def test_lightnas_se_unit_pattern():
    """With se=1: SE (c//4 hidden, relu, sigmoid) on the linear output, then relu(out + se)."""
    space = get_space("lightnas")
    tokens = space.init_tokens()
    tokens[2 * 6 + 5] = 1  # stage 2 (c=64, n=4): se on
    units = [b for b in space.blocks(tokens) if b.kind == "mbconv" and b.out == 64]
    assert len(units) == 4 and all(u.se == 16 and u.se_pos == "out" for u in units)
    ops = O.expand(units[1])
    pattern = [(o.kind, o.act if o.kind == "activation" else o.eltwise or o.pool) for o in ops]
    assert pattern == [
        ("conv", ""), ("batch_norm", ""), ("activation", "relu6"),
        ("conv", ""), ("batch_norm", ""), ("activation", "relu6"),
        ("conv", ""), ("batch_norm", ""), ("eltwise", "add"),
        ("pool", "avg"), ("conv", ""), ("activation", "relu"), ("conv", ""),
        ("activation", "sigmoid"), ("eltwise", "mul"), ("eltwise", "add"), ("activation", "relu"),
    ]
    assert ops[10].out == 16 and ops[10].bias and ops[12].out == 64


def test_lightnas_size_by_stage():
    """size = product over stages of distinct stage networks, each counted by brute force over
    the stage's 6 tokens (others at init): shortcut only matters when n > 1."""
    space = get_space("lightnas")
    total = 1
    for s in range(5):
        nets = set()
        for combo in itertools.product(*(range(r) for r in space.range_table()[6 * s:6 * s + 6])):
            tokens = space.init_tokens()
            tokens[6 * s:6 * s + 6] = combo
            nets.add(tuple(b.key for b in space.blocks(tokens)))
        total *= len(nets)
    assert space.size == total == 240 * 288**4


# ---------------------------------------------------------------------- YAML errors
GOOD = """\
name: t
input: {resolutions: [32, 64]}
stem: {type: conv, out: 8, kernel: 3, stride: 2, act: relu}
stages:
  - {block: mbconv, depth: [1, 2], out: 8, kernel: [3, 5], expand: [3, 6]}
  - {block: basic, depth: 1, out: 16, kernel: 3, stride: 2}
head:
  - {type: pool}
  - {type: linear, out: 10}
"""


def _edit(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


BAD = [
    ("name: t\ninput: {resolutions: [32]}\nstages:\n  - block: basic\n    depth: 1: 2\n",
     "line 5: mapping values are not allowed here"),
    (_edit("kernel: 3, stride: 2}", "kernel: 4, stride: 2}"), "stages[1].kernel: 4 is not an odd integer >= 1"),
    (_edit("out: 8, kernel: [3, 5]", "out: 8, kernal: [3, 5]"), "stages[0]: unknown field 'kernal'"),
    (_edit("name: t\n", ""), "missing required field 'name'"),
    (_edit("{block: basic, depth: 1, out: 16,", "{block: basic, depth: 1,"), "stages[1]: missing required field 'out'"),
    (_edit("expand: [3, 6]", "expand: three"), "stages[0].expand: 'three' is not a number > 0"),
    (_edit("kernel: [3, 5]", "kernel: []"), "stages[0].kernel: empty list of choices"),
    (_edit("out: 16", "out: {min: 16, max: 32, step: 0}"), "stages[1].out.step: must be > 0"),
    (_edit("out: 16", "out: {min: 32, max: 16, step: 8}"), "stages[1].out: min 32 is greater than max 16"),
    (_edit("block: basic", "block: dense"), "stages[1].block: 'dense' is not one of mbconv, bottleneck, basic"),
    (_edit("act: relu}", "act: relu7}"), "stem.act: 'relu7' is not one of"),
    (_edit("stride: 2}\nhead", "stride: 2, act: swishy}\nhead"), "stages[1].act: 'swishy' is not one of"),
    (_edit("depth: 1", "depth: 0"), "stages[1].depth: 0 is not an integer >= 1"),
    (_edit("out: 16", "out: -16"), "stages[1].out: -16 is not an integer >= 1"),
    (_edit("[32, 64]", "[0, 64]"), "input.resolutions: 0 is not an integer >= 1"),
    (_edit("expand: [3, 6]}", "expand: [3, 6], se: 1}"), "stages[0].se: 1 is not true or false"),
    (_edit("stages:\n", "stages: {}\n").replace("  - {block: mbconv", "#").replace("  - {block: basic", "#"),
     "stages: must be a non-empty list of stages"),
    (_edit("[32, 64]}\nstem: {type: conv, out: 8, kernel: 3, stride: 2, act: relu}",
           "[8]}\nstem:\n  - {type: conv, out: 8, kernel: 3, stride: 2}\n  - {type: pool, kernel: 5}"),
     "stem[1]: feature map would be empty at resolution 8"),
    (_edit("  - {type: pool}\n", ""), "head[0]: a linear layer needs a global pool"),
    ("!!python/object/apply:os.system ['echo pwned']\n", "line 1: could not determine a constructor"),
    ("", "the file is empty"),
    ("- a\n- b\n", "must be a mapping"),
]


def test_good_yaml_loads(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    space = get_space(str(path))
    assert [p.name for p in space.positions] == ["r", "s0.depth", "s0.kernel", "s0.expand"]


@pytest.mark.parametrize("text,message", BAD, ids=[m.split(":")[0][:40] for _, m in BAD])
def test_bad_yaml_one_clear_error(tmp_path, text, message):
    path = tmp_path / "my.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError) as exc:
        get_space(str(path))
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: ")
    assert message in msg, msg


def test_missing_yaml_file_names_it(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(SpaceError, match="absent.yaml: cannot read the space file"):
        get_space(str(path))

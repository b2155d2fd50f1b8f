"""NAS-Bench-201 space: arch strings, the built DAG against a hand-written functional forward,
hand-counted ops/MACs/params, the enumerated block set, and clear errors for bad arch strings."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from latbench.enumerate import enumerate_ops
from latbench.errors import ConfigError
from latbench.spaces import get_space

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OPS = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]
ALL_3X3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
MIXED = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
NODE1_ZERO = "|none~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|none~2|"
ALL_NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
# (into, from) -> position, as the arch string lists edges
EDGE = {(1, 0): 0, (2, 0): 1, (2, 1): 2, (3, 0): 3, (3, 1): 4, (3, 2): 5}


@pytest.fixture(scope="module")
def space():
    return get_space("nb201")


# ---------------------------------------------------------------------- configs
def test_positions_size_and_extremes(space):
    names = ["edge1<-0", "edge2<-0", "edge2<-1", "edge3<-0", "edge3<-1", "edge3<-2"]
    assert [p.name for p in space.positions] == names
    assert all(list(p.choices) == OPS for p in space.positions)
    assert space.size == 5**6 == 15625 and space.resolutions == (32,)
    assert space.to_published(space.smallest()) == ALL_NONE
    assert space.to_published(space.largest()) == ALL_3X3
    assert space.input_shape(space.smallest()) == (1, 3, 32, 32)


def test_arch_string_round_trip_and_all_distinct(space):
    np.testing.assert_array_equal(space.index(MIXED), [3, 3, 4, 1, 3, 1])
    np.testing.assert_array_equal(space.index(NODE1_ZERO), [0, 2, 4, 1, 3, 0])
    np.testing.assert_array_equal(space.index(["avg_pool_3x3"] + ["none"] * 5), [4, 0, 0, 0, 0, 0])
    for cfg in space.sample(11, 200):
        s = space.to_published(cfg)
        np.testing.assert_array_equal(space.index(s), cfg)
        np.testing.assert_array_equal(space.index(space.values(cfg)), cfg)
    grid = np.stack(np.meshgrid(*[np.arange(5)] * 6, indexing="ij"), -1).reshape(-1, 6)
    strings = {space.to_published(c) for c in grid}
    assert len(strings) == 15625


@pytest.mark.parametrize("arch,needle", [
    ("|nor_conv_3x3~0|+|none~0|none~1|", "has 2 node(s)"),
    ("|conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown op 'conv_3x3'"),
    ("|none~0|+|none~0|+|none~0|none~1|none~2|", "node 2 has 1 edge(s), expected 2"),
    ("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|none~3|", "has 4 edge(s), expected 3"),
    ("|none~0|+|none~0|none~2|+|none~0|none~1|none~2|", "has input index '2', expected 1"),
    ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "has input index '1', expected 0"),
    ("|none|+|none~0|none~1|+|none~0|none~1|none~2|", "edge 'none' of node 1"),
    ("none~0+|none~0|none~1|+|none~0|none~1|none~2|", "node 1 is 'none~0'"),
    (["none"] * 5, "a list of op names has 6 entries"),
    (["none"] * 5 + ["sep_conv_3x3"], "unknown op 'sep_conv_3x3'"),
    ([0, 0, 0, 0, 0, 5], "has 5 choices, got index 5"),
])
def test_bad_arch_is_a_clear_config_error(space, arch, needle):
    with pytest.raises(ConfigError) as exc:
        space.index(arch)
    assert needle in str(exc.value) and str(exc.value).startswith("nb201: ")


# ---------------------------------------------------------------------- the built network
def _randomize(net: torch.nn.Module, seed: int) -> None:
    """Random weights and BN statistics, so no BN is an identity and a wrong path shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=gen))


def _reference(net, ops: list[str], x):
    """TinyNetwork/InferCell written out with torch.nn.functional over `net`'s weights; `none`
    edges add x * 0 and every node sum starts from zeros, as the reference InferCell does."""
    def bn(t, m):
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    x = bn(F.conv2d(x, net.stem[0].weight, padding=1), net.stem[1])
    n_cells = n_reductions = 0
    for cell in net.cells:
        if hasattr(cell, "conv_a"):  # ResNetBasicblock, stride 2
            n_reductions += 1
            a = bn(F.conv2d(F.relu(x), cell.conv_a[1].weight, stride=2, padding=1), cell.conv_a[2])
            b = bn(F.conv2d(F.relu(a), cell.conv_b[1].weight, padding=1), cell.conv_b[2])
            x = F.conv2d(F.avg_pool2d(x, 2, 2), cell.downsample[1].weight) + b
            continue
        n_cells += 1
        nodes = [x]
        for i in (1, 2, 3):
            total = torch.zeros_like(x)
            for j in range(i):
                op, h = ops[EDGE[(i, j)]], nodes[j]
                if op == "none":
                    y = h * 0.0
                elif op == "skip_connect":
                    y = h
                elif op == "avg_pool_3x3":
                    y = F.avg_pool2d(h, 3, 1, 1, count_include_pad=False)
                else:
                    k = int(op[-1])
                    m = cell.edges[f"{i}_{j}"]
                    y = bn(F.conv2d(F.relu(h), m[1].weight, padding=k // 2), m[2])
                total = total + y
            nodes.append(total)
        x = nodes[3]
    assert (n_cells, n_reductions) == (15, 2)
    x = F.relu(bn(x, net.lastact[0])).mean((2, 3))
    return F.linear(x, net.classifier.weight, net.classifier.bias)


POOLS_SKIPS = "|avg_pool_3x3~0|+|skip_connect~0|none~1|+|nor_conv_1x1~0|skip_connect~1|avg_pool_3x3~2|"


@pytest.mark.parametrize("arch", [ALL_3X3, MIXED, NODE1_ZERO, ALL_NONE, POOLS_SKIPS])
def test_build_matches_functional_reference(space, arch):
    net = space.build(arch)
    _randomize(net, 0)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = net(x), _reference(net, space.values(arch), x)
    assert got.shape == (1, 10)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_none_edges_multiply_by_zero_and_every_node_sums_all_its_edges(space):
    """`none` is the reference's multiply by zero: a (1, C, 1, 1) zero buffer per none edge (a
    get_attr in fx), read by a broadcast multiply; node i sums its i edges (i - 1 adds)."""
    net = space.build(NODE1_ZERO)
    gm = torch.fx.symbolic_trace(net)
    attrs = [n.target for n in gm.graph.nodes if n.op == "get_attr"]
    cells = [k for k in range(17) if k not in (5, 11)]  # 5 and 11 are the reductions
    assert attrs == [f"cells.{k}.edges.{e}.zero" for k in cells for e in ("1_0", "3_2")]
    assert net.cells[0].edges["1_0"].zero.shape == (1, 16, 1, 1)
    assert net.cells[16].edges["3_2"].zero.shape == (1, 64, 1, 1)
    ops = space.decode(NODE1_ZERO, "op")
    muls = [o for o in ops if o.kind == "eltwise" and o.eltwise == "mul"]
    assert len(muls) == 15 * 2 and all(o.broadcast for o in muls)
    adds = [o for o in ops if o.kind == "eltwise" and o.eltwise == "add"]
    assert len(adds) == 15 * 3 + 2


def test_all_none_cells_still_run_their_multiplies_and_sums(space):
    kinds = Counter(b.kind for b in space.blocks(ALL_NONE))
    assert kinds == {"conv": 1 + 2 * 3, "activation": 2 * 2, "pool": 2 + 1, "eltwise": 15 * (6 + 3) + 2,
                     "batch_norm": 1, "linear": 1}


# ---------------------------------------------------------------------- hand counts
def _cell_convs(c: int, hw: int, k: int) -> int:
    return hw * hw * c * c * k * k


# reductions: conv_a (stride 2), conv_b, 1x1 shortcut after the 2x2 pool
REDUCTIONS = ((16, 32, 16), (32, 64, 8))  # in, out channels, output size
REDUCTION_MACS = sum(hw * hw * (out * cin * 9 + out * out * 9 + out * cin) for cin, out, hw in REDUCTIONS)
REDUCTION_PARAMS = sum(out * cin * 9 + out * out * 9 + out * cin + 4 * out for cin, out, _ in REDUCTIONS)
STEM_MACS, STEM_PARAMS = 32 * 32 * 16 * 3 * 9, 16 * 3 * 9 + 2 * 16
HEAD_MACS, HEAD_PARAMS = 64 * 10, 2 * 64 + 64 * 10 + 10
STAGES = ((16, 32), (32, 16), (64, 8))


@pytest.mark.parametrize("arch,convs3,convs1,pools,nones", [
    (ALL_3X3, 6, 0, 0, 0),  # per cell: 6 convs; node2 sums 2 edges, node3 sums 3 (3 adds a cell)
    (MIXED, 3, 0, 1, 0),
    (NODE1_ZERO, 1, 1, 1, 2),
    (ALL_NONE, 0, 0, 0, 6),
])
def test_op_counts_macs_and_params_by_hand(space, arch, convs3, convs1, pools, nones):
    ops = space.decode(arch, "op")
    kinds = Counter(o.kind for o in ops)
    convs = convs3 + convs1
    assert kinds["conv"] == 15 * convs + 1 + 2 * 3
    assert kinds["batch_norm"] == 15 * convs + 1 + 2 * 2 + 1
    assert kinds["activation"] == 15 * convs + 2 * 2 + 1
    assert kinds["pool"] == 15 * pools + 2 + 1
    assert kinds["eltwise"] == 15 * (3 + nones) + 2 and kinds["linear"] == 1
    cells = sum(5 * (convs3 * _cell_convs(c, hw, 3) + convs1 * _cell_convs(c, hw, 1)) for c, hw in STAGES)
    macs = cells + STEM_MACS + REDUCTION_MACS + HEAD_MACS
    assert sum(o.macs for o in ops) == macs
    cell_params = sum(5 * (convs3 * (9 * c * c + 2 * c) + convs1 * (c * c + 2 * c)) for c, _ in STAGES)
    params = cell_params + STEM_PARAMS + REDUCTION_PARAMS + HEAD_PARAMS
    assert sum(o.params for o in ops) == params
    assert sum(p.numel() for p in space.build(arch).parameters()) == params
    if arch == ALL_3X3:  # 15 cells x 6 convs, each 2,359,296 MACs in every stage
        assert cells == 15 * 6 * 2_359_296 and macs == 220_119_680 and params == 1_531_546


def test_enumerated_blocks_and_ops_by_hand(space):
    """Per stage: relu, conv1x1+bn, conv3x3+bn, avg pool 3x3, add, zero multiply (6 x 3); stem
    conv; per reduction conv_a, 2x2 pool, 1x1 shortcut (its relus, conv_b and add are a stage's);
    head 3."""
    blocks = space.enumerate_blocks()
    assert len(blocks) == len({b.key for b in blocks}) == 6 * 3 + 1 + 3 * 2 + 3
    ops = enumerate_ops(space, None, "op")
    # the bn after each conv is one op per stage; stem bn, head bn/relu are stage ops too
    assert len(ops) == 7 * 3 + 1 + 3 * 2 + 2
    assert Counter(o.kind for o in ops) == {"conv": 3 * 2 + 1 + 2 * 2, "pool": 3 + 2 + 1, "eltwise": 6,
                                            "activation": 3, "batch_norm": 3, "linear": 1}
    seen = {b.key for cfg in space.sample(2, 300) for b in space.blocks(cfg)}
    seen |= {b.key for b in space.blocks(space.largest())}
    assert seen == {b.key for b in blocks}

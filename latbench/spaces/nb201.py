"""NAS-Bench-201: the TinyNetwork of InferCells that HW-NAS-Bench times (xautodl `nas_201_models`).

CIFAR 32x32 input, batch 1, C=16, N=5: stem conv 3->16 + BN, three stages of 5 cells (16ch 32x32,
32ch 16x16, 64ch 8x8) joined by ResNetBasicblock reductions, then BN + ReLU, global average pool
and a linear classifier. Every cell has the same genotype: one op per edge of a 4-node DAG.

Positions `edge{i}<-{j}` (edge from node j into node i) in the published edge order
(1<-0), (2<-0), (2<-1), (3<-0), (3<-1), (3<-2); each chooses one of OPS. The published config is
the arch string `|op~0|+|op~0|op~1|+|op~0|op~1|op~2|` (a list of 6 op names is accepted too).

The network is the reference one, as the devices of HW-NAS-Bench and HELP ran it: every edge runs,
`none` too (the reference InferCell multiplies its input by 0.; latbench builds and times that as
a per-channel multiply by a (1, C, 1, 1) zero buffer), and node i sums all its i in-edges (i-1
adds). Fits of those devices' end-to-end latencies say why: a linear model of op counts over all 15,625
cells leaves an RMS relative error of 0.4% with `none` a real op against 3.5% with it dropped on
1080ti_256 (2.3% against 3.8% on 1080ti_1), and less or the same on every other device. A runtime that folds input-independent subgraphs
(HELP's pixel3, TFLite: 283 cells whose output does not depend on the input run in 0.003 ms)
runs less than this network; the space prices the network as written.

Slots: one per cell node, reading the positions of its in-edges; it adds their ops (on the
stage's fixed shape, which no choice changes) in edge order, then i-1 adds.
A slot per edge would model the same network, but walks that carry later-read positions
(predict.best_over_slots for search bounds, the enumerate witness walk in tests) carry all 15625
genotypes through every slot of the 15 cells: 3 slots per cell instead of 8 about halves them.
"""
from __future__ import annotations

import functools
import itertools
from typing import Any, Hashable, Iterator, Sequence

import numpy as np

from .. import ops as O
from ..errors import ConfigError, SpaceError
from ..ops import OpSpec
from .base import Position, SearchSpace, Slot

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # (into, from), published order
EDGE_NAMES = tuple(f"edge{i}<-{j}" for i, j in EDGES)
STAGE_CHANNELS = (16, 32, 64)
CELLS_PER_STAGE = 5
RESOLUTION = 32
LARGEST_OP = "nor_conv_3x3"  # choice order is not cost order: the 3x3 conv is the dearest op
Shape = tuple[int, int, int, int]


def edges_into(node: int) -> tuple[int, ...]:
    """Indices (positions) of the edges into `node`, in published order."""
    return tuple(e for e, (i, _) in enumerate(EDGES) if i == node)


@functools.cache
def edge_blocks(shape: Shape, op: str) -> tuple[OpSpec, ...]:
    """The blocks of one edge op on a `shape` feature map (xautodl ReLUConvBN / AvgPool2d; `none`
    the reference's multiply by zero)."""
    if op == "skip_connect":
        return ()
    if op == "none":
        return (O.eltwise(shape, "mul", broadcast=True),)
    if op == "avg_pool_3x3":
        return (O.pool(shape, "avg", 3, 1, 1, count_pad=False),)
    k = 1 if op == "nor_conv_1x1" else 3
    return (O.activation(shape, "relu"), O.conv(shape, shape[1], k, 1, (k - 1) // 2, bn=True))


@functools.cache
def _add(shape: Shape) -> OpSpec:
    return O.eltwise(shape, "add")


@functools.cache
def reduction_blocks(shape: Shape, out: int) -> tuple[OpSpec, ...]:
    """ResNetBasicblock(c, out, stride 2): conv_a, conv_b, then the avg-pool + 1x1 shortcut, add."""
    relu_a = O.activation(shape, "relu")
    conv_a = O.conv(shape, out, 3, 2, 1, bn=True)
    relu_b = O.activation(conv_a.out_shape, "relu")
    conv_b = O.conv(conv_a.out_shape, out, 3, 1, 1, bn=True)
    pool = O.pool(shape, "avg", 2, 2, 0)
    down = O.conv(pool.out_shape, out, 1, 1, 0)
    return (relu_a, conv_a, relu_b, conv_b, pool, down, O.eltwise(conv_b.out_shape, "add"))


class NASBench201(SearchSpace):
    """NAS-Bench-201 cell space: 6 edge positions x 5 ops = 15625 configs, fixed 32x32 input.

    smallest() is every edge `none`; largest() is every edge `nor_conv_3x3` (the choice order is
    the published one, not cost order)."""

    name = "nb201"
    description = "NAS-Bench-201 TinyNetwork (C=16, N=5, CIFAR 32x32), one cell genotype of 6 edges"
    fixed_resolution = RESOLUTION

    def __init__(self, num_classes: int = 10) -> None:
        self.num_classes = num_classes
        self.positions = tuple(Position(n, OPS) for n in EDGE_NAMES)
        self.slots = self._make_slots()

    # ------------------------------------------------------------------ network definition
    def _make_slots(self) -> tuple[Slot, ...]:
        slots = [Slot("stem", (), self._stem)]
        for s, c in enumerate(STAGE_CHANNELS):
            if s:
                slots.append(Slot(f"reduce{s}", (), self._reduce_fn(c)))
            for k in range(CELLS_PER_STAGE):
                for node in (1, 2, 3):
                    slots.append(Slot(f"stage{s}.cell{k}.node{node}", edges_into(node), self._node))
        slots.append(Slot("head", (), self._head))
        return tuple(slots)

    def _stem(self, state: Hashable, vals: tuple) -> tuple[list[OpSpec], Shape]:
        op = O.conv((self.batch, 3, RESOLUTION, RESOLUTION), STAGE_CHANNELS[0], 3, 1, 1, bn=True)
        return [op], op.out_shape

    @staticmethod
    def _node(state: Shape, vals: tuple) -> tuple[list[OpSpec], Shape]:
        """A node: its in-edges' ops in edge order, then one add per edge after the first."""
        blocks = [b for op in vals for b in edge_blocks(state, op)]
        return blocks + [_add(state)] * (len(vals) - 1), state

    @staticmethod
    def _reduce_fn(out: int):
        def fn(state: Shape, vals: tuple) -> tuple[list[OpSpec], Shape]:
            blocks = reduction_blocks(state, out)
            return list(blocks), blocks[-1].out_shape

        return fn

    def _head(self, state: Shape, vals: tuple) -> tuple[list[OpSpec], Shape]:
        lastact = O.batch_norm(state, act="relu")
        pool = O.pool(state, "avg", global_pool=True)
        fc = O.linear(state[0], state[1], self.num_classes, bias=True)
        return [lastact, pool, fc], fc.out_shape

    # ------------------------------------------------------------------ enumerate
    def reach(self, choices: Sequence[tuple]) -> Iterator[tuple[int, list[OpSpec]]]:
        """Every slot's blocks for every combination of the choices it reads.

        Exact here, and fast where the generic walk carries all 6 edges through 15 cells: slot
        states are the stage shapes, which no choice changes, and every combination of edge ops
        is a config of the space."""
        state: Hashable = None
        for i, slot in enumerate(self.slots):
            nxt: set = set()
            for args in itertools.product(*(choices[p] for p in slot.reads)):
                blocks, st2 = slot.fn(state, args)
                nxt.add(st2)
                yield i, blocks
            if not nxt:  # a position with no choice left: no config
                return
            if len(nxt) > 1:
                raise SpaceError(f"{self.name}: slot {slot.name!r} changes the shape with a choice")
            (state,) = nxt

    # ------------------------------------------------------------------ configs
    def largest(self) -> np.ndarray:
        """Every edge nor_conv_3x3, the dearest op (not the last choice, avg_pool_3x3)."""
        return np.full(self.n_positions, OPS.index(LARGEST_OP), dtype=np.int64)

    def from_published(self, obj: Any) -> np.ndarray:
        """An arch string, a list of 6 op names, or an index vector -> index vector."""
        if isinstance(obj, str):
            return self._parse_arch(obj)
        if isinstance(obj, (list, tuple)) and obj and all(isinstance(v, str) for v in obj):
            if len(obj) != len(EDGES):
                raise ConfigError(f"{self.name}: a list of op names has {len(EDGES)} entries "
                                  f"({', '.join(EDGE_NAMES)}), got {len(obj)}")
            return np.array([self._op_index(v, repr(list(obj))) for v in obj], dtype=np.int64)
        return self._check_index(obj)

    def to_published(self, config: Any) -> str:
        """Index vector -> the NAS-Bench-201 arch string."""
        ops = self.values(config)
        nodes = ("|" + "|".join(f"{ops[e]}~{EDGES[e][1]}" for e in edges_into(i)) + "|" for i in (1, 2, 3))
        return "+".join(nodes)

    def _op_index(self, op: str, where: str) -> int:
        if op not in OPS:
            raise ConfigError(f"{self.name}: unknown op {op!r} in {where} (ops: {', '.join(OPS)})")
        return OPS.index(op)

    def _parse_arch(self, arch: str) -> np.ndarray:
        """`|op~0|+|op~0|op~1|+|op~0|op~1|op~2|` -> index vector; errors name what is wrong."""
        def bad(what: str) -> ConfigError:
            return ConfigError(f"{self.name}: arch string {arch!r}: {what}")

        nodes = arch.strip().split("+")
        if len(nodes) != 3:
            raise bad(f"has {len(nodes)} node(s) separated by '+', expected 3: "
                      "|op~0|+|op~0|op~1|+|op~0|op~1|op~2|")
        idx: list[int] = []
        for node, part in enumerate(nodes, start=1):
            if len(part) < 2 or not (part.startswith("|") and part.endswith("|")):
                raise bad(f"node {node} is {part!r}; expected |op~input|... with each edge between '|'")
            edges = part[1:-1].split("|")
            if len(edges) != node:
                raise bad(f"node {node} has {len(edges)} edge(s), expected {node} (inputs ~0..~{node - 1})")
            for j, edge in enumerate(edges):
                op, sep, src = edge.partition("~")
                if not sep:
                    raise bad(f"edge {edge!r} of node {node} is not op~input")
                idx.append(self._op_index(op, f"arch string {arch!r}"))
                if src != str(j):
                    raise bad(f"edge {edge!r} of node {node} has input index {src!r}, expected {j} "
                              f"(node {node} lists inputs 0..{node - 1} in order)")
        return np.array(idx, dtype=np.int64)

    # ------------------------------------------------------------------ build
    def build(self, config: Any):
        """The TinyNetwork as a torch DAG (random weights, eval mode); torch imported lazily."""
        return _torch_classes().TinyNetwork(self.values(config), self.num_classes).eval()


@functools.cache
def _torch_classes():
    """The torch modules, defined once on first use so `import latbench` needs no torch."""
    from types import SimpleNamespace

    from ..errors import require

    torch = require("torch", "torch")
    nn = torch.nn

    def relu_conv_bn(cin: int, cout: int, k: int, stride: int) -> nn.Module:
        return nn.Sequential(nn.ReLU(), nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, bias=False),
                             nn.BatchNorm2d(cout))

    class Zero(nn.Module):
        """The edge `none`: its input times zero (a per-channel zero buffer, so torch.fx sees the multiply)."""

        def __init__(self, c: int):
            super().__init__()
            self.register_buffer("zero", torch.zeros(1, c, 1, 1))

        def forward(self, x):
            return x * self.zero

    class InferCell(nn.Module):
        """4-node cell: node i sums the outputs of its i in-edges."""

        def __init__(self, genotype: Sequence[str], c: int):
            super().__init__()
            self.genotype = tuple(genotype)
            self.edges = nn.ModuleDict()
            for (i, j), op in zip(EDGES, self.genotype, strict=True):
                if op.startswith("nor_conv_"):
                    self.edges[f"{i}_{j}"] = relu_conv_bn(c, c, int(op[-1]), 1)
                elif op == "avg_pool_3x3":
                    self.edges[f"{i}_{j}"] = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
                elif op == "none":
                    self.edges[f"{i}_{j}"] = Zero(c)

        def forward(self, x):
            nodes = [x]
            for i in (1, 2, 3):
                terms = []
                for e in edges_into(i):
                    j, op = EDGES[e][1], self.genotype[e]
                    terms.append(nodes[j] if op == "skip_connect" else self.edges[f"{i}_{j}"](nodes[j]))
                s = terms[0]
                for t in terms[1:]:
                    s = s + t
                nodes.append(s)
            return nodes[3]

    class ResNetBasicblock(nn.Module):
        """Stride-2 reduction: relu-conv-bn twice, shortcut avg-pool + 1x1 conv, added."""

        def __init__(self, cin: int, cout: int):
            super().__init__()
            self.conv_a = relu_conv_bn(cin, cout, 3, 2)
            self.conv_b = relu_conv_bn(cout, cout, 3, 1)
            self.downsample = nn.Sequential(nn.AvgPool2d(2, 2, 0), nn.Conv2d(cin, cout, 1, bias=False))

        def forward(self, x):
            y = self.conv_b(self.conv_a(x))
            return self.downsample(x) + y

    class TinyNetwork(nn.Module):
        """Stem, 3 stages of 5 cells with 2 reductions between them, lastact, pool, classifier."""

        def __init__(self, genotype: Sequence[str], num_classes: int = 10):
            super().__init__()
            c0 = STAGE_CHANNELS[0]
            self.stem = nn.Sequential(nn.Conv2d(3, c0, 3, padding=1, bias=False), nn.BatchNorm2d(c0))
            cells: list[nn.Module] = []
            for s, c in enumerate(STAGE_CHANNELS):
                if s:
                    cells.append(ResNetBasicblock(STAGE_CHANNELS[s - 1], c))
                cells += [InferCell(genotype, c) for _ in range(CELLS_PER_STAGE)]
            self.cells = nn.ModuleList(cells)
            c_last = STAGE_CHANNELS[-1]
            self.lastact = nn.Sequential(nn.BatchNorm2d(c_last), nn.ReLU())
            self.global_pooling = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Linear(c_last, num_classes)

        def forward(self, x):
            x = self.stem(x)
            for cell in self.cells:
                x = cell(x)
            x = self.global_pooling(self.lastact(x))
            return self.classifier(torch.flatten(x, 1))

    return SimpleNamespace(InferCell=InferCell, ResNetBasicblock=ResNetBasicblock, TinyNetwork=TinyNetwork)

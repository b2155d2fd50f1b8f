"""FBNet as HW-NAS-Bench times it (`hw_nas_bench_api/fbnet_models/model_infer.py`, FBNet-v1 macro
architecture, the official ImageNet setting): 224x224 input, batch 1, 1000 classes.

Stem conv 3x3 3->16 stride 2 + BN + ReLU; 22 searchable layers in stages of [1, 4, 4, 4, 4, 4, 1]
layers with [16, 24, 32, 64, 112, 184, 352] channels and strides [1, 2, 2, 2, 1, 2, 1] (a stage's
first layer takes the stride and the previous stage's channels); head conv 1x1 352->1984 + BN +
ReLU, global average pool, linear 1984->1000.

Each layer picks one of CHOICES. A ConvBlock (k, e, g) is latbench's mbconv: 1x1 expansion to
c*e channels (present even for e=1) in g groups + BN + ReLU, a channel shuffle when g > 1,
depthwise kxk + BN + ReLU, 1x1 projection in g groups + BN, a residual add when the shape is
kept. `skip` is no op at all where the shape is kept, else a 1x1 conv (the stride) + BN + ReLU.

A config is 22 choice indices (0-8), or the space-separated string HW-NAS-Bench and HELP use,
e.g. "7 8 1 8 4 8 8 8 7 4 1 4 7 3 2 7 3 2 4 2 4 5".
"""
from __future__ import annotations

from typing import Any, Hashable

import numpy as np

from .. import ops as O
from ..errors import ConfigError
from ..ops import OpSpec
from .base import Position, SearchSpace, Slot

# (kernel, expansion, groups) per choice, in HW-NAS-Bench's PRIMITIVES order; None is `skip`
CHOICES = ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip")
BLOCKS: dict[str, tuple[int, int, int] | None] = {
    "k3_e1": (3, 1, 1), "k3_e1_g2": (3, 1, 2), "k3_e3": (3, 3, 1), "k3_e6": (3, 6, 1),
    "k5_e1": (5, 1, 1), "k5_e1_g2": (5, 1, 2), "k5_e3": (5, 3, 1), "k5_e6": (5, 6, 1), "skip": None,
}
LAYERS = (1, 4, 4, 4, 4, 4, 1)
CHANNELS = (16, 24, 32, 64, 112, 184, 352)
STRIDES = (1, 2, 2, 2, 1, 2, 1)
STEM, HEAD, CLASSES, RESOLUTION = 16, 1984, 1000, 224
N_LAYERS = sum(LAYERS)
Shape = tuple[int, int, int, int]


def layer_block(shape: Shape, out: int, stride: int, choice: str) -> list[OpSpec]:
    """The blocks of one searchable layer on a `shape` input (HW-NAS-Bench ConvBlock / Skip)."""
    spec = BLOCKS[choice]
    c = shape[1]
    if spec is None:
        if stride == 1 and c == out:
            return []  # an identity: nothing runs
        return [O.conv(shape, out, 1, stride, bn=True, act="relu")]
    k, e, g = spec
    return [O.mbconv(shape, out, c * e, k, stride, "relu", residual=(stride == 1 and c == out),
                     expand_conv=True, groups=g)]


class FBNet(SearchSpace):
    """FBNet (HW-NAS-Bench, ImageNet): positions layer0..layer21, each one of CHOICES; 9**22 configs.

    smallest() is `skip` everywhere: the fewest ops on every layer, and the fewest FLOPs on all but
    the first layers of stages 4 and 6 (stride 1, channels change), where the g2 blocks' grouped
    convs count 11% (layer13: k3) and 16-21% (layer21: k5, k3) fewer FLOPs than skip's one 1x1 conv,
    in four kernels to its one. largest() is `k5_e6` everywhere, the most FLOPs on every layer.
    Choice order is not cost order."""

    name = "fbnet"
    description = "FBNet (HW-NAS-Bench, ImageNet 224): 22 layers x 9 blocks (k3/k5, e1/e3/e6, g2, skip)"
    fixed_resolution = RESOLUTION

    def __init__(self) -> None:
        self.positions = tuple(Position(f"layer{i}", CHOICES) for i in range(N_LAYERS))
        self.slots = self._make_slots()

    # ------------------------------------------------------------------ network definition
    def _make_slots(self) -> tuple[Slot, ...]:
        slots = [Slot("stem", (), self._stem)]
        i = 0
        for s, (n, out, stride) in enumerate(zip(LAYERS, CHANNELS, STRIDES)):
            for j in range(n):
                slots.append(Slot(f"stage{s}.layer{j}", (i,), self._layer_fn(out, stride if j == 0 else 1)))
                i += 1
        slots.append(Slot("head", (), self._head))
        return tuple(slots)

    def _stem(self, state: Hashable, vals: tuple) -> tuple[list[OpSpec], Shape]:
        op = O.conv((self.batch, 3, RESOLUTION, RESOLUTION), STEM, 3, 2, 1, bn=True, act="relu")
        return [op], op.out_shape

    @staticmethod
    def _layer_fn(out: int, stride: int):
        def fn(state: Shape, vals: tuple) -> tuple[list[OpSpec], Shape]:
            blocks = layer_block(state, out, stride, vals[0])
            n, _, h, w = state
            return blocks, blocks[-1].out_shape if blocks else (n, out, h, w)

        return fn

    @staticmethod
    def _head(state: Shape, vals: tuple) -> tuple[list[OpSpec], Hashable]:
        conv = O.conv(state, HEAD, 1, bn=True, act="relu")
        pool = O.pool(conv.out_shape, "avg", global_pool=True)
        fc = O.linear(state[0], HEAD, CLASSES, bias=True)
        return [conv, pool, fc], fc.out_shape

    # ------------------------------------------------------------------ extremes
    def smallest(self) -> np.ndarray:
        return np.full(N_LAYERS, CHOICES.index("skip"), dtype=np.int64)

    def largest(self) -> np.ndarray:
        return np.full(N_LAYERS, CHOICES.index("k5_e6"), dtype=np.int64)

    # ------------------------------------------------------------------ published forms
    def from_published(self, obj: Any) -> np.ndarray:
        """22 choice indices as a list/tuple/array of ints, or HW-NAS-Bench's space-separated string."""
        if isinstance(obj, str):
            items: list[Any] = obj.split()
            what = "tokens"
        elif isinstance(obj, np.ndarray) and obj.ndim != 1:
            raise ConfigError(f"{self.name}: a config is one row of {N_LAYERS} choice indices, got an array "
                              f"of shape {obj.shape}")
        elif isinstance(obj, (list, tuple, np.ndarray)):
            items, what = list(obj), "entries"
        else:
            raise ConfigError(f"{self.name}: a config is {N_LAYERS} choice indices 0-8 (a list, or a "
                              f"space-separated string like HW-NAS-Bench's), got {type(obj).__name__}")
        if len(items) != N_LAYERS:
            raise ConfigError(f"{self.name}: a config has {N_LAYERS} layers (indices 0-8), got {len(items)} {what}")
        idx = []
        for i, v in enumerate(items):
            if isinstance(v, str) and v.strip().isdigit():
                v = int(v)
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise ConfigError(f"{self.name}: layer{i} is {v!r}, not a choice index 0-8")
            if not 0 <= v < len(CHOICES):
                raise ConfigError(f"{self.name}: layer{i} has index {v}; choices are 0-8 "
                                  f"({', '.join(f'{j} {c}' for j, c in enumerate(CHOICES))})")
            idx.append(int(v))
        return np.array(idx, dtype=np.int64)

    def to_published(self, config: Any) -> list[int]:
        return [int(v) for v in self.index(config)]

    def config_string(self, config: Any) -> str:
        """The config as HW-NAS-Bench / HELP write it: the 22 indices separated by spaces."""
        return " ".join(str(v) for v in self.to_published(config))

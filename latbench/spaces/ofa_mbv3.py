"""Once-for-All's MobileNetV3 supernet (OFAMobileNetV3 in mit-han-lab/once-for-all).

Width 1.0 or 1.2; per block kernel {3,5,7} and expand ratio {3,4,6}; per stage depth {2,3,4};
input resolution 128..224 step 4. Configs in OFA's {"ks": [20], "e": [20], "d": [5], "r": [int]}.
Block keys are OFA's LatencyTable keys (Conv, expanded_conv, Conv_1, AvgPool2D, Conv_2, Logits).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import ops as O
from ..errors import ConfigError
from .base import Position, SearchSpace, Slot

BASE_STAGE_WIDTH = (16, 16, 24, 40, 80, 112, 160, 960, 1280)
STRIDES = (1, 2, 2, 2, 1, 2)
ACTS = ("relu", "relu", "relu", "hswish", "hswish", "hswish")
SE = (False, False, True, False, True, True)
KS = (3, 5, 7)
EXPAND = (3, 4, 6)
DEPTH = (2, 3, 4)
RESOLUTIONS = tuple(range(128, 225, 4))
N_STAGES, MAX_DEPTH = 5, 4
N_BLOCKS = N_STAGES * MAX_DEPTH
_INDEX = {name: {v: i for i, v in enumerate(ch)}
          for name, ch in (("ks", KS), ("e", EXPAND), ("d", DEPTH), ("r", RESOLUTIONS))}


def _is_choice(lookup: dict, v: Any) -> bool:
    try:
        return v in lookup
    except TypeError:  # unhashable (a list)
        return False


class OFAMobileNetV3(SearchSpace):
    """OFA MobileNetV3 at a width multiplier; positions ks0..19, e0..19, d0..4, r."""

    def __init__(self, width_mult: float = 1.0, n_classes: int = 1000):
        tag = f"w{int(round(width_mult * 10)):02d}"
        self.name = f"ofa-mbv3-{tag}"
        self.description = f"Once-for-All MobileNetV3, width {width_mult}, ks/e/d elastic, r 128..224"
        self.width_mult = width_mult
        self.n_classes = n_classes
        widths = [O.make_divisible(b * width_mult, 8) for b in BASE_STAGE_WIDTH[:-2]]
        self.stem_width, self.first_block_width = widths[0], widths[1]
        self.stage_widths = tuple(widths[2:])
        self.final_expand_width = O.make_divisible(BASE_STAGE_WIDTH[-2] * width_mult, 8)
        self.last_channel = O.make_divisible(BASE_STAGE_WIDTH[-1] * width_mult, 8)
        self.positions = (
            tuple(Position(f"ks{i}", KS) for i in range(N_BLOCKS))
            + tuple(Position(f"e{i}", EXPAND) for i in range(N_BLOCKS))
            + tuple(Position(f"d{i}", DEPTH) for i in range(N_STAGES))
            + (Position("r", RESOLUTIONS),)
        )
        self.resolution_position = len(self.positions) - 1
        self.slots = self._make_slots()

    # ------------------------------------------------------------------ network definition
    def _make_slots(self) -> tuple[Slot, ...]:
        r_pos = self.resolution_position
        slots = [
            Slot("first_conv", (r_pos,), self._stem),
            Slot("first_block", (), self._first_block),
        ]
        for s in range(N_STAGES):
            for j in range(MAX_DEPTH):
                b = s * MAX_DEPTH + j
                slots.append(Slot(f"stage{s}.block{j}", (b, N_BLOCKS + b, 2 * N_BLOCKS + s),
                                  self._block_fn(s, j)))
        slots += [
            Slot("final_expand_layer", (), self._final_expand),
            Slot("pool", (), self._pool),
            Slot("feature_mix_layer", (), self._feature_mix),
            Slot("classifier", (), self._classifier),
        ]
        return tuple(slots)

    def _stem(self, state, vals):
        (r,) = vals
        op = O.conv((self.batch, 3, r, r), self.stem_width, 3, 2, bn=True, act="hswish", role="Conv")
        return [op], op.out_shape

    def _first_block(self, state, vals):
        n, c, h, w = state
        out = self.first_block_width
        op = O.mbconv(state, out, c, 3, STRIDES[0], ACTS[0], residual=(c == out), expand_conv=False)
        return [op], op.out_shape

    def _block_fn(self, s: int, j: int):
        out = self.stage_widths[s]
        stride = STRIDES[s + 1] if j == 0 else 1
        act, use_se = ACTS[s + 1], SE[s + 1]

        def fn(state, vals):
            ks, e, d = vals
            if j >= d:
                return [], state
            c = state[1]
            mid = O.make_divisible(round(c * e), 8)
            se = O.make_divisible(mid // 4, 8) if use_se else 0
            op = O.mbconv(state, out, mid, ks, stride, act, se=se,
                          residual=(stride == 1 and c == out))
            return [op], op.out_shape

        return fn

    def _final_expand(self, state, vals):
        op = O.conv(state, self.final_expand_width, 1, bn=True, act="hswish", role="Conv_1")
        return [op], op.out_shape

    def _pool(self, state, vals):
        op = O.pool(state, "avg", global_pool=True, role="AvgPool2D")
        return [op], op.out_shape

    def _feature_mix(self, state, vals):
        op = O.conv(state, self.last_channel, 1, act="hswish", role="Conv_2")
        return [op], op.out_shape

    def _classifier(self, state, vals):
        op = O.linear(state[0], state[1], self.n_classes, bias=True, role="Logits")
        return [op], op.out_shape

    # ------------------------------------------------------------------ size
    @property
    def size(self) -> int:
        """Distinct subnets: ks/e of blocks beyond a stage's depth do not change the network."""
        per_stage = sum((len(KS) * len(EXPAND)) ** d for d in DEPTH)
        return per_stage**N_STAGES * len(RESOLUTIONS)

    # ------------------------------------------------------------------ published form
    def from_published(self, obj: Any) -> np.ndarray:
        if not isinstance(obj, dict):
            return self._check_index(obj)
        missing = [k for k in ("ks", "e", "d", "r") if k not in obj]
        if missing:  # r too: the space has 25 resolutions, none of them a default
            raise ConfigError(f"{self.name}: config lacks {', '.join(missing)} (expects ks, e, d, r; "
                              f"r is the input resolution, one of 128..224 step 4)")
        r = obj["r"]
        r = r[0] if isinstance(r, (list, tuple)) and len(r) == 1 else r
        parts = [("ks", KS, N_BLOCKS), ("e", EXPAND, N_BLOCKS), ("d", DEPTH, N_STAGES)]
        idx: list[int] = []
        for name, choices, length in parts:
            vals = obj[name]
            if not isinstance(vals, (list, tuple)) or len(vals) != length:
                got = f"{len(vals)} values" if isinstance(vals, (list, tuple)) else f"{type(vals).__name__} {vals!r}"
                raise ConfigError(f"{self.name}: {name!r} must be a list of {length} values, got {got}")
            lookup = _INDEX[name]  # any number equal to a choice hashes to it: 3, 3.0, numpy's 3
            try:
                idx.extend([lookup[v] for v in vals])
            except (KeyError, TypeError):  # the slow path only names the first bad entry
                i, v = next((i, v) for i, v in enumerate(vals) if not _is_choice(lookup, v))
                raise ConfigError(f"{self.name}: {name}[{i}]={v!r} is not one of {list(choices)}") from None
        if not _is_choice(_INDEX["r"], r):
            raise ConfigError(f"{self.name}: r={r!r} is not one of 128..224 step 4")
        idx.append(_INDEX["r"][r])
        return np.array(idx, dtype=np.int64)

    def to_published(self, config: Any) -> dict:
        v = self.values(config)
        return {
            "ks": list(v[:N_BLOCKS]),
            "e": list(v[N_BLOCKS:2 * N_BLOCKS]),
            "d": list(v[2 * N_BLOCKS:2 * N_BLOCKS + N_STAGES]),
            "r": [v[-1]],
        }

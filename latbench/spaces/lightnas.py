"""PaddleSlim's LightNAS space: a MobileNetV2 with 5 searchable bottleneck stages of 6 tokens each.

Mirrors PaddleSlim's light_nas_space.py / light_nasnet.py (the demo LightNASSpace): per stage the
tokens (multiplier t, filters c, layers n, kernel k, shortcut, se), 30 tokens in all; a config's
index vector IS PaddleSlim's token list. Input fixed at 3x224x224, 1000 classes.

The classifier is what PaddleSlim's LightNAS `get_all_ops` lists for it: the fc as a 1x1 conv
without bias (`conv 0 0 1 1280 1 1 1000 1 1 0 1 1`), its bias as an eltwise add
(`eltwise 2 1 1000 1 1`) and the softmax (`softmax -1 1 1000 1 1`), so its PaddleSlim op list
holds only ops PaddleSlim's tools know, and a table profiled from that list prices every subnet.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import ops as O
from ..errors import ConfigError
from .base import Position, SearchSpace, Slot

NAS_FILTER_SIZE = ((18, 24, 30), (24, 32, 40), (48, 64, 80), (72, 96, 120), (120, 160, 192))
NAS_LAYERS_NUMBER = ((1, 2, 3), (2, 3, 4), (3, 4, 5), (2, 3, 4), (2, 3, 4))
NAS_KERNEL_SIZE = (3, 5)
NAS_FILTERS_MULTIPLIER = (3, 4, 5, 6)
NAS_SHORTCUT = (0, 1)
NAS_SE = (0, 1)
TOKEN_NAMES = ("t", "c", "n", "k", "shortcut", "se")
SEARCH_STRIDES = (2, 2, 2, 1, 2)
INIT_TOKENS = (3, 1, 1, 0, 1, 0) * 5
# (t, c, n, s, k, ifshortcut, ifse) of the fixed first and last bottleneck settings
FIRST_SETTING = (1, 16, 1, 1, 3, 1, 0)
LAST_SETTING = (6, 320, 1, 1, 3, 1, 0)
STEM_CHANNELS, LAST_CHANNELS, N_CLASSES, RESOLUTION = 32, 1280, 1000, 224
N_STAGES = 5


class LightNASSpace(SearchSpace):
    """LightNAS token space; positions s{i}.t, s{i}.c, s{i}.n, s{i}.k, s{i}.shortcut, s{i}.se."""

    name = "lightnas"
    description = "PaddleSlim LightNAS MobileNetV2 token space (30 tokens, 224x224, relu6, SE on block output)"
    fixed_resolution = RESOLUTION

    def __init__(self) -> None:
        table = (NAS_FILTERS_MULTIPLIER, None, None, NAS_KERNEL_SIZE, NAS_SHORTCUT, NAS_SE)
        positions = []
        for s in range(N_STAGES):
            per_stage = list(table)
            per_stage[1], per_stage[2] = NAS_FILTER_SIZE[s], NAS_LAYERS_NUMBER[s]
            positions += [Position(f"s{s}.{t}", tuple(ch)) for t, ch in zip(TOKEN_NAMES, per_stage)]
        self.positions = tuple(positions)
        self.slots = self._make_slots()

    # ------------------------------------------------------------------ tokens
    def init_tokens(self) -> list[int]:
        """PaddleSlim's init_tokens: the MobileNetV2 defaults (t=6, c=24..160, n=2,3,4,3,3, k=3)."""
        return list(INIT_TOKENS)

    def range_table(self) -> list[int]:
        """PaddleSlim's range_table: the number of choices of each token."""
        return [int(v) for v in self.cardinalities]

    # ------------------------------------------------------------------ network definition
    def _make_slots(self) -> tuple[Slot, ...]:
        slots = [Slot("conv1", (), self._stem)]
        slots += self._setting_slots("bottleneck0", FIRST_SETTING, None)
        for s in range(N_STAGES):
            slots += self._setting_slots(f"bottleneck{s + 1}", None, s)
        slots += self._setting_slots(f"bottleneck{N_STAGES + 1}", LAST_SETTING, None)
        slots += [Slot("conv9", (), self._last_conv), Slot("pool", (), self._pool),
                  Slot("fc", (), self._fc)]
        return tuple(slots)

    def _setting_slots(self, name: str, fixed: tuple | None, stage: int | None) -> list[Slot]:
        """One slot per unit of `invresi_blocks`: a fixed setting, or a searchable stage's tokens."""
        if fixed is not None:
            return [Slot(f"{name}.unit{j}", (), self._unit_fn(j, fixed, None)) for j in range(fixed[2])]
        reads = tuple(range(6 * stage, 6 * stage + 6))
        max_n = max(NAS_LAYERS_NUMBER[stage])
        return [Slot(f"{name}.unit{j}", reads, self._unit_fn(j, None, stage)) for j in range(max_n)]

    def _unit_fn(self, j: int, fixed: tuple | None, stage: int | None):
        def fn(state, vals):
            if fixed is not None:
                t, c, n, s, k, ifshortcut, ifse = fixed
            else:
                t, c, n, k, ifshortcut, ifse = vals
                s = SEARCH_STRIDES[stage]
            if j >= n:
                return [], state
            c_in = state[1]
            op = O.mbconv(state, c, int(round(c_in * t)), k, s if j == 0 else 1, "relu6",
                          se=c // 4 if ifse else 0, se_act="sigmoid", se_pos="out",
                          residual=bool(ifshortcut) and j > 0, expand_conv=True)
            return [op], op.out_shape

        return fn

    def _stem(self, state, vals):
        op = O.conv((self.batch, 3, RESOLUTION, RESOLUTION), STEM_CHANNELS, 3, 2, 1, bn=True, act="relu6")
        return [op], op.out_shape

    def _last_conv(self, state, vals):
        op = O.conv(state, LAST_CHANNELS, 1, bn=True, act="relu6")
        return [op], op.out_shape

    def _pool(self, state, vals):
        op = O.pool(state, "avg", global_pool=True)
        return [op], op.out_shape

    def _fc(self, state, vals):
        """PaddleSlim's fc (a 1x1 conv, then the bias added) and the softmax of the logits."""
        fc = O.conv(state, N_CLASSES, 1)
        logits = fc.out_shape
        return [fc, O.eltwise(logits, "add"), O.softmax(logits, axis=1)], logits

    # ------------------------------------------------------------------ size
    @property
    def size(self) -> int:
        """Distinct networks, exactly: the shortcut token changes nothing when a stage has n=1
        (the first unit never has a shortcut); every other token always changes the network."""
        total = 1
        for s in range(N_STAGES):
            other = len(NAS_FILTERS_MULTIPLIER) * len(NAS_FILTER_SIZE[s]) * len(NAS_KERNEL_SIZE) * len(NAS_SE)
            total *= other * sum(len(NAS_SHORTCUT) if n > 1 else 1 for n in NAS_LAYERS_NUMBER[s])
        return total

    # ------------------------------------------------------------------ published form
    def from_published(self, obj: Any) -> np.ndarray:
        """PaddleSlim's token list (30 ints, each below its range_table entry) -> index vector."""
        if isinstance(obj, dict):
            raise ConfigError(f"{self.name}: a config is PaddleSlim's list of 30 tokens, not a dict")
        plain = (obj.dtype.kind in "iu" if isinstance(obj, np.ndarray)
                 else isinstance(obj, (list, tuple)) and all(type(v) is int for v in obj))  # the fast common case
        if not plain and isinstance(obj, (list, tuple, np.ndarray)):
            for p, v in zip(self.positions, np.asarray(obj, dtype=object).ravel()):
                if not _is_int(v):
                    shown = v.item() if isinstance(v, np.generic) else v
                    raise ConfigError(f"{self.name}: position {p.name!r} holds {shown!r}, not an integer token")
        return self._check_index(obj)

    def to_published(self, config: Any) -> list[int]:
        """Index vector -> PaddleSlim token list (the same integers)."""
        return [int(v) for v in self.index(config)]


def _is_int(v: Any) -> bool:
    """An integer token: an int (numpy's too) or a float equal to one; never a bool."""
    if isinstance(v, (bool, np.bool_)):
        return False
    if isinstance(v, (int, np.integer)):
        return True
    return isinstance(v, (float, np.floating)) and float(v).is_integer()

"""SuperNet: one shared-weight network for any latbench SearchSpace, built from the space's slots.

Every slot position (slot, j-th block the slot adds) becomes one dynamic block sized for the largest
OpSpec any config puts there. `set_active(config)` selects a subnet; the forward then computes
exactly `space.build(config)`'s function with the shared weights, and `export_module(config)`
returns that very module with the weights copied out (channels sliced, kernels transformed).
"""
from __future__ import annotations

import logging
import re
from typing import Any, Hashable, Sequence

import numpy as np

from ..errors import ConfigError, SpaceError, require
from ..ops import OpSpec
from ..spaces.base import SearchSpace
from .blocks import block_for

torch = require("torch", "torch")
nn = torch.nn
Tensor = torch.Tensor

log = logging.getLogger("latbench.supernet")

TASKS = ("kernel_size", "depth", "width", "resolution", "other")


def slot_variants(space: SearchSpace) -> list[list[list[OpSpec]]]:
    """For each slot, for each block it can add, every distinct OpSpec any config puts there.

    Walks the reachable slot states with `SearchSpace.reach` (never the subnets), at the
    smallest resolution only: weights do not depend on the feature-map size.
    """
    choices = [tuple(p.choices) for p in space.positions]
    if space.resolution_position is not None:
        choices[space.resolution_position] = (min(choices[space.resolution_position]),)
    found: list[list[dict[OpSpec, None]]] = [[] for _ in space.slots]
    for i, blocks in space.reach(choices):
        for j, b in enumerate(blocks):
            while len(found[i]) <= j:
                found[i].append({})
            found[i][j][b] = None
    return [[list(d) for d in per_slot] for per_slot in found]


def position_task(space: SearchSpace, i: int) -> str:
    """Which elastic dimension position i is: kernel_size, depth, width, resolution or other."""
    if i == space.resolution_position:
        return "resolution"
    name = space.positions[i].name
    last = name.rsplit(".", 1)[-1]
    if last == "kernel" or re.fullmatch(r"ks\d+", name):
        return "kernel_size"
    if last == "depth" or re.fullmatch(r"d\d+", name):
        return "depth"
    if last in ("expand", "out", "width", "channels") or re.fullmatch(r"e\d+", name):
        return "width"
    return "other"


class SuperNet(nn.Module):
    """Shared-weight supernet of a SearchSpace; `set_active(config)` picks the subnet to run.

    `transform` chooses which elastic-kernel convs get OFA's kernel transform matrices:
    "depthwise" (Once-for-All), "all", or "none" (centre crop only, as BigNAS).
    """

    def __init__(self, space: SearchSpace | str, transform: str = "depthwise"):
        super().__init__()
        if isinstance(space, str):
            from ..spaces import get_space

            space = get_space(space)
        self.space = space
        self.transform = transform
        self.blocks = nn.ModuleList()
        self._index: dict[tuple[int, int], int] = {}
        for i, per_slot in enumerate(slot_variants(space)):
            for j, variants in enumerate(per_slot):
                self._index[(i, j)] = len(self.blocks)
                where = f"{space.name}: slot {space.slots[i].name!r}" + (f" block {j}" if j else "")
                self.blocks.append(block_for(variants, where, transform))
        self.tasks = tuple(position_task(space, i) for i in range(space.n_positions))
        self.config = space.largest()
        self._active: list[tuple[int, OpSpec]] = []
        self.set_active(self.config)
        # one entry per sort_channels() call (plain attribute: not state, not checkpointed)
        self.channel_sort_log: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ subnet selection
    def active_ops(self, config: Any) -> list[tuple[int, OpSpec]]:
        """(block index, OpSpec) of every block the config runs, in order."""
        vals = self.space.values(config)
        state: Hashable = None
        out: list[tuple[int, OpSpec]] = []
        for i, slot in enumerate(self.space.slots):
            ops, state = slot.fn(state, tuple(vals[p] for p in slot.reads))
            for j, op in enumerate(ops):
                idx = self._index.get((i, j))
                if idx is None:
                    raise ConfigError(f"{self.space.name}: slot {slot.name!r} adds a block the supernet lacks")
                out.append((idx, op))
        return out

    def set_active(self, config: Any) -> np.ndarray:
        """Select the subnet `config` (index vector or the space's published form); returns its index."""
        self.config = self.space.index(config)
        self._active = self.active_ops(self.config)
        return self.config

    @property
    def active(self) -> list[OpSpec]:
        return [op for _, op in self._active]

    @property
    def resolution(self) -> int:
        """Input resolution of the active subnet."""
        return self._active[0][1].h

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        n, c, h, w = self._active[0][1].in_shape
        return (batch, c, h, w)

    def sample(self, rng: np.random.Generator, n: int = 1) -> np.ndarray:
        return self.space.sample(rng, n)

    # ------------------------------------------------------------------ compute
    def forward(self, x: Tensor) -> Tensor:
        """The active subnet's logits, (N, classes): a softmax that ends the network (LightNAS's,
        which PaddleSlim's op list prices) belongs to inference, as export_module builds it, and
        not to the training loss, which takes logits."""
        active = self._active
        if active and active[-1][1].kind == "softmax":
            active = active[:-1]
        for idx, op in active:
            x = self.blocks[idx](x, op)
        return x.flatten(1) if x.dim() == 4 and x.shape[2:] == (1, 1) else x

    def sort_channels(self, expand_ratio_stage: int = 0, optimizer: Any = None, **info: Any) -> int:
        """Once-for-All's channel importance sorting (`re_organize_middle_weights`), which its
        progressive shrinking runs at the start of every elastic-width phase: every block's inner
        width that no residual ties (MBConv expanded channels with their SE, a bottleneck's mid
        channels, a basic block's first conv outputs) is re-sorted by importance, descending, so
        that the first k channels a smaller width keeps are the most important ones. The largest
        subnet computes the same function before and after (the permutation is a symmetry).

        Widths that meet in a residual add (block outputs, stems, heads) stay as they are: sorting
        them would need one permutation on every block of a stage and on what reads it.
        `expand_ratio_stage` s > 0 sorts within the buckets cut by the s + 1 largest inner widths of
        each block, as OFA does from its second width phase on. `optimizer`: its per-parameter
        state (momentum) is permuted alike. `info` (e.g. task, phase, epoch) goes into the entry
        appended to `channel_sort_log`. Returns the number of blocks re-sorted.
        """
        state = getattr(optimizer, "state", None)
        n = 0
        for block in self.blocks:
            fn = getattr(block, "sort_channels", None)
            if fn is not None and fn(expand_ratio_stage, state) not in (None, []):
                n += 1
        self.channel_sort_log.append({"expand_ratio_stage": int(expand_ratio_stage), "blocks": n, **info})
        log.info("%s: sorted the inner channels of %d blocks by importance (expand_ratio_stage %d%s)",
                 self.space.name, n, expand_ratio_stage, "".join(f", {k} {v}" for k, v in info.items()))
        return n

    def block_names(self) -> list[str]:
        """Module names of the active blocks (for distillation mapping layers)."""
        return [f"blocks.{idx}" for idx, _ in self._active]

    # ------------------------------------------------------------------ export
    def export_module(self, config: Any = None) -> "nn.Sequential":
        """The subnet as `space.build(config)` (torch_build modules) with weights copied out."""
        config = self.config if config is None else self.space.index(config)
        ops = self.active_ops(config)
        static = self.space.build(config)
        if len(static) != len(ops):
            raise SpaceError(f"{self.space.name}: build() made {len(static)} modules for {len(ops)} blocks")
        with torch.no_grad():
            for module, (idx, op) in zip(static, ops):
                state = {k: v.detach().clone() for k, v in self.blocks[idx].export_state(op).items()}
                module.load_state_dict(state, strict=True)
        return static.eval()

    def describe(self) -> dict[str, Any]:
        return {"space": self.space.name, "blocks": len(self.blocks), "transform": self.transform,
                "params": sum(p.numel() for p in self.parameters())}


def task_positions(tasks: Sequence[str]) -> dict[str, list[int]]:
    """Positions grouped by task."""
    out: dict[str, list[int]] = {}
    for i, t in enumerate(tasks):
        out.setdefault(t, []).append(i)
    return out


__all__ = ["SuperNet", "slot_variants", "position_task", "task_positions", "TASKS"]

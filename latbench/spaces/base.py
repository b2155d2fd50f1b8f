"""SearchSpace: named positions with choices, and a chain of slots that turns a config into blocks.

A space is defined once, as slots; decode, enumerate and build all read the same definition:
- decode folds the slots over one config;
- enumerate propagates the *set* of reachable slot states over the per-position choices, so it
  never walks the (astronomical) set of subnets and never invents an op no config uses;
- build turns the decoded blocks into torch modules (latbench.spaces.torch_build).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterator, Sequence

import numpy as np

from .. import ops as O
from ..errors import ConfigError, UsageError
from ..ops import OpSpec

GRANULARITIES = ("op", "block")

# A slot reads some positions' values and the running state (e.g. the feature-map shape) and
# returns the blocks it adds and the next state. States must be hashable.
SlotFn = Callable[[Hashable, tuple], "tuple[list[OpSpec], Hashable]"]


@dataclass(frozen=True)
class Position:
    """One searchable decision: its name and the values it may take (a config holds indices)."""

    name: str
    choices: tuple


@dataclass(frozen=True)
class Slot:
    """One step of the network: `fn(state, values of reads) -> (blocks, next state)`."""

    name: str
    reads: tuple[int, ...]
    fn: SlotFn


class SearchSpace:
    """Base class. Subclasses set `name`, `positions`, `slots` and the published-form converters.

    Configs are integer index vectors (one choice index per position); every method that takes a
    config also accepts the space's published form (e.g. OFA's {"ks","e","d","r"} dict).
    """

    name: str = ""
    description: str = ""
    positions: tuple[Position, ...] = ()
    slots: tuple[Slot, ...] = ()
    resolution_position: int | None = None  # index of the position holding the input resolution
    fixed_resolution: int | None = None  # for spaces whose input size is not searchable
    batch: int = 1

    # ------------------------------------------------------------------ size and resolutions
    @property
    def n_positions(self) -> int:
        return len(self.positions)

    @property
    def cardinalities(self) -> np.ndarray:
        return np.array([len(p.choices) for p in self.positions], dtype=np.int64)

    @property
    def size(self) -> int:
        """Number of distinct configs (index vectors); subclasses with tied positions override."""
        total = 1
        for p in self.positions:
            total *= len(p.choices)
        return total

    @property
    def resolutions(self) -> tuple[int, ...]:
        if self.resolution_position is None:
            return (self.fixed_resolution,) if self.fixed_resolution else ()
        return tuple(self.positions[self.resolution_position].choices)

    def check_resolutions(self, resolutions: Sequence[int] | None) -> tuple[int, ...]:
        allowed = self.resolutions
        if not resolutions:
            return allowed
        bad = [r for r in resolutions if r not in allowed]
        if bad:
            raise UsageError(
                f"resolution {bad[0]} is not in space {self.name!r}; allowed: "
                + ", ".join(str(r) for r in allowed)
            )
        return tuple(dict.fromkeys(int(r) for r in resolutions))

    # ------------------------------------------------------------------ configs
    def from_published(self, obj: Any) -> np.ndarray:
        """Published config form -> index vector. Subclasses override."""
        return self._check_index(obj)

    def to_published(self, config: Any) -> Any:
        """Index vector -> the published config form. Subclasses override."""
        return [int(v) for v in self.index(config)]

    def index(self, config: Any) -> np.ndarray:
        """Any accepted config form -> validated index vector."""
        if isinstance(config, np.ndarray) and config.dtype.kind in "iu" and config.ndim == 1:
            return self._check_index(config)
        return self.from_published(config)

    def _check_index(self, idx: Any) -> np.ndarray:
        try:
            arr = np.asarray(idx, dtype=np.int64)
        except (TypeError, ValueError):
            raise ConfigError(f"{self.name}: a config must be a list of integers or the published form") from None
        if arr.ndim != 1 or arr.shape[0] != self.n_positions:
            raise ConfigError(
                f"{self.name}: a config has {self.n_positions} positions, got shape {tuple(arr.shape)}"
            )
        card = self.cardinalities
        bad = np.nonzero((arr < 0) | (arr >= card))[0]
        if bad.size:
            i = int(bad[0])
            raise ConfigError(
                f"{self.name}: position {self.positions[i].name!r} has {card[i]} choices, got index {arr[i]}"
            )
        return arr

    def values(self, config: Any) -> list:
        idx = self.index(config)
        return [p.choices[i] for p, i in zip(self.positions, idx)]

    def sample(self, rng: np.random.Generator | int | None, n: int) -> np.ndarray:
        """n uniform random configs as an int64 array (n, positions)."""
        rng = np.random.default_rng(rng)
        card = self.cardinalities
        return (rng.random((n, card.size)) * card).astype(np.int64)

    def smallest(self) -> np.ndarray:
        """The config with every position at its first choice (subclasses may order choices so
        that this is the cheapest)."""
        return np.zeros(self.n_positions, dtype=np.int64)

    def largest(self) -> np.ndarray:
        return self.cardinalities - 1

    # ------------------------------------------------------------------ decode
    def blocks(self, config: Any) -> list[OpSpec]:
        """The config's network as block-level OpSpecs, in execution order."""
        vals = self.values(config)
        state: Hashable = None
        out: list[OpSpec] = []
        for slot in self.slots:
            b, state = slot.fn(state, tuple(vals[p] for p in slot.reads))
            out.extend(b)
        return out

    def decode(self, config: Any, granularity: str = "op") -> list[OpSpec]:
        """The config's OpSpecs at op granularity (one per conv/bn/act/...) or block granularity."""
        check_granularity(granularity)
        blocks = self.blocks(config)
        if granularity == "block":
            return blocks
        return [o for b in blocks for o in O.expand(b)]

    # ------------------------------------------------------------------ enumerate
    def enumerate_blocks(self, resolutions: Sequence[int] | None = None) -> list[OpSpec]:
        """Every unique block any config of the space uses, at the given resolutions."""
        res = self.check_resolutions(resolutions)
        choices = [tuple(p.choices) for p in self.positions]
        if self.resolution_position is not None:
            choices[self.resolution_position] = res
        found: dict[OpSpec, None] = {}
        for _, blocks in self.reach(choices):
            for b in blocks:
                found[b] = None
        return list(found)

    def reach(self, choices: Sequence[tuple]) -> Iterator[tuple[int, list[OpSpec]]]:
        """(slot index, blocks) for every distinct (state, choices) any config reaches.

        Propagates the set of slot states over the per-position `choices`; a state carries the
        values of positions that later slots read too, so no combination is invented."""
        later: list[frozenset] = []
        acc: set = set()
        for slot in reversed(self.slots):
            later.append(frozenset(acc))
            acc |= set(slot.reads)
        later.reverse()
        states: set = {(None, ())}
        for i, slot in enumerate(self.slots):
            nxt: set = set()
            cache: dict = {}
            for state, bound in states:
                bound_d = dict(bound)
                free = [p for p in slot.reads if p not in bound_d]
                for combo in itertools.product(*(choices[p] for p in free)):
                    vals = dict(bound_d)
                    vals.update(zip(free, combo))
                    args = tuple(vals[p] for p in slot.reads)
                    hit = cache.get((state, args))
                    if hit is None:
                        hit = cache[(state, args)] = slot.fn(state, args)
                        yield i, hit[0]
                    keep = tuple(sorted((p, v) for p, v in vals.items() if p in later[i]))
                    nxt.add((hit[1], keep))
            states = nxt

    # ------------------------------------------------------------------ footprint
    def weight_bytes(self, config: Any) -> int:
        """float32 bytes of the subnet's weights (every parameter of its blocks)."""
        return O.BYTES_PER_ELEMENT * sum(b.params for b in self.blocks(config))

    def context_bytes(self, samples: int = 100, seed: int = 0) -> int:
        """Median weight bytes of `samples` seeded random subnets: about what the rest of a
        network streams through the caches between two runs of one of its blocks (profiling in
        network context reads that much before each timed call)."""
        if samples < 1:
            raise UsageError(f"context_bytes needs at least one sample, got {samples}")
        cfgs = self.sample(np.random.default_rng(seed), samples)
        return int(np.median([self.weight_bytes(c) for c in cfgs]))

    # ------------------------------------------------------------------ build
    def build(self, config: Any):
        """A torch.nn.Module of the subnet with random weights (torch imported lazily)."""
        from .torch_build import build_blocks

        return build_blocks(self.blocks(config))

    def input_shape(self, config: Any) -> tuple[int, int, int, int]:
        first = self.blocks(config)[0]
        return first.in_shape

    def describe(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "positions": len(self.positions),
            "size": self.size,
            "resolutions": list(self.resolutions),
        }


def check_granularity(granularity: str) -> None:
    if granularity not in GRANULARITIES:
        raise UsageError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")

"""The part of a space a search may visit: per position, the choice indices it may use.

Strategies draw, mutate and repair configs through a Domain, so a restriction (e.g. only the
resolutions a table was profiled at) holds for every strategy without each one knowing about it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import UsageError


@dataclass(frozen=True)
class Domain:
    """Allowed choice indices per position (`table[p, :counts[p]]`), padded into one array so
    that sampling and mutation are single numpy gathers over a whole population."""

    names: tuple[str, ...]
    table: np.ndarray  # (positions, max choices) int64; row p's first counts[p] entries are allowed
    counts: np.ndarray  # (positions,) int64
    resolution_position: int | None = None
    identity: bool = False  # every choice allowed everywhere: local indices are the space's

    @classmethod
    def of(cls, space, choices: Mapping[str, Sequence[Any]] | None = None) -> "Domain":
        """The whole space, or the space with some positions restricted to the listed values."""
        allowed = [list(range(len(p.choices))) for p in space.positions]
        names = tuple(p.name for p in space.positions)
        for name, values in (choices or {}).items():
            if name not in names:
                raise UsageError(f"{space.name}: no position {name!r}; positions: {', '.join(names[:8])}...")
            pos = space.positions[names.index(name)]
            idx = []
            for v in values:
                if v not in pos.choices:
                    raise UsageError(f"{space.name}: {name}={v!r} is not one of {list(pos.choices)}")
                idx.append(pos.choices.index(v))
            if not idx:
                raise UsageError(f"{space.name}: position {name!r} restricted to no value")
            allowed[names.index(name)] = sorted(set(idx))
        width = max(len(a) for a in allowed)
        table = np.zeros((len(allowed), width), dtype=np.int64)
        for p, a in enumerate(allowed):
            table[p, :len(a)] = a
            table[p, len(a):] = a[-1]
        counts = np.array([len(a) for a in allowed], dtype=np.int64)
        identity = all(a == list(range(len(p.choices))) for a, p in zip(allowed, space.positions))
        return cls(names, table, counts, space.resolution_position, identity)

    @property
    def n_positions(self) -> int:
        return len(self.names)

    def allowed(self, p: int) -> np.ndarray:
        return self.table[p, :self.counts[p]]

    def smallest(self) -> np.ndarray:
        """First allowed choice everywhere (the cheapest subnet when choices are ordered)."""
        return self.table[:, 0].copy()

    def largest(self) -> np.ndarray:
        return self.table[np.arange(self.n_positions), self.counts - 1]

    def contains(self, configs: np.ndarray) -> np.ndarray:
        """Which rows of an (n, positions) array lie inside the domain."""
        ok = np.ones(len(configs), dtype=bool)
        for p in range(self.n_positions):
            ok &= np.isin(configs[:, p], self.allowed(p))
        return ok

    # ------------------------------------------------------------------ local coordinates
    def to_local(self, configs: np.ndarray) -> np.ndarray:
        """Space indices -> 0..counts-1 per position (for libraries that want contiguous ints)."""
        if self.identity:
            return np.array(configs, dtype=np.int64)
        out = np.empty_like(configs)
        for p in range(self.n_positions):
            out[:, p] = np.searchsorted(self.allowed(p), configs[:, p])
        return out

    def from_local(self, local: np.ndarray) -> np.ndarray:
        local = np.clip(np.asarray(local, dtype=np.int64), 0, self.counts - 1)
        return local if self.identity else self.table[np.arange(self.n_positions), local]

    # ------------------------------------------------------------------ random moves
    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n uniform configs of the domain, int64 (n, positions)."""
        local = (rng.random((n, self.n_positions)) * self.counts).astype(np.int64)
        return local if self.identity else self.from_local(local)

    def mutate(self, rng: np.random.Generator, configs: np.ndarray, prob: float,
               resolution_prob: float | None = None) -> np.ndarray:
        """Each position redrawn uniformly with probability `prob` (the resolution position with
        `resolution_prob` when given), as Once-for-All's mutate_arch / mutate_resolution do."""
        p = np.full(self.n_positions, prob)
        if resolution_prob is not None and self.resolution_position is not None:
            p[self.resolution_position] = resolution_prob
        hit = rng.random(configs.shape) < p
        return np.where(hit, self.sample(rng, len(configs)), configs)

    def neighbour(self, rng: np.random.Generator, configs: np.ndarray) -> np.ndarray:
        """One random position of each row set to a random allowed value (PaddleSlim's SA move)."""
        n = len(configs)
        pos = (rng.random(n) * self.n_positions).astype(np.int64)
        val = self.table[pos, (rng.random(n) * self.counts[pos]).astype(np.int64)]
        out = configs.copy()
        out[np.arange(n), pos] = val
        return out

    def blend(self, rng: np.random.Generator, configs: np.ndarray, anchor: np.ndarray,
              rate: float) -> np.ndarray:
        """Each position copied from `anchor` with probability `rate`: pulls random configs
        towards a known-feasible one, so repairs end (at rate 1 the anchor itself)."""
        hit = rng.random(configs.shape) < rate
        return np.where(hit, anchor[None, :], configs)

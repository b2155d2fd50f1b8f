"""Space -> the unique OpSpecs any of its subnets uses, at op or fused-block granularity.

This is the list a profiler measures once to price every subnet of the space. It never walks the
subnets: `SearchSpace.enumerate_blocks` propagates the reachable states slot by slot, and op
granularity expands those blocks with `ops.expand`.

Order is deterministic and independent of hashing: ops are sorted by kind (the order of
`ops.KINDS`: conv, pool, eltwise, softmax, activation, batch_norm, linear, then block kinds) and
then by their key in natural order (digit runs compare as numbers, so 128x128 < 1024x1024).
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

from . import ops as O
from .ops import OpSpec

_KIND_RANK = {k: i for i, k in enumerate(O.KINDS)}
_DIGITS = re.compile(r"(\d+)")


def natural_key(key: str) -> tuple:
    """Sort key for an op key: text parts compare as text, digit runs as integers."""
    return tuple(int(p) if i % 2 else p for i, p in enumerate(_DIGITS.split(key)))


def sort_ops(ops: Iterable[OpSpec]) -> list[OpSpec]:
    """Ops in latbench's canonical order: kind order, then natural order of the key."""
    return sorted(ops, key=lambda o: (_KIND_RANK.get(o.kind, len(_KIND_RANK)), natural_key(o.key)))


def enumerate_ops(space, resolutions: Sequence[int] | None = None, granularity: str = "op") -> list[OpSpec]:
    """All unique OpSpecs (unique by key) of `space` at `resolutions` (default: all the space's).

    granularity "op": every operator (conv, batch_norm, activation, ...) of every reachable block;
    "block": the reachable blocks themselves (Once-for-All LatencyTable keys for the OFA spaces).
    """
    from .spaces.base import check_granularity

    check_granularity(granularity)
    blocks = space.enumerate_blocks(resolutions)
    if granularity == "block":
        return sort_ops(O.unique(blocks))
    seen: dict[OpSpec, None] = {}
    for block in blocks:
        for op in O.expand(block):
            seen[op] = None
    # Equal OpSpecs were merged by value above (cheap); merge by key too, the join everyone uses.
    return sort_ops(O.unique(seen))


def summary(ops: Iterable[OpSpec]) -> dict[str, int]:
    """Number of ops per kind, kinds in `ops.KINDS` order (kinds with no op left out)."""
    counts: dict[str, int] = {}
    for op in ops:
        counts[op.kind] = counts.get(op.kind, 0) + 1
    return {k: counts[k] for k in sorted(counts, key=lambda k: _KIND_RANK.get(k, len(_KIND_RANK)))}


__all__ = ["enumerate_ops", "summary", "sort_ops", "natural_key"]

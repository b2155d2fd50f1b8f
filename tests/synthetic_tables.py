"""Real latbench tables filled with made-up but complete measurements, for tests of reading,
pricing and error paths that need a whole space's table and no device."""
from __future__ import annotations

from pathlib import Path

from latbench.enumerate import enumerate_ops
from latbench.spaces import get_space
from latbench.store import LatencyTable
from test_store import PROFILE, measurement


def tiny_block_table(path: Path, resolutions: tuple[int, ...] = (24, 32)) -> dict[str, float]:
    """Every block of the `tiny` space at `resolutions` in a table at `path` (closed cleanly);
    returns key -> estimate (ms) as stored."""
    ops = enumerate_ops(get_space("tiny"), list(resolutions), "block")
    with LatencyTable.open(path, PROFILE) as t:
        t.add_many(measurement(op, 0.01 + 0.003 * i) for i, op in enumerate(ops))
        return t.estimates()

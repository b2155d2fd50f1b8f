"""The op-sum baseline: a subnet priced as the plain sum of its unfused single ops, timed the same
way into an op-level table of the same profile (missing ops are profiled into it first)."""
from __future__ import annotations

import math
import os
from typing import Any, Iterable

import numpy as np

from ..errors import LatbenchError
from ..measure import TimingSettings
from ..predict import Pricer
from ..store import LatencyTable
from .progress import Progress, quiet


def op_table_path(table_path: str) -> str:
    """The default op-level baseline table beside a table: t.sqlite -> t.op-none.sqlite."""
    root, ext = os.path.splitext(table_path)
    return f"{root}.op-none{ext or '.sqlite'}"


def subnet_ops(space, configs: Iterable[np.ndarray]) -> list:
    """The unique unfused op-granularity ops of the given subnets."""
    from .. import ops as O

    found: dict[str, Any] = {}
    for cfg in configs:
        for b in space.blocks(cfg):
            for op in O.expand(b):
                found.setdefault(op.key, op)
    return list(found.values())


def op_costs(path: str, agent, space, configs: np.ndarray, timing: TimingSettings,
             progress: Progress = quiet) -> tuple[Pricer, int]:
    """A strict pricer of every unfused op of `configs`, from the op table at `path` (same profile
    as the agent, granularity op, fusion none, the same cache context as `timing`); keys it lacks
    (and its per-call cost) are profiled into it first (latbench.profile). Returns it and how
    many ops were profiled."""
    from ..profiler import profile

    task, todo, done = "op-level baseline ops", [0], [0]

    def start(n: int) -> None:
        todo[0] = n
        if n:
            progress(task, 0, n)

    def more(n: int) -> None:  # suspect rows timed again add to the total
        todo[0] += n

    def tick(_m) -> None:
        done[0] += 1
        progress(task, done[0], todo[0])

    run = profile(subnet_ops(space, configs), device=agent, out=path, granularity="op", fusion="none",
                  timing=timing, retry_failed=True, on_start=start, on_retime=more, on_result=tick)
    if run.interrupted:
        raise KeyboardInterrupt
    with LatencyTable.open(path, readonly=True) as t:
        return Pricer.from_table(t, "op", "none", strict=True), run.total - run.skipped


def op_sum(pricer: Pricer, space, cfg) -> float:
    """The unfused op-level price of a subnet; NaN when an op could not be measured."""
    try:
        return pricer.price(space.blocks(cfg)).raw_ms
    except LatbenchError:
        return math.nan

"""Drive an agent over a list of ops into a latency table: resumable, committed op by op.

Every Measurement is written in its own transaction as the agent hands it over. Ops an agent
times together (interleaved: `--interleave`, 24 by default; a phone's push-and-run batch) are
handed over together when their batch ends, so a crash, Ctrl-C or reboot loses at most that
batch in flight; a rerun skips every key already stored for the table's profile (and counts
those stored failed: ProfileRun.failed_earlier). Also here: the cache context and
rounds a profile times in, the runtime's per-call cost each table records, and the reference
kernel timed in every batch; after the run the rows taken in a slow spell (latbench.suspect) are
timed once more (`retime_suspects`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

from . import ops as O
from .errors import UsageError
from .measure import ESTIMATOR_WORDS, LOOP_ESTIMATORS, Measurement, TimingSettings, last_level_cache_bytes
from .ops import OpSpec, unique

# The op whose latency is the runtime's fixed cost of one call: a ReLU on one element. Every
# table entry pays that cost once, a whole network once in all, so predictions subtract it from
# each entry and add it back once (latbench.predict.Pricer).
INVOCATION_OP = O.activation((1, 1, 1, 1), "relu")
INVOCATION_META = "invocation"
# A kernel timed in every batch as its ops are, whose value only the machine's speed moves: a
# batch that ran it far slower than the profile's median ran in a slow spell (latbench.suspect).
# A 1x1 conv of ~0.3 ms with 256 KB of weights. Beside ofa-mbv3-w10 blocks here, against a
# quiet pass, its mean read 1.65x in a batch whose blocks' means read 1.60x, 2.09x where they
# read 2.1x, 0.96-1.07x in quiet batches (blocks 0.94-1.06x); the per-call op's mean read
# 0.60-1.21x in the same quiet batches, too loose to tell a spell by, and a middle block of the
# space did no better than the conv (1.56x; 0.92-1.03x quiet).
REFERENCE_OP = O.conv((1, 256, 14, 14), 256, 1)
REFERENCE_META = "reference"
EVICT_CAP_BYTES = 64 << 20  # without a readable cache size: reading more evicts nothing more
ORDER_SEED = 0  # ops are measured in a seeded shuffled order: two runs of one command alike


@dataclass
class ProfileRun:
    """What one profiling run did (the table holds the numbers)."""

    total: int = 0  # unique ops asked for
    skipped: int = 0  # already in the table
    measured: int = 0  # measured now (ok)
    failed: int = 0  # measured now but failed
    failed_earlier: int = 0  # of the skipped: stored as failed by an earlier run, not retried
    remaining: int = 0  # not reached (max_ops or interruption)
    interrupted: bool = False
    wall_s: float = 0.0
    timed_s: float = 0.0  # inside the timed loops
    failures: list[tuple[str, str]] = field(default_factory=list)
    retimed: int = 0  # rows timed again because they looked taken in a slow spell
    unstable: int = 0  # of those, still suspect after it (latbench.suspect)

    @property
    def overhead(self) -> float:
        """Share of wall time spent outside the timed loops (building models, I/O)."""
        return 1.0 - self.timed_s / self.wall_s if self.wall_s > 0 else 0.0


def ops_with_resolutions(space, resolutions: Sequence[int] | None, granularity: str,
                         fusion: str = "none") -> tuple[list[OpSpec], dict[str, list[int]]]:
    """Unique ops of a space (blocks, or their ops as `fusion`'s runtime runs them) and, for each
    key, the resolutions whose subnets use it."""
    from .ops import expand, fuse

    res = space.check_resolutions(resolutions)
    by_key: dict[str, list[int]] = {}
    found: dict[str, OpSpec] = {}
    for r in res or (None,):
        for block in space.enumerate_blocks([r] if r is not None else None):
            lowered = [block] if granularity == "block" else fuse(expand(block), fusion)
            for op in lowered:
                if op.key not in found:
                    found[op.key] = op
                if r is not None:
                    rs = by_key.setdefault(op.key, [])
                    if not rs or rs[-1] != r:
                        rs.append(r)
    return list(found.values()), by_key


def network_context_bytes(space=None, context_mb: float | None = None) -> tuple[int, int]:
    """(bytes to read before each timed call, bytes wanted before the cap) for network context:
    `context_mb` if given, else the space's median subnet weights; capped at twice the
    last-level cache (beyond that every cached line is evicted already, only slower)."""
    if context_mb is not None:
        if not (math.isfinite(context_mb) and context_mb >= 0):
            raise UsageError(f"--context-mb must be a finite number >= 0, got {context_mb:g}")
        want = int(context_mb * (1 << 20))
    elif space is not None:
        want = space.context_bytes()
    else:
        raise UsageError("network context needs --space (its subnets' weight bytes) or --context-mb")
    llc = last_level_cache_bytes()
    return min(want, 2 * llc if llc else EVICT_CAP_BYTES), want


def timing_for(agent, timing: TimingSettings, context: str, space=None,
               context_mb: float | None = None) -> TimingSettings:
    """`timing` in the cache context asked for (auto = network where the agent can time so and
    the context size is known: a space or --context-mb; else warm), in interleaved rounds where
    the agent can time so (an agent that cannot is refused rounds > 1 by name)."""
    if context == "auto":
        known = space is not None or context_mb is not None
        context = "network" if known and "network" in getattr(agent, "contexts", ()) else "warm"
    if context not in ("warm", "network"):
        raise UsageError(f"--context must be auto, warm or network, got {context!r}")
    if context == "warm" and context_mb is not None:
        raise UsageError(f"--context-mb sizes the network context, and this run times in warm context "
                         f"({agent.name} times in: {', '.join(agent.contexts)}): leave --context-mb out")
    if context == "warm":
        out = dataclasses.replace(timing, context="warm", context_bytes=0)
    else:
        out = dataclasses.replace(timing, context="network", context_bytes=network_context_bytes(space, context_mb)[0])
    agent.check_timing(out)  # an agent that cannot time so says which settings it lacks
    return out


def check_run_meta(table, granularity: str, fusion: str, space: str | None, timing: TimingSettings,
                   own_loop: bool = True) -> None:
    """A table holds one granularity, fusion, cache context and estimator: record them on first
    use, refuse a run that asks for others (a table from before contexts were recorded was timed
    warm; one from before estimators were recorded is priced by what its rows say). `own_loop`:
    the agent times with latbench's loop, so its rows carry `timing.estimator` (android's runner
    gives its own statistic, which is not checked)."""
    meta = table.meta_get("profile_run")
    want = {"granularity": granularity, "fusion": fusion if granularity == "op" else "none",
            "context": timing.context, "context_bytes": timing.context_bytes}
    if own_loop:
        want["estimator"] = timing.estimator
    if not meta:
        table.meta_set("profile_run", {**want, "spaces": [space] if space else []})
        return
    have = _run_settings(meta)
    if {k: have[k] for k in ("granularity", "fusion")} != {k: want[k] for k in ("granularity", "fusion")}:
        raise UsageError(f"{table.path} holds {have['granularity']}-granularity entries (fusion {have['fusion']}); "
                         f"this run asks for {want['granularity']} (fusion {want['fusion']}): use another --out")
    if (have["context"], have["context_bytes"]) != (want["context"], want["context_bytes"]):
        raise UsageError(f"{table.path} holds entries timed in {_context_words(have)}; this run asks for "
                         f"{_context_words(want)}: resume with {_context_flags(have)}, or use another --out")
    stored = table_estimator(table)
    if own_loop and stored is not None and stored != timing.estimator:
        raise UsageError(f"{table.path} holds entries priced by {stored} ({ESTIMATOR_WORDS[stored]}); this run "
                         f"asks for {timing.estimator}: resume with --estimator {stored}, or use another --out")
    spaces = sorted(set(meta.get("spaces", [])) | ({space} if space else set()))
    table.meta_set("profile_run", {**meta, **want, "spaces": spaces})


def table_estimator(table) -> str | None:
    """The statistic the table's timed rows are priced by: recorded in meta "profile_run", else
    (a table from before it was recorded) the one estimator of latbench's loop its ok rows share;
    None when neither says."""
    recorded = (table.meta_get("profile_run") or {}).get("estimator")
    if recorded:
        return recorded
    found = set(table.estimators())
    return found.pop() if len(found) == 1 and found <= set(LOOP_ESTIMATORS) else None


def _context_words(d: dict) -> str:
    if d["context"] == "warm":
        return "warm context"
    return f"network context ({d['context_bytes'] / (1 << 20):.2f} MB read before each call)"


def _context_flags(d: dict) -> str:
    if d["context"] == "warm":
        return "--context warm"
    return f"--context network --context-mb {d['context_bytes'] / (1 << 20)!r}"


def measure_invocation(table, agent, timing: TimingSettings, retry_failed: bool = False) -> dict | None:
    """Measure the runtime's per-call cost (INVOCATION_OP) under `timing` into the table's meta,
    unless it is there for this timing's context already (a failed attempt is kept like a failed
    row, and tried again with `retry_failed`); returns the entry when it holds an estimate.
    profile_into adds a sample from every interleaved batch (`record_invocation`)."""
    have = table.meta_get(INVOCATION_META)
    if have and _same_context(have, timing):
        if have.get("status", "ok") == "ok" or not retry_failed:
            return have if have.get("estimate_ms") is not None else None
    m = next(iter(agent.measure([INVOCATION_OP], timing)), None)
    if m is None:
        return None
    entry = record_invocation(table, m, timing, fresh=True)
    return entry if entry["estimate_ms"] is not None else None


def record_invocation(table, m: Measurement, timing: TimingSettings, fresh: bool = False) -> dict:
    """Add one measurement of INVOCATION_OP to the table's per-call cost and commit it.

    In network context the cost of a call moves by 2-3x within seconds on a shared host (10-35 us
    for ONNX Runtime here), and a subnet's price subtracts it once per block (~50 times), so one
    measurement is not enough: each interleaved batch times one, and the estimate is the table's
    statistic over all of them (`statistic_of_samples`; `samples` keeps each batch's statistics)."""
    return _record(table, INVOCATION_META, m, timing, fresh)


def record_reference(table, m: Measurement, timing: TimingSettings) -> float | None:
    """Add one batch's measurement of REFERENCE_OP to the table's meta "reference"; its estimate
    (None when it failed) is what the batch's rows record as `reference_ms`."""
    entry = _record(table, REFERENCE_META, m, timing)
    return entry["samples"][-1]["estimate_ms"]


def _record(table, name: str, m: Measurement, timing: TimingSettings, fresh: bool = False) -> dict:
    """Add one batch's measurement of a companion op (per-call cost, reference) to meta `name`."""
    have = table.meta_get(name)
    samples = [] if fresh or not have or not _same_context(have, timing) else _samples_of(have)
    sample = {"status": m.status, "error": m.error, "estimate_ms": None, "taken_at": m.taken_at}
    if m.ok and m.stats is not None:
        s = m.stats
        sample.update(estimate_ms=getattr(s, m.settings.get("estimator", "median")),
                      round_medians=list(s.rounds),
                      stats={k: _finite_or_none(getattr(s, k))
                             for k in ("median", "p25", "p75", "min", "max", "mean", "std", "n", "block")})
        below = m.extra.get("runner", {}).get("below_resolution_us")
        if below is not None:  # benchmark_model's whole microseconds read 0: a bound, not a cost
            sample["below_resolution_us"] = below
    samples.append(sample)
    estimator = m.settings.get("estimator", "median")
    entry = _pooled({"key": m.key, "op": m.op, "status": m.status, "error": m.error, "estimator": estimator,
                     "combine": COMBINE_WORDS[estimator], "timing": timing.to_dict(),
                     "profile_id": m.profile_id, "taken_at": m.taken_at}, samples)
    table.meta_set(name, entry)
    return entry


# How a companion's batches are combined into its estimate, by the table's statistic.
COMBINE_WORDS = {"mean": "mean of all samples (each batch's mean weighted by its sample count)",
                 "median": "median of the batches' medians", "min": "least of the batches' minimums",
                 "round_min": "median of the batches' fastest-round medians"}


def statistic_of_samples(samples: list[dict], statistic: str, own: str = "median") -> float | None:
    """A companion's estimate by `statistic` over its ok batch samples (COMBINE_WORDS); None when
    there is none, or a sample does not hold that statistic (benchmark_model gives no median). A
    sample without statistics (older tables) holds its estimate, by the entry's estimator `own`."""
    vals, weights = [], []
    for x in samples:
        if x.get("estimate_ms") is None:
            continue
        st = x.get("stats") or {}
        if statistic == "round_min":
            v = min(x["round_medians"]) if x.get("round_medians") else st.get("median")
        else:
            v = st.get(statistic)
        if v is None and not st and x.get("estimator", own) == statistic:
            v = x["estimate_ms"]
        if v is None:
            return None
        vals.append(float(v))
        weights.append(st.get("n"))
    if not vals:
        return None
    if statistic == "mean":  # a sample from before counts were kept weighs as much as any batch
        if None in weights:
            weights = [1] * len(vals)
        return math.fsum(v * w for v, w in zip(vals, weights)) / sum(weights)
    return min(vals) if statistic == "min" else float(statistics.median(vals))


def _pooled(entry: dict, samples: list[dict]) -> dict:
    """`entry` holding `samples`, its estimate their statistic (the entry's estimator); status and
    error are `entry`'s own when none is ok."""
    own = entry.get("estimator", "median")
    out = {**entry, "samples": samples, "estimate_ms": statistic_of_samples(samples, own, own)}
    if any(x.get("estimate_ms") is not None for x in samples):
        out.update(status="ok", error=None)
    return out


def merge_run_meta(table, src_meta: dict, src_name: str, same_device: bool = True) -> None:
    """Take in how a source timed its rows, before they are merged into `table`: other run
    settings (granularity, fusion, cache context, estimator where both record one) are refused as
    `profile` refuses them; from the same device, the spaces are united and two per-call costs
    (and references) timed in one context are pooled (every sample kept, the estimate their
    statistic), so neither table's rows are priced with the other's alone. What `table` lacks is
    copied by the caller."""
    have, theirs = table.meta_get("profile_run"), src_meta.get("profile_run")
    if have and theirs:
        a, b = _run_settings(have), _run_settings(theirs)
        if "estimator" not in a or "estimator" not in b:
            a.pop("estimator", None)
            b.pop("estimator", None)
        if a != b:
            raise UsageError(f"cannot merge {src_name} into {table.path}: its entries were timed as "
                             f"{_run_words(b)}, the table's as {_run_words(a)}")
    if not same_device:
        return
    if have and theirs:
        spaces = sorted(set(have.get("spaces", [])) | set(theirs.get("spaces", [])))
        if spaces != have.get("spaces", []):
            table.meta_set("profile_run", {**have, "spaces": spaces})
    for name in (INVOCATION_META, REFERENCE_META):
        mine_entry, their_entry = table.meta_get(name), src_meta.get(name)
        if mine_entry and their_entry and _context_of(mine_entry) == _context_of(their_entry):
            mine = _samples_of(mine_entry)
            seen = {json.dumps(x, sort_keys=True) for x in mine}
            new = [x for x in _samples_of(their_entry) if json.dumps(x, sort_keys=True) not in seen]
            if new:
                table.meta_set(name, _pooled(mine_entry, mine + new))


def _run_settings(meta: dict) -> dict:
    """The settings a table's rows were timed with (a table from before contexts were recorded
    was timed warm); the estimator where recorded."""
    return {"context": "warm", "context_bytes": 0, "fusion": "none",
            **{k: meta[k] for k in ("granularity", "fusion", "context", "context_bytes", "estimator") if k in meta}}


def _run_words(d: dict) -> str:
    fusion = f", fusion {d['fusion']}" if d.get("granularity") == "op" else ""
    priced = f", priced by {d['estimator']}" if d.get("estimator") else ""
    return f"{d.get('granularity', '?')}-granularity{fusion}, in {_context_words(d)}{priced}"


def _samples_of(entry: dict) -> list[dict]:
    """An entry's samples; a table from before samples were kept holds its one measurement flat."""
    if "samples" in entry:
        return list(entry["samples"])
    keep = ("status", "error", "estimate_ms", "taken_at", "round_medians", "stats", "below_resolution_us",
            "estimator")
    return [{k: entry[k] for k in keep if k in entry}]


def _context_of(entry: dict) -> tuple:
    """(cache context, context bytes) a per-call cost entry was timed in."""
    t = entry.get("timing", {})
    return t.get("context"), t.get("context_bytes")


def _same_context(entry: dict, timing: TimingSettings) -> bool:
    return _context_of(entry) == (timing.context, timing.context_bytes)


def _finite_or_none(x):
    """JSON has no NaN: a statistic the runtime did not give is stored as null."""
    return None if isinstance(x, float) and not math.isfinite(x) else x


def invocation_entry(table) -> dict | None:
    """The table's per-call cost entry (meta "invocation") when it holds an estimate, else None."""
    have = table.meta_get(INVOCATION_META)
    return have if have and have.get("estimate_ms") is not None else None


def invocation_ms(table, statistic: str | None = None) -> float:
    """The table's measured per-call cost in ms by `statistic` (None: its own estimate); 0 when it
    holds none (e.g. an imported table). A cost measured but not holding `statistic` is refused."""
    have = invocation_entry(table)
    if not have:
        return 0.0
    if statistic is None:
        return float(have["estimate_ms"])
    v = statistic_of_samples(_samples_of(have), statistic, have.get("estimator", "median"))
    if v is None:
        raise UsageError(f"{table.path}: its per-call cost (meta invocation) holds no {statistic} "
                         f"(priced by {have.get('estimator', 'median')}), so --statistic {statistic} cannot "
                         f"price it; leave --statistic out")
    return v


def measure_order(ops: Sequence[OpSpec], seed: int = ORDER_SEED) -> list[OpSpec]:
    """`ops` in a seeded shuffled order. Enumeration order groups one resolution's blocks together,
    so a slow minute of the machine would skew one resolution's entries alike (+10% at 176 and 192
    in one ort table here); shuffled, it spreads over every resolution as per-op noise."""
    out = list(ops)
    random.Random(seed).shuffle(out)
    return out


def check_max_ops(max_ops: int | None) -> None:
    """A cap on new ops is at least one op (None: no cap)."""
    if max_ops is not None and max_ops < 1:
        raise UsageError(f"--max-ops must be >= 1 (leave it out to measure every op), got {max_ops}")


RETIME = ("first", "all", "none")  # profile_into: which suspect rows to time again


def profile_into(table, agent, ops: Iterable[OpSpec], timing: TimingSettings = TimingSettings(),
                 max_ops: int | None = None, retry_failed: bool = False, shuffle: bool = True,
                 resolutions: dict[str, list[int]] | None = None, sample_invocation: bool = True,
                 retime: str = "first", on_start: Callable[[int], None] | None = None,
                 on_op: Callable[[OpSpec], None] | None = None,
                 on_result: Callable[[Measurement], None] | None = None,
                 on_retime: Callable[[int], None] | None = None) -> ProfileRun:
    """Measure the ops missing from `table` with `agent`, committing each as it arrives. `max_ops`
    takes the first ops in enumeration order; they are measured in `measure_order` unless not `shuffle`.
    Where the agent times ops in batches (interleaved rounds; a phone's push-and-run), each batch
    also times INVOCATION_OP into the table's per-call cost (`record_invocation`) and REFERENCE_OP
    into its meta "reference", unless not `sample_invocation`. Then the table's suspect rows are
    timed again (`retime_suspects`; `on_retime(n)` first): `retime` "first" those never timed
    again (a profile's own pass, once per row), "all" every one, "none" none."""
    check_max_ops(max_ops)
    if retime not in RETIME:
        raise UsageError(f"retime must be one of {', '.join(RETIME)}, got {retime!r}")
    t0 = time.perf_counter()
    todo_all = unique(ops)
    stored_ok = table.keys(status="ok")
    stored_any = table.keys(status=None)
    skip = stored_ok if retry_failed else stored_any
    todo = [op for op in todo_all if op.key not in skip]
    run = ProfileRun(total=len(todo_all), skipped=len(todo_all) - len(todo),
                     failed_earlier=sum(op.key in skip and op.key not in stored_ok for op in todo_all))
    if max_ops is not None:
        todo = todo[:max_ops]
    if shuffle:
        todo = measure_order(todo)
    if on_start:
        on_start(len(todo))
    try:
        for m in timed_batches(table, agent, todo, timing, run, sample_invocation, on_op):
            if resolutions and m.key in resolutions:
                m = dataclasses.replace(m, extra={**m.extra, "resolutions": resolutions[m.key]})
            # benchmark_model reports a mean and no median: the row says which estimate it holds
            table.add(m, estimator=m.settings.get("estimator", "median"))
            if m.ok:
                run.measured += 1
            else:
                run.failed += 1
                run.failures.append((m.key, m.error))
            if on_result:
                on_result(m)
        if retime != "none":
            retime_suspects(table, agent, timing, run, first_only=retime == "first", on_start=on_retime,
                            on_op=on_op, on_result=on_result)
    except KeyboardInterrupt:
        run.interrupted = True
    finally:
        run.wall_s = time.perf_counter() - t0
        run.remaining = run.total - run.skipped - run.measured - run.failed
    return run


def timed_batches(table, agent, ops: Sequence[OpSpec], timing: TimingSettings, run: ProfileRun,
                  companions: bool = True, on_op: Callable[[OpSpec], None] | None = None) -> Iterator[Measurement]:
    """`agent`'s measurements of `ops`, in order. Where the agent times in batches (and
    `companions`), each batch also times INVOCATION_OP and REFERENCE_OP (the latter where a batch
    holds three or more), recorded into the table's meta; the batch's rows are handed over when
    its companions are in, each with the batch's reference estimate as extra["reference_ms"].
    Every measurement's timed seconds are added to `run`."""
    size = agent.batch_len(timing)
    comps = ((INVOCATION_META, INVOCATION_OP), (REFERENCE_META, REFERENCE_OP))[:max(0, min(2, size - 1))] \
        if companions else ()
    per_batch = size - len(comps)
    tags: deque[str] = deque()  # per op fed, in order: "" or the companion's meta name

    def feed():
        for i, op in enumerate(ops):
            if on_op:
                on_op(op)
            tags.append("")
            yield op
            if comps and (i % per_batch == per_batch - 1 or i == len(ops) - 1):
                for name, comp in comps:
                    tags.append(name)
                    yield comp

    pending: list[Measurement] = []
    ref: float | None = None
    for m in agent.measure(feed(), timing):
        run.timed_s += m.timed_s
        tag = tags.popleft()
        if not tag:
            if not comps:
                yield m
            else:
                pending.append(m)
            continue
        if tag == INVOCATION_META:
            record_invocation(table, m, timing)
        else:
            ref = record_reference(table, m, timing)
        if tag == comps[-1][0]:  # the batch's last companion: its rows go out
            for r in pending:
                yield r if ref is None else dataclasses.replace(r, extra={**r.extra, "reference_ms": ref})
            pending, ref = [], None


def retime_suspects(table, agent, timing: TimingSettings, run: ProfileRun, first_only: bool = False,
                    on_start: Callable[[int], None] | None = None,
                    on_op: Callable[[OpSpec], None] | None = None,
                    on_result: Callable[[Measurement], None] | None = None) -> ProfileRun:
    """Time the table's suspect rows again (latbench.suspect; `first_only`: those never timed
    again, so a profile does it once per row) in batches as `profile_into` times them, committing
    each batch's rows as they come. A re-timed row replaces its take, which is kept with its signs
    in extra["earlier"]; a re-timing that fails leaves the take (and is listed in `run.failures`).
    `run` counts the rows re-timed, and those still suspect (`unstable`)."""
    from .suspect import EARLIER, suspects, take_of

    found = [x for x in suspects(table) if not (first_only and x.retimed)]
    if on_start:
        on_start(len(found))
    if not found:
        return run
    signs = {x.key: x.signs for x in found}
    rows = {x.key: table.row(x.key) for x in found}
    ops = measure_order([OpSpec.from_dict(rows[x.key]["op"]) for x in found])
    done = []
    for m in timed_batches(table, agent, ops, timing, run, True, on_op):
        if not m.ok:
            run.failures.append((m.key, f"timed again, failed: {m.error} (the first take is kept)"))
            continue
        first = rows[m.key]
        keep = {k: first["extra"][k] for k in ("resolutions",) if k in first["extra"]}
        earlier = [*first["extra"].get(EARLIER, ()), take_of(first, signs[m.key])]
        m = dataclasses.replace(m, extra={**m.extra, **keep, EARLIER: earlier})
        table.add(m, estimator=m.settings.get("estimator", "median"))
        done.append(m.key)
        run.retimed += 1
        if on_result:
            on_result(m)
    run.unstable += len(suspects(table, done))
    return run

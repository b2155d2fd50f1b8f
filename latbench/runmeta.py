"""What a table records about how its rows were timed, beside the rows: the run settings (meta
"profile_run", checked on every resumed run and on merge) and the companion ops timed in every
batch, the runtime's per-call cost (meta "invocation") and the reference kernel (meta
"reference"), through the typed accessors of latbench.tablemeta.
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
from typing import Any, Mapping, Sequence

from . import ops as O
from .errors import UsageError
from .measure import ESTIMATOR_WORDS, LOOP_ESTIMATORS, Measurement, TimingSettings
from .tablemeta import (INVOCATION_META, REFERENCE_META, RUN_META, CompanionEntry, CompanionSample,
                        RunSettings)

# The op whose latency is the runtime's fixed cost of one call: a ReLU on one element. Every
# table entry pays that cost once, a whole network once in all, so predictions subtract it from
# each entry and add it back once (latbench.predict.Pricer).
INVOCATION_OP = O.activation((1, 1, 1, 1), "relu")
# A kernel timed in every batch as its ops are, whose value only the machine's speed moves: a
# batch that ran it far slower than the profile's median ran in a slow spell (latbench.suspect).
# A 1x1 conv of ~0.3 ms with 256 KB of weights. Beside ofa-mbv3-w10 blocks here, against a
# quiet pass, its mean read 1.65x in a batch whose blocks' means read 1.60x, 2.09x where they
# read 2.1x, 0.96-1.07x in quiet batches (blocks 0.94-1.06x); the per-call op's mean read
# 0.60-1.21x in the same quiet batches, too loose to tell a spell by, and a middle block of the
# space did no better than the conv (1.56x; 0.92-1.03x quiet).
REFERENCE_OP = O.conv((1, 256, 14, 14), 256, 1)

# How a companion's batches are combined into its estimate, by the table's statistic.
COMBINE_WORDS = {"mean": "mean of all samples (each batch's mean weighted by its sample count)",
                 "median": "median of the batches' medians", "min": "least of the batches' minimums",
                 "round_min": "median of the batches' fastest-round medians"}


# ---------------------------------------------------------------------- run settings
def _settings(run: RunSettings) -> dict[str, Any]:
    """The settings a table's rows were timed with, comparable (a table from before contexts were
    recorded was timed warm); the estimator where recorded."""
    out = {"granularity": run.granularity, "fusion": run.fusion or "none",
           "context": run.context or "warm", "context_bytes": run.context_bytes or 0}
    if run.estimator:
        out["estimator"] = run.estimator
    return out


def check_run_meta(table, granularity: str, fusion: str, space: str | None, timing: TimingSettings,
                   own_loop: bool = True) -> None:
    """A table holds one granularity, fusion, cache context and estimator: record them on first
    use, refuse a run that asks for others (a table from before contexts were recorded was timed
    warm; one from before estimators were recorded is priced by what its rows say). `own_loop`:
    the agent times with latbench's loop, so its rows carry `timing.estimator` (android's runner
    gives its own statistic, which is not checked)."""
    have = table.run_settings
    want = RunSettings(granularity, fusion if granularity == "op" else "none", (space,) if space else (),
                       timing.context, timing.context_bytes, timing.estimator if own_loop else None)
    if have is None:
        table.set_run_settings(want)
        return
    a, w = _settings(have), _settings(want)
    if (a["granularity"], a["fusion"]) != (w["granularity"], w["fusion"]):
        raise UsageError(f"{table.path} holds {a['granularity']}-granularity entries (fusion {a['fusion']}); "
                         f"this run asks for {w['granularity']} (fusion {w['fusion']}): use another `out`")
    if (a["context"], a["context_bytes"]) != (w["context"], w["context_bytes"]):
        raise UsageError(f"{table.path} holds entries timed in {_context_words(a)}; this run asks for "
                         f"{_context_words(w)}: resume with {_context_params(a)}, or use another `out`")
    stored = table_estimator(table)
    if own_loop and stored is not None and stored != timing.estimator:
        raise UsageError(f"{table.path} holds entries priced by {stored} ({ESTIMATOR_WORDS[stored]}); this run "
                         f"asks for {timing.estimator}: resume with `estimator={stored}`, or use another `out`")
    spaces = tuple(sorted(set(have.spaces) | ({space} if space else set())))
    table.set_run_settings(dataclasses.replace(have, granularity=want.granularity, fusion=want.fusion,
                                               context=want.context, context_bytes=want.context_bytes,
                                               estimator=want.estimator or have.estimator, spaces=spaces))


def table_estimator(table) -> str | None:
    """The statistic the table's timed rows are priced by: recorded in its run settings, else (a
    table from before it was recorded) the one estimator of latbench's loop its ok rows share;
    None when neither says."""
    run = table.run_settings
    if run is not None and run.estimator:
        return run.estimator
    found = set(table.estimators())
    return found.pop() if len(found) == 1 and found <= set(LOOP_ESTIMATORS) else None


def _context_words(d: Mapping[str, Any]) -> str:
    if d["context"] == "warm":
        return "warm context"
    return f"network context ({d['context_bytes'] / (1 << 20):.2f} MB read before each call)"


def _context_params(d: Mapping[str, Any]) -> str:
    if d["context"] == "warm":
        return "`context=warm`"
    return f"`context=network` `context_mb={d['context_bytes'] / (1 << 20)!r}`"


def merge_run_meta(table, src_meta: Mapping[str, Any], src_name: str, same_device: bool = True) -> None:
    """Take in how a source timed its rows, before they are merged into `table`: other run
    settings (granularity, fusion, cache context, estimator where both record one) are refused as
    `profile` refuses them; from the same device, the spaces are united and two per-call costs
    (and references) timed in one context are pooled (every sample kept, the estimate their
    statistic), so neither table's rows are priced with the other's alone. What `table` lacks is
    copied by the caller. `src_meta`: the source's meta entries as stored."""
    have = table.run_settings
    theirs = RunSettings.from_dict(src_meta[RUN_META], f"{src_name}: meta {RUN_META}") \
        if src_meta.get(RUN_META) else None
    if have and theirs:
        a, b = _settings(have), _settings(theirs)
        if "estimator" not in a or "estimator" not in b:
            a.pop("estimator", None)
            b.pop("estimator", None)
        if a != b:
            raise UsageError(f"cannot merge {src_name} into {table.path}: its entries were timed as "
                             f"{_run_words(b)}, the table's as {_run_words(a)}")
    if not same_device:
        return
    if have and theirs:
        spaces = tuple(sorted(set(have.spaces) | set(theirs.spaces)))
        if spaces != have.spaces:
            table.set_run_settings(dataclasses.replace(have, spaces=spaces))
    for name, get, put in ((INVOCATION_META, lambda: table.invocation, table.set_invocation),
                           (REFERENCE_META, lambda: table.reference, table.set_reference)):
        mine = get()
        if not mine or not src_meta.get(name):
            continue
        their = CompanionEntry.from_dict(src_meta[name], f"{src_name}: meta {name}")
        if _context_of(mine) == _context_of(their):
            seen = {_sample_id(x) for x in mine.samples}
            new = tuple(x for x in their.samples if _sample_id(x) not in seen)
            if new:
                put(pooled(mine, mine.samples + new))


def _sample_id(x: CompanionSample) -> str:
    return json.dumps(x.to_dict(), sort_keys=True)


def _run_words(d: Mapping[str, Any]) -> str:
    fusion = f", fusion {d['fusion']}" if d.get("granularity") == "op" else ""
    priced = f", priced by {d['estimator']}" if d.get("estimator") else ""
    return f"{d.get('granularity', '?')}-granularity{fusion}, in {_context_words(d)}{priced}"


# ---------------------------------------------------------------------- companions: per-call cost, reference
def _context_of(entry: CompanionEntry) -> tuple:
    """(cache context, context bytes) a companion entry was timed in."""
    t = entry.timing
    return (t.context, t.context_bytes) if t else (None, None)


def _same_context(entry: CompanionEntry, timing: TimingSettings) -> bool:
    return _context_of(entry) == (timing.context, timing.context_bytes)


def needs_invocation(table, timing: TimingSettings, retry_failed: bool = False) -> bool:
    """Whether the table lacks its per-call cost in `timing`'s context (or holds a failed one and
    `retry_failed`): then measure_invocation times it before the ops."""
    have = table.invocation
    return not (have and _same_context(have, timing) and ((have.status or "ok") == "ok" or not retry_failed))


def measure_invocation(table, agent, timing: TimingSettings, retry_failed: bool = False) -> CompanionEntry | None:
    """Measure the runtime's per-call cost (INVOCATION_OP) under `timing` into the table's meta,
    unless it is there for this timing's context already (a failed attempt is kept like a failed
    row, and tried again with `retry_failed`); returns the entry when it holds an estimate.
    profile_into adds a sample from every interleaved batch (`record_invocation`)."""
    if not needs_invocation(table, timing, retry_failed):
        have = table.invocation
        return have if have.estimate_ms is not None else None
    m = next(iter(agent.measure([INVOCATION_OP], timing)), None)
    if m is None:
        return None
    entry = record_invocation(table, m, timing, fresh=True)
    return entry if entry.estimate_ms is not None else None


def record_invocation(table, m: Measurement, timing: TimingSettings, fresh: bool = False) -> CompanionEntry:
    """Add one measurement of INVOCATION_OP to the table's per-call cost and commit it.

    In network context the cost of a call moves by 2-3x within seconds on a shared host (10-35 us
    for ONNX Runtime here), and a subnet's price subtracts it once per block (~50 times), so one
    measurement is not enough: each interleaved batch times one, and the estimate is the table's
    statistic over all of them (`statistic_of_samples`; `samples` keeps each batch's statistics)."""
    entry = _recorded(table.invocation, m, timing, fresh)
    table.set_invocation(entry)
    return entry


def record_reference(table, m: Measurement, timing: TimingSettings) -> float | None:
    """Add one batch's measurement of REFERENCE_OP to the table's meta "reference"; its estimate
    (None when it failed) is what the batch's rows record as `reference_ms`."""
    entry = _recorded(table.reference, m, timing)
    table.set_reference(entry)
    return entry.samples[-1].estimate_ms


def _recorded(have: CompanionEntry | None, m: Measurement, timing: TimingSettings,
              fresh: bool = False) -> CompanionEntry:
    """The companion entry `have` with one more batch's measurement `m` (a fresh entry when
    `fresh`, or when `have` was timed in another context)."""
    samples = () if fresh or not have or not _same_context(have, timing) else have.samples
    estimator = m.settings.get("estimator", "median")
    sample = CompanionSample(status=m.status, error=m.error, taken_at=m.taken_at)
    if m.ok and m.stats is not None:
        s = m.stats
        sample = dataclasses.replace(
            sample, estimate_ms=getattr(s, estimator), round_medians=tuple(s.rounds),
            stats={k: _finite_or_none(getattr(s, k))
                   for k in ("median", "p25", "p75", "min", "max", "mean", "std", "n", "block")},
            # benchmark_model's whole microseconds read 0: a bound, not a cost
            below_resolution_us=m.extra.get("runner", {}).get("below_resolution_us"))
    entry = CompanionEntry(status=m.status, error=m.error, estimator=estimator, combine=COMBINE_WORDS[estimator],
                           key=m.key, op=m.op, timing=timing, profile_id=m.profile_id, taken_at=m.taken_at)
    return pooled(entry, samples + (sample,))


def pooled(entry: CompanionEntry, samples: Sequence[CompanionSample]) -> CompanionEntry:
    """`entry` holding `samples`, its estimate their statistic (the entry's estimator); status and
    error are `entry`'s own when none is ok."""
    own = entry.estimator or "median"
    out = dataclasses.replace(entry, samples=tuple(samples), estimate_ms=statistic_of_samples(samples, own, own))
    if any(x.estimate_ms is not None for x in samples):
        out = dataclasses.replace(out, status="ok", error=None)
    return out


def statistic_of_samples(samples: Sequence[CompanionSample], statistic: str, own: str = "median") -> float | None:
    """A companion's estimate by `statistic` over its ok batch samples (COMBINE_WORDS); None when
    there is none, or a sample does not hold that statistic (benchmark_model gives no median). A
    sample without statistics (older tables) holds its estimate, by the entry's estimator `own`."""
    vals, weights = [], []
    for x in samples:
        if x.estimate_ms is None:
            continue
        st = x.stats or {}
        if statistic == "round_min":
            v = min(x.round_medians) if x.round_medians else st.get("median")
        else:
            v = st.get(statistic)
        if v is None and not st and (x.estimator or own) == statistic:
            v = x.estimate_ms
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


def _finite_or_none(x):
    """JSON has no NaN: a statistic the runtime did not give is stored as null."""
    return None if isinstance(x, float) and not math.isfinite(x) else x


def invocation_entry(table) -> CompanionEntry | None:
    """The table's per-call cost entry (meta "invocation") when it holds an estimate, else None."""
    have = table.invocation
    return have if have and have.estimate_ms is not None else None


def entry_work(ms: float, invocation_ms: float) -> float:
    """An entry's share of a network's price: its time less the per-call cost, 0 where below it (an
    op faster than the cost's own estimate does no measurable work); NaN stays NaN."""
    return 0.0 if ms < invocation_ms else ms - invocation_ms


def invocation_ms(table, statistic: str | None = None) -> float:
    """The table's measured per-call cost in ms by `statistic` (None: its own estimate); 0 when it
    holds none (e.g. an imported table). A cost measured but not holding `statistic` is refused."""
    have = invocation_entry(table)
    if not have:
        return 0.0
    if statistic is None:
        return float(have.estimate_ms)  # type: ignore[arg-type]
    own = have.estimator or "median"
    v = statistic_of_samples(have.samples, statistic, own)
    if v is None:
        raise UsageError(f"{table.path}: its per-call cost (meta invocation) holds no {statistic} "
                         f"(priced by {own}), so `statistic={statistic}` cannot price it; leave `statistic` out")
    return v


def timing_words(timing: TimingSettings, invocation: CompanionEntry | None) -> str:
    """How the entries were timed, in a few words; `invocation` is the table's per-call cost entry
    (meta "invocation"), a failed one with its reason."""
    if timing.context == "network":
        words = f"network context, {timing.context_bytes / (1 << 20):.1f} MB read before each call"
    else:
        words = "warm context (calls back to back)"
    if timing.rounds > 1:
        words += f"; {timing.rounds} rounds over {timing.interleave} ops at a time"
    return f"{words}; per-call cost {_invocation_words(invocation)}"


def _invocation_words(invocation: CompanionEntry | None) -> str:
    """The per-call cost as measured (the entry's estimate), or why it was not."""
    if not invocation:
        return "not measured"
    if invocation.estimate_ms is None:
        return f"not measured: {invocation.error or 'no sample'}"
    n = sum(x.estimate_ms is not None for x in invocation.samples)
    how = f" ({invocation.estimator or 'median'} over {n} batches)" if n > 1 else ""
    return f"{invocation.estimate_ms * 1e3:.1f} us{how}"


__all__ = ["INVOCATION_OP", "REFERENCE_OP", "INVOCATION_META", "REFERENCE_META", "COMBINE_WORDS",
           "check_run_meta", "table_estimator", "merge_run_meta", "measure_invocation", "record_invocation",
           "record_reference", "pooled", "statistic_of_samples", "invocation_entry", "invocation_ms", "timing_words"]

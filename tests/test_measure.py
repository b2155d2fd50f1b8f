"""The timing core against known behaviour: callables of known duration, hand-made samples, and
the identity (DeviceProfile) every number is filed under."""
from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any, Callable

import numpy as np
import pytest

from latbench import measure as M
from latbench import ops as O
from latbench.device import DeviceProfile, host_profile
from latbench.measure import Stats, TimingSettings, time_callable

pc = time.perf_counter


def spin(seconds: float) -> Callable[[], None]:
    """A callable that busy-waits until this thread has run `seconds` on a CPU: its wall time is
    `seconds` unless the scheduler takes the CPU away meanwhile (no sleep, no wake-up jitter; a
    perf_counter deadline would overshoot whenever the process is off-CPU at the deadline, which
    on a loaded 2-core box is most of the time)."""
    tt = time.thread_time

    def f() -> None:
        end = tt() + seconds
        while tt() < end:
            pass

    return f


def best_of(attempts: int, trial: Callable[[], tuple[bool, Any]]) -> Any:
    """Run a timing trial up to `attempts` times and return the first passing result (else fail
    with every result): other processes on a shared machine can spoil one run, not three."""
    seen = []
    for _ in range(attempts):
        ok, result = trial()
        if ok:
            return result
        seen.append(result)
    pytest.fail(f"{attempts} attempts, none passed: {seen}")


@pytest.fixture
def overhead(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], float]:
    """Pin the timer overhead the block sizing uses, so the rule is tested machine-independently."""

    def pin(seconds: float) -> float:
        monkeypatch.setattr(M, "_OVERHEAD", [seconds])
        return seconds

    return pin


# ---------------------------------------------------------------------- time_callable
def test_known_duration_gives_its_median(overhead: Callable[[float], float]) -> None:
    """A 0.5 ms busy-wait measures 0.5 ms within 3%, one call per sample. (0.5 ms, not longer:
    with a 4 ms scheduler tick and other processes on the cores, a longer call is preempted in
    about half of its samples and the median would measure the scheduler.)"""
    overhead(1e-8)  # blocks of >= 0.1 ms: one call per sample
    settings = TimingSettings(warmup=2, warmup_s=0.0, min_samples=20, max_time_s=0.5)

    def trial() -> tuple[bool, Stats]:
        s = time_callable(spin(5e-4), settings)
        assert s.block == 1 and s.min >= 0.5 * 0.999  # a busy-wait cannot finish early
        return abs(s.median - 0.5) / 0.5 < 0.03, s

    best_of(3, trial)


def test_block_grows_until_timer_overhead_is_negligible(overhead: Callable[[float], float]) -> None:
    """A ~1 us callable is timed in blocks of >= overhead / 1e-4 seconds (1 ms at 100 ns)."""
    settings = TimingSettings(warmup=10, warmup_s=0.0, min_samples=10, max_time_s=0.3)
    min_block_s = overhead(1e-7) / settings.block_overhead
    s = time_callable(spin(1e-6), settings)
    assert s.block >= 1000, s.block
    assert s.block * s.median / 1e3 >= 0.9 * min_block_s  # 0.9: samples vs the sizing run's noise
    assert 1e-3 <= s.median < 0.1, s.median  # per-call ms (per block it would be >= 1 ms)
    # the real overhead of this machine gives blocks too, and a 2 ms call is never blocked
    real_min_block_s = overhead(M.timer_overhead_s()) / settings.block_overhead
    assert time_callable(spin(1e-6), settings).block > 1
    assert time_callable(spin(2 * real_min_block_s), settings).block == 1


def test_stable_callable_stops_early(overhead: Callable[[float], float]) -> None:
    """IQR/median under target after min_samples ends the loop long before max_time_s."""
    overhead(1e-8)
    settings = TimingSettings(warmup=1, warmup_s=0.0, min_samples=10, max_samples=500, max_time_s=3.0)

    def trial() -> tuple[bool, tuple[Stats, float]]:
        t0 = pc()
        s = time_callable(spin(2e-4), settings)
        elapsed = pc() - t0
        return s.n < 50 and elapsed < 1.0, (s, elapsed)

    s, _ = best_of(3, trial)
    assert s.iqr_ratio < settings.target_iqr  # (std may still flag it: one preempted sample suffices)


def test_noisy_callable_runs_to_max_time(overhead: Callable[[float], float]) -> None:
    """Alternating 1 ms / 3 ms never gets a small IQR: the loop stops at max_time_s. One burst has
    no rounds to tell a slow spell by, so it shows no spell's signs (pyperf's std rule would flag it)."""
    overhead(1e-8)  # block of 1, so the alternation is not averaged away
    slow = [False]
    fast_f, slow_f = spin(1e-3), spin(3e-3)

    def noisy() -> None:
        slow[0] = not slow[0]
        (slow_f if slow[0] else fast_f)()

    settings = TimingSettings(warmup=1, warmup_s=0.0, min_samples=10, max_samples=100_000, max_time_s=0.3)
    t0 = pc()
    s = time_callable(noisy, settings)
    elapsed = pc() - t0
    assert s.block == 1
    assert settings.max_time_s <= elapsed < settings.max_time_s + 0.3, elapsed
    assert settings.min_samples <= s.n < settings.max_samples
    assert s.iqr_ratio > settings.target_iqr and s.std >= 0.1 * s.mean
    assert s.spell_signs() == () and not s.unstable


def test_max_samples_caps_the_loop(overhead: Callable[[float], float]) -> None:
    overhead(1e-8)
    settings = TimingSettings(warmup=1, warmup_s=0.0, target_iqr=0.0, min_samples=5, max_samples=20,
                              max_time_s=30.0)
    s = time_callable(spin(1e-4), settings)
    assert s.n == 20 and len(s.samples) == 20  # every sample is kept


def test_warmup_calls_and_sync_before_every_clock_read(overhead: Callable[[float], float]) -> None:
    """At least `warmup` untimed calls; `sync` runs once per block so queued work is inside it."""
    overhead(1e-8)
    calls, syncs = [0], [0]
    work = spin(2e-4)

    def fn() -> None:
        calls[0] += 1
        work()

    settings = TimingSettings(warmup=7, warmup_s=0.0, min_samples=5, max_samples=5)
    s = time_callable(fn, settings, sync=lambda: syncs.__setitem__(0, syncs[0] + 1))
    assert s.block == 1 and s.n == 5
    assert calls[0] == 7 + 1 + 5  # warm-up, one sizing block, samples
    assert syncs[0] == 1 + 1 + 5


# ---------------------------------------------------------------------- network context
def test_network_context_evicts_and_touches_before_every_timed_call() -> None:
    """One call per sample, each right after the evictor read its bytes and the input was touched."""
    log: list[str] = []
    settings = TimingSettings(warmup=3, warmup_s=0.0, min_samples=6, max_samples=6, context="network",
                              context_bytes=1 << 20)
    s = time_callable(lambda: log.append("run"), settings, touch=lambda: log.append("touch"))
    assert s.block == 1 and s.n == 6
    assert log == ["run"] * 3 + ["touch", "run"] * 6  # warm-up untouched, then touch before each call
    assert M.evictor(1 << 20).nbytes == 1 << 20 and M._EVICTOR[0] is M.evictor(1 << 20)  # built once


def test_network_context_makes_cached_data_cold() -> None:
    """Reading a 4 MB array (max: vectorised, so memory-bound): back to back it stays in cache;
    after twice the last-level cache was read through, it comes from memory and measures slower."""
    data = np.ones(1 << 20, dtype=np.float32)
    llc = M.last_level_cache_bytes() or (32 << 20)
    base = dict(warmup=3, warmup_s=0.0, min_samples=15, max_samples=15, max_time_s=5.0)

    def trial() -> tuple[bool, tuple[float, float]]:
        warm = time_callable(data.max, TimingSettings(**base)).median
        cold = time_callable(data.max, TimingSettings(**base, context="network", context_bytes=2 * llc + (8 << 20))).median
        return cold > 1.5 * warm, (warm, cold)

    best_of(3, trial)


def test_timing_settings_check_their_context() -> None:
    from latbench.errors import UsageError

    with pytest.raises(UsageError, match="timing context must be one of warm, network"):
        TimingSettings(context="hot")
    with pytest.raises(UsageError, match="context_bytes must be a whole number >= 0, got -1"):
        TimingSettings(context="network", context_bytes=-1)
    t = TimingSettings(min_samples=7, context="network", context_bytes=5)
    assert t.warm() == TimingSettings(min_samples=7)
    assert TimingSettings(**t.to_dict()) == t  # what a table row stores rebuilds the settings


@pytest.mark.parametrize("field, bad, message", [
    ("max_time_s", math.nan, "timing max_time_s (--max-time) must be a finite number > 0 and <= 3600, got nan"),
    ("max_time_s", 0.0, "timing max_time_s (--max-time) must be a finite number > 0 and <= 3600, got 0.0"),
    ("max_time_s", math.inf, "timing max_time_s (--max-time) must be a finite number > 0 and <= 3600, got inf"),
    ("max_time_s", 3600.5, "timing max_time_s (--max-time) must be a finite number > 0 and <= 3600, got 3600.5"),
    ("min_samples", 0, "timing min_samples (--min-samples) must be a whole number >= 1, got 0"),
    ("min_samples", 2.5, "timing min_samples (--min-samples) must be a whole number >= 1, got 2.5"),
    ("min_samples", True, "timing min_samples (--min-samples) must be a whole number >= 1, got True"),
    ("target_iqr", -1.0, "timing target_iqr (--target-iqr) must be a finite number >= 0 and <= 1, got -1.0"),
    ("target_iqr", math.nan, "timing target_iqr (--target-iqr) must be a finite number >= 0 and <= 1, got nan"),
    ("max_samples", 0, "timing max_samples must be a whole number >= 1, got 0"),
    ("warmup", -1, "timing warmup must be a whole number >= 0, got -1"),
    ("warmup_s", math.inf, "timing warmup_s must be a finite number >= 0, got inf"),
    ("block_overhead", 0.0, "timing block_overhead must be a finite number > 0 and <= 1, got 0.0"),
    ("estimator", "p90", "timing estimator (`estimator`) must be one of mean, median, round_min, got 'p90'"),
    ("estimator", "round_min", "timing estimator round_min (the fastest round's median) needs `rounds` >= 2, got 1"),
    ("interleave", 0, "timing interleave (--interleave) must be a whole number >= 1 and <= 256, got 0"),
    ("interleave", 257, "timing interleave (--interleave) must be a whole number >= 1 and <= 256, got 257"),
    ("rounds", 101, "timing rounds (--rounds) must be a whole number >= 1 and <= 100, got 101"),
])
def test_timing_settings_refuse_values_out_of_bounds(field: str, bad, message: str) -> None:
    """The library refuses what the CLI refuses: one UsageError naming the field and its flag."""
    with pytest.raises(M.UsageError) as e:
        TimingSettings(**{field: bad})
    assert str(e.value) == message
    with pytest.raises(M.UsageError):  # a copy with a bad value too (validate applies CLI values so)
        dataclasses.replace(TimingSettings(), **{field: bad})


def test_timing_settings_accept_their_bounds() -> None:
    """The ends of every range are accepted; target_iqr 0 means never stop early."""
    edges = dict(warmup=0, warmup_s=0.0, target_iqr=0.0, min_samples=1, max_samples=1, max_time_s=3600,
                 block_overhead=1.0, rounds=100, interleave=256)
    assert TimingSettings(**edges).to_dict() == {**TimingSettings().to_dict(), **edges}
    assert TimingSettings(target_iqr=1, rounds=1, interleave=1).target_iqr == 1
    assert TimingSettings(rounds=2, estimator="round_min").estimator == "round_min"


def test_timing_settings_from_a_stored_dict() -> None:
    """A row's stored settings rebuild them; settings stored before the estimator was a field (and
    with keep_samples, gone since every sample is kept) get the estimator they were priced by."""
    t = TimingSettings(rounds=4, estimator="median", context="network", context_bytes=7)
    assert TimingSettings.from_dict(t.to_dict()) == t
    old = {**TimingSettings(rounds=10).to_dict(), "keep_samples": 200}
    del old["estimator"]
    assert TimingSettings.from_dict(old).estimator == "round_min"
    del old["rounds"]
    assert TimingSettings.from_dict(old) == TimingSettings(estimator="median")

def test_last_level_cache_is_the_largest_sysfs_cache() -> None:
    """Against the sizes sysfs lists (K/M suffixes), read here independently."""
    import glob

    sizes = []
    for f in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        text = open(f).read().strip()
        sizes.append(int(text[:-1]) * {"K": 1024, "M": 1024 ** 2}[text[-1]] if text[-1] in "KM" else int(text))
    if not sizes:
        pytest.skip("no cache sizes in sysfs on this machine")
    assert M.last_level_cache_bytes() == max(sizes) > 0


# ---------------------------------------------------------------------- interleaved rounds
def test_batch_rounds_visit_every_callable_in_turn(overhead: Callable[[float], float]) -> None:
    """Round r of every callable runs before round r+1 of any; warm-up calls open each round."""
    overhead(1e-8)
    log: list[str] = []
    work = spin(1e-4)

    def op(name: str) -> Callable[[], None]:
        def f() -> None:
            log.append(name)
            work()
        return f

    settings = TimingSettings(warmup=1, warmup_s=0.0, min_samples=3, max_samples=9, rounds=3)
    got = M.time_batch([op("a"), op("b")], settings)
    runs = "".join(log)
    # each round: 1 warm-up call, (the first round) 1 block-sizing call, 3 samples
    assert runs == "a" * 5 + "b" * 5 + ("a" * 4 + "b" * 4) * 2, runs
    for t in got:
        assert t.error is None and t.stats.n == 9 and len(t.stats.rounds) == 3 and t.seconds > 0


def test_a_slow_spell_slows_rounds_and_shows(overhead: Callable[[float], float]) -> None:
    """A callable three times as slow during its first three rounds (the machine busy) and at its
    own speed in the last two: the fastest round's median measures the op, the mean the spell
    (3 x 1.5 + 2 x 0.5 over 5 rounds = 1.1 ms), and both signs show it."""
    overhead(1e-8)
    slow, fast = spin(1.5e-3), spin(5e-4)
    calls = [0]
    per_round = 1 + 10  # warm-up call + samples (block sizing adds one call in round 0)

    def f() -> None:
        calls[0] += 1
        (slow if calls[0] <= 3 * per_round + 1 else fast)()

    settings = TimingSettings(warmup=1, warmup_s=0.0, min_samples=10, max_samples=50, rounds=5,
                              target_iqr=0.0, max_time_s=10.0)

    def trial() -> tuple[bool, Stats]:
        calls[0] = 0
        (t,) = M.time_batch([f], settings)
        s = t.stats
        return abs(s.round_min - 0.5) / 0.5 < 0.05 and abs(s.mean - 1.1) / 1.1 < 0.05, s

    s = best_of(3, trial)
    assert len(s.rounds) == 5 and s.round_min == min(s.rounds) and s.n == 50
    signs = s.spell_signs("mean")
    assert [x.rule for x in signs] == ["over_fastest", "round_spread"] and s.unstable
    assert signs[0].value == s.mean / s.round_min and signs[1].value == max(s.rounds) / min(s.rounds)


def test_a_failing_callable_is_reported_and_the_batch_goes_on(overhead: Callable[[float], float]) -> None:
    overhead(1e-8)
    state = {"n": 0}

    def flaky() -> None:
        state["n"] += 1
        if state["n"] > 4:  # fails in its second round
            raise RuntimeError("kernel crashed")

    settings = TimingSettings(warmup=1, warmup_s=0.0, min_samples=2, max_samples=6, rounds=3)
    ok, bad = M.time_batch([spin(1e-4), flaky], settings)
    assert ok.error is None and len(ok.stats.rounds) == 3
    assert bad.stats is None and isinstance(bad.error, RuntimeError) and "kernel crashed" in str(bad.error)
    with pytest.raises(RuntimeError, match="kernel crashed"):
        state["n"] = 10
        time_callable(flaky, settings)
    assert TimingSettings(rounds=3).estimator == "mean" == TimingSettings().estimator
    with pytest.raises(M.UsageError, match=r"rounds \(--rounds\) must be a whole number >= 1 and <= 100, got 0"):
        TimingSettings(rounds=0)


# ---------------------------------------------------------------------- Stats
SAMPLES = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6, 5.3]


def test_stats_from_samples_matches_numpy() -> None:
    s = Stats.from_samples(SAMPLES, block=10)
    a = np.array(SAMPLES)
    p25, p50, p75 = np.percentile(a, [25, 50, 75])
    assert (s.p25, s.median, s.p75) == pytest.approx((p25, p50, p75), rel=1e-12)
    assert s.median == 3.0 and s.min == 1.0 and s.max == 9.0
    assert s.mean == pytest.approx(a.mean()) and s.std == pytest.approx(a.std(ddof=1))
    assert s.n == 7 and s.block == 10 and s.samples == tuple(SAMPLES)  # every sample, in order
    assert s.iqr == pytest.approx(p75 - p25) and s.iqr_ratio == pytest.approx((p75 - p25) / p50)
    one = Stats.from_samples([2.5])
    assert (one.median, one.p25, one.p75, one.std, one.n) == (2.5, 2.5, 2.5, 0.0, 1)
    with pytest.raises(ValueError):
        Stats.from_samples([])


def _stats(mean: float, rounds: tuple, median: float = 1.0) -> Stats:
    return Stats(median=median, p25=0.0, p75=0.0, min=0.0, max=0.0, mean=mean, std=9.0, n=10, rounds=rounds)


@pytest.mark.parametrize(("stats", "estimator", "rules"), [
    (_stats(1.5, (1.0, 1.9)), "mean", []),  # at the limits (1.5, 2.0): not beyond
    (_stats(1.51, (1.0, 1.2)), "mean", ["over_fastest"]),
    (_stats(1.51, (1.0, 1.2)), "median", []),  # the median estimate is 1.0x the fastest round
    (_stats(1.2, (1.0, 2.01, 1.1)), "mean", ["round_spread"]),
    (_stats(1.0, (1.0, 2.5), median=1.6), "median", ["over_fastest", "round_spread"]),
    (_stats(1.2, (1.0, 2.5)), "round_min", ["round_spread"]),  # round_min is its own fastest round
    (_stats(3.0, ()), "mean", []),  # no rounds: nothing to compare (std 9x the mean or not)
    (_stats(3.0, (0.0, 0.0)), "mean", []),  # no fastest round to divide by
])
def test_spell_signs_on_hand_made_rounds(stats: Stats, estimator: str, rules: list) -> None:
    """A spell shows as the estimate beyond 1.5x the fastest round's median, or the round medians
    beyond 2x apart; pyperf's rule (std >= 10% of the mean, true of every case here) is gone."""
    signs = stats.spell_signs(estimator)
    assert [x.rule for x in signs] == rules
    for x in signs:
        want = (getattr(stats, estimator) if x.rule == "over_fastest" else max(stats.rounds)) / min(stats.rounds)
        assert x.value == want and x.limit == {"over_fastest": 1.5, "round_spread": 2.0}[x.rule]
    assert stats.unstable is bool(stats.spell_signs("mean"))


# ---------------------------------------------------------------------- DeviceProfile
def _profile(**kw: Any) -> DeviceProfile:
    base = dict(agent="cpu", runtime="torch", runtime_version="2.13.0", threads=1, delegate="eager",
                device="Intel Xeon", soc="", abi="x86_64", cores=2, os="Linux 6.1", python="3.11",
                governor="performance x2", affinity="0-1", options=(("opt", "99"),),
                info={"mkldnn": True})
    base.update(kw)
    return DeviceProfile(**base)


def _other(v: Any) -> Any:
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return v + 1
    if isinstance(v, str):
        return v + "x"
    if isinstance(v, tuple):
        return v + (("extra", "1"),)
    raise TypeError(type(v))


def test_profile_id_is_stable() -> None:
    """The id is a pure function of the identity: same facts, same id, in any process or version
    (tables are filed under it, so the pinned value must only change on purpose)."""
    p = _profile()
    assert p.id == _profile().id == p.id
    assert p.id == "15eac93f54abea0a"
    assert _profile(options=(("opt", "99"),)).id == _profile(options=(("opt", "99"),), info={}).id


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(DeviceProfile) if f.name != "info"])
def test_profile_id_changes_with_each_identity_field(name: str) -> None:
    p = _profile()
    q = dataclasses.replace(p, **{name: _other(getattr(p, name))})
    assert q.id != p.id
    assert [d.split(":")[0] for d in p.differences(q)] == [name]


def test_profile_id_ignores_info() -> None:
    p = _profile()
    q = dataclasses.replace(p, info={"mkldnn": False, "temps": [41.0, 43.5]})
    assert q.id == p.id and q == p and p.differences(q) == []


def test_profile_round_trip() -> None:
    p = _profile(info={"mkldnn": True, "zones": [1, 2]})
    d = json.loads(json.dumps(p.to_dict()))
    assert d["id"] == p.id
    q = DeviceProfile.from_dict(d)
    assert q == p and q.id == p.id and q.info == p.info
    assert q.options == (("opt", "99"),)
    assert p.describe().startswith("cpu torch 2.13.0 1 thread(s)") and p.id in p.describe()


def test_host_profile_identity() -> None:
    a = host_profile("cpu", "torch", "2.13.0", 1, delegate="eager", info={"x": 1})
    b = host_profile("cpu", "torch", "2.13.0", 1, delegate="eager", info={"x": 2})
    c = host_profile("cpu", "torch", "2.13.0", 2, delegate="eager")
    assert a.id == b.id and a.id != c.id
    assert a.cores >= 1 and a.abi and a.python.count(".") == 1


# ---------------------------------------------------------------------- the shared agent loop
def test_agent_measure_passes_its_synchronizer_and_isolates_failures(overhead: Callable[[float], float]) -> None:
    """Agent.measure times with the agent's sync hook, and a failing op does not stop the run."""
    from device_agents.base import Agent
    from latbench.device import host_profile as hp

    overhead(1e-8)
    syncs = [0]

    class Dummy(Agent):
        name = "dummy"

        def fingerprint(self) -> DeviceProfile:
            return hp(self.name, "none", "0", self.threads)

        def prepare_op(self, op: O.OpSpec) -> Callable[[], Any]:
            if op.kind == "softmax":
                raise ValueError(f"axis {op.axis} out of range")
            return spin(2e-4)

        def synchronizer(self) -> Callable[[], Any]:
            return lambda: syncs.__setitem__(0, syncs[0] + 1)

    ops = [O.activation((1, 2, 3, 3), "relu"), O.softmax((1, 2, 3, 3), axis=7), O.activation((1, 2, 3, 3), "tanh")]
    settings = TimingSettings(warmup=1, warmup_s=0.0, min_samples=5, max_samples=5)
    got = list(Dummy().measure(ops, settings))
    assert [m.status for m in got] == ["ok", "failed", "ok"]
    assert "ValueError: axis 7 out of range" in got[1].error and math.isnan(got[1].median_ms)
    assert syncs[0] == 2 * (1 + 1 + 5)
    assert got[0].settings["timing"]["min_samples"] == 5 and got[0].settings["threads"] == 1


def test_agent_measure_interleaves_batches_and_keeps_order(overhead: Callable[[float], float]) -> None:
    """interleave=2, rounds=3: ops are prepared two at a time and timed round-robin; results come
    in op order, a failing op in its place, each with its round medians and estimator."""
    from device_agents.base import Agent
    from latbench.device import host_profile as hp

    overhead(1e-8)
    prepared: list[str] = []

    class Dummy(Agent):
        name = "dummy"

        def fingerprint(self) -> DeviceProfile:
            return hp(self.name, "none", "0", self.threads)

        def prepare_op(self, op: O.OpSpec) -> Callable[[], Any]:
            prepared.append(op.key)
            if op.kind == "softmax":
                raise ValueError("no softmax here")
            return spin(1e-4)

    ops = [O.activation((1, 2, 3, 3), "relu"), O.softmax((1, 2, 3, 3)), O.activation((1, 2, 3, 3), "tanh")]
    settings = TimingSettings(warmup=1, warmup_s=0.0, min_samples=3, max_samples=9, rounds=3, interleave=2)
    it = Dummy().measure(ops, settings)
    first = next(it)
    assert prepared == [ops[0].key, ops[1].key]  # the first batch only
    got = [first, *it]
    assert [m.key for m in got] == [o.key for o in ops] and [m.status for m in got] == ["ok", "failed", "ok"]
    for m in (got[0], got[2]):
        assert len(m.extra["round_medians"]) == 3 and m.settings["estimator"] == "mean"
        assert m.stats.round_min == min(m.extra["round_medians"]) and m.wall_s >= m.timed_s > 0
    assert "no softmax here" in got[1].error

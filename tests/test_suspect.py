"""Rows taken in a slow spell: detected during a profile, timed again, `unstable` only where they stay
so, listed by `table check`, timed again by `profile --retime-suspect`.

A real local agent (registered for the test, as tests/test_options.py does) whose ops busy-wait
1 ms a call; an injected spell makes chosen ops 4x slower for chosen calls. Timing settings fix
11 calls a round (1 warm-up + 10 samples, network context, nothing read), so a spell is placed
on whole rounds by call count, and the signs are ratios, not this host's speed."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import ClassVar

import pytest

import device_agents
from device_agents.base import Agent, Prepared
from latbench import ops as O
from latbench.device import DeviceProfile, host_profile
from latbench.measure import SpellSign, TimingSettings
from latbench.profiling import measure_order, profile_into, retime_suspects
from latbench.runmeta import REFERENCE_OP, check_run_meta
from latbench.store import LatencyTable
from latbench.suspect import row_signs, suspects

FAST_MS, SLOW_MS = 1.0, 4.0
CALLS_PER_ROUND = 11
TIMING = TimingSettings(warmup=1, warmup_s=0.0, target_iqr=0.0, min_samples=10, max_samples=50, max_time_s=30.0,
                        rounds=5, interleave=8, context="network", context_bytes=0)
OPS = [O.activation((1, c, 8, 8), "relu") for c in range(1, 7)]


def spin(ms: float) -> None:
    """Busy-wait `ms` of this thread's CPU time (a sleep's wake-up jitter would blur the spell)."""
    end = time.thread_time() + ms / 1e3
    while time.thread_time() < end:
        pass


class SpellAgent(Agent):
    """Ops busy-wait FAST_MS a call; an op in `first_slow` runs SLOW_MS for its first n calls in
    this process (a spell during its first take), one in `every_other` in every other round of
    every take (a row that stays slow). Calls are counted per key across instances, so a take in
    a later command of the same process goes on from the last one."""

    name = "spell"
    first_slow: ClassVar[dict[str, int]] = {}
    every_other: ClassVar[set[str]] = set()
    calls: ClassVar[dict[str, int]] = {}

    def fingerprint(self) -> DeviceProfile:
        return host_profile(self.name, "busy-wait", "1", self.threads)

    def prepare_op(self, op: O.OpSpec) -> Prepared:
        key = op.key

        def run() -> None:
            i = SpellAgent.calls[key] = SpellAgent.calls.get(key, 0) + 1
            slow = i <= self.first_slow.get(key, 0) or (key in self.every_other and (i - 1) // CALLS_PER_ROUND % 2 == 0)
            spin(SLOW_MS if slow else FAST_MS)

        return Prepared(run)


@pytest.fixture
def spell(monkeypatch: pytest.MonkeyPatch):
    """SpellAgent registered as device `spell`, with a fresh plan and call counts."""
    monkeypatch.setitem(device_agents._AGENTS, "spell", (__name__, "SpellAgent"))
    monkeypatch.setattr(SpellAgent, "first_slow", {})
    monkeypatch.setattr(SpellAgent, "every_other", set())
    monkeypatch.setattr(SpellAgent, "calls", {})
    return SpellAgent


def _table(path: Path, agent: Agent) -> LatencyTable:
    t = LatencyTable.open(path, agent.profile)
    check_run_meta(t, "op", "none", None, TIMING)
    return t


def test_a_row_timed_in_a_spell_is_timed_again_and_one_that_stays_slow_is_unstable(spell, cli, tmp_path: Path) -> None:
    """OPS[1] is slow in its first three rounds (the spell), OPS[4] in every other round: both
    are suspect after the pass, `table check` lists exactly them; the profile times them again:
    OPS[1] then holds its spell-free estimate, its first take in extra["earlier"]; OPS[4] stays
    suspect (unstable), the only row `table check` lists afterwards."""
    spell.first_slow = {OPS[1].key: 3 * CALLS_PER_ROUND}
    spell.every_other = {OPS[4].key}
    agent = SpellAgent()
    path = tmp_path / "t.sqlite"
    with _table(path, agent) as t:
        run = profile_into(t, agent, OPS, TIMING, retime="none")
        assert run.measured == 6 and run.retimed == 0
        assert {x.key for x in suspects(t)} == {OPS[1].key, OPS[4].key}
    code, out, err = cli("table", "check", str(path), "--json")
    doc = json.loads(out)
    assert code == 3 and {x["key"] for x in doc["rows_suspect"]} == {OPS[1].key, OPS[4].key}
    assert doc["rows"] == 6 and doc["suspect"] == 2 and doc["unstable"] == 0
    for x in doc["rows_suspect"]:  # mean (3 x 4 + 2 x 1) / 5 = 2.8x the fastest round; rounds 4x apart
        assert {s["rule"] for s in x["signs"]} == {"over_fastest", "round_spread"} and not x["unstable"]

    with LatencyTable.open(path) as t:
        first = t.row(OPS[1].key)
        run = profile_into(t, agent, OPS, TIMING)  # nothing new: the pass times the suspect rows again
        assert (run.measured, run.retimed, run.unstable) == (0, 2, 1)
        again = t.row(OPS[1].key)
        still = t.row(OPS[4].key)
        untouched = t.row(OPS[0].key)
        left = suspects(t)
    (take,) = again["extra"]["earlier"]
    assert take["estimate"] == first["estimate"] and take["taken_at"] == first["taken_at"]
    assert take["round_medians"] == first["extra"]["round_medians"]
    assert {s["rule"] for s in take["signs"]} == {"over_fastest", "round_spread"}
    # spell-free: the estimate is the fast op's, under half the first take's 2.8 x 1 ms
    assert again["estimate"] < first["estimate"] / 2 and again["estimator"] == "mean"
    assert row_signs("mean", again["median"], again["mean"], again["min"], again["extra"], None) == ()
    assert [(x.key, x.retimed, x.unstable) for x in left] == [(OPS[4].key, 1, True)]
    assert len(still["extra"]["earlier"]) == 1 and "earlier" not in untouched["extra"]

    code, out, err = cli("table", "check", str(path))
    assert code == 3 and out.splitlines() == [left[0].text()] and out.startswith(f"{OPS[4].key}: mean ")
    assert out.rstrip().endswith("; unstable: still so after 1 re-timing(s)")
    assert err.strip() == (f"{path}: 1 of 6 rows suspect, 1 of them unstable (still so after being timed again); "
                           f"`latbench profile --device D --out {path} --retime-suspect` times them again")
    code, out, _ = cli("table", "show", str(path), "--json")
    shown = {r["key"]: (r["suspect"], r["unstable"]) for r in json.loads(out)["rows"]}
    assert shown[OPS[4].key] == (True, True) and shown[OPS[1].key] == (False, False)
    with LatencyTable.open(path) as t:  # the automatic pass times a row again once only
        assert profile_into(t, agent, OPS, TIMING).retimed == 0


def test_a_batch_whose_reference_ran_slow_is_suspect_and_timed_again(spell, tmp_path: Path) -> None:
    """Six ops in batches of two (each with the per-call op and the reference): the reference runs
    4x slow through the first batch only, so that batch's two rows, and only they, are suspect
    ("reference", ~4x the profile's median); timed again beside a fast reference, none is."""
    spell.first_slow = {REFERENCE_OP.key: 5 * CALLS_PER_ROUND}  # its whole first take
    agent = SpellAgent()
    timing = TimingSettings(**{**TIMING.to_dict(), "interleave": 4})
    with LatencyTable.open(tmp_path / "t.sqlite", agent.profile) as t:
        check_run_meta(t, "op", "none", None, timing)
        profile_into(t, agent, OPS, timing, retime="none")
        first_batch = {op.key for op in measure_order(OPS)[:2]}
        found = suspects(t)
        assert {x.key for x in found} == first_batch
        refs = [x.estimate_ms for x in t.reference.samples]
        assert len(refs) == 3 and refs[0] > 2 * max(refs[1:])
        for x in found:
            (sign,) = x.signs
            assert sign.rule == "reference" and sign.value == t.row(x.key)["extra"]["reference_ms"] / sorted(refs)[1]
        run = retime_suspects(t, agent, timing, profile_into(t, agent, [], timing, retime="none"))
        assert (run.retimed, run.unstable) == (2, 0) and suspects(t) == []


def test_profile_retime_suspect_times_the_tables_suspect_rows_again(spell, cli, tmp_path: Path) -> None:
    """`latbench profile --retime-suspect` on a table whose OPS[2] was taken in a spell (and not
    timed again): with the table's own context and estimator it times that row alone again, then
    `table check` finds nothing (exit 0); op selections are refused with it."""
    spell.first_slow = {OPS[2].key: 3 * CALLS_PER_ROUND}
    agent = SpellAgent()
    path = tmp_path / "t.sqlite"
    with _table(path, agent) as t:
        profile_into(t, agent, OPS, TIMING, retime="none")
        assert [x.key for x in suspects(t)] == [OPS[2].key]
        before = {r["key"]: r["taken_at"] for r in t.rows()}
    code, out, err = cli("profile", "-d", "spell", "--out", str(path), "--retime-suspect", "--json")
    assert code == 0, err
    s = json.loads(out)
    assert (s["retimed"], s["unstable"], s["measured"], s["total"]) == (1, 0, 0, 0)
    assert (s["estimator"], s["context"], s["context_bytes"]) == ("mean", "network", 0)
    with LatencyTable.open(path, readonly=True) as t:
        after = {r["key"]: r["taken_at"] for r in t.rows()}
        assert len(t.row(OPS[2].key)["extra"]["earlier"]) == 1
    assert {k for k in before if after[k] != before[k]} == {OPS[2].key}
    code, out, err = cli("table", "check", str(path))
    assert code == 0 and out == "" and err.strip() == f"{path}: 0 of 6 rows suspect, 0 of them unstable (still so after being timed again)"
    code, out, err = cli("profile", "-d", "spell", "--out", str(path), "--retime-suspect")
    assert code == 0 and "0 suspect rows timed again; priced by the mean" in out
    code, _, err = cli("profile", "-d", "spell", "--out", str(path), "--retime-suspect", "--max-ops", "2", "-s", "tiny")
    assert code == 2 and err.strip() == (f"latbench: error: --retime-suspect times the suspect rows of {path} again: "
                                         f"leave out --space, --max-ops")
    code, _, err = cli("profile", "-d", "spell", "--out", str(tmp_path / "none.sqlite"), "--retime-suspect")
    assert code == 2 and "needs an existing table" in err
    code, _, err = cli("profile", "-d", "spell", "--out", str(path), "--retime-suspect", "--estimator", "median")
    assert code == 2 and err.strip() == (f"latbench: error: {path} holds entries priced by mean (the mean of all "
                                         f"samples); this run asks for median: resume with --estimator mean, or use "
                                         f"another --out")


@pytest.mark.parametrize("mean, extra, ref_median, rules", [
    (1.05, {"round_medians": [1.0, 1.1], "reference_ms": 1.2}, 1.0, []),  # 1.2x the profile's median: the limit
    (1.05, {"round_medians": [1.0, 1.1], "reference_ms": 1.21}, 1.0, ["reference"]),
    (1.05, {"round_medians": [1.0, 1.1], "reference_ms": 5.0}, None, []),  # no reference timed in the profile
    (1.6, {"reference_ms": 3.0}, 1.0, ["reference"]),  # no rounds (android): the reference alone
    (1.6, {}, 1.0, []),
    (1.6, {"round_medians": [1.0, 2.5], "reference_ms": 2.0}, 1.0, ["over_fastest", "round_spread", "reference"]),
])
def test_row_signs_on_hand_made_rows(mean: float, extra: dict, ref_median, rules: list) -> None:
    """A row's signs: its own (where rounds are kept: the mean beyond 1.5x its fastest round, the
    rounds beyond 2x apart) and its batch's reference beyond 1.2x the profile's median."""
    signs = row_signs("mean", 1.05, mean, 0.9, extra, ref_median)
    assert [s.rule for s in signs] == rules
    ref = [s for s in signs if s.rule == "reference"]
    if ref:
        assert ref[0].value == extra["reference_ms"] / ref_median and ref[0].limit == 1.2
        assert ref[0].text() == (f"its batch's reference kernel {ref[0].value:.2f}x its profile-wide median (> 1.2)")
    assert SpellSign("round_spread", 2.5, 2.0).text() == "round medians 2.50x apart (> 2)"

"""`latbench profile` end to end: a SIGKILLed run resumes without losing or repeating an op, and
every bad input is one line with the right exit code."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cli_result import run_cli
from conftest import CLI_ENV, ROOT, latbench_exe
from latbench import ops as O
from latbench.store import LatencyTable

QUICK = ["--max-time", "0.05", "--min-samples", "5"]
FAST = [*QUICK, "--rounds", "2"]  # 2 interleaved rounds, not 10: these tests count rows, not speed


def _stored(path: Path, first: bool = False) -> dict[str, float]:
    """key -> taken_at of every row (a re-measured op would get a new timestamp); `first`: of its
    first take, where a row was timed again as suspect (extra["earlier"] keeps that take)."""
    if not path.exists():
        return {}
    with LatencyTable.open(path, create=False) as t:
        return {m.key: m.extra["earlier"][0]["taken_at"] if first and m.extra.get("earlier") else m.taken_at
                for m in t.measurements()}


def test_sigkill_mid_run_then_resume(tmp_path: Path, cli) -> None:
    """Kill a real profile subprocess mid-run: nothing measured is lost, the rerun measures only the rest."""
    table, ops = tmp_path / "t.sqlite", tmp_path / "ops.txt"
    assert run_cli(cli, "enumerate", "tiny", "-r", "24", "-g", "block", "-o", str(ops)).returncode == 0
    ops.write_text("".join(ops.read_text().splitlines(keepends=True)[:16]))  # 16 of its 24 blocks
    args = [latbench_exe(), "profile", "--device", "tflite", "--ops", str(ops),
            "--interleave", "4", "--rounds", "2", "--context", "warm", "--out", str(table),
            "--max-time", "0.02", "--min-samples", "3"]  # in 4 batches of 4: killed after the second
    proc = subprocess.Popen(args, cwd=ROOT, env=CLI_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            try:
                if len(_stored(table)) >= 5:
                    break
            except Exception:  # the table may not exist or be mid-creation yet
                pass
            if proc.poll() is not None:
                pytest.fail(f"profile ended before it could be killed: {proc.stderr.read().decode()[-500:]}")
            time.sleep(0.05)
        else:
            pytest.fail("no measurement committed within 90 s")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    before = _stored(table)
    assert len(before) >= 5

    r = run_cli(cli, *args[1:], "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    after = _stored(table, first=True)
    assert summary["total"] == 16 and summary["skipped"] == len(before)
    assert summary["measured"] + summary["failed"] == summary["total"] - len(before)
    assert len(after) == summary["total"]
    for key, taken in before.items():  # kept, and not measured again (but as suspect, its take kept)
        assert after[key] == taken
    with LatencyTable.open(table, create=False) as t:
        assert len(t) == len(set(t.keys(status=None))) == summary["total"]


def test_rerun_of_complete_table_measures_nothing(tmp_path: Path, cli) -> None:
    table = tmp_path / "t.sqlite"
    base = ["profile", "--device", "tflite", "--space", "tiny", "-r", "24", "--out", str(table), *FAST, "--json"]
    first = json.loads(run_cli(cli, *base).stdout)
    again = run_cli(cli, *base)
    assert again.returncode == 0
    second = json.loads(again.stdout)
    assert second["measured"] == 0 and second["skipped"] == first["total"]


def test_resumed_run_at_another_resolution_stamps_the_keys_it_shares(tmp_path: Path, cli) -> None:
    """-r 24 then -r 32 leaves every row's extra["resolutions"] as one run of both would: a key
    stored by the first run and used at 32 too belongs to 32's OFA YAML file (not measured again)."""
    from latbench.profiler import select_ops

    table = tmp_path / "t.sqlite"
    base = ["profile", "--device", "tflite", "--space", "tiny", "--out", str(table), *FAST, "--json"]
    assert run_cli(cli, *base, "-r", "24").returncode == 0
    taken = _stored(table, first=True)
    assert run_cli(cli, *base, "-r", "32").returncode == 0
    _, want, _ = select_ops("tiny", [24, 32], "block")
    with LatencyTable.open(table, create=False) as t:
        got = {r["key"]: r["extra"].get("resolutions") for r in t.rows(columns=("extra",))}
    shared = [k for k, v in want.items() if v == [24, 32]]
    assert shared and all(_stored(table, first=True)[k] == taken[k] for k in shared)
    assert got == {k: list(v) for k, v in want.items()}
    show = run_cli(cli, "table", "show", str(table), "--limit", "1")
    assert show.returncode == 0 and "\nspace: tiny (profiled)\n" in show.stdout
    bad = run_cli(cli, "table", "show", str(table), "--kind", "bogus")
    assert bad.returncode == 2 and bad.stderr.startswith("latbench: error: --kind 'bogus' is not an op kind (one of conv,")


def test_max_ops_limits_new_measurements(tmp_path: Path, cli) -> None:
    table = tmp_path / "t.sqlite"
    r = run_cli(cli, "profile", "--device", "tflite", "--space", "tiny", "-r", "24", "--max-ops", "3",
                     "--out", str(table), *FAST, "--json")
    s = json.loads(r.stdout)
    assert s["measured"] == 3 and s["remaining"] == s["total"] - 3
    assert len(_stored(table)) == 3


def test_ops_are_measured_in_a_seeded_shuffled_order(tmp_path: Path) -> None:
    """max_ops takes the first ops in enumeration order; they are measured shuffled (so a slow
    minute does not land on one resolution's blocks), the same way in every run."""
    from device_agents import get_agent
    from latbench.measure import TimingSettings
    from latbench.profiler import ops_with_resolutions
    from latbench.profiling import measure_order, profile_into
    from latbench.spaces import get_space

    ops, _ = ops_with_resolutions(get_space("tiny"), [24, 32], "block")
    assert len(ops) >= 8
    agent = get_agent("tflite", threads=1)
    timing = TimingSettings(warmup=1, warmup_s=0.0, min_samples=3, max_samples=5, max_time_s=0.02)
    orders = []
    for shuffle in (True, True, False):
        seen: list[str] = []
        with LatencyTable.open(tmp_path / f"t{len(orders)}.sqlite", agent.profile) as t:
            run = profile_into(t, agent, ops, timing, max_ops=8, shuffle=shuffle, on_op=lambda op: seen.append(op.key))
            assert run.measured + run.failed == 8 and t.keys(status=None) == {op.key for op in ops[:8]}
        orders.append(seen)
    assert orders[0] == orders[1] == [op.key for op in measure_order(ops[:8])]
    assert orders[2] == [op.key for op in ops[:8]] != orders[0]


def test_every_interleaved_batch_samples_the_per_call_cost(tmp_path: Path) -> None:
    """In interleaved batches each batch also times INVOCATION_OP and REFERENCE_OP: the table gets
    no row for them, its meta one sample of each per batch (a resumed run adds its own), the
    per-call estimate the mean of all its samples (each batch's mean weighted by its count), and
    every row the reference estimate of its own batch."""
    from device_agents import get_agent
    from latbench.measure import TimingSettings
    from latbench.profiler import ops_with_resolutions
    from latbench.profiling import profile_into
    from latbench.runmeta import INVOCATION_OP, REFERENCE_OP, invocation_ms
    from latbench.tablemeta import CompanionEntry, CompanionSample
    from latbench.spaces import get_space

    ops, _ = ops_with_resolutions(get_space("tiny"), [24, 32], "block")
    assert len(ops) >= 10
    agent = get_agent("ort", threads=1)
    timing = TimingSettings(warmup=1, warmup_s=0.0, min_samples=3, max_samples=5, max_time_s=0.02,
                            rounds=2, interleave=4)
    with LatencyTable.open(tmp_path / "t.sqlite", agent.profile) as t:
        run = profile_into(t, agent, ops, timing, max_ops=7, retime="none")  # batches of 2 ops + 2: 2, 2, 2, 1
        assert run.measured + run.failed == 7 and not {INVOCATION_OP.key, REFERENCE_OP.key} & t.keys(status=None)
        assert len(t.invocation.samples) == len(t.reference.samples) == 4
        profile_into(t, agent, ops, timing, max_ops=2, retime="none")  # a resumed run: one batch of 2 more
        inv, ref = t.invocation, t.reference
        assert len(t.keys(status=None)) == 9 and INVOCATION_OP.key not in t.keys(status=None)
        st = [x.stats for x in inv.samples]
        assert len(st) == 5 and all(x.estimate_ms == x.stats["mean"] > 0 and len(x.round_medians) == 2
                                    for x in inv.samples)
        pooled = sum(x["n"] * x["mean"] for x in st) / sum(x["n"] for x in st)  # the mean of every sample
        assert invocation_ms(t) == inv.estimate_ms == pytest.approx(pooled, rel=1e-12)
        assert inv.estimator == "mean" and ref.key == REFERENCE_OP.key and len(ref.samples) == 5
        batch_refs = [x.estimate_ms for x in ref.samples]
        rows = sorted(t.measurements(), key=lambda m: m.taken_at)
        assert [m.extra["reference_ms"] for m in rows] == [batch_refs[i] for i in (0, 0, 1, 1, 2, 2, 3, 4, 4)]
        run = profile_into(t, agent, ops, timing, max_ops=1, sample_invocation=False, retime="none")
        assert run.measured + run.failed == 1 and len(t.invocation.samples) == 5
    with LatencyTable.open(tmp_path / "old.sqlite", agent.profile) as t:  # a migrated entry: one flat sample
        t.set_invocation(CompanionEntry(estimate_ms=1.0, status="ok", timing=timing,
                                        samples=(CompanionSample(estimate_ms=1.0, status="ok"),)))
        profile_into(t, agent, ops, timing, max_ops=2, retime="none")
        inv = t.invocation
        assert [x.estimate_ms for x in inv.samples][0] == 1.0 and len(inv.samples) == 2
        # a sample without a count weighs as much as the other batch
        assert inv.estimate_ms == pytest.approx((1.0 + inv.samples[1].estimate_ms) / 2, rel=1e-12)


def test_each_measurement_is_its_own_transaction_committed_when_handed_over(tmp_path: Path) -> None:
    """profile_into commits every Measurement alone, as the agent hands it over: another connection
    reads the row when on_result sees it, and no transaction holds two rows. Interleaved ops are
    handed over together at their batch's end (their samples are taken together), so what a crash
    can lose is the batch in flight, never a row already handed over. Rows timed again as suspect
    replace theirs the same way, one transaction each."""
    import sqlite3
    from contextlib import closing

    from device_agents import get_agent
    from latbench.measure import TimingSettings
    from latbench.profiler import ops_with_resolutions
    from latbench.profiling import profile_into
    from latbench.spaces import get_space

    ops, _ = ops_with_resolutions(get_space("tiny"), [24], "block")
    agent = get_agent("ort", threads=1)
    timing = TimingSettings(warmup=1, warmup_s=0.0, min_samples=3, max_samples=5, max_time_s=0.02,
                            rounds=2, interleave=4)
    path = tmp_path / "t.sqlite"
    handed: list[str] = []
    statements: list[str] = []
    with LatencyTable.open(path, agent.profile) as t, closing(sqlite3.connect(path)) as reader:
        def on_result(m) -> None:  # committed already: visible to a connection of its own
            handed.append(m.key)
            assert reader.execute("SELECT key FROM measurements WHERE key = ?", (m.key,)).fetchall() == [(m.key,)]
            assert reader.execute("SELECT COUNT(*) FROM measurements").fetchone()[0] == len(set(handed))

        t.conn.set_trace_callback(statements.append)
        run = profile_into(t, agent, ops, timing, max_ops=7, on_result=on_result)
    assert run.measured + run.failed == len(set(handed)) == 7 and len(handed) == 7 + run.retimed
    transactions, current = [], None
    for sql in statements:
        if sql.startswith("BEGIN"):
            current = []
        elif sql == "COMMIT":
            transactions.append(current)
            current = None
        elif current is not None:
            current.append(sql)
    rows = [sum(sql.startswith("INSERT OR REPLACE INTO measurements") for sql in tx) for tx in transactions]
    assert sum(rows) == 7 + run.retimed and max(rows) == 1, rows  # one row each (+ the meta's)


def test_ops_file_from_enumerate(tmp_path: Path, cli) -> None:
    """`--ops` takes the PaddleSlim op list that `latbench enumerate` writes."""
    ops = tmp_path / "ops.txt"
    assert run_cli(cli, "enumerate", "tiny", "-r", "24", "-o", str(ops)).returncode == 0
    lines = [l for l in ops.read_text().splitlines() if l.strip()]
    table = tmp_path / "t.sqlite"
    r = run_cli(cli, "profile", "--device", "tflite", "--ops", str(ops), "--max-ops", "4",
                     "--out", str(table), *FAST, "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["total"] == len(set(lines)) and s["measured"] == 4


def test_a_table_profiled_from_an_enumerated_op_list_prices_the_space(tmp_path: Path, cli) -> None:
    """ORT fuses conv+relu in a network, but an op list's rows are its ops as listed: the table
    records fusion none, and a subnet is priced by exactly those rows, with no fallback."""
    from latbench.predict import Predictor
    from latbench.spaces import get_space

    ops, table = tmp_path / "ops.txt", tmp_path / "t.sqlite"
    assert run_cli(cli, "enumerate", "tiny", "-r", "24", "-o", str(ops)).returncode == 0
    r = run_cli(cli, "profile", "--device", "ort", "--ops", str(ops), "--out", str(table), *FAST)
    assert r.returncode == 0, r.stderr
    space = get_space("tiny")
    with LatencyTable.open(table, readonly=True) as t:
        assert t.run_settings.fusion == "none"
        pred = Predictor.from_table(t, space)
        rows = t.estimates()
        inv = t.invocation.estimate_ms
    cfg = space.smallest()
    price = pred.explain(cfg)
    assert not price.misses
    keys = [o.key for b in space.blocks(cfg) for o in O.expand(b)]
    assert price.raw_ms == pytest.approx(inv + math.fsum(max(0.0, rows[k] - inv) for k in keys), rel=1e-12)


# ---------------------------------------------------------------------- bad inputs
def _one_line_error(r: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    err = [l for l in r.stderr.splitlines() if l.startswith("latbench: error:")]
    assert len(err) == 1, r.stderr
    for n in needles:
        assert n in err[0], err[0]


def test_unknown_device(tmp_path: Path, cli) -> None:
    r = run_cli(cli, "profile", "--device", "tpu", "--space", "tiny", "--out", str(tmp_path / "t.sqlite"))
    _one_line_error(r, 2, "unknown device 'tpu'", "ort", "tflite")


def test_missing_runtime_names_the_extra(tmp_path: Path) -> None:
    """With onnxruntime unimportable, the error names the pip extra to install."""
    fake = tmp_path / "site"
    (fake / "onnxruntime").mkdir(parents=True)
    (fake / "onnxruntime" / "__init__.py").write_text("raise ImportError('onnxruntime hidden by the test')\n")
    env = {**CLI_ENV, "PYTHONPATH": f"{fake}{os.pathsep}{CLI_ENV.get('PYTHONPATH', '')}"}
    r = subprocess.run([latbench_exe(), "profile", "--device", "ort", "--space", "tiny",
                        "--out", str(tmp_path / "t.sqlite")], capture_output=True, text=True, cwd=ROOT,
                       env=env, timeout=120)
    _one_line_error(r, 1, "latbench[ort]")
    assert not (tmp_path / "t.sqlite").exists()


def test_foreign_table_file(tmp_path: Path, cli) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    r = run_cli(cli, "profile", "--device", "tflite", "--space", "tiny", "--out", str(junk), *FAST)
    _one_line_error(r, 1, "junk.sqlite", "not a latbench table")
    assert junk.read_bytes() == b"this is not a database" * 100


def test_op_file_with_bad_line(tmp_path: Path, cli) -> None:
    ops = tmp_path / "ops.txt"
    ops.write_text("conv 0 0 1 3 32 32 8 1 3 1 2 1\nactivation relu 1 8 16 16\nconv 0 0 1 three 32 32 8 1 3 1 2 1\n")
    r = run_cli(cli, "profile", "--device", "tflite", "--ops", str(ops), "--out", str(tmp_path / "t.sqlite"))
    _one_line_error(r, 1, "ops.txt:3")


def test_table_of_another_profile(tmp_path: Path, cli) -> None:
    table = tmp_path / "t.sqlite"
    ok = run_cli(cli, "profile", "--device", "tflite", "--space", "tiny", "-r", "24", "--max-ops", "2",
                      "--out", str(table), *FAST)
    assert ok.returncode == 0, ok.stderr
    r = run_cli(cli, "profile", "--device", "tflite", "--threads", "2", "--space", "tiny", "-r", "24",
                     "--out", str(table), *FAST)
    _one_line_error(r, 1, "threads")
    assert len(_stored(table)) == 2


def test_bad_resolution_and_granularity(tmp_path: Path, cli) -> None:
    r = run_cli(cli, "profile", "--device", "tflite", "--space", "tiny", "-r", "99", "--out", str(tmp_path / "t"))
    _one_line_error(r, 2, "99", "24, 32")
    r = run_cli(cli, "profile", "--device", "tflite", "--space", "tiny", "-g", "layer", "--out", str(tmp_path / "t"))
    _one_line_error(r, 2, "granularity")


def test_space_and_ops_are_exclusive(tmp_path: Path, cli) -> None:
    r = run_cli(cli, "profile", "--device", "tflite", "--out", str(tmp_path / "t"))
    _one_line_error(r, 2, "--space, --ops or --model")


# ---------------------------------------------------------------------- cache context
def test_space_profile_times_in_network_context(tmp_path: Path, cli) -> None:
    """With --space every entry is timed in network context, reading the space's median subnet
    weights (capped at twice the last-level cache) before each call, and the table holds the
    runtime's per-call cost with its statistics."""
    from latbench.measure import last_level_cache_bytes
    from latbench.spaces import get_space

    table = tmp_path / "t.sqlite"
    r = run_cli(cli, "profile", "-d", "ort", "-s", "tiny", "-r", "24", "--max-ops", "3", "--out", str(table), *QUICK,
                "--json")  # the default rounds and batch size
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    want = get_space("tiny").context_bytes()
    llc = last_level_cache_bytes()
    expected = min(want, 2 * llc) if llc else min(want, 64 << 20)
    assert summary["context"] == "network" and summary["context_bytes"] == expected > 0
    assert (summary["rounds"], summary["interleave"]) == (10, 24)
    with LatencyTable.open(table, create=False) as t:
        rows = list(t.measurements())
        estimates = t.estimates()
        meta, inv = t.run_settings, t.invocation
    assert len(rows) == 3
    for m in rows:
        assert m.settings["timing"]["context"] == "network" and m.settings["timing"]["context_bytes"] == expected
        assert m.stats.block == 1  # one call per sample
        # timed in 10 interleaved rounds of >= 5 samples, every sample kept; priced by their mean
        rounds = m.extra["round_medians"]
        assert len(rounds) == 10 and m.stats.n >= 50 and m.settings["estimator"] == "mean"
        assert len(m.stats.samples) == m.stats.n and estimates[m.key] == pytest.approx(
            math.fsum(m.stats.samples) / m.stats.n, rel=1e-12)
    assert (meta.context, meta.context_bytes, meta.estimator) == ("network", expected, "mean")
    assert inv.key == "activation-input:1x1x1x1-type:relu" and inv.timing.context == "network"
    # one sample before the run, one from the run's batch (and one from the batch that timed its
    # suspect rows again, if any); the estimate is the mean of all their samples
    samples = inv.samples
    assert len(samples) == 2 + (summary["retimed"] > 0) and inv.estimator == "mean"
    assert inv.combine == "mean of all samples (each batch's mean weighted by its sample count)"
    for x in samples:
        assert x.stats["n"] >= 50 and x.estimate_ms == x.stats["mean"] > 0
    pooled = sum(x.stats["n"] * x.stats["mean"] for x in samples) / sum(x.stats["n"] for x in samples)
    assert inv.estimate_ms == pytest.approx(pooled, rel=1e-12)
    assert summary["invocation_ms"] == inv.estimate_ms and summary["estimator"] == "mean"


def test_context_flags_and_resume_checks(tmp_path: Path, cli) -> None:
    """--context warm times back to back; a table is resumed only in the context it was timed in;
    an op list has no space to size the network context from unless --context-mb says."""
    warm = tmp_path / "warm.sqlite"
    r = run_cli(cli, "profile", "-d", "ort", "-s", "tiny", "-r", "24", "--max-ops", "2", "--context", "warm",
                     "--out", str(warm), *FAST, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["context"] == "warm"
    with LatencyTable.open(warm, create=False) as t:
        assert {m.settings["timing"]["context"] for m in t.measurements()} == {"warm"}
    r = run_cli(cli, "profile", "-d", "ort", "-s", "tiny", "-r", "24", "--out", str(warm), *FAST)
    assert r.returncode == 2 and "timed in warm context" in r.stderr and "--context warm" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1

    ops = tmp_path / "ops.txt"
    assert run_cli(cli, "enumerate", "tiny", "-r", "24", "-o", str(ops)).returncode == 0
    r = run_cli(cli, "profile", "-d", "ort", "--ops", str(ops), "--context", "network", "--out", str(tmp_path / "o.sqlite"))
    assert r.returncode == 2 and "network context needs a space (its subnets' weight bytes) or --context-mb" in r.stderr
    r = run_cli(cli, "profile", "-d", "ort", "--ops", str(ops), "--context", "network", "--context-mb", "0.5",
                     "--max-ops", "1", "--out", str(tmp_path / "o.sqlite"), *FAST, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["context_bytes"] == 1 << 19
    r = run_cli(cli, "profile", "-d", "ort", "--ops", str(ops), "--context-mb", "1", "--out", str(tmp_path / "o.sqlite"), *FAST)
    assert r.returncode == 2 and "--context network --context-mb 0.5" in r.stderr  # says how to resume
    r = run_cli(cli, "profile", "-d", "ort", "-s", "tiny", "--context", "hot", "--out", str(tmp_path / "h.sqlite"))
    assert r.returncode == 2 and "--context must be auto, warm or network" in r.stderr

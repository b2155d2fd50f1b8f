"""Predicted vs measured: metric code against hand-computed values, calibration round trip through
the table, `latbench validate`/`calibrate` end to end on the tiny space (the CLI with LiteRT, the
Python call too; whole ONNX Runtime and torch subnets are timed at library level here and in
test_yardstick), the estimator's build schedule and batch adjustment, and refusal of a table of
another profile."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from latbench import ops as O
from latbench.calibrate import CalibrationRun, store_calibration
from latbench.device import DeviceProfile
from latbench.errors import UsageError
from latbench.measure import Stats
from latbench.predict import Calibration, Predictor, fit_calibration
from latbench.spaces import get_space
from latbench.store import LatencyTable
from latbench.tablemeta import CalibrationEntry, RunSettings
from latbench.validate import Retime, error_metrics, network_id, sample_subnets
from latbench.validate import endtoend as V

# short profiles (2 rounds priced by their median: rows of short timing rarely look slow and get timed again)
FAST = ["--max-time", "0.02", "--min-samples", "3", "--rounds", "2", "--target-iqr", "0.5", "--estimator", "median"]


# ---------------------------------------------------------------------- metrics
def test_metrics_against_hand_computed_values() -> None:
    # relative errors 0, +5%, -10%, +10%: on the boundaries, which count as within
    m = error_metrics([1.0, 2.1, 2.7, 4.4], [1.0, 2.0, 3.0, 4.0])
    assert m.n == 4
    assert m.within5 == 0.5 and m.within10 == 1.0
    assert m.rmspe == pytest.approx(math.sqrt((0 + 0.05**2 + 0.1**2 + 0.1**2) / 4))  # 0.075
    assert m.mape == pytest.approx((0 + 0.05 + 0.1 + 0.1) / 4)  # 0.0625
    assert m.bias == pytest.approx((0 + 0.05 - 0.1 + 0.1) / 4)
    assert m.max_abs == pytest.approx(0.1)
    assert m.spearman == pytest.approx(1.0) and m.kendall == pytest.approx(1.0)


def test_rank_correlations_against_hand_computed_values() -> None:
    # ranks (1, 3, 2, 4) vs (1, 2, 3, 4): Spearman 1 - 6*2/(4*15) = 0.8; Kendall (5 - 1)/6
    m = error_metrics([1.0, 3.0, 2.0, 4.0], [1.0, 2.0, 3.0, 4.0])
    assert m.spearman == pytest.approx(0.8)
    assert m.kendall == pytest.approx(4 / 6)
    assert m.within5 == 0.5 and m.within10 == 0.5  # errors 0, +50%, -33%, 0
    assert m.rmspe == pytest.approx(math.sqrt((0.25 + 1 / 9) / 4))
    assert m.mape == pytest.approx((0.5 + 1 / 3) / 4)
    # reversed order: perfectly anti-correlated
    r = error_metrics([4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0])
    assert r.spearman == pytest.approx(-1.0) and r.kendall == pytest.approx(-1.0)
    # a tie: predicted ranks (1, 2.5, 2.5, 4) vs measured (1, 3, 2, 4). Spearman: centred ranks
    # (-1.5, 0, 0, 1.5) . (-1.5, .5, -.5, 1.5) = 4.5 over sqrt(4.5 * 5); Kendall tau-b: 5 concordant
    # pairs, 0 discordant, one pair tied in predicted only: 5 / sqrt((6 - 1) * 6)
    t = error_metrics([1.0, 2.0, 2.0, 3.0], [1.0, 3.0, 2.0, 4.0])
    assert t.spearman == pytest.approx(4.5 / math.sqrt(22.5), rel=1e-12)
    assert t.kendall == pytest.approx(5 / math.sqrt(30), rel=1e-12)


def test_metrics_edge_cases() -> None:
    one = error_metrics([1.1], [1.0])
    assert one.within10 == 1.0 and math.isnan(one.spearman)  # no rank correlation of one point
    assert error_metrics([], []).n == 0
    with pytest.raises(UsageError):
        error_metrics([1.0, 2.0], [1.0])
    with pytest.raises(UsageError):
        error_metrics([1.0], [0.0])
    assert isinstance(one.to_dict()["spearman"], type(None))  # NaN -> null in JSON


# ---------------------------------------------------------------------- calibration
PROFILE = DeviceProfile(agent="cpu", runtime="torch", runtime_version="x", threads=1, device="Test CPU")


def test_calibration_recovers_scale_and_offset_and_round_trips(tmp_path: Path) -> None:
    p = np.linspace(2.0, 9.0, 10)
    cal = fit_calibration(p, 1.3 * p + 0.2, "tiny", "block")
    assert cal.scale == pytest.approx(1.3) and cal.offset_ms == pytest.approx(0.2) and cal.n == 10
    sp = get_space("tiny")
    with LatencyTable.open(tmp_path / "t.sqlite", PROFILE) as t:
        t.set_run_settings(RunSettings("block"))
        t.set_calibration(CalibrationEntry(scale=2.0, n=3, space="other", granularity="op"))
        run = CalibrationRun(cal, [], error_metrics(p, p), error_metrics(p, p), "tiny/block")
        store_calibration(t, run, seed=7)
    with LatencyTable.open(tmp_path / "t.sqlite", create=False) as t:
        stored = t.calibrations()
        assert set(stored) == {"other/op", "tiny/block"}  # other spaces' calibrations kept
        assert stored["tiny/block"].seed == 7 and stored["tiny/block"].profile_id == PROFILE.id
        back = Calibration.from_entry(stored["tiny/block"])
        assert (back.scale, back.offset_ms, back.n) == pytest.approx((1.3, 0.2, 10))
        # the entry Predictor.from_table reads (the space at the table's granularity)
        assert t.calibration(sp, t.run_settings.granularity).apply(10.0) == pytest.approx(13.2)


# ---------------------------------------------------------------------- sampling
def test_sampling_is_deterministic_distinct_and_at_the_asked_resolutions() -> None:
    sp = get_space("tiny")
    a = sample_subnets(sp, 30, 3, [32])
    assert (a == sample_subnets(sp, 30, 3, [32])).all()
    assert len({network_id(sp, c) for c in a}) == 30
    assert {sp.input_shape(c)[2] for c in a} == {32}
    both = sample_subnets(sp, 40, 1, [24, 32])
    assert {sp.input_shape(c)[2] for c in both} == {24, 32}
    # validation = first n, calibration = the next k: disjoint networks, same n whatever k
    ids = [network_id(sp, c) for c in sample_subnets(sp, 14, 5, [24])]
    assert not set(ids[:10]) & set(ids[10:])
    assert ids[:10] == [network_id(sp, c) for c in sample_subnets(sp, 10, 5, [24])]


# ---------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> dict[str, Path]:
    """Tables of tiny at 24 px profiled by the CLI (in-process), with short timing: the tests check
    shape and arithmetic, not speed. "tflite": every block; "ort": one block at a non-default
    optimisation level (for rebuilding the agent a table names and refusing others)."""
    from latbench.cli import run

    d = tmp_path_factory.mktemp("validate")
    out = {}
    for dev, extra in (("tflite", []), ("ort", ["--max-ops", "1", "--opt-level", "basic"])):
        p = d / f"tiny-{dev}.sqlite"
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = run(["profile", "--device", dev, "--space", "tiny", "-r", "24", "-g", "block", "--out", str(p),
                        *FAST, *extra])
        assert code == 0, err.getvalue()
        out[dev] = p
    return out


def _rows_estimator(path: Path) -> str:
    """The estimator most of a table's ok rows store, read with plain SQL."""
    with sqlite3.connect(path) as c:
        return c.execute("SELECT estimator FROM measurements WHERE status = 'ok' GROUP BY estimator "
                         "ORDER BY COUNT(*) DESC LIMIT 1").fetchone()[0]


def _check_yardstick(sub: dict, statistic: str, runs: int, passes: int = 3) -> None:
    """A subnet's yardstick in the JSON: every pass's statistics are those of its own samples,
    the value is the median over passes and the spread their (max - min) / median."""
    y = sub["yardstick"]
    assert y["statistic"] == statistic and len(y["passes"]) == passes
    for p in y["passes"]:
        xs = np.array(p["samples_ms"])
        assert p["n"] == xs.size >= runs and (xs > 0).all()
        assert p["median_ms"] == pytest.approx(np.median(xs)) and p["mean_ms"] == pytest.approx(xs.mean())
        assert p["min_ms"] == xs.min() and p["p90_ms"] == pytest.approx(np.percentile(xs, 90))
        assert xs.min() <= p["median_ms"] <= p["p90_ms"] <= xs.max()
    vals = np.array([p[f"{statistic}_ms"] for p in y["passes"]])
    assert y["value_ms"] == pytest.approx(np.median(vals)) == sub["measured_ms"]
    assert y["spread"] == pytest.approx(np.ptp(vals) / np.median(vals))


YARD = ["--runs", "10", "--min-time", "0.01"]  # short yardstick passes: the tests check shape, not speed
PLAIN_CALL = {"ort": "session.run with a numpy input", "tflite": "interpreter.invoke() on inputs set once"}


def _check_report(rep: dict, table: Path, device: str, seed: int, n: int, calibrate_n: int, runs: int, builds: int,
                  retime: int, predictors: set[str]) -> None:
    """A validation's JSON form against independent references: the yardstick and what it timed,
    the table's statistic read with plain SQL, metrics and calibrations recomputed from the
    subnets, each subnet's passes and builds, and the table entries timed again."""
    assert rep["n"] == n and rep["calibrate_n"] == calibrate_n and rep["resolutions"] == [24]
    assert rep["profile"]["agent"] == device
    y = rep["yardstick"]
    assert (y["statistic"], y["passes"], y["runs"], y["seed"]) == ("median", 3, runs, seed)
    assert y["reads"] == "median of 3 pass medians" and y["plain_call"] == PLAIN_CALL[device]
    assert rep["table_statistic"]["estimator"] == _rows_estimator(table)
    ceiling = rep["noise_ceiling"]
    assert (ceiling["networks"], ceiling["passes"]) == (n, 3)
    assert 0 <= ceiling["within5"] <= ceiling["within10"] <= 1 and ceiling["log_sd"] >= 0
    # both row sets score the same predictors on the n subnets
    assert set(rep["metrics"]) == predictors
    est = rep["estimator"]
    assert est["label"] == "vs latbench estimator" and set(est["metrics"]) == predictors
    for m in [*rep["metrics"].values(), *est["metrics"].values()]:
        assert m["n"] == n and 0 <= m["within10"] <= 1 and m["rmspe"] >= 0
    # the uncalibrated row against each measurement, recomputed from the subnets
    for metrics, which in ((rep["metrics"], lambda s: s["measured_ms"]),
                           (est["metrics"], lambda s: s["estimator"]["measured_ms"])):
        e = [s["predicted_ms"]["uncalibrated"] / which(s) - 1 for s in rep["subnets"]]
        assert metrics["uncalibrated"]["bias"] == pytest.approx(np.mean(e))
    ratios = [s["estimator"]["measured_ms"] / s["measured_ms"] for s in rep["subnets"]]
    assert est["ratio_to_yardstick"] == pytest.approx(np.median(ratios))
    for sub in rep["subnets"] + rep["calibration_subnets"]:
        _check_yardstick(sub, "median", runs)
        b = sub["estimator"]["builds_ms"]
        assert len(b) == builds and sub["estimator"]["middle_ms"] == pytest.approx(sorted(b)[(builds - 1) // 2])
    # table entries timed again before and after the subnets, against the table's own values
    rt = rep["retime"]
    with LatencyTable.open(table, create=False) as t:
        stored = {r["key"]: r["estimate"] for r in t.rows(status="ok")}
    assert len(rt["keys"]) == retime and set(rt["keys"]) <= set(stored)
    assert rt["stored_ms"] == [stored[k] for k in rt["keys"]] and set(rt["passes_ms"]) == {"before", "after"}
    for name, ms in rt["passes_ms"].items():
        assert len(ms) == len(rt["keys"]) and all(x > 0 for x in ms)
        assert rt["ratios"][name] == pytest.approx(float(np.median(np.array(ms) / np.array(rt["stored_ms"]))))
    if not calibrate_n:
        assert rep["calibration"] is None and rep["flops_fit"] is None
        return
    # the calibration is fitted against the calibration subnets' yardstick values
    assert rep["calibration"]["n"] == calibrate_n
    cal = fit_calibration([s["predicted_ms"]["uncalibrated"] for s in rep["calibration_subnets"]],
                          [s["measured_ms"] for s in rep["calibration_subnets"]], "tiny", "block")
    assert rep["calibration"]["scale"] == pytest.approx(cal.scale)
    assert rep["calibration"]["offset_ms"] == pytest.approx(cal.offset_ms)
    # the estimator row's calibrated predictor is fitted on that row's own calibration measurements
    cal_e = fit_calibration([s["predicted_ms"]["uncalibrated"] for s in rep["calibration_subnets"]],
                            [s["estimator"]["measured_ms"] for s in rep["calibration_subnets"]], "tiny", "block")
    e = [cal_e.apply(s["predicted_ms"]["uncalibrated"]) / s["estimator"]["measured_ms"] - 1 for s in rep["subnets"]]
    assert est["metrics"]["calibrated"]["bias"] == pytest.approx(np.mean(e))
    # the FLOPs line through the calibration subnets' yardstick values (a constant through one)
    x = [s["flops"] / 1e6 for s in rep["calibration_subnets"]]
    m = [s["measured_ms"] for s in rep["calibration_subnets"]]
    slope, offset = np.polyfit(x, m, 1) if len(set(x)) > 1 else (0.0, float(np.mean(m)))
    assert (rep["flops_fit"]["ms_per_mflop"], rep["flops_fit"]["offset_ms"]) == pytest.approx((slope, offset))


def test_validate_cli_end_to_end(tables, tmp_path: Path, cli) -> None:
    """`latbench validate` on a LiteRT table: the JSON report, the CSV, the plot, the op-level
    baseline profiled into its own table (and reused by a second run), the noise floor and the
    text report of both row sets."""
    table = tables["tflite"]
    csv_path, png, op_table = tmp_path / "pairs.csv", tmp_path / "fit.png", tmp_path / "ops.sqlite"
    code, out, err = cli("validate", "--table", str(table), "--space", "tiny", "--n", "2", "--calibrate-n", "1",
                         "--seed", "304", "--noise", "2", "--builds", "2", "--retime", "2", "--op-table", str(op_table),
                         "--csv", str(csv_path), "--plot", str(png), "--max-time", "0.01", "--min-samples", "2",
                         "--json", *YARD)
    assert code == 0, err
    rep = json.loads(out)
    # the table's timing with the flags applied: the estimator row's, the op baseline's
    with LatencyTable.open(table, create=False) as t:
        assert rep["timing"] == {**t.timing.to_dict(), "max_time_s": 0.01, "min_samples": 2}
    _check_report(rep, table, "tflite", 304, 2, 1, 10, 2, 2, {"uncalibrated", "calibrated", "op-sum", "flops-linear"})
    assert rep["yardstick"]["min_s"] == 0.01
    assert rep["op_profiled"] > 0 and rep["op_table"] == str(op_table)
    sp = get_space("tiny")
    unfused = {op.key for s in rep["subnets"] for b in sp.blocks(s["config"]) for op in O.expand(b)}
    with LatencyTable.open(op_table, create=False) as t:  # the unfused ops of the 2 subnets, profiled
        assert t.keys() == unfused and rep["op_profiled"] == len(unfused) and t.profile.id == rep["profile"]["id"]
    assert len(rep["noise"]["estimates_ms"]) == 2
    assert "validation subnets" in err  # progress on stderr
    # the CSV: one row per validation subnet, configs in published form, every pass and the estimator
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for row, sub in zip(rows, rep["subnets"]):
        cfg = json.loads(row["config"])
        assert cfg == sub["config"] and sp.input_shape(cfg)[2] == int(row["resolution"]) == 24
        medians = [float(x) for x in row["pass_median_ms"].split()]
        assert medians == pytest.approx([p["median_ms"] for p in sub["yardstick"]["passes"]], rel=1e-5)
        assert float(row["measured_ms"]) == pytest.approx(np.median(medians), rel=1e-5)
        assert [int(x) for x in row["pass_runs"].split()] == [p["n"] for p in sub["yardstick"]["passes"]]
        for lo, hi in (("pass_min_ms", "pass_median_ms"), ("pass_median_ms", "pass_p90_ms")):
            assert all(a <= b for a, b in zip(map(float, row[lo].split()), map(float, row[hi].split())))
        assert float(row["estimator_ms"]) == pytest.approx(sub["estimator"]["measured_ms"], rel=1e-5)
        assert float(row["estimator_p25_ms"]) <= float(row["estimator_median_ms"]) <= float(row["estimator_p75_ms"])
        # the estimate: the fastest round's median (never above the median of all samples), or
        # the median itself for a measurement in one round
        if int(row["estimator_rounds"]) > 1:
            assert float(row["estimator_middle_ms"]) <= float(row["estimator_median_ms"])
        else:
            assert float(row["estimator_middle_ms"]) == float(row["estimator_median_ms"])
        for p in ("uncalibrated", "calibrated", "op-sum", "flops-linear"):
            assert float(row[f"{p}_ms"]) == pytest.approx(sub["predicted_ms"][p], rel=1e-5)
    import matplotlib.image

    img = matplotlib.image.imread(str(png))
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    # the op table is reused: the same subnets profile nothing new; the text report
    code, out, err = cli("validate", "--table", str(table), "--space", "tiny", "--n", "1", "--calibrate-n", "0",
                         "--seed", "304", "--op-table", str(op_table), "--builds", "1", "--retime", "2", *YARD)
    assert code == 0, err
    assert "(0 ops profiled in this run)" in out and "uncalibrated" in out and "flops" not in out
    assert "table entries timed again as the profile timed them read" in out and "(a diagnostic, not applied)" in out
    lines = out.splitlines()
    # both row sets (a header each), the ceiling after the first, the statistics stated
    assert sum(1 for x in lines if x.startswith("predictor ")) == 2
    assert any(x.startswith("vs latbench estimator (the same table prices, calibration and FLOPs line fitted on this "
                            "row's own") and "1 fresh build(s) each" in x for x in lines)
    assert sum(1 for x in lines if x.startswith("yardstick noise ceiling: one pass against the median of "
                                                 "the others: ")) == 1
    assert any(x.endswith(", 1 subnets x 3 passes") for x in lines)
    assert any(x.startswith("statistic: the table prices ") and x.endswith(
        "the yardstick reads the median of 3 pass medians") for x in lines)
    assert any(x.startswith("yardstick: each subnet in a fresh runnable (interpreter.invoke() on inputs set once)")
               and ">= 10 runs and >= 0.01 s" in x for x in lines)


def test_validate_from_python(tables) -> None:
    """`latbench.validate(path, space name)`: the table opened read-only and its profile's agent
    rebuilt (and closed) for it; the report holds what the CLI prints as JSON, checked against
    the same references, and its text lines."""
    import latbench.validate
    from latbench.yardstick import YardstickSettings

    ys = YardstickSettings(warmup=2, warmup_s=0.0, runs=10, min_s=0.01, seed=1)
    report = latbench.validate(str(tables["tflite"]), "tiny", n=1, seed=1, calibrate_n=0, op_baseline=False,
                               builds=1, retime=1, yardstick=ys)
    assert report.profile.agent == "tflite"
    rep = json.loads(json.dumps(report.to_dict()))
    _check_report(rep, tables["tflite"], "tflite", 1, 1, 0, 10, 1, 1, {"uncalibrated"})
    assert rep["op_table"] is None and rep["noise"] is None and rep["estimator"]["builds"] == 1
    lines = report.summary_lines()
    assert lines[0] == f"tiny on {report.profile.describe()}"
    assert sum(1 for x in lines if x.startswith("predictor ")) == 2


def _with_estimator(src: Path, dst: Path, estimator: str) -> None:
    """A copy of a table whose ok rows price `estimator` (that statistic of their own samples)."""
    with LatencyTable.open(src, create=False) as t:
        t.backup(dst)
    with sqlite3.connect(dst) as c:
        c.execute(f"UPDATE measurements SET estimator = ?, estimate = {estimator} WHERE status = 'ok'", (estimator,))


def test_report_says_when_the_table_and_the_yardstick_read_different_statistics(tables, tmp_path: Path, cli) -> None:
    """A table of means against a yardstick of medians gets one line saying so; against a yardstick
    of means, none. The statistic line names both either way."""
    from latbench.validate import statistic_lines, table_statistic
    from latbench.yardstick import YardstickSettings

    table = tmp_path / "means.sqlite"
    _with_estimator(tables["tflite"], table, "mean")
    base = ["validate", "--table", str(table), "--space", "tiny", "--n", "1", "--calibrate-n", "0", "--seed", "2",
            "--no-op-baseline", "--no-estimator-row", "--retime", "0", *YARD]
    differ = ("the table prices means, the yardstick reads medians: the two statistics differ, and so may the "
              "figures below (--statistic mean reads means)")
    code, out, err = cli(*base)
    assert code == 0, err
    lines = out.splitlines()
    assert "statistic: the table prices means (24 rows); the yardstick reads the median of 3 pass medians" in lines
    assert differ in lines
    assert "vs latbench estimator: not measured (--no-estimator-row)" in lines
    assert sum(1 for x in lines if x.startswith("predictor ")) == 1  # one row set only
    code, out, err = cli(*base, "--statistic", "mean", "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["estimator"] is None and rep["table_statistic"]["estimator"] == "mean"
    for sub in rep["subnets"]:
        _check_yardstick(sub, "mean", 10)
    with LatencyTable.open(table, create=False) as t:
        stat = table_statistic(t)
    assert statistic_lines(stat, YardstickSettings(statistic="mean")) == [
        "statistic: the table prices means (24 rows); the yardstick reads the median of 3 pass means"]


def test_table_of_another_profile_is_refused_in_one_line(tables, cli) -> None:
    """The agent a table names is rebuilt with the table's settings (here ort's optimisation
    level); one measuring under another profile is refused in one line naming both."""
    from latbench.cli.validate import open_agent

    with LatencyTable.open(tables["ort"], create=False) as t:
        agent = open_agent(t, None, None, None, None)
        try:
            assert agent.profile.id == t.profile.id and dict(agent.profile.options)["opt_level"] == "basic"
        finally:
            agent.close()
    for extra in (["--threads", "2"], ["--device", "tflite"]):
        code, out, err = cli("validate", "--table", str(tables["ort"]), "--space", "tiny", "--n", "2", *extra)
        assert code == 1 and out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("latbench: error: ")
        with LatencyTable.open(tables["ort"], create=False) as t:
            assert t.profile.id in lines[0]
        assert "agent is" in lines[0] and "(id " in lines[0].split("agent is")[1]
    code, _, err = cli("calibrate", "--table", str(tables["tflite"]), "--space", "tiny", "--no-xnnpack")
    assert code == 1 and "delegate" in err and len(err.strip().splitlines()) == 1


def test_bad_inputs_are_one_line(tables, cli, tmp_path: Path) -> None:
    code, _, err = cli("validate", "--table", str(tmp_path / "none.sqlite"), "--space", "tiny")
    assert code == 1 and "no such latbench table" in err
    code, _, err = cli("validate", "--table", str(tables["ort"]), "--space", "ofa-mbv3-w10", "--n", "2")
    assert code == 2 and "pass --resolution" in err
    code, _, err = cli("validate", "--table", str(tables["ort"]), "--space", "tiny", "--n", "0")
    assert code == 2 and "at least one subnet" in err
    # refused before the op baseline profiles anything into a new op table
    op_table = tmp_path / "ops.sqlite"
    code, _, err = cli("validate", "--table", str(tables["ort"]), "--space", "tiny", "--builds", "0",
                       "--op-table", str(op_table))
    assert code == 2 and err.strip().splitlines()[-1] == "latbench: error: --builds must be >= 1, got 0"
    assert not op_table.exists()
    for flags, msg in ((["--statistic", "p90"], "--statistic must be one of median, mean, min, got 'p90'"),
                       (["--passes", "0"], "timing passes (--passes) must be a whole number >= 1 and <= 100, got 0"),
                       (["--runs", "0"], "timing runs (--runs) must be a whole number >= 1, got 0"),
                       (["--min-time", "nan"], "timing min_s (--min-time) must be a finite number >= 0 and "
                                               "<= 3600, got nan")):
        for command in ("validate", "calibrate"):
            code, out, err = cli(command, "--table", str(tables["ort"]), "--space", "tiny", *flags)
            assert (code, out, err.strip().splitlines()) == (2, "", [f"latbench: error: {msg}"])
    code, _, err = cli("validate", "--table", str(tables["ort"]), "--space", "tiny", "--retime", "-1")
    assert code == 2 and "--retime must be >= 0" in err.strip().splitlines()[-1]


def test_retime_ratios_and_drift_against_hand_computed_values() -> None:
    """Each pass is scored by its median now/stored ratio (failed entries left out); the drift is
    the geometric mean of the passes' ratios."""
    rt = Retime(["a", "b", "c"], [1.0, 2.0, 4.0],
                {"before": [1.1, 2.2, 4.8], "after": [0.9, float("nan"), 3.6]})
    assert rt.ratio("before") == pytest.approx(1.1)  # ratios 1.1, 1.1, 1.2
    assert rt.ratio("after") == pytest.approx(0.9)  # ratios 0.9, 0.9 (b failed)
    assert rt.drift == pytest.approx(math.sqrt(1.1 * 0.9))
    d = rt.to_dict()
    assert d["ratios"] == {"before": pytest.approx(1.1), "after": pytest.approx(0.9)}
    assert math.isnan(Retime(["a"], [1.0], {"before": [float("nan")]}).drift)


def test_calibrate_then_predict_says_calibrated(tables, tmp_path: Path, cli) -> None:
    path = tmp_path / "copy.sqlite"
    with LatencyTable.open(tables["tflite"], create=False) as src:
        src.backup(path)
    code, out, err = cli("calibrate", "--table", str(path), "--space", "tiny", "--n", "3", "--json", *YARD)
    assert code == 0, err
    run = json.loads(out)
    assert run["key"] == "tiny/block" and run["calibration"]["n"] == 3 and len(run["subnets"]) == 3
    # fitted against the yardstick: every subnet's passes, no estimator row
    for sub in run["subnets"]:
        _check_yardstick(sub, "median", 10)
        assert sub["estimator"] is None
    again = fit_calibration([s["predicted_ms"]["uncalibrated"] for s in run["subnets"]],
                            [s["measured_ms"] for s in run["subnets"]], "tiny", "block")
    assert run["calibration"]["scale"] == pytest.approx(again.scale)
    assert (run["noise_ceiling"]["networks"], run["noise_ceiling"]["passes"]) == (3, 3)
    with LatencyTable.open(path, create=False) as t:
        stored = t.calibration("tiny", "block")
        assert stored.scale == pytest.approx(run["calibration"]["scale"]) and stored.resolutions == (24,)
        assert stored.yardstick == run["yardstick"] and stored.yardstick["runs"] == 10
        pred = Predictor.from_table(t, get_space("tiny"))
        assert pred.calibration is not None and pred.explain(get_space("tiny").smallest()).calibrated
    code, out, err = cli("calibrate", "--table", str(path), "--space", "tiny", "--n", "1", *YARD)
    assert code == 0 and "measured = " in out and "in sample" in out
    assert "measured: the yardstick's median of 3 pass medians)" in out.splitlines()[0]
    assert any(x.startswith("yardstick noise ceiling: one pass against the median of the others: ")
               and x.endswith(", 1 subnets x 3 passes") for x in out.splitlines())
    assert any(x.startswith("statistic: the table prices ") for x in out.splitlines())
    code, out, err = cli("predict", "--table", str(path), "--space", "tiny", "--random", "2", "-r", "24", "--json")
    assert code == 0, err
    assert json.loads(out)["calibrated"] is True
    # a validation says the table holds one, and fits its own afresh
    code, out, err = cli("validate", "--table", str(path), "--space", "tiny", "--n", "1", "--calibrate-n", "0",
                         "--no-op-baseline", "--no-estimator-row", "--retime", "0", *YARD)
    assert code == 0, err
    assert ("the table holds a calibration for this space (n=1); 'calibrated' above is fitted afresh on the "
            "calibration subnets") in out.splitlines()


def test_measure_subnet_with_the_torch_agent_and_quickstart_without_table() -> None:
    from rich.console import Console

    from device_agents import get_agent
    from latbench.cli.quickstart import QuickstartState
    from latbench.cli.quickstart import _qs_validate as quickstart_validate
    from latbench.measure import TimingSettings
    from latbench.validate import measure_subnet

    sp = get_space("tiny")
    agent = get_agent("cpu", threads=1)
    stats = measure_subnet(agent, sp, sp.smallest(), TimingSettings(max_time_s=0.05, min_samples=3, warmup=1))
    assert stats.median > 0 and stats.n >= 3
    con = Console(record=True, width=100)
    st = QuickstartState("tiny", (24,), 5, 0)
    st.table = None
    quickstart_validate(st, con)
    assert "skipped" in con.export_text()


@pytest.mark.parametrize("device", ["ort", "tflite", "cpu"])
def test_whole_subnets_are_timed_back_to_back_whatever_the_tables_context(device: str) -> None:
    """A network-context table still gets its subnets timed warm: a whole model is its own
    context. (An evictor of the asked size would exist had any timed call been preceded by one.)"""
    from device_agents import get_agent
    from latbench import measure as M
    from latbench.measure import TimingSettings
    from latbench.validate import measure_subnet

    sp = get_space("tiny")
    odd = (3 << 20) + 4096  # a size nothing else asks for
    M._EVICTOR.clear()
    agent = get_agent(device, threads=1)
    try:
        t = TimingSettings(max_time_s=0.05, min_samples=3, warmup=1, context="network", context_bytes=odd)
        stats = measure_subnet(agent, sp, sp.smallest(), t)
    finally:
        agent.close()
    assert stats.median > 0 and stats.n >= 3
    assert not M._EVICTOR or M._EVICTOR[0].nbytes != odd


def test_builds_of_a_subnet_are_timed_in_consecutive_batches(monkeypatch) -> None:
    """With 3 builds and batches of 6, five subnets go in groups [0 1] [2 3] [4]; batch b times
    build k of group b - k, so each subnet's builds land in three different batches (a slow
    minute then slows one build, not all), each model is made once, and every subnet gets its
    three builds' Stats in build order with the batch of each."""
    from device_agents import get_agent
    from latbench.measure import TimingSettings

    sp = get_space("tiny")
    agent = get_agent("tflite", threads=1)
    configs = sp.sample(5, 5)
    made: list[int] = []
    batches: list[list[int]] = []
    real_prepare, real_time = agent.prepare_model, V.time_subnets

    def model(i):  # the subnet's model, tagged with its index
        made.append(i)
        return agent.network_model(sp, configs[i]), i

    def prepare(m):  # tag each runnable with the subnet it runs
        return (m[1], real_prepare(m[0]))

    def time_batch(agent_, prepared, timing):
        batches.append([i for i, _ in prepared])
        return real_time(agent_, [r for _, r in prepared], timing)

    monkeypatch.setattr(agent, "prepare_model", prepare)
    monkeypatch.setattr(V, "time_subnets", time_batch)
    told: list[int] = []
    timing = TimingSettings(max_time_s=0.02, min_samples=3, warmup=1, warmup_s=0.0, rounds=2, interleave=6)
    runs = V.measure_built(agent, list(range(5)), timing, builds=3, done=told.append, model=model)
    assert sorted(made) == [0, 1, 2, 3, 4]  # one model each
    assert batches == [[0, 1], [2, 3, 0, 1], [4, 2, 3, 0, 1], [4, 2, 3], [4]]
    assert told == [2, 4, 5]
    # each item's builds in build order, with the batch each ran in: group g's build k in batch g + k
    assert [r.batches for r in runs] == [(0, 1, 2), (0, 1, 2), (1, 2, 3), (1, 2, 3), (2, 3, 4)]
    for r in runs:
        assert len(r.stats) == 3 and [V.estimate(s) for s in r.sorted()] == sorted(V.estimate(s) for s in r.stats)
        assert V.estimate(r.middle()) == sorted(V.estimate(s) for s in r.stats)[1]


def _builds(ms_by_build: list[float], batches: list[int]):
    return V.Builds(tuple(Stats.from_samples([x]) for x in ms_by_build), tuple(batches))


def test_batch_adjusted_takes_each_batch_speed_out():
    # items of known latency, 2 per group, 3 builds in consecutive batches (as measure_built
    # schedules them), each batch slower or faster by a known factor
    true = [1.0, 2.0, 3.0, 4.0, 5.0]
    factor = [1.0, 1.1, 0.9, 1.25, 1.0]  # median 1.0: the typical batch
    items = []
    for i, t in enumerate(true):
        bs = [i // 2 + k for k in range(3)]
        items.append(_builds([t * factor[b] for b in bs], bs))
    got, speeds = V.batch_adjusted(items)
    assert got == pytest.approx(true, rel=1e-9)
    assert [speeds[b] for b in range(5)] == pytest.approx(factor, rel=1e-9)
    # the middle build alone is off wherever two of its three batches were slow or fast
    assert [V.estimate(it.middle()) for it in items] != pytest.approx(true, rel=0.01)


def test_batch_adjusted_is_robust_to_one_odd_build_and_neutral_without_overlap():
    true = [2.0, 3.0, 5.0, 7.0, 11.0, 13.0]
    items = [_builds([t, t, t], [i // 2 + k for k in range(3)]) for i, t in enumerate(true)]
    odd = list(items[2].stats)
    odd[1] = Stats.from_samples([true[2] * 1.4])  # one build 40% slow (a preempted run)
    items[2] = V.Builds(tuple(odd), items[2].batches)
    got, speeds = V.batch_adjusted(items)
    assert got == pytest.approx(true, rel=1e-9) and set(speeds.values()) == {1.0}
    # one build per item: batches share no item, nothing can be told apart, estimates are kept
    single = [_builds([t], [i // 2]) for i, t in enumerate([1.5, 2.5, 3.5, 4.5])]
    got, speeds = V.batch_adjusted(single)
    assert got == pytest.approx([1.5, 2.5, 3.5, 4.5], rel=1e-12) and set(speeds.values()) == {1.0}
    assert V.batch_adjusted([])[0].size == 0


def test_the_package_is_callable_as_validate_and_imports_nothing_heavy() -> None:
    """`latbench.validate(...)` is the validate function while its modules stay importable, and
    importing it (or latbench.calibrate) loads no runtime, plotting library or agent."""
    import subprocess
    import sys

    import latbench.validate
    from latbench.validate import report, run

    assert callable(latbench.validate) and latbench.validate.__call_target__ is run.validate
    assert latbench.validate.report is report and latbench.validate.ValidationReport is report.ValidationReport
    with pytest.raises(UsageError, match="at least one subnet"):  # the call reaches validate's own checks
        latbench.validate(None, get_space("tiny"), None, n=0)
    heavy = ("torch", "onnxruntime", "ai_edge_litert", "adbutils", "matplotlib", "device_agents")
    code = (f"import sys, latbench.validate, latbench.calibrate; "
            f"print(' '.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""

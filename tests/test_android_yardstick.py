"""The plain yardstick on a phone: whole models timed by benchmark_model itself (a fresh process per
model and pass, its average), through the stand-in adb server whose benchmark_model really runs the
pushed .tflite with LiteRT; and `latbench validate`/`calibrate --device android` end to end."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("adbutils", reason="the android agent needs adbutils: pip install 'latbench[android]'")
pytest.importorskip("ai_edge_litert", reason="the stand-in benchmark_model runs LiteRT: pip install 'latbench[tflite]'")

from adb_standin import BENCHMARK_MODEL, PIXEL, FakeDevice, StandinServer  # noqa: E402
from conftest import android_on_standin  # noqa: E402
from test_android_agent import sessions  # noqa: E402

from device_agents.tflite_build import build_tflite  # noqa: E402
from device_agents.weights import op_weights  # noqa: E402
from latbench import ops as O  # noqa: E402
from latbench.errors import LatbenchError  # noqa: E402
from latbench.yardstick import YardstickSettings, measure_batched  # noqa: E402

QUICK = YardstickSettings(warmup=1, warmup_s=0.0, runs=7, min_s=0.05, passes=3)


def _model(op: O.OpSpec) -> bytes:
    return build_tflite(op, op_weights(op, 0))


BIG = O.conv((1, 32, 56, 56), 32, 3)  # ~58 MFLOPs: milliseconds
SMALL = O.activation((1, 4, 4, 4), "relu")  # microseconds


def test_time_models_reads_benchmark_models_own_loop_in_order(server: StandinServer, pixel: FakeDevice) -> None:
    agent = android_on_standin(server, batch_size=2)
    try:
        pixel.reset_counters()
        big, small = _model(BIG), _model(SMALL)
        stats = agent.time_models([big, small, big], QUICK)
        runs = [c for c in pixel.commands if "run_batch.sh" in c]
        assert len(runs) == 2  # batch_size 2: two pushes and runs for three models
        assert all("--num_runs=7" in c and "--min_secs=0.05" in c and "--warmup_runs=1" in c for c in runs)
        assert [Path(m).name for m in pixel.models_run] == ["net0.tflite", "net1.tflite", "net2.tflite"]
        assert [s.n >= 7 for s in stats] == [True] * 3
        for s in stats:  # benchmark_model prints average, min and max of its runs: no median, no samples
            assert math.isnan(s.median) and math.isnan(s.p90) and s.samples == ()
            assert 0 <= s.min <= s.mean and s.mean > 0  # min: 0 under benchmark_model's 1 us clock
        assert stats[0].mean > 5 * stats[1].mean and stats[2].mean > 5 * stats[1].mean  # results in model order
        assert not any(re.fullmatch(r"b\d+", d) for s in sessions(pixel) for d in pixel.listdir(f"/data/local/tmp/latbench/{s}"))
    finally:
        agent.close()


def test_a_model_without_timings_fails_the_pass_by_name(server: StandinServer, pixel: FakeDevice) -> None:
    agent = android_on_standin(server)
    try:
        pixel.crash_on("net1.tflite")
        with pytest.raises(LatbenchError, match=r"whole model 2 of 2 \(net1\.tflite\): benchmark_model .*139"):
            agent.time_models([_model(SMALL), _model(SMALL)], QUICK)
    finally:
        pixel.reset_knobs()
        agent.close()


def test_batched_passes_visit_each_network_once_per_pass_in_the_pass_order() -> None:
    from latbench.yardstick import PassStats, pass_orders

    seen: list[list[int]] = []

    def time_batch(idx):
        seen.append(list(idx))
        return [PassStats.reported(math.nan, 10.0 + i, math.nan, 9.0 + i, 50) for i in idx]

    settings = YardstickSettings(passes=3, seed=4)
    readings = measure_batched(5, time_batch, settings, batch=2)
    orders = pass_orders(5, 3, 4)
    assert seen == [o[i:i + 2] for o in orders for i in (0, 2, 4)]
    assert [r.value("mean") for r in readings] == [10.0, 11.0, 12.0, 13.0, 14.0]
    assert all(math.isnan(r.value("median")) for r in readings)


@pytest.fixture(scope="module")
def android_table(server: StandinServer, tmp_path_factory) -> Path:
    """A block table of tiny at 24 px profiled on the stand-in Pixel by the CLI (in-process)."""
    from latbench.cli import run

    out = tmp_path_factory.mktemp("android_yardstick") / "tiny-android.sqlite"
    code = run(["profile", "--device", "android", "--serial", PIXEL, "--runner", str(BENCHMARK_MODEL),
                "--space", "tiny", "-r", "24", "-g", "block", "--max-time", "0.01", "--out", str(out)])
    assert code == 0
    return out


YARD = ["--runs", "5", "--min-time", "0.02", "--seed", "1"]


def test_validate_on_android_reads_benchmark_models_average(cli, server: StandinServer, pixel: FakeDevice,
                                                             android_table: Path) -> None:
    base = ["validate", "--table", str(android_table), "--space", "tiny", "--device", "android", "--n", "2",
            "--calibrate-n", "1", "--no-op-baseline", "--retime", "0", *YARD]
    before = len(pixel.models_run)
    code, out, err = cli(*base, "--json")
    assert code == 0, err
    rep = json.loads(out)
    ys = rep["yardstick"]
    assert ys["statistic"] == "mean" and ys["reads"] == "median of 3 pass means"
    assert ys["plain_call"].startswith(f"benchmark_model on {PIXEL}")
    assert len(rep["subnets"]) == 2
    for sub in rep["subnets"]:
        y = sub["yardstick"]
        assert y["statistic"] == "mean" and len(y["passes"]) == 3
        means = np.array([p["mean_ms"] for p in y["passes"]])
        assert all(p["n"] >= 5 and p["samples_ms"] == [] for p in y["passes"])
        assert sub["measured_ms"] == pytest.approx(np.median(means))
    assert rep["estimator"] is None and rep["estimator_note"].startswith("android times whole models on the device")
    # 3 networks (2 scored, 1 to calibrate on) x 3 passes, each a benchmark_model process of its own
    ran = [Path(m).name for m in pixel.models_run[before:]]
    assert len(ran) == 9 and all(re.fullmatch(r"net\d+\.tflite", m) for m in ran), ran
    # the text report of a smaller run (2 subnets, no calibration): the same lines, fewer models
    small = [*base[:base.index("--n")], "--n", "2", "--calibrate-n", "0", *base[base.index("--calibrate-n") + 2:]]
    code, text, err = cli(*small)
    assert code == 0, err
    assert re.search(r"yardstick: each subnet in a fresh runnable \(benchmark_model on \S+, a fresh process per "
                     r"pass, its average\)", text), text
    assert "vs latbench estimator: not measured (android times whole models on the device" in text
    assert "yardstick noise ceiling: one pass against the median of the others" in text


def test_android_statistic_it_cannot_give_is_refused_and_calibrate_runs(cli, server: StandinServer,
                                                                        android_table: Path, tmp_path: Path) -> None:
    code, _, stderr = cli("validate", "--table", str(android_table), "--space", "tiny", "--device", "android",
                          "--n", "2", "--statistic", "median", *YARD)
    err = [x for x in stderr.splitlines() if x.strip()]
    assert code == 2 and len(err) == 1, stderr
    assert "--statistic median: benchmark_model on" in err[0] and "reports only mean, min of its runs" in err[0]
    copy = tmp_path / "t.sqlite"
    copy.write_bytes(android_table.read_bytes())
    code, out, err = cli("calibrate", "--table", str(copy), "--space", "tiny", "--device", "android", "--n", "3", *YARD)
    assert code == 0, err
    assert "measured: the yardstick's median of 3 pass means" in out

"""The Android agent against the stand-in adb server: batching and round trips, runner output
formats, thermal gate, crashes, disconnect and resume, quoting, `latbench devices`, and
`latbench profile --device android` through the in-process CLI (a subprocess only where a fresh
process is the point: adb variables checked before adbutils is imported). The checks every agent
passes (output against the torch reference, laziness, identity, rebuilding from a profile or a
spec, whole networks) are test_agent_conformance.py's."""
from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

adbutils = pytest.importorskip("adbutils", reason="the android agent needs adbutils: pip install 'latbench[android]'")
pytest.importorskip("ai_edge_litert", reason="the stand-in benchmark_model runs LiteRT: pip install 'latbench[tflite]'")

from adb_standin import BENCHMARK_MODEL, GALAXY, PIXEL, FakeDevice, StandinServer, load_profile  # noqa: E402
from conftest import CLI_ENV, ROOT, android_on_standin, latbench_exe  # noqa: E402

from device_agents import get_agent  # noqa: E402
from device_agents.android import (  # noqa: E402
    BATCH_SIZE, DEVICE_ROOT, AndroidAgent, cpu_mask, failure_message, parse_benchmark_model, parse_perf_test, parse_temps,
    server_address,
)
from latbench import ops as O  # noqa: E402
from latbench.errors import DeviceUnavailableError, UsageError  # noqa: E402
from latbench.measure import TimingSettings  # noqa: E402
from latbench.runmeta import INVOCATION_OP  # noqa: E402
from latbench.store import LatencyTable  # noqa: E402

FAST = TimingSettings(warmup=1, warmup_s=0.0, min_samples=5, max_samples=30, max_time_s=0.2)
S = (1, 16, 12, 12)
SMALL = [O.conv(S, 24, 3), O.activation(S, "relu"), O.pool(S, "max", 3, 2, 1), O.eltwise(S, "add"),
         O.conv(S, 16, 3, groups=16), O.softmax(S, axis=1)]


# ---------------------------------------------------------------------- fixtures
# `server` (the stand-in adb server: a Pixel 7 and a Galaxy S21) and `pixel` are conftest's; the
# shared conformance checks run on this agent in test_agent_conformance.py (its "android" entry).
@pytest.fixture
def make(server: StandinServer) -> Iterator[Callable[..., AndroidAgent]]:
    """Build android agents on the stand-in (Pixel, stand-in benchmark_model by default); closed after."""
    made: list[AndroidAgent] = []

    def build(**kw: Any) -> AndroidAgent:
        made.append(android_on_standin(server, **kw))
        return made[-1]

    yield build
    for a in made:
        a.close()


@pytest.fixture(scope="module")
def one_per_batch(server: StandinServer) -> Iterator[AndroidAgent]:
    """One agent for the module with batch_size=1 (one model per batch)."""
    a = android_on_standin(server, batch_size=1)
    yield a
    a.close()


def sessions(dev: FakeDevice) -> list[str]:
    """latbench session directories left on a device."""
    return dev.listdir(DEVICE_ROOT) if dev.exists(DEVICE_ROOT) else []


# ---------------------------------------------------------------------- batching and round trips
def test_batches_are_lazy_and_results_come_per_batch(make, pixel: FakeDevice) -> None:
    """At most one batch of ops is taken before its results are handed over, in op order."""
    agent = make(batch_size=4)
    ops = SMALL + [O.activation(S, "hswish"), O.pool(S, "avg", 2, 2)]
    pulled: list[str] = []

    def source():
        for op in ops:
            pulled.append(op.key)
            yield op

    got = []
    for i, m in enumerate(agent.measure(source(), FAST)):
        assert len(pulled) <= (i // 4 + 1) * 4, "more than one batch taken ahead of its results"
        got.append(m)
    assert [m.key for m in got] == [op.key for op in ops] and all(m.ok for m in got)
    assert [m.extra["batch"] for m in got] == [0] * 4 + [1] * 4



def test_round_trips_per_op(make, pixel: FakeDevice) -> None:
    """Setup is two adb round trips (one sync session, one shell), a batch of 8 two more (one sync
    session pushing its models and list, one shell running them), cleanup one."""
    agent = make(batch_size=8)
    agent.fingerprint()
    setup = pixel.round_trips
    pixel.reset_counters()
    ops = [O.conv((1, c, 8, 8), c, 1) for c in range(1, 9)]
    results = list(agent.measure(ops, TimingSettings(warmup=1, warmup_s=0, max_samples=5, max_time_s=0.05)))
    assert all(m.ok for m in results), [m.error for m in results if not m.ok]
    assert pixel.services["sync"] == 1 and pixel.services["shell_v2"] + pixel.services["shell"] == 1
    assert pixel.sync_ops["SEND"] == 8 + 1  # 8 models + the list file, no STATs
    agent.close()
    assert (setup, pixel.round_trips) == (2, 3)


def retimed_batches(summary: str, per_batch: int) -> int:
    """Batches the profile's summary line says it ran to time suspect rows again (those whose batch
    ran the reference kernel slow: the stand-in times it for real, on a shared host)."""
    again = re.search(r"(\d+) suspect rows timed again", summary)
    return -(-int(again.group(1)) // per_batch) if again else 0


# ---------------------------------------------------------------------- runner output formats
CURRENT = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Num threads: [4]
INFO: Graph: [/data/local/tmp/mobilenet_v2.tflite]
INFO: Loaded model /data/local/tmp/mobilenet_v2.tflite
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
INFO: The input model file size (MB): 13.9787
INFO: Initialized session in 28.484ms.
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=52 first=13263 curr=9234 min=9058 max=13263 avg=9611.1 std=761

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=107 first=9264 curr=9214 min=9011 max=10493 avg=9326.05 std=225

INFO: Inference timings in us: Init: 28484, First inference: 13263, Warmup (avg): 9611.1, Inference (avg): 9326.05
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
INFO: Memory footprint delta from the start of the tool (MB): init=41.6328 overall=45.2148
"""
PRE2020 = """\
STARTING!
Min num runs: [50]
Num threads: [1]
Graph: [/data/local/tmp/mobilenet_quant_v1_224.tflite]
Loaded model /data/local/tmp/mobilenet_quant_v1_224.tflite
resolved reporter
Initialized session in 5.092ms
Running benchmark for at least 1 iterations and at least 0.5 seconds
count=4 first=186521 curr=123017 min=123017 max=186521 avg=140127 std=26597

Running benchmark for at least 50 iterations and at least 1 seconds
count=50 first=122793 curr=121808 min=118954 max=128440 avg=121741 std=1828

Average inference timings in us: Warmup: 140127, Init: 5092, Inference: 121741
"""
SCIENTIFIC = """\
INFO: STARTING!
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=1 curr=3012345

INFO: Running benchmark for at least 3 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=3 first=3012345 curr=2.9e+06 min=2.89012e+06 max=3.01234e+06 avg=2.95034e+06 std=50123

INFO: Inference timings in us: Init: 41234, First inference: 3.012345e+06, Warmup (avg): 3.012345e+06, Inference (avg): 2.95034e+06
"""
PERF_TEST = """\
Session creation time cost: 0.0312 s
First inference time cost: 2 ms
Total inference time cost: 0.1573 s
Total inference requests: 100
Average inference time cost: 1.573 ms
Total inference run time: 0.158 s
Number of inferences per second: 632.9
Avg CPU usage: 24 %
Peak working set size: 32768000 bytes
Min Latency: 0.00141 s
Max Latency: 0.00231 s
P50 Latency: 0.00152 s
P90 Latency: 0.00171 s
P95 Latency: 0.00182 s
P99 Latency: 0.00221 s
P999 Latency: 0.00231 s
"""


@pytest.mark.parametrize("text, n, mean, std, lo, hi", [
    (CURRENT, 107, 9.32605, 0.225, 9.011, 10.493),
    (PRE2020, 50, 121.741, 1.828, 118.954, 128.44),
    (SCIENTIFIC, 3, 2950.34, 50.123, 2890.12, 3012.34),
    ("INFO: count=5 curr=12(all same)\nINFO: Inference timings in us: Init: 1, First inference: 12, "
     "Warmup (avg): 12, Inference (avg): 12\n", 5, 0.012, 0.0, 0.012, 0.012),
], ids=["current", "pre2020", "scientific", "all-same"])
def test_benchmark_model_output_parses(text: str, n: int, mean: float, std: float, lo: float, hi: float) -> None:
    r = parse_benchmark_model(text)
    s = r.stats
    assert r.estimator == "mean" and s.n == n and s.block == 1
    assert (s.mean, s.std, s.min, s.max) == pytest.approx((mean, std, lo, hi))
    assert math.isnan(s.median) and math.isnan(s.p25) and math.isnan(s.p75)
    assert r.details["init_ms"] > 0


def test_benchmark_model_output_edge_cases() -> None:
    assert parse_benchmark_model("INFO: STARTING!\nERROR: Failed to mmap model x.tflite\n") is None
    assert parse_benchmark_model("count=0\nAverage inference timings in us: Warmup: 0, Init: 5, no stats: 0") is None
    nostats = parse_benchmark_model("Average inference timings in us: Warmup: 10, Init: 5, no stats: 2500")
    assert nostats.stats.mean == 2.5 and nostats.stats.n == 0 and math.isnan(nostats.stats.std)
    profiled = CURRENT + "Timings (microseconds): count=107 first=1 curr=1 min=1 max=99 avg=50 std=1\n"
    assert parse_benchmark_model(profiled).stats.n == 107  # op profiling's summary line is not the runs'
    # a sub-microsecond op: every run reads 0 on benchmark_model's whole-microsecond clock
    zero = parse_benchmark_model("INFO: count=50 first=0 curr=0 min=0 max=0 avg=0 std=0\nINFO: Inference "
                                 "timings in us: Init: 3, First inference: 1, Warmup (avg): 0, Inference (avg): 0\n")
    assert zero.stats.mean == 0 and zero.stats.n == 50 and zero.details["below_resolution_us"] == 1.0
    assert "below_resolution_us" not in parse_benchmark_model(CURRENT).details


def test_perf_test_output_parses() -> None:
    r = parse_perf_test(PERF_TEST)
    s = r.stats
    assert r.estimator == "median" and s.n == 100
    assert (s.median, s.mean, s.min, s.max) == pytest.approx((1.52, 1.573, 1.41, 2.31))
    assert math.isnan(s.std) and math.isnan(s.p25) and r.details["p90_ms"] == pytest.approx(1.71)
    only_avg = parse_perf_test("Average inference time cost: 0.5 ms\n")
    assert only_avg.estimator == "mean" and only_avg.stats.mean == 0.5
    assert parse_perf_test("model not found\n") is None


def test_failure_message_is_one_line_with_the_signal() -> None:
    msg = failure_message("benchmark_model", 139, "INFO: Loaded model m.tflite\n\nFatal signal 11 (SIGSEGV), "
                                                   "code 1 (SEGV_MAPERR), fault addr 0x0\n")
    assert msg.startswith("benchmark_model exited with 139 (SIGSEGV): ") and "\n" not in msg
    assert "Fatal signal 11" in msg and "Loaded model" in msg


def test_temps_line_parses() -> None:
    t = parse_temps("@@x temps after up=12.5 zones=0:36500,1:35200,2:-273000,3:455 battery=310")
    assert t.zones == {0: 36.5, 1: 35.2, 3: 45.5} and t.battery_c == 31.0 and t.uptime == 12.5
    assert t.max_c == 45.5


@pytest.mark.parametrize("style", ["current", "pre2020", "legacy_nostats", "scientific"])
def test_each_stand_in_output_style_measures(one_per_batch: AndroidAgent, pixel: FakeDevice, style: str) -> None:
    pixel.set_output_style(style)
    (m,) = one_per_batch.measure([O.conv(S, 24, 3)], FAST)
    assert m.ok, m.error
    assert m.stats.n == 30 and m.stats.mean > 0 and m.settings["estimator"] == "mean"


def test_ort_runtime_with_perf_test(make, pixel: FakeDevice, tmp_path: Path) -> None:
    """runtime ort pushes .onnx models and parses onnxruntime_perf_test (a canned stand-in here)."""
    pytest.importorskip("onnx")
    fake = tmp_path / "onnxruntime_perf_test"
    fake.write_text("#!/bin/sh\n[ \"$1\" = -h ] && { echo 'usage: onnxruntime_perf_test [options...] model_path'; "
                    "exit 1; }\nfor a; do m=$a; done\n[ -f \"$m\" ] || { echo \"no model $m\" >&2; exit 1; }\n"
                    f"cat <<'EOF'\n{PERF_TEST}EOF\n")
    agent = make(runner=str(fake), delegate="xnnpack", threads=2)
    assert agent.fusion == "ort" and agent.profile.runtime == "onnxruntime_perf_test"
    (m,) = agent.measure([O.conv(S, 24, 3)], FAST)
    assert m.ok, m.error
    assert m.settings["estimator"] == "median" and m.stats.median == pytest.approx(1.52)
    run = next(c for c in pixel.commands if "run_batch.sh" in c)
    assert "-e xnnpack" in run and "-x 2" in run and "-s" in shlex.split(run) and ".onnx" not in run
    with pytest.raises(UsageError, match="GPU"):
        make(runner=str(fake), delegate="gpu")


# ---------------------------------------------------------------------- settings and fingerprint
@pytest.mark.parametrize("profile, spec, mask, cores", [
    ("pixel7", "big", "c0", [6, 7]), ("pixel7", "little", "f", [0, 1, 2, 3]), ("pixel7", "all", "ff", list(range(8))),
    ("galaxy_s21_sd888", "big", "80", [7]), ("galaxy_s21_sd888", "little", "f", [0, 1, 2, 3]),
    ("pixel7", "0x30", "30", [4, 5]),
])
def test_cpu_masks_follow_max_frequency_tiers(profile: str, spec: str, mask: str, cores: list[int]) -> None:
    cpus = {c: {"online": True, "max_khz": cl["max_freq"], "cur_khz": cl["cur_freq"], "governor": cl["governor"]}
            for cl in load_profile(profile)["cpu_clusters"] for c in cl["cores"]}
    assert cpu_mask(spec, cpus) == (mask, cores)
    for bad in ("300", "zz", "0"):
        with pytest.raises(UsageError):
            cpu_mask(bad, cpus)


def test_settings_reach_the_runner_and_the_profile(make, pixel: FakeDevice, server: StandinServer) -> None:
    agent = make(threads=2, delegate="gpu", cpus="little")
    (m,) = agent.measure([O.conv(S, 24, 3)], FAST)
    assert m.ok, m.error
    run = shlex.split(next(c for c in pixel.commands if "run_batch.sh" in c))
    assert {"--num_threads=2", "--use_gpu=true", "--num_runs=30", "--max_secs=0.2", "--warmup_runs=1"} <= set(run)
    assert pixel.taskset_calls[-1].startswith("f ") and pixel.fixed_performance_mode is True
    p = agent.profile
    assert (p.device, p.soc, p.abi, p.cores) == ("Google Pixel 7", "GS201 (gs201)", "arm64-v8a", 8)
    assert p.os == load_profile("pixel7")["props"]["ro.build.fingerprint"]
    assert p.governor == "sched_pixel x8" and p.affinity == "0-3" and p.delegate == "gpu"
    assert dict(p.options)["fixed_performance_mode"] == "on"
    assert p.info["android"] == "14" and p.info["cpus"]["7"]["max_khz"] == 2850000 and p.info["serial"] == PIXEL
    galaxy = make(serial=GALAXY).profile
    assert dict(galaxy.options)["fixed_performance_mode"] == "unsupported" and galaxy.soc == "SM8350 (lahaina)"
    ids = {p.id, galaxy.id, make().profile.id, make(threads=2).profile.id, make(delegate="xnnpack").profile.id,
           make(cpus="little").profile.id}
    assert len(ids) == 6
    agent.close()
    assert pixel.fixed_performance_mode is False


def test_device_selection(server: StandinServer) -> None:
    with pytest.raises(UsageError, match=f"{PIXEL}.*{GALAXY}|{GALAXY}.*{PIXEL}"):
        get_agent("android", runner=str(BENCHMARK_MODEL))
    with pytest.raises(DeviceUnavailableError, match="no device 'NOPE'"):
        get_agent("android", serial="NOPE", runner=str(BENCHMARK_MODEL))
    with pytest.raises(UsageError, match="`runner` PATH"):
        get_agent("android", serial=PIXEL)
    with StandinServer([FakeDevice("pixel7", serial="LOCKED1", state="unauthorized")]) as empty:
        with pytest.raises(DeviceUnavailableError, match="no Android device ready.*LOCKED1 \\(unauthorized\\)"):
            get_agent("android", runner=str(BENCHMARK_MODEL), adb_port=empty.port)
        with pytest.raises(DeviceUnavailableError, match="unauthorized.*USB debugging"):
            get_agent("android", serial="LOCKED1", runner=str(BENCHMARK_MODEL), adb_port=empty.port)


def test_cleanup_after_close_and_after_errors(make, pixel: FakeDevice, tmp_path: Path) -> None:
    before = set(sessions(pixel))  # other live agents of this module keep theirs
    agent = make()
    list(agent.measure([O.conv(S, 24, 3)], FAST))
    assert len(set(sessions(pixel)) - before) == 1
    agent.close()
    assert set(sessions(pixel)) == before
    bogus = tmp_path / "benchmark_model"
    bogus.write_text("#!/bin/sh\necho 'hello from a shell script'\nexit 2\n")
    bad = make(runner=str(bogus))
    with pytest.raises(UsageError, match="does not run on"):
        bad.fingerprint()
    bad.close()
    assert set(sessions(pixel)) == before


# ---------------------------------------------------------------------- robustness
def test_crash_on_one_model_fails_that_op_only(make, pixel: FakeDevice) -> None:
    agent = make(batch_size=10)
    ran = len(pixel.models_run)
    pixel.crash_on(agent.model_file(SMALL[2]), "SIGSEGV")
    pixel.crash_on(agent.model_file(SMALL[4]), "SIGABRT")
    results = list(agent.measure(SMALL, FAST))
    assert [m.key for m in results] == [op.key for op in SMALL]
    assert [m.ok for m in results] == [True, True, False, True, False, True]
    segv, abrt = results[2], results[4]
    assert segv.error.startswith("benchmark_model exited with 139 (SIGSEGV)") and "Fatal signal 11" in segv.error
    assert abrt.error.startswith("benchmark_model exited with 134 (SIGABRT)") and "\n" not in abrt.error
    assert segv.stats is None and segv.extra["exit_code"] == 139
    assert len(pixel.models_run) - ran == len(SMALL)


def test_phone_heating_up_stops_the_batch_between_models_and_resumes(make, pixel: FakeDevice) -> None:
    """The gate on the device: a phone at 36 C that heats 3 C a model reads 48 C > 45 C before its
    fifth model, so the batch script stops there; the agent waits (0.1 s at 150 C/s:
    back to 36 C) and resumes with the rest. 9 models: runs of 4, 4 and 1, two waits, each model
    run once, and by the phone's own log none started above max_temp."""
    agent = make(max_temp=45, cooldown=0.1, max_waits=3, batch_size=9)
    agent.fingerprint()
    pixel.set_heating(start=36.0, per_run=3.0, cool_per_s=150.0)
    ops = [O.activation((1, c, 3, 3), "relu") for c in range(1, 10)]
    t0 = time.monotonic()
    results = list(agent.measure(ops, FAST))
    elapsed = time.monotonic() - t0
    assert [m.key for m in results] == [op.key for op in ops] and all(m.ok for m in results)
    readings = [36.0, 39.0, 42.0, 45.0]  # 45.0 is not above max_temp: it runs
    assert [m.extra["temp_c"] for m in results] == readings * 2 + readings[:1]
    assert [m.extra["thermal"]["waits"] for m in results] == [0] * 4 + [1] * 4 + [2] * 1
    assert not any(m.extra["hot"] or m.extra["thermal"]["gave_up"] for m in results)
    assert elapsed >= 2 * 0.1 and results[-1].extra["thermal"]["waited_s"] >= 2 * 0.1
    ran = pixel.run_temperatures[-len(ops):]  # (model file, C when it started), the phone's own record
    assert sorted(f for f, _ in ran) == sorted(agent.model_file(op) for op in ops)
    assert max(c for _, c in ran) <= 45.0
    assert {m.extra["model_file"]: m.extra["temp_c"] for m in results} == dict(ran)
    runs = [shlex.split(c) for c in pixel.commands if "run_batch.sh" in c]
    assert [(r[7], r[8]) for r in runs] == [("45000", "0"), ("45000", "4"), ("45000", "8")]  # gate, start


def test_phone_that_stays_hot_gives_rows_flagged_hot(make, pixel: FakeDevice) -> None:
    """Still above max_temp after max_waits cooldowns in a row: the rest of the batch runs
    ungated, each row flagged hot with the temperature it started at."""
    pixel.set_temperature(60.0)
    agent = make(max_temp=45, cooldown=0.05, max_waits=2, batch_size=4)
    ran = len(pixel.models_run)
    results = list(agent.measure(SMALL[:3], FAST))
    assert all(m.ok for m in results) and len(pixel.models_run) - ran == 3
    for m in results:
        assert m.extra["hot"] is True and m.extra["temp_c"] == 60.0 and m.extra["temp_sensor"] == "BIG"
        assert m.extra["thermal"] == {**m.extra["thermal"], "waits": 2, "gave_up": True, "max_temp": 45.0}
        assert m.extra["temps_before"]["max_c"] == 60.0
    runs = [shlex.split(c) for c in pixel.commands if "run_batch.sh" in c]
    # hot before the first model, again after each of the two waits, then the batch runs ungated
    assert [(r[7], r[8]) for r in runs] == [("45000", "0")] * 3 + [("-", "0")]


def test_odd_serial_and_runner_path_stay_one_argument(server: StandinServer, tmp_path: Path) -> None:
    """Spaces, quotes and ';' in the serial and the runner's name: one argument, nothing else runs."""
    odd_serial = "odd serial;touch pwned'1\""
    dev = server.add_device(FakeDevice("pixel7", serial=odd_serial))
    try:
        runner = tmp_path / "bench mark;touch pwned2 'q'\"x"
        shutil.copy(BENCHMARK_MODEL, runner)
        agent = get_agent("android", serial=odd_serial, runner=str(runner), batch_size=2)
        try:
            results = list(agent.measure(SMALL[:3], FAST))
        finally:
            agent.close()
        assert all(m.ok for m in results), [m.error for m in results]
        assert agent.profile.info["serial"] == odd_serial and len(dev.models_run) == 3
        device_runner = agent.runner_path
        assert device_runner.endswith("/" + runner.name)
        assert [c.split()[0] for c in dev.commands] == ["sh", "sh", "sh", "rm"]  # probe, 2 batches, cleanup
        for c in dev.commands[:3]:
            assert shlex.quote(device_runner) in c
        assert not list(dev.root.rglob("pwned*")) and not list(Path.cwd().glob("pwned*"))
        assert not Path("/pwned").exists() and not Path("/pwned2").exists()
    finally:
        server.remove_device(odd_serial)
        dev.close()


def test_disconnect_exits_4_and_rerun_measures_only_the_rest(cli, server: StandinServer, pixel: FakeDevice,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "t.sqlite"
    args = ["profile", "--device", "android", "--serial", PIXEL, "--runner", str(BENCHMARK_MODEL), "--space",
            "tiny", "--resolution", "24", "--granularity", "op", "--batch-size", "5",
            "--max-time", "0.01", "--out", str(out), "--max-ops"]
    pixel.disconnect_after(7)
    try:
        t0 = time.monotonic()
        code, _, stderr = cli(*args, "9")
        assert code == 4, stderr
        err = [x for x in stderr.splitlines() if x.startswith("latbench:")]
        # batch 0 measured the per-call cost (one 1-element model), batch 1 three ops and a sample
        # of the per-call cost and of the reference kernel, batch 2 died
        assert len(err) == 1 and f"device {PIXEL} disconnected during batch 2" in err[0], stderr
        assert err[0].endswith("results of earlier batches (6 models) were handed over: rerun to resume")
        assert time.monotonic() - t0 < 60
        with LatencyTable.open(out, create=False) as t:
            first = t.keys("ok")
            assert len(t.invocation.samples) == 2
        assert len(first) == 3  # the completed batch, committed before the device went away
        ran_before = len(pixel.models_run)
    finally:
        pixel.reconnect()
    pixel.reset_counters()
    code, stdout, stderr = cli(*args, "6")  # the 6 ops the first run missed
    assert code == 0, stderr
    assert "6 measured, 3 already stored" in stdout
    again = re.search(r"(\d+) suspect rows timed again", stdout)
    retimed = int(again.group(1)) if again else 0
    batches = 2 + retimed_batches(stdout, 3)
    rerun = pixel.models_run[ran_before:]
    with LatencyTable.open(out, create=False) as t:
        assert len(t.keys("ok")) == 9
        files = {row["extra"]["model_file"] for row in t.rows() if row["key"] in first and "earlier" not in row["extra"]}
        assert len(t.invocation.samples) == 2 + batches  # one more in each batch of the rerun
    agent = android_on_standin(server)
    inv_file = agent.model_file(INVOCATION_OP)
    agent.close()
    # batches of 3 ops, each with a sample of the per-call cost and the reference; no stored op again
    assert len(rerun) == 6 + retimed + 2 * batches and rerun.count(inv_file) == batches and not files & set(rerun)
    assert sum("run_batch.sh" in c for c in pixel.commands) == batches


def test_device_lost_before_any_result_says_nothing_was_handed_over(make, pixel: FakeDevice) -> None:
    agent = make(batch_size=4)
    agent.fingerprint()
    pixel.disconnect_after(1)
    try:
        with pytest.raises(DeviceUnavailableError) as e:
            list(agent.measure(SMALL[:3], FAST))
    finally:
        pixel.reconnect()
    msg = str(e.value)
    assert f"device {PIXEL} disconnected during batch 0" in msg and "handed over" not in msg
    assert msg.endswith("nothing was measured yet: rerun once it is back")


# ---------------------------------------------------------------------- options and environment
def test_options_are_typed_and_checked_before_any_device_is_touched(server: StandinServer, pixel: FakeDevice) -> None:
    base = {"serial": PIXEL, "runner": str(BENCHMARK_MODEL), "adb_port": server.port}
    for bad, words in [({"serail": PIXEL}, "android: unknown option serail"),
                       ({"batch_size": 0}, "android: batch_size must be >= 1, got 0"),
                       ({"max_temp": "nan"}, "android: option max_temp must be a finite number"),
                       ({"max_temp": 200}, "android: max_temp must be a temperature between -30 and 125 C, got 200"),
                       ({"cooldown": -1}, "android: cooldown must be >= 0, got -1"),
                       ({"max_waits": -2}, "android: max_waits must be >= 0, got -2"),
                       ({"adb_timeout": 0}, "android: adb_timeout must be > 0 s, got 0"),
                       ({"adb_port": 70000}, "android: adb_port must be a port number (1-65535), got '70000'"),
                       ({"cpus": "zz"}, "android: cpus must be big, little, all or a hex mask, got 'zz'"),
                       ({"delegate": "tpu"}, "android: delegate must be one of cpu, xnnpack, gpu, nnapi, got 'tpu'"),
                       ({"threads": 65}, "android: threads must be between 1 and 64 (and at most the phone's cores)"),
                       ({"threads": True}, "android: option threads must be int, got True")]:
        with pytest.raises(UsageError) as e:
            get_agent("android", **{**base, **bad})
        assert str(e.value).startswith(words), (bad, str(e.value))
    assert pixel.round_trips == 0 and pixel.connections == 0


def test_threads_are_bounded_by_the_phones_cores(make, pixel: FakeDevice) -> None:
    """Threads run on the phone: more than this host's cores pass, more than the phone's 8 do not."""
    assert make(threads=8).profile.threads == 8
    with pytest.raises(UsageError, match=f"android: threads must be between 1 and 8 \\(the cores of {PIXEL}\\), got 9"):
        make(threads=9).fingerprint()


@pytest.mark.parametrize("env, args, want", [
    ({}, {}, ("127.0.0.1", 5037)),
    ({"ANDROID_ADB_SERVER_PORT": "5038"}, {}, ("127.0.0.1", 5038)),
    ({"ANDROID_ADB_SERVER_PORT": " "}, {}, ("127.0.0.1", 5037)),  # blank: adb's default
    ({"ANDROID_ADB_SERVER_ADDRESS": "h1", "ANDROID_ADB_SERVER_HOST": "h2"}, {}, ("h1", 5037)),
    ({"ANDROID_ADB_SERVER_HOST": "h2"}, {}, ("h2", 5037)),
    ({"ADB_SERVER_SOCKET": "tcp:6000", "ANDROID_ADB_SERVER_PORT": "5038"}, {}, ("127.0.0.1", 6000)),
    ({"ADB_SERVER_SOCKET": "tcp:example.org:6001", "ANDROID_ADB_SERVER_ADDRESS": "h1"}, {}, ("example.org", 6001)),
    ({"ADB_SERVER_SOCKET": "tcp:[::1]:6002"}, {}, ("::1", 6002)),
    # adb -H/-P turn ADB_SERVER_SOCKET off; each names its own part, the variables the other
    ({"ADB_SERVER_SOCKET": "tcp:6000", "ANDROID_ADB_SERVER_ADDRESS": "h1"}, {"port": 7000}, ("h1", 7000)),
    ({"ADB_SERVER_SOCKET": "tcp:6000", "ANDROID_ADB_SERVER_PORT": "5038"}, {"host": "h3"}, ("h3", 5038)),
])
def test_adb_server_address_follows_adbs_precedence(monkeypatch: pytest.MonkeyPatch, env: dict, args: dict,
                                                    want: tuple) -> None:
    for name in ("ADB_SERVER_SOCKET", "ANDROID_ADB_SERVER_ADDRESS", "ANDROID_ADB_SERVER_HOST",
                 "ANDROID_ADB_SERVER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert server_address(**args) == want


@pytest.mark.parametrize("name, value, words", [
    ("ANDROID_ADB_SERVER_PORT", "abc", "ANDROID_ADB_SERVER_PORT must be a port number (1-65535), got 'abc'"),
    ("ANDROID_ADB_SERVER_PORT", "0", "ANDROID_ADB_SERVER_PORT must be a port number (1-65535), got '0'"),
    ("ANDROID_ADB_SERVER_PORT", "65536", "ANDROID_ADB_SERVER_PORT must be a port number (1-65535), got '65536'"),
    ("ADB_SERVER_SOCKET", "localfilesystem:/tmp/adb.sock",
     ("ADB_SERVER_SOCKET must be tcp:PORT or tcp:HOST:PORT (latbench talks TCP to the adb server), "
      "got 'localfilesystem:/tmp/adb.sock'")),
    ("ADB_SERVER_SOCKET", "tcp:host:",
     "ADB_SERVER_SOCKET must be tcp:PORT or tcp:HOST:PORT (latbench talks TCP to the adb server), got 'tcp:host:'"),
    ("ADB_SERVER_SOCKET", "tcp:host:99999", "the port of ADB_SERVER_SOCKET must be a port number (1-65535), got '99999'"),
])
@pytest.mark.parametrize("command", ["devices", "profile"])
def test_bad_adb_variables_are_usage_errors(cli, name: str, value: str, words: str, command: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """One line naming the variable, exit 2 (in-process; the fresh process, where adbutils is not
    imported yet, is test_a_bad_port_is_refused_before_adbutils_reads_it)."""
    args = ["devices"] if command == "devices" else [
        "profile", "--device", "android", "--runner", str(BENCHMARK_MODEL), "--ops", str(tmp_path / "none.txt"),
        "--out", str(tmp_path / "t.sqlite")]
    for var in ("ADB_SERVER_SOCKET", "ANDROID_ADB_SERVER_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ADBUTILS_ADB_PATH", "/bin/true")
    monkeypatch.setenv(name, value)
    code, _, err = cli(*args)
    assert (code, err) == (2, f"latbench: error: {words}\n")


def test_a_bad_port_is_refused_before_adbutils_reads_it() -> None:
    """In a fresh process the check comes before adbutils is imported (its import reads
    ANDROID_ADB_SERVER_PORT itself and would fail on its own terms)."""
    env = {k: v for k, v in CLI_ENV.items() if k not in ("ADB_SERVER_SOCKET", "ANDROID_ADB_SERVER_PORT")}
    r = subprocess.run([latbench_exe(), "devices"], capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={**env, "ADBUTILS_ADB_PATH": "/bin/true", "ANDROID_ADB_SERVER_PORT": "abc"})
    assert (r.returncode, r.stderr) == (2, "latbench: error: ANDROID_ADB_SERVER_PORT must be a port number "
                                           "(1-65535), got 'abc'\n")


def test_adb_server_socket_and_android_serial_are_honoured(cli, server: StandinServer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """ADB_SERVER_SOCKET wins over ANDROID_ADB_SERVER_PORT (here a port nobody serves; an empty
    one is adb's default, not an error); ANDROID_SERIAL picks one of the two attached devices."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    monkeypatch.setenv("ADB_SERVER_SOCKET", f"tcp:127.0.0.1:{server.port}")
    for port in (str(dead), ""):
        monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", port)
        code, out, err = cli("devices", "--json")
        assert code == 0, err
        assert {d["serial"] for d in json.loads(out)} == {PIXEL, GALAXY}
    monkeypatch.undo()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ANDROID_SERIAL", GALAXY)
        agent = get_agent("android", runner=str(BENCHMARK_MODEL))
        try:
            assert agent.serial == GALAXY and agent.profile.info["serial"] == GALAXY
        finally:
            agent.close()
        assert get_agent("android", runner=str(BENCHMARK_MODEL), serial=PIXEL).serial == PIXEL  # --serial first
        mp.setenv("ANDROID_SERIAL", "NOPE")
        with pytest.raises(DeviceUnavailableError, match="no device 'NOPE' \\(from ANDROID_SERIAL\\) attached"):
            get_agent("android", runner=str(BENCHMARK_MODEL))


# ---------------------------------------------------------------------- the CLI
def rounds_for(n_ops: int, batch_size: int = BATCH_SIZE) -> tuple[int, int]:
    """(batch runs, adb round trips) of a `latbench profile` of n_ops ops at `batch_size`: one batch
    for the per-call cost, then batches of batch_size - 2 ops (each with one more sample of the
    per-call cost and of the reference kernel); setup 2, 2 per batch, cleanup 1."""
    runs = 1 + math.ceil(n_ops / (batch_size - 2))
    return runs, 2 + 2 * runs + 1


def test_cli_profile_android_end_to_end(cli, server: StandinServer, pixel: FakeDevice, tmp_path: Path) -> None:
    """`latbench profile --device android` (in-process) of 10 ops in batches of 8: the table's
    profile and rows, cleanup, and the adb round trips, counted by the stand-in server as the
    device services opened (each a transport switch): 2 per batch plus 3 (rounds_for), so a
    200-op profile at the default batch size takes under 0.12 per op (19: 0.095)."""
    out = tmp_path / "t.sqlite"
    live = {s for s in sessions(pixel) if not s.split("-")[1].isdigit() or int(s.split("-")[1]) == os.getpid()}
    transports = server.host_requests["host:tport"] + server.host_requests["host:transport"]
    code, stdout, err = cli("profile", "--device", "android", "--serial", PIXEL, "--runner", str(BENCHMARK_MODEL),
                            "--space", "tiny", "--resolution", "24", "-g", "op", "--max-ops", "10", "--batch-size", "8", "--out", str(out),
                            "--max-time", "0.01")
    assert code == 0, err
    assert "10 measured, 0 already stored, 0 failed" in stdout
    props = load_profile("pixel7")["props"]
    with LatencyTable.open(out, create=False) as t:
        p = t.profile
        assert p.agent == "android" and p.device == "Google Pixel 7" and "GS201" in p.soc
        assert p.os == props["ro.build.fingerprint"] and p.runtime == "benchmark_model"
        rows = list(t.rows())
    assert len(rows) == 10 and all(r["status"] == "ok" for r in rows)
    for row in rows:
        assert row["estimator"] == "mean" and row["estimate"] == row["mean"] and row["median"] is None
        assert row["n"] >= 1 and row["extra"]["temps_before"]["zones"]["BIG"] == 36.5
    assert set(sessions(pixel)) <= live  # its own cleaned, and those of dead runs of this host
    batches = sum("run_batch.sh" in c for c in pixel.commands)
    # one batch for the per-call cost (a 1-element model), then 10 ops in batches of 6 and 4 (the
    # batch size less two), each with one more sample of the per-call cost and the reference
    retimed = retimed_batches(stdout, 8 - 2)
    assert batches == rounds_for(10, 8)[0] + retimed == 3 + retimed
    assert pixel.services["sync"] == batches + 1  # setup push + one per batch
    assert pixel.round_trips == 2 + 2 * batches + 1  # setup, 2 per batch, cleanup
    assert server.host_requests["host:tport"] + server.host_requests["host:transport"] - transports == pixel.round_trips
    assert rounds_for(200) == (8, 19) and rounds_for(200)[1] / 200 <= 0.12
    with LatencyTable.open(out, create=False) as t:
        inv = t.invocation
    assert inv.key == "activation-input:1x1x1x1-type:relu" and inv.timing.context == "warm"
    assert len(inv.samples) == batches  # the first and one from each batch
    ok = [x for x in inv.samples if x.status == "ok"]
    if ok:  # benchmark_model prints whole microseconds: a 0 avg is flagged as a bound
        pooled = sum(x.stats["n"] * x.stats["mean"] for x in ok) / sum(x.stats["n"] for x in ok)
        assert inv.estimator == "mean" and inv.estimate_ms == pytest.approx(pooled, rel=1e-12)  # of every run
        assert all(x.estimate_ms > 0 or x.below_resolution_us == 1.0 for x in ok)
    else:
        assert inv.estimate_ms is None and inv.error


def test_devices_command(cli, server: StandinServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "160")  # the table's width, as a wide terminal gives it
    locked = server.add_device(FakeDevice("galaxy_s21_sd888", serial="LOCKED2", state="unauthorized"))
    try:
        code, out, err = cli("devices")
        assert code == 0, err
        assert PIXEL in out and GALAXY in out and "Pixel 7" in out and "SM8350" in out
        assert "14 (SDK 34)" in out and "unauthorized" in out and "USB debugging" in err
        code, out, err = cli("devices", "--json")
    finally:
        server.remove_device("LOCKED2")
        locked.close()
    rows = {d["serial"]: d for d in json.loads(out)}
    assert rows["LOCKED2"]["state"] == "unauthorized" and locked.commands == []
    assert rows[PIXEL]["model"] == "Pixel 7" and rows[PIXEL]["soc"] == "GS201" and rows[PIXEL]["android"] == "14"
    assert rows[GALAXY]["state"] == "device" and rows[GALAXY]["platform"] == "lahaina"


def test_devices_without_server_is_fast_with_a_hint(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    marker = tmp_path / "spawned"
    fake_adb = tmp_path / "adb"
    fake_adb.write_text(f"#!/bin/sh\ntouch {shlex.quote(str(marker))}\nsleep 30\n")
    fake_adb.chmod(0o755)
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(port))
    monkeypatch.setenv("ADBUTILS_ADB_PATH", str(fake_adb))
    monkeypatch.delenv("ADB_SERVER_SOCKET", raising=False)
    t0 = time.monotonic()
    code, _, err = cli("devices")
    assert code == 4 and time.monotonic() - t0 < 10
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "adb start-server" in lines[0] and "ANDROID_ADB_SERVER_PORT" in lines[0]
    assert not marker.exists(), "adbutils tried to start an adb server"


def test_a_tflite_models_operators_are_timed_on_the_phone(cli, server: StandinServer, pixel: FakeDevice,
                                                          tmp_path: Path) -> None:
    """`profile --device android --model x.tflite`: the file's operators (read on this host: the
    file is the graph the phone runs), each pushed as a one-operator model and timed by
    benchmark_model on the phone; `predict --model` prices the file from that table with no phone
    attached (the host's LiteRT lowers it), as the sum of its rows less the per-call cost, plus it
    once. With onnxruntime_perf_test as the runner there is no graph this host can read."""
    from device_agents.litert import LiteRTAgent
    from latbench.runmeta import invocation_ms
    from latbench.spaces import get_space

    space = get_space("tiny")
    model = tmp_path / "subnet.tflite"
    model.write_bytes(LiteRTAgent().network_model(space, space.sample(0, 1)[0]).model)
    lowered = LiteRTAgent(threads=1).lower_model(model)
    out = tmp_path / "phone.sqlite"
    code, stdout, err = cli("profile", "--device", "android", "--serial", PIXEL, "--runner", str(BENCHMARK_MODEL),
                            "--model", str(model), "--out", str(out), "--max-time", "0.01")
    assert code == 0, err
    with LatencyTable.open(out, readonly=True) as t:
        assert t.keys(status="ok") == {op.key for op in lowered.ops} and t.profile.agent == "android"
        est, inv = t.estimates(), invocation_ms(t)
    code, stdout, err = cli("predict", "--table", str(out), "--model", str(model), "--json")
    assert code == 0, err
    (row,) = json.loads(stdout)["predictions"]
    assert row["misses"] == 0 and row["keys"] == len(lowered.ops), row
    assert row["ms"] == pytest.approx(inv + sum(max(0.0, est[op.key] - inv) for op in lowered.ops), rel=1e-9)
    perf_test = tmp_path / "onnxruntime_perf_test"
    perf_test.write_bytes(b"#!/bin/sh\n")
    code, stdout, err = cli("profile", "--device", "android", "--serial", PIXEL, "--runner", str(perf_test),
                            "--model", str(model), "--out", str(tmp_path / "ort.sqlite"))
    assert code == 2 and "lowered as LiteRT runs it" in err and "Traceback" not in err, err

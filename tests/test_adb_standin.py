"""The stand-in adb server: real adb protocol for adbutils and the real `adb` client, device shells
in a private mount namespace, the stand-in benchmark_model and every failure knob tests rely on."""
from __future__ import annotations

import concurrent.futures
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

adbutils = pytest.importorskip("adbutils")
pytest.importorskip("ai_edge_litert")

from adb_standin import (  # noqa: E402
    ADB_SERVER_VERSION, BENCHMARK_MODEL, GALAXY, PIXEL, FakeDevice, StandinServer, StandinUnavailable, conv_model, list_profiles,
    load_profile, real_adb_path,
)
from conftest import start_standin  # noqa: E402

T = 30  # seconds: every adb call in these tests is bounded by this
LB = "/data/local/tmp/latbench"
TIMINGS = re.compile(r"Inference timings in us: Init: (\d+), First inference: (\d+), "
                     r"Warmup \(avg\): ([-+.\deE]+), Inference \(avg\): ([-+.\deE]+)")
STAT20 = re.compile(r"count=20 (?:first=\d+ )?curr=\d+")
FAST = "--min_secs=0 --warmup_min_secs=0"

# The fixtures `server` (a Pixel 7 and a Galaxy S21 for the whole module) and `pixel` are conftest's;
# adbutils never starts a real adb server in this module, even in tests without them.
pytestmark = pytest.mark.usefixtures("no_real_adb_server")


@pytest.fixture
def client(server: StandinServer):
    """An adbutils client of the stand-in server."""
    return adbutils.AdbClient(host="127.0.0.1", port=server.port, socket_timeout=T)


@pytest.fixture(scope="module")
def runner_pushed(server: StandinServer) -> str:
    """benchmark_model and a small CONV_2D model pushed (with adbutils) to the Pixel."""
    d = adbutils.AdbClient(host="127.0.0.1", port=server.port).device(PIXEL)
    d.sync.push(str(BENCHMARK_MODEL), f"{LB}/benchmark_model", 0o644)
    d.sync.push(conv_model(), f"{LB}/conv.tflite", 0o644)
    assert d.shell(f"chmod +x {LB}/benchmark_model && echo ok", timeout=T) == "ok"
    return f"{LB}/benchmark_model"


def sh(client, serial: str, cmd: str) -> str:
    """device.shell with a bounded timeout."""
    return client.device(serial).shell(cmd, timeout=T)


# ---- adbutils: host services ------------------------------------------------------------------
def test_device_list_and_long_listing(client) -> None:
    assert client.server_version() == ADB_SERVER_VERSION == 41
    assert sorted(d.serial for d in client.device_list()) == sorted([PIXEL, GALAXY])
    tags = {i.serial: i.tags for i in client.list(extended=True)}
    assert tags[PIXEL]["model"] == "Pixel_7" and tags[PIXEL]["product"] == "panther"
    assert tags[GALAXY]["device"] == "o1q" and tags[GALAXY]["transport_id"].isdigit()
    assert client.device(PIXEL).get_state() == "device"
    assert "shell_v2" in client.device(PIXEL).get_features().split(",")


def test_unknown_serial_and_ambiguous_device(server: StandinServer, client) -> None:
    with pytest.raises(adbutils.AdbError, match="not found"):
        client.device("NOPE123").shell("true", timeout=T)
    conn = client.make_connection(timeout=T)
    conn.send_command("host:tport:any")
    with pytest.raises(adbutils.AdbError, match="more than one device"):
        conn.check_okay()
    conn.close()


def _raw(server: StandinServer, *requests: str) -> bytes:
    """Send length-framed requests on one socket and read until the server closes it."""
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=T) as s:
        for req in requests:
            s.sendall(b"%04x" % len(req) + req.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_raw_protocol_classic_transport_exec_and_queries(server: StandinServer, pixel: FakeDevice) -> None:
    assert _raw(server, "host:version") == b"OKAY00040029"
    assert _raw(server, f"host:transport:{PIXEL}", "shell:echo hi; echo err >&2") == b"OKAYOKAYhi\nerr\n"
    assert _raw(server, f"host:transport:{PIXEL}", "exec:echo raw") == b"OKAYOKAYraw\n"
    tid = pixel.transport_id
    assert _raw(server, f"host:tport:serial:{PIXEL}", "shell,v2,raw:exit 5") == (
        b"OKAY" + tid.to_bytes(8, "little") + b"OKAY" + bytes([3, 1, 0, 0, 0, 5]))
    assert _raw(server, f"host-serial:{PIXEL}:get-serialno") == b"OKAY%04x%s" % (len(PIXEL), PIXEL.encode())
    assert _raw(server, f"host-transport-id:{tid}:get-state") == b"OKAY0006device"
    assert _raw(server, "host:nonsense").startswith(b"FAIL")
    assert pixel.commands == ["echo hi; echo err >&2", "echo raw", "exit 5"]
    assert pixel.services["exec"] == 1


def test_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        StandinServer([], host="0.0.0.0")


# ---- adbutils: shell --------------------------------------------------------------------------
@pytest.mark.parametrize("serial, profile", [(PIXEL, "pixel7"), (GALAXY, "galaxy_s21_sd888")])
def test_getprop_answers_from_profile(client, serial: str, profile: str) -> None:
    props = load_profile(profile)["props"]
    for key in ("ro.product.model", "ro.product.manufacturer", "ro.board.platform", "ro.soc.model",
                "ro.build.fingerprint", "ro.product.cpu.abi", "ro.build.version.sdk"):
        assert sh(client, serial, f"getprop {key}") == props[key]
    assert sh(client, serial, "getprop ro.no.such.prop") == ""
    assert sh(client, serial, "getprop ro.no.such.prop fallback") == "fallback"
    assert f"[ro.serialno]: [{serial}]" in sh(client, serial, "getprop")
    assert client.device(serial).prop.model == props["ro.product.model"]


@pytest.mark.parametrize("serial, profile", [(PIXEL, "pixel7"), (GALAXY, "galaxy_s21_sd888")])
def test_sysfs_cpufreq_and_thermal_follow_profile(client, serial: str, profile: str) -> None:
    prof = load_profile(profile)
    n = sum(len(c["cores"]) for c in prof["cpu_clusters"])
    assert sh(client, serial, "cat /sys/devices/system/cpu/possible") == f"0-{n - 1}"
    for cl in prof["cpu_clusters"]:
        for core in cl["cores"]:
            base = f"/sys/devices/system/cpu/cpu{core}/cpufreq"
            out = sh(client, serial, f"cat {base}/scaling_governor {base}/scaling_cur_freq {base}/cpuinfo_max_freq")
            assert out.split() == [cl["governor"], str(cl["cur_freq"]), str(cl["max_freq"])]
    types = sh(client, serial, "cat /sys/class/thermal/thermal_zone*/type").split()
    assert sorted(types) == sorted(z["type"] for z in prof["thermal_zones"])
    assert f"temperature: {prof['battery']['temperature']}" in sh(client, serial, "dumpsys battery")
    assert prof["cpuinfo_hardware"] in sh(client, serial, "cat /proc/cpuinfo")


def test_shell_v2_separates_streams_and_exit_code(client, pixel: FakeDevice) -> None:
    r = client.device(PIXEL).shell2("echo out; echo err >&2; exit 3", timeout=T, v2=True)
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    r = client.device(PIXEL).shell2("echo merged; echo err >&2; false", timeout=T)  # shell v1: merged output
    assert r.returncode == 1 and "merged" in r.output and "err" in r.output
    assert pixel.services["shell_v2"] == 1 and pixel.services["shell"] == 1


def test_posix_shell_really_runs(client, pixel: FakeDevice) -> None:
    script = (f"mkdir -p {LB}/s && cd {LB}/s && i=0; while [ $i -lt 5 ]; do echo $i >> n.txt; i=$((i+1)); done; "
              "chmod +x n.txt && ls -l n.txt | cut -c1-10 && wc -l < n.txt && rm -rf ../s && echo gone")
    assert sh(client, PIXEL, script).split() == ["-rwxr-xr-x", "5", "gone"]
    assert not pixel.exists(f"{LB}/s")


def test_command_log_and_round_trip_counters(client, pixel: FakeDevice) -> None:
    d = client.device(PIXEL)
    cmds = ["getprop ro.product.model", "cat /sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq", "echo 'a b'"]
    for c in cmds:
        d.shell(c, timeout=T)
    d.sync.push(b"x", f"{LB}/one.bin")  # adbutils: STAT session + SEND session
    assert pixel.commands == cmds
    assert pixel.services["shell"] == 3 and pixel.services["sync"] == 2
    assert pixel.sync_ops["STAT"] == 1 and pixel.sync_ops["SEND"] == 1
    assert pixel.round_trips == 5 and pixel.connections == 5
    assert [r for r in pixel.requests if r[0] == "sync:SEND"] == [("sync:SEND", f"{LB}/one.bin,33261")]


def test_quoted_argument_stays_one_argument(client, pixel: FakeDevice) -> None:
    name = "a b;touch pwned"
    out = sh(client, PIXEL, f"cd /data/local/tmp && touch {shlex.quote(name)} && ls")
    assert name in out.splitlines()
    assert pixel.exists(f"/data/local/tmp/{name}")
    assert not list(pixel.root.rglob("pwned")) and not Path("/pwned").exists()
    assert pixel.commands == [f"cd /data/local/tmp && touch {shlex.quote(name)} && ls"]
    sh(client, PIXEL, f"rm -f /data/local/tmp/{shlex.quote(name)}")


def _host_snapshot(path: str) -> object:
    """What the host has at path: None when absent, else its recursive listing."""
    p = Path(path)
    return None if not p.exists() else sorted(str(x) for x in p.rglob("*"))


def test_host_data_local_tmp_untouched(client, pixel: FakeDevice, tmp_path: Path) -> None:
    before = _host_snapshot("/data/local/tmp")
    marker = f"standin-marker-{os.getpid()}"
    sh(client, PIXEL, f"echo hi > /data/local/tmp/{marker} && mkdir -p /data/local/tmp/{marker}.d")
    client.device(PIXEL).sync.push(b"pushed", f"/data/local/tmp/{marker}.d/f")
    assert _host_snapshot("/data/local/tmp") == before
    assert pixel.read_file(f"/data/local/tmp/{marker}") == b"hi\n"
    assert (pixel.root / f"data/local/tmp/{marker}.d/f").read_bytes() == b"pushed"
    # The host directories a device shell sees are read-only binds.
    out = sh(client, PIXEL, f"touch /tmp/{marker} /usr/{marker} 2>&1; echo rc=$?")
    assert "Read-only file system" in out and not Path(f"/tmp/{marker}").exists()
    sh(client, PIXEL, f"rm -rf /data/local/tmp/{marker} /data/local/tmp/{marker}.d")


def test_concurrent_shells_on_two_devices(client, server: StandinServer) -> None:
    jobs = [(s, i) for i in range(6) for s in (PIXEL, GALAXY)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        outs = list(pool.map(lambda j: sh(client, j[0], f"sleep 0.2; echo {j[1]} $(getprop ro.serialno)"), jobs))
    assert outs == [f"{i} {s}" for s, i in jobs]


# ---- adbutils: sync -----------------------------------------------------------------------------
def test_sync_push_pull_list_stat(client, pixel: FakeDevice, tmp_path: Path) -> None:
    d = client.device(PIXEL)
    blob = os.urandom(300_000)  # several 64 KiB DATA chunks each way
    src = tmp_path / "blob.bin"
    src.write_bytes(blob)
    d.sync.push(str(src), f"{LB}/sync/blob.bin", 0o644)
    assert pixel.read_file(f"{LB}/sync/blob.bin") == blob
    d.sync.pull(f"{LB}/sync/blob.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == blob
    st = d.sync.stat(f"{LB}/sync/blob.bin")
    assert st.size == len(blob) and st.mode & 0o777 == 0o644
    assert "blob.bin" in [f.path for f in d.sync.list(f"{LB}/sync")]
    assert d.sync.exists(f"{LB}/sync") and not d.sync.exists(f"{LB}/nope")
    assert d.sync.read_text("/sys/devices/system/cpu/cpu7/cpufreq/cpuinfo_max_freq").strip() == "2850000"
    with pytest.raises(adbutils.AdbError, match="No such file"):
        d.sync.read_bytes(f"{LB}/nope")
    with pytest.raises(adbutils.AdbError):
        d.sync.push(b"x", "/usr/standin-should-fail")
    assert not Path("/usr/standin-should-fail").exists()


# ---- device knobs -------------------------------------------------------------------------------
def test_temperature_follows_set_temperature_and_schedule(client, pixel: FakeDevice) -> None:
    zones = "cat /sys/class/thermal/thermal_zone*/temp"
    pixel.set_temperature(47.5)
    assert set(sh(client, PIXEL, zones).split()) == {"47500"}
    assert "temperature: 475" in sh(client, PIXEL, "dumpsys battery")
    pixel.set_temperature_schedule(hot=45.0, cool=30.0, hot_reads=2)
    reads = [sh(client, PIXEL, "cat /sys/class/thermal/thermal_zone0/temp") for _ in range(4)]
    assert reads == ["45000", "45000", "30000", "30000"]
    assert pixel.temperature_reads == 4 and pixel.temperature == 30.0


def test_heating_phone_warms_per_run_and_cools_while_idle(client, pixel: FakeDevice, runner_pushed: str) -> None:
    """set_heating: each benchmark_model run adds per_run C (no cooling inside one shell); the
    next adb request after an idle spell finds it cooler, never below ambient."""
    pixel.set_heating(start=40.0, per_run=1.5, cool_per_s=20.0)
    zone = "cat /sys/class/thermal/thermal_zone0/temp"
    run = f"{runner_pushed} --graph={LB}/conv.tflite --num_runs=1 {FAST} >/dev/null 2>&1"
    battery = "dumpsys battery | grep temperature:"
    out = sh(client, PIXEL, f"{zone}; {run}; {zone}; {run}; {zone}; {battery}").split()
    assert out == ["40000", "41500", "43000", "temperature:", "430"]  # the battery follows
    assert pixel.run_temperatures[-2:] == [("conv.tflite", 40.0), ("conv.tflite", 41.5)]
    time.sleep(0.2)  # 20 C/s for 0.2 s: 4 C off, at most down to ambient (40 C)
    assert sh(client, PIXEL, zone) == "40000"
    pixel.set_temperature(None)
    assert sh(client, PIXEL, zone) == str(load_profile("pixel7")["thermal_zones"][0]["temp"])


def test_fixed_performance_mode_and_taskset(client, server: StandinServer, pixel: FakeDevice) -> None:
    d = client.device(PIXEL)
    assert d.shell2("cmd power set-fixed-performance-mode-enabled true", timeout=T, v2=True).returncode == 0
    assert pixel.fixed_performance_mode is True
    r = client.device(GALAXY).shell2("cmd power set-fixed-performance-mode-enabled true", timeout=T, v2=True)
    assert r.returncode == 255 and "FIXED_PERFORMANCE" in r.stdout
    assert server.device(GALAXY).fixed_performance_mode is None
    assert d.shell2("taskset c0 echo pinned", timeout=T, v2=True).stdout == "pinned\n"
    bad = d.shell2("taskset 300 echo never", timeout=T, v2=True)  # cores 8, 9: not on an 8-core phone
    assert bad.returncode == 1 and "Invalid argument" in bad.stderr and "never" not in bad.stdout
    assert pixel.taskset_calls[-1] == "c0 echo pinned"


def test_add_and_remove_device(client, server: StandinServer) -> None:
    extra = server.add_device(FakeDevice("pixel7", serial="STANDIN0003"))
    try:
        assert "STANDIN0003" in [d.serial for d in client.device_list()]
        assert sh(client, "STANDIN0003", "getprop ro.serialno") == "STANDIN0003"
    finally:
        server.remove_device("STANDIN0003")
        extra.close()
    assert "STANDIN0003" not in [d.serial for d in client.device_list()]


def test_unauthorized_device_is_listed_but_refuses_services(client, server: StandinServer) -> None:
    locked = server.add_device(FakeDevice("galaxy_s21_sd888", serial="STANDINLOCKED", state="unauthorized"))
    try:
        assert ("STANDINLOCKED", "unauthorized") in [(i.serial, i.state) for i in client.list()]
        assert "STANDINLOCKED" not in [d.serial for d in client.device_list()]
        assert client.device("STANDINLOCKED").get_state() == "unauthorized"
        with pytest.raises(adbutils.AdbError, match="unauthorized"):
            client.device("STANDINLOCKED").shell("true", timeout=T)
        assert locked.commands == []
    finally:
        server.remove_device("STANDINLOCKED")
        locked.close()


# ---- the stand-in benchmark_model ----------------------------------------------------------------
def test_benchmark_model_current_output(client, pixel: FakeDevice, runner_pushed: str) -> None:
    ran = len(pixel.models_run)
    out = sh(client, PIXEL, f"taskset f0 {runner_pushed} --graph={LB}/conv.tflite --num_threads=4 "
                            f"--num_runs=20 {FAST} 2>&1")
    lines = out.splitlines()
    assert lines[0] == "INFO: STARTING!"
    assert f"INFO: Graph: [{LB}/conv.tflite]" in lines and "INFO: Num threads: [4]" in lines
    assert f"INFO: Loaded model {LB}/conv.tflite" in lines
    assert any(x.startswith("INFO: The input model file size (MB): ") for x in lines)
    assert STAT20.search(out)
    init, first, warm, avg = TIMINGS.search(out).groups()
    assert int(init) > 0 and int(first) > 0 and float(warm) > 0 and float(avg) > 0
    assert "Memory footprint delta from the start of the tool (MB)" in out
    assert pixel.models_run[ran:] == ["conv.tflite"] and pixel.taskset_calls[-1].startswith("f0 ")


@pytest.mark.parametrize("style, pattern", [
    ("pre2020", r"Average inference timings in us: Warmup: [\d.e+-]+, Init: \d+, Inference: [\d.e+-]+"),
    ("legacy_nostats", r"Average inference timings in us: Warmup: [\d.e+-]+, Init: \d+, no stats: [\d.e+-]+"),
    ("scientific", r"Inference \(avg\): \d\.\d{5}e[+-]\d\d"),
])
def test_benchmark_model_output_styles(client, pixel: FakeDevice, runner_pushed: str, style: str,
                                       pattern: str) -> None:
    pixel.set_output_style(style)
    r = client.device(PIXEL).shell2(f"{runner_pushed} --graph={LB}/conv.tflite --num_runs=5 {FAST}", timeout=T,
                                    v2=True)
    assert r.returncode == 0
    assert re.search(pattern, r.output), r.output
    if style == "scientific":
        # a Stat whose samples are all equal (or single) prints no avg; every full one prints it in scientific form
        for line in re.findall(r"count=\d+ first=.*", r.stdout):
            assert re.search(r" avg=\d\.\d{5}e[+-]\d\d ", line), line
    else:
        assert r.stdout == "" and r.stderr.startswith("STARTING!\n")  # old builds: unprefixed, all on stderr


@pytest.mark.parametrize("signal_name, code", [("SIGSEGV", 139), ("SIGABRT", 134)])
def test_benchmark_model_crash_on(client, pixel: FakeDevice, runner_pushed: str, signal_name: str,
                                  code: int) -> None:
    pixel.crash_on("conv.tflite", signal_name)
    r = client.device(PIXEL).shell2(f"{runner_pushed} --graph={LB}/conv.tflite", timeout=T, v2=True)
    assert r.returncode == code
    assert f"Fatal signal {code - 128} ({signal_name})" in r.stderr
    assert "Inference timings" not in r.output


def test_benchmark_model_flags_like_the_real_tool(client, pixel: FakeDevice, runner_pushed: str) -> None:
    d = client.device(PIXEL)
    r = d.shell2(f"{runner_pushed} --help", timeout=T, v2=True)
    assert r.returncode == 1 and "--num_threads=-1" in r.stderr and "ERROR: Benchmarking failed." in r.stderr
    r = d.shell2(f"{runner_pushed} --graph={LB}/conv.tflite --num_runs=many", timeout=T, v2=True)
    assert r.returncode == 1 and "Failed to parse flag 'num_runs' against argv '--num_runs=many'" in r.stderr
    r = d.shell2(f"{runner_pushed} --graph={LB}/missing.tflite", timeout=T, v2=True)
    assert r.returncode == 1 and f"Failed to mmap model {LB}/missing.tflite" in r.stderr
    r = d.shell2(f"{runner_pushed} --graph={LB}/conv.tflite --no_such_flag=1 --use_xnnpack=false "
                 f"--enable_op_profiling=true --num_runs=3 {FAST}", timeout=T, v2=True)
    assert r.returncode == 0 and "WARN: Unconsumed cmdline flags: --no_such_flag=1" in r.stdout
    assert "INFO: Use xnnpack: [0]" in r.stdout and "XNNPACK delegate for CPU" not in r.stderr
    assert "Run Order" in r.stdout and "CONV_2D" in r.stdout


def test_benchmark_model_runs_standalone_on_the_host(tmp_path: Path) -> None:
    model = tmp_path / "conv.tflite"
    model.write_bytes(conv_model())
    env = dict(os.environ, LATBENCH_STANDIN_DEVICE=str(tmp_path / "absent.json"), LATBENCH_STANDIN_STYLE="current")
    r = subprocess.run([sys.executable, str(BENCHMARK_MODEL), f"--graph={model}", "--num_runs=5", *FAST.split()],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert float(TIMINGS.search(r.stdout).group(4)) > 0


# ---- simulate_run_time: benchmark_model sleeps a set latency instead of running LiteRT ----------------
SAME = re.compile(r"count=(\d+) curr=(\d+)(?:\(all same\))?$", re.MULTILINE)  # a Stat of equal (or one) samples


def test_simulated_run_time_reports_and_sleeps_it(client, pixel: FakeDevice, runner_pushed: str) -> None:
    pixel.simulate_run_time(5.0)
    pixel.set_heating(start=40.0, per_run=1.5, cool_per_s=0.0)
    ran = len(pixel.models_run)
    d = client.device(PIXEL)
    r = d.shell2(f"{runner_pushed} --graph={LB}/conv.tflite --num_runs=20 --warmup_runs=2 {FAST}", timeout=T, v2=True)
    assert r.returncode == 0, r.output
    init, first, warm, avg = TIMINGS.search(r.stdout).groups()
    assert 5000 <= float(avg) <= 7000 and int(first) >= 5000 and float(warm) >= 5000 and int(init) > 0
    assert SAME.findall(r.stdout) == [("2", "5000"), ("20", "5000")]  # warmup, then --num_runs; min = 5000
    # a simulated run is a model run: counted, heats the phone, sees its temperature
    assert pixel.models_run[ran:] == ["conv.tflite"] and pixel.run_temperatures[-1] == ("conv.tflite", 40.0)
    assert pixel.temperature == 41.5
    # --min_secs rules the count as for real runs (0.1 s of 5 ms runs: 20, fewer only if the host stalls)
    r = d.shell2(f"{runner_pushed} --graph={LB}/conv.tflite --num_runs=1 --min_secs=0.1 --warmup_min_secs=0",
                 timeout=T, v2=True)
    assert 15 <= int(SAME.findall(r.stdout)[-1][0]) <= 20, r.stdout
    pixel.reset_knobs()
    assert pixel.simulated_run_ms("conv.tflite") is None


def test_simulated_run_time_per_model_and_model_checks(client, pixel: FakeDevice, runner_pushed: str) -> None:
    d = client.device(PIXEL)
    assert d.shell(f"cp {LB}/conv.tflite {LB}/other.tflite && echo notamodel > {LB}/junk.tflite && echo ok",
                   timeout=T) == "ok"
    pixel.simulate_run_time({"conv": 2.5, "*": 7.25})
    ran = len(pixel.models_run)

    def bench(graph: str, extra: str = ""):
        return d.shell2(f"{runner_pushed} --graph={LB}/{graph} --num_runs=3 {FAST} {extra}", timeout=T, v2=True)

    assert float(TIMINGS.search(bench("conv.tflite").stdout).group(4)) == 2500
    r = bench("other.tflite", "--enable_op_profiling=true")
    assert float(TIMINGS.search(r.stdout).group(4)) == 7250 and "CONV_2D" in r.stdout  # ops read from the file
    for bad in ("missing.tflite", "junk.tflite"):  # the graph is still opened and checked
        r = bench(bad)
        assert r.returncode == 1 and f"Failed to mmap model {LB}/{bad}" in r.stderr, r.output
    pixel.set_output_style("pre2020")
    assert "Average inference timings in us: Warmup: 2500, Init: " in bench("conv.tflite").stderr
    assert pixel.models_run[ran:] == ["conv.tflite", "other.tflite", "conv.tflite"]  # failed runs are not
    with pytest.raises(ValueError):
        pixel.simulate_run_time(-1.0)


def test_simulated_phones_run_in_parallel(client, server: StandinServer, pixel: FakeDevice,
                                          runner_pushed: str) -> None:
    galaxy = server.device(GALAXY)
    g = client.device(GALAXY)
    g.sync.push(str(BENCHMARK_MODEL), f"{LB}/benchmark_model", 0o755)
    g.sync.push(conv_model(), f"{LB}/conv.tflite")
    cmd = f"{LB}/benchmark_model --graph={LB}/conv.tflite --num_runs=3 --warmup_runs=1 {FAST}"
    one = 4 * 0.2  # one device: a warmup and 3 runs of 200 ms
    try:
        for dev in (pixel, galaxy):
            dev.simulate_run_time(200.0)
        cpu0, t0 = time.process_time(), time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            outs = list(pool.map(lambda s: sh(client, s, cmd), (PIXEL, GALAXY)))
        wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    finally:
        galaxy.reset_knobs()
    for out in outs:
        assert SAME.findall(out) == [("1", "200000"), ("3", "200000")], out
        assert float(TIMINGS.search(out).group(4)) == 200000
    assert one <= wall < 1.6 * one, wall  # serialized, the two would take 2 * one
    assert cpu < 0.5 * one, cpu  # the sleeping costs this process (the server) no CPU


def test_disconnect_after_drops_connection_and_hides_device(tmp_path: Path) -> None:
    srv = start_standin([FakeDevice("pixel7", serial="STANDINDROP1")])
    try:
        dev = srv.device("STANDINDROP1")
        client = adbutils.AdbClient(host="127.0.0.1", port=srv.port, socket_timeout=T)
        d = client.device("STANDINDROP1")
        d.sync.push(str(BENCHMARK_MODEL), f"{LB}/benchmark_model", 0o755)
        d.sync.push(conv_model(), f"{LB}/conv.tflite")
        dev.write_file(f"{LB}/batch.sh", f"for i in 1 2 3 4; do {LB}/benchmark_model --graph={LB}/conv.tflite "
                                         f"--num_runs=2 {FAST} > {LB}/out_$i.txt 2>&1; echo done $i; done\n")
        tid = dev.transport_id
        dev.disconnect_after(2)
        with pytest.raises((EOFError, adbutils.AdbError, OSError)):
            d.shell2(f"sh {LB}/batch.sh", timeout=T, v2=True)  # no exit code ever arrives
        assert dev.models_run == ["conv.tflite", "conv.tflite"] and not dev.online
        assert client.device_list() == []
        with pytest.raises(adbutils.AdbError, match="not found"):
            d.shell("true", timeout=T)
        assert not dev.exists(f"{LB}/out_3.txt")
        dev.reconnect()
        assert [x.serial for x in client.device_list()] == ["STANDINDROP1"] and dev.transport_id != tid
        assert "Inference timings in us" in d.shell(f"cat {LB}/out_2.txt", timeout=T)
    finally:
        srv.stop()


def test_unavailable_namespace_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    dev = FakeDevice("pixel7", serial="STANDINNOROOT")
    with pytest.raises(StandinUnavailable, match="root"):
        StandinServer([dev]).start()
    assert not dev.base.exists()  # a failed start cleans up after itself


def test_bundled_profiles() -> None:
    assert {"pixel7", "galaxy_s21_sd888"} <= set(list_profiles())
    for name in list_profiles():
        p = load_profile(name)
        cores = sorted(c for cl in p["cpu_clusters"] for c in cl["cores"])
        assert cores == list(range(len(cores))) and p["thermal_zones"] and "temperature" in p["battery"]


# ---- the real adb client from adbutils' wheel ------------------------------------------------------
@pytest.fixture(scope="module")
def adb_exe() -> str:
    """The real adb client binary, or skip with the reason it cannot run here."""
    exe = real_adb_path()
    if exe is None:
        pytest.skip("adbutils' wheel ships no adb binary for this platform")
    try:
        r = subprocess.run([str(exe), "version"], capture_output=True, text=True, timeout=T)
    except OSError as e:
        pytest.skip(f"the bundled adb client cannot run here: {e}")
    if r.returncode != 0:
        pytest.skip(f"the bundled adb client cannot run here: {r.stderr.strip()}")
    return str(exe)


def adb(exe: str, server: StandinServer, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run the real adb client against the stand-in server (bounded)."""
    return subprocess.run([exe, "-H", "127.0.0.1", "-P", str(server.port), *args], capture_output=True, text=True,
                          timeout=T, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)


def test_real_adb_devices_and_shell(adb_exe: str, server: StandinServer, pixel: FakeDevice) -> None:
    r = adb(adb_exe, server, "devices", "-l")
    assert r.returncode == 0 and r.stdout.startswith("List of devices attached\n")
    assert re.search(rf"^{PIXEL}\s+device usb:\S+ product:panther model:Pixel_7 device:panther transport_id:\d+$",
                     r.stdout, re.M)
    r = adb(adb_exe, server, "-s", PIXEL, "shell", "getprop", "ro.product.model")
    assert (r.returncode, r.stdout) == (0, "Pixel 7\n")
    r = adb(adb_exe, server, "-s", GALAXY, "shell", "echo out; echo err >&2; exit 7")
    assert (r.returncode, r.stdout, r.stderr) == (7, "out\n", "err\n")
    r = adb(adb_exe, server, "-s", PIXEL, "shell", "cat > /data/local/tmp/stdin.txt; wc -c < /data/local/tmp/stdin.txt",
            stdin="hello from stdin\n")
    assert r.stdout.strip() == "17" and pixel.read_file("/data/local/tmp/stdin.txt") == b"hello from stdin\n"
    assert "getprop ro.product.model" in pixel.commands


def test_real_adb_push_pull_round_trip(adb_exe: str, server: StandinServer, pixel: FakeDevice,
                                       tmp_path: Path) -> None:
    blob = os.urandom(200_000)
    (tmp_path / "up.bin").write_bytes(blob)
    r = adb(adb_exe, server, "-s", PIXEL, "push", str(tmp_path / "up.bin"), f"{LB}/adb/up.bin")
    assert r.returncode == 0 and "1 file pushed" in r.stdout + r.stderr
    assert pixel.read_file(f"{LB}/adb/up.bin") == blob
    r = adb(adb_exe, server, "-s", PIXEL, "pull", f"{LB}/adb/up.bin", str(tmp_path / "down.bin"))
    assert r.returncode == 0 and (tmp_path / "down.bin").read_bytes() == blob
    r = adb(adb_exe, server, "-s", PIXEL, "pull", f"{LB}/adb/missing.bin", str(tmp_path / "x"))
    assert r.returncode == 1 and "No such file or directory" in r.stderr

"""The device farm on a real Ray cluster of two node processes on 127.0.0.1 (Ray's cluster_utils):
node-a, the head, its device actors started by the library, and node-b, its device actors started
by the real `latbench farm node --no-join` command; each node with its own stand-in adb server and
phones, node-a with its ONNX Runtime too. Profiles, resumes, devices that leave and come back, a
node killed with SIGKILL mid-run, validate and calibrate on the farm, and the farm's errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported: every node on 127.0.0.1
ray = pytest.importorskip("ray", reason="the device farm needs Ray: pip install 'latbench[farm]'")
pytest.importorskip("adbutils", reason="the farm's phones need adbutils: pip install 'latbench[android]'")
pytest.importorskip("ai_edge_litert", reason="the stand-in benchmark_model runs LiteRT: pip install 'latbench[tflite]'")

from adb_standin import BENCHMARK_MODEL, FakeDevice  # noqa: E402
from conftest import CLI_ENV, ROOT, latbench_exe, start_standin  # noqa: E402
from ray_nodes import kill_node, node_pids  # noqa: E402

from latbench import ops as O  # noqa: E402
from latbench.farm.discover import discover, node_resources  # noqa: E402
from latbench.farm.driver import farm_profile  # noqa: E402
from latbench.farm.node import start_device_actors  # noqa: E402
from latbench.farm.registry import list_farm  # noqa: E402
from latbench.measure import TimingSettings  # noqa: E402
from latbench.store import LatencyTable  # noqa: E402

_RUN = f"{os.getpid() % 100000:05d}"  # serials of this run only
A_PHONES, B_PHONES = (f"FA{_RUN}1", f"FA{_RUN}2"), (f"FB{_RUN}1",)
FAST = {"max_time_s": 0.02, "min_samples": 3, "rounds": 2, "target_iqr": 0.5}  # host runtimes
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "ADBUTILS_ADB_PATH": "/bin/true"}


class Farm:
    """The module's cluster: its address, the stand-in servers and their phones."""

    def __init__(self, cluster, servers: dict, tmp: Path):
        self.cluster, self.servers, self.tmp = cluster, servers, tmp
        self.address = cluster.address

    def phone(self, serial: str) -> FakeDevice:
        for srv in self.servers.values():
            for d in srv.devices:
                if d.serial == serial:
                    return d
        raise KeyError(serial)


@pytest.fixture(scope="module")
def farm(tmp_path_factory) -> Iterator[Farm]:
    from ray.cluster_utils import Cluster

    tmp = tmp_path_factory.mktemp("farm")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in LOOPBACK.items():
            mp.setenv(k, v)
        servers, cluster = {}, None
        try:
            for node, serials in (("a", A_PHONES), ("b", B_PHONES)):
                servers[node] = start_standin([FakeDevice("pixel7", serial=s) for s in serials])
            opts = {"android": {"cooldown": 0.1, "batch_size": 4}}
            entries, _ = discover("node-a", ["ort", "android"], str(BENCHMARK_MODEL), "127.0.0.1",
                                  servers["a"].port, opts)
            assert sorted(e.device_id for e in entries) == sorted(["ort@node-a", *(f"android:{s}" for s in A_PHONES)])
            # node-a is the head node itself
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                                    "resources": node_resources(entries)})
            ray.init(address=cluster.address, namespace="latbench", log_to_driver=False, include_dashboard=False,
                     logging_level="ERROR")
            start_device_actors(entries)
            # node-b: a second Ray node, its device actors started by the command each host runs (with
            # --no-join: `ray start` cannot join a loopback-only cluster, see FIELD-NOTES)
            found, _ = discover("node-b", ["android"], str(BENCHMARK_MODEL), "127.0.0.1", servers["b"].port)
            cluster.add_node(num_cpus=1, resources=node_resources(found))
            r = subprocess.run([latbench_exe(), "farm", "node", "--address", cluster.address, "--name", "node-b",
                                "--device", "android", "--runner", str(BENCHMARK_MODEL),
                                "--adb-host", "127.0.0.1", "--adb-port", str(servers["b"].port), "--no-join", "--json"],
                               capture_output=True, text=True, cwd=ROOT, env={**CLI_ENV, **LOOPBACK}, timeout=300)
            assert r.returncode == 0, r.stderr[-3000:]
            described = json.loads(r.stdout)
            assert [d["device_id"] for d in described] == [f"android:{B_PHONES[0]}"], described
            yield Farm(cluster, servers, tmp)
        finally:
            ray.shutdown()
            if cluster is not None:
                cluster.shutdown()
            for srv in servers.values():
                srv.stop()


def devices_by_id(farm: Farm) -> dict:
    return {d.device_id: d for d in list_farm(ray)}


# ---------------------------------------------------------------------- listing
def test_farm_devices_lists_every_device_with_host_kind_profile_and_state(farm: Farm, cli) -> None:
    code, out, err = cli("farm", "devices", "--address", farm.address, "--json")
    assert code == 0, err
    rows = {r["device_id"]: r for r in json.loads(out)}
    assert set(rows) == {"ort@node-a", *(f"android:{s}" for s in A_PHONES + B_PHONES)}
    assert {rows[f"android:{s}"]["node"] for s in A_PHONES} == {"node-a"} and rows[f"android:{B_PHONES[0]}"]["node"] == "node-b"
    assert all(r["state"] == "idle" for r in rows.values()), rows
    phones = {rows[f"android:{s}"]["profile_id"] for s in A_PHONES + B_PHONES}
    assert len(phones) == 1 and phones != {rows["ort@node-a"]["profile_id"]}  # identical phones: one profile
    assert rows[f"android:{A_PHONES[0]}"]["model"] and rows["ort@node-a"]["kind"] == "ort"
    code, out, err = cli("farm", "devices", "--address", farm.address)
    assert code == 0 and f"android:{B_PHONES[0]}" in out and "idle" in out, err


# ---------------------------------------------------------------------- profiling
def test_profile_on_the_farm_builds_one_table_per_profile_and_resumes(farm: Farm, cli) -> None:
    """`latbench profile --farm`: an ort table and an android table built at once, the latter by
    the three phones of both hosts, every op once; a rerun measures nothing."""
    from latbench.profiler import select_ops

    out_dir = farm.tmp / "tables"
    args = ("profile", "--farm", farm.address, "--space", "tiny", "-r", "24", "--out", str(out_dir),
            "--max-time", "0.02", "--min-samples", "3", "--rounds", "2", "--target-iqr", "0.5", "--json")
    code, out, err = cli(*args)
    assert code == 0, err
    run = json.loads(out)
    tables = {t["device"]: t for t in run["tables"]}
    assert set(tables) == {"ort", "android"}
    devs = devices_by_id(farm)
    for kind, t in tables.items():
        with LatencyTable.open(t["table"], readonly=True) as tab:
            assert tab.profile.id == t["profile_id"]
            fusion = tab.run_settings.fusion
            want = {op.key for op in select_ops("tiny", [24], "block", fusion)[0]}
            assert tab.keys(status="ok") == want and len(list(tab.rows())) == len(want)
        assert t["measured"] == len(want) and t["failed"] == t["remaining"] == 0
        assert {d for d in run["devices"] if devs[d].kind == kind} and t["profile_id"] == next(
            devs[d].profile_id for d in run["devices"] if devs[d].kind == kind)
    assert len([d for d in run["devices"] if d.startswith("android:")]) >= 2, run["devices"]  # the phones shared it
    assert run["duplicates"] == run["requeued"] == 0
    assert "tiny-android-" in err and "ops/s" in err and "device(s) busy" in err  # the live line per table
    code, out, err = cli(*args)
    again = json.loads(out)
    assert code == 0 and all(t["measured"] == 0 and t["skipped"] == t["total"] for t in again["tables"]), out


def test_a_phone_that_disconnects_gives_its_batch_back_and_rejoins(farm: Farm) -> None:
    """A phone unplugged mid-batch: its batch runs on another phone, nothing is lost or doubled,
    and once plugged back in it is found again."""
    pa = farm.phone(A_PHONES[1])
    pa.reset_knobs()
    pa.disconnect_after(1)
    lines: list[str] = []
    ops = [O.conv((1, 8, 12, 12), c, 3) for c in range(4, 12)]
    out = farm_profile(ray, ops, str(farm.tmp / "disconnect"), device=["android"], timing={}, retime="none",
                       rescan_s=0.5, wait_s=30, on_line=lines.append)
    assert out.ok and out.requeued >= 1, (out.to_dict(), lines)
    assert any(f"android:{A_PHONES[1]} went away" in x for x in lines), lines
    (r,) = out.runs
    with LatencyTable.open(r.table, readonly=True) as t:
        assert t.keys(status="ok") == {op.key for op in ops} and out.duplicates == 0
    pa.reconnect()  # plugged back in: the farm finds it again
    deadline = time.monotonic() + 30
    while devices_by_id(farm)[f"android:{A_PHONES[1]}"].state == "offline" and time.monotonic() < deadline:
        ray.get(devices_by_id(farm)[f"android:{A_PHONES[1]}"].handle.probe.remote())
        time.sleep(0.3)
    assert devices_by_id(farm)[f"android:{A_PHONES[1]}"].state == "idle"


def test_a_phone_cooling_down_is_listed_hot(farm: Farm) -> None:
    """While a phone's thermal gate waits for it to cool, its actor says `hot` (and answers while
    it measures); the rows taken after it gave up waiting are flagged hot."""
    phone = farm.phone(A_PHONES[0])
    phone.reset_knobs()
    phone.set_temperature(60.0)  # above the 45 C gate for good: 10 waits of 0.1 s, then measured anyway
    dev = devices_by_id(farm)[f"android:{A_PHONES[0]}"]
    ref = dev.handle.measure.remote([O.activation((1, 8, 6, 6), "relu").to_dict()], TimingSettings().to_dict())
    seen = set()
    while not ray.wait([ref], timeout=0)[0]:
        seen.add(ray.get(dev.handle.describe.remote())["state"])
        time.sleep(0.02)
    (row,) = ray.get(ref)["results"]
    phone.reset_knobs()
    assert "hot" in seen and row["extra"].get("hot"), (seen, row["extra"])


def test_validate_and_calibrate_on_a_device_of_the_tables_profile(farm: Farm, cli, tiny_yaml) -> None:
    from latbench.tablemeta import calibration_key

    (table,) = sorted((farm.tmp / "tables").glob("tiny-ort-*.sqlite"))
    code, out, err = cli("validate", "--farm", farm.address, "--table", str(table), "--space", "tiny", "--n", "2",
                         "--calibrate-n", "1", "--no-op-baseline", "--retime", "0", "--passes", "3", "--runs", "3",
                         "--min-time", "0.01", "--builds", "1", "--max-time", "0.01", "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["device"] in ("ort@node-a", "ort@node-b") and len(rep["subnets"]) == 2
    assert all(s["measured_ms"] > 0 for s in rep["subnets"]) and "validate on ort@node-" in err
    # the space as a YAML file on the driver's host only (tiny's own YAML): sent to the device as its text
    yaml_file = farm.tmp / "my-tiny.yaml"
    yaml_file.write_text((ROOT / "latbench" / "spaces" / "data" / "tiny.yaml").read_text())
    code, out, err = cli("calibrate", "--farm", farm.address, "--table", str(table), "--space", str(yaml_file),
                         "-n", "2", "--passes", "3", "--runs", "3", "--min-time", "0.01", "--json")
    assert code == 0, err
    rep = json.loads(out)
    with LatencyTable.open(table, readonly=True) as t:
        cal = t.calibration("tiny", "block")
    assert cal is not None and cal.key == calibration_key("tiny", "block") == rep["key"]
    # an error on the device's host comes back as the error it is (a usage error: exit 2), naming this table
    code, out, err = cli("calibrate", "--farm", farm.address, "--table", str(table), "--space", str(tiny_yaml), "-n", "1")
    assert code == 2 and f"{table} records no resolution of space 'cli-tiny'" in err, err
    assert cal.scale == pytest.approx(rep["calibration"]["scale"]) and cal.n == 2
    code, out, err = cli("validate", "--farm", farm.address, "--table", str(table), "--space", "tiny", "--threads", "1")
    assert code == 2 and "--threads" in err and "--farm" in err


# ---------------------------------------------------------------------- the driver's rules
def test_a_batch_failing_on_every_device_it_tries_is_stored_failed_once(farm: Farm, tmp_path) -> None:
    """The driver's handling of a batch that fails (not a device lost): tried on another device of
    its profile, and after MAX_TRIES devices stored failed with every device's error, not retried."""
    from latbench.device import DeviceProfile
    from latbench.farm.driver import MAX_TRIES, Batch, Farm as Driver, FarmRun, Job, _settle
    from latbench.farm.registry import FarmDevice
    from latbench.farm.worker import FAILED
    from latbench.profiling import ProfileRun

    prof = DeviceProfile(agent="ort", runtime="onnxruntime", runtime_version="test", threads=1)
    drv = Driver(ray, device=["no-such-kind"])  # the real farm listed, none of it kept
    drv.devices = {f"d{i}": FarmDevice(f"d{i}", "ort", f"n{i}", profile_id=prof.id, state="busy") for i in range(4)}
    ops = [O.conv((1, 4, 6, 6), 4, 3), O.conv((1, 4, 6, 6), 8, 3)]
    with LatencyTable.open(tmp_path / "t.sqlite", prof, create=True) as table:
        job = Job(prof.id, str(table.path), table, {"batch_len": 1}, TimingSettings(), {}, ProfileRun(total=2))
        batch, out = Batch(ops), FarmRun()
        for i in range(MAX_TRIES):
            _settle(ray, ray.put({FAILED: f"boom {i}"}), drv.devices[f"d{i}"], job, batch, drv, out, print)
            if i < MAX_TRIES - 1:
                assert list(job.queue) == [batch] and batch.tried == [f"d{j}" for j in range(i + 1)]
                job.queue.clear()
        assert not job.queue and out.failed_batches == 1 and job.run.failed == 2
        rows = {r["key"]: r for r in table.rows()}
    assert set(rows) == {op.key for op in ops} and {r["status"] for r in rows.values()} == {"failed"}
    assert all(f"d{i}: boom {i}" in r["error"] for r in rows.values() for i in range(MAX_TRIES))


def test_host_runtimes_of_one_host_take_turns_phones_do_not(farm: Farm) -> None:
    """ort, tflite and cpu time on their host's cores: while one of a host's runs a batch, the
    host's others wait (they would slow each other); another host's, and phones, go on."""
    from latbench.farm.driver import Farm as Driver
    from latbench.farm.registry import FarmDevice

    drv = Driver(ray, device=["no-such-kind"])
    devs = [FarmDevice("ort@h1", "ort", "h1", host_cpu=True, state="idle"),
            FarmDevice("tflite@h1", "tflite", "h1", host_cpu=True, state="idle"),
            FarmDevice("ort@h2", "ort", "h2", host_cpu=True, state="idle"),
            FarmDevice("android:P1", "android", "h1", state="idle"),
            FarmDevice("android:P2", "android", "h1", state="offline")]
    drv.devices = {d.device_id: d for d in devs}
    assert [d.device_id for d in devs if drv.free(d)] == ["ort@h1", "tflite@h1", "ort@h2", "android:P1"]
    drv.busy["ort@h1"] = object()
    assert [d.device_id for d in devs if drv.free(d)] == ["ort@h2", "android:P1"]


def test_farm_errors_are_one_line(farm: Farm, cli, tmp_path) -> None:
    code, out, err = cli("farm", "profile", "--address", farm.address, "--out-dir", str(tmp_path), "--space", "tiny",
                         "--device", "cuda")
    assert code == 4 and "no device of kind cuda" in err and len(err.strip().splitlines()) == 1
    code, out, err = cli("profile", "--farm", farm.address, "--space", "tiny", "--out", str(tmp_path), "--threads", "2")
    assert code == 2 and "--threads" in err


# ---------------------------------------------------------------------- faults
def test_ctrl_c_stops_the_farm_with_every_stored_row_kept_and_a_rerun_resumes(farm: Farm) -> None:
    """Ctrl-C in the driver mid-run (raised where the driver hands out its 4th batch): the run
    says interrupted, the table is intact with every row stored so far, and the same profile then
    measures only what is missing. (`latbench profile --farm` turns it into exit 130 as every
    command does: test_sigterm.)"""
    out_dir, handed = farm.tmp / "interrupted", []
    timing = {"max_time_s": 0.05, "min_samples": 3, "rounds": 2, "interleave": 4}

    def ctrl_c_on_the_4th(d, batch) -> None:
        handed.append(batch)
        if len(handed) == 4:
            raise KeyboardInterrupt

    out = farm_profile(ray, "tiny", str(out_dir), resolutions=[24], device=["ort"], granularity="block",
                       timing=timing, on_submit=ctrl_c_on_the_4th)
    (r,) = out.runs
    assert out.interrupted and r.interrupted and not out.ok and 0 < r.measured < r.total, out.to_dict()
    with LatencyTable.open(r.table, readonly=True) as t:
        assert t.integrity_check() == "ok"
        kept = t.keys()
    assert len(kept) == r.measured
    again = farm_profile(ray, "tiny", str(out_dir), resolutions=[24], device=["ort"], granularity="block",
                         timing=timing)
    (r2,) = again.runs  # the rerun: what was kept is skipped, only the rest measured
    assert again.ok and r2.skipped == len(kept) and r2.measured == r2.total - len(kept)


def test_node_killed_mid_run_its_batch_runs_elsewhere_and_nothing_is_lost(farm: Farm) -> None:
    """node-b's processes are SIGKILLed while its phone runs a batch: the batch goes back to the
    queue and runs on node-a's phones within seconds; every op is stored exactly once."""
    for s in A_PHONES + B_PHONES:
        farm.phone(s).reset_knobs()
        farm.phone(s).simulate_run_time(5.0)  # 30 runs of 5 ms a model: a batch lasts ~0.5 s, long enough to kill
    killed: list[float] = []

    def on_submit(d, batch) -> None:
        if d.device_id == f"android:{B_PHONES[0]}" and not killed:
            def later():
                time.sleep(0.15)
                killed.append(time.monotonic())
                kill_node(f"latbench-device:android:{B_PHONES[0]}")
            threading.Thread(target=later, daemon=True).start()

    ops = [O.conv((1, 8, 10, 10), c, 3) for c in range(4, 12)]
    lines: list[str] = []
    timing = {"min_samples": 5, "max_samples": 30, "warmup": 1, "warmup_s": 0.0}
    out = farm_profile(ray, ops, str(farm.tmp / "killed"), device=["android"], timing=timing,
                       retime="none", rescan_s=0.5, wait_s=30, on_line=lines.append, on_submit=on_submit)
    assert killed, "node-b's phone never got a batch"
    assert out.ok and out.requeued >= 1 and out.duplicates == 0, (out.to_dict(), lines)
    assert out.reschedule_s and max(out.reschedule_s) <= 10, out.reschedule_s
    (r,) = out.runs
    assert r.measured == len(ops) and r.failed == 0
    with LatencyTable.open(r.table, readonly=True) as t:
        assert t.keys(status="ok") == {op.key for op in ops} and len(list(t.rows())) == len(ops)
        assert t.integrity_check() == "ok"
    assert any(f"android:{B_PHONES[0]} went away" in x for x in lines), lines


def test_a_table_whose_devices_all_left_waits_says_so_and_a_rerun_finishes_it(farm: Farm) -> None:
    """Every phone of the profile unplugged mid-run: the table waits, saying so in one line, gives
    up after `wait_s` with the rest left for a rerun; plugged back in, the rerun measures the rest."""
    phones = [farm.phone(s) for s in A_PHONES + B_PHONES]  # (node-b's phone may have gone with its node)
    for p in phones:
        p.reset_knobs()
        p.disconnect_after(1)
    ops = [O.pool((1, 8, 8, 8), "max", k, 1) for k in (1, 2, 3)] + [O.activation((1, c, 6, 6), "relu") for c in (4, 8, 12)]
    lines: list[str] = []
    out = farm_profile(ray, ops, str(farm.tmp / "waiting"), device=["android"], timing={}, retime="none",
                       rescan_s=0.3, wait_s=1.0, answer_s=0.5, on_line=lines.append)
    (r,) = out.runs
    assert not out.ok and r.remaining > 0 and r.measured + r.remaining == len(ops), (out.to_dict(), lines)
    assert sum("waiting: no device of profile" in x for x in lines) == 1, lines
    assert any(f"gave up waiting after 1 s: {r.remaining} op(s) left" in x for x in lines), lines
    for p in phones:
        p.reconnect()
    again = farm_profile(ray, ops, str(farm.tmp / "waiting"), device=["android"], timing={}, retime="none",
                         rescan_s=0.3, wait_s=30, answer_s=0.5)
    (r2,) = again.runs
    assert again.ok and r2.skipped == r.measured and r2.measured == r.remaining, (again.to_dict())


def test_a_killed_node_started_again_rejoins_with_its_phone(farm: Farm) -> None:
    """node-b (killed above) started again: its phone's new actor takes over the device id from
    the dead one, is listed idle, and takes batches again."""
    found, _ = discover("node-b", ["android"], str(BENCHMARK_MODEL), "127.0.0.1", farm.servers["b"].port,
                        {"android": {"cooldown": 0.1, "batch_size": 4}})
    for s in A_PHONES + B_PHONES:
        farm.phone(s).reset_knobs()
    if not node_pids(found[0].resource):  # killed by the test above (else it is still up)
        farm.cluster.add_node(num_cpus=1, resources=node_resources(found))
        start_device_actors(found)
    assert devices_by_id(farm)[f"android:{B_PHONES[0]}"].state == "idle"
    ops = [O.activation((1, c, 5, 5), "relu6") for c in range(3, 11)]
    out = farm_profile(ray, ops, str(farm.tmp / "rejoined"), device=["android"], timing={}, retime="none",
                       answer_s=0.5)
    assert out.ok and out.devices.get(f"android:{B_PHONES[0]}", 0) > 0, out.to_dict()


def test_no_cluster_at_the_address_is_one_line_at_once() -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for args, code, words in (((f"127.0.0.1:{port}",), 4, f"no Ray cluster at 127.0.0.1:{port}"),
                              (("nowhere",), 2, "give the head's HOST:PORT")):
        t0 = time.monotonic()
        r = subprocess.run([latbench_exe(), "farm", "devices", "--address", *args], capture_output=True, text=True,
                           cwd=ROOT, env={**CLI_ENV, **LOOPBACK}, timeout=120)
        assert r.returncode == code and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert time.monotonic() - t0 < 30


def test_without_ray_the_farm_says_how_to_install_it(tmp_path) -> None:
    code = ("import sys; sys.modules['ray'] = None\n"
            "from latbench.cli import run\n"
            "sys.exit(run(['farm', 'devices', '--address', '127.0.0.1:1']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=CLI_ENV, timeout=120)
    assert r.returncode == 1 and "pip install 'latbench[farm]'" in r.stderr and "Traceback" not in r.stderr, r.stderr

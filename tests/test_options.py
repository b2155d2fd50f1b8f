"""Every option validated where it enters (issue 17, finding 8): typed agent options, flags that
do not apply to the chosen device, threads bounded by this machine's cores, timing values, an
empty op list; and the run summary's honesty (failed rows of earlier runs, a per-call cost that
could not be measured, with why). Each CLI case is one `latbench: error:` line and its exit code."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

import device_agents
from conftest import run_latbench
from device_agents import agent_options, get_agent
from device_agents.base import AgentOptions, usable_cores
from device_agents.litert import LiteRTAgent
from device_agents.ort import OrtOptions
from latbench.errors import OpError, UsageError
from latbench.runmeta import INVOCATION_OP
from latbench.store import LatencyTable

FAST = ["--max-time", "0.05", "--min-samples", "5"]
CORES = len(os.sched_getaffinity(0))  # the cores this process may run on, read here independently


def _one_line(code: int, out: str, err: str, want_code: int, message: str) -> None:
    """Exit `want_code` with exactly one error line, `latbench: error: <message>`, and no traceback."""
    assert code == want_code, (code, err)
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.startswith("latbench: error:")]
    assert lines == [f"latbench: error: {message}"], err


# ---------------------------------------------------------------------- typed agent options
def test_unknown_option_names_are_one_usage_error_naming_them_and_the_known_ones() -> None:
    with pytest.raises(UsageError) as e:
        get_agent("ort", threds=4, opt_levle="basic")
    assert str(e.value) == ("ort: unknown options opt_levle, threds "
                            "(known: threads, seed, opt_level, provider, boundary)")
    with pytest.raises(UsageError) as e:
        get_agent("tflite", opt_level="basic")
    assert str(e.value) == "tflite: unknown option opt_level (known: threads, seed, xnnpack)"


@pytest.mark.parametrize("agent, kw, message", [
    ("ort", {"threads": "four"}, "ort: option threads must be int, got 'four'"),
    ("ort", {"threads": 2.0}, "ort: option threads must be int, got 2.0"),
    ("ort", {"threads": True}, "ort: option threads must be int, got True"),
    ("ort", {"opt_level": 3}, "ort: option opt_level must be str, got 3"),
    ("ort", {"opt_level": "max"}, "ort: opt_level must be one of all, extended, basic, disable, got 'max'"),
    ("ort", {"boundary": "edge"}, "ort: boundary must be one of network, graph, got 'edge'"),
    ("tflite", {"xnnpack": "maybe"}, "tflite: option xnnpack must be bool, got 'maybe'"),
    ("tflite", {"xnnpack": 1}, "tflite: option xnnpack must be bool, got 1"),
    ("tflite", {"seed": -1}, "tflite: seed must be >= 0, got -1"),
    ("cpu", {"threads": None}, "cpu: option threads must be int, got None"),
])
def test_wrong_types_and_values_are_refused(agent: str, kw: dict, message: str) -> None:
    with pytest.raises(UsageError) as e:
        get_agent(agent, **kw)
    assert str(e.value) == message


def test_text_is_parsed_as_the_declared_type() -> None:
    """Options given as text (a command line, a JSON spec) arrive typed."""
    a = get_agent("tflite", threads="1", xnnpack="off", seed=" 7 ")
    assert (a.opts.threads, a.opts.xnnpack, a.opts.seed) == (1, False, 7) and a.xnnpack is False
    assert get_agent("ort", threads=1, opt_level="basic").opts == OrtOptions(threads=1, opt_level="basic")


def test_threads_are_bounded_by_the_cores_this_process_may_use() -> None:
    assert usable_cores() == CORES
    for bad in (0, -1, CORES + 1, 100_000):
        with pytest.raises(UsageError) as e:
            get_agent("ort", threads=bad)
        assert str(e.value) == (f"ort: threads must be between 1 and {CORES} (the cores this machine "
                                f"gives the process), got {bad}")
    assert get_agent("ort", threads=CORES).threads == CORES


def test_options_are_plain_data_that_rebuild_themselves() -> None:
    opts = OrtOptions.from_kwargs("ort", {"opt_level": "extended", "boundary": "graph"})
    assert json.loads(json.dumps(opts.to_dict())) == opts.to_dict()
    assert OrtOptions.from_kwargs("ort", opts.to_dict()) == opts
    assert AgentOptions.from_kwargs("x", {}) == AgentOptions(threads=1, seed=0)


def test_flags_map_to_the_agents_options_and_foreign_ones_are_refused() -> None:
    flags = {"threads": None, "opt_level": "basic", "boundary": None, "xnnpack": None}
    assert agent_options("ort", flags) == {"opt_level": "basic"}
    assert agent_options("ort", {**flags, "opt_level": None}, defaults={"threads": 1, "xnnpack": True}) == {"threads": 1}
    with pytest.raises(UsageError) as e:
        agent_options("tflite", {**flags, "boundary": "graph"})
    assert str(e.value) == ("--opt-level, --boundary do not apply to device 'tflite' "
                            "(its flags: --threads, --xnnpack)")
    with pytest.raises(UsageError, match="unknown device 'tpu'"):
        agent_options("tpu", flags)


# ---------------------------------------------------------------------- profile: one line, exit 2
@pytest.mark.parametrize("args, message", [
    (["-d", "ort", "--threads", "100000"],
     f"ort: threads must be between 1 and {CORES} (the cores this machine gives the process), got 100000"),
    (["-d", "tflite", "--threads", "-1"],
     f"tflite: threads must be between 1 and {CORES} (the cores this machine gives the process), got -1"),
    (["-d", "tflite", "--opt-level", "basic", "--boundary", "graph"],
     "--opt-level, --boundary do not apply to device 'tflite' (its flags: --threads, --xnnpack)"),
    (["-d", "ort", "--no-xnnpack"],
     "--xnnpack does not apply to device 'ort' (its flags: --threads, --opt-level, --boundary)"),
    (["-d", "cpu", "--serial", "X", "--batch-size", "4"],
     "--serial, --batch-size do not apply to device 'cpu' (its flags: --threads)"),
    (["-d", "ort", "--max-ops", "-1"], "--max-ops must be >= 1 (leave it out to measure every op), got -1"),
    (["-d", "ort", "--max-ops", "0"], "--max-ops must be >= 1 (leave it out to measure every op), got 0"),
    (["-d", "ort", "--max-time", "nan"],
     "timing max_time_s (--max-time) must be a finite number > 0 and <= 3600, got nan"),
    (["-d", "ort", "--max-time", "0"], "timing max_time_s (--max-time) must be a finite number > 0 and <= 3600, got 0.0"),
    (["-d", "ort", "--min-samples", "0"], "timing min_samples (--min-samples) must be a whole number >= 1, got 0"),
    (["-d", "ort", "--target-iqr", "-1"],
     "timing target_iqr (--target-iqr) must be a finite number >= 0 and <= 1, got -1.0"),
    (["-d", "ort", "--rounds", "0"], "timing rounds (--rounds) must be a whole number >= 1 and <= 100, got 0"),
    (["-d", "ort", "--interleave", "100000"],
     "timing interleave (--interleave) must be a whole number >= 1 and <= 256, got 100000"),
    (["-d", "ort", "--context-mb", "nan"], "--context-mb must be a finite number >= 0, got nan"),
    (["-d", "ort", "--context-mb", "-1"], "--context-mb must be a finite number >= 0, got -1"),
    (["-d", "ort", "--context", "warm", "--context-mb", "4"],
     "--context-mb sizes the network context, and this run times in warm context (ort times in: warm, "
     "network): leave --context-mb out"),
])
def test_profile_refuses_bad_values_and_stores_nothing(cli, tmp_path: Path, args: list, message: str) -> None:
    table = tmp_path / "t.sqlite"
    _one_line(*cli("profile", "-s", "tiny", "-r", "24", "--out", str(table), *FAST, *args), 2, message)
    assert not table.exists()


def test_threads_bound_from_the_real_command_line(tmp_path: Path) -> None:
    """The installed `latbench` (what ran to 16.9 GB with --threads 100000) exits 2 at once."""
    table = tmp_path / "t.sqlite"
    r = run_latbench("profile", "--device", "ort", "--threads", "100000", "--space", "tiny", "--out", str(table))
    _one_line(r.returncode, r.stdout, r.stderr, 2,
              f"ort: threads must be between 1 and {CORES} (the cores this machine gives the process), got 100000")
    assert not table.exists()


def test_empty_op_list_is_an_error_naming_the_file(cli, tmp_path: Path) -> None:
    table = tmp_path / "t.sqlite"
    for name, text in (("empty.txt", ""), ("comments.txt", "# an op list\n\n   \n"), ("empty.jsonl", "\n")):
        ops = tmp_path / name
        ops.write_text(text)
        _one_line(*cli("profile", "-d", "tflite", "--ops", str(ops), "--out", str(table), *FAST), 2,
                  f"nothing to profile: {ops} lists no ops")
    _one_line(*cli("profile", "-d", "tflite", "--ops", str(ops), "-r", "24", "--out", str(table)), 2,
              f"--resolution applies to --space; {ops} lists its ops with their shapes")
    assert not table.exists()


def test_validate_and_calibrate_refuse_flags_of_another_device_and_bad_timing(cli, tmp_path: Path) -> None:
    """validate/calibrate take the table's device: its flags only, timing values as profile does."""
    table = tmp_path / "t.sqlite"
    code, _, err = cli("profile", "-d", "tflite", "-s", "tiny", "-r", "24", "--max-ops", "1", "--out", str(table), *FAST)
    assert code == 0, err
    for command in ("validate", "calibrate"):
        base = [command, "--table", str(table), "--space", "tiny", "--n", "1"]
        _one_line(*cli(*base, "--opt-level", "basic"), 2,
                  "--opt-level does not apply to device 'tflite' (its flags: --threads, --xnnpack)")
        _one_line(*cli(*base, "--min-time", "inf"), 2,
                  "timing min_s (--min-time) must be a finite number >= 0 and <= 3600, got inf")
        if command == "validate":  # calibrate times with the yardstick only
            _one_line(*cli(*base, "--max-time", "inf"), 2,
                      "timing max_time_s (--max-time) must be a finite number > 0 and <= 3600, got inf")
        _one_line(*cli(*base, "--threads", "0"), 2,
                  f"tflite: threads must be between 1 and {CORES} (the cores this machine gives the process), got 0")
    with LatencyTable.open(table, create=False) as t:
        assert len(t) == 1 and t.calibrations() == {}


# ---------------------------------------------------------------------- reruns over failed rows
def test_rerun_counts_failed_rows_already_stored_and_exits_3(cli, tmp_path: Path) -> None:
    """A rerun that measures nothing new still says which of its ops are stored failed, points to
    --retry-failed, and exits 3 (partial result) until none is."""
    bad, good = "softmax-input:1x16x12x12-axis:7", "activation-input:1x8x16x16-type:relu"
    ops = tmp_path / "ops.txt"
    ops.write_text(f"{bad}\n{good}\n")
    table = tmp_path / "t.sqlite"
    base = ["profile", "-d", "tflite", "--ops", str(ops), "--out", str(table), *FAST]
    code, out, err = cli(*base)
    assert code == 3 and "1 measured, 0 already stored, 1 failed, 0 remaining" in out, (out, err)
    code, out, err = cli(*base)
    assert code == 3, err
    assert ("0 measured, 2 already stored, 0 failed, 1 failed earlier (not retried; --retry-failed "
            "measures them again), 0 remaining") in out
    code, out, _ = cli(*base, "--json")
    s = json.loads(out)
    assert code == 3 and (s["measured"], s["skipped"], s["failed"], s["failed_earlier"]) == (0, 2, 0, 1)
    code, out, _ = cli(*base, "--retry-failed", "--json")  # measured again: it fails again, now
    s = json.loads(out)
    assert code == 3 and (s["measured"], s["skipped"], s["failed"], s["failed_earlier"]) == (0, 1, 1, 0)
    ops.write_text(f"{good}\n")  # a run whose ops are all stored ok is complete, whatever else the table holds
    code, out, _ = cli(*base, "--json")
    assert code == 0 and json.loads(out)["failed_earlier"] == 0


# ---------------------------------------------------------------------- the per-call reference
class NoInvocationAgent(LiteRTAgent):
    """LiteRT, except that it cannot build the per-call reference model (a runtime without it)."""

    def prepare_op(self, op):
        if op.key == INVOCATION_OP.key:
            raise OpError("this runtime cannot build a 1-element relu")
        return super().prepare_op(op)


def test_a_failed_per_call_reference_prints_its_reason(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every sample of the per-call cost fails: the summary says why in its one line, --json and the
    table's meta keep the same reason; the ops themselves are measured (exit 0)."""
    monkeypatch.setitem(device_agents._AGENTS, "noinv", (__name__, "NoInvocationAgent"))
    ops = tmp_path / "ops.txt"
    ops.write_text("activation-input:1x8x16x16-type:relu\nactivation-input:1x8x16x16-type:relu6\n")
    table = tmp_path / "t.sqlite"
    code, out, err = cli("profile", "-d", "noinv", "--ops", str(ops), "--out", str(table), *FAST)
    assert code == 0, err
    with LatencyTable.open(table, create=False) as t:
        inv = t.invocation
        assert len(t) == 2
    line, = out.splitlines()
    # one sample before the run, one from its batch, one from the batch re-timing suspect rows if any
    batches = 2 + ("suspect rows timed again" in line)
    assert inv.status == "failed" and inv.estimate_ms is None and len(inv.samples) == batches
    assert re.fullmatch(r"OpError: this runtime cannot build a 1-element relu \(at test_options\.py:\d+\)", inv.error)
    assert line.startswith(f"{table}: 2 measured, 0 already stored, 0 failed, 0 remaining")
    assert line.endswith(f"; per-call cost not measured: {inv.error}")
    code, out, _ = cli("profile", "-d", "noinv", "--ops", str(ops), "--out", str(table), *FAST, "--json")
    s = json.loads(out)
    assert code == 0 and s["invocation_ms"] is None and s["invocation_error"] == inv.error


def test_android_per_call_reference_failure_is_reported_the_same(cli, server, pixel, tmp_path: Path) -> None:
    """On a phone (the stand-in adb server) the reference model crashes benchmark_model: the same
    meta entry and the same summary line, with benchmark_model's own reason."""
    from adb_standin import BENCHMARK_MODEL
    from conftest import android_on_standin, standin_serial

    probe = android_on_standin(server)
    try:
        pixel.crash_on(probe.model_file(INVOCATION_OP), "SIGSEGV")
    finally:
        probe.close()
    ops = tmp_path / "ops.txt"
    ops.write_text("activation-input:1x8x16x16-type:relu\nactivation-input:1x8x16x16-type:relu6\n")
    table = tmp_path / "t.sqlite"
    code, out, err = cli("profile", "-d", "android", "--serial", standin_serial("pixel7"), "--runner",
                         str(BENCHMARK_MODEL), "--cooldown", "0.1", "--ops", str(ops), "--out", str(table),
                         "--max-time", "0.05")
    assert code == 0, err
    with LatencyTable.open(table, create=False) as t:
        inv = t.invocation
        assert len(t) == 2
    assert inv.status == "failed" and inv.estimate_ms is None
    assert inv.error.startswith("benchmark_model exited with 139 (SIGSEGV)"), inv.error
    line, = out.splitlines()
    assert line.startswith(f"{table}: 2 measured") and line.endswith(f"; per-call cost not measured: {inv.error}")

"""Library messages in the CLI's words: the one table from a library parameter to the flag that sets it.

Library errors name the parameter a caller passed, quoted in backticks: `` `statistic` ``, or with
its value, `` `statistic=median` ``, `` `max_fallback=None` ``. `cli_words` turns each quoted
parameter it knows into the flag (`--statistic`, `--statistic median`, `--allow-fallback`); one
it does not know is left as written. The app's error handler passes every LatbenchError's
message through it, and commands pass the notes they print.
"""
from __future__ import annotations

import re

# parameter (profile, search, predict, validate, calibrate) -> the flag that sets it
FLAGS: dict[str, str] = {
    # profile
    "out": "--out", "device": "--device",
    "resolutions": "--resolution", "granularity": "--granularity", "max_ops": "--max-ops",
    "retry_failed": "--retry-failed", "target_iqr": "--target-iqr", "max_time_s": "--max-time",
    "min_samples": "--min-samples", "rounds": "--rounds", "interleave": "--interleave", "context": "--context",
    "context_mb": "--context-mb", "estimator": "--estimator", "threads": "--threads",
    # predict, search
    "table": "--table", "tables": "--table", "statistic": "--statistic", "max_fallback": "--allow-fallback",
    "allow_fallback": "--allow-fallback", "calibration": "--no-calibration", "use_calibration": "--no-calibration",
    "budgets_ms": "--budget-ms", "space": "--space", "passes": "--passes",
    "runner": "--runner", "serial": "--serial", "cpus": "--cpus", "runtime": "--runtime", "accuracy": "--accuracy", "strategy": "--strategy", "seed": "--seed", "input_shape": "--input-shape",
    # validate, calibrate
    "n": "--n", "calibrate_n": "--calibrate-n", "noise": "--noise", "builds": "--builds", "retime": "--retime",
    "op_table": "--op-table", "op_baseline": "--no-op-baseline", "estimator_row": "--no-estimator-row",
}
# `parameter=value` forms said by a flag of their own (a switch), not by "--flag value"
SWITCHES: dict[str, str] = {
    "max_fallback=None": "--allow-fallback", "allow_fallback=True": "--allow-fallback",
    "retry_failed=True": "--retry-failed", "estimator_row=False": "--no-estimator-row",
    "calibration=False": "--no-calibration", "use_calibration=False": "--no-calibration",
    "op_baseline=False": "--no-op-baseline",
}
_QUOTED = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)(?:=([^`\s]*))?`")


def _flag(m: re.Match) -> str:
    name, value = m.group(1), m.group(2)
    if value is not None and f"{name}={value}" in SWITCHES:
        return SWITCHES[f"{name}={value}"]
    if name not in FLAGS:
        return m.group(0)
    return FLAGS[name] if value is None else f"{FLAGS[name]} {value}"


def cli_words(message: str) -> str:
    """`message` with each quoted library parameter (`name` or `name=value`) said as its flag."""
    return _QUOTED.sub(_flag, message)


__all__ = ["FLAGS", "SWITCHES", "cli_words"]

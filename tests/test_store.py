"""The SQLite latency table: rows keep every statistic, survive SIGKILL, refuse foreign profiles,
round-trip through CSV / PaddleSlim text / OFA YAML, reject bad files in one line; and the
`latbench table` commands on top of it."""
from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, run_latbench
from latbench import ops as O
from latbench import store
from latbench.device import DeviceProfile
from latbench.errors import FormatError, OpError, UsageError
from latbench.formats.ofa import parse_ofa_key
from latbench.measure import Measurement, Stats
from latbench.spaces import get_space
from latbench.store import KeyNotFoundError, LatencyTable, ProfileMismatchError
from latbench.formats import (
    export_csv, export_ofa_yaml, export_paddleslim, import_csv, import_ofa_yaml, import_paddleslim,
    import_profile,
)

PROFILE = DeviceProfile(agent="cpu", runtime="torch", runtime_version="2.13.0", threads=1,
                        device="Test CPU", abi="x86_64", cores=4)
OTHER = DeviceProfile(agent="cpu", runtime="torch", runtime_version="2.13.0", threads=4,
                      device="Test CPU", abi="x86_64", cores=4)

# Op-granularity ops PaddleSlim has lines for.
OP_LEVEL = [
    O.conv((1, 16, 32, 32), 32, 3),
    O.conv((1, 32, 16, 16), 32, 3, groups=32, act="relu"),
    O.activation((1, 32, 16, 16), "hswish"),
    O.batch_norm((1, 32, 16, 16)),
    O.eltwise((1, 32, 16, 16), "add"),
    O.eltwise((1, 32, 16, 16), "mul", broadcast=True),
    O.pool((1, 32, 16, 16), "avg", global_pool=True),
    O.pool((1, 32, 16, 16), "max", 3, 2, 1),
    O.softmax((1, 1000, 1, 1)),
    O.linear(1, 1280, 1000),
]

# A hand-written Once-for-All table in OFA's own layout, keys of ofa-mbv3-w10 at resolution 160.
OFA_160 = """\
Conv-input:160x160x3-output:80x80x16:
  count: 1000
  mean: 1.0512354
  std: 0.0412
expanded_conv-input:80x80x16-output:80x80x16-expand:16-kernel:3-stride:1-idskip:1-se:0-hs:0:
  count: 1000
  mean: 0.71234
  std: 0.0203
expanded_conv-input:80x80x16-output:40x40x24-expand:64-kernel:5-stride:2-idskip:0-se:0-hs:0:
  count: 1000
  mean: 1.20871
  std: 0.05
expanded_conv-input:40x40x24-output:20x20x40-expand:96-kernel:7-stride:2-idskip:0-se:1-hs:0:
  count: 500
  mean: 0.9988
  std: 0.11
expanded_conv-input:20x20x40-output:20x20x40-expand:120-kernel:3-stride:1-idskip:1-se:1-hs:0:
  count: 500
  mean: 0.61
  std: 0.012
expanded_conv-input:20x20x40-output:10x10x80-expand:240-kernel:5-stride:2-idskip:0-se:0-hs:1:
  count: 500
  mean: 0.5432
  std: 0.0099
expanded_conv-input:10x10x112-output:10x10x112-expand:336-kernel:3-stride:1-idskip:1-se:1-hs:1:
  count: 500
  mean: 0.4999
  std: 0.0301
Conv_1-input:5x5x160-output:5x5x960:
  count: 1000
  mean: 0.3
  std: 0.001
AvgPool2D-input:5x5x960-output:1x1x960:
  count: 1000
  mean: 0.02
  std: 0.0005
Conv_2-input:1x1x960-output:1x1x1280:
  count: 1000
  mean: 0.401
  std: 0.004
Logits-input:1x1x1280-output:1000:
  count: 1000
  mean: 0.3501
  std: 0.0042
"""


def measurement(op: O.OpSpec, base: float, profile: DeviceProfile = PROFILE, **kw) -> Measurement:
    """An ok measurement of `op` with real statistics around `base` ms."""
    samples = [base * (1 + 0.01 * ((i * 7) % 11 - 5)) for i in range(23)]
    return Measurement(key=op.key, profile_id=profile.id, op=op.to_dict(),
                       stats=Stats.from_samples(samples, block=10), settings={"threads": 1, "warmup": 5},
                       wall_s=0.5, timed_s=0.25, taken_at=1_700_000_000.0 + base,
                       extra={"temp_c": [41.5, 42.0]}, **kw)


def peek(path: Path, what: str, *args):
    """Call one reading method on a table file and close it again."""
    with LatencyTable.open(path, create=False) as t:
        v = getattr(t, what)
        return v(*args) if callable(v) else v


def failed(op: O.OpSpec, error: str = "kernel not supported") -> Measurement:
    return Measurement(key=op.key, profile_id=PROFILE.id, op=op.to_dict(), stats=None,
                       status="failed", error=error, wall_s=0.1)


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    """A table with ten ok op-level rows and one failed row."""
    path = tmp_path / "t.db"
    with LatencyTable.open(path, PROFILE) as t:
        for i, op in enumerate(OP_LEVEL):
            t.add(measurement(op, 0.1 + i / 7))
        t.add(failed(O.softmax((1, 10, 1, 1))))
    return path


# ---------------------------------------------------------------------- basic API
def test_add_get_keeps_every_statistic(tmp_path: Path):
    """A stored measurement comes back equal, with its samples, settings and extra."""
    op = OP_LEVEL[0]
    m = measurement(op, 1.5)
    with LatencyTable.open(tmp_path / "t.db", PROFILE) as t:
        t.add(m)
        assert t.get(op.key) == m
        assert t.estimate(op.key) == m.stats.median
        row = t.row(op.key)
    assert row["estimator"] == "median" and row["source"] == "measured"
    assert row["samples"] == list(m.stats.samples) and row["block"] == 10 and row["n"] == 23
    with LatencyTable.open(tmp_path / "t.db") as t:  # reopened without a profile: stored one is used
        assert t.profile == PROFILE
        assert t.get(op.key) == m


def test_keys_status_len_contains_ops_and_retry(tmp_path: Path):
    """Failed rows are kept apart from ok ones, and a retried key replaces its failed row."""
    bad = O.softmax((1, 10, 1, 1))
    with LatencyTable.open(tmp_path / "t.db", PROFILE) as t:
        t.add(measurement(OP_LEVEL[0], 1.0))
        t.add(failed(bad))
        assert t.keys() == {OP_LEVEL[0].key}
        assert t.keys(status=None) == {OP_LEVEL[0].key, bad.key}
        assert t.keys("failed") == {bad.key}
        assert len(t) == 2 and bad.key in t and "nope" not in t
        assert t.get(bad.key).error == "kernel not supported" and t.get(bad.key).stats is None
        with pytest.raises(KeyNotFoundError, match="failed"):
            t.estimate(bad.key)
        with pytest.raises(KeyNotFoundError, match="is not in"):
            t.estimate("nope")
        assert t.estimates() == {OP_LEVEL[0].key: t.estimate(OP_LEVEL[0].key)}
        t.add(measurement(bad, 0.2))
        assert t.keys() == {OP_LEVEL[0].key, bad.key} and len(t) == 2
        assert t.ops() == sorted([OP_LEVEL[0], bad], key=lambda o: o.key)


def test_to_frame_and_read_table_one_call(filled: Path):
    """A table reads into pandas in one call, with every column and NULLs for failed stats."""
    df = store.read_table(filled)
    assert list(df.columns) == list(store.COLUMNS)
    assert len(df) == 11 and set(df["status"]) == {"ok", "failed"}
    bad = df[df["status"] == "failed"].iloc[0]
    assert math.isnan(bad["estimate"]) and math.isnan(bad["median"])
    assert (df["profile_id"] == PROFILE.id).all()


def test_meta_get_set_and_reserved(tmp_path: Path):
    """meta holds JSON values (e.g. a calibration); the format's own entries cannot be overwritten."""
    with LatencyTable.open(tmp_path / "t.db", PROFILE) as t:
        assert t.meta_get("calibration") is None
        t.meta_set("calibration", {"scale": 1.07, "offset_ms": 0.2})
        with pytest.raises(UsageError):
            t.meta_set("profile", {})
    with LatencyTable.open(tmp_path / "t.db") as t:
        assert t.meta_get("calibration") == {"scale": 1.07, "offset_ms": 0.2}


def test_measurement_must_match_its_op_and_profile(tmp_path: Path):
    """A key that is not its op's key, or a measurement of another profile, is refused."""
    with LatencyTable.open(tmp_path / "t.db", PROFILE) as t:
        m = measurement(OP_LEVEL[0], 1.0)
        with pytest.raises(OpError, match="does not match its op"):
            t.add(Measurement(**{**m.__dict__, "key": OP_LEVEL[1].key}))
        with pytest.raises(ProfileMismatchError, match=OTHER.id):
            t.add(measurement(OP_LEVEL[0], 1.0, profile=OTHER))
        assert len(t) == 0


def test_add_needs_a_profile(tmp_path: Path):
    """A table opened without a profile stores nothing until it has one."""
    with LatencyTable.open(tmp_path / "t.db") as t:
        with pytest.raises(UsageError, match="no device profile"):
            t.add(measurement(OP_LEVEL[0], 1.0))
        t.set_profile(PROFILE)
        t.add(measurement(OP_LEVEL[0], 1.0))
        assert len(t) == 1


def test_wal_mode(tmp_path: Path):
    """The store of record runs in WAL mode."""
    with LatencyTable.open(tmp_path / "t.db", PROFILE) as t:
        assert t.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert t.conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


# ---------------------------------------------------------------------- crash safety
CHILD = """
import sys
from latbench import ops as O
from latbench.device import DeviceProfile
from latbench.measure import Measurement, Stats
from latbench.store import LatencyTable
prof = DeviceProfile(**{k: v for k, v in %r.items() if k != "id"})
with LatencyTable.open(sys.argv[1], prof) as t:
    for i in range(1, 100000):
        op = O.activation((1, i, 4, 4), "relu")
        st = Stats.from_samples([0.01 * i, 0.011 * i, 0.012 * i])
        t.add(Measurement(op.key, prof.id, op.to_dict(), st))
        print(op.key, flush=True)
"""


def test_sigkill_loses_nothing_committed(tmp_path: Path):
    """A writer SIGKILLed mid-run leaves every measurement it had committed, and a sound file."""
    path = tmp_path / "crash.db"
    code = CHILD % (PROFILE.to_dict(),)
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    committed = []
    deadline = time.time() + 60
    try:
        while len(committed) < 40 and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            committed.append(line.strip())
        assert len(committed) >= 40, proc.stderr.read()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        rest = proc.stdout.read()  # lines printed (after their commit) but not read before the kill
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    committed += [ln.strip() for ln in rest.splitlines(keepends=True) if ln.endswith("\n")]
    with LatencyTable.open(path) as t:
        assert t.integrity_check() == "ok"
        keys = t.keys()
        assert set(committed) <= keys
        assert len(keys) - len(committed) <= 1  # printed after commit: at most one not yet printed
        for k in committed:
            m = t.get(k)
            assert m.ok and m.stats.n == 3
        t.add(measurement(OP_LEVEL[0], 1.0, profile=t.profile))  # resumes writing
        assert OP_LEVEL[0].key in t.keys()


# ---------------------------------------------------------------------- profiles
def test_other_profile_is_refused_naming_both(tmp_path: Path):
    """Opening or setting another profile fails on one line naming both and the differing field."""
    path = tmp_path / "t.db"
    LatencyTable.open(path, PROFILE).close()
    for attempt in (lambda: LatencyTable.open(path, OTHER),
                    lambda: peek(path, "set_profile", OTHER)):
        with pytest.raises(ProfileMismatchError) as e:
            attempt()
        msg = str(e.value)
        assert PROFILE.describe() in msg and OTHER.describe() in msg
        assert "threads: 1 != 4" in msg and "\n" not in msg
    with LatencyTable.open(path, PROFILE) as t:  # the same profile is fine
        assert t.profile.id == PROFILE.id


# ---------------------------------------------------------------------- CSV
def test_csv_roundtrip_is_lossless(tmp_path: Path, filled: Path):
    """table -> CSV -> table keeps every column and every Measurement exactly."""
    csv_path = tmp_path / "t.csv"
    with LatencyTable.open(filled) as t:
        t.meta_set("calibration", {"scale": 1.1})
        assert export_csv(t, csv_path).written == 11
        before = list(t.measurements())
        frame = t.to_frame()
    assert (tmp_path / "t.meta.json").exists()
    with LatencyTable.open(tmp_path / "back.db") as t2:
        import_csv(csv_path, t2)
        assert t2.profile == PROFILE
        assert list(t2.measurements()) == before
        pd.testing.assert_frame_equal(t2.to_frame(), frame)
        assert t2.meta_get("calibration") == {"scale": 1.1}


def test_csv_bad_number_names_file_and_line(tmp_path: Path, filled: Path):
    """A CSV cell that is not a number fails as file:line and column."""
    csv_path = tmp_path / "t.csv"
    with LatencyTable.open(filled) as t:
        export_csv(t, csv_path)
    lines = csv_path.read_text().splitlines()
    cells = lines[3].split(",")
    cells[store.COLUMNS.index("median")] = "fast"
    lines[3] = ",".join(cells)
    csv_path.write_text("\n".join(lines) + "\n")
    with LatencyTable.open(tmp_path / "back.db") as t2:
        with pytest.raises(FormatError, match=rf"{csv_path}:4: column median: 'fast' is not a number"):
            import_csv(csv_path, t2)
        assert len(t2) == 0


@pytest.mark.parametrize("value,why", [
    ("nan", "nan is not a finite number"), ("inf", "inf is not a finite number"),
    ("-0.25", "needs a finite estimate >= 0 (ms), got -0.25")])
def test_csv_bad_estimate_names_file_line_and_column(tmp_path: Path, filled: Path, value, why):
    """estimate=nan, inf or a negative number is one line naming file:line and the column."""
    csv_path = tmp_path / "t.csv"
    with LatencyTable.open(filled) as t:
        export_csv(t, csv_path)
    lines = csv_path.read_text().splitlines()
    cells = lines[2].split(",")
    cells[store.COLUMNS.index("estimate")] = value
    lines[2] = ",".join(cells)
    csv_path.write_text("\n".join(lines) + "\n")
    with LatencyTable.open(tmp_path / "back.db") as t2:
        with pytest.raises(FormatError) as e:
            import_csv(csv_path, t2)
        assert str(e.value).startswith(f"{csv_path}:3: column estimate: ") and why in str(e.value)
        assert "\n" not in str(e.value) and len(t2) == 0


def test_csv_of_other_profile_is_refused(tmp_path: Path, filled: Path):
    """Importing a CSV into a table of another profile is a mismatch, not a silent mix."""
    csv_path = tmp_path / "t.csv"
    with LatencyTable.open(filled) as t:
        export_csv(t, csv_path)
    with LatencyTable.open(tmp_path / "o.db", OTHER) as t2:
        with pytest.raises(ProfileMismatchError):
            import_csv(csv_path, t2)


# ---------------------------------------------------------------------- PaddleSlim text
def test_paddleslim_roundtrip_same_keys_and_estimates(tmp_path: Path, filled: Path):
    """table -> PaddleSlim text -> table gives the same keys and estimates, with no invented
    spread; with its sidecar under the table's own profile and meta, without it as a foreign table."""
    txt = tmp_path / "t.txt"
    with LatencyTable.open(filled) as t:
        t.meta_set("calibration", {"tiny/op": {"scale": 1.1, "offset_ms": 0.0}})
        res = export_paddleslim(t, txt)
        want, meta = t.estimates(), t.meta()
    assert res.written == 10 and res.not_ok == 1 and not res.skipped
    assert res.files == [str(txt), f"{txt}.meta.json"]
    lines = txt.read_text().splitlines()
    assert len(lines) == 10 and all(len(line.split()) >= 6 for line in lines)  # no comment, no header
    with LatencyTable.open(tmp_path / "back.db") as t2:
        import_paddleslim(txt, t2)
        assert t2.profile == PROFILE and t2.meta() | {"created_at": 0} == meta | {"created_at": 0}
        assert t2.estimates() == want
        row = t2.row(OP_LEVEL[0].key)
        assert row["estimator"] == "value" and row["source"] == "paddleslim:t.txt"
        assert row["extra"] == {"temp_c": [41.5, 42.0]}  # what the line cannot hold, from the sidecar
        assert all(row[c] is None for c in ("median", "p25", "p75", "std", "mean", "n"))
        assert t2.get(OP_LEVEL[0].key).stats is None
    os.remove(f"{txt}.meta.json")
    prof = import_profile("Test CPU", "torch", 1, source="t.txt")
    with LatencyTable.open(tmp_path / "foreign.db", prof) as t3:
        import_paddleslim(txt, t3)
        assert t3.estimates() == want and t3.profile.agent == "import" and "calibration" not in t3.meta()


def test_paddleslim_export_of_blocks_errors_or_skips(tmp_path: Path, filled: Path):
    """A block key PaddleSlim cannot express is an error naming it, or skipped and counted."""
    block = O.mbconv((1, 16, 32, 32), 24, 48, 3, 2, "relu")
    with LatencyTable.open(filled) as t:
        t.add(measurement(block, 2.0))
        with pytest.raises(FormatError) as e:
            export_paddleslim(t, tmp_path / "t.txt")
        assert block.key in str(e.value) and "--skip-unsupported" in str(e.value)
        res = export_paddleslim(t, tmp_path / "t.txt", skip_unsupported=True)
    assert res.skipped == [block.key] and res.written == 10


def test_paddleslim_bad_field_names_file_and_line(tmp_path: Path):
    """A bad PaddleSlim field fails on one line with file:line, and nothing is imported."""
    txt = tmp_path / "bad.txt"
    txt.write_text("activation relu 1 8 4 4 0.5\nconv 0 0 1 16 32 x 32 1 3 1 1 1 1.2\n")
    with LatencyTable.open(tmp_path / "t.db", import_profile("dev")) as t:
        with pytest.raises(FormatError) as e:
            import_paddleslim(txt, t)
        assert f"{txt}:2" in str(e.value) and "\n" not in str(e.value)
        assert len(t) == 0


# ---------------------------------------------------------------------- OFA YAML
def test_ofa_yaml_is_real_ofa_mbv3_w10_keys():
    """The hand-written table uses keys ofa-mbv3-w10 produces at resolution 160."""
    keys = {op.key for op in get_space("ofa-mbv3-w10").enumerate_blocks([160])}
    assert set(yaml.safe_load(OFA_160)) <= keys


def test_ofa_yaml_import_reproduces_ofa_lookups_and_roundtrips(tmp_path: Path):
    """OFA YAML -> table: estimate == OFA's mean for every key; table -> YAML: same keys and numbers."""
    src = tmp_path / "160_lookup_table.yaml"
    src.write_text(OFA_160)
    lut = yaml.safe_load(OFA_160)  # what OFA's LatencyTable holds; it predicts with lut[key]["mean"]
    prof = import_profile("Pixel 1", "tflite", 1, source="ofa")
    with LatencyTable.open(tmp_path / "t.db", prof) as t:
        res = import_ofa_yaml([src], t)
        assert res.written == len(lut)
        assert t.keys() == set(lut)
        for key, entry in lut.items():
            assert t.estimate(key) == entry["mean"]
            row = t.row(key)
            assert (row["mean"], row["std"], row["n"]) == (entry["mean"], entry["std"], entry["count"])
            assert row["estimator"] == "mean" and row["source"] == "ofa-yaml:160_lookup_table.yaml"
            assert row["median"] is None and row["p25"] is None and row["p75"] is None
            assert row["extra"]["resolutions"] == [160]
        assert sorted(op.key for op in t.ops()) == sorted(lut)
        assert all(parse_ofa_key(op.key) == op for op in t.ops())
        out_dir = tmp_path / "out"
        res = export_ofa_yaml(t, out_dir)
        assert [Path(f).name for f in res.files] == ["160_lookup_table.yaml"]
        single = tmp_path / "all.yaml"
        export_ofa_yaml(t, single)
    assert yaml.safe_load((out_dir / "160_lookup_table.yaml").read_text()) == lut
    assert yaml.safe_load(single.read_text()) == lut


def test_ofa_yaml_several_resolutions(tmp_path: Path):
    """A key in two resolution files gains both; differing numbers come back per file on export."""
    shared = "Logits-input:1x1x1280-output:1000"
    a = tmp_path / "160_lookup_table.yaml"
    a.write_text(OFA_160)
    b = tmp_path / "176_lookup_table.yaml"
    b.write_text(f"{shared}:\n  count: 10\n  mean: 0.36\n  std: 0.005\n"
                 "Conv-input:176x176x3-output:88x88x16:\n  count: 10\n  mean: 1.2\n  std: 0.05\n")
    with LatencyTable.open(tmp_path / "t.db", import_profile("Pixel 1")) as t:
        import_ofa_yaml([a, b], t)
        assert t.row(shared)["extra"]["resolutions"] == [160, 176]
        assert t.estimate(shared) == 0.3501  # first file's numbers
        out = tmp_path / "out"
        export_ofa_yaml(t, out)
    back_a = yaml.safe_load((out / "160_lookup_table.yaml").read_text())
    back_b = yaml.safe_load((out / "176_lookup_table.yaml").read_text())
    assert back_a == yaml.safe_load(OFA_160)
    assert back_b == yaml.safe_load(b.read_text())


def test_ofa_yaml_bad_entry_and_bad_key_name_file_and_key(tmp_path: Path):
    """A bad YAML entry or a key OFA's MBv3 cannot have fails naming file and key; nothing stored."""
    p = tmp_path / "160_lookup_table.yaml"
    p.write_text(OFA_160 + "Conv_1-input:7x7x160-output:7x7x960:\n  count: 3\n  mean: slow\n")
    with LatencyTable.open(tmp_path / "t.db", import_profile("Pixel 1")) as t:
        with pytest.raises(FormatError, match=rf"{p}:\d+: entry 'Conv_1-input:7x7x160-output:7x7x960'"):
            import_ofa_yaml(p, t)
        p.write_text(OFA_160 + "Logits-input:7x7x1280-output:1000:\n  mean: 0.3\n")
        with pytest.raises(FormatError) as e:
            import_ofa_yaml(p, t)
        assert str(p) in str(e.value) and "Logits-input:7x7x1280-output:1000" in str(e.value)
        assert len(t) == 0


def test_ofa_export_of_op_keys_errors_or_skips(tmp_path: Path, filled: Path):
    """Op-level keys have no OFA form: an error naming the key, or skipped with skip_unsupported."""
    with LatencyTable.open(filled) as t:
        with pytest.raises(FormatError, match="not a Once-for-All block key"):
            export_ofa_yaml(t, tmp_path / "x.yaml")
        res = export_ofa_yaml(t, tmp_path / "x.yaml", skip_unsupported=True)
    assert res.written == 0 and len(res.skipped) == 10


def test_import_needs_a_profile(tmp_path: Path):
    """Foreign numbers are not stored without saying where they were measured."""
    p = tmp_path / "160_lookup_table.yaml"
    p.write_text(OFA_160)
    with LatencyTable.open(tmp_path / "t.db") as t:
        with pytest.raises(UsageError, match="needs a device profile"):
            import_ofa_yaml(p, t)
    with pytest.raises(UsageError, match=r"the device it was measured on \(`device`\)"):
        import_profile("")


# ---------------------------------------------------------------------- bad table files
def test_not_sqlite_is_not_a_latbench_table(tmp_path: Path):
    """A text file is refused in one line, and left untouched."""
    p = tmp_path / "t.db"
    p.write_text("key,median\n")
    with pytest.raises(FormatError, match=rf"^{p} is not a latbench table \(not an SQLite database\)$"):
        LatencyTable.open(p)
    assert p.read_text() == "key,median\n"


def test_foreign_sqlite_is_not_a_latbench_table(tmp_path: Path):
    """An SQLite file of another program is refused, naming what it holds."""
    p = tmp_path / "other.sqlite"
    con = sqlite3.connect(p)
    con.execute("CREATE TABLE users (name TEXT)")
    con.commit()
    con.close()
    with pytest.raises(FormatError, match=rf"^{p} is not a latbench table \(.*users"):
        LatencyTable.open(p)
    con = sqlite3.connect(p)
    con.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT)")
    con.execute("INSERT INTO meta VALUES ('format', '\"someone-else\"')")
    con.commit()
    con.close()
    with pytest.raises(FormatError, match="is not a latbench table"):
        LatencyTable.open(p)


def test_missing_table_is_not_created_when_reading(tmp_path: Path):
    """read_table and create=False do not make an empty file out of a typo."""
    with pytest.raises(FormatError, match="no such latbench table"):
        store.read_table(tmp_path / "typo.db")
    assert not (tmp_path / "typo.db").exists()


# ---------------------------------------------------------------------- CLI
def _ofa_table(tmp_path: Path, cli) -> Path:
    src = tmp_path / "160_lookup_table.yaml"
    src.write_text(OFA_160)
    db = tmp_path / "ofa.db"
    code, out, err = cli("table", "import", str(src), "--format", "ofa-yaml", "--out", str(db),
                         "--device", "Pixel 1", "--runtime", "tflite", "--threads", "1")
    assert code == 0, err
    return db


def test_cli_show_json_and_rich(cli, filled: Path):
    """show prints profile, counts and rows; --json is one document; --kind filters."""
    code, out, err = cli("table", "show", str(filled), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["profile"]["id"] == PROFILE.id and doc["counts"] == {"ok": 10, "failed": 1, "total": 11}
    assert len(doc["rows"]) == 11
    conv = next(r for r in doc["rows"] if r["key"] == OP_LEVEL[0].key)
    assert conv["median"] == conv["estimate"] and conv["iqr"] == pytest.approx(conv["p75"] - conv["p25"])
    assert conv["n"] == 23 and conv["unstable"] is False
    code, out, _ = cli("table", "show", str(filled), "--json", "--kind", "pool")
    assert [r["kind"] for r in json.loads(out)["rows"]] == ["pool", "pool"]
    code, out, err = cli("table", "show", str(filled), "--limit", "3")
    assert code == 0 and PROFILE.describe() in out and "10 ok, 1 failed" in out
    assert "8 more rows" in err


def test_cli_export_import_roundtrips(cli, tmp_path: Path, filled: Path):
    """export csv/paddleslim and import them back give the same estimates; ofa-yaml to a directory."""
    csv_path, txt = tmp_path / "x.csv", tmp_path / "x.txt"
    assert cli("table", "export", str(filled), "--format", "csv", "-o", str(csv_path))[0] == 0
    assert cli("table", "export", str(filled), "-f", "paddleslim", "-o", str(txt))[0] == 0
    code, _, err = cli("table", "import", str(csv_path), "--out", str(tmp_path / "c.db"))
    assert code == 0, err
    code, _, err = cli("table", "import", str(txt), "--out", str(tmp_path / "p.db"))  # the sidecar names it
    assert code == 0, err
    want = peek(filled, "estimates")
    assert peek(tmp_path / "c.db", "estimates") == want
    assert peek(tmp_path / "p.db", "estimates") == want
    db = _ofa_table(tmp_path, cli)
    code, _, err = cli("table", "export", str(db), "--format", "ofa-yaml", "-o", str(tmp_path / "lut"))
    assert code == 0, err
    assert yaml.safe_load((tmp_path / "lut" / "160_lookup_table.yaml").read_text()) == yaml.safe_load(OFA_160)
    assert peek(db, "profile").runtime == "tflite"


@pytest.mark.parametrize("case", ["show-not-sqlite", "import-bad-yaml", "import-no-device",
                                  "export-bad-format", "export-blocks-to-paddleslim"])
def test_cli_bad_inputs_fail_in_one_line(cli, tmp_path: Path, filled: Path, case):
    """Each bad input exits non-zero with one stderr line and no traceback, leaving no half table."""
    out_db = tmp_path / "new.db"
    if case == "show-not-sqlite":
        p = tmp_path / "x.db"
        p.write_text("hello")
        args, want_code, needle = ("table", "show", str(p)), 1, "is not a latbench table"
    elif case == "import-bad-yaml":
        p = tmp_path / "160_lookup_table.yaml"
        p.write_text(OFA_160 + "Conv_1-input:7x7x160-output:7x7x960:\n  count: 1\n")
        args = ("table", "import", str(p), "--out", str(out_db), "--device", "Pixel 1")
        want_code, needle = 1, "has no mean"
    elif case == "import-no-device":
        p = tmp_path / "160_lookup_table.yaml"
        p.write_text(OFA_160)
        args, want_code, needle = ("table", "import", str(p), "--out", str(out_db)), 2, "--device"
    elif case == "export-bad-format":
        args = ("table", "export", str(filled), "--format", "xml", "-o", str(tmp_path / "x"))
        want_code, needle = 2, "xml"
    else:
        db = _ofa_table(tmp_path, cli)
        args = ("table", "export", str(db), "--format", "paddleslim", "-o", str(tmp_path / "x.txt"))
        want_code, needle = 1, "cannot export AvgPool2D-input:5x5x960-output:1x1x960"
    code, out, err = cli(*args)
    assert code == want_code, err
    assert needle in err and "Traceback" not in err
    if want_code == 1:
        assert err.startswith("latbench: error: ") and err.count("\n") == 1
    assert not out_db.exists()


def test_cli_subprocess_show(filled: Path):
    """The installed `latbench table show` works end to end and exits 1 on a missing table."""
    r = run_latbench("table", "show", str(filled), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["counts"]["ok"] == 10
    r = run_latbench("table", "show", str(filled.with_name("missing.db")))
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "no such latbench table" in r.stderr

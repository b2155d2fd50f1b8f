"""Reading a table never writes: from a read-only file system (a read-only bind mount in a private
mount namespace, which binds root too), with a killed writer's log, and without leaving -wal/-shm
files behind; a table that cannot be written is one line naming the file."""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CLI_ENV, ROOT
from latbench import ops as O
from latbench.errors import FormatError, TableError
from latbench.store import LatencyTable, read_table
from synthetic_tables import tiny_block_table
from test_enumerate_cli import one_error_line
from test_store import PROFILE, measurement

RO_MOUNT = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'


@functools.lru_cache(maxsize=None)
def _unshare_prefix() -> tuple[str, ...] | None:
    """`unshare` arguments that give a private mount namespace here (user namespace first)."""
    exe = shutil.which("unshare")
    if exe is None:
        return None
    for flags in (("-r", "-m"), ("-m",)):
        probe = subprocess.run([exe, *flags, "sh", "-c", RO_MOUNT, "/tmp", "sh", "-c",
                                "! touch /tmp/.latbench-ro-probe 2>/dev/null"], capture_output=True)
        if probe.returncode == 0:
            return (exe, *flags)
    return None


def read_only(directory: Path, *cmd: str) -> subprocess.CompletedProcess:
    """Run `cmd` with `directory` mounted read-only (for root too), or skip saying why not."""
    prefix = _unshare_prefix()
    if prefix is None:
        pytest.skip("no read-only bind mount here (unshare -rm / unshare -m cannot mount)")
    return subprocess.run([*prefix, "sh", "-c", RO_MOUNT, str(directory), *cmd], capture_output=True,
                          text=True, cwd=ROOT, env=CLI_ENV, timeout=120)


# Runs each CLI command of argv[1] (a JSON list of argument lists) in this one process, through
# latbench.cli.run, then `read_table` of argv[2] when given; prints [[code, stdout, stderr]...,
# rows] as JSON. One interpreter for every command inside the read-only mount.
CLI_RUNS = """
import contextlib, io, json, sys
from latbench.cli import run
from latbench.store import read_table
done = []
for args in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run(args)
    done.append([code, out.getvalue(), err.getvalue()])
print(json.dumps([done, len(read_table(sys.argv[2])) if len(sys.argv) > 2 else None]))
"""


def read_only_cli(directory: Path, commands: list[list[str]], table: Path | None = None) -> tuple[list, int | None]:
    """Each CLI command's (exit code, stdout, stderr), run with `directory` mounted read-only, and
    read_table's row count of `table` there."""
    r = read_only(directory, sys.executable, "-c", CLI_RUNS, json.dumps(commands), *([str(table)] if table else []))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


@pytest.fixture
def table(tmp_path: Path) -> Path:
    """A complete `tiny` block table in its own directory, its writer closed cleanly."""
    path = tmp_path / "ro" / "tiny.sqlite"
    path.parent.mkdir()
    tiny_block_table(path)
    assert listing(path.parent) == ["tiny.sqlite"]
    return path


# ---------------------------------------------------------------------- read-only file system
def test_read_commands_work_on_a_read_only_file_system(cli, table: Path, tmp_path: Path):
    """show, export, predict, merge (source) and read_table give what they give on a writable
    directory, and the read-only directory is left as it was."""
    show = ["table", "show", str(table), "--json"]
    predict = ["predict", "--table", str(table), "--space", "tiny", "--random", "3", "--json"]
    want = [cli(*show), cli(*predict)]
    assert [code for code, _, _ in want] == [0, 0], want
    assert listing(table.parent) == ["tiny.sqlite"]

    csv_out, merged = tmp_path / "out.csv", tmp_path / "merged.sqlite"
    done, rows = read_only_cli(table.parent, [show, predict, ["table", "export", str(table), "-f", "csv", "-o", str(csv_out)],
                                              ["table", "merge", str(merged), str(table)]], table)
    assert [code for code, _, _ in done] == [0, 0, 0, 0], done
    assert [json.loads(out) for _, out, _ in done[:2]] == [json.loads(out) for _, out, _ in want]
    with LatencyTable.open(table, readonly=True) as t:
        assert len(csv_out.read_text().splitlines()) == 1 + len(t)
    with LatencyTable.open(merged, readonly=True) as m, LatencyTable.open(table, readonly=True) as t:
        assert m.estimates() == t.estimates()
    assert rows == len(read_table(table))
    assert listing(table.parent) == ["tiny.sqlite"]


def test_writing_a_read_only_table_is_one_line_naming_it(cli, table: Path, tmp_path: Path):
    csv_out = tmp_path / "rows.csv"
    assert cli("table", "export", str(table), "-f", "csv", "-o", str(csv_out))[0] == 0
    new = table.parent / "new.sqlite"
    (old_code, _, old_err), (new_code, _, new_err) = read_only_cli(table.parent, [
        ["table", "import", str(csv_out), "--out", str(table)], ["table", "import", str(csv_out), "--out", str(new)]])[0]
    assert (old_code, new_code) == (1, 1)
    assert one_error_line(old_err).startswith(
        f"latbench: error: {table}: cannot write the table: the file cannot be written (Read-only file system)")
    assert one_error_line(new_err).startswith(
        f"latbench: error: {new}: cannot write the table: its directory {table.parent} is on a "
        f"read-only file system")
    assert listing(table.parent) == ["tiny.sqlite"]


# ---------------------------------------------------------------------- a writer's log
def _killed_writer(path: Path, n_extra: int) -> None:
    """Add `n_extra` rows to the table at `path` in a process killed before it closes it, so the
    rows live only in its -wal (with its -shm beside it)."""
    code = f"""
import os, signal, sys
sys.path.insert(0, {str(ROOT / 'tests')!r})
from latbench import ops as O
from latbench.store import LatencyTable
from test_store import PROFILE, measurement
t = LatencyTable.open({str(path)!r}, PROFILE)
for i in range({n_extra}):
    t.add(measurement(O.conv((1, 3, 8, 8), 4 + i, 3), 0.5 + i))
os.kill(os.getpid(), signal.SIGKILL)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr


def test_a_killed_writers_log_is_read_not_skipped(table: Path):
    before = len(read_table(table))
    _killed_writer(table, 3)
    files = listing(table.parent)
    assert files == ["tiny.sqlite", "tiny.sqlite-shm", "tiny.sqlite-wal"]
    wal_size = (table.parent / "tiny.sqlite-wal").stat().st_size
    raw = sqlite3.connect(f"file:{table}?immutable=1", uri=True)  # the main file alone lacks them
    assert raw.execute("SELECT COUNT(*) FROM measurements").fetchone()[0] == before
    raw.close()
    assert len(read_table(table)) == before + 3
    r = read_only(table.parent, sys.executable, "-c",
                  f"from latbench.store import read_table; print(len(read_table({str(table)!r})))")
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == before + 3
    assert listing(table.parent) == files  # nothing created, nothing folded in
    assert (table.parent / "tiny.sqlite-wal").stat().st_size == wal_size


def test_a_log_without_its_shm_is_refused_in_one_error_line(cli, table: Path):
    _killed_writer(table, 1)
    (table.parent / "tiny.sqlite-shm").unlink()
    code, _, err = cli("table", "show", str(table))
    assert code == 1
    line = one_error_line(err)
    assert line.startswith(f"latbench: error: {table}: its write-ahead log {table}-wal holds commits "
                           f"but {table}-shm is missing")
    assert "PRAGMA wal_checkpoint(TRUNCATE)" in line
    assert listing(table.parent) == ["tiny.sqlite", "tiny.sqlite-wal"]
    with LatencyTable.open(table) as t:  # a writable open folds the log in
        n = len(t)
    assert listing(table.parent) == ["tiny.sqlite"]
    assert len(read_table(table)) == n


# ---------------------------------------------------------------------- no files left behind
def test_reads_leave_no_wal_or_shm_behind(cli, table: Path):
    """SQLite's own read-only mode would create both files in a writable directory and, unable
    to clean up, leave them there; latbench's reads create nothing."""
    with LatencyTable.open(table, readonly=True) as t:
        t.estimates(), t.meta(), list(t.rows()), t.to_frame(), t.integrity_check()
        assert listing(table.parent) == ["tiny.sqlite"]
    for args in (["table", "show", str(table)], ["predict", "--table", str(table), "--space", "tiny", "--random", "2"]):
        code, _, err = cli(*args)
        assert code == 0, err
    assert listing(table.parent) == ["tiny.sqlite"]


def test_a_write_during_a_read_is_noticed(table: Path):
    with LatencyTable.open(table, readonly=True) as t:
        n = len(t)
        with LatencyTable.open(table, PROFILE) as w:
            w.add(measurement(O.conv((1, 3, 8, 8), 5, 3), 0.5))
        with pytest.raises(TableError, match="the table was written while it was being read; run the command again"):
            len(t)
    assert len(read_table(table)) == n + 1


def test_a_table_opened_read_only_refuses_writes(table: Path):
    with LatencyTable.open(table, readonly=True) as t:
        with pytest.raises(TableError, match=f"^{table}: opened read-only; open it without readonly to write$"):
            t.add(measurement(O.conv((1, 3, 8, 8), 5, 3), 0.5))
        with pytest.raises(TableError, match="opened read-only"):
            t.meta_set("note", 1)
    missing = table.parent / "missing.sqlite"
    with pytest.raises(FormatError, match=f"^{missing}: no such latbench table$"):
        LatencyTable.open(missing, readonly=True)
    assert not missing.exists()

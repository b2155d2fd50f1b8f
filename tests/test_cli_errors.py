"""Errors that used to be internal errors, boxes or vanished commands are one line naming the file
(and line, key or option) with the README's exit code: option-parser errors, a resolution a
config may not have, an op list that is not UTF-8, a damaged table, YAML aliases, an estimate no
price can be made of, and a module that fails to import."""
from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import CLI_ENV, ROOT
from latbench.errors import FormatError, TableError
from latbench.formats.oplist import read_any_ops
from latbench.spaces import get_space
from latbench.store import LatencyTable
from synthetic_tables import tiny_block_table
from test_enumerate_cli import one_error_line


@pytest.fixture
def table(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.sqlite"
    tiny_block_table(path)
    return path


def tiny_config(r: int) -> str:
    """A config of the tiny space in its published form, at resolution `r`."""
    sp = get_space("tiny")
    cfg = sp.to_published(sp.sample(np.random.default_rng(0), 1)[0])
    return json.dumps({**cfg, "r": r})


# ---------------------------------------------------------------------- option parser
@pytest.mark.parametrize("args,line", [
    (["profile", "--device", "ort"],
     "latbench: error: latbench profile: Missing option '--out' / '-o' (see latbench profile --help)"),
    (["nosuch"], "latbench: error: latbench: No such command 'nosuch' (see latbench --help)"),
    (["enumerate", "tiny", "--bogus"],
     "latbench: error: latbench enumerate: No such option: --bogus (see latbench enumerate --help)"),
])
def test_option_parser_errors_are_one_error_line(cli, args, line):
    code, out, err = cli(*args)
    assert (code, out) == (2, "")
    assert one_error_line(err) == line


@pytest.mark.parametrize("args,option", [
    (["enumerate", "tiny", "-r", "abc"], "'--resolution' / '-r'"),
    (["table", "show", "t.sqlite", "--limit", "-1"], "'--limit'"),
])
def test_bad_option_values_are_one_line_naming_the_option(cli, args, option):
    code, out, err = cli(*args)
    assert (code, out) == (2, "")
    line = one_error_line(err)
    command = " ".join(["latbench", *args[:2 if args[0] == "table" else 1]])
    assert line.startswith(f"latbench: error: {command}: Invalid value for {option}: ")
    assert line.endswith(f"(see {command} --help)")


# ---------------------------------------------------------------------- a resolution the space lacks
def test_a_resolution_the_space_lacks_is_a_usage_error_from_config_and_from_r(cli, table: Path):
    code, _, err = cli("predict", "--table", str(table), "--space", "tiny", "--random", "1", "-r", "100")
    assert code == 2 and "100" in one_error_line(err)
    code, out, err = cli("predict", "--table", str(table), "--space", "tiny", "--config", tiny_config(100))
    assert (code, out) == (2, "")
    assert one_error_line(err) == "latbench: error: tiny: r=100 is not one of [24, 32]"
    code, out, _ = cli("predict", "--table", str(table), "--space", "tiny", "--config", tiny_config(32))
    assert code == 0 and out


# ---------------------------------------------------------------------- op list not UTF-8
def test_an_op_list_that_is_not_utf8_names_line_and_offset(cli, tmp_path: Path):
    ops = tmp_path / "ops.txt"
    ops.write_bytes(b"conv-input:1x8x8x8-out:8-k:3-s:1-p:1-d:1-g:1-bias:0-bn:0-act:none\n"
                    b"# caf\xe9 latin-1\n")
    offset = len(b"conv-input:1x8x8x8-out:8-k:3-s:1-p:1-d:1-g:1-bias:0-bn:0-act:none\n# caf")
    line = (f"{ops}:2: not UTF-8 text (byte b'\\xe9' at offset {offset}: invalid continuation byte); "
            f"an op list is UTF-8")
    with pytest.raises(FormatError) as e:
        read_any_ops(ops)
    assert str(e.value) == line
    out = tmp_path / "t.sqlite"
    code, _, err = cli("profile", "--device", "ort", "--ops", str(ops), "--out", str(out))
    assert code == 1
    assert one_error_line(err) == f"latbench: error: {line}"
    assert not out.exists()


# ---------------------------------------------------------------------- a damaged table
def test_a_damaged_index_page_is_one_line_naming_the_table(cli, table: Path):
    con = sqlite3.connect(table)
    page_size = con.execute("PRAGMA page_size").fetchone()[0]
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_measurements_1'").fetchone()[0]
    con.close()
    with open(table, "r+b") as f:  # the key index's root page: every byte 0xff
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * page_size)
    for args in (["table", "show", str(table)],
                 ["predict", "--table", str(table), "--space", "tiny", "--random", "2"]):
        code, out, err = cli(*args)
        assert code == 1 and out == ""
        line = one_error_line(err)
        assert line.startswith(f"latbench: error: {table}: the table file is damaged (Page {root}: ")
        assert line.endswith(f"; `sqlite3 {table} .recover` saves what can be saved")


# ---------------------------------------------------------------------- YAML aliases
def test_a_billion_laughs_space_file_is_refused_at_its_first_alias(cli, tmp_path: Path):
    lines = ["name: lol", "input: {resolutions: [32]}", "x0: &a0 [8, 8, 8, 8, 8, 8, 8, 8, 8, 8]"]
    lines += [f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    lines += ["stem: {type: conv, out: *a9, kernel: 3, stride: 2}", "stages: []", "head: []"]
    space = tmp_path / "lol.yaml"
    space.write_text("\n".join(lines) + "\n")
    code, out, err = cli("enumerate", str(space))
    assert (code, out) == (1, "")
    assert one_error_line(err) == (f"latbench: error: {space}: line 4: alias *a0 refused: a space file "
                                  f"may not use YAML aliases (write the values out)")


# ---------------------------------------------------------------------- estimates no price is made of
@pytest.mark.parametrize("sql_value,shown", [("-4.6", "-4.6"), ("9e999", "inf"), ("'nan'", "'nan'")])
def test_an_estimate_that_is_no_price_is_refused_naming_file_and_key(cli, table: Path, sql_value, shown):
    con = sqlite3.connect(table)
    key = con.execute("SELECT key FROM measurements ORDER BY key LIMIT 1").fetchone()[0]
    con.execute(f"UPDATE measurements SET estimate = {sql_value} WHERE key = ?", (key,))
    con.commit()
    con.close()
    line = (f"{table}: key {key!r} has estimate {shown}; a price must be a finite number of ms >= 0 "
            f"(a row written by another tool or an older latbench?)")
    with LatencyTable.open(table, readonly=True) as t:
        for price in (t.estimates, lambda: t.estimate(key)):
            with pytest.raises(TableError) as e:
                price()
            assert str(e.value) == line
    for args in (["predict", "--table", str(table), "--space", "tiny", "--random", "2"],
                 ["search", "--space", "tiny", "--table", str(table), "--budget-ms", "5"]):
        code, out, err = cli(*args)
        assert (code, out) == (1, ""), err
        assert one_error_line(err) == f"latbench: error: {line}"
    code, _, err = cli("table", "show", str(table))  # showing a number is no pricing; text is no number
    if shown == "'nan'":
        assert one_error_line(err) == f"latbench: error: {table}: key {key!r}: estimate holds 'nan', not a number"
    else:
        assert code == 0, err


# ---------------------------------------------------------------------- registries
BREAK = """
import sys
class Broken:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            raise ImportError(name + " is broken for this test")
sys.meta_path.insert(0, Broken())
from latbench.cli import main
sys.argv = ["latbench", *{args!r}]
main()
"""


def run_with_broken(module: str, *args: str) -> subprocess.CompletedProcess:
    code = BREAK.format(module=module, args=list(args))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env=CLI_ENV, timeout=120)


@pytest.mark.parametrize("args", [["--help"], ["table", "show", "t.sqlite"], ["spaces"]])
def test_a_command_module_that_fails_to_import_fails_every_command(args):
    r = run_with_broken("latbench.cli.table", *args)
    assert (r.returncode, r.stdout) == (1, "")
    assert re.fullmatch(r"latbench: error: latbench is broken: loading its commands failed at "
                        r"latbench/cli/app\.py:\d+ \(from \.table import table_app\): ImportError: "
                        r"latbench\.cli\.table is broken for this test", one_error_line(r.stderr))


def test_a_space_module_that_fails_to_import_is_an_error_not_a_missing_space():
    r = run_with_broken("latbench.spaces.lightnas", "spaces", "--json")
    assert (r.returncode, r.stdout) == (1, "")
    assert one_error_line(r.stderr) == ("latbench: error: internal error: ImportError: latbench.spaces.lightnas "
                                  "is broken for this test (set LATBENCH_DEBUG=1 for the traceback)")

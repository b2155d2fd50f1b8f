"""PaddleSlim text found wanting by QA: the export takes the per-call cost off each line (and the
sidecar gives it back), an op on two lines with different latencies is refused, the table-export
error hints at what `table export` has, and lightnas refuses tokens that are not integers."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from latbench import ops as O
from latbench.enumerate import enumerate_ops
from latbench.errors import ConfigError, FormatError
from latbench.formats import export_paddleslim, import_paddleslim, import_profile, paddleslim_meta_path
from latbench.formats.paddleslim import op_to_line, read_table
from latbench.measure import Measurement, Stats
from latbench.spaces import get_space
from latbench.store import LatencyTable
from latbench.tablemeta import CompanionEntry, RunSettings

from synthetic_tables import tiny_block_table
from test_store import PROFILE

INV = 0.0123456789  # ms: the per-call cost, above the cheapest rows


def _cost_table(path: Path) -> tuple[dict[str, float], float]:
    """Every op of `tiny` (op granularity) with a per-call cost some rows are below; returns
    (key -> estimate, cost)."""
    ops = enumerate_ops(get_space("tiny"), [24, 32], "op")
    with LatencyTable.open(path, PROFILE) as t:
        t.set_run_settings(RunSettings("op"))
        t.add_many(Measurement(op.key, PROFILE.id, op.to_dict(), Stats.from_samples([0.003 + 0.0017 * i] * 3))
                   for i, op in enumerate(ops))
        t.set_invocation(CompanionEntry(estimate_ms=INV, status="ok", estimator="mean"))
        return t.estimates(), t.invocation.estimate_ms


def _paddle_dict(path: Path) -> dict[tuple[str, ...], float]:
    """The text as PaddleSlim's loader reads it: tuple(fields[:-1]) -> float(fields[-1])."""
    out = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        out[tuple(fields[:-1])] = float(fields[-1])
    return out


def test_export_takes_the_per_call_cost_off_each_line_and_the_sidecar_gives_it_back(tmp_path):
    est, inv = _cost_table(tmp_path / "t.db")
    assert inv == INV and min(est.values()) < inv
    # work + cost does not give some estimates back bit for bit: the sidecar must
    assert any(max(0.0, e - inv) + inv != e for e in est.values() if e > inv)
    with LatencyTable.open(tmp_path / "t.db", create=False) as t:
        export_paddleslim(t, tmp_path / "x.txt")
    lines = _paddle_dict(tmp_path / "x.txt")

    # PaddleSlim's plain sum over a subnet = latbench's price (cost once + sum of max(0, e - cost)) - cost
    sp = get_space("tiny")
    for c in sp.sample(3, 12):
        ops = [o for b in sp.blocks(c) for o in O.expand(b)]
        paddle = sum(lines[tuple(op_to_line(o).split())] for o in ops)
        price = inv + sum(max(0.0, est[o.key] - inv) for o in ops)
        assert paddle == pytest.approx(price - inv, rel=1e-12)

    # a row below the cost writes 0
    low = [k for k, e in est.items() if e < inv]
    with LatencyTable.open(tmp_path / "t.db", create=False) as t:
        by_key = {r["key"]: _line_fields(r["op"]) for r in t.rows(status="ok")}
    for k in low:
        assert lines[by_key[k]] == 0.0

    # with the sidecar: every estimate bit-identical and the per-call cost back
    with LatencyTable.open(tmp_path / "back.db") as t2:
        import_paddleslim(tmp_path / "x.txt", t2)
        assert t2.estimates() == est
        assert t2.invocation is not None and t2.invocation.estimate_ms == inv

    # the text alone: the work entries, no per-call cost
    (tmp_path / "alone").mkdir()
    shutil.copy(tmp_path / "x.txt", tmp_path / "alone" / "x.txt")
    with LatencyTable.open(tmp_path / "alone.db") as t3:
        import_paddleslim(tmp_path / "alone" / "x.txt", t3, import_profile("phone"))
        assert t3.estimates() == {k: max(0.0, e - inv) for k, e in est.items()}
        assert t3.invocation is None


def _line_fields(op: dict) -> tuple[str, ...]:
    """The PaddleSlim line of a row's op, as fields."""
    return tuple(op_to_line(O.OpSpec.from_dict(op)).split())


def test_an_edited_line_is_priced_by_its_own_work_plus_the_cost(tmp_path):
    est, inv = _cost_table(tmp_path / "t.db")
    with LatencyTable.open(tmp_path / "t.db", create=False) as t:
        export_paddleslim(t, tmp_path / "x.txt")
    text = (tmp_path / "x.txt").read_text().splitlines()
    fields = text[0].split()
    text[0] = " ".join(fields[:-1] + ["0.5"])
    (tmp_path / "x.txt").write_text("\n".join(text) + "\n")
    with LatencyTable.open(tmp_path / "t.db", create=False) as t:
        key = next(r["key"] for r in t.rows(status="ok") if _line_fields(r["op"]) == tuple(fields[:-1]))
    with LatencyTable.open(tmp_path / "back.db") as t2:
        import_paddleslim(tmp_path / "x.txt", t2)
        got = t2.estimates()
    assert got[key] == 0.5 + inv
    assert {k: v for k, v in got.items() if k != key} == {k: v for k, v in est.items() if k != key}


def test_a_sidecar_from_before_the_cost_was_taken_off_imports_the_lines_as_estimates(tmp_path):
    est, inv = _cost_table(tmp_path / "t.db")
    with LatencyTable.open(tmp_path / "t.db", create=False) as t:
        export_paddleslim(t, tmp_path / "x.txt")
    side = Path(paddleslim_meta_path(tmp_path / "x.txt"))
    doc = json.loads(side.read_text())
    doc.pop("per_call_ms")
    doc["rows"] = {}
    side.write_text(json.dumps(doc))
    with LatencyTable.open(tmp_path / "back.db") as t2:
        import_paddleslim(tmp_path / "x.txt", t2)
        assert t2.estimates() == {k: max(0.0, e - inv) for k, e in est.items()}  # the lines, as written
    doc["per_call_ms"] = -1
    side.write_text(json.dumps(doc))
    with LatencyTable.open(tmp_path / "bad.db") as t3, pytest.raises(FormatError, match="per_call_ms"):
        import_paddleslim(tmp_path / "x.txt", t3)


def test_a_table_without_a_per_call_cost_exports_its_estimates(tmp_path):
    ops = enumerate_ops(get_space("tiny"), [24], "op")[:10]
    with LatencyTable.open(tmp_path / "t.db", PROFILE) as t:
        t.add_many(Measurement(op.key, PROFILE.id, op.to_dict(), Stats.from_samples([0.01 * (i + 1)] * 3))
                   for i, op in enumerate(ops))
        est = t.estimates()
        export_paddleslim(t, tmp_path / "x.txt")
    assert sorted(_paddle_dict(tmp_path / "x.txt").values()) == sorted(est.values())


# ---------------------------------------------------------------------- an op on two lines
CONV = "conv 0 1 1 16 28 28 32 1 3 1 1 1"


def test_an_op_on_two_lines_with_different_latencies_is_refused_naming_both(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text(f"{CONV} 0.5\nsoftmax -1 1 1000 1 1 0.1\n{CONV} 0.7\n")
    with pytest.raises(FormatError) as e:
        read_table(p)
    msg = str(e.value)
    assert f"{p}:3" in msg and f"{p}:1" in msg and "0.5" in msg and "0.7" in msg and "\n" not in msg
    # two spellings of one op (softmax axis 1 and -1) are one op too
    p.write_text("softmax -1 1 1000 1 1 0.1\nsoftmax 1 1 1000 1 1 0.2\n")
    with pytest.raises(FormatError, match=r"t\.txt:2.*0\.2.*0\.1.*t\.txt:1"):
        read_table(p)
    # identical duplicates are one row
    p.write_text(f"{CONV} 0.5\n{CONV} 0.5\n")
    assert [ms for _, ms in read_table(p)] == [0.5, 0.5]
    with LatencyTable.open(tmp_path / "t.db") as t:
        assert import_paddleslim(p, t, import_profile("phone")).written == 1


def test_the_cli_refuses_conflicting_lines_in_one_line(cli, tmp_path):
    p = tmp_path / "t.txt"
    p.write_text(f"{CONV} 0.5\n\n{CONV} 0.7\n")
    code, _, err = cli("table", "import", str(p), "--out", str(tmp_path / "t.db"), "--device", "phone")
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("latbench: error: ") and "Traceback" not in err
    assert f"{p}:3" in lines[0] and f"{p}:1" in lines[0] and "0.7" in lines[0]
    assert not (tmp_path / "t.db").exists()


# ---------------------------------------------------------------------- the table-export hint
def test_table_export_of_a_row_without_a_line_hints_at_what_table_export_has(cli, tmp_path):
    tiny_block_table(tmp_path / "b.db")
    code, _, err = cli("table", "export", str(tmp_path / "b.db"), "--format", "paddleslim",
                       "-o", str(tmp_path / "x.txt"))
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("latbench: error: ") and "Traceback" not in err
    assert "--granularity" not in lines[0]
    assert "--skip-unsupported" in lines[0] and "csv|jsonl" in lines[0]
    code, _, err = cli("table", "export", str(tmp_path / "b.db"), "--format", "paddleslim",
                       "-o", str(tmp_path / "x.txt"), "--skip-unsupported")
    assert code == 0, err
    # other callers keep their own hint
    blk = enumerate_ops(get_space("tiny"), [24], "block")[0]
    with pytest.raises(FormatError, match="--granularity op"):
        op_to_line(blk)


# ---------------------------------------------------------------------- lightnas tokens
@pytest.mark.parametrize("bad", [3.5, True, np.float64(0.5), None])
def test_lightnas_refuses_tokens_that_are_not_integers(bad):
    sp = get_space("lightnas")
    tokens = sp.init_tokens()
    tokens[7] = bad
    shown = bad.item() if isinstance(bad, np.generic) else bad
    with pytest.raises(ConfigError, match=rf"'s1\.c' holds {re.escape(repr(shown))}, not an integer"):
        sp.index(tokens)


def test_lightnas_takes_integers_of_any_kind():
    sp = get_space("lightnas")
    tokens = sp.init_tokens()
    want = np.array(tokens)
    assert (sp.index([float(v) for v in tokens]) == want).all()
    assert (sp.index([np.int32(v) for v in tokens]) == want).all()
    assert (sp.index(np.array(tokens, dtype=np.float64)) == want).all()
    assert (sp.index(want) == want).all()


def test_lightnas_predict_cli_refuses_a_fractional_token(cli, tmp_path):
    ops = enumerate_ops(get_space("lightnas"), None, "op")
    with LatencyTable.open(tmp_path / "t.db", PROFILE) as t:
        t.set_run_settings(RunSettings("op"))
        t.add_many(Measurement(op.key, PROFILE.id, op.to_dict(), Stats.from_samples([0.01] * 3)) for op in ops)
    tokens = get_space("lightnas").init_tokens()
    cfg = "[" + ",".join(["3.5"] + [str(v) for v in tokens[1:]]) + "]"
    code, _, err = cli("predict", "--table", str(tmp_path / "t.db"), "--space", "lightnas", "--config", cfg)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("latbench: error: ") and "3.5" in lines[0]
    assert "s0.t" in lines[0]
    code, _, err = cli("predict", "--table", str(tmp_path / "t.db"), "--space", "lightnas",
                         "--config", "[" + ",".join(str(v) for v in tokens) + "]")
    assert code == 0, err


# ---------------------------------------------------------------------- docs
def test_docs_list_every_built_in_space():
    from latbench.spaces import list_spaces

    text = (Path(__file__).resolve().parents[1] / "docs" / "spaces.md").read_text()
    assert repr(list_spaces()) in text
    for name in list_spaces():
        assert f"| `{name}`" in text or f", `{name}`" in text


def test_readme_lists_every_paddleslim_op_type():
    from latbench.formats.paddleslim import FIELDS

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = text[text.index("## PaddleSlim op-list format"):]
    for typ, names in FIELDS.items():
        assert f"`{typ} {' '.join(names)}" in table, typ

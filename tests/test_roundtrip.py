"""Every export then import keeps every prediction exactly, or the export refuses in one line naming
what the format cannot hold and the format that keeps it: CSV, JSONL, PaddleSlim text (with its
sidecar) and Once-for-All YAML, for block tables, op tables with a runtime's fusion, tables with a
per-call cost, calibrated tables and combinations of several devices."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from latbench import ops as O
from latbench.errors import LatbenchError
from latbench.measure import Measurement, Stats, TimingSettings
from latbench.predict import Predictor, Pricer
from latbench.profiler import ops_with_resolutions
from latbench.tablemeta import CalibrationEntry
from latbench.runmeta import INVOCATION_OP, check_run_meta, record_invocation
from latbench.spaces import get_space
from latbench.store import FORMAT_VERSION, LatencyTable
from latbench.combine import combine
from latbench.formats import (export_csv, export_jsonl, export_ofa_yaml, export_paddleslim, import_csv, import_jsonl,
                              import_ofa_yaml, import_paddleslim, import_profile)

from test_store import OTHER, PROFILE

N_CONFIGS = 300


# ---------------------------------------------------------------------- tables of each kind
def _value(i: int, op: O.OpSpec, scale: float) -> float:
    """A distinct, FLOPs-shaped latency (ms) per op, so a key priced by another's number shows."""
    return scale * (0.004 + op.flops * 2e-9 * (1 + (i % 5) / 10))


def build(path: Path, space: str, granularity: str, fusion: str, profile=PROFILE, scale: float = 1.0,
          invocation_ms: float | None = None, calibrated: bool = False, leave_out: int = 0) -> Path:
    """A table of every op of `space` as a profile of it would store them: statistics, the
    resolutions each key belongs to, the run settings; optionally a per-call cost measured as
    profiling measures it, a calibration, and every `leave_out`-th op missing."""
    sp = get_space(space)
    ops, res = ops_with_resolutions(sp, None, granularity, fusion)
    timing = TimingSettings()
    with LatencyTable.open(path, profile) as t:
        check_run_meta(t, granularity, fusion, sp.name, timing)
        rows, pid = [], profile.id
        for i, op in enumerate(ops):
            if leave_out and i % leave_out == 0:
                continue
            base = _value(i, op, scale)
            samples = [base * (1 + 0.01 * ((j * 7) % 11 - 5)) for j in range(23)]
            rows.append(Measurement(key=op.key, profile_id=pid, op=op.to_dict(),
                                    stats=Stats.from_samples(samples, block=10), settings={"threads": 1},
                                    wall_s=0.5, timed_s=0.25, taken_at=1.7e9 + i,
                                    extra={"resolutions": res.get(op.key, [])}))
        t.add_many(rows)  # rows as `add` stores them, in one transaction
        if invocation_ms is not None:
            samples = [invocation_ms * (1 + 0.02 * (j % 3 - 1)) for j in range(15)]
            m = Measurement(key=INVOCATION_OP.key, profile_id=profile.id, op=INVOCATION_OP.to_dict(),
                            stats=Stats.from_samples(samples), settings={"estimator": "median"})
            record_invocation(t, m, timing, fresh=True)
        if calibrated:
            t.set_calibration(CalibrationEntry(scale=1.07, offset_ms=0.021, n=7, space=sp.name,
                                               granularity=granularity))
    return path


def _combination(tmp: Path) -> Path:
    """Two devices' op tables combined: the first lacks every 9th key, the second fills them."""
    a = build(tmp / "a.db", "tiny", "op", "tflite", invocation_ms=0.012, leave_out=9)
    b = build(tmp / "b.db", "tiny", "op", "tflite", profile=OTHER, scale=1.3, invocation_ms=0.02)
    with LatencyTable.open(tmp / "combined.db") as t:
        combine(t, [a, b])
    return tmp / "combined.db"


# kind -> (space, builder); the ORT op table of bignas-resnet is the issue's own case
KINDS = {
    "block": ("tiny", lambda tmp: build(tmp / "t.db", "tiny", "block", "none", invocation_ms=0.01)),
    "op-fused-tflite": ("tiny", lambda tmp: build(tmp / "t.db", "tiny", "op", "tflite")),
    "op-fused-ort-per-call": ("bignas-resnet",
                              lambda tmp: build(tmp / "t.db", "bignas-resnet", "op", "ort", invocation_ms=0.015)),
    "op-fused-ort-hsigmoid": ("tiny", lambda tmp: build(tmp / "t.db", "tiny", "op", "ort", invocation_ms=0.01)),
    "calibrated": ("tiny", lambda tmp: build(tmp / "t.db", "tiny", "op", "tflite", invocation_ms=0.012,
                                             calibrated=True)),
    "combined": ("tiny", _combination),
    "ofa-blocks-per-call": ("ofa-mbv3-w10",
                            lambda tmp: build(tmp / "t.db", "ofa-mbv3-w10", "block", "none", invocation_ms=0.003)),
}


# ---------------------------------------------------------------------- what a table predicts
def predictions(path: Path, space: str, max_fallback: float | None = 0.1) -> dict:
    """Every prediction the table makes for N_CONFIGS sampled subnets: batch and single, the keys
    priced by the fallback, and the prices of op lists (block lists and unfused model op lists)."""
    sp = get_space(space)
    configs = sp.sample(np.random.default_rng(7), N_CONFIGS)
    with LatencyTable.open(path, readonly=True) as t:
        pred = Predictor.from_table(t, sp, max_fallback=max_fallback)
        pricer = Pricer.from_table(t)
        batch, misses = pred.predict_batch(configs, return_misses=True)
        singles = [pred.predict(c) for c in configs[:25]]
        prices = []
        for c in configs[:25]:
            blocks, r = sp.blocks(c), pred.resolution_of(c)
            lists = [blocks] + ([[o for b in blocks for o in O.expand(b)]] if pricer.granularity == "op" else [])
            for ops in lists:
                p = pricer.price(ops, r)
                prices.append((p.ms, p.misses))
    return {"batch": batch, "misses": misses, "singles": singles, "prices": prices}


def assert_same(a: dict, b: dict, exact: bool = True) -> None:
    """Equal predictions: exactly, or (OFA YAML, whose entries hold estimate - per-call cost) to
    the last bits of a float sum."""
    assert np.array_equal(a["misses"], b["misses"])
    assert [m for _, m in a["prices"]] == [m for _, m in b["prices"]]
    if exact:
        assert np.array_equal(a["batch"], b["batch"]) and a["singles"] == b["singles"] and a["prices"] == b["prices"]
        return
    for x, y in ((a["batch"], b["batch"]), (a["singles"], b["singles"]),
                 ([ms for ms, _ in a["prices"]], [ms for ms, _ in b["prices"]])):
        assert np.allclose(x, y, rtol=1e-12, atol=0)


# ---------------------------------------------------------------------- the formats
def _csv(t, tmp):
    export_csv(t, tmp / "x.csv")
    return lambda dst: import_csv(tmp / "x.csv", dst)


def _jsonl(t, tmp):
    export_jsonl(t, tmp / "x.jsonl")
    return lambda dst: import_jsonl(tmp / "x.jsonl", dst)


def _paddleslim(t, tmp):
    export_paddleslim(t, tmp / "x.txt")
    return lambda dst: import_paddleslim(tmp / "x.txt", dst)


def _ofa_yaml(t, tmp):
    export_ofa_yaml(t, tmp / "lut")
    files = sorted((tmp / "lut").glob("*_lookup_table.yaml"))
    return lambda dst: import_ofa_yaml(files, dst, import_profile("Test CPU"))  # OFA YAML names no device


FORMATS = {"csv": _csv, "jsonl": _jsonl, "paddleslim": _paddleslim, "ofa-yaml": _ofa_yaml}

# (format, kind) -> what the refusal names: the key kind it cannot hold, and the format that keeps it
REFUSED = {
    ("paddleslim", "block"): ("has no PaddleSlim line", "csv|jsonl"),
    ("paddleslim", "op-fused-ort-hsigmoid"): ("act=hsigmoid has no PaddleSlim line", "csv|jsonl"),
    ("paddleslim", "ofa-blocks-per-call"): ("which a PaddleSlim line loses", "csv|jsonl"),
    **{("ofa-yaml", k): ("is not a Once-for-All block key, which OFA YAML cannot hold", "csv")
       for k in KINDS if k != "ofa-blocks-per-call"},
    ("ofa-yaml", "calibrated"): ("OFA YAML cannot hold the table's calibration", "csv"),
}


LOSSLESS = ("csv", "jsonl")


def state(path: Path) -> tuple:
    """Everything a table holds but when it was made: profile, meta, every column of every row."""
    with LatencyTable.open(path, readonly=True) as t:
        return t.profile, {k: v for k, v in t.meta().items() if k != "created_at"}, list(t.rows())


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Each kind's table and its predictions, built once for every format."""
    cache: dict[str, tuple[Path, dict]] = {}

    def get(kind: str) -> tuple[Path, dict]:
        if kind not in cache:
            space, make = KINDS[kind]
            path = make(tmp_path_factory.mktemp(kind))
            cache[kind] = path, predictions(path, space)
        return cache[kind]

    return get


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_export_then_import_predicts_exactly_or_refuses(tmp_path: Path, made, fmt: str, kind: str):
    space = KINDS[kind][0]
    path, before = made(kind)
    assert not before["misses"].any()  # a complete table: every key its own number
    with LatencyTable.open(path, readonly=True) as t:
        rows_before = {r["key"]: (r["estimate"], r["profile_id"], r["extra"]) for r in t.rows("ok")}
        if (fmt, kind) in REFUSED:
            what, keeps = REFUSED[fmt, kind]
            with pytest.raises(LatbenchError) as e:
                FORMATS[fmt](t, tmp_path)
            msg = str(e.value)
            assert what in msg and keeps in msg and "\n" not in msg, msg
            return
        load = FORMATS[fmt](t, tmp_path)
    back = tmp_path / "back.db"
    with LatencyTable.open(back) as t2:
        load(t2)
        rows_after = {r["key"]: (r["estimate"], r["profile_id"], r["extra"]) for r in t2.rows("ok")}
    if fmt != "ofa-yaml":  # OFA's files hold no device, and each entry less the per-call cost
        assert rows_after == rows_before  # each number, the profile that measured it, its resolutions
    if fmt in LOSSLESS:  # the whole table back as it was: it predicts as before, by construction
        assert state(back) == state(path)
    if fmt != "jsonl":  # (jsonl's state equals as csv's does; csv's predictions say it end to end)
        assert_same(predictions(back, space), before, exact=fmt != "ofa-yaml")


def test_paddleslim_text_alone_is_a_foreign_table_that_prices_otherwise(tmp_path: Path, made):
    """Without its sidecar the text has neither the fusion nor the per-call cost: the issue's ORT
    op table then priced 2.2-2.7x higher through the fallback. The sidecar is what keeps it exact."""
    path, before = made("op-fused-ort-per-call")
    with LatencyTable.open(path, readonly=True) as t:
        export_paddleslim(t, tmp_path / "x.txt")
    (tmp_path / "x.txt.meta.json").unlink()
    with LatencyTable.open(tmp_path / "foreign.db", import_profile("Test CPU")) as t2:
        import_paddleslim(tmp_path / "x.txt", t2)
        assert t2.run_settings is None and t2.invocation is None
    after = predictions(tmp_path / "foreign.db", "bignas-resnet", max_fallback=None)
    assert after["misses"].min() > 0 and not np.array_equal(after["batch"], before["batch"])


def test_paddleslim_refuses_an_op_whose_line_reads_back_as_another(tmp_path: Path):
    """A softmax over the last axis of (n, c, 1, 1) is written `softmax -1 ...`, which PaddleSlim
    (and latbench) read as the softmax of flat logits: refused rather than changed."""
    op = O.softmax((1, 10, 1, 1), axis=-1)
    with LatencyTable.open(tmp_path / "t.db", PROFILE) as t:
        t.add(Measurement(key=op.key, profile_id=PROFILE.id, op=op.to_dict(),
                          stats=Stats.from_samples([0.01, 0.011, 0.012])))
        with pytest.raises(LatbenchError) as e:
            export_paddleslim(t, tmp_path / "x.txt")
    assert str(e.value) == (f"{tmp_path / 't.db'}: cannot export {op.key} as PaddleSlim text: its line "
                            f"'softmax -1 1 10 1 1' reads back as another op ({O.softmax((1, 10, 1, 1)).key}); "
                            f"--format csv|jsonl keep every row (--skip-unsupported leaves such rows out)")


# ---------------------------------------------------------------------- JSONL and the CLI
def test_cli_jsonl_is_one_self_contained_file(cli, tmp_path: Path, made):
    """`table export --format jsonl`: a header line (format, version, profile, meta), then one row a
    line; `table import` of it needs no --device and gives every row and meta entry back."""
    path, _ = made("calibrated")
    out = tmp_path / "x.jsonl"
    code, _, err = cli("table", "export", str(path), "--format", "jsonl", "-o", str(out))
    assert code == 0, err
    lines = out.read_text().splitlines()
    head = json.loads(lines[0])
    with LatencyTable.open(path, readonly=True) as t:
        rows, meta, prof = list(t.rows()), t.meta(), t.profile
    assert head["format"] == "latbench-table-jsonl" and head["version"] == FORMAT_VERSION
    assert head["profile"] == prof.to_dict() and head["meta"] == meta and len(lines) == 1 + len(rows)
    assert [json.loads(line)["key"] for line in lines[1:]] == [r["key"] for r in rows]
    code, _, err = cli("table", "import", str(out), "--out", str(tmp_path / "back.db"))
    assert code == 0, err
    with LatencyTable.open(tmp_path / "back.db", readonly=True) as t:
        assert list(t.rows()) == rows and t.profile == prof
        assert {k: v for k, v in t.meta().items() if k != "created_at"} == \
            {k: v for k, v in meta.items() if k != "created_at"}


def test_cli_drop_calibration_is_for_formats_that_cannot_hold_one(cli, tmp_path: Path, made):
    path, _ = made("calibrated")
    code, _, err = cli("table", "export", str(path), "-f", "csv", "-o", str(tmp_path / "x.csv"), "--drop-calibration")
    assert code == 2 and err.count("\n") == 1 and "--drop-calibration" in err and "csv keeps it" in err
    assert not (tmp_path / "x.csv").exists()


def _jsonl_with(tmp_path: Path, made, line: int, change) -> Path:
    path, _ = made("op-fused-tflite")
    out = tmp_path / "x.jsonl"
    with LatencyTable.open(path, readonly=True) as t:
        export_jsonl(t, out)
    lines = out.read_text().splitlines()
    lines[line - 1] = change(lines[line - 1])
    out.write_text("\n".join(lines) + "\n")
    return out


@pytest.mark.parametrize("line,change,why", [
    (3, lambda s: json.dumps({**json.loads(s), "_": 1}), "unknown column(s) _"),
    (3, lambda s: json.dumps({**json.loads(s), "estimate": float("nan")}), "column estimate: nan is not a finite number"),
    (4, lambda s: json.dumps({**json.loads(s), "estimate": float("inf")}), "column estimate: inf is not a finite number"),
    (2, lambda s: json.dumps({**json.loads(s), "estimate": -1.5}), "column estimate: an ok row of"),
    (2, lambda s: json.dumps({**json.loads(s), "median": "fast"}), 'column median: "fast" is not a number'),
    (2, lambda s: json.dumps({**json.loads(s), "extra": [1]}), "column extra: [1] is not a JSON object"),
    (2, lambda s: s[:-3], "not JSON"),
    (1, lambda s: json.dumps({**json.loads(s), "format": "latbench-table-csv"}), "not a latbench-table-jsonl header"),
])
def test_jsonl_bad_row_names_file_line_and_column(tmp_path: Path, made, line, change, why):
    out = _jsonl_with(tmp_path, made, line, change)
    with LatencyTable.open(tmp_path / "back.db") as t:
        with pytest.raises(LatbenchError) as e:
            import_jsonl(out, t)
        assert len(t) == 0
    msg = str(e.value)
    assert msg.startswith(f"{out}:{line}: ") and why in msg and "\n" not in msg, msg


def test_cli_paddleslim_import_needs_a_device_only_without_its_sidecar(cli, tmp_path: Path, made):
    path, before = made("op-fused-tflite")
    txt = tmp_path / "x.txt"
    code, _, err = cli("table", "export", str(path), "-f", "paddleslim", "-o", str(txt))
    assert code == 0 and err.startswith(f"{path} -> {txt}, {txt}.meta.json: "), err
    code, _, err = cli("table", "import", str(txt), "--out", str(tmp_path / "a.db"))
    assert code == 0, err
    assert_same(predictions(tmp_path / "a.db", "tiny"), before)
    code, _, err = cli("table", "import", str(txt), "--out", str(tmp_path / "b.db"), "--device", "Pixel 7")
    assert code == 1 and "it needs no --device" in err and err.count("\n") == 1 and not (tmp_path / "b.db").exists()
    (tmp_path / "x.txt.meta.json").unlink()
    code, _, err = cli("table", "import", str(txt), "--out", str(tmp_path / "c.db"))
    assert code == 2 and "needs --device" in err and not (tmp_path / "c.db").exists()

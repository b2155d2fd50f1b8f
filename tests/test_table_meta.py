"""Typed table metadata and the schema version: the fixture written by latbench 0.1.0 (format
version 1, tests/fixtures/README.md) read through the typed accessors, its migration in place and
read-only, each dataclass's round trip, and a newer version refused in one line."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from latbench import ops as O
from latbench.errors import FormatError, TableError
from latbench.measure import TimingSettings
from latbench.store import FORMAT_VERSION, LatencyTable
from latbench.tablemeta import CalibrationEntry, CompanionEntry, CompanionSample, RunSettings, migrate_meta

FIXTURE = Path(__file__).parent / "fixtures" / "table-v1.sqlite"


def stored(path: Path) -> tuple[dict, list[dict]]:
    """The meta entries and the ok rows' settings of a table file, read with sqlite3 alone."""
    conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        meta = {n: json.loads(v) for n, v in conn.execute("SELECT name, value FROM meta")}
        settings = [json.loads(s) for (s,) in conn.execute("SELECT settings FROM measurements WHERE status = 'ok'")]
    finally:
        conn.close()
    return meta, settings


def set_meta(path: Path, **entries) -> None:
    """Write raw meta entries with sqlite3, as another latbench version would have."""
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany("INSERT OR REPLACE INTO meta(name, value) VALUES (?, ?)",
                         [(k, json.dumps(v)) for k, v in entries.items()])
    conn.close()


@pytest.fixture(scope="module")
def old() -> tuple[dict, list[dict]]:
    return stored(FIXTURE)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    p = tmp_path / "t.sqlite"
    shutil.copy(FIXTURE, p)
    return p


def check_typed(t: LatencyTable, meta: dict, settings: list[dict]) -> None:
    """Every typed field of `t` against the values the fixture stores."""
    run, want = t.run_settings, meta["profile_run"]
    assert run == RunSettings(want["granularity"], want["fusion"], tuple(want["spaces"]), want["context"],
                              want["context_bytes"], want["estimator"])
    assert (run.granularity, run.spaces, run.context, run.estimator) == ("block", ("tiny",), "network", "mean")
    inv, want = t.invocation, meta["invocation"]
    for f in ("estimate_ms", "status", "estimator", "combine", "key", "op", "profile_id", "taken_at"):
        assert getattr(inv, f) == want.get(f), f
    assert inv.error is None and inv.timing == TimingSettings.from_dict(want["timing"])
    assert len(inv.samples) == len(want["samples"]) == 4
    for got, w in zip(inv.samples, want["samples"]):
        assert (got.estimate_ms, got.status, got.error, got.taken_at) == \
            (w["estimate_ms"], w["status"], w["error"], w["taken_at"])
        assert got.round_medians == tuple(w["round_medians"]) and got.stats == w["stats"]
    assert t.reference.estimate_ms == meta["reference"]["estimate_ms"]
    cal, want = t.calibration("tiny", "block"), meta["calibration"]["tiny/block"]
    assert list(meta["calibration"]) == ["tiny/block"] and list(t.calibrations()) == ["tiny/block"]
    for f in ("scale", "offset_ms", "n", "space", "granularity", "form", "profile_id", "taken_at", "seed",
              "in_sample", "uncalibrated", "yardstick"):
        assert getattr(cal, f) == want[f], f
    assert cal.resolutions == (24,) and cal.form == "offset" and cal.other == {}
    assert cal.apply(2.0) == pytest.approx(want["scale"] * 2.0 + want["offset_ms"])
    assert t.calibration("tiny", "op") is None and t.calibration("other", "block") is None
    assert t.timing == TimingSettings.from_dict(settings[0]["timing"])
    assert t.timing.rounds == 10 and t.timing.interleave == 24 and t.timing.context_bytes == want_bytes(meta)


def want_bytes(meta: dict) -> int:
    return meta["profile_run"]["context_bytes"]


def test_the_fixture_is_a_version_1_table_with_every_entry(old):
    meta, settings = old
    assert meta["version"] == 1 and FORMAT_VERSION == 2
    assert {"profile", "profile_run", "invocation", "reference", "calibration"} <= set(meta)
    assert len(settings) == 24 and all(s["timing"] == settings[0]["timing"] for s in settings)
    assert FIXTURE.stat().st_size < 200_000 and not Path(f"{FIXTURE}-wal").exists()


def test_read_only_open_reads_through_the_migration_and_writes_nothing(old):
    before = hashlib.sha256(FIXTURE.read_bytes()).hexdigest()
    with LatencyTable.open(FIXTURE, readonly=True) as t:
        check_typed(t, *old)
        assert len(t) == 24 and t.profile.id == old[0]["profile"]["id"]
    assert hashlib.sha256(FIXTURE.read_bytes()).hexdigest() == before
    assert not [p for p in FIXTURE.parent.iterdir() if p.name.startswith(FIXTURE.name + "-")]


def test_writable_open_upgrades_in_place(copy: Path, old):
    with LatencyTable.open(copy) as t:
        check_typed(t, *old)
    meta, _ = stored(copy)
    assert meta["version"] == FORMAT_VERSION
    # this release wrote every entry in its newest shape: only the version changes
    assert {k: v for k, v in meta.items() if k != "version"} == {k: v for k, v in old[0].items() if k != "version"}
    with LatencyTable.open(copy) as t:  # opened again: nothing left to migrate
        check_typed(t, *old)


def older_shapes(path: Path, meta: dict) -> None:
    """The fixture's entries as older version-1 tables hold them: run settings without a cache
    context, the per-call cost held flat, a calibration without form, space and granularity."""
    run = {k: v for k, v in meta["profile_run"].items() if k not in ("context", "context_bytes")}
    inv = {k: v for k, v in meta["invocation"].items() if k != "samples"}
    inv.update(stats={"median": 0.005, "n": 40}, round_medians=[0.005, 0.006])
    cal = {k: v for k, v in meta["calibration"]["tiny/block"].items() if k not in ("form", "space", "granularity")}
    set_meta(path, profile_run=run, invocation=inv, calibration={"tiny/block": cal})


@pytest.mark.parametrize("readonly", [True, False])
def test_older_version_1_shapes_are_migrated(copy: Path, old, readonly: bool):
    older_shapes(copy, old[0])
    with LatencyTable.open(copy, readonly=readonly) as t:
        run, inv, cal = t.run_settings, t.invocation, t.calibration("tiny", "block")
        assert (run.context, run.context_bytes) == ("warm", 0)  # before contexts were recorded: warm
        assert len(inv.samples) == 1 and inv.samples[0].stats == {"median": 0.005, "n": 40}
        assert inv.samples[0].estimate_ms == inv.estimate_ms and inv.samples[0].round_medians == (0.005, 0.006)
        assert (cal.form, cal.space, cal.granularity) == ("scale+offset", "tiny", "block")
        assert t.meta_get("profile_run")["context"] == "warm" == t.meta()["profile_run"]["context"]
    meta, _ = stored(copy)
    if readonly:
        assert meta["version"] == 1 and "context" not in meta["profile_run"] and "samples" not in meta["invocation"]
    else:
        assert meta["version"] == 2 and meta["profile_run"]["context"] == "warm"
        assert meta["invocation"]["samples"][0]["stats"] == {"median": 0.005, "n": 40}
        assert meta["calibration"]["tiny/block"]["form"] == "scale+offset"


def test_migration_of_a_current_version_changes_nothing(old):
    assert migrate_meta(old[0], FORMAT_VERSION) == {}
    assert migrate_meta(old[0], 1) == {}  # the fixture's entries are in their newest shape


@pytest.mark.parametrize("readonly", [True, False])
def test_a_newer_version_is_refused_in_one_line_naming_the_file(copy: Path, readonly: bool):
    set_meta(copy, version=FORMAT_VERSION + 1)
    with pytest.raises(FormatError) as e:
        LatencyTable.open(copy, readonly=readonly)
    msg = str(e.value)
    assert "\n" not in msg and str(copy) in msg and f"version {FORMAT_VERSION + 1}" in msg and "upgrade" in msg


def test_each_dataclass_round_trips(copy: Path, old):
    with LatencyTable.open(copy) as t:
        run, inv, ref, cal = t.run_settings, t.invocation, t.reference, t.calibration("tiny", "block")
        meta = old[0]
        assert (run.to_dict(), inv.to_dict(), ref.to_dict(), cal.to_dict()) == \
            (meta["profile_run"], meta["invocation"], meta["reference"], meta["calibration"]["tiny/block"])
        for x in (run, inv, ref, cal, *inv.samples):
            assert type(x).from_dict(x.to_dict()) == x
            assert json.loads(json.dumps(x.to_dict())) == x.to_dict()  # plain JSON
        new_run = dataclasses.replace(run, spaces=("tiny", "other"), other={"note": 1})
        t.set_run_settings(new_run)
        assert t.run_settings == new_run and t.meta_get("profile_run") == new_run.to_dict()
        assert t.meta_get("profile_run")["spaces"] == ["tiny", "other"] and t.meta_get("profile_run")["note"] == 1
        mine = CalibrationEntry(scale=1.5, offset_ms=0.1, n=4, space="tiny", granularity="op", form="scale+offset",
                                seed=3, resolutions=(24, 32))
        t.set_calibration(mine)
        assert t.calibration("tiny", "op") == mine and t.calibration("tiny", "block") == cal  # others kept
        assert t.meta_get("calibration")["tiny/op"]["resolutions"] == [24, 32]
        fresh = CompanionEntry(estimate_ms=0.01, status="ok", estimator="mean",
                               samples=(CompanionSample(estimate_ms=0.01, stats={"mean": 0.01, "n": 20}),))
        t.set_invocation(fresh)
        assert t.invocation == fresh and t.meta_get("invocation") == {
            "estimate_ms": 0.01, "status": "ok", "estimator": "mean", "samples": [{"estimate_ms": 0.01,
                                                                                   "stats": {"mean": 0.01, "n": 20}}]}
    with LatencyTable.open(copy, readonly=True) as t:  # stored, not cached
        assert t.run_settings == new_run and t.calibration("tiny", "op") == mine and t.invocation == fresh


def test_an_entry_of_the_wrong_shape_is_one_line_naming_file_and_entry(copy: Path):
    set_meta(copy, profile_run={"fusion": "none"}, invocation={"estimate_ms": "fast"}, calibration=[1])
    with LatencyTable.open(copy) as t:
        for read, words in ((lambda: t.run_settings, "meta profile_run: has no granularity"),
                            (lambda: t.invocation, "meta invocation: estimate_ms 'fast' cannot be read"),
                            (lambda: t.calibration("tiny", "block"), "meta calibration must be a JSON object")):
            with pytest.raises(TableError) as e:
                read()
            assert str(copy) in str(e.value) and words in str(e.value) and "\n" not in str(e.value)


def test_a_table_without_metadata_reads_none(tmp_path: Path):
    from test_store import PROFILE, measurement

    with LatencyTable.open(tmp_path / "n.sqlite", PROFILE) as t:
        assert (t.run_settings, t.invocation, t.reference, t.timing, t.calibrations()) == (None, None, None, None, {})
        t.add(measurement(O.activation((1, 2, 4, 4), "relu"), 1.0))  # rows without timing settings
        assert t.timing is None and t.meta_get("version") == FORMAT_VERSION


def test_timing_is_the_most_common_rows_timing(copy: Path):
    from test_store import measurement

    other = TimingSettings(rounds=3, estimator="mean")
    with LatencyTable.open(copy) as t:
        want, theirs = t.timing, sorted(t.keys())
        for i in range(3):
            m = measurement(O.activation((1, i + 1, 4, 4), "relu"), 1.0, t.profile)
            t.add(dataclasses.replace(m, settings={"timing": other.to_dict()}))
        assert t.timing == want  # 24 rows against 3
        conn = sqlite3.connect(copy)
        with conn:
            conn.executemany("DELETE FROM measurements WHERE key = ?", [(k,) for k in theirs[:22]])
        conn.close()
        assert t.timing == other  # 3 rows against 2


def test_row_queries_of_the_store(copy: Path):
    with LatencyTable.open(copy, readonly=True) as t:
        assert t.extra_values("resolutions") == {24} and t.extra_values("nothing") == set()
        some = list(t.rows(status="ok", columns=("estimator", "extra"), extra_keys=("reference_ms",)))
        assert some and all(set(r) == {"key", "estimator", "extra"} and "reference_ms" in r["extra"] for r in some)
        assert list(t.rows(extra_keys=("by_resolution",))) == []
        with pytest.raises(Exception, match="unknown column"):
            list(t.rows(columns=("nope",)))


def test_an_export_of_a_version_1_table_is_migrated_when_imported(tmp_path: Path, old):
    """A JSONL file written by the release before (header version 1, its entries in older shapes)
    imports with its meta as this version holds it."""
    from latbench.formats import export_jsonl, import_jsonl

    with LatencyTable.open(FIXTURE, readonly=True) as t:
        export_jsonl(t, tmp_path / "x.jsonl")
    head, *rows = (tmp_path / "x.jsonl").read_text().splitlines()
    header = json.loads(head)
    header["version"] = 1
    header["meta"]["profile_run"].pop("context")
    header["meta"]["invocation"].pop("samples")
    (tmp_path / "x.jsonl").write_text("\n".join([json.dumps(header), *rows]) + "\n")
    with LatencyTable.open(tmp_path / "back.sqlite") as t:
        import_jsonl(tmp_path / "x.jsonl", t)
        assert t.run_settings.context == "warm" and len(t.invocation.samples) == 1
        assert t.invocation.estimate_ms == old[0]["invocation"]["estimate_ms"] and len(t) == 24


def test_an_export_of_a_newer_version_is_refused_in_one_line(tmp_path: Path):
    from latbench.formats import export_jsonl, import_jsonl

    with LatencyTable.open(FIXTURE, readonly=True) as t:
        export_jsonl(t, tmp_path / "x.jsonl")
    head, *rows = (tmp_path / "x.jsonl").read_text().splitlines()
    (tmp_path / "x.jsonl").write_text("\n".join([json.dumps({**json.loads(head), "version": FORMAT_VERSION + 1}),
                                                 *rows]) + "\n")
    with LatencyTable.open(tmp_path / "back.sqlite") as t, pytest.raises(FormatError) as e:
        import_jsonl(tmp_path / "x.jsonl", t)
    assert str(e.value) == (f"{tmp_path / 'x.jsonl'}:1: format version {FORMAT_VERSION + 1} is newer than this "
                            f"latbench reads (<= {FORMAT_VERSION}); upgrade latbench")


def test_backup_copies_the_table_as_it_is(tmp_path: Path, old):
    with LatencyTable.open(FIXTURE, readonly=True) as t:
        t.backup(tmp_path / "copy.sqlite")
        rows, meta = list(t.rows()), t.meta()
    with LatencyTable.open(tmp_path / "copy.sqlite", readonly=True) as c:
        assert list(c.rows()) == rows and c.meta() == meta and len(c) == 24
    assert stored(tmp_path / "copy.sqlite")[0]["version"] == 1  # a copy, not a migration

"""Once-for-All tables across resolutions: a hand-written two-resolution table whose shared keys
differ per file, imported in either order, prices every config exactly as OFA's LatencyTable
(the file of the config's own resolution); batch, explain, search and `table show` agree; the
space is recorded; OFA YAML export gives each file back and then prices as the table does."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_result import run_cli

from latbench.cli.table import _note, _row_view
from latbench.coverage import BY_RESOLUTION, table_values
from latbench.errors import FormatError, UsageError
from latbench.formats import export_ofa_yaml, import_ofa_yaml, import_profile
from latbench.formats.ofa import ofa_predict_efficiency, parse_ofa_key, read_ofa_yaml
from latbench.measure import Measurement, Stats
from latbench.predict import Predictor
from latbench.search import run_search
from latbench.spaces import get_space
from latbench.store import LatencyTable
from latbench.tablemeta import CalibrationEntry, CompanionEntry, RunSettings

SPACE = "ofa-mbv3-w12"  # the space of OFA's published Note10 tables
RES = (176, 192)  # both end in 6x6 maps: the last stage's blocks are shared keys, as Conv_2 and Logits are


def isclose(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-12)


def configs_at(space, resolution: int, n: int, seed: int) -> np.ndarray:
    cfgs = space.sample(seed, n)
    cfgs[:, space.resolution_position] = space.positions[space.resolution_position].choices.index(resolution)
    return cfgs


@pytest.fixture(scope="module")
def ofa_files(tmp_path_factory):
    """One {r}_lookup_table.yaml per resolution, every block of the space at r, each with its
    own random numbers (so keys in both files differ), and {r: {key: mean}} for OFA's sums."""
    space = get_space(SPACE)
    d = tmp_path_factory.mktemp("ofa")
    rng = np.random.default_rng(7)
    luts, paths = {}, {}
    for r in RES:
        doc = {b.key: {"count": int(rng.integers(20, 100)), "mean": float(rng.uniform(0.05, 3.0)),
                       "std": float(rng.uniform(0.001, 0.05))} for b in space.enumerate_blocks([r])}
        paths[r] = d / f"{r}_lookup_table.yaml"
        paths[r].write_text(yaml.safe_dump(doc))
        luts[r] = {k: v["mean"] for k, v in doc.items()}
    shared = set(luts[RES[0]]) & set(luts[RES[1]])
    return space, paths, luts, shared


def imported(tmp_path: Path, paths, order) -> Path:
    out = tmp_path / f"t{''.join(map(str, order))}.db"
    with LatencyTable.open(out, import_profile("note10", "tflite")) as t:
        import_ofa_yaml([paths[r] for r in order], t)
    return out


@pytest.fixture(scope="module")
def priced(ofa_files, tmp_path_factory):
    """(table, its Predictor) of the files imported in `order`, made once for the module: the
    tests that take them only read them."""
    space, paths, _, _ = ofa_files
    where = tmp_path_factory.mktemp("imported")
    cache: dict[tuple, tuple[Path, Predictor]] = {}

    def get(order: tuple) -> tuple[Path, Predictor]:
        if order not in cache:
            path = imported(where, paths, order)
            with LatencyTable.open(path, readonly=True) as t:
                cache[order] = path, Predictor.from_table(t, space)
        return cache[order]

    return get


def test_shared_keys_are_conv2_logits_and_6x6_blocks(ofa_files):
    """The fixture is what the test needs: every shared key differs between the two files."""
    space, paths, luts, shared = ofa_files
    kinds = {k.split("-")[0] for k in shared}
    assert {"Conv_2", "Logits", "expanded_conv", "Conv_1", "AvgPool2D"} <= kinds
    assert any(k.startswith("expanded_conv-input:6x6x") for k in shared)
    assert all(luts[176][k] != luts[192][k] for k in shared)


@pytest.mark.parametrize("order", [RES, RES[::-1]])
def test_every_price_is_ofas_for_the_configs_resolution(priced, ofa_files, order):
    """predict, explain and predict_batch equal OFA's LatencyTable.predict_efficiency for many
    random configs at both resolutions, whichever file was imported first."""
    space, paths, luts, shared = ofa_files
    path, pred = priced(order)
    with LatencyTable.open(path, readonly=True) as t:
        per = table_values(t)
        assert set(per) == shared and all(set(v) == set(RES) for v in per.values())
    assert pred.covered_resolutions == RES and pred._risk is not None
    for r in RES:
        cfgs = configs_at(space, r, 150, seed=r)
        batch = pred.predict_batch(cfgs)
        for c, b in zip(cfgs, batch):
            spec = space.to_published(c)
            theirs = ofa_predict_efficiency(luts, spec, space)
            assert isclose(pred.predict(spec), theirs)
            assert isclose(b, theirs)
            why = pred.explain(c)
            assert isclose(why.raw_ms, theirs) and not why.misses


def test_file_order_changes_nothing(priced, ofa_files):
    """Both import orders give the same rows, so the same prices to the last bit."""
    space, paths, luts, _ = ofa_files
    (a, pred_a), (b, pred_b) = priced(RES), priced(RES[::-1])
    with LatencyTable.open(a, readonly=True) as ta, LatencyTable.open(b, readonly=True) as tb:
        rows_a = [(r["key"], r["estimate"], r["n"], r["std"], r["extra"], r["source"]) for r in ta.rows()]
        rows_b = [(r["key"], r["estimate"], r["n"], r["std"], r["extra"], r["source"]) for r in tb.rows()]
        assert rows_a == rows_b
        cfgs = np.vstack([configs_at(space, r, 50, seed=3) for r in RES])
        np.testing.assert_array_equal(pred_a.predict_batch(cfgs), pred_b.predict_batch(cfgs))
        row = ta.row(next(k for k in table_values(ta) if k.startswith("Logits")))
    assert row["estimate"] == luts[176][row["key"]]  # the lowest resolution's entry in the columns
    assert row["extra"][BY_RESOLUTION]["192"]["estimate"] == luts[192][row["key"]]


def test_search_winner_latency_is_ofas_price(cli, priced, ofa_files):
    """An evolution winner (library and CLI) reports the price OFA gives it, and meets the budget
    by OFA's own price."""
    space, paths, luts, _ = ofa_files
    path, pred = priced(RES[::-1])
    prices = pred.predict_batch(np.vstack([configs_at(space, r, 200, seed=5) for r in RES]))
    budget = float(np.median(prices))
    for seed in (1, 2):
        res = run_search(space, {"note10": pred}, {"note10": budget}, "flops", "evolution", seed=seed,
                         choices={"r": list(RES)}, generations=15, population=40)
        theirs = ofa_predict_efficiency(luts, res.published, space)
        assert isclose(res.latency_ms["note10"], theirs) and theirs <= budget
    cp = run_cli(cli, "search", "--space", SPACE, "--table", str(path), "-b", f"{budget:.6f}", "-g", "10",
                      "--json")
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["config"]["r"][0] in RES and "searching the resolutions every table covers: 176, 192" in cp.stderr
    assert isclose(doc["latency_ms"], ofa_predict_efficiency(luts, doc["config"], space))


def test_tables_imported_before_price_each_resolution_too(tmp_path, ofa_files):
    """A table an earlier latbench imported (first file's entry in the row, the others' in
    extra["ofa_by_resolution"]) is priced with each resolution's entry as well."""
    space, paths, luts, _ = ofa_files
    docs = {r: read_ofa_yaml(paths[r]) for r in RES}
    prof = import_profile("note10", "tflite")
    with LatencyTable.open(tmp_path / "old.db", prof) as t:
        for key in set(docs[176]) | set(docs[192]):
            rs = [r for r in RES if key in docs[r]]
            first = docs[rs[0]][key]
            extra = {"resolutions": rs}
            if len(rs) == 2:
                extra["ofa_by_resolution"] = {"192": docs[192][key]}
            stats = Stats(math.nan, math.nan, math.nan, math.nan, math.nan, first["mean"], first["std"], first["count"])
            t.add(Measurement(key, prof.id, parse_ofa_key(key).to_dict(), stats, extra=extra),
                  source=f"ofa-yaml:{rs[0]}_lookup_table.yaml", estimator="mean", estimate=first["mean"])
        pred = Predictor.from_table(t, space)
    for r in RES:
        for c in configs_at(space, r, 20, seed=11):
            assert isclose(pred.predict(c), ofa_predict_efficiency(luts, space.to_published(c), space))


def test_import_records_the_space_inferred_or_given(cli, tmp_path, ofa_files):
    """The stem Conv (24 channels) and Logits input (1536) name ofa-mbv3-w12; the summary says it
    was inferred; --space is checked against the keys; another space's files are refused."""
    space, paths, _, _ = ofa_files
    cp = run_cli(cli, "table", "import", str(paths[176]), str(paths[192]), "-o", str(tmp_path / "a.db"),
                      "--device", "note10")
    assert cp.returncode == 0, cp.stderr
    assert ("space ofa-mbv3-w12 (inferred from the stem Conv output (24 channels) and the Logits input "
            "(1536))") in cp.stderr
    with LatencyTable.open(tmp_path / "a.db", create=False) as t:
        assert t.meta_get("space")["name"] == SPACE
    cp = run_cli(cli, "table", "import", str(paths[176]), "-o", str(tmp_path / "b.db"), "--device", "note10",
                      "--space", SPACE)
    assert cp.returncode == 0 and "space ofa-mbv3-w12 (given with --space)" in cp.stderr
    cp = run_cli(cli, "table", "import", str(paths[176]), "-o", str(tmp_path / "c.db"), "--device", "note10",
                      "--space", "ofa-mbv3-w10")
    assert cp.returncode == 2 and not (tmp_path / "c.db").exists()
    assert cp.stderr == ("latbench: error: --space ofa-mbv3-w10: the files have the stem Conv output (24 channels) "
                         "and the Logits input (1536); ofa-mbv3-w10 has a stem of 16 channels and a Logits input "
                         "of 1280\n")
    w10 = get_space("ofa-mbv3-w10")
    other = tmp_path / "160_lookup_table.yaml"
    other.write_text(yaml.safe_dump({b.key: {"mean": 0.5} for b in w10.enumerate_blocks([160])}))
    with LatencyTable.open(tmp_path / "a.db", create=False) as t, pytest.raises(UsageError, match="holds numbers of"):
        import_ofa_yaml([other], t)


def test_import_takes_the_directory_export_writes(cli, tmp_path):
    """`table import DIR` reads the {r}_lookup_table.yaml files in it (what `table export -f
    ofa-yaml -o DIR` writes) and prices as the source; a directory without them, and a path that
    is not a regular file, are one line each."""
    space = get_space("ofa-mbv3-w10")
    src = block_table(tmp_path / "src.db", space, (160, 176), 0.004)
    out = tmp_path / "yaml"
    assert run_cli(cli, "table", "export", str(src), "-f", "ofa-yaml", "-o", str(out)).returncode == 0
    cp = run_cli(cli, "table", "import", str(out), "-o", str(tmp_path / "back.db"), "--device", "host")
    assert cp.returncode == 0, cp.stderr
    np.testing.assert_allclose(prices(tmp_path / "back.db", space, (160, 176)), prices(src, space, (160, 176)),
                               rtol=1e-12)
    (tmp_path / "empty").mkdir()
    cp = run_cli(cli, "table", "import", str(tmp_path / "empty"), "-o", str(tmp_path / "x.db"), "--device", "d")
    assert cp.returncode == 2 and "is a directory with no .yaml files" in cp.stderr
    cp = run_cli(cli, "table", "import", "/dev/null", "-f", "csv", "-o", str(tmp_path / "x.db"))
    assert cp.returncode == 2 and cp.stderr == "latbench: error: not a regular file: /dev/null\n"


def test_a_stem_of_another_resolution_is_refused(tmp_path):
    """A 128_lookup_table.yaml holding the stem Conv of 160 is a mislabelled file: refused naming it."""
    w10 = get_space("ofa-mbv3-w10")
    bad = tmp_path / "128_lookup_table.yaml"
    bad.write_text(yaml.safe_dump({b.key: {"mean": 0.5} for b in w10.enumerate_blocks([160])}))
    stem = next(b.key for b in w10.enumerate_blocks([160]) if b.key.startswith("Conv-"))
    with LatencyTable.open(tmp_path / "t.db", import_profile("host")) as t:
        with pytest.raises(FormatError, match=rf"128_lookup_table.yaml: {stem} is the stem of resolution 160, "
                                              rf"but the file is named for resolution 128"):
            import_ofa_yaml([bad], t)
        assert len(t) == 0


def test_two_files_of_one_resolution_must_agree(tmp_path, ofa_files):
    """Two files for one resolution with different numbers: one line naming both, no guess."""
    space, paths, _, _ = ofa_files
    twin = tmp_path / "dup" / "176_lookup_table.yaml"
    twin.parent.mkdir()
    doc = yaml.safe_load(paths[176].read_text())
    key = next(iter(doc))
    doc[key]["mean"] += 1.0
    twin.write_text(yaml.safe_dump(doc))
    with LatencyTable.open(tmp_path / "t.db", import_profile("x")) as t:
        with pytest.raises(FormatError, match=rf"176_lookup_table.yaml and 176_lookup_table.yaml \(resolution "
                                              rf"176\) give {key} different numbers"):
            import_ofa_yaml([paths[176], twin], t)


def test_table_show_prints_each_resolutions_value(cli, priced, ofa_files):
    space, paths, luts, shared = ofa_files
    path, _ = priced(RES)
    key = next(k for k in sorted(shared) if k.startswith("Conv_2"))
    cp = run_cli(cli, "table", "show", str(path), "--json")
    assert cp.returncode == 0, cp.stderr
    rows = {r["key"]: r for r in json.loads(cp.stdout)["rows"]}
    per = rows[key]["by_resolution"]
    assert set(per) == {"176", "192"} and [per[str(r)]["estimate"] for r in RES] == [luts[r][key] for r in RES]
    alone = next(k for k in rows if k not in shared)
    assert rows[alone]["by_resolution"] is None and rows[alone]["hot"] is False
    with LatencyTable.open(path, create=False) as t:
        note = _note(_row_view(t.row(key)))
    assert note == f"per resolution: 176 {luts[176][key]:.4g}, 192 {luts[192][key]:.4g}"
    cp = run_cli(cli, "table", "show", str(path), "--kind", "conv", "--limit", "0")
    assert cp.returncode == 0 and "space: ofa-mbv3-w12 (inferred from" in cp.stdout
    assert cp.stdout.count("per resolution") == sum(k.startswith(("Conv_1", "Conv_2")) for k in shared)


def test_table_show_marks_rows_measured_hot(cli, tmp_path):
    """A row whose extra says hot (the Android agent's flag) shows `hot`, and "hot": true in --json."""
    space = get_space("tiny")
    prof = import_profile("phone")
    a, b = space.enumerate_blocks()[:2]
    with LatencyTable.open(tmp_path / "t.db", prof) as t:
        t.add(Measurement(a.key, prof.id, a.to_dict(), Stats.from_samples([0.5, 0.6, 0.55]), extra={"hot": True}))
        t.add(Measurement(b.key, prof.id, b.to_dict(), Stats.from_samples([0.5, 0.6, 0.55])))
    cp = run_cli(cli, "table", "show", str(tmp_path / "t.db"), "--json")
    rows = {r["key"]: r for r in json.loads(cp.stdout)["rows"]}
    assert rows[a.key]["hot"] is True and rows[b.key]["hot"] is False
    cp = run_cli(cli, "table", "show", str(tmp_path / "t.db"))
    assert cp.returncode == 0 and len([ln for ln in cp.stdout.splitlines() if ln.rstrip().endswith(" hot")]) == 1
    with LatencyTable.open(tmp_path / "t.db", create=False) as t:
        assert _note(_row_view(t.row(a.key))) == "hot" and _note(_row_view(t.row(b.key))) == ""


# ---------------------------------------------------------------------- export then import
def block_table(path: Path, space, resolutions, invocation: float | None = None, seed: int = 0,
                small: str | None = None) -> Path:
    """A table as `profile` makes one: every block at the resolutions, median of skewed samples
    (so mean != estimate), each row listing the resolutions it belongs to; keys starting with
    `small` a quarter of the per-call cost (a global pool faster than a call)."""
    where: dict[str, list[int]] = {}
    ops = {}
    for r in resolutions:
        for b in space.enumerate_blocks([r]):
            where.setdefault(b.key, []).append(r)
            ops[b.key] = b
    rng = np.random.default_rng(seed)
    prof = import_profile("host", "onnxruntime", 1)
    with LatencyTable.open(path, prof) as t:
        rows = []
        for key, b in ops.items():
            base = float(rng.uniform(0.05, 2.0))
            if small and key.startswith(small):
                base = invocation / 4
            samples = [base, base * 1.01, base * 1.02, base * 1.6, base * 2.5]
            rows.append(Measurement(key, prof.id, b.to_dict(), Stats.from_samples(samples),
                                    extra={"resolutions": where[key]}))
        t.add_many(rows)
        t.set_run_settings(RunSettings("block", spaces=(space.name,)))
        if invocation is not None:
            t.set_invocation(CompanionEntry(estimate_ms=invocation))
    return path


def prices(path: Path | Predictor, space, resolutions, n: int = 60) -> np.ndarray:
    """A table's (or its predictor's) prices of n configs at each resolution."""
    pred = path
    if not isinstance(path, Predictor):
        with LatencyTable.open(path, readonly=True) as t:
            pred = Predictor.from_table(t, space)
    cfgs = np.vstack([configs_at(space, r, n, seed=r + 1) for r in resolutions])
    return pred.predict_batch(cfgs)


def round_trip(tmp_path: Path, src: Path) -> Path:
    out = tmp_path / "yaml"
    with LatencyTable.open(src, readonly=True) as t:
        res = export_ofa_yaml(t, out)
    back = tmp_path / "back.db"
    with LatencyTable.open(back, import_profile("host")) as t:
        import_ofa_yaml(res.files, t)
    return back


@pytest.mark.parametrize("invocation,small", [(None, None), (0.004, None), (0.004, "AvgPool2D-"), (0.5, None)])
def test_export_then_import_keeps_every_prediction(tmp_path, invocation, small):
    """A measured block table (median estimates, with and without a per-call cost) priced the same
    after OFA YAML and back; OFA's plain sum over the files is that price too. An entry below the
    per-call cost (a global pool faster than a call; at 0.5 ms, many blocks) holds 0, as latbench
    prices it: no entry is negative."""
    space = get_space("ofa-mbv3-w10")
    src = block_table(tmp_path / "src.db", space, (160, 176), invocation, small=small)
    back = round_trip(tmp_path, src)
    luts = {r: {k: v["mean"] for k, v in read_ofa_yaml(tmp_path / "yaml" / f"{r}_lookup_table.yaml").items()}
            for r in (160, 176)}
    assert all(v >= 0 for lut in luts.values() for v in lut.values())
    pools = [v for lut in luts.values() for k, v in lut.items() if k.startswith("AvgPool2D-")]
    assert len(pools) == 2 and (not small or all(v == 0 for v in pools))
    with LatencyTable.open(src, readonly=True) as t:
        pred = Predictor.from_table(t, space)
        np.testing.assert_allclose(prices(back, space, (160, 176)), prices(pred, space, (160, 176)), rtol=1e-12)
        for r in (160, 176):
            for c in configs_at(space, r, 20, seed=9):
                assert isclose(ofa_predict_efficiency(luts, space.to_published(c), space), pred.predict(c))
        row = next(t.rows(kind="mbconv"))
    assert row["mean"] != row["estimate"]
    text = (tmp_path / "yaml" / "160_lookup_table.yaml").read_text()
    assert text.startswith("# Once-for-All LatencyTable for resolution 160, exported by latbench")
    assert "mean: the estimate latbench predicts with" in text and "estimator: median" in text
    assert ("every entry but the stem Conv one" in text) == (invocation is not None)


def test_per_resolution_values_round_trip_file_by_file(tmp_path, priced, ofa_files):
    """An imported two-resolution table exported gives each file back its own numbers, and the
    re-imported table prices as the first at both resolutions."""
    space, paths, luts, _ = ofa_files
    src, pred = priced(RES)
    back = round_trip(tmp_path, src)
    for r in RES:
        again = read_ofa_yaml(tmp_path / "yaml" / f"{r}_lookup_table.yaml")
        assert again == read_ofa_yaml(paths[r])
    np.testing.assert_array_equal(prices(back, space, RES), prices(pred, space, RES))


def test_calibrated_table_is_refused_unless_dropped(cli, tmp_path):
    """OFA YAML has no place for a calibration: one line naming it and the formats that keep it."""
    space = get_space("ofa-mbv3-w10")
    src = block_table(tmp_path / "src.db", space, (160,))
    with LatencyTable.open(src) as t:
        t.set_calibration(CalibrationEntry(scale=1.1, offset_ms=0.2, n=10, space="ofa-mbv3-w10", granularity="block"))
    cp = run_cli(cli, "table", "export", str(src), "--format", "ofa-yaml", "-o", str(tmp_path / "y"))
    assert cp.returncode == 1 and not (tmp_path / "y").exists()
    assert cp.stderr == (f"latbench: error: {src}: OFA YAML cannot hold the table's calibration "
                         f"(ofa-mbv3-w10/block); csv or jsonl keep it (--drop-calibration leaves it out)\n")
    with LatencyTable.open(src, create=False) as t:
        res = export_ofa_yaml(t, tmp_path / "y", drop_calibration=True)
    assert res.files and "calibration ofa-mbv3-w10/block left out" in res.notes[0]
    assert "calibration ofa-mbv3-w10/block left out" in (tmp_path / "y" / "160_lookup_table.yaml").read_text()


def test_export_refuses_what_ofa_yaml_cannot_hold(tmp_path, priced):
    """Per-resolution values into one file are refused."""
    with LatencyTable.open(priced(RES)[0], readonly=True) as t:
        with pytest.raises(FormatError, match="has one value per resolution .* export to a directory"):
            export_ofa_yaml(t, tmp_path / "one.yaml")

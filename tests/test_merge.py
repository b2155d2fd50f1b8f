"""`table merge` puts tables of one device profile together and says what happened to each key;
another profile is refused, never relabelled. `table combine` makes a NEW table of several
devices whose profile names them, every row keeping the profile that measured it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_roundtrip import build
from test_store import OTHER, PROFILE, failed, measurement

from latbench import ops as O
from latbench.combine import COMBINED_AGENT, combine
from latbench.merge import merge
from latbench.predict import Predictor
from latbench.spaces import get_space
from latbench.store import LatencyTable, ProfileMismatchError
from latbench.tablemeta import CompanionEntry, RunSettings

ACTS = [O.activation((1, c, 4, 4), "relu") for c in range(1, 31)]
TAIL = "left as they were (a failed row never replaces an ok one; an identical row changes nothing)"


def table_of(path: Path, rows, profile=PROFILE) -> Path:
    with LatencyTable.open(path, profile) as t:
        for r in rows:
            t.add(r)
    return path


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    """A table of PROFILE with ten ok rows and one failed row."""
    return table_of(tmp_path / "t.db", [measurement(op, 0.1 + i) for i, op in enumerate(ACTS[20:30])]
                    + [failed(ACTS[19])])


def snapshot(path: Path):
    with LatencyTable.open(path, readonly=True) as t:
        return list(t.rows()), t.meta(), t.profile


# ---------------------------------------------------------------------- merge: one profile
def test_merge_of_another_profile_is_refused_naming_both_and_changes_nothing(tmp_path: Path, filled: Path):
    same = table_of(tmp_path / "same.db", [measurement(ACTS[0], 3.0)])
    other = table_of(tmp_path / "other.db", [measurement(ACTS[1], 2.0, profile=OTHER)], OTHER)
    before = snapshot(filled)
    with LatencyTable.open(filled) as d:
        with pytest.raises(ProfileMismatchError) as e:
            merge(d, [same, other])  # every profile is checked before any row is copied
    msg = str(e.value)
    assert msg.startswith(f"cannot merge {other} into {filled}: ") and "\n" not in msg
    assert PROFILE.describe() in msg and OTHER.describe() in msg and "threads: 1 != 4" in msg
    assert "latbench table combine" in msg
    assert snapshot(filled) == before


def test_merge_counts_distinct_keys_added_replaced_left(cli, tmp_path: Path):
    """Two sources of the same 24 keys make 24 rows, said so; then 6 new keys, 12 new numbers,
    6 failed rows that do not replace ok ones and 3 identical rows are counted as such."""
    a = table_of(tmp_path / "a.db", [measurement(op, 1.0 + i) for i, op in enumerate(ACTS[:24])])
    a2 = table_of(tmp_path / "a2.db", [measurement(op, 50.0 + i) for i, op in enumerate(ACTS[:24])])
    dst = tmp_path / "dst.db"
    code, _, err = cli("table", "merge", str(dst), str(a), str(a2))
    assert code == 0, err
    assert err == f"{a}, {a2} -> {dst}: 24 rows added, 0 replaced, 0 {TAIL}; the table holds 24 ok, 0 failed\n"
    with LatencyTable.open(dst, readonly=True) as t:  # the later source's numbers
        assert t.estimate(ACTS[0].key) == pytest.approx(50.0) and len(t) == 24
    b = table_of(tmp_path / "b.db",
                 [measurement(op, 100.0 + i) for i, op in enumerate(ACTS[:12])]
                 + [failed(op) for op in ACTS[12:18]]
                 + [measurement(op, 50.0 + 18 + i) for i, op in enumerate(ACTS[18:21])]  # as dst holds them
                 + [measurement(op, 7.0) for op in ACTS[24:30]])
    code, _, err = cli("table", "merge", str(dst), str(b))
    assert code == 0, err
    assert err == f"{b} -> {dst}: 6 rows added, 12 replaced, 9 {TAIL}; the table holds 30 ok, 0 failed\n"
    with LatencyTable.open(dst, readonly=True) as t:
        assert t.estimate(ACTS[0].key) == pytest.approx(100.0) and t.row(ACTS[12].key)["status"] == "ok"


def test_merge_carries_the_meta_the_rows_are_priced_with(tmp_path: Path, filled: Path):
    """A table merged into an empty one keeps its per-call cost and run settings (a price
    subtracts the per-call cost per entry); an entry dst has already stays."""
    inv = {"estimate_ms": 0.02, "samples": [{"estimate_ms": 0.02}]}
    with LatencyTable.open(filled) as t:
        t.meta_set("invocation", inv)
        t.meta_set("run", {"granularity": "op"})
    dst = tmp_path / "dst.db"
    with LatencyTable.open(dst) as d:
        res = merge(d, [filled])
        assert (res.added, res.replaced, res.left) == (11, 0, 0)
        assert d.meta_get("invocation") == inv and d.meta_get("run") == {"granularity": "op"}
        d.meta_set("run", {"granularity": "block"})
        res = merge(d, [filled])  # dst's own entry stays; every row is already there
        assert d.meta_get("run") == {"granularity": "block"} and (res.added, res.replaced, res.left) == (0, 0, 11)


def test_merge_pools_per_call_costs_and_refuses_rows_timed_otherwise(tmp_path: Path, filled: Path):
    """Two tables of one device timed in one context: the merged per-call cost is the median of
    both tables' samples (each sample once, however often merged) and the spaces are united; a
    table timed in another cache context is refused and nothing of it is copied."""
    net = {"granularity": "op", "fusion": "ort", "context": "network", "context_bytes": 1 << 20}
    ctx = {"context": "network", "context_bytes": 1 << 20}

    def inv(*ms):
        return {"estimate_ms": sorted(ms)[len(ms) // 2], "timing": ctx, "status": "ok",
                "samples": [{"estimate_ms": m, "taken_at": 1000.0 + i + 10 * m} for i, m in enumerate(ms)]}

    with LatencyTable.open(filled) as t:
        t.set_run_settings(RunSettings.from_dict({**net, "spaces": ["ofa-mbv3-w10"]}))
        t.set_invocation(CompanionEntry.from_dict(inv(0.010, 0.012, 0.014)))
    second = table_of(tmp_path / "second.db", [measurement(ACTS[3], 3.0)])
    with LatencyTable.open(second) as t:
        t.set_run_settings(RunSettings.from_dict({**net, "spaces": ["bignas-resnet"]}))
        t.set_invocation(CompanionEntry.from_dict(inv(0.030, 0.032)))
    warm = table_of(tmp_path / "warm.db", [measurement(ACTS[1], 1.0)])
    with LatencyTable.open(warm) as t:
        t.set_run_settings(RunSettings.from_dict({**net, "context": "warm", "context_bytes": 0}))
    with LatencyTable.open(filled) as d:
        merge(d, [second])
        merge(d, [second])
        pooled = d.invocation
        assert sorted(x.estimate_ms for x in pooled.samples) == [0.010, 0.012, 0.014, 0.030, 0.032]
        assert pooled.estimate_ms == pytest.approx(0.014)  # median of the five, by hand
        assert d.run_settings.spaces == ("bignas-resnet", "ofa-mbv3-w10")
        n = len(d)
        with pytest.raises(Exception) as e:
            merge(d, [warm])
        assert str(warm) in str(e.value) and "warm context" in str(e.value) and "network context" in str(e.value)
        assert len(d) == n and d.invocation == pooled


def test_cli_merge_refuses_another_profile_in_one_line_and_has_no_force(cli, tmp_path: Path, filled: Path):
    other = table_of(tmp_path / "other.db", [measurement(ACTS[0], 2.0, profile=OTHER)], OTHER)
    before = snapshot(filled)
    code, out, err = cli("table", "merge", str(filled), str(other))
    assert code == 1 and err.startswith("latbench: error: cannot merge ") and err.count("\n") == 1
    assert OTHER.describe() in err and PROFILE.describe() in err and "Traceback" not in err
    code, _, err = cli("table", "merge", str(filled), str(other), "--force")
    assert code == 2 and "--force" in err
    assert snapshot(filled) == before
    new = tmp_path / "new.db"
    code, _, err = cli("table", "merge", str(new), str(filled), str(other))
    assert code == 1 and not new.exists()  # no half-made table left behind


# ---------------------------------------------------------------------- combine: several devices
@pytest.fixture
def two_devices(tmp_path: Path) -> tuple[Path, Path]:
    """tiny op tables (TFLite's fusion) of two devices: the first lacks every 9th key, has a failed
    row the second has ok, its own per-call cost and a calibration."""
    a = build(tmp_path / "a.db", "tiny", "op", "tflite", invocation_ms=0.012, calibrated=True, leave_out=9)
    b = build(tmp_path / "b.db", "tiny", "op", "tflite", profile=OTHER, scale=1.3, invocation_ms=0.02)
    with LatencyTable.open(a) as t:
        t.add(failed(t.ops()[0]))
    return a, b


def test_combine_makes_a_new_table_naming_its_sources(cli, tmp_path: Path, two_devices):
    a, b = two_devices
    out = tmp_path / "both.db"
    code, _, err = cli("table", "combine", str(out), str(a), str(b))
    assert code == 0, err
    with LatencyTable.open(a, readonly=True) as ta, LatencyTable.open(b, readonly=True) as tb:
        est_a, est_b = ta.estimates(), tb.estimates()
        inv_a = ta.invocation
        failed_in_a = ta.keys("failed")
    with LatencyTable.open(out, readonly=True) as t:
        prof = t.profile
        assert prof.agent == COMBINED_AGENT and prof.id not in (PROFILE.id, OTHER.id)
        assert [s["id"] for s in prof.info["sources"]] == [PROFILE.id, OTHER.id]
        assert ("sources", f"{PROFILE.id},{OTHER.id}") in prof.options
        rows = {r["key"]: r for r in t.rows()}
        from_b = set(est_b) - set(est_a)
        assert failed_in_a <= from_b and from_b  # the gaps and the failed row come from b
        assert set(rows) == set(est_a) | set(est_b)
        for key, r in rows.items():
            src, est = (OTHER, est_b) if key in from_b else (PROFILE, est_a)
            assert (r["profile_id"], r["estimate"], r["status"]) == (src.id, est[key], "ok")
        comb = t.meta_get("combination")
        assert [(s["path"], s["rows"]) for s in comb["sources"]] == [(str(a), len(est_a)), (str(b), len(from_b))]
        assert t.invocation == inv_a and t.calibrations() == {}
    assert f"priced with the per-call cost of {a} (0.012 ms); other sources measured {b} 0.02 ms" in err
    assert f"calibrations of {a} not carried" in err
    assert err.rstrip().splitlines()[-1].startswith(
        f"{a}, {b} -> {out}: {len(rows)} rows from 2 tables ({len(est_a)} keys held by an earlier source)")


def test_a_combination_prices_like_any_table(cli, tmp_path: Path, two_devices):
    """predict prices a combination as the sum of each key's own number, less the per-call cost
    (the first source's) for all but one, computed here by hand."""
    a, b = two_devices
    out = tmp_path / "both.db"
    with LatencyTable.open(out) as t:
        combine(t, [a, b])
        est, inv = t.estimates(), t.invocation.estimate_ms
    sp = get_space("tiny")
    configs = sp.sample(np.random.default_rng(3), 40)
    with LatencyTable.open(out, readonly=True) as t:
        got = Predictor.from_table(t, sp).predict_batch(configs)
    for c, ms in zip(configs, got):
        keys = [o.key for o in O.fuse([o for blk in sp.blocks(c) for o in O.expand(blk)], "tflite")]
        assert ms == pytest.approx(inv + sum(max(0.0, est[k] - inv) for k in keys), rel=1e-12)
    code, stdout, err = cli("predict", "--table", str(out), "--space", "tiny", "--random", "3", "--json")
    assert code == 0, err
    assert all(p["misses"] == 0 for p in json.loads(stdout)["predictions"])


def test_combine_refusals_leave_no_table(cli, tmp_path: Path, two_devices):
    a, b = two_devices
    out = tmp_path / "both.db"
    code, _, err = cli("table", "combine", str(a), str(b))
    assert code == 2 and f"{a} exists" in err and "table merge" in err
    a2 = table_of(tmp_path / "a2.db", [measurement(ACTS[0], 1.0)])
    code, _, err = cli("table", "combine", str(out), str(a2), str(a))
    assert code == 2 and "hold one device profile" in err and "table merge" in err and not out.exists()
    blocks = build(tmp_path / "blocks.db", "tiny", "block", "none", profile=OTHER)
    code, _, err = cli("table", "combine", str(out), str(a), str(blocks))
    assert code == 2 and err.count("\n") == 1 and not out.exists()
    assert f"cannot combine {blocks} with {a}: its entries are block-granularity (fusion none)" in err


def test_merge_keeps_a_combination_a_combination(tmp_path: Path, two_devices):
    """A combination merges with a table of its own (combined) profile, rows keeping their device;
    a single device's table is refused."""
    a, b = two_devices
    with LatencyTable.open(tmp_path / "both.db") as t:
        combine(t, [a, b])
        prof, rows = t.profile, {r["key"]: r["profile_id"] for r in t.rows()}
    with LatencyTable.open(tmp_path / "copy.db") as d:
        res = merge(d, [tmp_path / "both.db"])
        assert d.profile == prof and {r["key"]: r["profile_id"] for r in d.rows()} == rows
        assert res.added == len(rows)
        with pytest.raises(ProfileMismatchError, match="latbench table combine"):
            merge(d, [a])

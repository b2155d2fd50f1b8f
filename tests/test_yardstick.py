"""The yardstick: a few of a profile's ops timed again in every interleaved batch; each batch's rows
(and, in validation, each batch of subnets) are divided by how much slower the machine ran."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from latbench.measure import TimingSettings
from latbench.profiling import ops_with_resolutions, profile_into
from latbench.spaces import get_space
from latbench.store import LatencyTable
from latbench.yardstick import ESTIMATOR, Yardstick, for_profile, pick_ops, table_yardstick

FAST = dict(warmup=1, warmup_s=0.0, min_samples=3, max_samples=6, max_time_s=0.02)


def tiny_ops():
    ops, _ = ops_with_resolutions(get_space("tiny"), [24, 32], "block")
    assert len(ops) >= 30
    return ops


def test_factor_is_the_geometric_mean_of_reading_over_base() -> None:
    ops = tiny_ops()[:3]
    ys = Yardstick(ops, "warm", 0, base_ms=[1.0, 2.0, None])
    # the third op has no base and is left out; 1.1/1.0 and 2.42/2.0 = 1.21
    assert ys.factor([1.1, 2.42, 5.0]) == pytest.approx(math.sqrt(1.1 * 1.21), rel=1e-12)
    assert ys.factor([None, 2.42, 5.0]) == pytest.approx(1.21, rel=1e-12)
    assert ys.factor([None, None, 3.0]) is None  # nothing read against a base
    assert Yardstick(ops, "warm", 0).factor([1.0, 1.0, 1.0]) is None  # no base yet
    back = Yardstick.from_meta(ys.to_meta())
    assert [o.key for o in back.ops] == [o.key for o in ops] and back.base_ms == [1.0, 2.0, None]


def test_picked_ops_are_distinct_middle_to_large_and_independent_of_order() -> None:
    ops = tiny_ops()
    a, b = pick_ops(ops), pick_ops(list(reversed(ops)))
    assert [o.key for o in a] == [o.key for o in b] and len({o.key for o in a}) == 3
    by_size = sorted(ops, key=lambda o: (o.flops, o.key))
    assert [o.key for o in a] == [by_size[int(q * len(ops))].key for q in (0.5, 0.7, 0.9)]
    assert pick_ops(ops[:2]) == []  # too few ops to hold a yardstick
    t = TimingSettings(rounds=2, interleave=11)
    assert for_profile(None, ops, t) is None  # batches too small: no yardstick (the table is not read)


def test_each_batch_is_put_on_the_yardstick_and_a_resumed_run_keeps_its_base(tmp_path: Path) -> None:
    from device_agents import get_agent

    ops = tiny_ops()
    agent = get_agent("ort", threads=1)
    timing = TimingSettings(**FAST, rounds=2, interleave=12)  # 3 yardstick ops + 8 ops + the per-call op
    with LatencyTable.open(tmp_path / "t.sqlite", agent.profile) as t:
        run = profile_into(t, agent, ops, timing, max_ops=16)
        assert run.measured + run.failed == 16 and len(t.keys(status=None)) == 16  # no rows for the yardstick
        ys = t.meta_get("yardstick")
        assert len(ys["batches"]) == 2 and len(t.meta_get("invocation")["samples"]) == 2
        first, second = ys["batches"]
        assert ys["base_ms"] == first["readings_ms"] and first["factor"] == 1.0
        by_hand = math.exp(sum(math.log(r / b) for r, b in zip(second["readings_ms"], ys["base_ms"])) / 3)
        assert second["factor"] == pytest.approx(by_hand, rel=1e-12)
        batches = {0: 0, 1: 0}
        for row in t.rows(status="ok"):
            tag = row["extra"]["yardstick"]
            batches[tag["batch"]] += 1
            assert row["estimator"] == ESTIMATOR
            raw = min(row["extra"]["round_medians"])  # the fastest round's median, as timed
            assert row["estimate"] == pytest.approx(raw / ys["batches"][tag["batch"]]["factor"], rel=1e-12)
            assert tag["factor"] == ys["batches"][tag["batch"]]["factor"]
        assert batches == {0: 8, 1: 8}
        inv = t.meta_get("invocation")["samples"][1]  # the per-call cost is put on the same speed
        assert inv["estimate_ms"] == pytest.approx(inv["raw_ms"] / second["factor"], rel=1e-12)

        profile_into(t, agent, ops, timing, max_ops=4)  # resumed: the same ops, the same base
        again = t.meta_get("yardstick")
        assert again["keys"] == ys["keys"] and again["base_ms"] == ys["base_ms"] and len(again["batches"]) == 3
        loaded = table_yardstick(t)
        assert loaded is not None and [o.key for o in loaded.ops] == ys["keys"]

        profile_into(t, agent, ops, timing, max_ops=2, yardstick=False)
        assert len(t.meta_get("yardstick")["batches"]) == 3
        plain = [r for r in t.rows(status="ok") if "yardstick" not in r["extra"]]
        assert len(plain) == 2 and all(r["estimator"] == "round_min" for r in plain)
    with LatencyTable.open(tmp_path / "small.sqlite", agent.profile) as t:  # batches of 4: none
        profile_into(t, agent, ops, TimingSettings(**FAST, rounds=2, interleave=4), max_ops=3)
        assert t.meta_get("yardstick") is None and table_yardstick(t) is None


def test_validation_divides_each_batch_of_subnets_by_its_factor(tmp_path: Path) -> None:
    from device_agents import get_agent
    from latbench.validate import measure_built, subnet_model

    sp = get_space("tiny")
    ops, _ = ops_with_resolutions(sp, [24], "block")
    agent = get_agent("ort", threads=1)
    timing = TimingSettings(**FAST, rounds=3, interleave=24, context="network", context_bytes=1 << 20)
    with LatencyTable.open(tmp_path / "t.sqlite", agent.profile) as t:
        profile_into(t, agent, ops, timing)
        ys = table_yardstick(t)
    assert ys is not None and ys.context == "network"
    model = subnet_model(agent, sp, sp.smallest())
    runs = measure_built(agent, [model, model], timing, builds=1, yardstick=ys)
    for r in runs:
        assert r.factor is not None and r.factor > 0
        assert r.ms == pytest.approx(r.raw_ms / r.factor, rel=1e-12)
    # against a base read twice as fast as this machine runs now, the factor reads about 2
    fast_base = Yardstick(ys.ops, ys.context, ys.context_bytes, [b / 2 for b in ys.base_ms])
    (r,) = measure_built(agent, [model], timing, builds=1, yardstick=fast_base)
    assert 1.3 < r.factor < 3.0
    (plain,) = measure_built(agent, [model], timing, builds=1)
    assert plain.factor is None and plain.ms == plain.raw_ms

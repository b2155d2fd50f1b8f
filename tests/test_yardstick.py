"""The plain yardstick: its statistics, spread and noise ceiling against hand-computed values on
hand-made sample sets, the pass order, the settings' validation, and the loop itself on plain
callables and on real runtimes (ORT's session.run, torch's module)."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

from latbench.errors import UsageError
from latbench.spaces import get_space
from latbench.yardstick import (
    PassStats, Reading, YardstickSettings, measure, noise_ceiling, pass_orders, pass_ratios,
)


def _reading(*per_pass: list[float]) -> Reading:
    return Reading(tuple(PassStats.from_samples(s) for s in per_pass))


def _medians(*values: float) -> Reading:
    """A reading whose passes have these medians (one sample each)."""
    return _reading(*([v] for v in values))


# ---------------------------------------------------------------------- statistics
def test_pass_statistics_against_hand_computed_values() -> None:
    p = PassStats.from_samples([4.0, 1.0, 10.0, 2.0, 3.0])
    # sorted 1 2 3 4 10: median 3, mean 20/5, p90 at rank 3.6 -> 4 + 0.6 * (10 - 4)
    assert (p.median, p.mean, p.min, p.n) == (3.0, 4.0, 1.0, 5)
    assert p.p90 == pytest.approx(7.6)
    assert p.samples == (4.0, 1.0, 10.0, 2.0, 3.0)  # the raw runs, in the order they ran
    assert p.to_dict()["samples_ms"] == [4.0, 1.0, 10.0, 2.0, 3.0]
    with pytest.raises(ValueError):
        PassStats.from_samples([])


def test_a_networks_value_is_the_median_over_passes_of_each_pass_statistic() -> None:
    r = _reading([2.0, 2.0, 8.0], [1.0, 3.0, 3.0, 5.0], [1.5, 1.8, 2.1])
    # per pass: medians 2, 3, 1.8; means 4, 3, 1.8; minimums 2, 1, 1.5
    assert list(r.values("median")) == pytest.approx([2.0, 3.0, 1.8])
    assert r.value("median") == pytest.approx(2.0)
    assert r.value("mean") == pytest.approx(3.0)
    assert r.value("min") == pytest.approx(1.5)
    assert r.spread("median") == pytest.approx((3.0 - 1.8) / 2.0)
    assert r.spread("min") == pytest.approx((2.0 - 1.0) / 1.5)
    d = r.to_dict("mean")
    assert d["value_ms"] == pytest.approx(3.0) and d["spread"] == pytest.approx((4.0 - 1.8) / 3.0)
    assert [p["n"] for p in d["passes"]] == [3, 4, 3]
    assert _medians(1.0, 3.0).value("median") == 2.0  # an even count: the middle two's mean


# ---------------------------------------------------------------------- the noise ceiling
def test_noise_ceiling_against_hand_computed_values() -> None:
    steady = _medians(1.0, 1.0, 1.0)  # ratios 1, 1, 1
    mixed = _medians(1.0, 1.1, 1.3)  # 1/1.2, 1.1/1.15, 1.3/1.05: off 16.7%, 4.3%, 23.8%
    edge = _medians(1.05, 1.0, 1.0)  # 1.05/1 (5% exactly: within), 1/1.025, 1/1.025
    middling = _medians(1.0, 1.05, 0.95)  # 1/1, 1.05/0.975 (7.7%), 0.95/1.025 (7.3%)
    want = [1, 1, 1, 1 / 1.2, 1.1 / 1.15, 1.3 / 1.05, 1.05, 1 / 1.025, 1 / 1.025, 1, 1.05 / 0.975, 0.95 / 1.025]
    readings = [steady, mixed, edge, middling]
    assert pass_ratios(readings, "median") == pytest.approx(want)
    c = noise_ceiling(readings, "median")
    assert (c.networks, c.passes) == (4, 3)
    assert c.within5 == pytest.approx(8 / 12)  # steady 3, mixed 1, edge 3, middling 1
    assert c.within10 == pytest.approx(10 / 12)  # and middling's other two
    logs = np.log(want)
    assert c.log_sd == pytest.approx(math.sqrt(np.mean((logs - logs.mean()) ** 2)))
    assert c.line() == ("yardstick noise ceiling: one pass against the median of the others: 67% within +-5%, "
                        f"83% within +-10% (log sd {100 * c.log_sd:.1f}%), 4 subnets x 3 passes")
    # the statistic it is read in: the minimums of these passes agree exactly
    flat = [_reading([1.0, 5.0], [1.0, 2.0], [1.0, 9.0])]
    assert noise_ceiling(flat, "min").within5 == 1.0 and noise_ceiling(flat, "min").log_sd == 0.0
    by_median = noise_ceiling(flat, "median")  # medians 3, 1.5, 5: 3/3.25 is 7.7% off, the others far
    assert by_median.within5 == 0.0 and by_median.within10 == pytest.approx(1 / 3)


def test_noise_ceiling_needs_three_passes() -> None:
    c = noise_ceiling([_medians(1.0, 1.2)], "median")
    assert c.passes == 2 and math.isnan(c.within5) and math.isnan(c.log_sd)
    assert c.line() == ("yardstick noise ceiling: not measured (2 pass(es); a pass against the median of the "
                        "others needs --passes >= 3)")
    assert c.to_dict()["within10"] is None
    empty = noise_ceiling([], "median")
    assert (empty.networks, empty.passes) == (0, 0) and math.isnan(empty.within10)


# ---------------------------------------------------------------------- the pass order
def test_each_pass_visits_every_network_once_in_its_own_seeded_order() -> None:
    orders = pass_orders(12, 4, seed=5)
    assert len(orders) == 4 and all(sorted(o) == list(range(12)) for o in orders)
    assert len({tuple(o) for o in orders}) == 4  # every pass in another order
    assert pass_orders(12, 4, seed=5) == orders  # same seed, same orders
    assert pass_orders(12, 4, seed=6) != orders


def test_measure_times_a_fresh_runnable_per_visit_in_the_pass_order() -> None:
    """`fresh(i)` is asked once per network per pass, in the pass orders; each runnable runs its
    warm-up then its timed runs, and a pass lasts at least min_s."""
    built: list[int] = []
    calls: dict[int, int] = {}

    def fresh(i: int):
        built.append(i)
        k = len(built)
        calls[k] = 0

        def run() -> None:
            calls[k] += 1

        return run

    s = YardstickSettings(warmup=3, warmup_s=0.0, runs=7, min_s=0.0, passes=3, seed=9)
    seen: list[tuple[int, int]] = []
    readings = measure(5, fresh, s, done=lambda d, t: seen.append((d, t)))
    assert built == [i for order in pass_orders(5, 3, 9) for i in order]
    assert set(calls.values()) == {3 + 7}  # warm-up runs, then the timed runs, on each runnable
    assert seen == [(k, 15) for k in range(1, 16)]
    assert [len(r.passes) for r in readings] == [3] * 5 and all(p.n == 7 for r in readings for p in r.passes)
    slow = YardstickSettings(warmup=0, warmup_s=0.0, runs=2, min_s=0.03, passes=3)
    t0 = time.perf_counter()
    (r,) = measure(1, lambda i: (lambda: time.sleep(0.001)), slow)
    assert time.perf_counter() - t0 >= 3 * 0.03  # each pass ran until min_s had passed
    assert all(p.n >= 2 and p.min >= 1.0 for p in r.passes)  # each run timed alone (>= its 1 ms sleep)


def test_a_failing_run_is_one_error() -> None:
    from latbench.errors import LatbenchError

    def fresh(i):
        def run():
            raise RuntimeError("kernel exploded")
        return run

    with pytest.raises(LatbenchError, match="^end-to-end run failed: RuntimeError: kernel exploded$"):
        measure(2, fresh, YardstickSettings(runs=1, min_s=0.0, warmup=0, warmup_s=0.0))


# ---------------------------------------------------------------------- settings
@pytest.mark.parametrize("changes, msg", [
    ({"runs": 0}, "timing runs (--runs) must be a whole number >= 1, got 0"),
    ({"runs": 2.5}, "timing runs (--runs) must be a whole number >= 1, got 2.5"),
    ({"passes": True}, "timing passes (--passes) must be a whole number >= 1 and <= 100, got True"),
    ({"passes": 101}, "timing passes (--passes) must be a whole number >= 1 and <= 100, got 101"),
    ({"min_s": -0.1}, "timing min_s (--min-time) must be a finite number >= 0 and <= 3600, got -0.1"),
    ({"min_s": math.inf}, "timing min_s (--min-time) must be a finite number >= 0 and <= 3600, got inf"),
    ({"warmup": -1}, "timing warmup (--warmup) must be a whole number >= 0, got -1"),
    ({"warmup_s": math.nan}, "timing warmup_s must be a finite number >= 0 and <= 3600, got nan"),
    ({"seed": -1}, "timing seed must be a whole number >= 0, got -1"),
    ({"statistic": "p90"}, "`statistic` must be one of median, mean, min, got 'p90'"),
])
def test_settings_are_refused_in_one_line_where_made(changes, msg) -> None:
    with pytest.raises(UsageError) as e:
        YardstickSettings(**changes)
    assert str(e.value) == msg


def test_settings_defaults_and_words() -> None:
    s = YardstickSettings()
    assert (s.warmup, s.runs, s.min_s, s.passes, s.statistic) == (10, 50, 0.5, 3, "median")
    assert s.describe() == "median of 3 pass medians"
    assert YardstickSettings(passes=5, statistic="min").describe() == "median of 5 pass minimums"
    assert s.to_dict()["min_s"] == 0.5


# ---------------------------------------------------------------------- real runtimes
def test_ort_yardstick_runs_session_run_with_a_numpy_input_in_a_new_session() -> None:
    """ORT's plain runnable is the user's call: session.run returns the outputs (IOBinding's
    runner returns nothing), and each runnable has its own session."""
    from device_agents import get_agent

    sp = get_space("tiny")
    cfg = sp.smallest()
    agent = get_agent("ort", threads=1)
    try:
        model = agent.network_model(sp, cfg)
        a, b = agent.plain_model(model), agent.plain_model(model)
        out = a()
        assert isinstance(out, list) and out[0].shape == (1, 10)
        assert a.keep is not b.keep and type(a.keep).__name__ == "InferenceSession"
        assert np.allclose(out[0], b()[0])
        assert agent.prepare_model(model)() is None  # the estimator's IOBinding runner, for contrast
    finally:
        agent.close()


def test_torch_yardstick_readings_of_two_subnets() -> None:
    from device_agents import get_agent

    sp = get_space("tiny")
    agent = get_agent("cpu", threads=1)
    models = [agent.network_model(sp, c) for c in (sp.smallest(), sp.largest())]
    s = YardstickSettings(warmup=2, warmup_s=0.0, runs=5, min_s=0.0, passes=3)
    readings = measure(2, lambda i: agent.plain_model(models[i]), s, agent.state, agent.synchronizer())
    for r in readings:
        assert len(r.passes) == 3 and all(p.n == 5 and 0 < p.min <= p.median <= p.p90 for p in r.passes)

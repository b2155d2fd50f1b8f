"""Search a trained supernet under latency budgets: latbench's run_search with the supernet's
calib_bn accuracy as the objective and a latency table's predictor as the constraint."""
from __future__ import annotations

import os
from typing import Any, Mapping

from ..errors import UsageError
from .data import Splits
from .evaluator import SupernetEvaluator

SMALL_EVOLUTION = {"population": 24, "generations": 8}  # a CPU-sized default (OFA's: 100 x 500)


def predictor_for(table: Any, space):
    """A latbench Predictor from a table path or an open LatencyTable (block or op granularity)."""
    from ..predict import Predictor

    if isinstance(table, (str, os.PathLike)):
        from ..store import LatencyTable

        if not os.path.isfile(table):
            raise UsageError(f"{os.fspath(table)}: no such latency table")
        with LatencyTable.open(table, readonly=True) as t:
            return Predictor.from_table(t, space)
    return Predictor.from_table(table, space)


def search_supernet(net_or_evaluator, table: Any, budgets_ms: Mapping[str, float], data: Splits | None = None,
                    *, split: str = "val", strategy: str = "evolution", seed: int = 0, **options):
    """The most accurate subnet under every budget: {table name: ms}; returns run_search's result."""
    from ..search import run_search
    from ..search.accuracy import AccuracySource

    evaluator = net_or_evaluator
    if not isinstance(evaluator, SupernetEvaluator):
        if data is None:
            raise UsageError("searching a supernet needs the data to evaluate subnets on")
        evaluator = SupernetEvaluator(net_or_evaluator, data, split)
    space = evaluator.space
    predictors = table if isinstance(table, Mapping) else {"latency": predictor_for(table, space)}

    class _Acc(AccuracySource):
        name = f"supernet ({evaluator.split} split, calib_bn)"
        description = "top-1 accuracy of the subnet taken from the supernet, after calib_bn"

        def score(self, configs):
            return evaluator(configs)

    if strategy == "evolution":
        options = {**SMALL_EVOLUTION, **options}
    return run_search(space, predictors, dict(budgets_ms), _Acc(space), strategy=strategy, seed=seed, **options)


__all__ = ["search_supernet", "predictor_for", "SMALL_EVOLUTION"]

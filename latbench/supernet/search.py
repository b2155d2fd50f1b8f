"""Search a trained supernet under latency budgets: latbench's run_search with the supernet's
calib_bn accuracy as the objective and a latency table's predictor as the constraint."""
from __future__ import annotations

from typing import Any, Mapping

from ..errors import UsageError
from .data import Splits
from .evaluator import SupernetEvaluator

SMALL_EVOLUTION = {"population": 24, "generations": 8}  # a CPU-sized default (OFA's: 100 x 500)


def search_supernet(net_or_evaluator, table: Any, budgets_ms: Mapping[str, float], data: Splits | None = None,
                    *, split: str = "val", strategy: str = "evolution", seed: int = 0, **options):
    """The most accurate subnet under every budget: {table name: ms}; returns run_search's result."""
    from ..search import run_search
    from ..search.accuracy import AccuracySource
    from ..search.tables import load_predictor

    evaluator = net_or_evaluator
    if not isinstance(evaluator, SupernetEvaluator):
        if data is None:
            raise UsageError("searching a supernet needs the data to evaluate subnets on")
        evaluator = SupernetEvaluator(net_or_evaluator, data, split)
    space = evaluator.space
    predictors = table if isinstance(table, Mapping) else {"latency": load_predictor(table, space)}

    class _Acc(AccuracySource):
        name = f"supernet ({evaluator.split} split, calib_bn)"
        description = "top-1 accuracy of the subnet taken from the supernet, after calib_bn"

        def score(self, configs):
            return evaluator(configs)

    if strategy == "evolution":
        options = {**SMALL_EVOLUTION, **options}
    return run_search(space, predictors, dict(budgets_ms), _Acc(space), strategy=strategy, seed=seed, **options)


__all__ = ["search_supernet", "SMALL_EVOLUTION"]

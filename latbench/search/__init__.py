"""Latency-constrained search: strategies, constraints, accuracy sources and one Study driver.

`latbench.search(space, tables, budgets_ms=...)` runs a search (this package is callable: see
latbench.callable_module); `Study` is the same search driven by an outside loop (ask / tell).
No torch at import: the MLP accuracy source and pymoo (NSGA-II) load when used.
"""
from __future__ import annotations

from .accuracy import (AccuracySource, CallableAccuracy, FlopsProxy, list_accuracy_sources,
                       make_accuracy_source, register_accuracy_source)
from .constraints import Constraint, ConstraintSet, CostModel, InfeasibleBudgetError, Pricing, extreme
from .domain import Domain
from .strategies import STRATEGY_NAMES, Strategy, get_strategy, list_strategies, register_strategy
from .study import SearchResult, Study, Trial, TrialLog, run_search, search
from .tables import load_predictor, load_predictors, search_resolutions

__all__ = [
    "search", "run_search", "SearchResult", "Study", "Trial", "TrialLog", "Domain", "Constraint",
    "ConstraintSet", "CostModel", "Pricing", "InfeasibleBudgetError", "extreme", "AccuracySource", "FlopsProxy",
    "CallableAccuracy", "make_accuracy_source", "register_accuracy_source", "list_accuracy_sources",
    "Strategy", "get_strategy", "list_strategies", "register_strategy", "STRATEGY_NAMES",
    "load_predictor", "load_predictors", "search_resolutions",
]

from ..callable_module import make_callable  # noqa: E402

make_callable(__name__, search)

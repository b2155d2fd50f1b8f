"""Latency-constrained search: strategies, constraints, accuracy sources and one Study driver.

No torch at import: the MLP accuracy source and pymoo (NSGA-II) load when used.
"""
from __future__ import annotations

from .accuracy import (AccuracySource, CallableAccuracy, FlopsProxy, list_accuracy_sources,
                       make_accuracy_source, register_accuracy_source)
from .constraints import Constraint, ConstraintSet, CostModel, InfeasibleBudgetError, Pricing, extreme
from .domain import Domain
from .strategies import STRATEGY_NAMES, get_strategy
from .study import SearchResult, Study, TrialLog, run_search

__all__ = [
    "run_search", "SearchResult", "Study", "TrialLog", "Domain", "Constraint", "ConstraintSet",
    "CostModel", "Pricing", "InfeasibleBudgetError", "extreme", "AccuracySource", "FlopsProxy",
    "CallableAccuracy", "make_accuracy_source", "register_accuracy_source", "list_accuracy_sources",
    "get_strategy", "STRATEGY_NAMES",
]

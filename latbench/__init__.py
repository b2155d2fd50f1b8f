"""latbench: hardware latency lookup tables and on-device profiling for hardware-aware NAS.

The public API, loaded on first use (so `import latbench` pulls in neither numpy-heavy modules
nor torch, ONNX Runtime, LiteRT, adbutils or matplotlib):

    open_table(path, readonly=True)            a latency table (LatencyTable)
    Predictor.from_table(table, space=None)    price configs, op lists and models
    profile(space_or_ops, device=, out=, ...)  measure ops into a table -> ProfileRun
    validate(...)                              predicted vs measured end to end
    search(space, tables, budgets_ms=, ...)    the best subnet under budgets -> SearchResult
    Study(space, tables, budgets_ms=, seed=)   ask / tell from your own loop
    get_space, list_spaces, register_space; list_strategies, register_strategy, get_strategy
    LatbenchError and its subclasses
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute); attribute None: the module itself (a callable package)
_EXPORTS: dict[str, tuple[str, str | None]] = {
    "open_table": ("latbench.api", "open_table"),
    "Predictor": ("latbench.predict", "Predictor"),
    "Price": ("latbench.predict", "Price"),
    "profile": ("latbench.profiler", "profile"),
    "ProfileRun": ("latbench.profiling", "ProfileRun"),
    "validate": ("latbench.validate", None),
    "search": ("latbench.search", None),
    "Study": ("latbench.search.study", "Study"),
    "Trial": ("latbench.search.study", "Trial"),
    "SearchResult": ("latbench.search.study", "SearchResult"),
    "fit_table": ("latbench.fit_table", "fit_table"),
    "read_networks": ("latbench.fit_table", "read_networks"),
    "key_counts": ("latbench.fit", "key_counts"),
    "fit_costs": ("latbench.fit", "fit_costs"),
    "transfer_fit": ("latbench.transfer", "transfer_fit"),
    "table_prior": ("latbench.transfer", "table_prior"),
    "get_space": ("latbench.spaces", "get_space"),
    "list_spaces": ("latbench.spaces", "list_spaces"),
    "register_space": ("latbench.spaces", "register_space"),
    "get_strategy": ("latbench.search.strategies", "get_strategy"),
    "list_strategies": ("latbench.search.strategies", "list_strategies"),
    "register_strategy": ("latbench.search.strategies", "register_strategy"),
    **{name: ("latbench.errors", name) for name in (
        "LatbenchError", "UsageError", "ConfigError", "SpaceError", "OpError", "FormatError", "TableError",
        "MissingExtraError", "DeviceUnavailableError")},
    "FallbackError": ("latbench.predict", "FallbackError"),
    "MissingKeyError": ("latbench.predict", "MissingKeyError"),
    "InfeasibleBudgetError": ("latbench.search.constraints", "InfeasibleBudgetError"),
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Load a public name on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'latbench' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names and the submodules loaded so far (not this module's own imports)."""
    own = {"annotations", "importlib", "Any"}
    return sorted((set(globals()) - own) | set(_EXPORTS))

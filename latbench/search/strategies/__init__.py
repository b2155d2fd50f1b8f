"""Search strategies by name. Each works on integer config arrays through a Study and prices
whole populations per call; each takes `population` and `generations` plus its own knobs."""
from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ...errors import UsageError


@dataclass(frozen=True)
class Strategy:
    """A named strategy: its options dataclass, aliases (the original tools' names) and body."""

    name: str
    options_type: type
    body: Callable[[Any, Any], None]
    aliases: Mapping[str, str] = field(default_factory=dict)
    pareto: bool = False  # reports an accuracy/latency front by default
    description: str = ""

    def options(self, given: Mapping[str, Any] | None) -> Any:
        """The options dataclass from keyword options; unknown names and bad values are usage errors."""
        names = {f.name for f in dataclasses.fields(self.options_type)}
        kw: dict[str, Any] = {}
        for key, value in (given or {}).items():
            if value is None:
                continue
            name = self.aliases.get(key, key)
            if name not in names:
                raise UsageError(f"strategy {self.name} has no option {key!r}; options: {', '.join(sorted(names))}")
            kw[name] = value
        opts = self.options_type(**kw)
        for f in dataclasses.fields(opts):
            v = getattr(opts, f.name)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
                raise UsageError(f"{self.name}: {f.name} must not be negative, got {v}")
        check = getattr(opts, "validate", None)
        if check:
            check()
        return opts

    def run(self, study, opts) -> None:
        self.body(study, opts)


@dataclass(frozen=True)
class PlainOptions:
    """Options of a strategy registered as a plain function: a population and a step count."""

    population: int = 100
    generations: int = 100


STRATEGY_NAMES = ("evolution", "anneal", "random", "nsga2")  # the built-in ones
_REGISTRY: dict[str, Strategy] = {}


def _builtins() -> dict[str, Strategy]:
    """The registry, with the built-in strategies registered on first use."""
    if not _REGISTRY:
        from .anneal import ANNEAL
        from .evolution import EVOLUTION
        from .nsga2 import NSGA2
        from .random_search import RANDOM

        for s in (EVOLUTION, ANNEAL, RANDOM, NSGA2):
            _REGISTRY.setdefault(s.name, s)
    return _REGISTRY


def register_strategy(name: str, strategy: Strategy | Callable[[Any, Any], None], *, options_type: type = PlainOptions,
                      description: str = "", pareto: bool = False) -> Strategy:
    """Register a strategy under `name` (a later registration replaces an earlier one): a Strategy,
    or a function `body(study, options)` that draws, prices and scores through the Study
    (`study.sample_feasible`, `study.score`, `study.tick`...) with `options` an instance of
    `options_type` (PlainOptions: population, generations)."""
    if not isinstance(name, str) or not name:
        raise UsageError(f"strategy name must be a non-empty string, got {name!r}")
    if isinstance(strategy, Strategy):
        made = dataclasses.replace(strategy, name=name)
    elif callable(strategy):
        made = Strategy(name, options_type, strategy, pareto=pareto,
                        description=description or (strategy.__doc__ or "").strip().split("\n")[0])
    else:
        raise UsageError(f"strategy must be a Strategy or a function (study, options), got {type(strategy).__name__}")
    _builtins()[name] = made
    return made


def list_strategies(pattern: str = "*") -> list[str]:
    """Registered strategy names matching the fnmatch `pattern`, sorted."""
    return sorted(n for n in _builtins() if fnmatch.fnmatch(n, pattern))


def get_strategy(name: str) -> Strategy:
    """The strategy registered as `name`."""
    reg = _builtins()
    if name not in reg:
        raise UsageError(f"unknown strategy {name!r}; known: {', '.join(list_strategies())}")
    return reg[name]


def positive(name: str, value: float, what: str = "") -> None:
    """Shared check: a size or count must be > 0."""
    if not value > 0:
        raise UsageError(f"{what + ': ' if what else ''}{name} must be > 0, got {value}")


def probability(name: str, value: float, what: str = "") -> None:
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"{what + ': ' if what else ''}{name} must be within [0, 1], got {value}")

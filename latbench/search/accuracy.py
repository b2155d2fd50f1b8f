"""Accuracy sources: one interface (int configs (n, positions) in, float scores (n,) out) and a
registry of prefixes, so `--accuracy flops`, `mlp:PATH`, `callable:module:function` and later
`supernet:CHECKPOINT` are all looked up the same way.

Only code the user names on the command line (`callable:`) or a registered plug-in is ever run;
nothing found inside a table, a config or a checkpoint is executed (weights load with
`weights_only=True`).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import LatbenchError, UsageError


class AccuracySource:
    """Scores a batch of configs; higher is better. `proxy` marks a stand-in for accuracy."""

    name: str = ""  # what --json reports as accuracy_source
    description: str = ""
    proxy: bool = False
    deterministic: bool = True  # the same config always scores the same: a search asks once

    def __init__(self, space):
        self.space = space

    def __call__(self, configs: np.ndarray) -> np.ndarray:
        out = np.asarray(self.score(np.asarray(configs, dtype=np.int64)), dtype=np.float64).reshape(-1)
        if out.shape[0] != len(configs):
            raise LatbenchError(f"accuracy source {self.name} returned {out.shape[0]} scores for {len(configs)} configs")
        return out

    def score(self, configs: np.ndarray) -> np.ndarray:
        """Subclasses: one score per row of `configs`."""
        raise LatbenchError(f"{type(self).__name__} does not define score()")


# ---------------------------------------------------------------------- registry
AccuracyFactory = Callable[[str, Any], AccuracySource]
_SOURCES: dict[str, AccuracyFactory] = {}
# prefixes whose module registers itself on import (kept lazy: those modules may import torch)
_PROVIDERS = {"supernet": "latbench.supernet"}


def register_accuracy_source(prefix: str, factory: AccuracyFactory) -> None:
    """Make `--accuracy PREFIX:ARG` build `factory(ARG, space)` (a later call replaces an earlier)."""
    if not prefix or ":" in prefix:
        raise UsageError(f"accuracy source prefix must be a non-empty word without ':', got {prefix!r}")
    _SOURCES[prefix] = factory


def list_accuracy_sources() -> list[str]:
    return sorted(_SOURCES)


def make_accuracy_source(spec: str | AccuracySource, space) -> AccuracySource:
    """`flops`, `mlp:PATH`, `callable:module:function`, or any registered `prefix:arg`."""
    if isinstance(spec, AccuracySource):
        return spec
    prefix, _, arg = str(spec).partition(":")
    if prefix not in _SOURCES and prefix in _PROVIDERS:
        try:
            importlib.import_module(_PROVIDERS[prefix])
        except ImportError:
            pass
    factory = _SOURCES.get(prefix)
    if factory is None:
        raise UsageError(f"unknown accuracy source {spec!r}; known: "
                         + ", ".join(f"{p}{'' if p == 'flops' else ':...'}" for p in list_accuracy_sources()))
    return factory(arg, space)


# ---------------------------------------------------------------------- flops (proxy)
class FlopsProxy(AccuracySource):
    """Not an accuracy: MFLOPs of the subnet, used when no accuracy source is given (a bigger
    network usually scores higher). Labelled as a proxy everywhere it is reported."""

    name = "flops-proxy"
    description = "proxy: MFLOPs (more FLOPs = higher score), not an accuracy"
    proxy = True

    def score(self, configs: np.ndarray) -> np.ndarray:
        from .constraints import count_predictor

        return count_predictor(self.space, "flops").predict_batch(configs) / 1e6


def _flops_factory(arg: str, space) -> AccuracySource:
    if arg:
        raise UsageError(f"the flops accuracy proxy takes no argument, got 'flops:{arg}'")
    return FlopsProxy(space)


# ---------------------------------------------------------------------- callable
class CallableAccuracy(AccuracySource):
    """The user's own function: gets a list of configs in the space's published form (OFA's
    {"ks","e","d","r"} dicts), returns one accuracy per config."""

    def __init__(self, space, fn: Callable[[list], Sequence[float]], name: str = ""):
        super().__init__(space)
        self.fn = fn
        self.name = name or f"callable:{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', '?')}"
        self.description = f"user function {self.name}"

    def score(self, configs: np.ndarray) -> np.ndarray:
        published = [self.space.to_published(c) for c in configs]
        try:
            out = self.fn(published)
        except LatbenchError:
            raise
        except Exception as e:
            raise LatbenchError(f"{self.name} failed on {len(published)} configs: {type(e).__name__}: {e}") from e
        try:
            arr = np.asarray(out, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise LatbenchError(f"{self.name} must return numbers, one per config; got {type(out).__name__}") from None
        if arr.shape[0] != len(published):
            raise LatbenchError(f"{self.name} returned {arr.shape[0]} values for {len(published)} configs")
        if not np.isfinite(arr).all():
            raise LatbenchError(f"{self.name} returned a non-finite accuracy")
        return arr


def load_callable(target: str) -> Callable:
    """`module:function` (importable, or a .py file path) -> the function. This runs the user's
    module: only ever called with what the user typed after `callable:`."""
    mod_name, sep, fn_name = target.rpartition(":")
    if not sep or not mod_name or not fn_name:
        raise UsageError(f"callable accuracy wants callable:module:function, got callable:{target}")
    try:
        if mod_name.endswith(".py") or os.sep in mod_name:
            if not os.path.isfile(mod_name):
                raise UsageError(f"callable:{target}: no such file {mod_name}")
            spec = importlib.util.spec_from_file_location(f"_latbench_user_{abs(hash(mod_name))}", mod_name)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            if "" not in sys.path and os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())  # `module` in the working directory, as python -m does
            module = importlib.import_module(mod_name)
    except LatbenchError:
        raise
    except Exception as e:
        raise UsageError(f"callable:{target}: cannot import {mod_name}: {type(e).__name__}: {e}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise UsageError(f"callable:{target}: {mod_name} has no function {fn_name!r}")
    return fn


def _callable_factory(arg: str, space) -> AccuracySource:
    return CallableAccuracy(space, load_callable(arg), name=f"callable:{arg}")


# ---------------------------------------------------------------------- mlp
def _mlp_factory(arg: str, space) -> AccuracySource:
    from .mlp import MLPAccuracy

    if not arg:
        raise UsageError("mlp accuracy wants a path: `accuracy=mlp:PATH`")
    return MLPAccuracy.load(arg, space)


register_accuracy_source("flops", _flops_factory)
register_accuracy_source("callable", _callable_factory)
register_accuracy_source("mlp", _mlp_factory)

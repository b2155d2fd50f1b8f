"""Subnet accuracy from a trained supernet: calib_bn, batched evaluation, and the accuracy source
that `latbench search --accuracy supernet:CHECKPOINT` plugs in (configs in, accuracies out).

BN running statistics accumulated while training many subnets fit none of them, so before a
subnet is evaluated its BN statistics are re-estimated on a fixed slice of the training split
(calib_bn: a plain average over a few batches, as Once-for-All and BigNAS do).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np

from ..errors import UsageError, require
from .data import Splits, resize
from .layers import DynamicBatchNorm2d

torch = require("torch", "torch")
Tensor = torch.Tensor


@contextlib.contextmanager
def calibrating(net) -> Iterator[None]:
    """Within the block, every dynamic BN re-estimates its active statistics from scratch."""
    bns = [m for m in net.modules() if isinstance(m, DynamicBatchNorm2d)]
    for m in bns:
        m.calib_seen = 0
    try:
        yield
    finally:
        for m in bns:
            m.calib_seen = -1


@contextlib.contextmanager
def bn_snapshot(net) -> Iterator[None]:
    """Restore every dynamic BN's running statistics on exit: evaluating subnets during training
    (calib_bn overwrites the shared statistics) must not change what training continues from."""
    bns = [m for m in net.modules() if isinstance(m, DynamicBatchNorm2d)]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bns]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, n) in zip(bns, saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(n)


def calib_bn(net, x: Tensor, batch_size: int = 256, max_images: int | None = 512) -> None:
    """Re-estimate the active subnet's BN statistics on images `x` (resized to its resolution)."""
    x = x[:max_images] if max_images else x
    was_training = net.training
    net.eval()
    with torch.no_grad(), calibrating(net):
        for start in range(0, len(x), batch_size):
            net(resize(x[start:start + batch_size], net.resolution))
    net.train(was_training)


def accuracy(net, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of the active subnet (eval mode, images resized to its resolution)."""
    was_training = net.training
    net.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(y), batch_size):
            out = net(resize(x[start:start + batch_size], net.resolution))
            correct += int((out.argmax(1) == y[start:start + batch_size]).sum())
    net.train(was_training)
    return correct / max(1, len(y))


def evaluate_config(net, config: Any, data: Splits, split: str = "val", calib_images: int = 512,
                    batch_size: int = 512) -> float:
    """calib_bn then accuracy of one subnet on a split."""
    net.set_active(config)
    calib_bn(net, data.train[0], max_images=calib_images)
    x, y = data.split(split)
    return accuracy(net, x, y, batch_size)


class SupernetEvaluator:
    """Accuracy source: int configs (n, positions) -> accuracies (n,), calib_bn per subnet, cached."""

    def __init__(self, net, data: Splits, split: str = "val", calib_images: int = 512, batch_size: int = 512,
                 threads: int | None = None):
        # channels-last runs the depthwise convs ~3x faster on CPU; the values are the same
        self.net, self.data, self.split = net.eval().to(memory_format=torch.channels_last), data, split
        self.calib_images, self.batch_size = calib_images, batch_size
        self.cache: dict[tuple[int, ...], float] = {}
        self.evaluated = 0
        if threads:
            torch.set_num_threads(threads)

    @classmethod
    def from_checkpoint(cls, path: str, data: str | None = None, split: str = "val", **kw) -> "SupernetEvaluator":
        """Load a checkpoint and the data it was trained on (or `data`), split as in training."""
        from .checkpoint import supernet_from_checkpoint
        from .data import load_data

        net, meta = supernet_from_checkpoint(path)
        splits = load_data(data or meta["data"], meta["channels"], meta["data_resolution"], meta.get("data_seed", 0))
        return cls(net, splits, split, **kw)

    @property
    def space(self):
        return self.net.space

    def __call__(self, configs: Any) -> np.ndarray:
        arr = np.atleast_2d(np.asarray(configs, dtype=np.int64))
        out = np.empty(len(arr), dtype=np.float64)
        for i, cfg in enumerate(arr):
            key = tuple(int(v) for v in cfg)
            if key not in self.cache:
                self.cache[key] = evaluate_config(self.net, cfg, self.data, self.split, self.calib_images,
                                                  self.batch_size)
                self.evaluated += 1
            out[i] = self.cache[key]
        return out


def supernet_accuracy_source(arg: str) -> SupernetEvaluator:
    """`CHECKPOINT[,data=PATH][,split=val|test]` -> an evaluator (the data defaults to the training data)."""
    path, *opts = arg.split(",")
    extra: dict[str, str] = {}
    for opt in opts:
        k, _, v = opt.partition("=")
        if k.strip() not in ("data", "split"):
            raise UsageError(f"supernet accuracy options are data= and split=, got {opt!r}")
        extra[k.strip()] = v.strip()
    if not path:
        raise UsageError("the supernet accuracy source needs a checkpoint: --accuracy supernet:CHECKPOINT")
    return SupernetEvaluator.from_checkpoint(path, data=extra.get("data"), split=extra.get("split", "val"))


def register() -> bool:
    """Register `supernet:CHECKPOINT` with latbench.search's accuracy sources when that exists."""
    try:
        from ..search.accuracy import AccuracySource, register_accuracy_source
    except ImportError:
        return False

    class SupernetAccuracy(AccuracySource):
        """Top-1 accuracy of each subnet from the trained supernet (calib_bn, held-out split)."""

        proxy = False

        def __init__(self, space, evaluator: SupernetEvaluator, arg: str):
            super().__init__(space)
            self.evaluator = evaluator
            self.name = f"supernet:{arg}"
            self.description = f"supernet accuracy on the {evaluator.split} split after calib_bn ({arg})"

        def score(self, configs: np.ndarray) -> np.ndarray:
            return self.evaluator(configs)

    def factory(arg: str, space) -> AccuracySource:
        ev = supernet_accuracy_source(arg)
        if space is not None and getattr(space, "name", None) != ev.space.name:
            raise UsageError(f"supernet:{arg} was trained on space {ev.space.name!r}, the search runs on "
                             f"{getattr(space, 'name', space)!r}")
        return SupernetAccuracy(ev.space, ev, arg)

    register_accuracy_source("supernet", factory)
    return True


__all__ = ["calib_bn", "calibrating", "bn_snapshot", "accuracy", "evaluate_config", "SupernetEvaluator",
           "supernet_accuracy_source", "register"]

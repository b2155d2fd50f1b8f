"""Supernets in PyTorch: dynamic layers, a shared-weight SuperNet for any latbench space, Convert,
PaddleSlim's OFA API with progressive shrinking, BigNAS sandwich training, calib_bn evaluation,
search under latency budgets and export. Importing this package imports torch (never `import latbench`)."""
from __future__ import annotations

from ..errors import require

require("torch", "torch")

from .convert import Convert, SuperBatchNorm2d, SuperConv2d, SuperLinear, supernet  # noqa: E402
from .evaluator import SupernetEvaluator, accuracy, calib_bn, evaluate_config, register  # noqa: E402
from .layers import DynamicBatchNorm2d, DynamicConv2d, DynamicLinear, DynamicSE  # noqa: E402
from .model import SuperNet, slot_variants  # noqa: E402
from .ofa import OFA, DistillConfig, RunConfig  # noqa: E402

register()  # `--accuracy supernet:CHECKPOINT` in latbench search

__all__ = [
    "SuperNet", "slot_variants", "Convert", "supernet", "SuperConv2d", "SuperBatchNorm2d", "SuperLinear",
    "OFA", "RunConfig", "DistillConfig", "DynamicConv2d", "DynamicBatchNorm2d", "DynamicLinear", "DynamicSE",
    "SupernetEvaluator", "calib_bn", "accuracy", "evaluate_config",
]

"""A subnet trained alone, from scratch: the baseline weight sharing is judged against (the same
architecture, data, epochs and schedule, no supernet). SGD with Nesterov momentum, one cosine
learning-rate schedule over all epochs, label smoothing and the random shift `supernet train` uses."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import require
from .data import Splits, batches, resize, shift
from .evaluator import evaluate_config
from .model import SuperNet

torch = require("torch", "torch")
F = torch.nn.functional


def train_alone(space, config: Any, data: Splits, epochs: int, batch_size: int = 32, lr: float = 0.1,
                seed: int = 0, order_seed: int | None = None, weight_decay: float = 5e-5, label_smoothing: float = 0.1,
                max_shift: int = 2):
    """A SuperNet of `space` fixed at `config`, trained from scratch on `data` for `epochs`
    (its other weights never run, so it is the subnet alone); weights drawn from `seed`, batches
    and shifts from `order_seed` (default `seed`); returns the net, in eval mode."""
    torch.manual_seed(seed)
    order_seed = seed if order_seed is None else order_seed
    net = SuperNet(space).to(memory_format=torch.channels_last)
    net.set_active(config)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    x, y = data.train
    total = epochs * -(-len(y) // batch_size)
    k = 0
    for e in range(epochs):
        rng = np.random.default_rng([order_seed, e])
        for xb, yb in batches(x, y, batch_size, rng):
            for g in opt.param_groups:
                g["lr"] = 0.5 * lr * (1 + np.cos(np.pi * k / total))
            opt.zero_grad()
            out = net(resize(shift(xb, rng, max_shift), net.resolution))
            F.cross_entropy(out, yb, label_smoothing=label_smoothing).backward()
            opt.step()
            k += 1
    return net.eval()


def alone_accuracy(space, config: Any, data: Splits, epochs: int, split: str = "test", **kw) -> float:
    """`split` accuracy of `config` trained alone (`train_alone`), after the same calib_bn a
    supernet's subnet gets."""
    return float(evaluate_config(train_alone(space, config, data, epochs, **kw), config, data, split))


__all__ = ["train_alone", "alone_accuracy"]

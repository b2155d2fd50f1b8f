"""Once-for-All-style accuracy predictor: an MLP over a one-hot encoding of an OFA MobileNetV3
subnet (3 hidden layers of 400, Linear+ReLU, then Linear to 1, plus a `base_acc` offset).

Layers are named as in OFA's `AccuracyPredictor` (`layers.0.0.weight` ... `layers.3.weight`,
`base_acc`), so its state_dicts load; the tutorial's published `acc_predictor.pth` (a plain
nn.Sequential: `0.weight` ... `6.bias`) loads too, its last bias becoming `base_acc`.
The input layout follows from the first layer's width:
- 128: OFA tutorial `spec2feats`: ks one-hot (20 blocks x 3), e one-hot (20 x 3), blocks beyond a
  stage's depth all zero, then r one-hot over 8 bins `(r - 112) // 16`;
- 145: OFA `MobileNetArchEncoder` with the 25 resolutions 128..224: r one-hot first, then ks, e.
torch is imported only when a predictor is built, loaded or trained; weights load with
`weights_only=True` and are saved as a plain state_dict (no pickle of objects).
"""
from __future__ import annotations

import csv
import functools
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import FormatError, UsageError, require
from .accuracy import AccuracySource

N_BLOCKS, N_STAGES, MAX_DEPTH = 20, 5, 4
KS, EXPAND, DEPTH = (3, 5, 7), (3, 4, 6), (2, 3, 4)
RESOLUTIONS = tuple(range(128, 225, 4))
LAYOUTS = {128: "ofa-tutorial", 145: "ofa-arch-encoder"}


def check_ofa_space(space) -> None:
    """The encoding is OFA MobileNetV3's: positions ks0..19, e0..19, d0..4, r with OFA's choices."""
    want = ([(f"ks{i}", KS) for i in range(N_BLOCKS)] + [(f"e{i}", EXPAND) for i in range(N_BLOCKS)]
            + [(f"d{i}", DEPTH) for i in range(N_STAGES)] + [("r", RESOLUTIONS)])
    have = [(p.name, tuple(p.choices)) for p in space.positions]
    if have != want:
        raise UsageError(f"the OFA-style MLP encodes OFA MobileNetV3 subnets (ofa-mbv3-w10/w12); "
                         f"space {space.name!r} has other positions")


def ofa_features(configs: np.ndarray, dim: int = 128) -> np.ndarray:
    """One-hot features (n, dim) float32 of OFA MobileNetV3 index configs, as OFA encodes them."""
    X = np.asarray(configs, dtype=np.int64)
    n = len(X)
    if dim == 128:
        ks_off, e_off = 0, 3 * N_BLOCKS
        r_col = 6 * N_BLOCKS + (np.asarray(RESOLUTIONS)[X[:, -1]] - 112) // 16
    elif dim == 145:
        ks_off, e_off = len(RESOLUTIONS), len(RESOLUTIONS) + 3 * N_BLOCKS
        r_col = X[:, -1]
    else:
        raise UsageError(f"no OFA encoding has {dim} inputs (known: 128 tutorial, 145 arch encoder)")
    depth = np.asarray(DEPTH)[X[:, 2 * N_BLOCKS:2 * N_BLOCKS + N_STAGES]]  # (n, 5)
    active = (np.arange(MAX_DEPTH)[None, None, :] < depth[:, :, None]).reshape(n, N_BLOCKS)
    out = np.zeros((n, dim), dtype=np.float32)
    rows = np.arange(n)[:, None]
    cols = 3 * np.arange(N_BLOCKS)[None, :]
    out[rows, ks_off + cols + X[:, :N_BLOCKS]] = active
    out[rows, e_off + cols + X[:, N_BLOCKS:2 * N_BLOCKS]] = active
    out[np.arange(n), r_col] = 1.0
    return out


@functools.lru_cache(maxsize=None)
def _mlp_class():
    """The torch module class, defined on first use so that importing latbench needs no torch."""
    torch = require("torch", "torch")
    nn = torch.nn

    class OFAAccuracyMLP(nn.Module):
        """n_layers x (Linear+ReLU) of `hidden`, then Linear(hidden, 1, bias=False) + base_acc."""

        def __init__(self, in_dim: int = 128, hidden: int = 400, n_layers: int = 3):
            super().__init__()
            blocks = [nn.Sequential(nn.Linear(in_dim if i == 0 else hidden, hidden), nn.ReLU(inplace=True))
                      for i in range(n_layers)]
            self.layers = nn.Sequential(*blocks, nn.Linear(hidden, 1, bias=False))
            self.register_buffer("base_acc", torch.zeros(1))

        def forward(self, x):
            return self.layers(x).squeeze(-1) + self.base_acc

    return OFAAccuracyMLP


def build_mlp(in_dim: int = 128, hidden: int = 400, n_layers: int = 3):
    """A fresh OFA-style accuracy MLP (torch module)."""
    return _mlp_class()(in_dim, hidden, n_layers)


def to_ofa_layout(state: dict, where: str = "state_dict") -> dict:
    """OFA AccuracyPredictor keys from either OFA layout (tutorial nn.Sequential or nas module)."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    keys = set(state)
    if any(k.startswith("layers.") for k in keys):
        out = dict(state)
        if "base_acc" not in out:
            torch = require("torch", "torch")
            out["base_acc"] = torch.zeros(1)
        return out
    linear = sorted({int(k.split(".")[0]) for k in keys if k.split(".")[0].isdigit()})
    if not linear or any(f"{i}.weight" not in keys for i in linear):
        raise FormatError(f"{where}: not an OFA accuracy predictor (keys: {', '.join(sorted(keys)[:6])})")
    out = {}
    for j, i in enumerate(linear[:-1]):
        out[f"layers.{j}.0.weight"] = state[f"{i}.weight"]
        out[f"layers.{j}.0.bias"] = state[f"{i}.bias"]
    last = linear[-1]
    out[f"layers.{len(linear) - 1}.weight"] = state[f"{last}.weight"]
    bias = state.get(f"{last}.bias")
    out["base_acc"] = bias.reshape(1).clone() if bias is not None else require("torch", "torch").zeros(1)
    return out


SPACE_KEY = "latbench_space"  # the space a predictor latbench trained was trained on (a str entry)


def load_mlp(path: str | os.PathLike, space=None):
    """A saved predictor (either OFA layout) as an eval-mode torch module. With `space`, a
    predictor latbench trained on another space is refused: its scores would not be accuracies
    of this space's subnets (OFA's own files record no space)."""
    torch = require("torch", "torch")
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise UsageError(f"{p}: no such accuracy predictor file")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise FormatError(f"{p}: not a torch state_dict ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    if not isinstance(state, dict):
        raise FormatError(f"{p}: holds a {type(state).__name__}, not a state_dict")
    trained_on = state.pop(SPACE_KEY, None)
    if space is not None and isinstance(trained_on, str) and trained_on != space.name:
        raise UsageError(f"{p} was trained on {trained_on} subnets; the space is {space.name}, whose subnets "
                         f"it does not score (train one with latbench accuracy train --space {space.name})")
    state = to_ofa_layout(state, p)
    n_layers = sum(1 for k in state if k.startswith("layers.") and k.endswith(".0.weight"))
    if n_layers == 0 or "layers.0.0.weight" not in state:
        raise FormatError(f"{p}: not an OFA accuracy predictor (no layers.0.0.weight)")
    hidden, in_dim = state["layers.0.0.weight"].shape
    if in_dim not in LAYOUTS:
        raise FormatError(f"{p}: first layer takes {in_dim} inputs; OFA encodings have 128 or 145")
    net = build_mlp(int(in_dim), int(hidden), n_layers)
    try:
        net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        raise FormatError(f"{p}: weights do not fit an OFA accuracy MLP: {str(e).splitlines()[0][:200]}") from None
    return net.eval()


class MLPAccuracy(AccuracySource):
    """`mlp:PATH`: batched forward of an OFA-style MLP over the whole population."""

    def __init__(self, space, net, name: str = "mlp", threads: int = 1):
        check_ofa_space(space)
        super().__init__(space)
        self.net = net
        self.threads = threads  # a 100 x 128 batch runs faster on one thread than on several
        self.in_dim = int(net.layers[0][0].in_features)
        self.name = name
        self.description = f"OFA-style accuracy MLP ({LAYOUTS.get(self.in_dim, '?')} encoding, {self.in_dim} inputs)"

    @classmethod
    def load(cls, path: str | os.PathLike, space) -> "MLPAccuracy":
        check_ofa_space(space)
        return cls(space, load_mlp(path, space), name=f"mlp:{os.fspath(path)}")

    def score(self, configs: np.ndarray) -> np.ndarray:
        torch = require("torch", "torch")
        x = torch.from_numpy(ofa_features(configs, self.in_dim))
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                return self.net(x).double().numpy()
        finally:
            torch.set_num_threads(before)


# ---------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainReport:
    """How a training run went: sizes, RMSE on train and held-out pairs, the offset, time."""

    n_train: int
    n_val: int
    epochs: int
    base_acc: float
    train_rmse: float
    val_rmse: float  # NaN without held-out pairs
    seconds: float


def read_pairs(path: str | os.PathLike, space) -> tuple[np.ndarray, np.ndarray]:
    """(configs, accuracies) from a CSV with a `config` column (the published form as JSON, e.g.
    {"ks": [...], "e": [...], "d": [...], "r": [224]}, or a JSON list of indices) and an
    `accuracy` column (`acc` and `top1` are accepted too)."""
    p = os.fspath(path)
    try:
        f = open(p, newline="", encoding="utf-8")
    except OSError as e:
        raise UsageError(f"{p}: cannot read: {e.strerror or e}") from None
    with f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        acc_col = next((c for c in ("accuracy", "acc", "top1") if c in fields), None)
        if "config" not in fields or acc_col is None:
            raise FormatError(f"{p}:1: needs columns 'config' and 'accuracy'; has {', '.join(fields) or 'none'}")
        configs, accs = [], []
        for line, row in enumerate(reader, start=2):
            try:
                cfg = json.loads(row["config"])
            except (TypeError, ValueError) as e:
                raise FormatError(f"{p}:{line}: config is not JSON ({e})") from None
            try:
                configs.append(space.index(cfg))
            except Exception as e:
                raise FormatError(f"{p}:{line}: {e}") from None
            try:
                a = float(row[acc_col])
            except (TypeError, ValueError):
                raise FormatError(f"{p}:{line}: accuracy {row[acc_col]!r} is not a number") from None
            if not math.isfinite(a):
                raise FormatError(f"{p}:{line}: accuracy is not finite")
            accs.append(a)
    if len(configs) < 2:
        raise FormatError(f"{p}: needs at least 2 (config, accuracy) rows, found {len(configs)}")
    return np.array(configs, dtype=np.int64), np.array(accs, dtype=np.float64)


def train_mlp(space, configs: np.ndarray, accuracy: np.ndarray, *, epochs: int = 200, lr: float = 1e-3,
              batch_size: int = 256, weight_decay: float = 0.0, val_fraction: float = 0.1, seed: int = 0,
              hidden: int = 400, n_layers: int = 3, threads: int = 1,
              progress: Callable[[int, int, float], None] | None = None):
    """Fit the MLP on (config, accuracy) pairs with Adam on MSE; base_acc starts at the mean
    accuracy as in OFA's trainer. Seeded; torch's global RNG and thread count are left as they
    were (one thread by default: batches this small run 10x slower on a busy 2-core machine
    with more)."""
    check_ofa_space(space)
    torch = require("torch", "torch")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _train(torch, space, configs, accuracy, epochs, lr, batch_size, weight_decay, val_fraction,
                      seed, hidden, n_layers, progress)
    finally:
        torch.set_num_threads(before)


def _train(torch, space, configs, accuracy, epochs, lr, batch_size, weight_decay, val_fraction, seed,
           hidden, n_layers, progress):
    t0 = time.perf_counter()
    X = torch.from_numpy(ofa_features(configs, 128))
    y = torch.from_numpy(np.asarray(accuracy, dtype=np.float32))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(X))
    n_val = int(round(val_fraction * len(X))) if len(X) >= 10 else 0
    val, tr = order[:n_val], order[n_val:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_mlp(128, hidden, n_layers)
        with torch.no_grad():
            net.base_acc.fill_(float(y[tr].mean()))
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
        gen = torch.Generator().manual_seed(seed)
        Xt, yt = X[tr], y[tr]
        for epoch in range(epochs):
            net.train()
            perm = torch.randperm(len(Xt), generator=gen)
            for i in range(0, len(Xt), batch_size):
                idx = perm[i:i + batch_size]
                loss = torch.nn.functional.mse_loss(net(Xt[idx]), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            if progress:
                progress(epoch + 1, epochs, float(loss))
    net.eval()
    with torch.inference_mode():
        train_rmse = float(torch.sqrt(torch.mean((net(Xt) - yt) ** 2)))
        val_rmse = float(torch.sqrt(torch.mean((net(X[val]) - y[val]) ** 2))) if n_val else math.nan
    report = TrainReport(len(tr), n_val, epochs, float(net.base_acc), train_rmse, val_rmse,
                         time.perf_counter() - t0)
    return net, report


def save_mlp(net, path: str | os.PathLike, space: str | None = None) -> None:
    """torch.save of the plain state_dict (OFA AccuracyPredictor key names), with the name of
    the space it was trained on under SPACE_KEY when given."""
    torch = require("torch", "torch")
    p = os.fspath(path)
    state: dict[str, Any] = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    if space:
        state[SPACE_KEY] = space
    try:
        torch.save(state, p)
    except OSError as e:
        raise UsageError(f"{p}: cannot write: {e.strerror or e}") from None


def describe(net) -> dict[str, Any]:
    first = net.layers[0][0]
    return {"inputs": int(first.in_features), "hidden": int(first.out_features),
            "layers": len(net.layers) - 1, "encoding": LAYOUTS.get(int(first.in_features), "?")}

"""Training data for supernets: scikit-learn's digits, an image folder or an .npz, split 3 ways.

Images are held as one float tensor at the space's largest resolution, normalised with the
training split's per-channel mean and std; a subnet at a smaller resolution gets them resized
(bilinear) on the fly, the same way in training, calib_bn and evaluation. Splits are stratified
and fixed by a seed: train (weights, calib_bn), val (the search's accuracy), test (reporting).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import FormatError, UsageError, require

torch = require("torch", "torch")
F = torch.nn.functional
Tensor = torch.Tensor

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class Splits:
    """Normalised image tensors (N, C, R, R) and int64 labels for train, val and test."""

    name: str
    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    n_classes: int
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    def split(self, which: str) -> tuple[Tensor, Tensor]:
        if which not in ("train", "val", "test"):
            raise UsageError(f"split must be train, val or test, got {which!r}")
        return getattr(self, which)

    def describe(self) -> dict:
        return {"data": self.name, "classes": self.n_classes, "train": len(self.train[1]),
                "val": len(self.val[1]), "test": len(self.test[1]), "resolution": int(self.train[0].shape[-1]),
                "channels": int(self.train[0].shape[1])}


# ---------------------------------------------------------------------- sources
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: its data file read as load_digits() reads it, without importing
    sklearn (seconds, scipy.stats included, in every process that trains); load_digits() where the
    file is not where this sklearn keeps it."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is not None and path.is_file():
        data = np.loadtxt(path, delimiter=",")
        images, target = data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    else:
        d = require("sklearn.datasets", "supernet").load_digits()
        images, target = d.images, d.target
    return (images / 16.0).astype(np.float32)[:, None], target.astype(np.int64)


def _npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            xk = next((k for k in ("images", "x", "X", "data") if k in z.files), None)
            yk = next((k for k in ("labels", "y", "Y", "targets") if k in z.files), None)
            if xk is None or yk is None:
                raise FormatError(f"{path}: an .npz needs arrays 'images' (or x) and 'labels' (or y); "
                                  f"it has {', '.join(z.files) or 'none'}")
            x, y = z[xk], z[yk]
    except (OSError, ValueError) as e:
        raise FormatError(f"{path}: cannot read the .npz ({e})") from None
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = np.transpose(x, (0, 3, 1, 2))
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
        raise FormatError(f"{path}: images must be (N,H,W), (N,H,W,C) or (N,C,H,W) and labels (N,); "
                          f"got {x.shape} and {y.shape}")
    x = x.astype(np.float32) / (255.0 if x.dtype == np.uint8 else 1.0)
    _, y = np.unique(y, return_inverse=True)
    return x[:, :3], y.astype(np.int64)


def _folder(path: str, channels: int, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    image = require("PIL.Image", "supernet")
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    if not classes:
        raise FormatError(f"{path}: an image folder needs one subfolder per class")
    xs, ys = [], []
    for label, cls in enumerate(classes):
        folder = os.path.join(path, cls)
        for fn in sorted(os.listdir(folder)):
            if not fn.lower().endswith(IMAGE_EXTS):
                continue
            try:
                with image.open(os.path.join(folder, fn)) as im:
                    im = im.convert("L" if channels == 1 else "RGB").resize((resolution, resolution),
                                                                             image.BILINEAR)
                    arr = np.asarray(im, dtype=np.float32) / 255.0
            except OSError as e:
                raise FormatError(f"{os.path.join(folder, fn)}: cannot read the image ({e})") from None
            xs.append(arr[None] if arr.ndim == 2 else np.transpose(arr, (2, 0, 1)))
            ys.append(label)
    if not xs:
        raise FormatError(f"{path}: no images ({', '.join(IMAGE_EXTS)}) in its class folders")
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def _fit_channels(x: np.ndarray, channels: int) -> np.ndarray:
    c = x.shape[1]
    if c == channels:
        return x
    if channels == 1:
        return x.mean(axis=1, keepdims=True)
    if c == 1:
        return np.repeat(x, channels, axis=1)
    raise UsageError(f"the images have {c} channels and the space takes {channels}")


# ---------------------------------------------------------------------- splits
def stratified_split(y: np.ndarray, fractions: tuple[float, float], seed: int) -> tuple[np.ndarray, ...]:
    """Index arrays (train, val, test), each class split in the same proportions."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for cls in np.unique(y):
        idx = rng.permutation(np.nonzero(y == cls)[0])
        n_val, n_test = int(round(len(idx) * fractions[0])), int(round(len(idx) * fractions[1]))
        parts[1].append(idx[:n_val])
        parts[2].append(idx[n_val:n_val + n_test])
        parts[0].append(idx[n_val + n_test:])
    return tuple(np.sort(np.concatenate(p)) for p in parts)


def read_images(spec: str, channels: int, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """The images (N, C, H, W) float32 in [0, 1] and int64 labels of `digits`, an image folder
    (class per subfolder, read at `resolution`) or an .npz, before any resizing or splitting."""
    if spec == "digits":
        x, y = _digits()
    elif os.path.isdir(spec):
        x, y = _folder(spec, channels, resolution)
    elif spec.endswith(".npz") and os.path.isfile(spec):
        x, y = _npz(spec)
    else:
        raise UsageError(f"--data must be 'digits', an image folder or an .npz file, got {spec!r}")
    if len(np.unique(y)) < 2:
        raise FormatError(f"{spec}: needs at least two classes")
    return x, y


def n_classes_of(y: np.ndarray) -> int:
    """The class count `Splits.n_classes` will report for labels `y`."""
    return int(y.max()) + 1


def to_splits(spec: str, x: np.ndarray, y: np.ndarray, channels: int, resolution: int, seed: int = 0,
              fractions: tuple[float, float] = (0.15, 0.15)) -> Splits:
    """Images from `read_images` -> resized, normalised stratified splits."""
    x = _fit_channels(x, channels)
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.shape[-1] != resolution or t.shape[-2] != resolution:
        t = F.interpolate(t, size=(resolution, resolution), mode="bilinear", align_corners=False)
    tr, va, te = stratified_split(y, fractions, seed)
    mean = t[tr].mean(dim=(0, 2, 3))
    std = t[tr].std(dim=(0, 2, 3)).clamp_min(1e-6)
    t = ((t - mean[:, None, None]) / std[:, None, None]).contiguous()
    yt = torch.from_numpy(y)
    return Splits(spec if spec == "digits" else os.path.basename(os.path.normpath(spec)),
                  (t[tr], yt[tr]), (t[va], yt[va]), (t[te], yt[te]), n_classes_of(y),
                  mean.tolist(), std.tolist())


def load_data(spec: str, channels: int, resolution: int, seed: int = 0,
              fractions: tuple[float, float] = (0.15, 0.15)) -> Splits:
    """`digits`, an image folder (class per subfolder) or an .npz -> normalised stratified splits."""
    x, y = read_images(spec, channels, resolution)
    return to_splits(spec, x, y, channels, resolution, seed, fractions)


# ---------------------------------------------------------------------- batches
def resize(x: Tensor, resolution: int) -> Tensor:
    """Images at another square resolution (bilinear), unchanged when already there."""
    if x.shape[-1] == resolution and x.shape[-2] == resolution:
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)


def shift(x: Tensor, rng: np.random.Generator, max_shift: int) -> Tensor:
    """Random translation by up to max_shift pixels per image (zero fill), a cheap augmentation."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dx = rng.integers(0, 2 * max_shift + 1, n)
    dy = rng.integers(0, 2 * max_shift + 1, n)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def batches(x: Tensor, y: Tensor, batch_size: int, rng: np.random.Generator | None = None,
            rank: int = 0, world: int = 1, drop_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
    """Mini-batches in a seeded shuffled order; with world > 1 each rank takes its own share of
    every global batch (batch_size per rank), so all ranks run the same number of steps."""
    n = len(y)
    order = rng.permutation(n) if rng is not None else np.arange(n)
    step = batch_size * world
    stop = n - n % step if (drop_last or world > 1) and n >= step else n
    for start in range(0, stop, step):
        idx = order[start:start + step][rank::world]
        if len(idx):
            yield x[idx], y[idx]


def steps_per_epoch(n: int, batch_size: int, world: int = 1, drop_last: bool = False) -> int:
    step = batch_size * world
    if (drop_last or world > 1) and n >= step:
        return n // step
    return -(-n // step)


__all__ = ["Splits", "load_data", "read_images", "to_splits", "n_classes_of", "batches", "resize", "shift", "stratified_split", "steps_per_epoch"]

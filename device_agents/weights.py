"""Canonical weights of an op, aligned with `ops.expand(op)`: every agent builds its model from
these and the torch reference loads the same ones, so outputs can be compared across runtimes."""
from __future__ import annotations

import numpy as np

from latbench import ops as O
from latbench.ops import OpSpec

Weights = list[dict[str, np.ndarray]]


def op_weights(op: OpSpec, seed: int = 0) -> Weights:
    """One dict per expanded op: conv {weight OIHW, bias}, linear {weight (out,in), bias},
    batch_norm {gamma, beta, mean, var}, standalone eltwise {other}; {} for the rest."""
    rng = np.random.default_rng(seed)
    parts = O.expand(op)
    out: Weights = []
    for p in parts:
        w: dict[str, np.ndarray] = {}
        if p.kind == "conv":
            fan_in = (p.c // p.groups) * p.kernel * p.kernel
            w["weight"] = _f32(_normal(rng, (p.out, p.c // p.groups, p.kernel, p.kernel)) / np.sqrt(fan_in))
            if p.bias:
                w["bias"] = _f32(rng.standard_normal(p.out) * 0.1)
        elif p.kind == "linear":
            w["weight"] = _f32(_normal(rng, (p.out, p.c)) / np.sqrt(p.c))
            if p.bias:
                w["bias"] = _f32(rng.standard_normal(p.out) * 0.1)
        elif p.kind == "batch_norm":
            w["gamma"] = _f32(1.0 + 0.1 * rng.standard_normal(p.c))
            w["beta"] = _f32(0.1 * rng.standard_normal(p.c))
            w["mean"] = _f32(0.1 * rng.standard_normal(p.c))
            w["var"] = _f32(1.0 + 0.5 * rng.random(p.c))
        elif p.kind == "eltwise" and len(parts) == 1:
            shape = (p.n, p.c, 1, 1) if p.broadcast else p.in_shape
            w["other"] = _f32(rng.standard_normal(shape))
        out.append(w)
    return out


BN_EPS = 1e-5


def fold_bn(conv_w: dict[str, np.ndarray], bn: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Conv weight and bias with an inference batch norm folded in (what runtimes execute)."""
    scale = bn["gamma"] / np.sqrt(bn["var"] + BN_EPS)
    w = conv_w["weight"] * scale[:, None, None, None]
    b = conv_w.get("bias", np.zeros_like(bn["beta"]))
    return _f32(w), _f32((b - bn["mean"]) * scale + bn["beta"])


def _normal(rng: np.random.Generator, shape) -> np.ndarray:
    """float32 standard normals (float64 draws cost ~3x more for big layers)."""
    return rng.standard_normal(shape, dtype=np.float32)


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


POOL_SIZE = 1 << 20


def seeded_pool(seed: int) -> np.ndarray:
    """Seeded standard normals (float32) that timing inputs and weights are cut from: float
    kernels take as long whatever the values, and slicing costs a copy where drawing millions of
    normals per op would cost more than timing it."""
    return np.random.default_rng(seed).standard_normal(POOL_SIZE, dtype=np.float32)


def spec_values(t, pool: np.ndarray, at: int = 0) -> np.ndarray:
    """An owned array for a node's tensor (latbench.nodes.TensorSpec): its recorded values, else
    values cut from `pool` at `at` (floats) or zeros (integers: valid indices; booleans False)."""
    if t.values is not None:
        return np.array(t.values, dtype=t.dtype).reshape(t.shape)
    if not t.is_float:
        return np.zeros(t.shape, dtype=t.dtype)
    n = t.numel
    at %= max(pool.size, 1)
    flat = pool[at:at + n] if at + n <= pool.size else np.resize(np.roll(pool, -at), n)
    return np.array(flat, dtype=t.dtype).reshape(t.shape)

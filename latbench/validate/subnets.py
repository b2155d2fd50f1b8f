"""Which subnets a validation measures: seeded random configs of distinct networks at chosen
resolutions, and the facts of a subnet the report needs (FLOPs, resolution)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import UsageError


def network_id(space, config) -> tuple[str, ...]:
    """What makes two configs the same network: their block keys (unused positions ignored)."""
    return tuple(b.key for b in space.blocks(config))


def sample_subnets(space, n: int, seed: int, resolutions: Sequence[int] | None = None) -> np.ndarray:
    """n random configs of distinct networks, each at a resolution drawn from `resolutions`."""
    if n < 0:
        raise UsageError(f"number of subnets must be >= 0, got {n}")
    res = space.check_resolutions(resolutions)
    rng = np.random.default_rng(seed)
    rpos = space.resolution_position
    res_idx = [list(space.resolutions).index(r) for r in res] if rpos is not None else []
    out: list[np.ndarray] = []
    seen: set[tuple[str, ...]] = set()
    tries = 0
    while len(out) < n:
        batch = space.sample(rng, max(16, 2 * (n - len(out))))
        if rpos is not None:
            batch[:, rpos] = rng.choice(res_idx, len(batch))
        for cfg in batch:
            tries += 1
            nid = network_id(space, cfg)
            if nid not in seen:
                seen.add(nid)
                out.append(cfg)
                if len(out) == n:
                    break
        if tries > 50 * n + 1000:
            raise UsageError(f"space {space.name!r} has fewer than {n} distinct subnets at resolutions "
                             f"{', '.join(map(str, res))}: ask for fewer")
    return np.array(out, dtype=np.int64).reshape(n, space.n_positions)


def subnet_flops(space, config) -> int:
    """Multiply-accumulate FLOPs of the whole subnet (sum over its blocks)."""
    return int(sum(b.flops for b in space.blocks(config)))


def subnet_resolution(space, config) -> int:
    """The subnet's input resolution (its input height)."""
    return int(space.input_shape(config)[2])

"""Data-parallel training under torchrun: process group set-up, sharding, one gradient all-reduce.

Every rank samples the same subnets (same seed) and takes its own share of each global batch.
A training step runs several subnets (sandwich, dynamic batch size), each with its own unused
weights, so gradients are accumulated locally and averaged with ONE coalesced all-reduce per step
(the zeros of unused weights included) instead of wrapping the model in DistributedDataParallel,
which would need find_unused_parameters and reduce once per backward pass.

`process_group()` holds the group for a block and always destroys it, so gloo's threads stop
before the interpreter exits: threads still running at exit abort the process now and then
(SIGABRT, "terminate called without an active exception"), the flaky-under-load failure of a
two-rank job that had finished its work.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

from ..errors import require

torch = require("torch", "torch")
dist = torch.distributed


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the torchrun job when WORLD_SIZE > 1 (gloo on CPU, nccl on GPU); else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = f"cuda:{local}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(local)
    if world <= 1:
        return DistInfo(device=device)
    if not dist.is_initialized():
        # torch.distributed.nn binds group.WORLD as default arguments when it is imported. Imported
        # while a group exists (torch.optim imports it through torch._dynamo with the first
        # optimizer), it keeps the group alive past destroy_process_group; imported first, it
        # binds None.
        import torch.distributed.nn as _dist_nn  # noqa: F401

        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, device)


@contextlib.contextmanager
def process_group() -> Iterator[DistInfo]:
    """This process's place in the job for the block; the group is destroyed on the way out,
    whether the block returns or raises (a failing rank then exits with its own error and the
    others' collectives fail instead of waiting)."""
    info = init_distributed()
    try:
        yield info
    finally:
        if info.world > 1:
            shutdown()


def allreduce_grads(params, world: int) -> None:
    """Average the gradients of `params` over all ranks in one flat all-reduce."""
    if world <= 1:
        return
    params = [p for p in params if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    at = 0
    for p in params:
        n = p.numel()
        p.grad = flat[at:at + n].view_as(p).clone()
        at += n


def broadcast_state(module, world: int) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if world <= 1:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, 0)


def all_same(value: float, world: int) -> float:
    """Mean of a float over ranks (for logged losses)."""
    if world <= 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item() / world)


def ranks_in_sync(module, world: int) -> bool:
    """True when every rank holds the same parameters (compared by a float64 checksum)."""
    if world <= 1:
        return True
    with torch.no_grad():
        s = torch.stack([p.detach().double().sum() for p in module.parameters()]).sum().reshape(1)
    lo, hi = s.clone(), s.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return bool(torch.equal(lo, hi))


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["DistInfo", "init_distributed", "process_group", "allreduce_grads", "broadcast_state", "all_same", "barrier", "shutdown", "ranks_in_sync"]

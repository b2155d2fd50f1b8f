"""The supernet training driver shared by the CLI, the tests and torchrun: data, model, optimizer,
the OFA or BigNAS loop, evaluation, and a checkpoint after every epoch that resumes exactly.

Every random draw of epoch e comes from generators seeded with (seed, e), so a run resumed from
the checkpoint of epoch e continues as the uninterrupted run would have (same subnets, batches,
augmentation, learning rate, stage and phase).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import UsageError, require
from . import distributed as D
from .checkpoint import load_checkpoint, save_checkpoint, space_meta
from .data import batches, n_classes_of, read_images, shift, steps_per_epoch, to_splits
from .evaluator import bn_snapshot, evaluate_config
from .model import SuperNet
from .ofa import OFA, DistillConfig, RunConfig, teacher_copy
from .sandwich import SubnetSampler, flops_cost, sandwich_step
from .shrinking import DYNAMIC_BATCH, Stage, ofa_step, plan_epochs, stage_of

torch = require("torch", "torch")

STRATEGIES = ("ofa", "bignas")
DEFAULT_EPOCHS = {"ofa": 24, "bignas": 16}
RESUME_KEYS = ("space", "strategy", "epochs", "seed", "data", "batch_size", "transform", "schedule")
RESUME_DEFAULTS = {"schedule": "equal"}  # what a checkpoint from before the key was recorded was trained with


@dataclass
class TrainSettings:
    """Everything a training run depends on (stored in the checkpoint, checked on resume)."""

    space: str = "tiny"
    data: str = "digits"
    strategy: str = "ofa"
    epochs: int = 0  # 0: the strategy's default
    batch_size: int = 64  # per process
    lr: float = 0.05
    weight_decay: float = 5e-5
    momentum: float = 0.9
    label_smoothing: float = 0.1
    augment_shift: int = 2
    seed: int = 0
    data_seed: int = 0
    transform: str = ""  # "": depthwise for ofa, none for bignas
    full_fraction: float = 0.3  # ofa, equal schedule: share of epochs for the largest net
    schedule: str = "equal"  # ofa: equal phases, or Once-for-All's proportions ("ofa")
    ps_lr_scale: float = 0.5  # ofa: learning rate of the shrinking stages relative to lr
    num_random: int = 2  # bignas: random subnets per sandwich
    flops_range: tuple[float, float] | None = None  # bignas: MFLOPs range of random subnets
    max_tries: int = 50
    max_train_images: int = 0  # 0: all (a cap for quick runs)
    eval_every: int = 1  # evaluate largest/smallest on val every N epochs (0: only at the end)
    final_eval: bool = True  # test accuracy of the largest/smallest subnet when training ends
    calib_images: int = 512  # training images calib_bn averages over before each evaluation
    threads: int = 0
    out: str = "supernet.pt"
    stop_after: int = 0  # stop after this many epochs in total (0: run to the end); resume continues

    def resolved(self) -> "TrainSettings":
        if self.strategy not in STRATEGIES:
            raise UsageError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        s = TrainSettings(**asdict(self))
        s.epochs = s.epochs or DEFAULT_EPOCHS[s.strategy]
        s.transform = s.transform or ("depthwise" if s.strategy == "ofa" else "none")
        if s.epochs < 1 or s.batch_size < 1:
            raise UsageError("--epochs and --batch-size must be >= 1")
        return s


@dataclass
class TrainResult:
    """What a run produced: the checkpoint, its epochs, and accuracies of the largest/smallest subnet."""

    checkpoint: str
    epochs_done: int
    done: bool
    history: list[dict] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def _lr_at(base: float, stage: Stage, epoch: int, step: int, steps: int) -> float:
    """Cosine decay from `base` within each stage (restarting at every stage, as Once-for-All's
    phases do)."""
    t = ((epoch - stage.start) * steps + step) / max(1, stage.length * steps)
    return 0.5 * base * (1 + math.cos(math.pi * min(1.0, t)))


def _param_groups(net, wd: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        (decay if p.dim() > 1 and "transform_" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def train_supernet(settings: TrainSettings, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train (or resume) a supernet; writes `settings.out` after every epoch. Under torchrun the
    process group lives for the run and is destroyed whatever happens."""
    s = settings.resolved()
    with D.process_group() as info:
        return _train(s, info, log)


def _train(s: TrainSettings, info: D.DistInfo, log: Callable[[str], None] | None) -> TrainResult:
    """The run itself, in this process's place of the job."""
    say = log if (log is not None and info.main) else (lambda msg: None)
    if s.threads:
        torch.set_num_threads(s.threads)
    from ..spaces import get_space

    space = get_space(s.space)
    shape = space.input_shape(space.largest())
    channels, max_res = shape[1], shape[2]
    images, labels = read_images(s.data, channels, max_res)
    head = space.blocks(space.largest())[-1]  # checked before the images are resized (GBs at 224)
    if head.kind == "linear" and head.out != n_classes_of(labels):
        raise UsageError(f"space {space.name!r} has {head.out} outputs and {s.data} has {n_classes_of(labels)} classes")
    data = to_splits(s.data, images, labels, channels, max_res, s.data_seed)
    xtr, ytr = data.train
    if s.max_train_images:
        xtr, ytr = xtr[:s.max_train_images], ytr[:s.max_train_images]

    torch.manual_seed(s.seed)
    # channels-last runs depthwise convs ~3x faster on CPU (mkldnn); values are unchanged
    net = SuperNet(space, transform=s.transform).to(info.device, memory_format=torch.channels_last)
    D.broadcast_state(net, info.world)
    opt = torch.optim.SGD(_param_groups(net, s.weight_decay), lr=s.lr, momentum=s.momentum, nesterov=True)
    meta_base: dict[str, Any] = {
        **space_meta(space), "strategy": s.strategy, "epochs": s.epochs, "seed": s.seed, "data": s.data,
        "batch_size": s.batch_size, "transform": s.transform, "schedule": s.schedule, "channels": channels,
        "data_resolution": max_res,
        "data_seed": s.data_seed, "n_classes": data.n_classes, "mean": data.mean, "std": data.std,
        "world": info.world, "settings": {k: v for k, v in asdict(s).items() if k != "out"},
    }

    # ------------------------------------------------------------------ strategy set-up
    ofa: OFA | None = None
    full, n_epochs, order = 0, [], []
    teacher_state = None
    if s.strategy == "ofa":
        probe = OFA(net)
        order = probe.elastic_order
        full, n_epochs = plan_epochs(probe, s.epochs, s.full_fraction, s.schedule)
        meta_base["n_epochs"] = n_epochs
        meta_base["elastic_order"] = order
        meta_base["full_epochs"] = full
    sampler = SubnetSampler(space, flops_cost(space) if s.flops_range else None, s.flops_range, s.max_tries)

    def stage_for(epoch: int) -> Stage:
        if s.strategy == "bignas":
            return Stage("sandwich", start=0, length=s.epochs)
        return stage_of(epoch, full, n_epochs, order)

    # ------------------------------------------------------------------ resume
    start, history = 0, []
    if os.path.isfile(s.out):
        ckpt = load_checkpoint(s.out, map_location=info.device)
        meta = ckpt["meta"]
        for k in RESUME_KEYS:
            if meta.get(k, RESUME_DEFAULTS.get(k)) != meta_base.get(k):
                raise UsageError(f"{s.out}: was trained with {k}={meta.get(k)!r}, this run has "
                                 f"{k}={meta_base.get(k)!r} (use another --out to start afresh)")
        net.load_state_dict(ckpt["model"])
        if "optimizer" in ckpt:
            opt.load_state_dict(ckpt["optimizer"])
        teacher_state = ckpt.get("teacher")
        start, history = int(meta["epoch"]), list(meta.get("history", []))
        if start < s.epochs:
            st = stage_for(start)
            say(f"resuming {s.out} at epoch {start + 1}/{s.epochs} (stage {st.name}"
                + (f", phase {st.phase}" if st.phase >= 0 else "") + ")")

    steps = steps_per_epoch(len(ytr), s.batch_size, info.world)
    t_all = time.perf_counter()
    for epoch in range(start, s.epochs):
        if s.stop_after and epoch >= s.stop_after:
            break
        stage = stage_for(epoch)
        if s.strategy == "ofa":
            if stage.name != "full" and teacher_state is None:
                teacher_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            dbs = [DYNAMIC_BATCH.get(t, 2) for t in order]
            run_config = RunConfig(train_batch_size=s.batch_size, n_epochs=n_epochs, total_images=len(ytr),
                                   dynamic_batch_size=dbs,
                                   init_learning_rate=[[s.lr * s.ps_lr_scale] * len(p) for p in n_epochs])
            distill = None
            if stage.name != "full":
                teacher = SuperNet(space, transform=s.transform).to(info.device, memory_format=torch.channels_last)
                teacher.load_state_dict(teacher_state)
                distill = DistillConfig(lambda_distill=1.0, teacher_model=teacher_copy(teacher))
            ofa = OFA(net, run_config, distill, elastic_order=order, train_full=stage.name == "full")
            ofa.optimizer = opt  # channel sorting at a width phase permutes the momentum buffers too
            ofa.set_epoch(max(0, epoch - full))
            ofa.rng = np.random.default_rng([s.seed, epoch, 1])
        # the full net and BigNAS start at --lr; each shrinking phase at its run_config rate
        base_lr = s.lr if ofa is None or stage.name == "full" else ofa.phase_learning_rate()
        rng = np.random.default_rng([s.seed, epoch])
        aug = np.random.default_rng([s.seed, epoch, 2, info.rank])
        net.train()
        t0 = time.perf_counter()
        loss_sum, n = 0.0, 0
        for step, (xb, yb) in enumerate(batches(xtr, ytr, s.batch_size, rng, info.rank, info.world)):
            lr = _lr_at(base_lr, stage, epoch, step, steps)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            xb, yb = shift(xb, aug, s.augment_shift).to(info.device), yb.to(info.device)
            if s.strategy == "ofa":
                n_sub = 1 if stage.name == "full" else dbs[stage.task_idx]
                loss = ofa_step(ofa, xb, yb, n_sub, s.label_smoothing)
            else:
                strategy = ("max",) + ("random",) * s.num_random + ("min",)
                losses = sandwich_step(net, xb, yb, rng, sampler, strategy, s.label_smoothing)
                loss = sum(losses.values()) / len(losses)
            D.allreduce_grads(net.parameters(), info.world)
            opt.step()
            loss_sum += loss
            n += 1
        row: dict[str, Any] = {"epoch": epoch + 1, **stage.to_dict(), "loss": round(D.all_same(loss_sum / max(1, n), info.world), 5),
                               "seconds": round(time.perf_counter() - t0, 2), "lr_end": round(lr, 6) if n else 0.0}
        last = epoch + 1 == s.epochs
        if info.main and ((s.eval_every and (epoch + 1) % s.eval_every == 0) or (last and s.final_eval)):
            with bn_snapshot(net):
                for tag, cfg in (("max", space.largest()), ("min", space.smallest())):
                    row[f"val_{tag}"] = round(evaluate_config(net, cfg, data, "val", s.calib_images), 4)
        history.append(row)
        say(" ".join(f"{k}={v}" for k, v in row.items()))
        if info.main:
            state = {"model": net.state_dict(), "optimizer": opt.state_dict()}
            if teacher_state is not None:
                state["teacher"] = teacher_state
            save_checkpoint(s.out, state, {**meta_base, "epoch": epoch + 1, "stage": stage.to_dict(),
                                           "history": history, "done": last})
        D.barrier(info.world)
    in_sync = D.ranks_in_sync(net, info.world)
    if info.main and info.world > 1 and os.path.isfile(s.out):
        ckpt = load_checkpoint(s.out)
        save_checkpoint(s.out, {k: v for k, v in ckpt.items() if k != "meta"}, {**ckpt["meta"], "ranks_in_sync": in_sync})
    if not in_sync:
        raise UsageError("the ranks' weights diverged (gradient all-reduce failed)")
    done_epochs = len(history)
    result = TrainResult(s.out, done_epochs, done_epochs >= s.epochs, history, seconds=time.perf_counter() - t_all)
    if info.main and result.done and s.final_eval:
        for tag, cfg in (("max", space.largest()), ("min", space.smallest())):
            result.test[tag] = evaluate_config(net, cfg, data, "test", s.calib_images)
    return result


__all__ = ["TrainSettings", "TrainResult", "train_supernet", "STRATEGIES", "DEFAULT_EPOCHS"]

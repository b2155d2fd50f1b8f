"""OFA: PaddleSlim's Once-for-All API (RunConfig, DistillConfig, OFA) over latbench supernets.

Names and meanings follow paddleslim.nas.ofa: `RunConfig.n_epochs` holds, per elastic task, the
cumulative last epoch of each of its phases (epoch e belongs to the first phase whose value is
>= e); phase p of a task samples that task's dimensions among their p + 2 largest choices, earlier
tasks among all of theirs, later tasks stay at their largest; `train_full` samples only the
largest net; `forward` returns (student output, teacher output); `calc_distill_loss` compares the
`mapping_layers` activations (or, without mapping layers, the logits by soft-target cross-entropy).
`RunConfig.init_learning_rate` mirrors n_epochs (one list per task, one rate per phase; PaddleSlim
checks that shape and leaves the rates unused): `phase_learning_rate()` gives the current phase's
rate, and latbench's training driver starts each phase's schedule there. `RunConfig.skip_layers`
keeps the named layers static (PaddleSlim drops them from the search space): every subnet OFA
samples, smallest included, runs them at their largest choice.

At the start of every phase of the width task (the first forward whose epoch is that phase's first
epoch, or the first after `set_task` entered it) OFA calls `model.sort_channels(phase)` when the
model has one (a SuperNet): Once-for-All's `re_organize_middle_weights`, which re-sorts each
block's expanded channels by importance so the first k that a smaller width keeps are the most
important (PaddleSlim has no such call). It is recorded in `model.channel_sort_log`; set
`ofa.optimizer` to have the optimizer's momentum buffers permuted with the weights.

The model is a SuperNet built from a search space (its positions are the elastic dimensions; the
input resolution is sampled in every phase, `train_full` included, as Once-for-All does: a teacher
that never saw a resolution gives chance-level targets there) or a model turned into a supernet by
`Convert` (its layers' kernel_size / expand_ratio candidates).
"""
from __future__ import annotations

import copy
import difflib
import math
from collections import namedtuple
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError, UsageError, require

torch = require("torch", "torch")
nn = torch.nn
F = torch.nn.functional

RunConfig = namedtuple("RunConfig", [
    "train_batch_size",  # int: batch size, with total_images gives the epoch when set_epoch is not used
    "n_epochs",  # list of lists: per task, the cumulative last epoch of each phase
    "init_learning_rate",  # list of lists shaped like n_epochs: each phase's initial learning rate
    "total_images",  # int: training images per epoch
    "elastic_depth",  # list: depth choices to train (default: all of the space's)
    "dynamic_batch_size",  # list: subnets sampled per mini-batch, per task
    "skip_layers",  # list: layers kept static at their largest (Convert-ed layer names, or space
    #                 position names or their prefixes such as "s1.b0" for a SuperNet)
])
RunConfig.__new__.__defaults__ = (None,) * len(RunConfig._fields)

DistillConfig = namedtuple("DistillConfig", [
    "lambda_distill",  # float: scale of the distillation loss (default 1)
    "teacher_model",  # nn.Module: the teacher (e.g. the trained largest net)
    "mapping_layers",  # list[str]: module names whose outputs are matched; None = the logits
    "teacher_model_path",  # str: a state dict for the teacher (loaded with weights_only=True)
    "distill_fn",  # callable(student, teacher) -> loss; default mse (features) / soft CE (logits)
    "mapping_op",  # 'conv2d', 'linear' or None: a learned map from student to teacher features
])
DistillConfig.__new__.__defaults__ = (None,) * len(DistillConfig._fields)

TASK_ALIASES = {"kernel": "kernel_size", "kernel_size": "kernel_size", "depth": "depth", "width": "width",
                "expand_ratio": "width", "channel": "width", "other": "other"}
CONVERT_KEYS = ("kernel_size", "expand_ratio")  # the keys of a Convert-ed layer's net_config entry


def search_idx(epoch: int, n_epochs: Sequence[Sequence[int]]) -> tuple[int, int]:
    """(task index, phase index) of an epoch under PaddleSlim's cumulative n_epochs."""
    for t, phases in enumerate(n_epochs):
        for p, last in enumerate(phases):
            if epoch <= last:
                return t, p
    return len(n_epochs) - 1, len(n_epochs[-1]) - 1


def phase_start(n_epochs: Sequence[Sequence[int]], task: int, phase: int) -> int:
    """The first epoch (counted as n_epochs counts) of phase `phase` of task `task`: one after the
    last epoch of the phase, or task, before it."""
    if phase > 0:
        return n_epochs[task][phase - 1] + 1
    return n_epochs[task - 1][-1] + 1 if task > 0 else 0


def soft_cross_entropy(student: "torch.Tensor", teacher: "torch.Tensor") -> "torch.Tensor":
    """Cross-entropy of student logits against the teacher's softmax (OFA's KD loss)."""
    return torch.sum(-F.softmax(teacher.detach(), dim=1) * F.log_softmax(student, dim=1), dim=1).mean()


class ElasticDims:
    """The elastic dimensions of a model: names, tasks and choices; `apply(index vector)`."""

    def __init__(self, names: Sequence[str], tasks: Sequence[str], choices: Sequence[tuple],
                 apply: Callable[[np.ndarray], None], space=None):
        self.names, self.tasks, self.choices = list(names), list(tasks), [tuple(c) for c in choices]
        self.apply = apply
        self.space = space

    @property
    def cardinalities(self) -> np.ndarray:
        return np.array([len(c) for c in self.choices], dtype=np.int64)

    def largest(self) -> np.ndarray:
        return self.cardinalities - 1

    def smallest(self) -> np.ndarray:
        return np.zeros(len(self.names), dtype=np.int64)


def elastic_dims(model) -> ElasticDims:
    """The elastic dimensions of a SuperNet or a Convert-ed model."""
    from .convert import SuperLayer
    from .model import SuperNet

    if isinstance(model, SuperNet):
        sp = model.space
        return ElasticDims([p.name for p in sp.positions], model.tasks, [p.choices for p in sp.positions],
                           model.set_active, sp)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, SuperLayer) and m.candidate_config]
    if not layers:
        raise UsageError("OFA needs a SuperNet or a model converted with Convert(supernet(...)).convert(model)")
    names, tasks, choices, targets = [], [], [], []
    for n, m in layers:
        for key, cands in m.candidate_config.items():
            names.append(f"{n}.{key}")
            tasks.append(TASK_ALIASES[key])
            choices.append(tuple(sorted(cands)))
            targets.append((m, key))

    def apply(idx: np.ndarray) -> None:
        if len(idx) != len(targets):  # zip would leave the dims past the end at their last value
            raise ConfigError(f"net_config has {len(targets)} elastic dimensions, got {len(idx)} "
                              f"{'index' if len(idx) == 1 else 'indices'}")
        for (m, key), ch, i in zip(targets, choices, idx):
            m.active[key] = ch[int(i)]

    return ElasticDims(names, tasks, choices, apply)


class OFA(nn.Module):
    """Once-for-All training wrapper (progressive shrinking, distillation, search, export)."""

    def __init__(self, model, run_config: RunConfig | None = None, distill_config: DistillConfig | None = None,
                 elastic_order: Sequence[str] | None = None, train_full: bool = False):
        super().__init__()
        self.model = model
        self.run_config = run_config or RunConfig()
        self.distill_config = distill_config
        self.train_full = train_full
        self.dims = elastic_dims(model)
        self.allowed = [list(range(len(c))) for c in self.dims.choices]
        present = set(self.dims.tasks)
        if self.run_config.elastic_depth is not None:
            self._restrict_depth(self.run_config.elastic_depth, present)
        self.skipped = self._skip(_names(self.run_config.skip_layers))
        if elastic_order is None:
            elastic_order = [t for t in ("kernel_size", "depth", "width", "other") if t in present]
        self.elastic_order = [TASK_ALIASES.get(t, t) for t in _names(elastic_order)]
        if not self.elastic_order:
            raise UsageError(f"elastic_order is empty; name at least one task (the model has "
                             f"{', '.join(sorted(present))})")
        bad = [t for t in self.elastic_order if t not in present]
        if bad:
            raise UsageError(f"elastic_order names {bad[0]!r}, which the model has no dimension for "
                             f"(it has {', '.join(sorted(present))})")
        twice = [t for i, t in enumerate(self.elastic_order) if t in self.elastic_order[:i]]
        if twice:
            raise UsageError(f"elastic_order names {twice[0]!r} twice ({list(elastic_order)}); each task "
                             "is trained once")
        n_epochs = self.run_config.n_epochs
        if n_epochs is not None:
            if len(n_epochs) != len(self.elastic_order) or not all(isinstance(p, (list, tuple)) for p in n_epochs):
                raise UsageError(f"run_config.n_epochs must hold one list per task of {self.elastic_order}")
            dbs = self.run_config.dynamic_batch_size
            if dbs is not None and len(dbs) != len(n_epochs):
                raise UsageError("run_config.dynamic_batch_size must have one entry per task")
        _check_learning_rates(self.run_config.init_learning_rate, n_epochs)
        self.rng = np.random.default_rng(0)
        self.iter = 0
        self.dynamic_iter = 0
        self.epoch: int | None = None
        self.manual_set_task = False
        self.task: list[str] = []
        self.task_idx = 0
        self.phase: int | None = None
        self.net_config: Any = None
        self.current_config: np.ndarray = self.dims.largest()
        self.netAs = nn.ModuleList()
        self.netAs_param: list = []
        self.Sacts: dict[str, Any] = {}
        self.Tacts: dict[str, Any] = {}
        self._outputs: tuple[Any, Any] = (None, None)
        self.ofa_teacher_model = None
        self.optimizer = None  # optional: its state is permuted with the weights by channel sorting
        if distill_config is not None:
            self._prepare_distill()
        self.model.train()

    # ------------------------------------------------------------------ set-up
    def _restrict_depth(self, depths: Sequence[int] | int, present: set) -> None:
        depths = [depths] if isinstance(depths, (int, np.integer)) else list(depths)
        if "depth" not in present:
            hint = "; a Convert-ed model has no elastic depth: use a SuperNet from a search space" \
                if self.dims.space is None else ""
            raise UsageError(f"run_config.elastic_depth {depths} restricts depth, but the model has no depth "
                             f"dimension (it has {', '.join(sorted(present))}{hint})")
        for i, t in enumerate(self.dims.tasks):
            if t == "depth":
                keep = [j for j, v in enumerate(self.dims.choices[i]) if v in set(depths)]
                if not keep:
                    raise UsageError(f"elastic_depth {list(depths)} shares no value with "
                                     f"{self.dims.names[i]} {list(self.dims.choices[i])}")
                self.allowed[i] = keep

    def _skip(self, layers: Sequence[str]) -> list[int]:
        """Fix every dimension of the `layers` at its largest allowed choice; the dims it fixed."""
        fixed: list[int] = []
        # a Convert-ed layer whose width is tied to others' (their outputs meet in an add) has the
        # group's leader's width: keeping it static keeps the whole group's width static
        leader = {n: names[0] for names in getattr(self.model, "width_ties", []) for n in names[1:]}
        for layer in layers:
            hit = [i for i, n in enumerate(self.dims.names) if n == layer or n.startswith(f"{layer}.")]
            if layer in leader:
                hit += [i for i, n in enumerate(self.dims.names) if n == f"{leader[layer]}.expand_ratio"]
            if not hit:
                known = sorted({n.rsplit(".", 1)[0] for n in self.dims.names if "." in n})
                raise UsageError(f"run_config.skip_layers names {layer!r}, which has no elastic dimension "
                                 f"(elastic layers: {', '.join(known[:12])}{' ...' if len(known) > 12 else ''})")
            for i in hit:
                self.allowed[i] = self.allowed[i][-1:]
            fixed += hit
        return sorted(set(fixed))

    def _prepare_distill(self) -> None:
        dc = self.distill_config
        if dc.teacher_model is None:
            raise UsageError("DistillConfig needs teacher_model (an instance of the teacher network)")
        teacher = dc.teacher_model
        if dc.teacher_model_path:
            _load_teacher(teacher, dc.teacher_model_path)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        object.__setattr__(self, "ofa_teacher_model", teacher)  # not a submodule: never trained or saved
        if not dc.mapping_layers:
            return
        student_mods = dict(self.model.named_modules())
        teacher_mods = dict(teacher.named_modules())
        for name in dc.mapping_layers:
            if name not in student_mods or name not in teacher_mods:
                raise UsageError(f"mapping layer {name!r} is not a module of both student and teacher")
            student_mods[name].register_forward_hook(self._hook(self.Sacts, name))
            teacher_mods[name].register_forward_hook(self._hook(self.Tacts, name))
        if dc.mapping_op is not None:
            op = str(dc.mapping_op).lower()
            if op not in ("conv2d", "conv", "linear"):
                raise UsageError(f"mapping_op must be conv2d, linear or None, got {dc.mapping_op!r}")
            for name in dc.mapping_layers:
                c = _out_width(teacher_mods[name])
                from .layers import DynamicConv2d, DynamicLinear

                self.netAs.append(DynamicConv2d(c, c, (1,)) if op != "linear" else DynamicLinear(c, c))
            self.netAs_param = list(self.netAs.parameters())

    @staticmethod
    def _hook(store: dict, name: str):
        def fn(module, inputs, output):
            store[name] = output
        return fn

    # ------------------------------------------------------------------ schedule
    def set_epoch(self, epoch: int) -> None:
        """Set the current epoch (picks the task and phase from run_config.n_epochs)."""
        self.epoch = int(epoch)

    def set_task(self, task: str | Sequence[str], phase: int | None = None) -> None:
        """Train `task` (or the tasks listed) from now on; phase None = all their choices."""
        tasks = [task] if isinstance(task, str) else list(task)
        self.task = [TASK_ALIASES.get(t, t) for t in tasks]
        self.manual_set_task = True
        self.phase = phase

    def set_net_config(self, net_config: Any) -> None:
        """Train/evaluate this one subnet from now on (None: back to sampling). Its layers, keys,
        values (or indices) are checked here, a ConfigError naming the bad one; the ties and
        skip_layers when it is applied (forward, export)."""
        if net_config is not None:
            self._index(net_config, tie=False)
        self.net_config = net_config

    def _compute_epochs(self) -> int:
        if self.epoch is not None:
            return self.epoch
        rc = self.run_config
        if rc.total_images is None or rc.train_batch_size is None:
            raise UsageError("without set_epoch(), run_config needs total_images and train_batch_size")
        return self.iter // max(1, rc.total_images // rc.train_batch_size)

    def phase_learning_rate(self) -> float | None:
        """run_config.init_learning_rate of the task and phase being trained (set_task with no
        phase: the task's last phase); None when the run config gives none."""
        rates = self.run_config.init_learning_rate
        if rates is None:
            return None
        tasks, phase = self.current_task()
        t = self.elastic_order.index(tasks[-1])
        return float(rates[t][-1 if phase is None else phase])

    def current_task(self) -> tuple[list[str], int | None]:
        """(tasks unlocked so far, phase of the last one) at the current epoch."""
        if self.manual_set_task:
            return self.task, self.phase
        if len(self.elastic_order) <= 1 and self.run_config.n_epochs is None:
            self.task_idx = 0
            return self.elastic_order[:1], None
        if self.run_config.n_epochs is None:
            raise UsageError("with more than one elastic task, set run_config.n_epochs or call set_task()")
        self.task_idx, phase = search_idx(self._compute_epochs(), self.run_config.n_epochs)
        return self.elastic_order[:self.task_idx + 1], phase

    def sample_config(self, sample_type: str = "random", task: Sequence[str] | None = None,
                      phase: int | None = None) -> np.ndarray:
        """An index vector: largest, smallest, or random among the choices the tasks unlock."""
        if sample_type == "largest":
            return np.array([a[-1] for a in self.allowed], dtype=np.int64)
        if sample_type == "smallest":
            return np.array([a[0] for a in self.allowed], dtype=np.int64)
        task = list(task or [])
        out = np.empty(len(self.allowed), dtype=np.int64)
        for i, (t, allowed) in enumerate(zip(self.dims.tasks, self.allowed)):
            if t == "resolution":
                out[i] = allowed[self.rng.integers(len(allowed))]
            elif t not in task:
                out[i] = allowed[-1]
            else:
                pool = allowed[-(phase + 2):] if phase is not None and task and t == task[-1] else allowed
                out[i] = pool[self.rng.integers(len(pool))]
        return out

    def _progressive_shrinking(self) -> np.ndarray:
        self.task, phase = self.current_task()
        self._sort_channels_at_phase_start(phase)
        return self.sample_config("random", self.task, phase)

    def _sort_channels_at_phase_start(self, phase: int | None) -> None:
        """Once-for-All re-sorts the expanded channels by importance at the start of each phase of
        the elastic width task (`re_organize_middle_weights(expand_ratio_stage=phase)`); here at
        the first forward of the phase's first epoch (so a run resumed later in the phase does not
        sort again), or after `set_task` entered a width phase. Once per phase: the model's
        `channel_sort_log` remembers the last phase sorted."""
        sort = getattr(self.model, "sort_channels", None)
        if not self.task or self.task[-1] != "width" or not callable(sort):
            return
        epoch: int | None = self.epoch
        if self.manual_set_task:
            key: tuple = ("set_task", tuple(self.task), phase)
        elif self.run_config.n_epochs is None:
            key = (self.task_idx, None)
        else:
            n_epochs, t = self.run_config.n_epochs, self.task_idx
            epoch = self._compute_epochs()
            if epoch != phase_start(n_epochs, t, phase or 0):
                return
            key = (t, phase)
        history = getattr(self.model, "channel_sort_log", None)
        if history and history[-1].get("key") == key:
            return
        sort(phase or 0, self.optimizer, task="width", phase=phase, epoch=epoch, key=key)

    def _index(self, config: Any, tie: bool = True) -> np.ndarray | None:
        """A net_config as a checked index vector (ConfigError naming a bad layer, key, value or index);
        tie=False checks a per-layer config's names and values only (the ties when it is applied)."""
        if self.dims.space is not None:
            return np.asarray(self.dims.space.index(config), dtype=np.int64)
        if isinstance(config, dict):
            from .convert import tied_net_config

            self._check_layer_config(config)
            if not tie:
                return None
            config = tied_net_config(self.model, config)  # a group of tied widths is set on its leader
            return np.array([self.dims.choices[i].index(self._lookup(config, n)) for i, n in enumerate(self.dims.names)],
                            dtype=np.int64)
        return self._check_index_vector(config)

    def _layer_choices(self) -> dict[str, dict[str, tuple]]:
        """A Convert-ed model's config keys per layer and their choices: the elastic dims, a tied
        follower's expand_ratio (its leader's choices) and a fixed-width layer's expand_ratio (1)."""
        out: dict[str, dict[str, tuple]] = {}
        for n, ch in zip(self.dims.names, self.dims.choices):
            layer, key = n.rsplit(".", 1)
            out.setdefault(layer, {})[key] = ch
        for names in getattr(self.model, "width_ties", []):
            lead = out.get(names[0], {}).get("expand_ratio")
            for n in names[1:] if lead else ():
                out.setdefault(n, {})["expand_ratio"] = lead
        for n in getattr(self.model, "fixed_width", []):
            out.setdefault(n, {})["expand_ratio"] = (1,)
        return out

    def _check_layer_config(self, config: dict) -> None:
        """PaddleSlim's per-layer form: every layer named must be elastic, every key one it has, every
        value one of its choices (layers left out take their largest)."""
        layers = self._layer_choices()
        elastic = list(layers)
        shown = f"{', '.join(elastic[:12])}{' ...' if len(elastic) > 12 else ''}"
        modules = dict(self.model.named_modules())
        fixed = set(getattr(self.model, "fixed_width", []))
        for layer, entry in config.items():
            if layer not in layers:
                if isinstance(layer, str) and layer in modules:
                    raise ConfigError(f"net_config names {layer!r} ({type(modules[layer]).__name__}), which has no "
                                      f"elastic dimension (elastic layers: {shown})")
                hint = _close(str(layer), elastic)
                if not isinstance(layer, str) and str(layer) in modules:
                    hint = f"; layer names are strings: {str(layer)!r}"
                raise ConfigError(f"net_config names {layer!r}, which is not a layer of the model "
                                  f"(elastic layers: {shown}){hint}")
            if not isinstance(entry, dict):
                raise ConfigError(f"net_config[{layer!r}] must be a dict of its keys ({', '.join(layers[layer])}) "
                                  f"to values, got {entry!r}")
            for key, v in entry.items():
                if key not in CONVERT_KEYS:
                    raise ConfigError(f"net_config gives {key!r} for layer {layer!r}; the keys are "
                                      f"{', '.join(CONVERT_KEYS)}{_close(str(key), CONVERT_KEYS)}")
                if key not in layers[layer]:
                    raise ConfigError(f"net_config: layer {layer!r} has no elastic {key} (its elastic keys: "
                                      f"{', '.join(layers[layer])})")
                choices = layers[layer][key]
                if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number)) or v not in choices:
                    why = " (it meets a non-elastic width in an add and keeps its original width)" \
                        if layer in fixed and key == "expand_ratio" else ""
                    raise ConfigError(f"net_config layer {layer!r}: {key}={v!r} is not one of {list(choices)}{why}")

    def _check_index_vector(self, config: Any) -> np.ndarray:
        """One choice index per elastic dimension, each in range."""
        names, card = self.dims.names, self.dims.cardinalities
        try:
            arr = np.asarray(config)
            ok = arr.dtype.kind in "iu" or (arr.dtype.kind == "f" and bool(np.all(np.isfinite(arr)))
                                            and bool(np.all(arr == np.round(arr))))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"net_config must be a dict {{layer: {{key: value}}}} or the indices of the choices "
                              f"(integers), one per elastic dimension; got {config!r}")
        if arr.ndim != 1 or arr.shape[0] != len(names):
            shown = f"{', '.join(names[:8])}{', ...' if len(names) > 8 else ''}"
            got = f"{arr.shape[0]} {'index' if arr.shape[0] == 1 else 'indices'}" if arr.ndim == 1 \
                else f"shape {tuple(arr.shape)}"
            raise ConfigError(f"net_config has {len(names)} elastic dimensions ({shown}), got {got}")
        arr = arr.astype(np.int64)
        bad = np.nonzero((arr < 0) | (arr >= card))[0]
        if bad.size:
            i = int(bad[0])
            raise ConfigError(f"net_config[{i}] = {arr[i]}: {names[i]} has {card[i]} choices "
                              f"({', '.join(map(str, self.dims.choices[i]))}), an index is 0..{card[i] - 1}")
        return arr

    def _resolve_config(self, config: Any) -> np.ndarray:
        """A net_config as an index vector; a skipped layer set off its largest is a UsageError."""
        idx = self._index(config)
        for i in self.skipped:
            if idx[i] != self.allowed[i][-1]:
                raise UsageError(f"the config sets {self.dims.names[i]} to {self.dims.choices[i][idx[i]]}; "
                                 f"run_config.skip_layers keeps it static at {self.dims.choices[i][self.allowed[i][-1]]}")
        return idx

    def _lookup(self, config: dict, name: str):
        layer, key = name.rsplit(".", 1)
        if layer in config and key in config[layer]:
            return config[layer][key]
        i = self.dims.names.index(name)
        return self.dims.choices[i][-1]

    # ------------------------------------------------------------------ forward and losses
    def forward(self, x, *args, **kwargs):
        """Pick this step's subnet (fixed, largest, or progressive shrinking), run teacher and
        student on the same input; returns (student output, teacher output or None)."""
        if self.net_config is not None:
            cfg = self._resolve_config(self.net_config)
        elif self.train_full:
            cfg = self.sample_config("largest")
            for i, t in enumerate(self.dims.tasks):  # elastic resolution from the start, as OFA trains
                if t == "resolution":
                    cfg[i] = self.allowed[i][self.rng.integers(len(self.allowed[i]))]
        else:
            cfg = self._progressive_shrinking()
        self.current_config = cfg
        self.dims.apply(cfg)
        if self.dims.space is not None:
            from .data import resize

            x = resize(x, self.model.resolution)
        dbs = self.run_config.dynamic_batch_size
        self.dynamic_iter += 1
        if dbs is None or self.dynamic_iter >= dbs[min(self.task_idx, len(dbs) - 1)]:
            self.iter += 1
            self.dynamic_iter = 0
        self.Sacts.clear()
        self.Tacts.clear()
        teacher_out = None
        if self.ofa_teacher_model is not None:
            with torch.no_grad():
                teacher_out = self.ofa_teacher_model(x, *args, **kwargs)
        student_out = self.model(x, *args, **kwargs)
        self._outputs = (student_out, teacher_out)
        return student_out, teacher_out

    def calc_distill_loss(self):
        """Distillation loss of the last forward, times lambda_distill (0 without a teacher)."""
        dc = self.distill_config
        student, teacher = self._outputs
        if dc is None or teacher is None:
            return torch.zeros(())
        fn = dc.distill_fn
        losses = []
        if dc.mapping_layers:
            for i, name in enumerate(dc.mapping_layers):
                if name not in self.Sacts or name not in self.Tacts:
                    continue  # a block the sampled depth skipped
                s, t = self.Sacts[name], self.Tacts[name].detach()
                if len(self.netAs):
                    s = self.netAs[i](s, t.shape[1])
                elif s.shape[1] != t.shape[1]:
                    t = t[:, :s.shape[1]]
                losses.append(fn(s, t) if fn else F.mse_loss(s, t))
        else:
            losses.append(fn(student, teacher) if fn else soft_cross_entropy(student, teacher))
        if not losses:
            return torch.zeros(())
        scale = 1.0 if dc.lambda_distill is None else float(dc.lambda_distill)
        return sum(losses) * scale

    # ------------------------------------------------------------------ search and export
    def search(self, table: Any, budget_ms: float, data: Any, *, split: str = "val", strategy: str = "evolution",
               seed: int = 0, **kwargs):
        """Best subnet under a latency budget: latbench's run_search with this supernet's accuracy
        (calib_bn + `split` accuracy) and the table's latency predictor as the constraint."""
        from .search import search_supernet

        if self.dims.space is None:
            raise UsageError("search needs a SuperNet built from a search space (a latency table prices its ops)")
        return search_supernet(self.model, table, {"latency": budget_ms}, data, split=split, strategy=strategy,
                               seed=seed, **kwargs)

    def export(self, origin_model: Any = None, config: Any = None, input_shapes: Sequence | None = None,
               input_dtypes: Sequence | None = None, load_weights_from_supernet: bool = True):
        """The subnet `config` as a standalone model with the supernet's weights: for a SuperNet,
        `space.build(config)` (or `origin_model`, of the same structure); for a Convert-ed model a
        copy of it (or of `origin_model`) with plain Conv2d/BatchNorm2d/Linear layers of the subnet's sizes."""
        from .convert import export_converted

        if config is not None:
            self.set_net_config(config)
        cfg = self._resolve_config(self.net_config) if self.net_config is not None else self.current_config
        self.dims.apply(cfg)
        self.model.eval()
        if self.dims.space is not None:
            sub = self.model.export_module(cfg) if load_weights_from_supernet else self.dims.space.build(cfg)
            if origin_model is not None:
                origin_model.load_state_dict(sub.state_dict())
                sub = origin_model.eval()
            if input_shapes is not None:
                with torch.no_grad():
                    sub(_dummy(input_shapes, input_dtypes))
            return sub
        if input_shapes is None:
            raise ConfigError("exporting a Convert-ed model needs input_shapes (its layers learn their input widths)")
        return export_converted(self.model, _dummy(input_shapes, input_dtypes), origin_model,
                                load_weights_from_supernet)


def _check_learning_rates(rates: Any, n_epochs: Any) -> None:
    """init_learning_rate mirrors n_epochs: one list per task, one finite rate > 0 per phase."""
    if rates is None:
        return
    if n_epochs is None:
        raise UsageError("run_config.init_learning_rate gives a rate per phase of n_epochs; set n_epochs too")
    shape = [len(p) for p in n_epochs]
    if (not isinstance(rates, (list, tuple)) or not all(isinstance(r, (list, tuple)) for r in rates)
            or [len(r) for r in rates] != shape):
        raise UsageError(f"run_config.init_learning_rate must mirror n_epochs {list(map(list, n_epochs))}: "
                         f"one list per task, one rate per phase; got {rates!r}")
    bad = [v for r in rates for v in r if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0)]
    if bad:
        raise UsageError(f"run_config.init_learning_rate holds {bad[0]!r}; a learning rate is a finite number > 0")


def _names(value: Any) -> list:
    """A list of names; one name given as a string is a one-element list (not its characters)."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _close(name: str, known: Sequence[str]) -> str:
    """'; did you mean X?' for a near miss, else ''."""
    near = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {near[0]!r}?" if near else ""


def _load_teacher(teacher, path: str) -> None:
    """The teacher's weights from a state dict file (weights_only=True); a file that cannot be read
    or does not fit is a one-line UsageError naming it."""
    where = f"DistillConfig.teacher_model_path {path!r}"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise UsageError(f"{where}: cannot read it ({e.strerror or e})") from None
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{where} is not a state dict torch.load reads with weights_only=True ({first})") from None
    if not isinstance(state, dict):
        raise UsageError(f"{where} holds a {type(state).__name__}, not a state dict")
    try:
        teacher.load_state_dict(state)
    except RuntimeError as e:
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:])
        raise UsageError(f"{where} does not fit the teacher ({detail[:300] or e})") from None


def _dummy(input_shapes: Sequence, input_dtypes: Sequence | None):
    shape = input_shapes[0] if input_shapes and isinstance(input_shapes[0], (list, tuple)) else input_shapes
    dtype = (input_dtypes or ["float32"])[0]
    return torch.rand(*[int(s) for s in shape]).to(getattr(torch, str(dtype)))


def _out_width(module) -> int:
    for attr in ("max_out", "out_channels", "out_features", "num_features"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    for m in reversed(list(module.modules())):
        for attr in ("max_out", "out_channels", "out_features"):
            if hasattr(m, attr):
                return int(getattr(m, attr))
    raise UsageError(f"cannot tell the output width of mapping layer {type(module).__name__}")


def teacher_copy(net):
    """A frozen copy of a SuperNet fixed at its largest subnet (the usual OFA teacher)."""
    teacher = copy.deepcopy(net)
    teacher.set_active(teacher.space.largest())
    return teacher.eval()


__all__ = ["OFA", "RunConfig", "DistillConfig", "ElasticDims", "elastic_dims", "search_idx", "soft_cross_entropy",
           "teacher_copy"]

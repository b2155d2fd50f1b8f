"""User-defined search spaces from a YAML file (`latbench enumerate my_space.yaml`).

The schema is documented in docs/spaces.md. The file is read with yaml.safe_load only (aliases
refused) and fully checked before use: any mistake raises one SpaceError naming the file and the
field.
"""
from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .. import ops as O
from ..errors import ConfigError, SpaceError
from .base import Position, SearchSpace, Slot

_TOP_FIELDS = {"name": True, "description": False, "input": True, "stem": False, "stages": True, "head": False}
_INPUT_FIELDS = {"channels": False, "resolutions": True, "batch": False}
_STAGE_FIELDS = {"block": True, "depth": True, "out": True, "kernel": False, "expand": False,
                 "stride": False, "act": False, "se": False, "elastic": False}
_LAYER_FIELDS = {
    "conv": {"type": True, "out": True, "kernel": False, "stride": False, "padding": False,
             "bias": False, "bn": False, "act": False},
    "pool": {"type": True, "pool": False, "kernel": False, "stride": False, "padding": False,
             "ceil_mode": False},
    "linear": {"type": True, "out": True, "bias": False, "act": False},
}
_EXPANDING = ("mbconv", "bottleneck")
_MAX_CHOICES = 1024


# ---------------------------------------------------------------------- numeric checks
def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _pos_int(v: Any) -> str | None:
    return None if _is_num(v) and v == int(v) and v >= 1 else "is not an integer >= 1"


def _odd_int(v: Any) -> str | None:
    return None if _is_num(v) and v == int(v) and v >= 1 and int(v) % 2 == 1 else "is not an odd integer >= 1"


def _nonneg_int(v: Any) -> str | None:
    return None if _is_num(v) and v == int(v) and v >= 0 else "is not an integer >= 0"


def _pos_num(v: Any) -> str | None:
    return None if _is_num(v) and v > 0 else "is not a number > 0"


_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "kernel": _odd_int, "padding": _nonneg_int, "expand": _pos_num,
}


def _num(v: Any) -> int | float:
    """Integral values as int (so keys and published configs show 3, not 3.0)."""
    return int(v) if v == int(v) else float(v)


@dataclass
class _Fields:
    """The numeric fields of one layer or block: constants, and positions a slot reads."""

    const: dict[str, Any] = field(default_factory=dict)
    pos: dict[str, int] = field(default_factory=dict)

    @property
    def reads(self) -> tuple[int, ...]:
        return tuple(self.pos.values())

    def bind(self, vals: tuple) -> dict[str, Any]:
        out = dict(self.const)
        out.update(zip(self.pos, vals))
        return out


class YamlSpace(SearchSpace):
    """A search space read from a YAML definition; configs publish as {position name: value}."""

    text: str = ""  # the YAML text it was read from (a checkpoint stores it to rebuild the space)

    def __init__(self, spec: Any, source: str = "<yaml>"):
        self.source = source
        self._positions: list[Position] = []
        self._slots: list[Slot] = []
        # elastic=block stages: (depth choices, [depth position], positions of each block)
        self._per_block: list[tuple[tuple, list[int], list[list[int]]]] = []
        self._parse(spec)
        self.positions = tuple(self._positions)
        self.slots = tuple(self._slots)

    # ------------------------------------------------------------------ errors
    def _err(self, where: str, msg: str) -> SpaceError:
        return SpaceError(f"{self.source}: {where}: {msg}" if where else f"{self.source}: {msg}")

    def _mapping(self, obj: Any, where: str, allowed: dict[str, bool]) -> dict:
        """Check a mapping's type, unknown fields and required fields."""
        if not isinstance(obj, dict):
            raise self._err(where, f"must be a mapping, got {_show(obj)}")
        for k in obj:
            if k not in allowed:
                raise self._err(where, f"unknown field {k!r} (known: {', '.join(allowed)})")
        for k, required in allowed.items():
            if required and k not in obj:
                raise self._err(where, f"missing required field {k!r}")
        return obj

    def _choices(self, v: Any, where: str, check: Callable[[Any], str | None]) -> tuple:
        """A value, a list of choices or {min, max, step} -> sorted tuple of distinct values."""
        if isinstance(v, dict):
            self._mapping(v, where, {"min": True, "max": True, "step": False})
            lo, hi, step = v["min"], v["max"], v.get("step", 1)
            for name, x in (("min", lo), ("max", hi), ("step", step)):
                if not _is_num(x):
                    raise self._err(f"{where}.{name}", f"{_show(x)} is not a number")
            if step <= 0:
                raise self._err(f"{where}.step", f"must be > 0, got {step}")
            if lo > hi:
                raise self._err(where, f"min {lo} is greater than max {hi}")
            n = int(math.floor((hi - lo) / step + 1e-9)) + 1
            if n > _MAX_CHOICES:
                raise self._err(where, f"{n} choices (at most {_MAX_CHOICES} per field)")
            vals = [round(lo + i * step, 10) for i in range(n)]
        elif isinstance(v, list):
            if not v:
                raise self._err(where, "empty list of choices")
            vals = v
        else:
            vals = [v]
        for x in vals:
            problem = check(x)
            if problem:
                raise self._err(where, f"{_show(x)} {problem}")
        out = sorted({_num(x) for x in vals})
        if len(out) != len(vals):
            dup = next(x for x in vals if sum(y == x for y in vals) > 1)
            raise self._err(where, f"choice {_show(dup)} is repeated")
        return tuple(out)

    def _flag(self, obj: dict, key: str, where: str, default: bool) -> bool:
        v = obj.get(key, default)
        if not isinstance(v, bool):
            raise self._err(f"{where}.{key}", f"{_show(v)} is not true or false")
        return v

    def _word(self, obj: dict, key: str, where: str, default: str, allowed: tuple) -> str:
        v = obj.get(key, default)
        if v not in allowed:
            raise self._err(f"{where}.{key}", f"{_show(v)} is not one of {', '.join(allowed)}")
        return v

    def _numeric(self, fields: _Fields, obj: dict, key: str, where: str, pos_name: str,
                 default: Any = None, check: Callable[[Any], str | None] | None = None) -> tuple:
        """Read one numeric field into `fields`: a constant, or a new position if it has choices."""
        if key not in obj and default is None:
            return ()
        ch = self._choices(obj.get(key, default), f"{where}.{key}", check or _CHECKS.get(key, _pos_int))
        if len(ch) == 1:
            fields.const[key] = ch[0]
        else:
            fields.pos[key] = len(self._positions)
            self._positions.append(Position(pos_name, ch))
        return ch

    # ------------------------------------------------------------------ parse
    def _parse(self, spec: Any) -> None:
        self._mapping(spec, "", _TOP_FIELDS)
        name = spec["name"]
        if not isinstance(name, str) or not name.strip():
            raise self._err("name", f"{_show(name)} is not a non-empty string")
        self.name = name
        desc = spec.get("description", "")
        if not isinstance(desc, str):
            raise self._err("description", f"{_show(desc)} is not a string")
        self.description = desc or f"user space from {os.path.basename(self.source)}"

        inp = self._mapping(spec["input"], "input", _INPUT_FIELDS)
        fixed: dict[str, int] = {}
        for key, default in (("channels", 3), ("batch", 1)):
            ch = self._choices(inp.get(key, default), f"input.{key}", _pos_int)
            if len(ch) != 1:
                raise self._err(f"input.{key}", "must be a single value")
            fixed[key] = ch[0]
        self.batch = fixed["batch"]
        res = self._choices(inp["resolutions"], "input.resolutions", _pos_int)
        if len(res) > 1:
            self.resolution_position = 0
            self._positions.append(Position("r", res))
        else:
            self.fixed_resolution = res[0]
        shape0 = (self.batch, fixed["channels"])
        self._slots.append(Slot("input", (0,) if len(res) > 1 else (),
                                lambda st, v: ([], shape0 + ((v[0],) * 2 if v else (res[0],) * 2))))
        sizes, mode = {res[0]}, "map"  # reachable spatial sizes at the smallest resolution

        stem = spec.get("stem", [])
        stem_list = stem if isinstance(stem, list) else [stem]
        for i, layer in enumerate(stem_list):
            where = f"stem[{i}]" if isinstance(stem, list) else "stem"
            sizes, mode = self._layer(layer, where, "stem" if i == 0 else f"stem.{i}", sizes, mode,
                                      ("conv", "pool"))

        stages = spec["stages"]
        if not isinstance(stages, list) or not stages:
            raise self._err("stages", "must be a non-empty list of stages")
        for s, st in enumerate(stages):
            sizes = self._stage(st, s, sizes)

        head = spec.get("head", [])
        if not isinstance(head, list):
            raise self._err("head", f"must be a list of layers, got {_show(head)}")
        mode = "map"
        for i, layer in enumerate(head):
            sizes, mode = self._layer(layer, f"head[{i}]", f"head.{i}", sizes, mode, tuple(_LAYER_FIELDS))

    def _layer(self, layer: Any, where: str, prefix: str, sizes: set, mode: str,
               kinds: tuple) -> tuple[set, str]:
        """One stem/head layer: check it, add its positions and slot. `mode` is map, pooled (after a
        global pool) or flat (after a linear): a linear needs pooled or flat, only a linear follows flat."""
        if not isinstance(layer, dict):
            raise self._err(where, f"must be a mapping, got {_show(layer)}")
        kind = layer.get("type")
        if kind not in kinds:
            raise self._err(f"{where}.type", f"{_show(kind)} is not one of {', '.join(kinds)}")
        self._mapping(layer, where, _LAYER_FIELDS[kind])
        f = _Fields()
        if mode == "flat" and kind != "linear":
            raise self._err(where, f"a {kind} layer cannot follow a linear layer")
        if kind == "linear":
            if mode == "map":
                raise self._err(where, "a linear layer needs a global pool (type: pool, no kernel) before it")
            self._numeric(f, layer, "out", where, f"{prefix}.out")
            bias = self._flag(layer, "bias", where, True)
            act = self._word(layer, "act", where, "none", ("none",) + O.ACTIVATIONS)

            def lfn(state, vals):
                op = O.linear(state[0], state[1], f.bind(vals)["out"], bias=bias, act=act)
                return [op], op.out_shape

            self._slots.append(Slot(prefix, f.reads, lfn))
            return {1}, "flat"
        if kind == "conv":
            self._numeric(f, layer, "out", where, f"{prefix}.out")
            ks = self._numeric(f, layer, "kernel", where, f"{prefix}.kernel", 1)
            ss = self._numeric(f, layer, "stride", where, f"{prefix}.stride", 1)
            pads = self._numeric(f, layer, "padding", where, f"{prefix}.padding") or (None,)
            bias = self._flag(layer, "bias", where, False)
            bn = self._flag(layer, "bn", where, True)
            act = self._word(layer, "act", where, "none", ("none",) + O.ACTIVATIONS)

            def cfn(state, vals):
                v = f.bind(vals)
                op = O.conv(state, v["out"], v["kernel"], v["stride"], v.get("padding"), bias=bias,
                            bn=bn, act=act)
                return [op], op.out_shape

            self._slots.append(Slot(prefix, f.reads, cfn))
            return self._shrink(sizes, ks, ss, pads, False, where), "pooled" if mode == "pooled" else "map"
        ptype = self._word(layer, "pool", where, "avg", O.POOLS)
        if "kernel" not in layer:
            for key in ("stride", "padding", "ceil_mode"):
                if key in layer:
                    raise self._err(where, f"field {key!r} needs a kernel (a pool without kernel is global)")

            def gfn(state, vals):
                op = O.pool(state, ptype, global_pool=True)
                return [op], op.out_shape

            self._slots.append(Slot(prefix, (), gfn))
            return {1}, "pooled"
        ks = self._numeric(f, layer, "kernel", where, f"{prefix}.kernel", check=_pos_int)
        if "stride" not in layer:
            f.const["stride"] = None  # stride defaults to the kernel, as in torch
        ss = self._numeric(f, layer, "stride", where, f"{prefix}.stride") or (None,)
        pads = self._numeric(f, layer, "padding", where, f"{prefix}.padding", 0)
        ceil = self._flag(layer, "ceil_mode", where, False)
        if max(pads) > min(ks) // 2:
            raise self._err(f"{where}.padding", f"{max(pads)} is more than half the kernel {min(ks)}")

        def pfn(state, vals):
            v = f.bind(vals)
            op = O.pool(state, ptype, v["kernel"], v["stride"] or v["kernel"], v["padding"], ceil_mode=ceil)
            return [op], op.out_shape

        self._slots.append(Slot(prefix, f.reads, pfn))
        return self._shrink(sizes, ks, ss, pads, ceil, where), mode

    def _shrink(self, sizes: set, ks: tuple, ss: tuple, pads: tuple, ceil: bool, where: str) -> set:
        """Spatial sizes after a window layer (padding None = same, stride None = kernel); an empty
        feature map at the smallest resolution is an error naming the layer."""
        out = set()
        for h, k, s, p in itertools.product(sorted(sizes), ks, ss, pads):
            o = O.conv_out(h, k, s or k, (k - 1) // 2 if p is None else p, 1, ceil)
            if o < 1:
                raise self._err(where, f"feature map would be empty at resolution {self.resolutions[0]} "
                                       f"(kernel {k} on a {h}x{h} map)")
            out.add(o)
        return out

    def _stage(self, st: Any, s: int, sizes: set) -> set:
        """One stage: check it, add its positions and one slot per possible block."""
        where = f"stages[{s}]"
        if not isinstance(st, dict):
            raise self._err(where, f"must be a mapping, got {_show(st)}")
        self._mapping(st, where, _STAGE_FIELDS)
        kind = self._word(st, "block", where, "", O.BLOCK_KINDS)
        if kind in _EXPANDING and "expand" not in st:
            raise self._err(where, f"missing required field 'expand' (needed by {kind} blocks)")
        if kind == "basic" and "expand" in st:
            raise self._err(f"{where}.expand", "basic blocks have no expand ratio (inner width = out)")
        if kind != "mbconv" and "se" in st:
            raise self._err(f"{where}.se", "only mbconv blocks take se")
        act = self._word(st, "act", where, "relu", O.ACTIVATIONS)
        se = self._flag(st, "se", where, False)
        elastic = self._word(st, "elastic", where, "stage", ("stage", "block"))
        p = f"s{s}"
        stage_f = _Fields()
        depths = self._numeric(stage_f, st, "depth", where, f"{p}.depth")
        self._numeric(stage_f, st, "out", where, f"{p}.out")
        strides = self._numeric(stage_f, st, "stride", where, f"{p}.stride", 1)
        per_block = ("kernel", "expand") if kind in _EXPANDING else ("kernel",)
        first = _Fields()  # kernel/expand of block 0 (shared by the stage when elastic: stage)
        groups: list[list[int]] = []  # per-block position groups (elastic: block)
        for j in range(max(depths)):
            f = _Fields(dict(stage_f.const), {k: i for k, i in stage_f.pos.items()
                                              if (k != "depth" or j >= min(depths)) and (k != "stride" or j == 0)})
            if elastic == "stage" and j > 0:
                f.const.update(first.const)
                f.pos.update(first.pos)
            else:
                own = _Fields()
                for key in per_block:
                    name = f"{p}.{key}" if elastic == "stage" else f"{p}.b{j}.{key}"
                    self._numeric(own, st, key, where, name, 3 if key == "kernel" else None)
                first = own if j == 0 else first
                groups.append(list(own.pos.values()))
                f.const.update(own.const)
                f.pos.update(own.pos)
            self._slots.append(Slot(f"{p}.b{j}", f.reads, self._block_fn(kind, j, f, act, se)))
        if elastic == "block":
            self._per_block.append((depths, [stage_f.pos.get("depth", -1)], groups))
        # blocks pad 'same', so only the first block's stride changes the spatial size
        return {O.conv_out(h, 1, st2, 0) for h in sizes for st2 in strides}

    def _block_fn(self, kind: str, j: int, f: _Fields, act: str, se: bool):
        """The slot of block j of a stage: skipped beyond the depth, stride only on block 0."""

        def fn(state, vals):
            v = f.bind(vals)
            if j >= v.get("depth", j + 1):
                return [], state
            c_in, out, k = state[1], v["out"], v["kernel"]
            stride = v["stride"] if j == 0 else 1
            if kind == "mbconv":
                e = v["expand"]
                mid = c_in if e == 1 else O.make_divisible(round(c_in * e), 8)
                op = O.mbconv(state, out, mid, k, stride, act,
                              se=O.make_divisible(mid // 4, 8) if se else 0,
                              residual=stride == 1 and c_in == out, expand_conv=e != 1)
            elif kind == "bottleneck":
                mid = O.make_divisible(round(out * v["expand"]), 8)
                op = O.resblock(kind, state, out, k, stride, mid, act)
            else:
                op = O.resblock(kind, state, out, k, stride, act=act)
            return [op], op.out_shape

        return fn

    # ------------------------------------------------------------------ size
    @property
    def size(self) -> int:
        """Distinct subnets: choices of blocks beyond a stage's depth (elastic: block) are not
        counted. Two choices that round to the same channel count are still counted apart."""
        card = [len(p.choices) for p in self.positions]
        summed = {i for _, depth, groups in self._per_block for g in [depth] + groups for i in g}
        total = math.prod(c for i, c in enumerate(card) if i not in summed)
        for depths, _, groups in self._per_block:
            block = [math.prod(card[i] for i in g) for g in groups]
            total *= sum(math.prod(block[:d]) for d in depths)
        return total

    # ------------------------------------------------------------------ published form
    def from_published(self, obj: Any) -> np.ndarray:
        """{position name: value} -> index vector (names and values checked)."""
        if not isinstance(obj, dict):
            return self._check_index(obj)
        names = [p.name for p in self.positions]
        unknown = [k for k in obj if k not in names]
        if unknown:
            raise ConfigError(f"{self.name}: unknown position {unknown[0]!r} (known: {', '.join(names)})")
        missing = [k for k in names if k not in obj]
        if missing:
            raise ConfigError(f"{self.name}: config lacks position(s) {', '.join(missing)}")
        idx = []
        for p in self.positions:
            v = obj[p.name]
            if isinstance(v, bool) or v not in p.choices:
                raise ConfigError(f"{self.name}: {p.name}={v!r} is not one of {list(p.choices)}")
            idx.append(p.choices.index(v))
        return np.array(idx, dtype=np.int64)

    def to_published(self, config: Any) -> dict[str, Any]:
        """Index vector -> {position name: value}."""
        return {p.name: v for p, v in zip(self.positions, self.values(config))}


def _show(v: Any) -> str:
    """A value as the user wrote it (YAML spelling for booleans and null)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v) if isinstance(v, str) else str(v)


def _safe_load_without_aliases(text: str) -> Any:
    """yaml.safe_load that refuses aliases (`*name`): a space needs none, and nested aliases
    ("billion laughs") expand into more nodes than memory holds."""
    import yaml

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                ev = self.peek_event()
                raise yaml.MarkedYAMLError(problem=f"alias *{ev.anchor} refused: a space file may not "
                                           f"use YAML aliases (write the values out)",
                                           problem_mark=ev.start_mark)
            return super().compose_node(parent, index)

    return yaml.load(text, Loader=Loader)  # a SafeLoader: nothing is executed


def yaml_space_from_text(text: str, source: str = "<yaml>") -> YamlSpace:
    """Parse YAML text (safe_load only, no aliases) into a YamlSpace; errors name `source`."""
    import yaml

    try:
        spec = _safe_load_without_aliases(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise SpaceError(f"{source}: {where}{' '.join(str(problem).split())}") from None
    if spec is None:
        raise SpaceError(f"{source}: the file is empty")
    space = YamlSpace(spec, source)
    space.text = text
    return space


def load_yaml_space(path: str | os.PathLike) -> YamlSpace:
    """Read a user space from a .yaml file."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as e:
        raise SpaceError(f"{path}: cannot read the space file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise SpaceError(f"{path}: not UTF-8 text ({e.reason})") from None
    return yaml_space_from_text(text, os.fspath(path))


__all__ = ["YamlSpace", "load_yaml_space", "yaml_space_from_text"]

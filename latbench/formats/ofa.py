"""Once-for-All LatencyTable: its block keys and its per-resolution YAML files.

OFA's MBv3LatencyTable loads one `{resolution}_lookup_table.yaml` per input resolution; each maps
a block key to `{count, mean, std}` in milliseconds and OFA predicts with `mean`. Keys:

    Conv-input:224x224x3-output:112x112x24                 3x3 s2 conv + BN + hswish (stem)
    expanded_conv-input:HxWxC-output:HxWxC-expand:MID-kernel:K-stride:S-idskip:0|1-se:0|1-hs:0|1
    Conv_1-input:7x7x160-output:7x7x960                    1x1 conv + BN + hswish
    AvgPool2D-input:7x7x960-output:1x1x960                 global average pool
    Conv_2-input:1x1x960-output:1x1x1280                   1x1 conv + hswish, no BN, no bias
    Logits-input:1x1x1280-output:1000                      linear with bias

`expand` is the expanded (mid) channel count, not the ratio. Batch is 1. An expanded_conv follows
OFA's conventions: relu unless hs, SE hidden = make_divisible(mid // 4, 8), residual = idskip,
an expansion conv exactly when mid != in channels.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Iterable, Mapping

import yaml

from .. import ops as O
from ..errors import FormatError, LatbenchError
from ..ops import OpSpec

OFA_KEY_PREFIXES = ("Conv-", "Conv_1-", "Conv_2-", "AvgPool2D-", "Logits-", "expanded_conv-")
OFA_RESOLUTIONS = (160, 176, 192, 208, 224)  # the files OFA's MBv3LatencyTable loads
_FILE_RE = re.compile(r"^(\d+)_lookup_table\.ya?ml$")
_MB_FIELDS = ("expand", "kernel", "stride", "idskip", "se", "hs")
_FLAGS = ("idskip", "se", "hs")


def is_ofa_key(key: str) -> bool:
    """True when `key` has the form of an OFA LatencyTable key (prefix only, not validated)."""
    return key.startswith(OFA_KEY_PREFIXES)


def resolution_of(path: str | os.PathLike) -> int | None:
    """The resolution in an OFA file name `{r}_lookup_table.yaml`, else None."""
    m = _FILE_RE.match(os.path.basename(os.fspath(path)))
    return int(m.group(1)) if m else None


def table_file_name(resolution: int) -> str:
    """OFA's file name for the table of one resolution."""
    return f"{int(resolution)}_lookup_table.yaml"


# ---------------------------------------------------------------------- keys
def _bad(key: str, why: str) -> FormatError:
    return FormatError(f"bad Once-for-All key {key!r}: {why}")


def _hwc(key: str, text: str, what: str) -> tuple[int, int, int]:
    parts = text.split("x")
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError:
        vals = ()
    if len(vals) != 3 or any(v < 1 for v in vals) or any(p != str(v) for p, v in zip(parts, vals)):
        raise _bad(key, f"{what} must be HxWxC with positive integers, got {text!r}")
    return vals  # type: ignore[return-value]


def _fields(key: str) -> tuple[str, list[tuple[str, str]]]:
    role, *rest = key.split("-")
    pairs = []
    for part in rest:
        name, sep, val = part.partition(":")
        if not sep or not name or not val:
            raise _bad(key, f"field {part!r} is not NAME:VALUE")
        pairs.append((name, val))
    return role, pairs


def parse_ofa_key(key: str) -> OpSpec:
    """The OpSpec whose `key` is this OFA LatencyTable key (the inverse of `OpSpec.key`)."""
    if not isinstance(key, str):
        raise FormatError(f"bad Once-for-All key {key!r}: not a string")
    role, pairs = _fields(key.strip())
    names = [n for n, _ in pairs]
    expected = ["input", "output"] + (list(_MB_FIELDS) if role == "expanded_conv" else [])
    if role not in O.OFA_ROLES and role != "expanded_conv":
        raise _bad(key, f"unknown layer {role!r} (known: {', '.join(O.OFA_ROLES)}, expanded_conv)")
    if names != expected:
        hint = (" (a ProxylessNAS-style key without se/hs is not an MBv3 key)"
                if role == "expanded_conv" and "se" not in names else "")
        raise _bad(key, f"{role} needs fields {'-'.join(expected)}, got {'-'.join(names) or 'none'}{hint}")
    vals = dict(pairs)
    h, w, c = _hwc(key, vals["input"], "input")
    try:
        if role == "Logits":
            if (h, w) != (1, 1):
                raise _bad(key, "Logits input must be 1x1xC (MBv3 tables pool before the classifier)")
            try:
                out = int(vals["output"])
            except ValueError:
                raise _bad(key, f"Logits output must be the class count, got {vals['output']!r}") from None
            op = O.linear(1, c, out, bias=True, role="Logits")
        else:
            oh, ow, oc = _hwc(key, vals["output"], "output")
            shape = (1, c, h, w)
            if role == "Conv":
                op = O.conv(shape, oc, 3, 2, bn=True, act="hswish", role="Conv")
            elif role == "Conv_1":
                op = O.conv(shape, oc, 1, bn=True, act="hswish", role="Conv_1")
            elif role == "Conv_2":
                op = O.conv(shape, oc, 1, act="hswish", role="Conv_2")
            elif role == "AvgPool2D":
                if oc != c:
                    raise _bad(key, f"a pool keeps its channels, got {c} -> {oc}")
                op = O.pool(shape, "avg", global_pool=True, role="AvgPool2D")
            else:
                op = _mbconv(key, shape, oc, vals)
    except LatbenchError as e:
        if isinstance(e, FormatError):
            raise
        raise _bad(key, str(e)) from None
    if op.key != key.strip():
        raise _bad(key, f"it is not what the op it describes is keyed as ({op.key!r}); "
                        f"check output shape and channel fields")
    return op


def _mbconv(key: str, shape, out: int, vals: dict[str, str]) -> OpSpec:
    nums: dict[str, int] = {}
    for name in _MB_FIELDS:
        v = vals[name]
        if not v.isdigit() or str(int(v)) != v:
            raise _bad(key, f"{name} must be a non-negative integer, got {v!r}")
        nums[name] = int(v)
        if name in _FLAGS and nums[name] not in (0, 1):
            raise _bad(key, f"{name} must be 0 or 1, got {v!r}")
    mid, c = nums["expand"], shape[1]
    if mid < 1 or nums["kernel"] < 1 or nums["stride"] < 1:
        raise _bad(key, "expand, kernel and stride must be >= 1")
    se = O.make_divisible(mid // 4, 8) if nums["se"] else 0
    return O.mbconv(shape, out, mid, nums["kernel"], nums["stride"],
                    "hswish" if nums["hs"] else "relu", se=se, residual=bool(nums["idskip"]),
                    expand_conv=mid != c)


# ---------------------------------------------------------------------- YAML files
# libyaml's safe loader and dumper where PyYAML was built with it (the same documents, several
# times faster on a whole space's table), else the pure-Python ones
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

def read_ofa_yaml(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """key -> {"count": int | None, "mean": float, "std": float | None} of one OFA YAML file."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise FormatError(f"{name}: cannot read: {e.strerror or e}") from None
    loader = _SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{name}:{mark.line + 1}" if mark is not None else name
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise FormatError(f"{where}: not valid YAML: {problem}") from None
    finally:
        loader.dispose()
    if data is None:
        raise FormatError(f"{name}: empty file (an OFA latency table maps keys to {{count, mean, std}})")
    if not isinstance(data, dict):
        raise FormatError(f"{name}: not an OFA latency table: the document is a "
                          f"{type(data).__name__}, not a mapping of keys to {{count, mean, std}}")
    lines = _key_lines(node)
    out: dict[str, dict[str, Any]] = {}
    for key, entry in data.items():
        where = f"{name}:{lines[key]}" if key in lines else name
        out[str(key)] = _entry(key, entry, where)
    return out


def _key_lines(node) -> dict[Any, int]:
    """1-based line of each top-level key, for messages."""
    lines: dict[Any, int] = {}
    if isinstance(node, yaml.MappingNode):
        for k, _ in node.value:
            if isinstance(k, yaml.ScalarNode):
                lines[k.value] = k.start_mark.line + 1
    return lines


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _entry(key: Any, entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(key, str):
        raise FormatError(f"{where}: key {key!r} is not a string")
    if not isinstance(entry, dict):
        raise FormatError(f"{where}: entry {key!r} must be a mapping with count, mean, std, "
                          f"got {entry!r}")
    if "mean" not in entry:
        raise FormatError(f"{where}: entry {key!r} has no mean")
    mean = _number(entry["mean"])
    if mean is None or not math.isfinite(mean) or mean < 0:
        raise FormatError(f"{where}: entry {key!r}: mean must be a non-negative number (ms), "
                          f"got {entry['mean']!r}")
    std = entry.get("std")
    if std is not None:
        s = _number(std)
        if s is None or not math.isfinite(s) or s < 0:
            raise FormatError(f"{where}: entry {key!r}: std must be a non-negative number, got {std!r}")
        std = s
    count = entry.get("count")
    if count is not None:
        cnt = _number(count)
        if cnt is None or cnt != int(cnt) or cnt < 0:
            raise FormatError(f"{where}: entry {key!r}: count must be a non-negative integer, "
                              f"got {count!r}")
        count = int(cnt)
    return {"count": count, "mean": mean, "std": std}


def write_ofa_yaml(entries: Mapping[str, Mapping[str, Any]] | Iterable[tuple[str, Mapping[str, Any]]],
                   path: str | os.PathLike, header: str = "") -> int:
    """Write key -> {count, mean, std} as OFA's YAML (unknown count/std omitted), after `header`
    as `#` comment lines (YAML readers skip them); returns the count."""
    items = entries.items() if isinstance(entries, Mapping) else entries
    doc: dict[str, dict[str, Any]] = {}
    for key, e in items:
        if "mean" not in e or _number(e["mean"]) is None:
            raise FormatError(f"{os.fspath(path)}: entry {key!r} has no numeric mean")
        d: dict[str, Any] = {}
        if e.get("count") is not None:
            d["count"] = int(e["count"])
        d["mean"] = float(e["mean"])
        if e.get("std") is not None:
            d["std"] = float(e["std"])
        doc[str(key)] = d
    text = yaml.dump(doc, Dumper=_SafeDumper, default_flow_style=False, sort_keys=False)
    if header:
        text = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines()) + text
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return len(doc)


def ofa_network_latency(lut: Mapping[str, float], spec: Mapping[str, Any], space) -> float:
    """Once-for-All's LatencyEstimator.predict_network_latency_given_spec (ofa/tutorial/
    latency_table.py), step by step as OFA writes it: a key string built per layer from the spec,
    one lookup each in the table of the spec's resolution (`lut`: key -> ms). OFA hard-codes the
    w1.2 widths; they come from `space` (an OFAMobileNetV3) here. As in OFA, mid = round(in * e)
    (every width is a multiple of 8, so the network's make_divisible changes nothing) and a
    block skips its input exactly when it is not the first of its stage. The reference
    latbench's Predictor must match."""
    def q(l_type: str, inp, out, **kw) -> float:
        key = "-".join([l_type, "input:" + "x".join(map(str, inp)), "output:" + "x".join(map(str, out))]
                       + [f"{k}:{v}" for k, v in kw.items()])
        return lut[key]

    r = spec["r"][0]
    fsize = (r + 1) // 2
    first, fb = space.stem_width, space.first_block_width
    total = q("Conv", [r, r, 3], [fsize, fsize, first])
    total += q("expanded_conv", [fsize, fsize, first], [fsize, fsize, fb], expand=first, kernel=3,
               stride=1, idskip=int(first == fb), se=0, hs=0)
    in_c = fb
    strides, se, hs = (2, 2, 2, 1, 2), (0, 1, 0, 1, 1), (0, 0, 1, 1, 1)
    for i in range(20):
        stage, j = divmod(i, 4)
        if j + 1 > spec["d"][stage]:
            continue
        stride, idskip = (strides[stage], 0) if j == 0 else (1, 1)
        out_fz = int((fsize - 1) / stride + 1)
        out_c = space.stage_widths[stage]
        total += q("expanded_conv", [fsize, fsize, in_c], [out_fz, out_fz, out_c],
                   expand=round(in_c * spec["e"][i]), kernel=spec["ks"][i], stride=stride, idskip=idskip,
                   se=se[stage], hs=hs[stage])
        fsize, in_c = out_fz, out_c
    fe, last = space.final_expand_width, space.last_channel
    total += q("Conv_1", [fsize, fsize, in_c], [fsize, fsize, fe])
    total += q("AvgPool2D", [fsize, fsize, fe], [1, 1, fe])
    total += q("Conv_2", [1, 1, fe], [1, 1, last])
    total += q("Logits", [1, 1, last], [space.n_classes])
    return total


def ofa_predict_efficiency(luts: Mapping[int, Mapping[str, float]], spec: Mapping[str, Any], space) -> float:
    """Once-for-All's LatencyTable.predict_efficiency: the network latency from the table of the
    spec's own resolution (`luts`: resolution -> that {r}_lookup_table.yaml's key -> ms)."""
    return ofa_network_latency(luts[spec["r"][0]], spec, space)


__all__ = ["parse_ofa_key", "ofa_network_latency", "ofa_predict_efficiency", "is_ofa_key", "read_ofa_yaml",
           "write_ofa_yaml", "resolution_of", "table_file_name", "OFA_KEY_PREFIXES", "OFA_RESOLUTIONS"]

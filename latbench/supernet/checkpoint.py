"""Supernet checkpoints: plain state dicts and JSON metadata in one torch.save file, loaded with
weights_only=True (no pickled objects), written atomically so a killed run keeps the last one."""
from __future__ import annotations

import json
import os
from typing import Any

from ..errors import FormatError, UsageError, require

torch = require("torch", "torch")

FORMAT = "latbench-supernet/1"


def space_meta(space) -> dict[str, Any]:
    """How to rebuild `space`: its registered name, or the YAML text it was read from."""
    from ..spaces import list_spaces

    meta: dict[str, Any] = {"space": space.name}
    if space.name not in list_spaces():
        text = getattr(space, "text", "")  # also a space rebuilt from a checkpoint, which has no file
        if not text:
            raise UsageError(f"space {space.name!r} is neither registered nor read from a YAML file")
        meta["space_yaml"] = text
    return meta


def space_from_meta(meta: dict[str, Any]):
    """The SearchSpace a checkpoint was trained on."""
    if "space_yaml" in meta:
        from ..spaces.yaml_space import yaml_space_from_text

        return yaml_space_from_text(meta["space_yaml"], f"<checkpoint space {meta.get('space')}>")
    from ..spaces import get_space

    return get_space(meta["space"])


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write `state` (state dicts, tensors) plus `meta` (JSON-able) to `path` atomically."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    payload = dict(state)
    payload["meta"] = json.dumps({"format": FORMAT, **meta}, sort_keys=True)
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict[str, Any]:
    """Read a checkpoint (weights_only=True); `meta` comes back as a dict."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError/UnpicklingError/EOFError on bad files
        raise FormatError(f"{path}: not a latbench supernet checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or "meta" not in payload or "model" not in payload:
        raise FormatError(f"{path}: not a latbench supernet checkpoint (no model/meta)")
    meta = json.loads(payload["meta"])
    if meta.get("format") != FORMAT:
        raise FormatError(f"{path}: checkpoint format {meta.get('format')!r}, expected {FORMAT!r}")
    payload["meta"] = meta
    return payload


def supernet_from_checkpoint(path: str | os.PathLike, map_location: str = "cpu"):
    """(SuperNet with the checkpoint's weights, in eval mode; the checkpoint's meta)."""
    from .model import SuperNet

    ckpt = load_checkpoint(path, map_location)
    meta = ckpt["meta"]
    net = SuperNet(space_from_meta(meta), transform=meta.get("transform", "depthwise"))
    missing, unexpected = net.load_state_dict(ckpt["model"], strict=False)
    if missing or unexpected:
        raise FormatError(f"{os.fspath(path)}: weights do not fit space {meta.get('space')!r} "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return net.eval(), meta


__all__ = ["save_checkpoint", "load_checkpoint", "supernet_from_checkpoint", "space_meta", "space_from_meta"]

"""BigNAS-style elastic ResNet, defined in YAML (data/bignas_resnet.yaml) like any user space.

Modelled on United-Perception's BigNAS `big_resnet_basic` search space: elastic stem width and
kernel, per-stage depth and width (min/max/step), basic blocks, max-pool after the stem.
"""
from __future__ import annotations

from importlib import resources

from .yaml_space import YamlSpace, yaml_space_from_text

DATA_FILE = "bignas_resnet.yaml"


def packaged_space(file_name: str) -> YamlSpace:
    """A YAML space shipped in latbench/spaces/data, read with importlib.resources."""
    text = resources.files("latbench.spaces").joinpath("data", file_name).read_text(encoding="utf-8")
    return yaml_space_from_text(text, file_name)


def bignas_resnet() -> YamlSpace:
    """The shipped BigNAS ResNet space."""
    return packaged_space(DATA_FILE)


__all__ = ["bignas_resnet", "packaged_space"]

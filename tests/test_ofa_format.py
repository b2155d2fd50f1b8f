"""Once-for-All LatencyTable keys and YAML: parse_ofa_key inverts OpSpec.key on both OFA spaces,
bad keys and bad YAML entries fail with one line naming file and key, files round-trip."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from latbench import ops as O
from latbench.errors import FormatError
from latbench.formats.ofa import (
    is_ofa_key, parse_ofa_key, read_ofa_yaml, resolution_of, table_file_name, write_ofa_yaml,
)
from latbench.spaces import get_space


@pytest.mark.parametrize("space", ["ofa-mbv3-w10", "ofa-mbv3-w12"])
def test_parse_inverts_key_on_every_block_of_the_ofa_spaces(space):
    """Every block key of the space parses back to an op with the same key and the same fields."""
    blocks = get_space(space).enumerate_blocks()
    assert len(blocks) > 1000
    prefixes = set()
    for op in blocks:
        parsed = parse_ofa_key(op.key)
        assert parsed.key == op.key
        assert parsed == op, op.key
        prefixes.add(op.key.split("-")[0])
    assert prefixes == {"Conv", "expanded_conv", "Conv_1", "AvgPool2D", "Conv_2", "Logits"}


def test_parsed_ops_follow_ofa_conventions():
    """Layer roles map to OFA's layers: stem conv+BN+hswish, head conv without BN, linear with bias."""
    stem = parse_ofa_key("Conv-input:224x224x3-output:112x112x24")
    assert (stem.kind, stem.kernel, stem.stride, stem.bn, stem.act, stem.out) == ("conv", 3, 2, True, "hswish", 24)
    mb = parse_ofa_key("expanded_conv-input:56x56x32-output:28x28x48-expand:192-kernel:5-stride:2"
                       "-idskip:0-se:1-hs:0")
    assert (mb.kind, mb.mid, mb.kernel, mb.stride, mb.act, mb.residual) == ("mbconv", 192, 5, 2, "relu", False)
    assert mb.se == O.make_divisible(192 // 4, 8) and mb.expand_conv
    first = parse_ofa_key("expanded_conv-input:112x112x16-output:112x112x16-expand:16-kernel:3"
                          "-stride:1-idskip:1-se:0-hs:0")
    assert not first.expand_conv and first.residual and first.se == 0
    hs = parse_ofa_key("expanded_conv-input:14x14x112-output:14x14x112-expand:672-kernel:3-stride:1"
                       "-idskip:1-se:1-hs:1")
    assert hs.act == "hswish" and hs.residual
    head = parse_ofa_key("Conv_1-input:7x7x160-output:7x7x960")
    assert (head.kernel, head.bn, head.act) == (1, True, "hswish")
    pool = parse_ofa_key("AvgPool2D-input:7x7x960-output:1x1x960")
    assert pool.global_pool and pool.pool == "avg" and pool.out_shape == (1, 960, 1, 1)
    mix = parse_ofa_key("Conv_2-input:1x1x960-output:1x1x1280")
    assert (mix.bn, mix.bias, mix.act, mix.out) == (False, False, "hswish", 1280)
    logits = parse_ofa_key("Logits-input:1x1x1280-output:1000")
    assert (logits.kind, logits.bias, logits.c, logits.out) == ("linear", True, 1280, 1000)


@pytest.mark.parametrize("key, why", [
    ("Conv-input:224x224x3-output:111x112x24", "keyed as"),
    ("expanded_conv-input:56x56x32-output:28x28x48-expand:192-kernel:5-stride:2-idskip:0", "se"),
    ("expanded_conv-input:56x56x32-output:28x28x48-expand:192-kernel:5-stride:2-idskip:1-se:1-hs:0",
     "residual"),
    ("expanded_conv-input:56x56x32-output:28x28x48-expand:x-kernel:5-stride:2-idskip:0-se:1-hs:0",
     "expand"),
    ("expanded_conv-input:56x56x32-output:28x28x48-expand:192-kernel:5-stride:2-idskip:2-se:1-hs:0",
     "0 or 1"),
    ("Pool-input:7x7x960-output:1x1x960", "unknown layer"),
    ("Logits-input:7x7x1280-output:1000", "1x1"),
    ("AvgPool2D-input:7x7x960-output:1x1x480", "channels"),
    ("Conv_1-input:7x7-output:7x7x960", "HxWxC"),
    ("Conv_1-input:7x7x160", "needs fields"),
    ("Conv_1-input:7x7x160-output:07x7x960", "HxWxC"),
])
def test_bad_keys_raise_format_error_naming_the_key(key, why):
    """A malformed or inconsistent key is one FormatError line quoting the key and the reason."""
    with pytest.raises(FormatError) as e:
        parse_ofa_key(key)
    msg = str(e.value)
    assert key in msg and why in msg and "\n" not in msg


def test_key_helpers():
    """File names carry the resolution; the prefix test tells OFA keys from latbench's own."""
    assert resolution_of("/x/160_lookup_table.yaml") == 160
    assert resolution_of("lookup_160.yaml") is None
    assert table_file_name(224) == "224_lookup_table.yaml"
    assert is_ofa_key("Conv_2-input:1x1x960-output:1x1x1280")
    assert not is_ofa_key(O.conv((1, 3, 8, 8), 8, 3).key)


OFA_SNIPPET = """\
Conv-input:160x160x3-output:80x80x16:
  count: 1000
  mean: 1.0512354
  std: 0.0412
expanded_conv-input:80x80x16-output:80x80x16-expand:16-kernel:3-stride:1-idskip:1-se:0-hs:0:
  count: 1000
  mean: 0.7
  std: 0.02
"""


def test_read_write_roundtrip(tmp_path: Path):
    """OFA's layout (key -> count, mean, std) reads as numbers and writes back identically."""
    p = tmp_path / "160_lookup_table.yaml"
    p.write_text(OFA_SNIPPET)
    entries = read_ofa_yaml(p)
    assert entries["Conv-input:160x160x3-output:80x80x16"] == {"count": 1000, "mean": 1.0512354, "std": 0.0412}
    out = tmp_path / "copy.yaml"
    assert write_ofa_yaml(entries, out) == 2
    assert read_ofa_yaml(out) == entries
    assert yaml.safe_load(out.read_text()) == yaml.safe_load(OFA_SNIPPET)


def test_unknown_count_and_std_are_not_invented(tmp_path: Path):
    """An entry with only a mean stays without count/std on read and on write."""
    p = tmp_path / "t.yaml"
    write_ofa_yaml({"Logits-input:1x1x1280-output:1000": {"mean": 0.25, "count": None, "std": None}}, p)
    assert yaml.safe_load(p.read_text()) == {"Logits-input:1x1x1280-output:1000": {"mean": 0.25}}
    assert read_ofa_yaml(p)["Logits-input:1x1x1280-output:1000"] == {"count": None, "mean": 0.25, "std": None}


@pytest.mark.parametrize("text, needle", [
    ("- a\n- b\n", "not a mapping"),
    ("", "empty"),
    ("Conv-input:160x160x3-output:80x80x16:\n  count: 3\n  std: 0.1\n", "has no mean"),
    ("Conv-input:160x160x3-output:80x80x16:\n  count: 3\n  mean: fast\n", "mean must be"),
    ("Conv-input:160x160x3-output:80x80x16: 1.5\n", "must be a mapping"),
    ("Conv-input:160x160x3-output:80x80x16:\n  count: 2.5\n  mean: 1\n", "count must be"),
    ("Conv-input:160x160x3-output:80x80x16:\n  mean: 1\n  std: -1\n", "std must be"),
    ("a: [1, 2\n", "not valid YAML"),
])
def test_bad_yaml_is_one_line_naming_file_and_key(tmp_path: Path, text, needle):
    """Bad files fail with FormatError on one line that names the file (and key, line when known)."""
    p = tmp_path / "160_lookup_table.yaml"
    p.write_text(text)
    with pytest.raises(FormatError) as e:
        read_ofa_yaml(p)
    msg = str(e.value)
    assert str(p) in msg and needle in msg and "\n" not in msg
    if "Conv-input" in text and "YAML" not in needle:
        assert "Conv-input:160x160x3-output:80x80x16" in msg and f"{p}:1" in msg


def test_bad_entry_line_number_points_at_its_key(tmp_path: Path):
    """The message gives the line of the offending key, not just the file."""
    p = tmp_path / "t.yaml"
    p.write_text(OFA_SNIPPET + "Conv_1-input:5x5x160-output:5x5x960:\n  count: 1\n  mean: null\n")
    with pytest.raises(FormatError, match=rf"{p}:9: entry 'Conv_1-input:5x5x160-output:5x5x960'"):
        read_ofa_yaml(p)

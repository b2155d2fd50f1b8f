"""PaddleSlim text, CSV, JSONL, JSON and key files: every enumerated op round-trips; bad input names file:line."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from latbench import ops as O
from latbench.errors import FormatError
from latbench.formats import (
    line_to_op, op_to_line, parse_key, read_any_ops, read_csv, read_json, read_jsonl, read_keys,
    read_ops, read_table, write_csv, write_json, write_jsonl, write_keys, write_ops, write_table,
)
from latbench.ops import OpSpec
from latbench.spaces import list_spaces

from conftest import enumerated

SPACES = list_spaces()


def keys(ops) -> list[str]:
    return [o.key for o in ops]


# ---------------------------------------------------------------------- round trips
@pytest.mark.parametrize("space", SPACES)
def test_paddleslim_roundtrips_every_enumerated_op(space, tmp_path):
    ops = list(enumerated(space, "op"))
    assert ops, f"{space} enumerates no op"
    path = tmp_path / "ops.txt"
    assert write_ops(ops, path) == len(ops)
    lines = path.read_text().splitlines()
    assert len(lines) == len(ops)
    back = read_ops(path)
    assert back == ops
    assert keys(back) == keys(ops)
    assert read_any_ops(path) == ops


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("granularity", ["op", "block"])
@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json"])
def test_oplist_roundtrips_every_enumerated_op(space, granularity, fmt, tmp_path):
    ops = list(enumerated(space, granularity))
    writer, reader = {"csv": (write_csv, read_csv), "jsonl": (write_jsonl, read_jsonl),
                      "json": (write_json, read_json)}[fmt]
    path = tmp_path / f"ops.{fmt}"
    assert writer(ops, path) == len(ops)
    back = reader(path)
    assert back == ops and keys(back) == keys(ops)
    assert read_any_ops(path) == ops  # detected from the content, not the name


@pytest.mark.parametrize("space", SPACES)
def test_block_keys_roundtrip(space, tmp_path):
    if space.startswith("ofa-"):
        pytest.importorskip("latbench.formats.ofa")
    ops = list(enumerated(space, "block"))
    path = tmp_path / "blocks.txt"
    write_keys(ops, path)
    assert keys(read_keys(path)) == keys(ops)
    assert keys(read_any_ops(path)) == keys(ops)


def test_csv_and_jsonl_records_carry_shape_attrs_and_costs():
    op = O.conv((1, 16, 56, 56), 32, 3, 2, groups=16, bias=True)
    buf = io.StringIO()
    write_csv([op], buf)
    header, row = buf.getvalue().splitlines()
    assert header == "key,kind,n,c,h,w,attrs,flops,params,bytes"
    buf = io.StringIO()
    write_jsonl([op], buf)
    rec = json.loads(buf.getvalue())
    assert rec["key"] == op.key and rec["kind"] == "conv"
    assert (rec["n"], rec["c"], rec["h"], rec["w"]) == (1, 16, 56, 56)
    assert rec["attrs"] == {"out": 32, "kernel": 3, "stride": 2, "padding": 1, "groups": 16, "bias": True}
    assert (rec["flops"], rec["params"], rec["bytes"]) == (op.flops, op.params, op.bytes)


@pytest.mark.parametrize("space", SPACES)
def test_record_costs_match_the_ops_own_figures(space):
    from latbench.formats.oplist import op_record

    for op in enumerated(space, "block")[::25]:
        rec = op_record(op)
        assert (rec["flops"], rec["params"], rec["bytes"]) == (op.flops, op.params, op.bytes)


def test_table_roundtrip_keeps_latency_exactly(tmp_path):
    ops = list(enumerated("ofa-mbv3-w10", "op", (224,)))
    lats = [0.1 * (i + 1) / 3 for i in range(len(ops))]
    lats[0], lats[1] = 1e-7, 12345.678901234
    path = tmp_path / "table.txt"
    assert write_table(zip(ops, lats), path) == len(ops)
    back = read_table(path)
    assert [op for op, _ in back] == ops
    assert [ms for _, ms in back] == lats


def test_table_loads_in_paddleslims_own_dict_loader(tmp_path):
    """PaddleSlim reads `tuple(fields[:-1]) -> float(fields[-1])`: extensions included, one key per op."""
    ops = [O.eltwise((1, 120, 28, 28), "mul", broadcast=True), O.eltwise((1, 120, 28, 28), "mul"),
           O.linear(1, 1280, 1000), O.activation((1, 16, 8, 8), "hswish")]
    path = tmp_path / "table.txt"
    write_table([(op, float(i + 1)) for i, op in enumerate(ops)], path)
    table = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        table[tuple(fields[:-1])] = float(fields[-1])
    assert table == {
        ("eltwise", "1", "1", "120", "28", "28", "1"): 1.0,
        ("eltwise", "1", "1", "120", "28", "28"): 2.0,
        ("linear", "1", "1", "1280", "1000"): 3.0,
        ("activation", "hard_swish", "1", "16", "8", "8"): 4.0,
    }


# ---------------------------------------------------------------------- LightNAS's own lines
LIGHTNAS_LINES = {
    "conv 0 0 1 3 224 224 32 1 3 1 2 1": O.conv((1, 3, 224, 224), 32, 3, 2, padding=1),
    "conv 1 1 1 32 112 112 32 32 3 1 1 1": O.conv((1, 32, 112, 112), 32, 3, 1, 1, groups=32, bias=True, act="relu"),
    "pooling 1 1 1280 7 7 7 0 1 0 3": O.pool((1, 1280, 7, 7), "avg", global_pool=True),
    "pooling 1 1 96 7 7 0 0 1 0 3": O.pool((1, 96, 7, 7), "avg", global_pool=True),
    "pooling 0 1 64 56 56 3 1 2 1 1": OpSpec("pool", 1, 64, 56, 56, pool="max", kernel=3, padding=1,
                                              stride=2, ceil_mode=True),
    "pooling 0 1 64 56 56 2 0 2 0 2": OpSpec("pool", 1, 64, 56, 56, pool="avg", kernel=2, stride=2,
                                              count_pad=True),
    "eltwise 2 1 1000 1 1": O.eltwise((1, 1000, 1, 1), "add"),
    "eltwise 1 1 120 28 28 1": O.eltwise((1, 120, 28, 28), "mul", broadcast=True),
    "eltwise 3 1 8 4 4": O.eltwise((1, 8, 4, 4), "max"),
    "softmax -1 1 1000 1 1": O.softmax((1, 1000, 1, 1), axis=1),  # flat logits, padded to 4-D
    "softmax 1 1 1000 1 1": O.softmax((1, 1000, 1, 1), axis=1),
    "softmax 3 1 8 4 4": O.softmax((1, 8, 4, 4), axis=3),
    "conv 0 0 1 1280 1 1 1000 1 1 0 1 1": O.conv((1, 1280, 1, 1), 1000, 1),
    "activation relu6 1 32 112 112": O.activation((1, 32, 112, 112), "relu6"),
    "activation hard_swish 1 16 56 56": O.activation((1, 16, 56, 56), "hswish"),
    "activation hard_sigmoid 1 16 1 1": O.activation((1, 16, 1, 1), "hsigmoid"),
    "batch_norm None 1 32 112 112": O.batch_norm((1, 32, 112, 112)),
    "batch_norm relu 1 32 112 112": O.batch_norm((1, 32, 112, 112), act="relu"),
    "linear 1 1 1280 1000": O.linear(1, 1280, 1000, bias=True),
}


@pytest.mark.parametrize("line", list(LIGHTNAS_LINES))
def test_lightnas_lines_parse_to_the_right_op(line):
    op = line_to_op(line)
    assert op == LIGHTNAS_LINES[line]
    assert op.key == LIGHTNAS_LINES[line].key


def test_softmax_of_flat_logits_is_written_as_paddleslim_writes_it():
    """PaddleSlim writes the softmax of (n, c) logits with axis -1 and the shape padded to n c 1 1;
    a softmax over a real feature map keeps its axis."""
    assert op_to_line(O.softmax((1, 1000, 1, 1))) == "softmax -1 1 1000 1 1"
    assert op_to_line(O.softmax((1, 8, 4, 4))) == "softmax 1 1 8 4 4"
    assert op_to_line(O.softmax((1, 8, 4, 4), axis=-1)) == "softmax -1 1 8 4 4"
    assert line_to_op("softmax -1 1 8 4 4") == O.softmax((1, 8, 4, 4), axis=-1)


def test_global_pool_kernel_zero_reads_like_kernel_h():
    a = line_to_op("pooling 1 1 96 7 7 0 0 1 0 3")
    b = line_to_op("pooling 1 1 96 7 7 7 0 1 0 3")
    assert a == b and a.kernel == 7 and a.global_pool and a.out_hw == (1, 1)
    assert op_to_line(a) == "pooling 1 1 96 7 7 7 0 1 0 3"


def test_extensions_are_written_only_when_needed():
    assert op_to_line(O.eltwise((1, 8, 4, 4), "add")) == "eltwise 2 1 8 4 4"
    assert op_to_line(O.eltwise((1, 8, 4, 4), "mul", broadcast=True)) == "eltwise 1 1 8 4 4 1"
    assert line_to_op("eltwise 1 1 8 4 4 0") == O.eltwise((1, 8, 4, 4), "mul")
    assert op_to_line(O.linear(2, 64, 10, bias=False)) == "linear 0 2 64 10"
    assert op_to_line(O.batch_norm((1, 8, 4, 4))) == "batch_norm None 1 8 4 4"
    assert op_to_line(O.conv((1, 8, 4, 4), 8, 3, act="relu")) == "conv 0 1 1 8 4 4 8 1 3 1 1 1"


@pytest.mark.parametrize("op", [
    O.conv((1, 8, 8, 8), 8, 3, bn=True),
    O.conv((1, 8, 8, 8), 8, 3, act="hswish"),
    O.mbconv((1, 16, 8, 8), 16, 48, 3, 1, "relu"),
    O.resblock("basic", (1, 16, 8, 8), 16, 3, 1),
    O.linear(1, 64, 10, act="relu"),
], ids=["conv+bn", "conv+hswish", "mbconv", "basic", "linear+relu"])
def test_inexpressible_ops_raise_and_point_to_other_formats(op):
    with pytest.raises(FormatError, match=r"--granularity op.*--format csv\|jsonl"):
        op_to_line(op)
    with pytest.raises(FormatError):
        write_ops([op], io.StringIO())


def test_write_ops_writes_nothing_when_one_op_fails(tmp_path):
    path = tmp_path / "ops.txt"
    with pytest.raises(FormatError):
        write_ops([O.activation((1, 8, 4, 4), "relu"), O.conv((1, 8, 8, 8), 8, 3, bn=True)], path)
    assert not path.exists()


# ---------------------------------------------------------------------- bad input
BAD_LINES = [
    ("convolution 0 0 1 3 224 224 32 1 3 1 2 1", r"unknown op type 'convolution'"),
    ("conv 0 0 1 3 224 224 32 1 3 1 2", r"conv takes 13 fields .* got 12"),
    ("eltwise 2 1 8 4", r"eltwise takes 6 or 7 fields"),
    ("softmax -1 1 1000 1 1 5", r"softmax takes 6 fields"),
    ("conv 0 0 1 3 224 x 32 1 3 1 2 1", r"field w_in must be an integer, got 'x'"),
    ("pooling 1 1 96 7 7 0 0 1.5 0 3", r"field stride must be an integer"),
    ("conv 2 0 1 3 224 224 32 1 3 1 2 1", r"flag_bias must be 0 or 1"),
    ("eltwise 4 1 8 4 4", r"eltwise_type must be 1 \(mul\), 2 \(add\) or 3 \(max\)"),
    ("pooling 0 1 8 4 4 2 0 2 0 7", r"pool_type must be 1"),
    ("activation prelu 1 8 4 4", r"unsupported active_type 'prelu'"),
    ("conv 0 0 1 6 8 8 8 4 3 1 1 1", r"groups=4 must divide"),
]


@pytest.mark.parametrize("line,why", BAD_LINES)
def test_bad_line_names_file_line_and_problem(line, why, tmp_path):
    path = tmp_path / "ops.txt"
    path.write_text("# op list\nactivation relu 1 8 4 4\n\n" + line + "\n")
    with pytest.raises(FormatError, match=why) as exc:
        read_ops(path)
    assert f"{path}:4:" in str(exc.value)
    with pytest.raises(FormatError, match=why):
        line_to_op(line)


def test_bad_table_lines(tmp_path):
    path = tmp_path / "table.txt"
    path.write_text("activation relu 1 8 4 4 0.5\nactivation relu 1 8 4 8 fast\n")
    with pytest.raises(FormatError, match=rf"{path}:2: latency 'fast' is not a number"):
        read_table(path)
    path.write_text("activation relu 1 8 4 4 0.5\nactivation relu 1 8 4 0.3\n")
    with pytest.raises(FormatError, match=rf"{path}:2: activation takes 6 fields"):
        read_table(path)


@pytest.mark.parametrize("latency", ["-0.5", "nan", "inf", "-inf"])
def test_negative_or_nan_latency_names_file_and_line(tmp_path, latency):
    path = tmp_path / "table.txt"
    path.write_text(f"activation relu 1 8 4 4 0.5\n\nactivation relu 1 8 4 8 {latency}\n")
    with pytest.raises(FormatError) as e:
        read_table(path)
    assert str(e.value) == f"{path}:3: latency '{latency}' must be a finite number >= 0 (ms)"


def test_missing_file_is_a_format_error(tmp_path):
    with pytest.raises(FormatError, match="cannot read"):
        read_ops(tmp_path / "nope.txt")


def test_csv_key_mismatch_names_file_and_line(tmp_path):
    ops = [O.activation((1, 8, 4, 4), "relu"), O.activation((1, 8, 4, 4), "relu6")]
    path = tmp_path / "ops.csv"
    write_csv(ops, path)
    text = path.read_text().replace("type:relu6", "type:tanh")
    path.write_text(text)
    with pytest.raises(FormatError, match=rf"{path}:3: key .*type:tanh.* does not match .*type:relu6"):
        read_csv(path)


def test_jsonl_errors_name_file_and_line(tmp_path):
    path = tmp_path / "ops.jsonl"
    good = json.dumps({"kind": "activation", "n": 1, "c": 8, "h": 4, "w": 4, "attrs": {"act": "relu"}})
    path.write_text(good + "\n{not json\n")
    with pytest.raises(FormatError, match=rf"{path}:2: not valid JSON"):
        read_jsonl(path)
    path.write_text(good + "\n" + json.dumps({"kind": "conv", "n": 1, "c": 8, "h": 4}) + "\n")
    with pytest.raises(FormatError, match=rf"{path}:2: missing field\(s\) w"):
        read_jsonl(path)
    path.write_text(json.dumps({"kind": "conv", "n": 1, "c": 8, "h": 4, "w": 4,
                                "attrs": {"out": 8, "kernal": 3}}) + "\n")
    with pytest.raises(FormatError, match=rf"{path}:1: .*kernal"):
        read_jsonl(path)


def test_csv_missing_column(tmp_path):
    path = tmp_path / "ops.csv"
    path.write_text("key,kind,n,c,h\nx,conv,1,2,3\n")
    with pytest.raises(FormatError, match=rf"{path}:1: CSV header lacks column\(s\) w"):
        read_csv(path)


def test_read_any_ops_mixes_keys_and_paddleslim_lines(tmp_path):
    relu = O.activation((1, 8, 4, 4), "relu")
    block = O.mbconv((1, 16, 8, 8), 24, 48, 5, 2, "relu6", se=12, se_act="sigmoid", se_pos="out")
    path = tmp_path / "mixed.txt"
    path.write_text(f"{block.key}\n# comment\nactivation relu 1 8 4 4\n{relu.key}\n")
    assert read_any_ops(path) == [block, relu, relu]
    path.write_text(f"{block.key}\nmbconv-input:1x16x8x8-out:24-bogus:1\n")
    with pytest.raises(FormatError, match=rf"{path}:2: unknown field 'bogus'"):
        read_any_ops(path)


def test_parse_key_inverts_key_for_every_kind():
    for op in [O.conv((2, 8, 9, 9), 16, 3, 2, dilation=2, bias=True, bn=True, act="relu6"),
               O.pool((1, 8, 9, 9), "max", 3, 2, 1, ceil_mode=True), O.softmax((1, 10, 1, 1), axis=-1),
               O.eltwise((1, 8, 4, 4), "max"), O.batch_norm((1, 8, 4, 4), "relu"),
               O.linear(4, 64, 10, bias=False, act="gelu"),
               O.resblock("bottleneck", (1, 64, 56, 56), 256, 3, 2, mid=64),
               O.resblock("basic", (1, 64, 56, 56), 64, 3, 1)]:
        assert parse_key(op.key) == op
    with pytest.raises(FormatError, match="not canonical"):
        parse_key("activation-input:01x8x4x4-type:relu")


def test_ofa_keys_are_read_through_formats_ofa(tmp_path):
    pytest.importorskip("latbench.formats.ofa")
    blocks = list(enumerated("ofa-mbv3-w10", "block", (224,)))
    path = tmp_path / "ofa.txt"
    path.write_text("".join(b.key + "\n" for b in blocks))
    assert keys(read_any_ops(path)) == keys(blocks)
    assert all(not k.startswith(("mbconv", "conv-")) for k in keys(blocks))


HEAVY = ("torch", "onnxruntime", "ai_edge_litert", "adbutils", "matplotlib", "device_agents", "yaml")


def test_formats_store_and_merge_import_nothing_heavy():
    """The table formats, the store, merge and combine import neither a backend, nor the OFA
    YAML module (it needs yaml) until it is used."""
    code = ("import sys, latbench.formats, latbench.store, latbench.merge, latbench.combine; "
            "print(sorted(m for m in sys.modules if m == 'latbench.formats.ofa' or m.split('.')[0] in "
            f"{HEAVY!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

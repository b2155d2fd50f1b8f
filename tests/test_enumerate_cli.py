"""enumerate_ops and the real CLI: every format parses back to enumerate_ops; errors are one line with the right exit code."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest

from latbench.enumerate import enumerate_ops, summary
from latbench.errors import DeviceUnavailableError, UsageError
from latbench.formats import read_any_ops, read_csv, read_jsonl, read_ops
from latbench.spaces import get_space, list_spaces

from conftest import ROOT, enumerated, run_latbench

OFA_KEY = re.compile(r"^(Conv|Conv_1|Conv_2|AvgPool2D|Logits|expanded_conv)-input:\d+x\d+x\d+-output:")


def keys(ops) -> list[str]:
    return [o.key for o in ops]


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("latbench: error: ")
    assert "Traceback" not in stderr
    return lines[0]


# ---------------------------------------------------------------------- enumerate_ops
@pytest.mark.parametrize("space", list_spaces())
def test_enumeration_covers_sampled_subnets_and_has_no_duplicates(space):
    sp = get_space(space)
    for g in ("op", "block"):
        ops = enumerated(space, g)
        ks = keys(ops)
        assert len(set(ks)) == len(ks)
        known = set(ks)
        for cfg in sp.sample(0, 12):
            used = {o.key for o in sp.decode(cfg, g)}
            assert used <= known, sorted(used - known)[:3]
    assert all(o.kind not in ("mbconv", "bottleneck", "basic") for o in enumerated(space, "op"))


def test_enumeration_is_the_union_over_resolutions():
    one = [set(keys(enumerated("ofa-mbv3-w10", "op", (r,)))) for r in (160, 224)]
    both = set(keys(enumerated("ofa-mbv3-w10", "op", (160, 224))))
    assert both == one[0] | one[1] and one[0] - one[1]


def test_order_is_kind_then_natural_key_and_independent_of_hash_seed():
    from latbench.ops import KINDS

    ops = enumerated("ofa-mbv3-w10", "op")
    ranks = [KINDS.index(o.kind) for o in ops]
    assert ranks == sorted(ranks)
    convs = [o for o in ops if o.kind == "conv" and o.c == 3]
    assert [o.h for o in convs] == sorted(o.h for o in convs)  # 128 before 1000-style numeric order
    code = ("import hashlib; from latbench.enumerate import enumerate_ops; from latbench.spaces import get_space; "
            "ks = [o.key for o in enumerate_ops(get_space('lightnas'), granularity='block')]; "
            "print(hashlib.sha1('\\n'.join(ks).encode()).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout
               for seed in ("1", "2")}
    assert len(digests) == 1


def test_summary_counts_per_kind_in_kind_order():
    ops = enumerated("ofa-mbv3-w10", "block", (224,))
    s = summary(ops)
    assert list(s) == ["conv", "pool", "linear", "mbconv"]
    assert s == {"conv": 3, "pool": 1, "linear": 1, "mbconv": sum(o.kind == "mbconv" for o in ops)}
    assert sum(s.values()) == len(ops)


def test_ofa_block_keys_are_once_for_all_keys():
    blocks = enumerated("ofa-mbv3-w10", "block", (224,))
    assert all(OFA_KEY.match(k) for k in keys(blocks))
    assert "Logits-input:1x1x1280-output:1000" in keys(blocks)


def test_enumerate_ops_rejects_bad_input():
    sp = get_space("ofa-mbv3-w10")
    with pytest.raises(UsageError, match="granularity must be one of op, block"):
        enumerate_ops(sp, granularity="layer")
    with pytest.raises(UsageError, match="allowed: 128, 132"):
        enumerate_ops(sp, [225])


# ---------------------------------------------------------------------- help and import speed
def test_help_is_the_same_for_the_script_and_cli_py():
    a = run_latbench("--help")
    b = run_latbench("--help", entry="root")
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout
    for cmd in ("spaces", "enumerate", "quickstart"):
        assert cmd in a.stdout


def test_cli_import_pulls_in_no_heavy_module():
    code = ("import sys, latbench.cli; print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', "
            "'ai_edge_litert', 'adbutils', 'numpy', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------- enumerate through the CLI
# In-process (the `cli` fixture) unless the entry point is the point: the script and cli.py are
# run by the help, import, hash-seed and cli.py-from-elsewhere tests.
def test_default_output_is_paddleslim_with_summary_on_stderr(cli, tmp_path):
    code, out, err = cli("enumerate", "ofa-mbv3-w10", "-r", "224")
    assert code == 0, err
    path = tmp_path / "out.txt"
    path.write_text(out)
    want = enumerated("ofa-mbv3-w10", "op", (224,))
    assert read_ops(path) == list(want)
    counts = summary(want)
    assert f"total {len(want)}" in err
    for kind, n in counts.items():
        assert f"{kind} {n}" in err
    assert re.search(r"\d+\.\d\d s", err)


def test_csv_output(cli, tmp_path):
    code, out, err = cli("enumerate", "bignas-resnet", "-r", "192", "--format", "csv")
    assert code == 0, err
    path = tmp_path / "out.csv"
    path.write_text(out)
    assert read_csv(path) == list(enumerated("bignas-resnet", "op", (192,)))


def test_block_granularity_prints_ofa_keys(cli):
    code, out, err = cli("enumerate", "ofa-mbv3-w10", "--granularity", "block", "-r", "160", "-r", "224")
    assert code == 0, err
    lines = out.splitlines()
    assert lines == keys(enumerated("ofa-mbv3-w10", "block", (160, 224)))
    assert all(OFA_KEY.match(line) for line in lines)


@pytest.mark.parametrize("space", list_spaces())
@pytest.mark.parametrize("fmt", ["paddleslim", "csv", "jsonl", "keys"])
def test_every_format_parses_back(cli, space, fmt, tmp_path):
    if fmt == "keys" and space.startswith("ofa-"):
        pytest.importorskip("latbench.formats.ofa")
    space_obj = get_space(space)
    r = space_obj.resolutions[-1]
    code, out, err = cli("enumerate", space, "-r", str(r), "--format", fmt)
    assert code == 0, err
    path = tmp_path / f"out.{fmt}"
    path.write_text(out)
    back = read_any_ops(path)
    want = enumerated(space, "op", (r,))
    assert keys(back) == keys(want)
    if fmt != "keys":
        assert back == list(want)


@pytest.mark.parametrize("fmt,reader", [("csv", read_csv), ("jsonl", read_jsonl)])
def test_block_granularity_in_csv_and_jsonl(cli, fmt, reader, tmp_path):
    code, out, err = cli("enumerate", "bignas-resnet", "-g", "block", "-f", fmt)
    assert code == 0, err
    path = tmp_path / f"b.{fmt}"
    path.write_text(out)
    assert reader(path) == list(enumerated("bignas-resnet", "block"))


def test_output_file(cli, tmp_path):
    path = tmp_path / "ops.jsonl"
    code, out, err = cli("enumerate", "ofa-mbv3-w12", "-r", "128", "-f", "jsonl", "-o", str(path))
    assert code == 0, err
    assert out == ""
    assert str(path) in err
    assert read_jsonl(path) == list(enumerated("ofa-mbv3-w12", "op", (128,)))


def test_json_prints_one_document(cli):
    code, out, err = cli("enumerate", "ofa-mbv3-w10", "-r", "192", "--json")
    assert code == 0, err
    doc = json.loads(out)
    want = enumerated("ofa-mbv3-w10", "op", (192,))
    assert [d["key"] for d in doc] == keys(want)
    assert set(doc[0]) == {"key", "kind", "n", "c", "h", "w", "attrs", "flops", "params", "bytes"}
    assert read_any_ops(io.StringIO(out)) == list(want)


def test_yaml_space_file(cli, tiny_yaml):
    code, out, err = cli("enumerate", str(tiny_yaml), "-g", "block", "-f", "jsonl")
    assert code == 0, err
    assert "cli-tiny" in err
    assert keys(read_jsonl(io.StringIO(out))) == keys(enumerate_ops(get_space(str(tiny_yaml)), granularity="block"))


def test_spaces_lists_every_registered_space(cli):
    code, out, err = cli("spaces", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert [d["name"] for d in doc] == list_spaces()
    by_name = {d["name"]: d for d in doc}
    assert by_name["ofa-mbv3-w10"]["size"] == get_space("ofa-mbv3-w10").size
    assert by_name["ofa-mbv3-w10"]["resolutions"][0] == 128
    code, out, err = cli("spaces")
    assert code == 0
    for name in list_spaces():
        assert name in out
    assert "5.44e+20" in out and "128..224 step 4 (25)" in out


def test_quickstart_runs_every_step(cli, tmp_path):
    from latbench.cli.quickstart import QUICKSTART_STEPS

    # the cheapest run its options allow that still runs every step (validate measures 2 subnets)
    code, out, err = cli("quickstart", "--samples", "5", "-r", "160", "--validate-n", "2",
                         "--workdir", str(tmp_path / "qs"))
    assert code == 0, err
    for i, (title, _) in enumerate(QUICKSTART_STEPS, 1):
        assert f"{i}/{len(QUICKSTART_STEPS)} {title}" in out
    assert re.search(r"MFLOPs min \d+\.\d, median \d+\.\d, max \d+\.\d", out)
    assert "Logits-input:1x1x1280-output:1000" in out
    assert "every block of every sampled subnet is in the enumerated list" in out
    # validate ran at --validate-n 2's share of the default's timing (0.025 s caps, one build)
    assert re.search(r"^op-sum +2 ", out, re.M) and "or 0.025 s, 1 fresh build(s) each" in out, out


def test_quickstart_default_validate_keeps_the_full_timing():
    """Only a --validate-n below the default shrinks the validate step's timing and builds."""
    import inspect

    from latbench.cli.quickstart import QUICKSTART_VALIDATE_N, quickstart_cmd, quickstart_share

    assert inspect.signature(quickstart_cmd).parameters["validate_n"].default.default == QUICKSTART_VALIDATE_N
    assert quickstart_share(QUICKSTART_VALIDATE_N) == quickstart_share(100) == 1.0
    assert quickstart_share(2) == 0.25


# ---------------------------------------------------------------------- errors
def test_unknown_space_lists_known_ones(cli):
    code, out, err = cli("enumerate", "resnet-9000")
    assert code == 2
    line = one_error_line(err)
    assert "resnet-9000" in line
    for name in list_spaces():
        assert name in line
    assert out == ""


def test_bad_resolution_names_the_allowed_ones(cli):
    code, out, err = cli("enumerate", "ofa-mbv3-w10", "-r", "225")
    assert code == 2
    line = one_error_line(err)
    assert "225" in line and "128" in line and "224" in line


def test_bad_yaml_space_is_one_line(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: broken\ninput: {resolutions: [32]}\nstages:\n  - {block: mbconv, depth: 1, out: 8, kernal: 3}\n")
    code, out, err = cli("enumerate", str(bad))
    assert code in (1, 2)
    line = one_error_line(err)
    assert "bad.yaml" in line and "kernal" in line


def test_unparseable_yaml_is_one_line(cli, tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: [x\n")
    code, out, err = cli("enumerate", str(bad))
    assert code in (1, 2)
    assert "broken.yaml" in one_error_line(err)


@pytest.mark.parametrize("args,needle", [
    (["--format", "xml"], "xml"),
    (["--granularity", "layer"], "layer"),
    (["-r", "abc"], "--resolution"),
])
def test_bad_option_values_are_usage_errors(cli, args, needle):
    code, out, err = cli("enumerate", "ofa-mbv3-w10", *args)
    assert code == 2
    assert needle in err and "Traceback" not in err
    assert out == ""


@pytest.mark.parametrize("args,needle", [
    (["-g", "block", "-f", "paddleslim"], "--granularity op"),
    (["--json", "-f", "csv"], "--json and --format"),
])
def test_conflicting_options_are_usage_errors(cli, args, needle):
    code, out, err = cli("enumerate", "ofa-mbv3-w10", "-r", "224", *args)
    assert code == 2 and out == ""
    assert needle in one_error_line(err)


def test_unwritable_output_is_one_line(cli, tmp_path):
    code, out, err = cli("enumerate", "ofa-mbv3-w10", "-r", "128", "-o", str(tmp_path / "no" / "such" / "dir.txt"))
    assert code == 1
    assert "cannot write" in one_error_line(err)


@pytest.mark.parametrize("exc,code", [
    (KeyboardInterrupt(), 130),
    (DeviceUnavailableError("phone 1234 went away"), 4),
    (RuntimeError("boom"), 1),
])
def test_exit_codes_of_main(cli, monkeypatch, exc, code):
    import latbench.enumerate as enum_mod

    def fail(*a, **k):
        raise exc

    monkeypatch.setattr(enum_mod, "enumerate_ops", fail)
    got, out, err = cli("enumerate", "ofa-mbv3-w10")
    assert got == code
    one_error_line(err)


def test_root_cli_py_is_executable_and_runs_from_elsewhere(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "spaces", "--json"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [d["name"] for d in json.loads(proc.stdout)] == list_spaces()

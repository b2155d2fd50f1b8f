"""OFA's argument and config checks on a Convert-ed model: a bad net_config, elastic_order,
skip_layers, elastic_depth or teacher path is one latbench error line naming what is wrong and
where, raised where it is given (set_net_config, OFA(...)), not a raw error at forward time."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from conftest import ROOT  # noqa: E402

from latbench.errors import ConfigError, UsageError  # noqa: E402
from latbench.supernet import OFA, Convert, DistillConfig, RunConfig, supernet  # noqa: E402


def _plain_model():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def _ofa(**kw):
    torch.manual_seed(0)
    sp = Convert(supernet(kernel_size=[3, 5, 7], expand_ratio=[1, 2, 4])).convert(_plain_model())
    return OFA(sp, **kw)


X = torch.randn(1, 3, 8, 8)


def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("layer,key,value,choices", [
    ("0", "expand_ratio", 3, "[1, 2, 4]"), ("0", "expand_ratio", 0.5, "[1, 2, 4]"),
    ("0", "expand_ratio", "2", "[1, 2, 4]"), ("0", "kernel_size", 4, "[3, 5, 7]"),
    ("3", "kernel_size", 9, "[3, 5, 7]"), ("6", "expand_ratio", True, "[1, 2, 4]"),
])
def test_a_value_off_the_choices_is_refused_at_set_net_config(layer, key, value, choices):
    ofa = _ofa()
    with pytest.raises(ConfigError) as e:
        ofa.set_net_config({layer: {key: value}})
    assert _one_line(e) == f"net_config layer {layer!r}: {key}={value!r} is not one of {choices}"
    assert ofa.net_config is None  # the refused config was not kept
    # an equal number of another type is the same choice
    ofa.set_net_config({"0": {"expand_ratio": 2.0, "kernel_size": np.int64(5)}})
    ofa(X)
    assert ofa.model[0].active == {"kernel_size": 5, "expand_ratio": 2}


def test_unknown_layers_and_keys_are_refused():
    ofa = _ofa()
    with pytest.raises(ConfigError) as e:
        ofa.set_net_config({"features.77": {"kernel_size": 5}})
    assert re.fullmatch(r"net_config names 'features\.77', which is not a layer of the model "
                        r"\(elastic layers: 0, 3, 6\)", _one_line(e))
    with pytest.raises(ConfigError, match=r"'kernal_size'.*layer '0'.*kernel_size, expand_ratio.*did you mean "
                                          r"'kernel_size'"):
        ofa.set_net_config({"0": {"kernal_size": 5}})
    with pytest.raises(ConfigError, match=r"names '1' \(SuperBatchNorm2d\), which has no elastic dimension "
                                          r"\(elastic layers: 0, 3, 6\)"):
        ofa.set_net_config({"1": {"expand_ratio": 2}})
    with pytest.raises(ConfigError, match=r"names '9' \(SuperLinear\), which has no elastic dimension"):
        ofa.set_net_config({"9": {"expand_ratio": 1}})
    with pytest.raises(ConfigError, match=r"layer '3' has no elastic expand_ratio \(its elastic keys: "
                                          r"kernel_size\)"):
        ofa.set_net_config({"3": {"expand_ratio": 2}})
    with pytest.raises(ConfigError, match=r"layer '6' has no elastic kernel_size"):
        ofa.set_net_config({"6": {"kernel_size": 3}})
    with pytest.raises(ConfigError, match=r"names 0, which is not a layer.*names are strings: '0'"):
        ofa.set_net_config({0: {"kernel_size": 3}})
    with pytest.raises(ConfigError, match=r"net_config\['0'\] must be a dict"):
        ofa.set_net_config({"0": 5})
    # layers left out take their largest choice (PaddleSlim's semantics)
    ofa.set_net_config({"3": {"kernel_size": 3}})
    ofa(X)
    assert [ofa.model[i].active for i in (0, 3, 6)] == [{"kernel_size": 7, "expand_ratio": 4},
                                                        {"kernel_size": 3}, {"expand_ratio": 4}]
    with pytest.raises(ConfigError, match="not a layer of the model"):  # export checks the same
        ofa.export(None, {"features.0": {"kernel_size": 5}}, [[1, 3, 8, 8]])


def test_ties_and_skip_layers_keep_working_with_the_checks():
    from test_convert_ties import EXPECTED, InputSkip, _converted

    _, sp = _converted()
    lead, follower = EXPECTED[0][0], EXPECTED[0][1]
    ofa = OFA(sp, RunConfig(skip_layers="b3.conv1"))  # a single name is a one-element list
    assert ofa.skipped == [ofa.dims.names.index("b3.conv1.expand_ratio")]
    ofa.set_net_config({follower: {"expand_ratio": 0.5}})  # a follower carries no dim of its own
    with torch.no_grad():
        ofa(torch.randn(1, 3, 8, 8))
    assert {sp.get_submodule(n)._ratio() for n in EXPECTED[0]} == {0.5}
    with pytest.raises(ConfigError, match=rf"layer {follower!r}: expand_ratio=0\.3 is not one of "
                                          r"\[0\.25, 0\.5, 1\.0\]"):
        ofa.set_net_config({follower: {"expand_ratio": 0.3}})
    with pytest.raises(ConfigError, match=rf"layer {follower!r} has no elastic kernel_size"):
        ofa.set_net_config({follower: {"kernel_size": 3}})
    ofa.set_net_config({lead: {"expand_ratio": 0.25}, "b3.conv1": {"expand_ratio": 0.5}})
    with pytest.raises(UsageError, match="skip_layers keeps it static"):
        ofa(torch.randn(1, 3, 8, 8))
    # a layer kept at its original width (it meets the network input in an add) takes only ratio 1
    ofa2 = OFA(Convert(supernet(expand_ratio=[1, 2, 4])).convert(InputSkip()))
    ofa2.set_net_config({"b": {"expand_ratio": 1}})
    ofa2(torch.randn(1, 3, 8, 8))
    with pytest.raises(ConfigError, match=r"layer 'b': expand_ratio=2 is not one of \[1\] \(it meets a "
                                          r"non-elastic width in an add"):
        ofa2.set_net_config({"b": {"expand_ratio": 2}})


def test_a_list_config_is_checked():
    ofa = _ofa()
    for bad, msg in [([0], (r"net_config has 4 elastic dimensions \(0\.kernel_size, 0\.expand_ratio, "
                            r"3\.kernel_size, 6\.expand_ratio\), got 1 index")),
                     ([9] * 6, r"net_config has 4 elastic dimensions .*got 6 indices"),
                     ([2, 2, 9, 2], (r"net_config\[2\] = 9: 3\.kernel_size has 3 choices \(3, 5, 7\), an "
                                     r"index is 0\.\.2")),
                     ([2, -1, 2, 2], r"net_config\[1\] = -1: 0\.expand_ratio has 3 choices"),
                     ([[0, 0], [0, 0]], r"got shape \(2, 2\)"),
                     ([0, 1.5, 0, 0], r"indices of the choices \(integers\)"),
                     (["a", 0, 0, 0], r"indices of the choices \(integers\)")]:
        with pytest.raises(ConfigError, match=msg) as e:
            ofa.set_net_config(bad)
        _one_line(e)
    ofa.set_net_config(np.array([0, 0, 0, 0]))
    ofa(X)
    assert [ofa.model[i].active for i in (0, 3, 6)] == [{"kernel_size": 3, "expand_ratio": 1},
                                                        {"kernel_size": 3}, {"expand_ratio": 1}]
    ofa.set_net_config([2.0, 1, 2, 0])  # whole numbers are indices
    with pytest.raises(ConfigError, match="has 4 elastic dimensions"):  # applying a short vector
        ofa.dims.apply(np.array([0]))


def test_elastic_order_skip_layers_and_depth_arguments():
    ofa = _ofa(elastic_order="kernel_size")  # a single task is a one-element list
    assert ofa.elastic_order == ["kernel_size"]
    assert _ofa(elastic_order="width").elastic_order == ["width"]
    with pytest.raises(UsageError, match=r"elastic_order names 'width' twice"):
        _ofa(elastic_order=["width", "width"])
    with pytest.raises(UsageError, match=r"elastic_order names 'width' twice"):
        _ofa(elastic_order=["expand_ratio", "width"])  # an alias of the same task
    with pytest.raises(UsageError, match=r"elastic_order is empty.*kernel_size, width"):
        _ofa(elastic_order=[])
    with pytest.raises(UsageError, match=r"elastic_order names 'kernal', which the model has no dimension"):
        _ofa(elastic_order="kernal")
    ofa = _ofa(run_config=RunConfig(skip_layers="0"))
    assert [ofa.dims.names[i] for i in ofa.skipped] == ["0.kernel_size", "0.expand_ratio"]
    with pytest.raises(UsageError, match=r"skip_layers names 'features\.0', which has no elastic dimension"):
        _ofa(run_config=RunConfig(skip_layers="features.0"))
    with pytest.raises(UsageError) as e:
        _ofa(run_config=RunConfig(elastic_depth=[2, 3]))
    assert "elastic_depth [2, 3]" in _one_line(e) and "no depth dimension" in str(e.value)
    assert "kernel_size, width" in str(e.value)


def test_elastic_depth_still_restricts_a_supernet():
    from latbench.spaces import get_space
    from latbench.supernet.model import SuperNet

    net = SuperNet(get_space("tiny"))
    ofa = OFA(net, RunConfig(elastic_depth=2))  # a single depth
    depth = [i for i, t in enumerate(ofa.dims.tasks) if t == "depth"]
    assert depth and all([ofa.dims.choices[i][j] for j in ofa.allowed[i]] == [2] for i in depth)


def test_a_missing_teacher_path_is_a_usage_error(tmp_path):
    teacher = _plain_model()
    with pytest.raises(UsageError) as e:
        _ofa(distill_config=DistillConfig(teacher_model=teacher, teacher_model_path="/nope.pt"))
    assert _one_line(e).startswith("DistillConfig.teacher_model_path '/nope.pt': cannot read it")
    bad = tmp_path / "bad.pt"
    bad.write_text("not a state dict")
    with pytest.raises(UsageError, match=r"'.*bad\.pt'.*weights_only=True") as e:
        _ofa(distill_config=DistillConfig(teacher_model=teacher, teacher_model_path=str(bad)))
    _one_line(e)
    other = tmp_path / "other.pt"
    torch.save(nn.Linear(2, 2).state_dict(), other)
    with pytest.raises(UsageError, match=r"'.*other\.pt' does not fit the teacher") as e:
        _ofa(distill_config=DistillConfig(teacher_model=teacher, teacher_model_path=str(other)))
    _one_line(e)
    good = tmp_path / "good.pt"
    torch.save(teacher.state_dict(), good)
    ofa = _ofa(distill_config=DistillConfig(teacher_model=_plain_model(), teacher_model_path=str(good)))
    assert ofa.ofa_teacher_model is not None


def _doc_convert_snippet() -> str:
    text = (ROOT / "docs" / "supernet.md").read_text()
    start = text.index("\n## Convert: any torch model into a supernet")
    return re.search(r"^```python\n(.*?)^```$", text[start:], flags=re.S | re.M).group(1)


def test_docs_convert_snippet_runs(tmp_path):
    """docs/supernet.md's Convert snippet runs as written, in a fresh interpreter."""
    (tmp_path / "snippet.py").write_text(_doc_convert_snippet())
    r = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stderr[-2000:]

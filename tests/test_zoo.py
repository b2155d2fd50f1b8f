"""The model zoo (latbench.zoo): the issue's architectures, built from transformers configs with no
weights downloaded, deterministic, returning plain logits; and the one-path rule on a zoo model
(a torch module lowers exactly as its ONNX export does)."""
from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("transformers", reason="the zoo builds transformers models: pip install 'latbench[zoo]'")
torch = pytest.importorskip("torch", reason="the zoo builds torch modules")

from latbench.errors import UsageError
from latbench.zoo import kind, list_zoo, zoo_entry, zoo_model

# issue 21's architectures, by the zoo's names
ISSUE = {"mobilenet_v2", "efficientnet_b0", "resnet18", "regnet_y_800mf", "convnext_atto", "vit_tiny",
         "deit_tiny", "mobilevit_xxs", "swin_tiny", "levit_128s"}
CHEAPEST = {"cnn": "convnext_atto", "transformer": "vit_tiny"}  # quickest to build and export here


def test_zoo_names_kinds_and_cheap_import():
    names = list_zoo()
    assert names and len(set(names)) == len(names)
    assert set(names) <= ISSUE, f"not one of the issue's architectures: {set(names) - ISSUE}"
    kinds = {n: kind(n) for n in names}
    assert set(kinds.values()) <= {"cnn", "transformer"}
    assert sum(k == "transformer" for k in kinds.values()) >= 3
    assert {kind(CHEAPEST["cnn"]), kind(CHEAPEST["transformer"])} == {"cnn", "transformer"}
    for n in names:
        shape = zoo_entry(n).input_shape
        assert shape[:2] == (1, 3) and shape[2] == shape[3] >= 224
    with pytest.raises(UsageError, match="no zoo model 'vgg16'.*resnet18"):
        zoo_model("vgg16")
    # importing the zoo (the registry) imports neither transformers nor torch
    code = ("import sys, latbench.zoo as z; z.list_zoo(); "
            "print(sorted(m for m in ('transformers', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def cnn():
    return zoo_model(CHEAPEST["cnn"])


@pytest.mark.parametrize("which", ["cnn", "transformer"])
def test_zoo_model_logits_and_deterministic(which, cnn):
    name = CHEAPEST[which]
    torch.manual_seed(1234)
    module, shape = cnn if which == "cnn" else zoo_model(name)
    again, shape2 = zoo_model(name)
    # the caller's RNG is left alone: the draw after building is the draw after seeding
    if which == "transformer":
        probe = torch.rand(3)
        torch.manual_seed(1234)
        assert torch.equal(probe, torch.rand(3))
    assert shape == shape2 == zoo_entry(name).input_shape == (1, 3, 224, 224)
    assert not module.training and not again.training
    a, b = module.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        y = module(torch.zeros(shape))
        y2 = again(torch.zeros(shape))
    assert type(y) is torch.Tensor and y.shape == (1, 1000)
    assert torch.isfinite(y).all() and torch.equal(y, y2)


def test_one_path_rule_on_a_zoo_cnn(cnn):
    pytest.importorskip("onnx", reason="lowering needs onnx")
    pytest.importorskip("onnxruntime", reason="the ort agent's fusion needs onnxruntime")
    from latbench.modelops import export_module, model_ops

    module, shape = cnn
    from_module = model_ops(module, shape, "ort")
    from_onnx = model_ops(export_module(module, shape), shape, "ort")
    assert from_module.ops, "the CNN lowers to no op"
    assert [o.key for o in from_module.ops] == [o.key for o in from_onnx.ops]
    assert [o.key for o in from_module.unique] == [o.key for o in from_onnx.unique]
    assert from_module.unmapped_counts() == from_onnx.unmapped_counts()
    assert from_module.free == from_onnx.free

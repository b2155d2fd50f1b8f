"""A model zoo for tests and benchmarks: well-known vision architectures built from their
`transformers` configs, with seeded random weights and no download.

    from latbench.zoo import list_zoo, zoo_model, kind
    module, input_shape = zoo_model("resnet18")  # an eval-mode torch module, (1, 3, 224, 224)
    logits = module(torch.zeros(input_shape))      # a plain (1, 1000) tensor

Each entry is configured like the published model it names (batch 1, the model's usual input
size: 224x224, 256x256 for MobileViT), with 1000 classes. Its forward takes one float tensor
(N, 3, H, W) and returns the logits tensor (not a ModelOutput), so it exports to ONNX with
`latbench.modelops.export_module` as is. The weights are drawn from a fixed seed inside the
builder (the caller's torch RNG is left as it was): building a model twice gives the same
weights. Latency does not depend on their values as long as activations stay normal floats:
batch norms are calibrated so they do (see `_calibrate_batch_norms`).

Every architecture the issue asked for built, ran and exported (TorchScript exporter, opset 17)
here with transformers 5.25 and torch 2.13 CPU, so none is left out. `transformers` is imported
only when a model is built (`pip install 'latbench[zoo]'`); `timm` is never used (it imports
torchvision, which does not load with the CPU torch here).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import UsageError, require

SEED = 0
NUM_LABELS = 1000
KINDS = ("cnn", "transformer")


@dataclass(frozen=True)
class ZooEntry:
    """One architecture: its kind, the transformers classes (`<arch>Config`,
    `<arch>ForImageClassification`), the config values that make it the published size, its
    input side, and the model it is configured like."""

    kind: str
    arch: str
    config: dict[str, Any] = field(default_factory=dict)
    size: int = 224
    like: str = ""

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, self.size, self.size)


_ZOO: dict[str, ZooEntry] = {
    # MobileNetV2Config's defaults are mobilenet_v2_1.0_224, TF "SAME" padding included
    "mobilenet_v2": ZooEntry("cnn", "MobileNetV2", {"depth_multiplier": 1.0, "image_size": 224},
                             like="google/mobilenet_v2_1.0_224"),
    # EfficientNetConfig's defaults are B7: B0 is width and depth 1.0 at 224 with a 1280-wide head
    "efficientnet_b0": ZooEntry("cnn", "EfficientNet",
                                {"width_coefficient": 1.0, "depth_coefficient": 1.0, "image_size": 224,
                                 "hidden_dim": 1280, "dropout_rate": 0.2}, like="google/efficientnet-b0"),
    "resnet18": ZooEntry("cnn", "ResNet", {"layer_type": "basic", "depths": [2, 2, 2, 2],
                                           "hidden_sizes": [64, 128, 256, 512], "embedding_size": 64,
                                           "downsample_in_first_stage": False}, like="microsoft/resnet-18"),
    # RegNetY-800MF (pycls): depths 1,3,8,2, widths 64,128,320,768, group width 16, squeeze-excite
    "regnet_y_800mf": ZooEntry("cnn", "RegNet", {"layer_type": "y", "depths": [1, 3, 8, 2],
                                                 "hidden_sizes": [64, 128, 320, 768], "groups_width": 16,
                                                 "embedding_size": 32}, like="facebook/regnet-y-800mf"),
    "convnext_atto": ZooEntry("cnn", "ConvNext", {"depths": [2, 2, 6, 2], "hidden_sizes": [40, 80, 160, 320],
                                                  "layer_norm_eps": 1e-6, "drop_path_rate": 0.0},
                              like="convnext_atto (timm; no transformers checkpoint)"),
    "vit_tiny": ZooEntry("transformer", "ViT", {"hidden_size": 192, "num_hidden_layers": 12,
                                                "num_attention_heads": 3, "intermediate_size": 768,
                                                "patch_size": 16, "image_size": 224},
                         like="vit_tiny_patch16_224 (timm)"),
    # DeiTForImageClassification keeps DeiT's distillation token beside the class token (198 tokens)
    "deit_tiny": ZooEntry("transformer", "DeiT", {"hidden_size": 192, "num_hidden_layers": 12,
                                                  "num_attention_heads": 3, "intermediate_size": 768,
                                                  "patch_size": 16, "image_size": 224},
                          like="facebook/deit-tiny-distilled-patch16-224 (one head)"),
    # MobileViT is published at 256x256 (its patches of 2 need sides divisible by 64)
    "mobilevit_xxs": ZooEntry("transformer", "MobileViT",
                              {"hidden_sizes": [64, 80, 96], "neck_hidden_sizes": [16, 16, 24, 48, 64, 80, 320],
                               "expand_ratio": 2.0, "num_attention_heads": 4, "mlp_ratio": 2.0, "image_size": 256},
                              size=256, like="apple/mobilevit-xx-small"),
    # SwinConfig's defaults are Swin-T (embed 96, depths 2,2,6,2, heads 3,6,12,24, window 7)
    "swin_tiny": ZooEntry("transformer", "Swin", {"embed_dim": 96, "depths": [2, 2, 6, 2],
                                                  "num_heads": [3, 6, 12, 24], "window_size": 7, "image_size": 224},
                          like="microsoft/swin-tiny-patch4-window7-224"),
    "levit_128s": ZooEntry("transformer", "Levit", {"hidden_sizes": [128, 256, 384], "num_attention_heads": [4, 6, 8],
                                                    "depths": [2, 3, 4], "key_dim": [16, 16, 16]},
                          like="facebook/levit-128S"),
}


def list_zoo() -> list[str]:
    """The zoo's model names, CNNs first, then transformers."""
    return list(_ZOO)


def zoo_entry(name: str) -> ZooEntry:
    """The registry entry of `name`; an unknown name is one UsageError listing the zoo."""
    try:
        return _ZOO[name]
    except KeyError:
        raise UsageError(f"no zoo model {name!r}; the zoo holds {', '.join(_ZOO)}") from None


def kind(name: str) -> str:
    """'cnn' or 'transformer' (a model with attention blocks, MobileViT's hybrid included)."""
    return zoo_entry(name).kind


def zoo_model(name: str, seed: int = SEED):
    """(module, input_shape): the architecture `name` built from its transformers config with
    weights drawn from `seed` (the caller's torch RNG untouched), in eval mode; its forward
    takes a float (N, 3, H, W) tensor and returns the logits tensor."""
    entry = zoo_entry(name)
    torch = require("torch", "torch")
    transformers = require("transformers", "zoo")
    config_cls = getattr(transformers, f"{entry.arch}Config")
    model_cls = getattr(transformers, f"{entry.arch}ForImageClassification")
    config = config_cls(num_labels=NUM_LABELS, **entry.config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    module = _logits_class(torch)(model, name).eval()
    _global_pool(torch, module)
    _calibrate_batch_norms(torch, module, entry.input_shape, seed)
    return module, entry.input_shape


def _global_pool(torch, module) -> None:
    """EfficientNet's pooler as the global average it is: transformers builds it as
    AvgPool2d(kernel_size=hidden_dim, ceil_mode=True), a 1280x1280 window on a 7x7 map (the same
    averages: torch's output moves by 4e-7), which litert-torch lowers literally into a PAD to
    1280x1280x1280 (8 GB) and a 1280x1280 AVERAGE_POOL_2D (850 ms a run)."""
    eff = getattr(module.model, "efficientnet", None)
    if eff is not None and isinstance(getattr(eff, "pooler", None), torch.nn.AvgPool2d):
        eff.pooler = torch.nn.AdaptiveAvgPool2d(1)


def _calibrate_batch_norms(torch, module, input_shape, seed: int) -> None:
    """Give every batch norm torch's default scale and shift (1, 0) and running statistics from
    one forward pass on seeded standard normals, as training would have set them. As built, the
    scales are drawn near 0.02 (EfficientNet) and the statistics are mean 0, var 1 on small
    random weights, so activations shrink layer by layer: in EfficientNet-B0 and MobileViT-XXS
    they reached float32 subnormals (below 1.2e-38), whose arithmetic is many times slower on
    x86 and would be timed as the model's latency. Calibrated, every BN output is O(1), as in a
    trained model."""
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    x = torch.randn((2, *input_shape[1:]), generator=torch.Generator().manual_seed(seed))
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_parameters()  # weight 1, bias 0, running statistics reset
        m.momentum = None  # a cumulative average: this one batch's statistics
        m.train()
    try:
        with torch.no_grad():
            module(x)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
            m.eval()


_LOGITS_CLASS = None


def _logits_class(torch):
    """The wrapper module (made once, when torch is first needed): forward(x) -> logits tensor."""
    global _LOGITS_CLASS
    if _LOGITS_CLASS is None:
        class ZooModel(torch.nn.Module):
            """A transformers image classifier whose forward returns the logits tensor."""

            def __init__(self, model, name: str):
                super().__init__()
                self.model = model
                self.zoo_name = name

            def forward(self, pixel_values):
                return self.model(pixel_values=pixel_values, return_dict=False)[0]

        _LOGITS_CLASS = ZooModel
    return _LOGITS_CLASS


__all__ = ["KINDS", "ZooEntry", "kind", "list_zoo", "zoo_entry", "zoo_model"]

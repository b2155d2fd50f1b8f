"""Supernets: dynamic layers against hand-built cases, weight sharing, export equivalence,
Convert, OFA/BigNAS training, checkpoints/resume, torchrun, and the digits end to end."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from latbench.spaces import get_space  # noqa: E402
from latbench.spaces.yaml_space import yaml_space_from_text  # noqa: E402
from latbench.supernet.layers import DynamicBatchNorm2d, DynamicConv2d, DynamicLinear  # noqa: E402
from latbench.supernet.model import SuperNet, position_task  # noqa: E402

SMALL_YAML = """\
name: sn-small
input: {channels: 2, resolutions: [12, 16]}
stem: {type: conv, out: [8, 16], kernel: 3, stride: 1, act: relu}
stages:
  - {block: mbconv, depth: [1, 2], out: 16, kernel: [3, 5, 7], expand: [1, 2, 3], stride: 2, act: hswish, se: true, elastic: block}
head:
  - {type: pool}
  - {type: linear, out: 5}
"""


def randomize(net: "nn.Module", seed: int = 0) -> None:
    """Random values in every parameter and BN buffer (transform matrices, BN stats included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "transform" in name:
                p.copy_(torch.eye(p.shape[0]) + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.1) + (1.0 if name.endswith("bn.weight") else 0.0))
        for name, b in net.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))


# ---------------------------------------------------------------------- dynamic layers by hand
def test_kernel_transform_matches_hand_computation():
    torch.manual_seed(0)
    conv = DynamicConv2d(4, 4, (3, 5, 7), depthwise=True, transform=True)
    m75 = torch.randn(25, 25)
    m53 = torch.randn(9, 9)
    with torch.no_grad():
        conv.transform_7to5.copy_(m75)
        conv.transform_5to3.copy_(m53)
    w = conv.weight.detach().numpy()  # (4, 1, 7, 7)
    # by hand: centre 5x5, x @ M75^T per channel, then centre 3x3 of that, x @ M53^T
    five = np.stack([(w[c, 0, 1:6, 1:6].reshape(25) @ m75.numpy().T).reshape(5, 5) for c in range(4)])
    three = np.stack([(five[c, 1:4, 1:4].reshape(9) @ m53.numpy().T).reshape(3, 3) for c in range(4)])
    np.testing.assert_allclose(conv.active_weight(4, 4, 5).detach().numpy()[:, 0], five, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(conv.active_weight(4, 4, 3).detach().numpy()[:, 0], three, rtol=1e-5, atol=1e-5)
    assert torch.equal(conv.active_weight(4, 4, 7), conv.weight)
    # the matrices are shared by all channels and learn from a k=3 subnet's loss
    x = torch.randn(2, 3, 9, 9)
    conv(x, k=3).sum().backward()
    assert conv.transform_5to3.grad is not None and conv.transform_7to5.grad.abs().sum() > 0
    assert conv.weight.grad[3:].abs().sum() == 0 and conv.weight.grad[:3].abs().sum() > 0


def test_identity_transform_is_centre_crop_and_crop_mode():
    conv = DynamicConv2d(3, 3, (3, 5, 7), depthwise=True, transform=True)
    crop = DynamicConv2d(3, 3, (3, 5, 7), depthwise=True, transform=False)
    with torch.no_grad():
        crop.weight.copy_(conv.weight)
    for k in (3, 5):
        s = slice((7 - k) // 2, (7 - k) // 2 + k)
        assert torch.allclose(conv.active_weight(3, 3, k), conv.weight[:, :, s, s])
        assert torch.equal(crop.active_weight(3, 3, k), conv.weight[:, :, s, s])
    assert not hasattr(crop, "transform_7to5")


def test_elastic_width_conv_linear_bn_by_hand():
    torch.manual_seed(1)
    conv = DynamicConv2d(6, 8, (3,), bias=True)
    x = torch.randn(2, 4, 5, 5)
    ref = nn.Conv2d(4, 5, 3, padding=1)
    with torch.no_grad():
        ref.weight.copy_(conv.weight[:5, :4])
        ref.bias.copy_(conv.bias[:5])
    assert torch.allclose(conv(x, 5), ref(x), atol=1e-6)
    fc = DynamicLinear(10, 7)
    v = torch.randn(3, 6)
    assert torch.allclose(fc(v, 4), v @ fc.weight[:4, :6].T + fc.bias[:4], atol=1e-6)
    bn = DynamicBatchNorm2d(8)
    bn.train()
    y = bn(torch.randn(16, 3, 4, 4) * 2 + 1)
    assert y.shape == (16, 3, 4, 4)
    assert (bn.running_mean[:3] != 0).all() and (bn.running_mean[3:] == 0).all()  # only the slice moved
    assert (bn.running_var[3:] == 1).all()


def test_calib_bn_sets_plain_average_of_batch_statistics():
    from latbench.supernet.evaluator import calibrating

    bn = DynamicBatchNorm2d(6)
    batches = [torch.randn(8, 4, 3, 3) * (i + 1) + i for i in range(3)]
    with torch.no_grad(), calibrating(bn):
        for b in batches:
            bn(b)
    mean = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    var = torch.stack([b.var(dim=(0, 2, 3), unbiased=True) for b in batches]).mean(0)
    assert torch.allclose(bn.running_mean[:4], mean, atol=1e-5)
    assert torch.allclose(bn.running_var[:4], var, atol=1e-4)
    assert (bn.running_mean[4:] == 0).all() and bn.calib_seen == -1


def test_elastic_depth_skips_blocks_by_hand():
    space = yaml_space_from_text(SMALL_YAML)
    net = SuperNet(space).eval()
    randomize(net)
    cfg = {"r": 16, "stem.out": 16, "s0.depth": 1, "s0.b0.kernel": 5, "s0.b0.expand": 2,
           "s0.b1.kernel": 3, "s0.b1.expand": 3}
    net.set_active(cfg)
    ops = net.active
    assert [o.kind for o in ops] == ["conv", "mbconv", "pool", "linear"]
    x = torch.randn(2, 2, 16, 16)
    with torch.no_grad():
        y1 = net(x)
        # by hand: stem, block 0, pool, linear; block 1 is never run
        h = x
        for idx, op in net._active:
            h = net.blocks[idx](h, op)
        assert torch.equal(h, y1)
        b1 = net._index[(3, 0)]  # slot s0.b1 (input, stem, s0.b0, s0.b1, ...)
        net.blocks[b1].project.conv.weight.add_(1.0)
        assert torch.equal(net(x), y1)  # depth 1 does not see block 1's weights
        net.set_active({**cfg, "s0.depth": 2})
        assert len(net.active) == 5 and net.active[2].kind == "mbconv"
        y2 = net(x)
        net.blocks[b1].project.conv.weight.sub_(1.0)
        assert not torch.allclose(net(x), y2)


def test_position_tasks():
    sp = get_space("ofa-mbv3-w10")
    tasks = {position_task(sp, i) for i in range(sp.n_positions)}
    assert tasks == {"kernel_size", "width", "depth", "resolution"}
    tiny = get_space("tiny")
    assert position_task(tiny, 0) == "resolution"
    assert position_task(tiny, 1) == "depth" and position_task(tiny, 2) == "kernel_size"


# ---------------------------------------------------------------------- weight sharing and export
def test_weight_sharing_is_real():
    space = get_space("tiny")
    net = SuperNet(space).eval()
    randomize(net, 3)
    rng = np.random.default_rng(0)
    configs = list(space.sample(rng, 4)) + [space.smallest(), space.largest()]
    x = torch.randn(2, 1, 32, 32)
    before = []
    with torch.no_grad():
        for c in configs:
            net.set_active(c)
            before.append(net(x[..., :net.resolution, :net.resolution]))
        stem = net.blocks[net._active[0][0]].body.conv.weight
        stem[0, 0, 1, 1] += 1.0  # a weight every subnet's first conv uses
        for c, b in zip(configs, before):
            net.set_active(c)
            xi = x[..., :net.resolution, :net.resolution]
            assert not torch.allclose(net(xi), b)
            assert torch.equal(net.export_module(c)(xi), net(xi))
    # a gradient from the smallest subnet reaches the shared weight that the largest uses
    net.train()
    net.set_active(space.smallest())
    net(x[..., :24, :24]).sum().backward()
    assert stem.grad[0].abs().sum() > 0


@pytest.mark.parametrize("name,res,n", [("tiny", None, 4), ("ofa-mbv3-w10", 128, 3), ("bignas-resnet", 192, 3)])
def test_exported_subnet_matches_supernet(name, res, n):
    space = get_space(name)
    torch.manual_seed(0)
    net = SuperNet(space).eval()
    randomize(net, 1)
    rng = np.random.default_rng(1)
    configs = list(space.sample(rng, n)) + [space.smallest()]
    for cfg in configs:
        if res is not None:
            cfg[space.resolution_position] = space.positions[space.resolution_position].choices.index(res)
        net.set_active(cfg)
        x = torch.randn(*net.input_shape(1))
        sub = net.export_module(cfg)
        from latbench.spaces.torch_build import ConvBNAct  # the exported net is made of these modules

        assert type(sub) is nn.Sequential and isinstance(sub[0], ConvBNAct)
        with torch.no_grad():
            diff = (net(x) - sub(x)).abs().max().item()
        assert diff < 1e-5, (name, diff)
        # the copy is standalone: changing the supernet afterwards leaves it alone
        assert all(p.data_ptr() not in {q.data_ptr() for q in net.parameters()} for p in sub.parameters())


# ---------------------------------------------------------------------- Convert
def _plain_model():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def test_convert_keeps_original_function_and_exports():
    from latbench.supernet import OFA, Convert, supernet

    torch.manual_seed(0)
    model = _plain_model()
    randomize(model, 5)
    model.eval()
    orig = copy.deepcopy(model)
    x = torch.randn(2, 3, 16, 16)
    sp = Convert(supernet(kernel_size=[3, 5, 7], expand_ratio=[1, 2, 4])).convert(model)
    assert sp is model and type(sp[0]).__name__ == "SuperConv2d" and type(sp[9]).__name__ == "SuperLinear"
    assert sp[0].conv.weight.shape == (32, 3, 7, 7)  # out x4, first layer keeps its input
    assert sp[9].fc.weight.shape == (10, 64)  # last layer keeps its output
    assert "expand_ratio" not in sp[3].candidate_config  # depthwise width follows its input
    ofa = OFA(sp)
    assert ofa.elastic_order == ["kernel_size", "width"]
    sp.eval()
    for k in (3, 5, 7):  # the original 3x3 sits in the centre of the 7x7, zero around it
        ofa.set_net_config({"0": {"kernel_size": k, "expand_ratio": 1}, "3": {"kernel_size": 3},
                            "6": {"expand_ratio": 1}})
        assert torch.allclose(ofa(x)[0], orig(x), atol=1e-5)
    cfg = {"0": {"kernel_size": 5, "expand_ratio": 2}, "3": {"kernel_size": 3}, "6": {"expand_ratio": 4}}
    ofa.set_net_config(cfg)
    y = ofa(x)[0]
    sub = ofa.export(None, cfg, [[2, 3, 16, 16]], ["float32"])
    assert isinstance(sub[0], nn.Conv2d) and sub[0].weight.shape == (16, 3, 5, 5)
    assert sub[6].weight.shape == (64, 16, 1, 1)
    assert (sub(x) - y).abs().max().item() < 1e-5
    # into the original architecture (layers replaced by the subnet's sizes)
    sub2 = ofa.export(_plain_model(), cfg, [[1, 3, 16, 16]], ["float32"])
    assert (sub2(x) - y).abs().max().item() < 1e-5

"""Width ties through residual adds in Convert (PaddleSlim's shortcut analysis) and the guarantee
that YAML spaces never produce a residual add whose two sides differ in width."""
from __future__ import annotations

import glob
import os
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from latbench.errors import ConfigError  # noqa: E402
from latbench.supernet import OFA, Convert, supernet  # noqa: E402
from latbench.supernet.convert import set_converted_config, tied_net_config  # noqa: E402

RATIOS = [0.25, 0.5, 1.0]
HERE = os.path.dirname(__file__)


class Block(nn.Module):
    """relu(bn(conv2(relu(bn(conv1(x))))) + x): conv2's width meets the skip's."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        y += x  # in place, as torchvision writes it
        return torch.relu(y)


class ProjBlock(nn.Module):
    """The main path plus a 1x1 projection shortcut (stride 2): both sides' widths are elastic."""

    def __init__(self, c, out):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, out, 3, 2, 1, bias=False), nn.BatchNorm2d(out)
        self.dw, self.bn_dw = nn.Conv2d(out, out, 3, padding=1, groups=out, bias=False), nn.BatchNorm2d(out)
        self.conv2, self.bn2 = nn.Conv2d(out, out, 1, bias=False), nn.BatchNorm2d(out)
        self.short, self.bn_s = nn.Conv2d(c, out, 1, 2, bias=False), nn.BatchNorm2d(out)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(F.relu(self.bn_dw(self.dw(y)))))
        return F.relu(torch.add(y, self.bn_s(self.short(x))))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.b1, self.b2 = Block(8), Block(8)
        self.proj = ProjBlock(8, 16)
        self.b3 = Block(16)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        return self.head(self.b3(self.proj(self.b2(self.b1(x)))))


EXPECTED = [("stem", "b1.conv2", "b2.conv2"), ("proj.conv2", "proj.short", "b3.conv2")]


def _converted(seed=0):
    torch.manual_seed(seed)
    model = Net()
    for m in model.modules():  # BN with non-trivial statistics, so exports are really compared
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    conv = Convert(supernet(expand_ratio=RATIOS))
    sp = conv.convert(model)
    return conv, sp


def _untie(sp):
    """Undo the ties: every layer back to its own independent expand ratio."""
    for m in sp.modules():
        if getattr(m, "tie", None) is not None:
            m.tie = None
            m.candidate_config["expand_ratio"] = list(RATIOS)


def _run_samples(sp, n=100):
    """Forward the largest, smallest and n random subnets OFA samples; the failures."""
    ofa = OFA(sp)
    sp.eval()
    x = torch.randn(1, 3, 8, 8)
    cfgs = [ofa.sample_config("largest"), ofa.sample_config("smallest")]
    cfgs += [ofa.sample_config("random", ["width"]) for _ in range(n)]
    failures = 0
    with torch.no_grad():
        for cfg in cfgs:
            ofa.dims.apply(cfg)
            try:
                assert sp(x).shape == (1, 10)
            except RuntimeError:
                failures += 1
    return ofa, failures


def test_ties_found_and_every_sampled_subnet_runs():
    conv, sp = _converted()
    assert conv.ties == EXPECTED and sp.width_ties == EXPECTED
    assert conv.fixed_width == []
    # one expand_ratio dimension per group (its leader) plus the untied layers
    ofa = OFA(sp)
    width_dims = sorted(n for n in ofa.dims.names if n.endswith("expand_ratio"))
    assert width_dims == sorted(["stem.expand_ratio", "b1.conv1.expand_ratio", "b2.conv1.expand_ratio",
                                 "proj.conv1.expand_ratio", "proj.conv2.expand_ratio", "b3.conv1.expand_ratio"])
    _, failures = _run_samples(sp)
    assert failures == 0
    # the tie is what makes it work: the same model untied breaks in some sampled subnets
    _untie(sp)
    _, failures = _run_samples(sp)
    assert failures > 0


def test_tied_layers_share_the_sampled_ratio():
    _, sp = _converted()
    ofa = OFA(sp)
    x = torch.randn(1, 3, 8, 8)
    for _ in range(10):
        ofa.dims.apply(ofa.sample_config("random", ["width"]))
        sp(x)
        for group in EXPECTED:
            widths = {sp.get_submodule(n).out_width(0) for n in group}
            assert len(widths) == 1, (group, widths)


def test_conflicting_config_on_tied_layers_is_a_config_error():
    _, sp = _converted()
    with pytest.raises(ConfigError, match=r"'b1\.conv2'.*'b2\.conv2'|'b2\.conv2'.*'b1\.conv2'"):
        set_converted_config(sp, {"b1.conv2": {"expand_ratio": 0.25}, "b2.conv2": {"expand_ratio": 0.5}})
    # the same ratio anywhere in the group is fine, and a follower's ratio drives the group
    set_converted_config(sp, {"b2.conv2": {"expand_ratio": 0.25}, "b3.conv2": {"expand_ratio": 0.5}})
    assert tied_net_config(sp, {"b2.conv2": {"expand_ratio": 0.25}})["stem"] == {"expand_ratio": 0.25}
    sp(torch.randn(1, 3, 8, 8))
    assert [sp.get_submodule(n).out_width(0) for n in ("stem", "b1.conv2", "b2.conv2")] == [2, 2, 2]
    assert [sp.get_submodule(n).out_width(0) for n in ("proj.conv2", "proj.short", "b3.conv2")] == [8, 8, 8]
    # a follower's own active ratio that disagrees with its leader is caught at run time
    sp.get_submodule("b1.conv2").active["expand_ratio"] = 1.0
    with pytest.raises(ConfigError, match=r"'stem'.*'b1\.conv2'"):
        sp(torch.randn(1, 3, 8, 8))


def test_exported_tied_subnet_matches_supernet():
    _, sp = _converted()
    ofa = OFA(sp)
    ofa.rng = np.random.default_rng(3)
    x = torch.randn(2, 3, 8, 8)
    for _ in range(3):
        cfg = ofa.sample_config("random", ["width"])
        sub = ofa.export(None, cfg, [[1, 3, 8, 8]], ["float32"])
        ofa.dims.apply(cfg)
        sp.eval()
        with torch.no_grad():
            y = sp(x)
            assert (sub(x) - y).abs().max().item() < 1e-5
        assert isinstance(sub.stem, nn.Conv2d)
        assert sub.stem.out_channels == sub.b1.conv2.out_channels == sub.b2.conv2.out_channels
        assert sub.proj.conv2.out_channels == sub.proj.short.out_channels == sub.b3.conv2.out_channels


class InputSkip(nn.Module):
    """A block whose output adds to the network input (fixed width) and an SE-like multiply."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 3, 1)
        self.c = nn.Conv2d(3, 8, 1)
        self.se1, self.se2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = x + self.b(F.relu(self.a(x)))
        y = F.relu(self.c(x))
        y = y * torch.sigmoid(self.se2(F.relu(self.se1(y.mean((2, 3), keepdim=True)))))
        return self.fc(y.mean((2, 3)))


def test_skip_from_the_network_input_is_fixed_width_and_mul_ties():
    torch.manual_seed(0)
    conv = Convert(supernet(expand_ratio=[1, 2, 4]))
    sp = conv.convert(InputSkip())
    assert conv.fixed_width == ["b"] and conv.ties == [("c", "se2")]
    assert "expand_ratio" not in sp.b.candidate_config and sp.b.conv.weight.shape[0] == 3
    _, failures = _run_samples_generic(sp, (1, 3, 8, 8), 30)
    assert failures == 0
    with pytest.raises(ConfigError, match="'b'"):
        tied_net_config(sp, {"b": {"expand_ratio": 2}})


def _run_samples_generic(sp, shape, n):
    ofa = OFA(sp)
    x = torch.randn(*shape)
    failures = 0
    for cfg in [ofa.sample_config("smallest")] + [ofa.sample_config("random", ["width"]) for _ in range(n)]:
        ofa.dims.apply(cfg)
        try:
            sp(x)
        except RuntimeError:
            failures += 1
    return ofa, failures


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.a(x)
        if y.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            y = y + self.b(y)
        return y


def test_untraceable_model_warns_and_has_no_ties():
    conv = Convert(supernet(expand_ratio=RATIOS))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sp = conv.convert(Untraceable())
    msgs = [str(w.message) for w in caught]
    assert any("torch.fx cannot trace Untraceable" in m and "no width ties" in m for m in msgs), msgs
    assert conv.ties == [] and sp.width_ties == []
    assert "expand_ratio" in sp.a.candidate_config


# ---------------------------------------------------------------------- YAML spaces
def _yaml_spaces():
    from latbench.spaces import get_space
    from latbench.spaces.yaml_space import load_yaml_space

    spaces = [(os.path.basename(p), load_yaml_space(p)) for p in sorted(glob.glob(os.path.join(HERE, "data", "*.yaml")))]
    return spaces + [(n, get_space(n)) for n in ("tiny", "bignas-resnet")]


@pytest.mark.parametrize("name,space", _yaml_spaces(), ids=lambda v: v if isinstance(v, str) else "")
def test_yaml_space_residual_adds_always_line_up(name, space):
    """A YAML space cannot produce a residual add of two widths: mbconv adds the identity only when
    stride 1 and c_in == out, ResNet blocks project the shortcut when the shape changes. Every
    sampled subnet's residual blocks keep their shape (or project), and builds and runs."""
    from latbench.supernet.model import SuperNet

    rng = np.random.default_rng(0)
    configs = [space.smallest(), space.largest()] + list(space.sample(rng, 50))
    rpos = getattr(space, "resolution_position", None)
    residual = 0
    for cfg in configs:
        if rpos is not None:
            cfg[rpos] = 0  # the smallest resolution: the check is about widths
        for op in space.blocks(cfg):
            if getattr(op, "residual", False):
                residual += 1
                assert op.in_shape == op.out_shape or getattr(op, "proj", False), (name, op)
    assert residual > 0, name
    net = SuperNet(space).eval()
    run = 12 if name == "bignas-resnet" else len(configs)  # its forwards cost ~0.15 s each
    for i, cfg in enumerate(configs[:run]):
        net.set_active(cfg)
        x = torch.randn(*net.input_shape(1))
        with torch.no_grad():
            assert torch.isfinite(net(x)).all(), (name, cfg)
            if i < 4:  # the static build too (random weights)
                space.build(cfg).eval()(x)


def test_ofa_set_net_config_and_skip_layers_follow_the_ties():
    """OFA's PaddleSlim-form config reaches a group through any of its layers, conflicting ratios
    are refused there too, and skip_layers on a follower keeps the whole group at full width."""
    from latbench.supernet import RunConfig

    _, sp = _converted()
    lead, follower = EXPECTED[0][0], EXPECTED[0][1]
    ofa = OFA(sp)
    ofa.set_net_config({follower: {"expand_ratio": 0.5}})
    sp.eval()
    with torch.no_grad():
        ofa(torch.randn(1, 3, 8, 8))
    assert {sp.get_submodule(n)._ratio() for n in EXPECTED[0]} == {0.5}
    ofa.set_net_config({lead: {"expand_ratio": 0.25}, follower: {"expand_ratio": 1.0}})
    with pytest.raises(ConfigError, match="'stem' and 'b1.conv2' are tied"), torch.no_grad():
        ofa(torch.randn(1, 3, 8, 8))
    skipping = OFA(sp, RunConfig(skip_layers=[follower]))
    assert skipping.dims.names.index(f"{lead}.expand_ratio") in skipping.skipped

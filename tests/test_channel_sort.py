"""Once-for-All's channel importance sorting (re_organize_middle_weights) on latbench supernets:
a symmetry of the full-width net, "first k" = the k most important channels afterwards, and the
call at the start of every elastic-width phase of progressive shrinking."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from latbench.spaces import get_space  # noqa: E402
from latbench.spaces.yaml_space import yaml_space_from_text  # noqa: E402
from latbench.supernet.blocks import MBConvBlock, ResBlockDyn  # noqa: E402
from latbench.supernet.model import SuperNet  # noqa: E402
from test_supernet import NANO_YAML, randomize  # noqa: E402  (the supernet tests' space and weights)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: small nets, one thread

# bottleneck (elastic expand and out) and basic blocks (elastic out): inner widths of ResNets
RES_YAML = """\
name: cs-res
input: {channels: 3, resolutions: [16]}
stem: {type: conv, out: 16, kernel: 3, stride: 1, act: relu}
stages:
  - {block: bottleneck, depth: [1, 2], out: [16, 24], kernel: 3, expand: [0.5, 1.0], stride: 1, act: relu}
  - {block: basic, depth: [1, 2], out: [16, 32], kernel: [3, 5], stride: 2, act: relu}
head:
  - {type: pool}
  - {type: linear, out: 5}
"""

# NANO of test_supernet with three expand ratios: two elastic-width phases
NANO3_YAML = NANO_YAML.replace("name: sn-nano", "name: cs-nano3").replace("expand: [2, 4]", "expand: [2, 3, 4]")
assert NANO3_YAML.count("expand: [2, 3, 4]") == 2


def _space(name):
    return yaml_space_from_text(RES_YAML) if name == "res-yaml" else get_space(name)


def _configs(net, res, n, rng, full_width: bool):
    space = net.space
    cfgs = list(space.sample(rng, n)) + [space.largest() if full_width else space.smallest()]
    for cfg in cfgs:
        if res is not None:
            cfg[space.resolution_position] = space.positions[space.resolution_position].choices.index(res)
        for i, t in enumerate(net.tasks):
            if full_width and t == "width":
                cfg[i] = space.cardinalities[i] - 1
    return cfgs


def _out(net, cfg, x=None):
    net.set_active(cfg)
    if x is None:
        x = torch.randn(*net.input_shape(1), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        return net(x), x


def _in_importance(conv):
    return conv.weight.detach().abs().sum(dim=(0, 2, 3))


def _top(importance, k):
    return torch.topk(importance, k).indices  # random weights: no ties


def topk_subnet(net, cfg):
    """`space.build(cfg)` (float64) with the weights of the UNSORTED supernet where every elastic inner width
    takes the k most important channels, selected by index (not first k): the reference that the
    sorted supernet's first-k subnet must equal."""
    sub = net.export_module(cfg).double()  # export copies into float32 modules: copy again in float64
    with torch.no_grad():
        for module, (i, op) in zip(sub, net.active_ops(cfg)):
            b, new = net.blocks[i], {}
            if isinstance(b, MBConvBlock) and b.sortable:
                top = _top(_in_importance(b.project.conv), op.mid)
                new["expand.conv.weight"] = b.expand.conv.weight[top, :op.c]
                dw = b.depthwise.conv.active_weight(b.depthwise.conv.max_in, b.depthwise.conv.max_out, op.kernel)
                new["depthwise.conv.weight"] = dw[top]
                for f in ("weight", "bias", "running_mean", "running_var"):
                    new[f"expand.bn.{f}"] = getattr(b.expand.bn, f)[top]
                    new[f"depthwise.bn.{f}"] = getattr(b.depthwise.bn, f)[top]
                new["project.conv.weight"] = b.project.conv.weight[:op.out][:, top]
                if op.se:
                    assert op.se_pos == "dw"
                    htop = _top(_in_importance(b.se.expand), op.se)
                    new["se.reduce.weight"] = b.se.reduce.weight[htop][:, top]
                    new["se.reduce.bias"] = b.se.reduce.bias[htop]
                    new["se.expand.weight"] = b.se.expand.weight[top][:, htop]
                    new["se.expand.bias"] = b.se.expand.bias[top]
            elif isinstance(b, ResBlockDyn):
                convs = [m.conv for m in b.body]
                ks = [op.kernel if m.max_k > 1 else 1 for m in convs]
                full = [m.active_weight(m.max_in, m.max_out, k) for m, k in zip(convs, ks)]
                if b.kind == "bottleneck":
                    t1 = _top(_in_importance(convs[1]), op.mid)  # first mid width, by the kxk conv
                    t2 = _top(_in_importance(convs[2]), op.mid)  # second, by the last 1x1 conv
                    new["body.0.conv.weight"] = full[0][t1, :op.c]
                    new["body.1.conv.weight"] = full[1][t2][:, t1]
                    new["body.2.conv.weight"] = full[2][:op.out][:, t2]
                    bns = [(b.body[0].bn, t1, "body.0.bn"), (b.body[1].bn, t2, "body.1.bn")]
                else:
                    t1 = _top(_in_importance(convs[1]), op.out)
                    new["body.0.conv.weight"] = full[0][t1, :op.c]
                    new["body.1.conv.weight"] = full[1][:op.out][:, t1]
                    bns = [(b.body[0].bn, t1, "body.0.bn")]
                for bn, t, prefix in bns:
                    for f in ("weight", "bias", "running_mean", "running_var"):
                        new[f"{prefix}.{f}"] = getattr(bn, f)[t]
            state = {k: v.clone() for k, v in b.export_state(op).items()}
            if state:
                assert set(new) <= set(state), set(new) - set(state)
                for k, v in new.items():
                    assert state[k].shape == v.shape, (k, state[k].shape, v.shape)
                state.update({k: v.clone() for k, v in new.items()})
                module.load_state_dict(state, strict=True)
    return sub


# (space, resolution, random configs besides the largest / smallest): ofa-mbv3-w10 costs ~0.3 s a pass
CASES = [("tiny", None, 3), ("ofa-mbv3-w10", 128, 1), ("res-yaml", None, 3)]


@pytest.mark.parametrize("name,res,n", CASES)
def test_sorting_is_a_symmetry_of_the_full_width_net(name, res, n):
    torch.manual_seed(0)
    net = SuperNet(_space(name)).double().eval()  # float64: a permuted sum is rounded differently
    randomize(net, 1, fan_in_gain=1.5)
    rng = np.random.default_rng(1)
    full_cfgs = _configs(net, res, n, rng, full_width=True)
    small_cfgs = _configs(net, res, 0, rng, full_width=False)
    before = [_out(net, c) for c in full_cfgs + small_cfgs]
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    assert net.sort_channels() > 0 and len(net.channel_sort_log) == 1
    for cfg, (y, x) in zip(full_cfgs, before):
        diff = (_out(net, cfg, x)[0] - y).abs().max().item()
        assert diff < 1e-5, (name, diff)
    # ...and a real permutation: weights moved, and a narrower subnet computes something else
    assert any(not torch.equal(weights[k], v) for k, v in net.state_dict().items())
    for cfg, (y, x) in zip(small_cfgs, before[len(full_cfgs):]):
        assert (_out(net, cfg, x)[0] - y).abs().max().item() > 1e-4


@pytest.mark.parametrize("name,res,n", CASES)
def test_first_k_after_sorting_are_the_top_k_channels(name, res, n):
    torch.manual_seed(0)
    net = SuperNet(_space(name)).double().eval()
    randomize(net, 2, fan_in_gain=1.5)
    rng = np.random.default_rng(2)
    cfgs = _configs(net, res, n, rng, full_width=False)
    refs = [topk_subnet(net, c) for c in cfgs]
    unsorted = [_out(net, c) for c in cfgs]
    net.sort_channels()
    for b in net.blocks:  # importance of the kept channels is descending
        if isinstance(b, MBConvBlock) and b.sortable:
            imps = [_in_importance(b.project.conv)] + ([_in_importance(b.se.expand)] if b.se is not None else [])
        elif isinstance(b, ResBlockDyn):
            imps = [_in_importance(m.conv) for m in b.body[1:]]
        else:
            continue
        for imp in imps:
            assert bool((imp[:-1] >= imp[1:]).all())
    moved = 0.0
    for cfg, ref, (y0, x) in zip(cfgs, refs, unsorted):
        y = _out(net, cfg, x)[0]
        with torch.no_grad():
            r = ref(x)
        diff = (y - r.flatten(1) if r.dim() == 4 else y - r).abs().max().item()
        assert diff < 1e-5, (name, diff)
        moved = max(moved, (y - y0).abs().max().item())
    assert moved > 1e-4  # the reference is not simply the unsorted first-k subnet


def test_later_width_stages_sort_within_trained_widths():
    """expand_ratio_stage s > 0: channels stay inside the widths already trained (OFA's buckets),
    sorted within each; still a symmetry of the full-width net."""
    torch.manual_seed(0)
    net = SuperNet(get_space("ofa-mbv3-w10")).double().eval()
    randomize(net, 3, fan_in_gain=1.5)
    block = next(b for b in net.blocks if isinstance(b, MBConvBlock) and b.sortable and len(b.mid_widths) == 3)
    w0, w1, w2 = block.mid_widths
    cfg = _configs(net, 128, 0, np.random.default_rng(0), full_width=True)[0]
    y, x = _out(net, cfg)
    idx = block.sort_channels(1)
    assert sorted(idx[:w1].tolist()) == list(range(w1)) and sorted(idx[w1:].tolist()) == list(range(w1, w0))
    imp = _in_importance(block.project.conv)
    assert bool((imp[:w1 - 1] >= imp[1:w1]).all()) and bool((imp[w1:-1] >= imp[w1 + 1:]).all())
    assert not bool((imp[:-1] >= imp[1:]).all())  # not one global sort
    idx = block.sort_channels(2)  # buckets [0, w2), [w2, w1), [w1, w0)
    assert sorted(idx[:w2].tolist()) == list(range(w2)) and sorted(idx[w1:].tolist()) == list(range(w1, w0))
    assert (_out(net, cfg, x)[0] - y).abs().max().item() < 1e-5


def test_optimizer_state_follows_the_channels():
    torch.manual_seed(0)
    net = SuperNet(yaml_space_from_text(NANO3_YAML))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(2, 1, 12, 12)).square().mean().backward()
    opt.step()
    b = next(b for b in net.blocks if isinstance(b, MBConvBlock) and b.sortable and b.se is not None)
    w, buf = b.project.conv.weight.detach().clone(), opt.state[b.project.conv.weight]["momentum_buffer"].clone()
    dw_buf = opt.state[b.depthwise.conv.weight]["momentum_buffer"].clone()
    imp = _in_importance(b.project.conv)
    net.sort_channels(optimizer=opt)
    idx = torch.sort(imp, descending=True, stable=True).indices
    assert not torch.equal(idx, torch.arange(len(idx)))
    assert torch.equal(b.project.conv.weight.detach(), w[:, idx])
    assert torch.equal(opt.state[b.project.conv.weight]["momentum_buffer"], buf[:, idx])
    assert torch.equal(opt.state[b.depthwise.conv.weight]["momentum_buffer"], dw_buf[idx])


def test_progressive_shrinking_sorts_at_the_start_of_each_width_phase():
    """Driven as latbench's trainer drives it (a fresh OFA per epoch, set_epoch), and with the
    epoch counted from iterations (one OFA, PaddleSlim's total_images / train_batch_size)."""
    from latbench.supernet.ofa import OFA, RunConfig
    from latbench.supernet.shrinking import ofa_step, plan_epochs, stage_of

    net = SuperNet(yaml_space_from_text(NANO3_YAML))
    probe = OFA(net)
    assert probe.elastic_order == ["kernel_size", "depth", "width"]
    full, n_epochs = plan_epochs(probe, 6)
    assert full == 1 and n_epochs == [[0], [1, 2], [3, 4]]
    x, y = torch.randn(4, 1, 12, 12), torch.randint(0, 10, (4,))
    stages = []
    for epoch in range(6):
        stage = stage_of(epoch, full, n_epochs, probe.elastic_order)
        stages.append((stage.name, stage.phase))
        ofa = OFA(net, RunConfig(n_epochs=n_epochs), train_full=stage.name == "full")
        ofa.set_epoch(max(0, epoch - full))
        for _ in range(2):
            ofa_step(ofa, x, y, 2)
    assert stages[-2:] == [("width", 0), ("width", 1)]
    assert [(e["phase"], e["epoch"], e["expand_ratio_stage"]) for e in net.channel_sort_log] == [(0, 3, 0), (1, 4, 1)]
    assert all(e["task"] == "width" and e["blocks"] == 5 for e in net.channel_sort_log)

    net2 = SuperNet(yaml_space_from_text(NANO3_YAML))
    ofa = OFA(net2, RunConfig(n_epochs=[[0], [1, 2], [3, 4, 5]], total_images=8, train_batch_size=4))
    for _ in range(6 * 2):  # 2 steps per epoch, epochs 0..5
        ofa(x)
    assert [(e["phase"], e["epoch"]) for e in net2.channel_sort_log] == [(0, 3), (1, 4), (2, 5)]
    ofa.set_task("width", 1)  # set_task entering a phase sorts once at its first forward
    ofa(x), ofa(x)
    assert [(e["phase"], e["key"][0]) for e in net2.channel_sort_log[3:]] == [(1, "set_task")]


def test_trainer_sorts_once_per_width_phase(tmp_path, monkeypatch):
    """latbench supernet train --strategy ofa: one sort at the start of each width phase."""
    from latbench.supernet.train import TrainSettings, train_supernet

    calls = []
    orig = SuperNet.sort_channels

    def counting(self, *a, **kw):
        calls.append(kw.get("epoch"))
        return orig(self, *a, **kw)

    monkeypatch.setattr(SuperNet, "sort_channels", counting)
    path = tmp_path / "cs-nano3.yaml"
    path.write_text(NANO3_YAML)
    result = train_supernet(TrainSettings(space=str(path), data="digits", strategy="ofa", epochs=6, batch_size=16,
                                          max_train_images=32, eval_every=0, final_eval=False, threads=1,
                                          out=str(tmp_path / "sn.pt")))
    assert [(h["name"], h["phase"]) for h in result.history][-2:] == [("width", 0), ("width", 1)]
    assert calls == [3, 4]  # shrinking epochs (after the full net) of the two width phases

"""The lightnas space as PaddleSlim writes it: `enumerate lightnas` lists PaddleSlim's own op lines
(derived here by hand from its LightNAS `get_all_ops` rule), a table profiled from that list prices
every subnet with no fallback, and the classifier's learned bias survives in the supernet."""
from __future__ import annotations

import re

import numpy as np
import pytest

from latbench import ops as O
from latbench.device import DeviceProfile
from latbench.formats import read_ops
from latbench.measure import Measurement, Stats
from latbench.predict import Predictor
from latbench.spaces import get_space
from latbench.store import LatencyTable
from latbench.tablemeta import RunSettings

LIGHTNAS_FILTERS = ((18, 24, 30), (24, 32, 40), (48, 64, 80), (72, 96, 120), (120, 160, 192))
PADDLESLIM_TYPES = {"conv", "activation", "batch_norm", "eltwise", "pooling", "softmax"}


def paddleslim_lightnas_lines() -> set[str]:
    """The lines PaddleSlim's LightNAS `get_all_ops` lists, derived here by hand from its rule:
    per stage a first unit (stride s, no shortcut) and a repeated one (stride 1, shortcut), each for
    every input width, expansion, kernel and output width; an fc is a 1x1 conv without bias plus an
    eltwise add of the bias; SE pools are written with kernel 0; the classifier ends in softmax -1."""
    out = {"conv 0 0 1 3 224 224 32 1 3 1 2 1", "batch_norm None 1 32 112 112", "activation relu6 1 32 112 112"}

    def unit(in_cs, h, ts, ks, outs, s, shortcut):
        o = h // s
        for c in in_cs:
            for t in ts:
                m = c * t
                out.update({f"conv 0 0 1 {c} {h} {h} {m} 1 1 0 1 1", f"batch_norm None 1 {m} {h} {h}",
                            f"activation relu6 1 {m} {h} {h}", f"batch_norm None 1 {m} {o} {o}",
                            f"activation relu6 1 {m} {o} {o}"})
                out.update(f"conv 0 0 1 {m} {h} {h} {m} {m} {k} {(k - 1) // 2} {s} 1" for k in ks)
                for c_out in outs:
                    q = c_out // 4
                    out.update({f"conv 0 0 1 {m} {o} {o} {c_out} 1 1 0 1 1", f"batch_norm None 1 {c_out} {o} {o}"})
                    if shortcut:
                        out.add(f"eltwise 2 1 {c_out} {o} {o}")
                    out.update({f"pooling 1 1 {c_out} {o} {o} 0 0 1 0 3", f"conv 0 0 1 {c_out} 1 1 {q} 1 1 0 1 1",
                                f"eltwise 2 1 {q} 1 1", f"activation relu 1 {q} 1 1",
                                f"conv 0 0 1 {q} 1 1 {c_out} 1 1 0 1 1", f"eltwise 2 1 {c_out} 1 1",
                                f"activation sigmoid 1 {c_out} 1 1", f"eltwise 1 1 {c_out} {o} {o}",
                                f"activation relu 1 {c_out} {o} {o}"})

    in_cs, h = [32], 112
    stages = ([((1,), (3,), (16,), 1)] + [((3, 4, 5, 6), (3, 5), LIGHTNAS_FILTERS[i], s)
                                          for i, s in enumerate((2, 2, 2, 1, 2))] + [((6,), (3,), (320,), 1)])
    for ts, ks, outs, s in stages:
        unit(in_cs, h, ts, ks, outs, s, False)
        in_cs, h = outs, h // s
        unit(in_cs, h, ts, ks, outs, 1, True)
    return out | {"conv 0 0 1 320 7 7 1280 1 1 0 1 1", "batch_norm None 1 1280 7 7", "activation relu6 1 1280 7 7",
                  "pooling 1 1 1280 7 7 7 0 1 0 3", "conv 0 0 1 1280 1 1 1000 1 1 0 1 1", "eltwise 2 1 1000 1 1",
                  "softmax -1 1 1000 1 1"}


# latbench's own squeeze-excite lines, and PaddleSlim's line(s) for the same op
SE_LINES = [
    (re.compile(r"^conv 1 0 1 (\d+) 1 1 (\d+) 1 1 0 1 1$"),  # SE fc: a conv with its bias
     lambda c, q: [f"conv 0 0 1 {c} 1 1 {q} 1 1 0 1 1", f"eltwise 2 1 {q} 1 1"]),
    (re.compile(r"^eltwise 1 1 (\d+) (\d+) (\d+) 1$"),  # SE scale: the broadcast flag
     lambda c, h, w: [f"eltwise 1 1 {c} {h} {w}"]),
    (re.compile(r"^pooling 1 1 (\d+) (\d+) (\d+) \2 0 1 0 3$"),  # SE pool: kernel h, not 0
     lambda c, h, w: [f"pooling 1 1 {c} {h} {w} 0 0 1 0 3"]),
]


def test_lightnas_paddleslim_op_list_is_paddleslims_own(cli):
    """`enumerate lightnas` writes only PaddleSlim op types, the classifier as PaddleSlim writes it
    (1x1 conv, eltwise add, softmax -1), and every other line as PaddleSlim's get_all_ops lists it,
    but for the squeeze-excite lines (latbench's mbconv SE: a conv with bias, the broadcast flag,
    a global pool with kernel h), each of which stands for PaddleSlim's own line(s)."""
    code, out, err = cli("enumerate", "lightnas")
    assert code == 0, err
    lines = out.splitlines()
    assert len(set(lines)) == len(lines) and {line.split()[0] for line in lines} == PADDLESLIM_TYPES
    paddle = paddleslim_lightnas_lines()
    for line in ("conv 0 0 1 1280 1 1 1000 1 1 0 1 1", "eltwise 2 1 1000 1 1", "softmax -1 1 1000 1 1",
                 "pooling 1 1 1280 7 7 7 0 1 0 3", "conv 0 0 1 3 224 224 32 1 3 1 2 1"):
        assert line in lines and line in paddle
    others = set(lines) - paddle
    assert others  # the SE lines below
    for line in others:
        theirs = paddleslim_form(line)
        assert theirs is not None and set(theirs) <= paddle, line


def paddleslim_form(line: str) -> list[str] | None:
    """PaddleSlim's line(s) for one of latbench's SE lines, None for any other line."""
    for pat, theirs in SE_LINES:
        m = pat.match(line)
        if m:
            return theirs(*m.groups())
    return None


def test_a_table_profiled_from_the_lightnas_op_list_prices_every_subnet(cli, tmp_path):
    """profile --ops of `enumerate lightnas` gives every key a lightnas subnet is priced by: no
    fallback, and each price is the sum of its ops' entries."""
    code, _, err = cli("enumerate", "lightnas", "-o", str(tmp_path / "ops.txt"))
    assert code == 0, err
    ops = read_ops(tmp_path / "ops.txt")
    prof = DeviceProfile(agent="cpu", runtime="torch", runtime_version="2", threads=1, device="Test CPU")
    with LatencyTable.open(tmp_path / "t.db", prof) as t:
        t.set_run_settings(RunSettings("op"))
        for i, op in enumerate(ops):
            t.add(Measurement(op.key, prof.id, op.to_dict(), Stats.from_samples([0.001 * (i + 1)] * 3)))
        est = t.estimates()
        sp = get_space("lightnas")
        configs = sp.sample(5, 200)
        got, misses = Predictor.from_table(t, sp, max_fallback=0.0).predict_batch(configs, return_misses=True)
    assert not misses.any()
    for c, ms in list(zip(configs, got))[:20]:
        keys = [o.key for b in sp.blocks(c) for o in O.expand(b)]
        assert "softmax-input:1x1000x1x1-axis:1" in keys
        assert ms == pytest.approx(sum(est[k] for k in keys), rel=1e-12)


def test_lightnas_supernet_learns_the_classifier_bias_and_exports_exactly():
    """The bias add is a learned operand of the supernet (a gradient reaches it), copied into the
    exported network, which computes the softmax of the supernet's logits (the loss takes logits:
    a softmax inside the training network would be applied twice by cross-entropy)."""
    torch = pytest.importorskip("torch")
    from latbench.spaces.torch_build import Eltwise
    from latbench.supernet.blocks import EltwiseBlock
    from latbench.supernet.model import SuperNet

    sp = get_space("lightnas")
    torch.manual_seed(0)
    net = SuperNet(sp).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.uniform_(-0.1, 0.1)
    (bias,) = [b.other for b in net.blocks if isinstance(b, EltwiseBlock)]
    rng = np.random.default_rng(1)
    for cfg in list(sp.sample(rng, 2)) + [sp.smallest()]:
        net.set_active(cfg)
        x = torch.randn(*net.input_shape(1))
        sub = net.export_module(cfg)
        (exported,) = [m.other for m in sub.modules() if isinstance(m, Eltwise)]
        assert torch.equal(exported, bias.detach())
        with torch.no_grad():
            logits = net(x)
            probs = sub(x)
            assert logits.shape == (1, 1000) and probs.shape == (1, 1000, 1, 1)
            assert float(probs.sum()) == pytest.approx(1.0, rel=1e-5)  # the exported network's softmax
            assert (torch.softmax(logits, dim=1) - probs.flatten(1)).abs().max().item() < 1e-6
    torch.nn.functional.cross_entropy(net(x), torch.tensor([3])).backward()
    assert bias.grad is not None and bias.grad.abs().sum() > 0

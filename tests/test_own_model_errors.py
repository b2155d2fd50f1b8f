"""A user's own model (`--model` an ONNX file, a .tflite, or module:callable; `price_model` in
Python): pricing leaves the module as it was, a mistyped path or a failing factory is one line
naming it (never an internal error), `--statistic` prices a model as it prices a subnet, `--space`
is refused, and what cannot be priced says why."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from latbench.device import DeviceProfile  # noqa: E402
from latbench.measure import Measurement, Stats  # noqa: E402
from latbench.modelops import export_module, model_ops  # noqa: E402
from latbench.predict import Predictor  # noqa: E402
from latbench.store import LatencyTable  # noqa: E402
from latbench.tablemeta import RunSettings  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ORT = DeviceProfile(agent="ort", runtime="onnxruntime", runtime_version="1.32.0", threads=1,
                    device="Test CPU", abi="x86_64", cores=2)
SHAPE = (1, 3, 16, 16)
ARG_SHAPE = "1,3,16,16"


class Net(torch.nn.Module):
    """Conv -> BN -> ReLU -> pool -> Dropout -> Linear: BN and Dropout act by training mode."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.drop = torch.nn.Dropout(0.5)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return self.fc(self.drop(torch.nn.functional.adaptive_avg_pool2d(y, 1).flatten(1)))


def samples(i: int) -> list[float]:
    """Skewed samples: median, mean and min all differ."""
    base = 0.05 + 0.0173 * i
    return [base, base * 1.01, base * 1.02, base * 1.5, base * 3.0]


def write_table(path: Path, ops, profile: DeviceProfile) -> Path:
    with LatencyTable.open(path, profile) as t:
        for i, op in enumerate(ops):
            t.add(Measurement(key=op.key, profile_id=profile.id, op=op.to_dict(), stats=Stats.from_samples(samples(i)),
                              settings={"threads": 1}, wall_s=0.1, timed_s=0.05, taken_at=1.7e9 + i))
        t.set_run_settings(RunSettings("op"))  # no per-call cost: every statistic prices it alike
    return path


@pytest.fixture
def net_onnx(tmp_path: Path) -> Path:
    path = tmp_path / "net.onnx"
    path.write_bytes(export_module(Net(), SHAPE))
    return path


@pytest.fixture
def typed_table(tmp_path: Path, net_onnx: Path) -> Path:
    """An ort table of the typed ops Net's export lowers to (every key of it there)."""
    return write_table(tmp_path / "typed.db", model_ops(net_onnx).unique, ORT)


def aten_table(path: Path, module) -> Path:
    """A cpu table of the ATen calls `module` lowers to (the torch agent's own profile)."""
    from device_agents import get_agent

    agent = get_agent("cpu")
    try:
        profile = agent.fingerprint()
    finally:
        agent.close()
    return write_table(path, model_ops(module, SHAPE, "cpu").unique, profile)


def one_error(err: str) -> str:
    (line,) = err.splitlines()
    assert line.startswith("latbench: error: ") and "internal error" not in line, line
    return line[len("latbench: error: "):]


# ---------------------------------------------------------------------- 1: the module is left as it was
def test_pricing_a_module_keeps_its_training_modes_and_state(tmp_path: Path, typed_table: Path) -> None:
    """Through the ONNX export (a typed-op table) and through torch.export (a cpu table of ATen
    calls): every submodule's training flag and every parameter and buffer are as before."""
    net = Net()
    with torch.no_grad():
        net.bn.running_mean.add_(0.25)
        net.bn.running_var.mul_(2.0)
    net.train()
    net.drop.eval()  # a mixed state: each submodule's own flag is restored, not one for all
    modes = [m.training for m in net.modules()]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    for table in (typed_table, aten_table(tmp_path / "aten.db", Net())):
        mp = Predictor.from_table(table).price_model(net, SHAPE)
        assert mp.price.misses == () and mp.price.raw_ms > 0
        assert [m.training for m in net.modules()] == modes, table
        after = net.state_dict()
        assert after.keys() == state.keys()
        for k, v in state.items():
            assert torch.equal(after[k], v), (table, k)


# ---------------------------------------------------------------------- 2: a path that is not a model
def test_a_mistyped_model_path_is_one_usage_line(tmp_path: Path, typed_table: Path, cli, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    missing = "conv4: no such file (an ONNX or .tflite model), and not a module:callable"
    for shape in (["--input-shape", ARG_SHAPE], []):  # without the shape: not "a torch module needs ..."
        code, out, err = cli("predict", "-t", str(typed_table), "--model", "conv4", *shape)
        assert (code, out, one_error(err)) == (2, "", missing), shape
    for device in ("cpu", "ort"):
        code, out, err = cli("ops", "--model", "conv4", "--input-shape", ARG_SHAPE, "--device", device)
        assert (code, one_error(err)) == (2, missing), device
    code, out, err = cli("profile", "--device", "cpu", "--model", "conv4", "--input-shape", ARG_SHAPE,
                         "--out", str(tmp_path / "p.db"))
    assert (code, one_error(err)) == (2, missing)
    code, out, err = cli("predict", "-t", str(typed_table), "--model", str(tmp_path))
    assert (code, one_error(err)) == (
        2, f"{tmp_path}: a directory, not a model file (an ONNX or .tflite model), and not a module:callable")


# ---------------------------------------------------------------------- 3: the user's factory raises
def test_an_exception_in_the_users_factory_is_named_not_internal(tmp_path: Path, typed_table: Path, cli,
                                                                 monkeypatch) -> None:
    (tmp_path / "own_boom.py").write_text("def boom():\n    raise RuntimeError('my factory\\nfailed')\n")
    (tmp_path / "own_broken.py").write_text("raise ValueError('bad module')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("own_boom", "own_broken"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    code, out, err = cli("predict", "-t", str(typed_table), "--model", "own_boom:boom", "--input-shape", ARG_SHAPE)
    assert (code, out, one_error(err)) == (1, "", "own_boom:boom(): raised RuntimeError: my factory failed")
    code, out, err = cli("ops", "--model", "own_boom:boom", "--input-shape", ARG_SHAPE, "--device", "cpu")
    assert (code, one_error(err)) == (1, "own_boom:boom(): raised RuntimeError: my factory failed")
    code, out, err = cli("ops", "--model", "own_broken:net", "--device", "cpu")
    assert (code, one_error(err)) == (1, "--model own_broken:net: importing own_broken raised ValueError: bad module")


def test_our_own_bug_after_the_factory_is_still_an_internal_error(tmp_path: Path, typed_table: Path, cli,
                                                                  monkeypatch) -> None:
    (tmp_path / "own_fine.py").write_text("from test_own_model_errors import Net\n\ndef net():\n    return Net()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.delitem(sys.modules, "own_fine", raising=False)

    def broken(*args, **kw):
        raise ZeroDivisionError("ours")

    monkeypatch.setattr("latbench.model_price.group_unmapped", broken)
    code, _, err = cli("predict", "-t", str(typed_table), "--model", "own_fine:net", "--input-shape", ARG_SHAPE)
    assert code == 1 and err.splitlines() == [
        "latbench: error: internal error: ZeroDivisionError: ours (set LATBENCH_DEBUG=1 for the traceback)"]


# ---------------------------------------------------------------------- 4, 5: --statistic and --space
def test_statistic_prices_a_model_as_the_python_api_does(typed_table: Path, net_onnx: Path, cli) -> None:
    own = Predictor.from_table(typed_table).price_model(net_onnx).price.raw_ms
    prices = {}
    for stat in ("median", "min", "mean"):
        api = Predictor.from_table(typed_table, statistic=stat).price_model(net_onnx)
        code, out, err = cli("predict", "-t", str(typed_table), "--model", str(net_onnx), "--statistic", stat)
        assert (code, err) == (0, "")
        assert out.startswith(f"{api.price.raw_ms:.4f} ms (uncalibrated; priced by {stat}; 0 of ")
        code, out, err = cli("predict", "-t", str(typed_table), "--model", str(net_onnx), "--statistic", stat, "--json")
        doc = json.loads(out)
        (row,) = doc["predictions"]
        assert code == 0 and doc["statistic"] == stat and row["statistic"] == stat
        assert row["ms"] == pytest.approx(api.price.raw_ms, rel=1e-12)
        prices[stat] = row["ms"]
    assert len({round(v, 9) for v in prices.values()}) == 3  # three statistics, three prices
    code, out, err = cli("predict", "-t", str(typed_table), "--model", str(net_onnx))
    assert code == 0 and "priced by m" not in out and out.startswith(f"{own:.4f} ms (uncalibrated; 0 of ")


def test_space_with_model_is_refused(typed_table: Path, net_onnx: Path, cli) -> None:
    code, out, err = cli("predict", "-t", str(typed_table), "--model", str(net_onnx), "--space", "ofa-mbv3-w10")
    assert (code, out) == (2, "")
    assert one_error(err).startswith("--space goes with --config and --random; --model ")


@pytest.mark.parametrize("extra,needle", [(["--seed", "3"], "--seed goes with --random"),
                                          (["-r", "24"], "--resolution goes with --random"),
                                          (["--no-calibration"], "--no-calibration goes with --config and --random")])
def test_options_a_model_price_would_ignore_are_refused(typed_table: Path, net_onnx: Path, cli, extra, needle) -> None:
    code, out, err = cli("predict", "-t", str(typed_table), "--model", str(net_onnx), *extra)
    assert (code, out) == (2, "") and one_error(err).startswith(needle)


# ---------------------------------------------------------------------- 6, 7, 8: what cannot be priced, and why
def test_a_tflite_model_with_an_ort_table_names_the_table_kind(tmp_path: Path, typed_table: Path, cli) -> None:
    model = tmp_path / "net.tflite"
    model.write_bytes(b"\0\0\0\0TFL3" + b"\0" * 24)
    code, _, err = cli("predict", "-t", str(typed_table), "--model", str(model))
    line = one_error(err)
    assert code == 2 and line.startswith(f"{model}: {typed_table} is an ort table; a .tflite model is priced "
                                         f"from a tflite table")
    assert "(--device tflite)" not in line


def test_unmapped_nodes_have_a_reason_in_json(tmp_path: Path, cli) -> None:
    class Up(Net):
        def forward(self, x):
            return torch.nn.functional.interpolate(torch.relu(self.conv(x)), scale_factor=2.0)

    path = tmp_path / "up.onnx"
    path.write_bytes(export_module(Up(), SHAPE))
    table = write_table(tmp_path / "t.db", model_ops(path).unique, ORT)
    code, out, _ = cli("predict", "-t", str(table), "--model", str(path), "--json")
    assert code == 3
    (row,) = json.loads(out)["predictions"]
    (group,) = row["unmapped"]
    assert group["op_type"] == "Resize"
    assert [n["reason"] for n in group["nodes"]] == ["latbench has no op for Resize"]
    code, out, _ = cli("predict", "-t", str(table), "--model", str(path))
    assert code == 3 and out.splitlines()[1].startswith("not priced: Resize x1: ")  # the text line as before


def test_every_key_missing_says_what_the_table_holds(tmp_path: Path, net_onnx: Path, cli) -> None:
    """A cpu table of the module's ATen calls, priced with the module's ONNX export (typed ops)."""
    table = aten_table(tmp_path / "aten.db", Net())
    code, _, err = cli("predict", "-t", str(table), "--model", str(net_onnx))
    line = one_error(err)
    assert code == 1 and line.startswith(f"{table} prices {net_onnx} with 4 of 4 keys missing, over the 10% allowed; "
                                         f"the table holds aten nodes (conv2d.default, ")
    assert f", {net_onnx} lowered to typed ops (conv, " in line
    assert line.endswith("; --allow-fallback prices them with the fallback regression")

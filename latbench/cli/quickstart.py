"""`latbench quickstart`: the main job on built-in defaults, step by step (no device needed):
describe a space, enumerate its ops and blocks, sample subnets, profile a tiny space with ONNX
Runtime, validate the table end to end and search it under a latency budget."""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import LatbenchError
from .common import _stderr, _stdout, format_resolutions, format_size


@dataclass
class QuickstartState:
    """What the quickstart steps share: the inputs and what earlier steps produced."""

    space_name: str
    resolutions: tuple[int, ...]
    samples: int
    seed: int
    space: Any = None
    ops: list = field(default_factory=list)
    blocks: list = field(default_factory=list)
    notes: dict = field(default_factory=dict)
    workdir: Path = Path("latbench-quickstart")
    table: Optional[Path] = None  # the latency table the profile step built
    table_space: str = "tiny"  # the space that table covers
    table_resolution: int = 24
    validate_n: int = 8  # subnets the validate step measures end to end (0: skipped)


def _qs_space(st: QuickstartState, con: Console) -> None:
    from ..spaces import get_space

    st.space = get_space(st.space_name)
    if st.resolutions:
        st.resolutions = st.space.check_resolutions(st.resolutions)
    else:  # a few default resolutions the space allows, else all of them
        allowed = st.space.resolutions
        st.resolutions = tuple(r for r in QUICKSTART_RESOLUTIONS if r in allowed) or tuple(allowed)
    d = st.space.describe()
    con.print(f"{d['name']}: {d.get('description', '')}", markup=False)
    con.print(f"{d['positions']} positions, {format_size(int(d['size']))} distinct subnets, "
              f"resolutions {format_resolutions(d['resolutions'])}; using {format_resolutions(st.resolutions)}")


def _kind_table(title: str, ops) -> Table:
    from ..enumerate import summary

    t = Table(title=title, title_justify="left")
    t.add_column("kind")
    t.add_column("unique ops", justify="right")
    counts = summary(ops)
    for k, v in counts.items():
        t.add_row(k, str(v))
    t.add_row("[bold]total[/bold]", f"[bold]{sum(counts.values())}[/bold]")
    return t


def _qs_ops(st: QuickstartState, con: Console) -> None:
    from ..enumerate import enumerate_ops

    t0 = time.perf_counter()
    st.ops = enumerate_ops(st.space, st.resolutions, "op")
    con.print(_kind_table(f"op granularity ({time.perf_counter() - t0:.2f} s)", st.ops))


def _qs_blocks(st: QuickstartState, con: Console) -> None:
    from ..enumerate import enumerate_ops

    t0 = time.perf_counter()
    st.blocks = enumerate_ops(st.space, st.resolutions, "block")
    con.print(_kind_table(f"block granularity ({time.perf_counter() - t0:.2f} s)", st.blocks))


def _qs_sample(st: QuickstartState, con: Console) -> None:
    """Sample subnets: their FLOPs range, and a check that the enumeration covers every block."""
    import numpy as np

    sp = st.space
    rng = np.random.default_rng(st.seed)
    configs = sp.sample(rng, st.samples)
    if sp.resolution_position is not None:
        allowed = list(sp.positions[sp.resolution_position].choices)
        configs[:, sp.resolution_position] = rng.choice([allowed.index(r) for r in st.resolutions], st.samples)
    known = {b.key for b in st.blocks}
    flops_of: dict[str, int] = {}
    flops, missing = [], set()
    for cfg in configs:
        total = 0
        for b in sp.blocks(cfg):
            if b.key not in flops_of:
                flops_of[b.key] = b.flops
                if b.key not in known:
                    missing.add(b.key)
            total += flops_of[b.key]
        flops.append(total)
    mf = np.array(flops, dtype=np.float64) / 1e6
    con.print(f"{st.samples} subnets (seed {st.seed}): MFLOPs min {mf.min():.1f}, median "
              f"{np.median(mf):.1f}, max {mf.max():.1f}; {len(flops_of)} distinct blocks used")
    if missing:
        raise LatbenchError(f"{len(missing)} sampled block(s) missing from the enumeration, e.g. {min(missing)}")
    con.print("every block of every sampled subnet is in the enumerated list [green]ok[/green]")


def _first_of_each_kind(ops) -> list:
    seen: dict = {}
    for op in ops:
        seen.setdefault((op.kind, op.role), op)
    return list(seen.values())


def _qs_keys(st: QuickstartState, con: Console) -> None:
    from ..formats.paddleslim import op_to_line

    con.print("one block of each kind (keys are Once-for-All LatencyTable keys for the OFA spaces):")
    for b in _first_of_each_kind(st.blocks):
        con.print(f"  {b.key}")
    con.print("one op of each kind: key, then its PaddleSlim line")
    for op in _first_of_each_kind(st.ops):
        con.print(f"  {op.key}\n    [dim]{op_to_line(op)}[/dim]")
    con.print(f"next: latbench enumerate {st.space_name} -r {st.resolutions[-1]} -o ops.txt  "
              f"(or --format csv|jsonl, --granularity block)")


QUICKSTART_RESOLUTIONS = (160, 192, 224)

def _qs_profile(st: QuickstartState, con: Console) -> None:
    """Profile the tiny space's blocks with ONNX Runtime on this CPU (1 thread) into a table."""
    from ..profiler import profile
    from ..store import LatencyTable

    st.workdir.mkdir(parents=True, exist_ok=True)
    st.table = st.workdir / f"{st.table_space}-ort.sqlite"
    run = profile(st.table_space, device="ort", out=st.table, resolutions=[st.table_resolution],
                  max_time_s=0.3, threads=1)  # a rerun resumes, keeping the table's estimator
    with LatencyTable.open(st.table, readonly=True) as t:
        est = t.estimates()
        rows = sorted(t.measurements(), key=lambda m: -est.get(m.key, 0.0))
        profile_text = t.profile.describe()
    con.print(f"{st.table_space} at {st.table_resolution}: {run.total} unique blocks; {run.measured} measured now, "
              f"{run.skipped} already in {st.table} ({run.wall_s:.1f} s); profile {profile_text}; "
              f"{run.words()}", markup=False)
    tab = Table(title="slowest blocks (ms)", title_justify="left")
    for col in ("key", "median", "IQR", "n", "note"):
        tab.add_column(col, overflow="fold")
    for m in rows[:5]:
        s_ = m.stats
        tab.add_row(m.key, f"{s_.median:.4f}", f"{s_.iqr:.4f}", str(s_.n), "unstable" if s_.unstable else "")
    con.print(tab)
    con.print(f"next: latbench table show {st.table}  |  latbench profile --device tflite --space "
              f"{st.table_space} --out tflite.sqlite", markup=False)


QUICKSTART_VALIDATE_N = 8  # --validate-n's default: the demo's full timing


def quickstart_share(n: int) -> float:
    """The validate step's share of its full cost at `--validate-n n`: 1 at the default and above;
    below it, the time caps (0.1 s per subnet, per op-sum baseline op and per yardstick pass), the
    first warm-up and the estimator row's fresh builds shrink with n (a shorter run whose few
    subnets give rough figures anyway; the report says the timing and builds it used)."""
    return min(1.0, n / QUICKSTART_VALIDATE_N)


def _qs_validate(st: QuickstartState, con: Console) -> None:
    """Measure `st.validate_n` subnets of the profile step's table end to end (a calibration fitted
    on half as many others, as many table entries timed again for drift); print the figures."""
    from ..spaces import get_space
    from ..store import LatencyTable
    from ..validate import BUILDS, validate
    from ..yardstick import YardstickSettings
    from ..validate.table_facts import agent_for_table, timing_of_table
    from .validate import Bars

    table = getattr(st, "table", None) or st.notes.get("table")
    if not table or not Path(table).exists():
        con.print("no latency table from an earlier step: skipped (run `latbench validate --table T --space S`)")
        return
    if st.validate_n == 0:
        con.print(f"skipped (--validate-n 0); run `latbench validate --table {table} --space {st.table_space}`",
                  markup=False)
        return
    n = st.validate_n
    sp = get_space(getattr(st, "table_space", None) or st.space_name)
    share = quickstart_share(n)
    with LatencyTable.open(str(table), readonly=True) as t:
        agent = agent_for_table(t)
        try:
            timing = timing_of_table(t, max_time_s=0.1 * share)  # per subnet and per baseline op
            timing = dataclasses.replace(timing, warmup_s=timing.warmup_s * share)
            ys = YardstickSettings(min_s=0.1 * share, seed=st.seed)  # ... and per yardstick pass
            with Bars() as bars:
                report = validate(t, sp, agent, n=n, seed=st.seed, calibrate_n=max(2, n // 2), timing=timing,
                                  progress=bars, retime=n, yardstick=ys, builds=max(1, round(BUILDS * share)))
        finally:
            agent.close()
    for line in report.summary_lines():
        con.print(line, markup=False, highlight=False)
    con.print(f"next: latbench calibrate --table {table} --space {sp.name}  |  latbench validate --table "
              f"{table} --space {sp.name} --n 100 --plot fit.png --csv fit.csv", markup=False)


# The quickstart is a list of steps; later stages append predict, validate and search steps.
QUICKSTART_STEPS: list[tuple[str, Callable[[QuickstartState, Console], None]]] = [
    ("search space", _qs_space),
    ("enumerate ops", _qs_ops),
    ("enumerate blocks", _qs_blocks),
    ("sample subnets", _qs_sample),
    ("keys and formats", _qs_keys),
    ("profile with ONNX Runtime", _qs_profile),
    ("validate against end-to-end runs", _qs_validate),
]


def _qs_search(st: QuickstartState, con: Console) -> None:
    """Search the table the profile step built (`st.table`) for the best subnet under a budget."""
    from ..predict import DEFAULT_MAX_FALLBACK
    from ..search import Domain, extreme, run_search
    from ..spaces import get_space
    from .search import choose_resolutions, load_predictors

    table = getattr(st, "table", None) or (getattr(st, "notes", None) or {}).get("table")
    if not table or not Path(table).exists():
        con.print("no latency table from an earlier step, nothing to search; with a table: "
                  "latbench search --space SPACE --table TABLE --budget-ms MS", markup=False)
        return
    table = Path(table)
    sp = get_space(getattr(st, "table_space", None) or st.space_name)
    preds = load_predictors(sp, [table], max_fallback=DEFAULT_MAX_FALLBACK)
    name, pred = next(iter(preds.items()))
    choices = choose_resolutions(sp, preds, [], lambda m: con.print(m, markup=False))
    domain = Domain.of(sp, choices)
    fastest, _ = extreme(pred, domain)
    slowest, _ = extreme(pred, domain, maximize=True)
    budget = float(f"{fastest + (slowest - fastest) / 3:.3g}")
    if budget <= fastest:
        budget = fastest + (slowest - fastest) / 3
    res_flag = "".join(f" -r {r}" for r in (choices or {}).get("r", []))
    con.print(f"{sp.name} on {table}: achievable latency {fastest:.4f} .. {slowest:.4f} ms; budget {budget:g} ms",
              markup=False)
    result = run_search(sp, preds, {name: budget}, "flops", "evolution", seed=st.seed, choices=choices,
                        generations=50)
    r = result
    con.print(f"best of {r.evaluations} scored subnets ({r.seconds:.2f} s): "
              f"{json.dumps(r.published, separators=(',', ':'))}", markup=False, soft_wrap=True)
    con.print(f"  {r.latency_ms[name]:.4f} ms (budget {budget:g}), {r.flops / 1e6:.2f} MFLOPs, "
              f"{r.params / 1e3:.1f} K params; score = MFLOPs (a proxy, not an accuracy)", markup=False)
    con.print(f"next: latbench search --space {sp.name} --table {table} --budget-ms {budget:g}{res_flag} "
              f"--accuracy callable:yourmodule:your_fn --json", markup=False, soft_wrap=True)



QUICKSTART_STEPS.append(("search under a latency budget", _qs_search))  # last: needs st.table


def quickstart_cmd(
    space: str = typer.Option("ofa-mbv3-w10", "--space", "-s", help="Space to run on."),
    resolution: Optional[List[int]] = typer.Option(
        None, "--resolution", "-r", help="Resolutions (default: those of 160, 192, 224 the space allows)."),
    samples: int = typer.Option(200, "--samples", min=1, help="Random subnets to sample."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    workdir: Path = typer.Option(Path("latbench-quickstart"), "--workdir", help="Where tables and reports go (reused: a rerun resumes)."),
    validate_n: int = typer.Option(QUICKSTART_VALIDATE_N, "--validate-n", min=0, help="Subnets the validate step "
                                   "measures end to end (a calibration fitted on half as many others; 0 skips the "
                                   "step; below 8, its timing caps shrink in proportion)."),
) -> None:
    """Run latbench end to end on built-in defaults (no device needed)."""
    st = QuickstartState(space, tuple(resolution or ()), samples, seed, workdir=workdir, validate_n=validate_n)
    con = _stdout()
    t_all = time.perf_counter()
    for i, (title, step) in enumerate(QUICKSTART_STEPS, 1):
        con.rule(f"[bold]{i}/{len(QUICKSTART_STEPS)} {title}", align="left")
        t0 = time.perf_counter()
        step(st, con)
        _stderr().print(f"[dim]step {i} {title}: {time.perf_counter() - t0:.2f} s[/dim]")
    con.rule(f"done in {time.perf_counter() - t_all:.1f} s", align="left")

"""What a search leaves behind besides the best config: the accuracy/latency front as CSV and as
a plot (matplotlib imported here only, Agg backend, nothing shown)."""
from __future__ import annotations

import csv
import json
import os

import numpy as np

from ..errors import UsageError, require
from .constraints import count_predictor
from .study import SearchResult


def front_rows(result: SearchResult, space) -> list[dict]:
    """One dict per front point, by increasing latency on the first table."""
    log = result.trials
    idx = result.front if result.front is not None else log.pareto()
    configs = log.configs[idx]
    flops = count_predictor(space, "flops").predict_batch(configs) if len(idx) else np.zeros(0)
    params = count_predictor(space, "params").predict_batch(configs) if len(idx) else np.zeros(0)
    rows = []
    for k, i in enumerate(idx):
        row = {"accuracy": float(log.accuracy[i])}
        for t, name in enumerate(log.tables):
            row[f"latency_ms[{name}]"] = float(log.latency_ms[i, t])
        row.update(flops=int(round(flops[k])), params=int(round(params[k])),
                   config=json.dumps(space.to_published(configs[k]), separators=(",", ":")))
        rows.append(row)
    return rows


def write_front_csv(result: SearchResult, space, path: str | os.PathLike) -> int:
    """The Pareto front (feasible trials only) as CSV; returns the number of rows."""
    rows = front_rows(result, space)
    cols = ["accuracy"] + [f"latency_ms[{t}]" for t in result.trials.tables] + ["flops", "params", "config"]
    try:
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
    except OSError as e:
        raise UsageError(f"{path}: cannot write: {e.strerror or e}") from None
    return len(rows)


def plot_front(result: SearchResult, path: str | os.PathLike) -> None:
    """Accuracy against latency on the first table: every feasible trial, the front, the best
    config and the budget line."""
    require("matplotlib", "plot")
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    log = result.trials
    table = log.tables[0]
    feas = np.flatnonzero(log.feasible)
    if feas.size > 20_000:
        feas = np.random.default_rng(0).choice(feas, 20_000, replace=False)
    front = result.front if result.front is not None else log.pareto()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.scatter(log.latency_ms[feas, 0], log.accuracy[feas], s=4, c="0.75", label=f"feasible trials ({log.feasible.sum()})")
    ax.plot(log.latency_ms[front, 0], log.accuracy[front], "o-", c="tab:blue", ms=3, lw=1.2, drawstyle="steps-post",
            label=f"Pareto front ({len(front)})")
    ax.plot([result.latency_ms[table]], [result.accuracy], "*", c="tab:orange", ms=14, label="best under budget")
    budget = result.budgets_ms.get(table)
    if budget is not None:
        ax.axvline(budget, color="tab:red", ls="--", lw=1.2, label=f"budget {budget:g} ms")
    ylabel = "score (proxy: MFLOPs, not accuracy)" if result.accuracy_proxy else f"accuracy ({result.accuracy_source})"
    ax.set_xlabel(f"predicted latency on {table} (ms)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{result.space}: {result.strategy}, seed {result.seed}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as e:
        raise UsageError(f"{path}: cannot write: {e.strerror or e}") from None
    finally:
        plt.close(fig)

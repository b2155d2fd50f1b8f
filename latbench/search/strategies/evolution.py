"""Evolution as Once-for-All's EvolutionFinder runs it, on whole populations at once.

Semantics kept: a population of feasible random subnets; each generation keeps the top
`parent_ratio` by accuracy as parents, makes `mutation_ratio` of the population by mutating a
random parent (each position redrawn with `mutate_prob`, the resolution with
`resolution_mutate_prob`) and the rest by uniform crossover of two random parents; children that
break a constraint are redrawn from the same parents. Changed: the redraw is bounded (a child still
infeasible after the last round is its first parent, which is feasible), all children of a
generation are priced and scored in one batch, and the last generation's children count too.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import Strategy, positive, probability


@dataclass(frozen=True)
class EvolutionOptions:
    """OFA's defaults: population 100, 500 generations (max_time_budget), parents 25%, mutants 50%."""

    population: int = 100
    generations: int = 500
    parent_ratio: float = 0.25
    mutation_ratio: float = 0.5
    mutate_prob: float = 0.1
    resolution_mutate_prob: float = 0.5
    redraw_rounds: int = 6  # round r draws 2**r candidates per infeasible child (63 in all)

    def validate(self) -> None:
        positive("population", self.population, "evolution")
        for name in ("parent_ratio", "mutation_ratio", "mutate_prob", "resolution_mutate_prob"):
            probability(name, getattr(self, name), "evolution")
        positive("parent_ratio", self.parent_ratio, "evolution")


def run(study, o: EvolutionOptions) -> None:
    rng, dom = study.rng, study.domain
    pop = int(o.population)
    n_parents = max(1, int(round(o.parent_ratio * pop)))
    n_mut = int(round(o.mutation_ratio * pop))
    X, priced = study.sample_feasible(pop)
    acc = study.score(X, priced)
    study.tick(0, o.generations)
    is_mut = np.arange(pop) < n_mut
    for g in range(o.generations):
        top = np.argsort(-acc, kind="stable")[:n_parents]
        parents, parent_acc = X[top], acc[top]
        first = parents[rng.integers(n_parents, size=pop)]
        second = parents[rng.integers(n_parents, size=pop)]

        def propose(rows: np.ndarray) -> np.ndarray:
            out = first[rows]
            m = is_mut[rows]
            out[m] = dom.mutate(rng, out[m], o.mutate_prob, o.resolution_mutate_prob)
            c = ~m
            out[c] = np.where(rng.random((int(c.sum()), dom.n_positions)) < 0.5, out[c], second[rows[c]])
            return out

        # mutants and crossovers priced together: one predict_batch per redraw round
        children, priced, _ = study.redraw(propose, pop, o.redraw_rounds, fallback=first)
        child_acc = study.score(children, priced)
        X = np.concatenate([parents, children])
        acc = np.concatenate([parent_acc, child_acc])
        study.tick(g + 1, o.generations)


EVOLUTION = Strategy(
    "evolution", EvolutionOptions, run,
    aliases={"population_size": "population", "max_time_budget": "generations",
             "arch_mutate_prob": "mutate_prob"},
    description="Once-for-All's evolution finder, batched and with bounded redraws",
)

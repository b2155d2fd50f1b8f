"""Simulated annealing as PaddleSlim's SAController runs it, but applying the constraint.

Kept: a move changes one random position to a random value; temperature
`init_temperature * reduce_rate ** iteration`; a worse reward is accepted with probability
exp((reward - current) / temperature). Changed: a move that breaks a constraint is redrawn
(bounded; a chain with no feasible move that round stays put), where PaddleSlim stores its
constrain_func and never calls it; `population` independent chains step together so each
iteration prices and scores one batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import Strategy, positive


@dataclass(frozen=True)
class AnnealOptions:
    """PaddleSlim's defaults: init_temperature 10 (no initial tokens), reduce_rate 0.85, 300 steps."""

    population: int = 100  # independent chains
    generations: int = 300  # iterations (max_iter_number)
    init_temperature: float = 10.0
    reduce_rate: float = 0.85
    redraw_rounds: int = 6

    def validate(self) -> None:
        positive("population", self.population, "anneal")
        positive("init_temperature", self.init_temperature, "anneal")
        if not 0.0 < self.reduce_rate <= 1.0:
            positive("reduce_rate", 0, "anneal (within (0, 1])")


def run(study, o: AnnealOptions) -> None:
    rng, dom = study.rng, study.domain
    cur, priced = study.sample_feasible(int(o.population))
    cur_acc = study.score(cur, priced)
    study.tick(0, o.generations)
    for it in range(o.generations):
        temperature = o.init_temperature * o.reduce_rate ** it
        cand, priced, stuck = study.redraw(lambda rows: dom.neighbour(rng, cur[rows]), len(cur), o.redraw_rounds)
        moved = np.ones(len(cur), dtype=bool)
        moved[stuck] = False  # no feasible move this round: the chain stays put
        idx = np.flatnonzero(moved)
        if idx.size:
            acc = study.score(cand[idx], priced.take(idx))
            with np.errstate(over="ignore", divide="ignore"):
                p = np.exp(np.minimum((acc - cur_acc[idx]) / temperature, 0.0))
            accept = (acc > cur_acc[idx]) | (rng.random(len(idx)) <= p)
            cur[idx[accept]] = cand[idx[accept]]
            cur_acc[idx[accept]] = acc[accept]
        study.tick(it + 1, o.generations)


ANNEAL = Strategy("anneal", AnnealOptions, run,
                  aliases={"max_iter_number": "generations", "chains": "population"},
                  description="PaddleSlim's simulated annealing, constraint applied, chains batched")

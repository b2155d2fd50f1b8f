"""NSGA-II for the accuracy / latency Pareto front, on pymoo (imported only when run).

pymoo rather than optuna's NSGAIISampler: pymoo hands the whole population to one evaluate call
(one predict_batch and one accuracy batch per generation) and takes constraints as G <= 0, the
same convention as ours; optuna asks trial by trial (46 suggest calls per OFA subnet), measured at
3-3.5 ms per trial here, i.e. minutes for 100 x 100 where pymoo takes about a second.
Objectives: maximise accuracy, minimise latency on the first table; every constraint (budgets on
every table, FLOPs/params ranges) is an inequality constraint, so infeasible subnets lose every
tournament to feasible ones. The reported front is read off the trial log (feasible only).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import require
from . import Strategy, positive, probability


@dataclass(frozen=True)
class NSGA2Options:
    population: int = 100
    generations: int = 100
    mutate_prob: float = 0.1  # per position
    crossover_prob: float = 0.9

    def validate(self) -> None:
        positive("population", self.population, "nsga2")
        probability("mutate_prob", self.mutate_prob, "nsga2")
        probability("crossover_prob", self.crossover_prob, "nsga2")


def run(study, o: NSGA2Options) -> None:
    require("pymoo", "search")
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.mutation import Mutation
    from pymoo.core.problem import Problem
    from pymoo.core.sampling import Sampling
    from pymoo.operators.crossover.ux import UniformCrossover

    dom = study.domain
    n_con = len(study.constraints.constraints)

    class SubnetProblem(Problem):
        """Decision variables are domain-local choice indices 0..counts-1 per position."""

        def __init__(self):
            super().__init__(n_var=dom.n_positions, n_obj=2, n_ieq_constr=n_con,
                             xl=np.zeros(dom.n_positions), xu=(dom.counts - 1).astype(float), vtype=int)

        def _evaluate(self, x, out, *args, **kwargs):
            X = dom.from_local(np.rint(x).astype(np.int64))
            pricing = study.price(X)
            acc = study.score(X, pricing)
            out["F"] = np.column_stack([-acc, pricing.latency_ms[:, 0]])
            if n_con:
                out["G"] = np.minimum(pricing.values, 1e12)

    class FeasibleSampling(Sampling):
        """The first population: feasible subnets, drawn as every strategy draws them."""

        def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
            return dom.to_local(study.sample_feasible(n_samples)[0])

    class ResetMutation(Mutation):
        """Each position redrawn uniformly with probability mutate_prob."""

        def _do(self, problem, X, *args, random_state=None, **kwargs):
            X = np.rint(X).astype(np.int64)
            hit = random_state.random(X.shape) < o.mutate_prob
            fresh = (random_state.random(X.shape) * dom.counts).astype(np.int64)
            return np.where(hit, fresh, X)

    algorithm = NSGA2(pop_size=int(o.population), sampling=FeasibleSampling(),
                      crossover=UniformCrossover(prob=o.crossover_prob), mutation=ResetMutation(),
                      eliminate_duplicates=True)
    algorithm.setup(SubnetProblem(), termination=("n_gen", max(1, int(o.generations))),
                    seed=study.seed, verbose=False)
    while algorithm.has_next():
        algorithm.next()
        study.tick(int(algorithm.n_gen) - 1, int(o.generations))


NSGA2 = Strategy("nsga2", NSGA2Options, run, aliases={"pop_size": "population", "n_gen": "generations"},
                 pareto=True, description="NSGA-II (pymoo): accuracy / latency Pareto front")

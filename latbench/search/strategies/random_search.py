"""Random search: `generations` batches of `population` feasible subnets drawn uniformly (rows the
budget keeps rejecting are pulled towards a feasible subnet, boundedly)."""
from __future__ import annotations

from dataclasses import dataclass

from . import Strategy, positive


@dataclass(frozen=True)
class RandomOptions:
    population: int = 100  # subnets per batch
    generations: int = 500  # batches

    def validate(self) -> None:
        positive("population", self.population, "random")


def run(study, o: RandomOptions) -> None:
    for g in range(max(o.generations, 1)):
        study.score(*study.sample_feasible(int(o.population)))
        study.tick(g + 1, o.generations)


RANDOM = Strategy("random", RandomOptions, run, aliases={"batch": "population", "batches": "generations"},
                  description="uniform feasible samples, the baseline")

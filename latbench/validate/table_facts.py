"""What a table records about how its prices were taken, read for an end-to-end check: the
resolutions it covers, whether an agent measures under its profile, and the statistic its rows
price (with the report lines comparing that statistic to the yardstick's)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..coverage import table_resolutions
from ..device import DeviceProfile
from ..errors import UsageError
from ..measure import TimingSettings
from ..store import LatencyTable, ProfileMismatchError
from ..yardstick import PLURAL, STATISTICS, YardstickSettings


def covered_resolutions(table: LatencyTable, space) -> tuple[int, ...]:
    """The space's resolutions the table's rows were profiled for (rows record extra["resolutions"])."""
    if space.resolution_position is None:
        return space.resolutions
    seen = set(table_resolutions(table))
    res = tuple(r for r in space.resolutions if r in seen)
    if not res:
        raise UsageError(f"{table.path} records no resolution of space {space.name!r} "
                         f"(it was not profiled from that space): pass `resolutions`")
    return res


def agent_for_table(table: LatencyTable, device: str | None = None, **options: Any):
    """The agent that measures under `table`'s profile: the profile's agent with the settings that
    reproduce it (`Agent.options_from_profile`), any option given (not None) overriding them;
    refused in one line, naming both profiles, when it would not measure under that profile."""
    from device_agents import agent_class, agent_options, get_agent

    profile = table.require_profile()
    want = agent_class(profile.agent).options_from_profile(profile)
    dev = device or profile.agent
    agent = get_agent(dev, **agent_options(dev, options, defaults=want))
    try:
        check_agent(agent, table)
    except BaseException:
        agent.close()
        raise
    return agent


def timing_of_table(table: LatencyTable, **overrides: Any) -> TimingSettings:
    """The timing `table` was profiled with (else the defaults), with each override given (not
    None) applied: what the estimator row times subnets and baseline ops with."""
    base = table.timing or TimingSettings()
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


def check_agent(agent, table: LatencyTable) -> DeviceProfile:
    """The table's profile, after checking the agent measures under exactly that profile."""
    have = table.profile
    if have is None:
        raise UsageError(f"{table.path}: the table has no device profile (nothing was profiled into it)")
    mine = agent.profile
    if mine.id != have.id:
        diffs = "; ".join(have.differences(mine))
        raise ProfileMismatchError(
            f"{table.path} was profiled on {have.describe()}, but this agent is {mine.describe()} "
            f"({diffs}): measure with the table's device and settings")
    return have


# what a table row's estimator prices, in words (the store's ESTIMATORS; others by their name)
PRICES = {"median": "medians", "mean": "means", "min": "minimums",
          "round_min": "fastest-round medians", "value": "imported values (statistic not recorded)"}


@dataclass(frozen=True)
class TableStatistic:
    """The estimator of a table's ok rows (the most common one) and how many rows use each."""

    estimator: str
    counts: dict[str, int]

    @property
    def prices(self) -> str:
        return PRICES.get(self.estimator, f"{self.estimator} values")

    def describe(self) -> str:
        """e.g. 'means (96 rows)', or with the others when the rows are mixed."""
        others = [f"{n} {e}" for e, n in sorted(self.counts.items()) if e != self.estimator]
        return (f"{self.prices} ({self.counts.get(self.estimator, 0)} rows"
                + (f"; also {', '.join(others)}" if others else "") + ")")

    def to_dict(self) -> dict[str, Any]:
        return {"estimator": self.estimator, "prices": self.prices, "counts": dict(self.counts)}


def table_statistic(table: LatencyTable) -> TableStatistic:
    """What the table's prices are: its ok rows' estimator column (the most common one)."""
    counts = table.estimators()
    return TableStatistic(max(counts, key=lambda e: (counts[e], e)) if counts else "", counts)


def statistic_lines(table: TableStatistic, yardstick: YardstickSettings) -> list[str]:
    """The statistics a report compares, and one more line when they are of different kinds."""
    lines = [f"statistic: the table prices {table.describe()}; the yardstick reads the {yardstick.describe()}"]
    if table.estimator != yardstick.statistic:
        like = f" (--statistic {table.estimator} reads {table.prices})" if table.estimator in STATISTICS else ""
        lines.append(f"the table prices {table.prices}, the yardstick reads {PLURAL[yardstick.statistic]}: "
                     f"the two statistics differ, and so may the figures below{like}")
    return lines

"""How the intervals of one read are computed: the ``Bars`` settings, built once and passed to every table.

A read (estimates, pairs, influence, status, the figures) shows many intervals; they must all be the same kind of
interval, or a figure contradicts the table beside it. So the four settings that decide an interval (method,
delta, per-example or simultaneous, and the run's plan the anytime mixture is tuned to) travel together as one
frozen, checked object, from the API boundary down to ``bounds``. Nothing below the boundary takes them apart.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from raymem.estimator import bounds
from raymem.estimator.joint_bounds import Plan
from raymem.estimator.per_distinct import per_distinct


@dataclass(frozen=True)
class Bars:
    """The interval settings of one read.

    Attributes:
        method: ``anytime`` (valid at every look; the default), ``fixed`` (valid at one planned trial count),
            ``chernoff`` or ``hoeffding`` (the earlier per-term bars, for comparison).
        delta: every interval holds with probability 1 - delta (with ``simultaneous``: all of a family at once).
        simultaneous: the intervals of a family (all training examples, or all estimated pairs) hold together,
            by a union bound (delta / family size).
        planned_trials, subset_ratio: the run's plan, to which the anytime mixture is tuned (None: the paper's
            2,000 trials at ratio 0.7). ``for_run`` fills them from a run.
    """

    method: str = bounds.DEFAULT_METHOD
    delta: float = bounds.DEFAULT_DELTA
    simultaneous: bool = False
    planned_trials: int | None = None
    subset_ratio: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "method", bounds.check_method(self.method))
        object.__setattr__(self, "delta", bounds.check_delta(self.delta))
        object.__setattr__(self, "simultaneous", bool(self.simultaneous))
        self.plan  # noqa: B018 - refuse a bad plan here, at construction, not in the middle of a read

    @property
    def plan(self) -> Plan:
        """The anytime mixture's tuning: the planned trials, the subset ratio and the nominal level ln(1/delta)
        (so that a simultaneous band uses the same mixture as the per-example bars and nests around them)."""
        return Plan.of(self.planned_trials, self.subset_ratio, math.log(1.0 / self.delta))

    def for_run(self, planned_trials: int | None, subset_ratio: float | None) -> "Bars":
        """These settings tuned to a run's plan."""
        return dataclasses.replace(self, planned_trials=planned_trials, subset_ratio=subset_ratio)

    def using(self, method: str) -> "Bars":
        """The same settings with another method (status judges ``until_halfwidth`` on the anytime bars)."""
        return dataclasses.replace(self, method=method)

    def family_delta(self, family_size: int) -> float:
        """The delta each member of a family of ``family_size`` intervals gets."""
        return bounds.family_delta(self.delta, family_size, self.simultaneous)

    def difference(self, hits_in, n_in, hits_out, n_out, family_size: int):
        """(lo, hi) of rate_in - rate_out for every entry, one member of a family of ``family_size``; computed once
        per distinct tuple of counts (many examples share them)."""
        return per_distinct_difference(hits_in, n_in, hits_out, n_out, self.family_delta(family_size), self.method,
                                       self.plan)

    def to_dict(self) -> dict:
        """The settings as JSON-able data (what the accumulator's pair-reader process is sent)."""
        return dataclasses.asdict(self)


def per_distinct_difference(hits_in, n_in, hits_out, n_out, delta: float, method: str = bounds.DEFAULT_METHOD,
                            plan: Plan | None = None):
    """``bounds.difference_interval`` for every entry, evaluated once per distinct tuple of counts."""
    delta, method = bounds.check_delta(delta), bounds.check_method(method)
    return per_distinct(lambda a, b, c, d: bounds.difference_interval(a, b, c, d, delta, method=method, plan=plan),
                        hits_in, n_in, hits_out, n_out)

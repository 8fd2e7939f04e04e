"""A run's counts together with what the run knows (its info and labels): the one reader.

The accumulator actor holds a ``RunView`` over its live counts; the offline path builds one from
the trial log. Both answer through the same methods, so both give the same numbers. The anytime bars
are tuned to the run's plan: its configured trial count (``info.config["trials"]``) and subset ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from raymem.estimator import bounds, report
from raymem.estimator.bars import Bars
from raymem.estimator.counts import Counts
from raymem.estimator.report import PairSelection, StatusQuestions
from raymem.store.run_info import RunInfo


def planned_trials(info: RunInfo) -> int | None:
    """The run's planned trial count (its config's "trials"), to which the anytime bars are tuned."""
    trials = info.config.get("trials") if isinstance(info.config, dict) else None
    return int(trials) if isinstance(trials, (int, float)) and trials >= 1 else None


def subset_ratio(info: RunInfo) -> float | None:
    """m / n of the run's subsets, or None when it is degenerate."""
    n, m = info.n_train, info.subset_size
    return m / n if n and 0 < m < n else None


def run_bars(info: RunInfo, method: str = bounds.DEFAULT_METHOD, delta: float = bounds.DEFAULT_DELTA,
             simultaneous: bool = False) -> Bars:
    """The :class:`Bars` of a read of this run: the caller's choices tuned to the run's plan (the one way every
    reader, live or offline, makes them)."""
    return Bars(method, delta, simultaneous, planned_trials(info), subset_ratio(info))


@dataclass
class RunView:
    """A run's counts with what the run knows (info, canaries): every read, answered the same live or offline.

    Each reader takes the read's :class:`Bars` (default: ``bars()``, tuned to this run's planned trials and
    subset ratio), so a live and an offline read of the same trials give the same intervals.
    """
    info: RunInfo
    counts: Counts
    flipped: np.ndarray | None = None   # bool (n_train,): training labels flipped as canaries
    source: str = "log"                 # "log" (rebuilt offline) or "actor" (live)

    @property
    def planned_trials(self) -> int | None:
        """The run's planned trial count (:func:`planned_trials`)."""
        return planned_trials(self.info)

    @property
    def subset_ratio(self) -> float | None:
        """m / n of the run's subsets (:func:`subset_ratio`)."""
        return subset_ratio(self.info)

    def bars(self, method: str = bounds.DEFAULT_METHOD, delta: float = bounds.DEFAULT_DELTA,
             simultaneous: bool = False) -> Bars:
        """The read's :class:`Bars`, tuned to this run's plan (:func:`run_bars`)."""
        return run_bars(self.info, method, delta, simultaneous)

    @property
    def influence_scope(self) -> str:
        """"full" or "class": which pairs the run's counts estimate (``raymem.estimator.influence_scope``)."""
        return self.counts.influence_scope

    def fdr_hypotheses(self, min_mem: float) -> int:
        """How many pairs an FDR selection at ``min_mem`` tests: the pairs the scope estimates whose training
        example has mem >= min_mem (full: those rows x n_test; class: each x the test examples of its class)."""
        return self.counts.pair_hypotheses(self.counts.all.memorization() >= min_mem)

    def mem_table(self, bars: Bars | None = None) -> pa.Table:
        """Memorization of every training example with its intervals (``report.mem_table``) and canary flags."""
        table = report.mem_table(self.counts, bars or self.bars())
        if self.flipped is not None:
            table = table.append_column("label_flipped", pa.array(self.flipped[self.counts.rows]))
        return table

    def pairs_table(self, bars: Bars | None = None, selected: PairSelection = PairSelection(),
                    n_hypotheses: int | None = None) -> pa.Table:
        """High-influence pairs with intervals, optionally selected at a false discovery rate
        (``report.pairs_table``)."""
        return report.pairs_table(self.counts, bars or self.bars(), selected, n_hypotheses=n_hypotheses)

    def influence_table(self, test_index: int, bars: Bars | None = None, top: int = 10) -> pa.Table:
        """The top influencers of one test example (``report.influence_table``)."""
        return report.influence_table(self.counts, test_index, bars or self.bars(), top=top)

    def influenced_table(self, train_index: int, bars: Bars | None = None, top: int = 10) -> pa.Table:
        """The test examples one training example influences most (``report.influenced_table``)."""
        return report.influenced_table(self.counts, train_index, bars or self.bars(), top=top)

    def status(self, bars: Bars | None = None, questions: StatusQuestions = StatusQuestions(),
               n_hypotheses: int | None = None) -> dict:
        """The convergence summary (``report.convergence_summary``) with the run's name, source, target and canaries."""
        summary = report.convergence_summary(self.counts, bars or self.bars(), questions,
                                             subset_size=self.info.subset_size, n_hypotheses=n_hypotheses)
        summary = {
            "run": self.info.name,
            "run_id": self.info.run_id,
            "source": self.source,
            "trials_target": self.info.config.get("trials", self.counts.trials),
            "pairs_pending": self.counts.pending,
            "influence_scope": self.counts.influence_scope,
            **summary,
        }
        if self.flipped is not None and self.counts.trials:
            summary["canaries"] = report.canary_recall(self.counts.all.memorization(), self.flipped[self.counts.rows])
        return summary

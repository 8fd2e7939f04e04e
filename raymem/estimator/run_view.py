"""A run's counts together with what the run knows (its info and labels): the one reader.

The accumulator actor holds a ``RunView`` over its live counts; the offline path builds one from
the trial log. Both answer through the same methods, so both give the same numbers. The anytime bars
are tuned to the run's plan: its configured trial count (``info.config["trials"]``) and subset ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from raymem.estimator import formulas, report
from raymem.estimator.counts import Counts
from raymem.store.run_info import RunInfo


@dataclass
class RunView:
    """A run's counts with what the run knows (info, canaries): every read, answered the same live or offline.

    The interval arguments of each reader (``delta``, ``simultaneous``, ``method``) mean what they mean in
    ``report``; the anytime bars are tuned to this run's planned trials and subset ratio (``plan_kwargs``).
    """
    info: RunInfo
    counts: Counts
    flipped: np.ndarray | None = None   # bool (n_train,): training labels flipped as canaries
    source: str = "log"                 # "log" (rebuilt offline) or "actor" (live)

    @property
    def planned_trials(self) -> int | None:
        """The run's planned trial count (its config's "trials"), to which the anytime bars are tuned."""
        trials = self.info.config.get("trials") if isinstance(self.info.config, dict) else None
        return int(trials) if isinstance(trials, (int, float)) and trials >= 1 else None

    @property
    def subset_ratio(self) -> float | None:
        """m / n of the run's subsets, or None when it is degenerate."""
        n, m = self.info.n_train, self.info.subset_size
        return m / n if n and 0 < m < n else None

    def plan_kwargs(self) -> dict:
        """``planned_trials`` and ``subset_ratio``: what the anytime bars of this run are tuned to."""
        return {"planned_trials": self.planned_trials, "subset_ratio": self.subset_ratio}

    @property
    def influence_scope(self) -> str:
        """"full" or "class": which pairs the run's counts estimate (``raymem.estimator.influence_scope``)."""
        return self.counts.influence_scope

    def fdr_hypotheses(self, min_mem: float) -> int:
        """How many pairs an FDR selection at ``min_mem`` tests: the pairs the scope estimates whose training
        example has mem >= min_mem (full: those rows x n_test; class: each x the test examples of its class)."""
        return self.counts.pair_hypotheses(self.counts.all.memorization() >= min_mem)

    def mem_table(self, delta: float = report.DEFAULT_DELTA, simultaneous: bool = False,
                  method: str = report.DEFAULT_METHOD) -> pa.Table:
        """Memorization of every training example with its intervals (``report.mem_table``) and canary flags."""
        table = report.mem_table(self.counts, delta=delta, simultaneous=simultaneous, method=method, **self.plan_kwargs())
        if self.flipped is not None:
            table = table.append_column("label_flipped", pa.array(self.flipped[self.counts.rows]))
        return table

    def pairs_table(
        self,
        min_infl: float = formulas.PAPER_MIN_INFL,
        min_mem: float = formulas.PAPER_MIN_MEM,
        delta: float = report.DEFAULT_DELTA,
        simultaneous: bool = False,
        method: str = report.DEFAULT_METHOD,
        fdr: float | None = None,
        n_hypotheses: int | None = None,
    ) -> pa.Table:
        """High-influence pairs with intervals, optionally selected at a false discovery rate (``report.pairs_table``)."""
        return report.pairs_table(self.counts, min_infl=min_infl, min_mem=min_mem, delta=delta, simultaneous=simultaneous,
                                  method=method, fdr=fdr, n_hypotheses=n_hypotheses, **self.plan_kwargs())

    def influence_table(
        self, test_index: int, top: int = 10, delta: float = report.DEFAULT_DELTA, simultaneous: bool = False,
        method: str = report.DEFAULT_METHOD,
    ) -> pa.Table:
        """The top influencers of one test example (``report.influence_table``)."""
        return report.influence_table(self.counts, test_index, top=top, delta=delta, simultaneous=simultaneous,
                                      method=method, **self.plan_kwargs())

    def status(
        self,
        delta: float = report.DEFAULT_DELTA,
        simultaneous: bool = False,
        target_halfwidth: float = report.DEFAULT_TARGET_HALFWIDTH,
        method: str = report.DEFAULT_METHOD,
        until_halfwidth: float | None = None,
        until_jaccard: float | None = None,
        pairs_fdr: float | None = report.STATUS_FDR,
        n_hypotheses: int | None = None,
    ) -> dict:
        """The convergence summary (``report.convergence_summary``) with the run's name, source, target and canaries."""
        summary = report.convergence_summary(
            self.counts,
            subset_size=self.info.subset_size,
            delta=delta,
            simultaneous=simultaneous,
            target_halfwidth=target_halfwidth,
            method=method,
            planned_trials=self.planned_trials,
            until_halfwidth=until_halfwidth,
            until_jaccard=until_jaccard,
            pairs_fdr=pairs_fdr,
            n_hypotheses=n_hypotheses,
        )
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

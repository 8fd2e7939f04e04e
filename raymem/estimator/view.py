"""A run's counts together with what the run knows (its info and labels): the one reader.

The accumulator actor holds a ``RunView`` over its live counts; the offline path builds one from
the trial log. Both answer through the same methods, so both give the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from raymem.estimator import formulas, report
from raymem.estimator.counts import Counts
from raymem.estimator.run_files import RunInfo


@dataclass
class RunView:
    info: RunInfo
    counts: Counts
    flipped: np.ndarray | None = None   # bool (n_train,): training labels flipped as canaries
    source: str = "log"                 # "log" (rebuilt offline) or "actor" (live)

    def mem_table(self, delta: float = report.DEFAULT_DELTA, simultaneous: bool = False) -> pa.Table:
        table = report.mem_table(self.counts, delta=delta, simultaneous=simultaneous)
        if self.flipped is not None:
            table = table.append_column("label_flipped", pa.array(self.flipped[self.counts.rows]))
        return table

    def pairs_table(
        self,
        min_infl: float = formulas.PAPER_MIN_INFL,
        min_mem: float = formulas.PAPER_MIN_MEM,
        delta: float = report.DEFAULT_DELTA,
        simultaneous: bool = False,
    ) -> pa.Table:
        return report.pairs_table(self.counts, min_infl=min_infl, min_mem=min_mem, delta=delta, simultaneous=simultaneous)

    def influence_table(
        self, test_index: int, top: int = 10, delta: float = report.DEFAULT_DELTA, simultaneous: bool = False
    ) -> pa.Table:
        return report.influence_table(self.counts, test_index, top=top, delta=delta, simultaneous=simultaneous)

    def status(
        self,
        delta: float = report.DEFAULT_DELTA,
        simultaneous: bool = False,
        target_halfwidth: float = report.DEFAULT_TARGET_HALFWIDTH,
    ) -> dict:
        summary = report.convergence_summary(
            self.counts,
            subset_size=self.info.subset_size,
            delta=delta,
            simultaneous=simultaneous,
            target_halfwidth=target_halfwidth,
        )
        summary = {
            "run": self.info.name,
            "run_id": self.info.run_id,
            "source": self.source,
            "trials_target": self.info.config.get("trials", self.counts.trials),
            "pairs_pending": self.counts.pending,
            **summary,
        }
        if self.flipped is not None and self.counts.trials:
            mem = formulas.memorization(
                self.counts.all.in_hits, self.counts.all.n_in, self.counts.all.out_hits, self.counts.all.n_out
            )
            summary["canaries"] = report.canary_recall(mem, self.flipped[self.counts.rows])
        return summary

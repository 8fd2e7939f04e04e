"""Writing results: Parquet tables and PNG figures, each written atomically (``store.safe_files.write_atomic``)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from raymem.store.safe_files import write_atomic


def write_parquet(table: pa.Table, out: str | Path, flag: str = "--out") -> str:
    """Write ``table`` to ``out`` as zstd Parquet, atomically; return ``out``."""
    return write_atomic(out, lambda buffer: pq.write_table(table, buffer, compression="zstd"), flag)


def mem_figure(table: pa.Table, out: str | Path, title: str = "") -> str:
    """Histogram of memorization estimates and of their interval half-widths, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    mem = table.column("mem").to_numpy()
    half = (table.column("mem_hi").to_numpy() - table.column("mem_lo").to_numpy()) / 2
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].hist(mem, bins=np.linspace(-1, 1, 41), color="#4c72b0")
    axes[0].set_xlabel("memorization estimate")
    axes[0].set_ylabel("training examples")
    axes[0].set_yscale("log")
    axes[1].hist(half, bins=40, color="#dd8452")
    axes[1].set_xlabel("Chernoff half-width")
    fig.suptitle(title or "memorization")
    return save_figure(fig, out)


def consistency_figure(table: pa.Table, out: str | Path, title: str = "") -> str:
    """Jaccard and mean |difference| against the threshold, for mem and infl (as the paper's Fig. C.2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table.to_pylist()
    fig, axes = plt.subplots(2, 2, figsize=(9, 6))
    for r, quantity in enumerate(("mem", "infl")):
        sel = [x for x in rows if x["quantity"] == quantity]
        th = [x["threshold"] for x in sel]
        axes[r][0].plot(th, [x["mean_abs_diff"] for x in sel], marker="o")
        axes[r][0].set_ylabel(f"{quantity}: mean |difference|")
        axes[r][1].plot(th, [x["jaccard"] for x in sel], marker="o", color="#dd8452")
        axes[r][1].set_ylabel(f"{quantity}: Jaccard")
        axes[r][1].set_ylim(0, 1.05)
        for ax in axes[r]:
            ax.set_xlabel("threshold")
    fig.suptitle(title or "consistency")
    return save_figure(fig, out)


def save_figure(fig, out: str | Path, flag: str = "--figure") -> str:
    """Write ``fig`` to ``out`` as a PNG, atomically; close the figure either way; return ``out``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        return write_atomic(out, lambda buffer: fig.savefig(buffer, dpi=110, format="png"), flag)
    finally:
        plt.close(fig)

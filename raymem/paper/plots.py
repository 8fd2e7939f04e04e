"""Writing results: tables (Parquet or CSV) and PNG figures, each written atomically (``safe_files.write_atomic``)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from raymem.errors import RaymemError
from raymem.store.safe_files import check_output_path, write_atomic

#: The table formats an output path may name, by its extension: the extension alone chooses the format, so a file
#: is never one format under another's name.
TABLE_FORMATS = (".parquet", ".csv")


def write_parquet(table: pa.Table, out: str | Path, flag: str = "--out") -> str:
    """Write ``table`` to ``out`` as zstd Parquet, atomically; return ``out``."""
    return write_atomic(out, lambda buffer: pq.write_table(table, buffer, compression="zstd"), flag)


def check_table_path(out: str | Path, flag: str = "--out") -> str:
    """Return ``out`` when a table can be written there in the format its extension names (:data:`TABLE_FORMATS`).

    Raises:
        RaymemError: another extension, a folder, or a folder that does not exist.
    """
    text = check_output_path(out, flag)
    if not text.lower().endswith(TABLE_FORMATS):
        raise RaymemError(f"{flag} {text} names no table format; end it in .parquet (Parquet) or .csv (CSV).")
    return text


def write_table(table: pa.Table, out: str | Path, flag: str = "--out") -> str:
    """Write ``table`` to ``out`` as Parquet or CSV, as its extension says, atomically; return ``out``."""
    text = check_table_path(out, flag)
    if text.lower().endswith(".parquet"):
        return write_parquet(table, text, flag)
    import pyarrow.csv as pacsv

    nested = [f.name for f in table.schema if pa.types.is_nested(f.type)]
    if nested:
        raise RaymemError(f"{flag} {text}: CSV cannot hold the list columns {', '.join(nested)}; "
                          "write .parquet instead.")
    return write_atomic(text, lambda buffer: pacsv.write_csv(table, buffer), flag)


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

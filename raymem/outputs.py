"""Writing results: Parquet tables written atomically, and figures."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from raymem.errors import RaymemError


def check_target(out: str | Path, flag: str = "--out") -> Path:
    """Return ``out`` as a Path if a file can be written there; RaymemError naming ``flag`` otherwise.

    Callers with several outputs check them all before writing any, so a bad one writes nothing.
    """
    out = Path(out)
    if out.is_dir():
        raise RaymemError(f"{flag} {out} is a directory; give a file name such as {out / 'result.parquet'}.")
    if not out.parent.is_dir():
        raise RaymemError(f"{flag} {out}: the folder {out.parent} does not exist; create it first.")
    return out


def _atomic_target(out: str | Path) -> tuple[Path, Path]:
    out = check_target(out)
    return out, out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")


def write_parquet(table: pa.Table, out: str | Path) -> Path:
    """Write ``table`` to ``out`` (temp file + rename: a failure leaves nothing behind)."""
    out, tmp = _atomic_target(out)
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def mem_figure(table: pa.Table, out: str | Path, title: str = "") -> Path:
    """Histogram of memorization estimates and of their interval half-widths, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out, tmp = _atomic_target(out)
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
    return _save_figure(fig, out, tmp)


def consistency_figure(table: pa.Table, out: str | Path, title: str = "") -> Path:
    """Jaccard and mean |difference| against the threshold, for mem and infl (as the paper's Fig. C.2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, tmp = _atomic_target(out)
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
    return _save_figure(fig, out, tmp)


def save_figure(fig, out: str | Path) -> Path:
    """Write matplotlib figure ``fig`` as a PNG to ``out`` atomically (temp file + rename); close it either way."""
    try:
        out, tmp = _atomic_target(out)
    except Exception:
        import matplotlib.pyplot as plt

        plt.close(fig)
        raise
    return _save_figure(fig, out, tmp)


def _save_figure(fig, out: Path, tmp: Path) -> Path:
    """Write ``fig`` as a PNG to ``tmp`` then rename it to ``out``; close the figure either way."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return out

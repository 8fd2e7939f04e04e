"""Every GPU figure raymem states, measured in one run of at most 8 minutes on one GPU: writes docs/gpu-results.md.

    .venv/bin/python scripts/gpu_suite.py                          # on a GPU machine: writes docs/gpu-results.md
    .venv/bin/python scripts/gpu_suite.py --smoke --out /tmp/r.md  # the whole script on CPU in tiny sizes

All on synthetic data of each preset's shape (no download). Four tables:

1. Seconds per epoch of a preset's trial (its model, batch, optimizer, augmentation, mixed precision and XLA as
   ``raymem run`` resolves them here): a few hundred steps timed after warm-up steps, scaled to the steps of one
   epoch of a 70% subset, against the supplement's 90 s (CIFAR-100 ResNet-50), 17 s (ResNet-18) and 7 s (MNIST
   Inception) on a P100; the fast presets have no paper figure.
2. Models/hour of ``mnist``, ``cifar10-fast`` and ``cifar100-fast`` unpacked and packed at K = 1, 4, 8, 16
   (``scripts/bench_packing.py``'s measurement, each in a fresh process, one epoch of the full-size synthetic set,
   model building and prediction included), with the packed-training goal (>= 4x models/hour at the best K for
   an MNIST-class model over K = 1) reported as met or not.
3. Four ``mnist`` trials at 0.25 GPU each sharing one GPU through Ray (``scripts/gpu_check.py``), peak memory each.
4. GPU-hours of a 2,000-trial study of ``cifar100`` and of the fast presets from table 1's seconds per epoch.

Measured in the order 1, 3, 2 (the packs last: they are the longest). A measurement that would start after
``--budget-s`` seconds (default 420) is skipped, and the one running then is stopped ``GRACE_S`` later; its row
says so, and the whole stays under 8 minutes. Without a GPU (and without ``--smoke``) it prints that no GPU is
visible and exits 0, writing nothing. ``--smoke`` never writes docs/gpu-results.md: CPU numbers are not GPU results.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

import bench_packing  # noqa: E402  (a sibling script: its measurement is reused, not copied)
import gpu_check  # noqa: E402

DOCS_RESULTS = REPO / "docs" / "gpu-results.md"
TRIALS = 2000
#: How long past --budget-s the measurement running when the budget ends may go on (8 minutes in all by default).
GRACE_S = 40.0

#: (preset, the supplement's seconds per epoch on a P100 or None): table 1's rows.
EPOCH_PRESETS = (("cifar100", 90.0), ("cifar100-resnet18", 17.0), ("mnist", 7.0),
                 ("cifar10-fast", None), ("cifar100-fast", None), ("mnist-fast", None))
PACK_PRESETS = ("mnist", "cifar10-fast", "cifar100-fast")
#: Table 4's studies: the paper's cifar100 and the fast presets.
STUDY_PRESETS = ("cifar100", "cifar10-fast", "cifar100-fast")


@dataclass(frozen=True)
class Sizes:
    """How much each measurement does: the GPU run's sizes or the smoke run's."""

    warmup_steps: int
    timed_steps: int
    pool: int            # distinct synthetic images the timed steps cycle through
    batch_size: int | None  # None: the preset's
    synthetic: dict      # preset -> training images of table 2 (its data set's size on a GPU)
    packs: tuple[int, ...]
    shared_trials: int
    shared_images: int


GPU_SIZES = Sizes(20, 200, 4096, None, {"mnist": 60000, "cifar10-fast": 50000, "cifar100-fast": 50000},
                  (1, 4, 8, 16), 4, 60000)
SMOKE_SIZES = Sizes(1, 2, 64, 16, {"mnist": 48, "cifar10-fast": 48, "cifar100-fast": 48}, (1, 2), 2, 48)


def epoch_child(preset: str, sizes: Sizes) -> dict:
    """Table 1's measurement of ``preset`` in this process: compiled as ``fit.train_model`` compiles it."""
    import resource

    import numpy as np

    from raymem.config.experiment import resolve_config
    from raymem.training import fit
    from raymem.training.keras_backend import keras
    from raymem.training.models import build_model
    from raymem.training.schedules import make_schedule, recipe_optimizer

    config = resolve_config(preset, {"batch_size": sizes.batch_size} if sizes.batch_size else {})
    data = bench_packing._synthetic(config, sizes.pool)
    fit.limit_tf_threads(config.resources.cpus_per_trial)
    import tensorflow as tf

    settings = fit.accelerator_settings(config)
    keras.mixed_precision.set_global_policy("mixed_float16" if settings["mixed_precision"] else "float32")
    n_train = _preset_train_size(config.dataset)
    steps_per_epoch = -(-config.subset_size(n_train) // config.recipe.batch_size)
    model = build_model(config.model, tuple(data.input_shape), data.num_classes, **config.model_params)
    schedule = make_schedule(config.recipe.schedule, config.recipe.base_lr, config.recipe.epochs, steps_per_epoch,
                             **config.recipe.schedule_params)
    model.compile(optimizer=recipe_optimizer(config.recipe, schedule), loss=fit.recipe_loss(
        config.recipe.label_smoothing), metrics=["accuracy"], jit_compile=settings["xla"])
    batches = fit.train_pipeline(config, data, np.ones(len(data.y_train), dtype=bool), 0).repeat()
    # two fits: the second reuses the first's compiled step, and each returns only once the device is done
    model.fit(batches, epochs=1, steps_per_epoch=sizes.warmup_steps, verbose=0)
    started = time.perf_counter()
    model.fit(batches, epochs=1, steps_per_epoch=sizes.timed_steps, verbose=0)
    per_step = (time.perf_counter() - started) / sizes.timed_steps
    gpu = bool(tf.config.list_physical_devices("GPU"))
    return {"preset": preset, "model": config.model, "batch": config.recipe.batch_size,
            "steps_per_epoch": steps_per_epoch, "seconds_per_step": per_step,
            "seconds_per_epoch": per_step * steps_per_epoch, "epochs": config.recipe.epochs, **settings,
            "peak_mb": (tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20 if gpu
                        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def _preset_train_size(dataset: str) -> int:
    from raymem.training.flops import dataset_shape

    return dataset_shape(dataset)[2]


class Suite:
    """Runs the measurements in order, each in a fresh process on a GPU (in this one in smoke mode), until the
    time budget is spent."""

    def __init__(self, sizes: Sizes, smoke: bool, budget_s: float):
        self.sizes, self.smoke, self.budget_s = sizes, smoke, budget_s
        self.started = time.perf_counter()

    def over_budget(self) -> bool:
        return time.perf_counter() - self.started > self.budget_s

    def time_left(self) -> float:
        """Seconds the measurement that starts now may run: the budget's rest and a grace for the last one."""
        return max(30.0, self.budget_s + GRACE_S - (time.perf_counter() - self.started))

    def epoch(self, preset: str) -> dict | None:
        if self.over_budget():
            return None
        if self.smoke:
            return epoch_child(preset, self.sizes)
        try:
            out = subprocess.run([sys.executable, __file__, "--child-epoch", preset], capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, timeout=self.time_left())
        except subprocess.TimeoutExpired:
            return {"preset": preset, "error": "stopped at the suite's time budget"}
        if out.returncode != 0:
            return {"preset": preset, "error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "?"}
        return json.loads(out.stdout.strip().splitlines()[-1])

    def pack(self, preset: str, pack: int) -> dict | None:
        """bench_packing's row: pack 0 is the unpacked Keras trial."""
        if self.over_budget():
            return None
        args = argparse.Namespace(preset=preset, model=None, epochs=1, synthetic=self.sizes.synthetic[preset],
                                  child_pack=pack)
        if not self.smoke:
            try:
                return bench_packing._measure(args, pack, timeout=self.time_left())
            except subprocess.TimeoutExpired:
                return {"error": "stopped at the suite's time budget"}
            except SystemExit as failed:
                return {"error": str(failed).strip().splitlines()[-1]}
        buffer = StringIO()
        with redirect_stdout(buffer):
            bench_packing._child(args)
        return json.loads(buffer.getvalue().strip().splitlines()[-1])

    def shared(self, num_gpus: int) -> tuple[list[dict], float] | dict | None:
        """gpu_check's trials at 0.25 GPU through Ray; in smoke mode one after another in this process (no GPU to
        share, and a Ray start costs more than the smoke run's budget)."""
        if self.over_budget():
            return None
        from raymem.config.experiment import resolve_config

        n = self.sizes.shared_images
        overrides = {"epochs": 1, "trials": self.sizes.shared_trials, "gpus_per_trial": 0.25, "cpus_per_trial": 1.0}
        config = resolve_config("mnist", {**overrides, **({"batch_size": 16} if self.smoke else {})})
        data = bench_packing._synthetic(config, n)
        if not self.smoke:
            try:
                return gpu_check.shared_trials(config, data, 0.25, self.sizes.shared_trials, num_gpus,
                                               timeout=self.time_left())
            except Exception as failed:  # a timeout or a failed trial: the row says which
                return {"error": f"{type(failed).__name__}: {str(failed).strip()[:200]}"}
        started = time.time()
        results = [gpu_check.trial(config, data, k, 0.25) for k in range(self.sizes.shared_trials)]
        return results, time.time() - started


def versions() -> dict:
    import ray
    import tensorflow as tf

    import raymem
    from raymem.training.keras_backend import keras

    return {"TensorFlow": tf.__version__, "Keras": keras.__version__, "Ray": ray.__version__,
            "raymem": raymem.__version__}


def _f(value, spec: str = ".1f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def _skipped(row: dict | None) -> str | None:
    if row is None:
        return "skipped: the suite's time budget was spent"
    return f"failed: {row['error']}" if "error" in row else None


def epoch_table(rows: list[tuple[str, float | None, dict | None]]) -> list[str]:
    lines = ["## 1. Seconds per epoch (one trial, a 70% subset)", "",
             "| preset | model | batch | mixed precision | XLA | s/step | steps/epoch | s/epoch | paper s/epoch "
             "(P100) | paper / measured | peak MiB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for preset, paper, row in rows:
        why = _skipped(row)
        if why:
            lines.append(f"| {preset} | {why} | | | | | | | {_f(paper, 'g')} | | |")
            continue
        ratio = f"{paper / row['seconds_per_epoch']:.2f}x" if paper else "-"
        lines.append(f"| {preset} | {row['model']} | {row['batch']} | {row['mixed_precision']} | {row['xla']} | "
                     f"{row['seconds_per_step']:.4f} | {row['steps_per_epoch']} | {row['seconds_per_epoch']:.2f} | "
                     f"{_f(paper, 'g')} | {ratio} | {row['peak_mb']:.0f} |")
    return lines


def pack_table(preset: str, sizes: Sizes, rows: list[tuple[str, dict | None]]) -> list[str]:
    lines = [f"### {preset}: {sizes.synthetic[preset]:,} synthetic images, 1 epoch per model", "",
             "| trial | models | seconds | models/hour | vs unpacked | vs K = 1 | peak MiB |",
             "|---|---|---|---|---|---|---|"]
    rates = {label: r["models"] * 3600 / r["seconds"] for label, r in rows if not _skipped(r)}
    for label, r in rows:
        why = _skipped(r)
        if why:
            lines.append(f"| {label} | {why} | | | | | |")
            continue
        rate = rates[label]
        lines.append(f"| {label} | {r['models']} | {r['seconds']:.1f} | {rate:,.0f} | "
                     f"{_f(rate / rates['unpacked'] if 'unpacked' in rates else None, '.2f')}x | "
                     f"{_f(rate / rates['K = 1'] if 'K = 1' in rates else None, '.2f')}x | {r['peak_mb']:.0f} |")
    packed = [rate for label, rate in rates.items() if label.startswith("K = ")]
    if "K = 1" in rates and len(packed) > 1:
        best = max(packed) / rates["K = 1"]
        goal = "met" if best >= 4 else "not met"
        lines += ["", f"Best K over K = 1: {best:.2f}x models/hour; the packing goal (>= 4x) is **{goal}**"
                      + (" (MNIST-class model)" if preset == "mnist" else "") + "."]
    return lines + [""]


def shared_table(result: tuple[list[dict], float] | dict | None, smoke: bool) -> list[str]:
    lines = ["## 3. Four 0.25-GPU mnist trials sharing one GPU (Ray, 1 epoch each)", ""]
    if result is None or isinstance(result, dict):
        return lines + [_skipped(result), ""]
    results, wall = result
    if smoke:
        lines += ["(smoke run: one after another in one process, no Ray, no GPU)", ""]
    lines += ["| trial | GPU | share | cap MiB | peak MiB | wall s | train s |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['trial']} | {','.join(map(str, r['gpu_ids'])) or '-'} | {r['mode']} | "
                     f"{_f(r['limit_mb'], 'd')} | {r['peak_mb']:.0f} | {r['finished'] - r['started']:.1f} | "
                     f"{r['train_seconds']:.1f} |")
    spans = sorted((r["started"], r["finished"]) for r in results)
    overlapping = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    return lines + ["", f"{len(results)} trials: {wall:.1f} s wall, {len(results) / wall * 3600:,.0f} models/hour, "
                        f"at most {overlapping} running at once.", ""]


def study_table(epochs: dict[str, dict | None]) -> list[str]:
    lines = [f"## 4. A {TRIALS:,}-trial study on one GPU, from table 1 (one trial at a time; packing or sharing "
             "divides it by table 2's or 3's gain)", "",
             "| preset | epochs | s/epoch | GPU-hours | paper's plan (P100) |", "|---|---|---|---|---|"]
    from raymem.config.experiment import PRESETS

    for preset in STUDY_PRESETS:
        row, paper = epochs.get(preset), dict(EPOCH_PRESETS).get(preset)
        why = _skipped(row)
        planned = f"{TRIALS * PRESETS[preset].recipe.epochs * paper / 3600:,.0f}" if paper else "-"
        if why:
            lines.append(f"| {preset} | {why} | | | {planned} |")
            continue
        hours = TRIALS * row["epochs"] * row["seconds_per_epoch"] / 3600
        lines.append(f"| {preset} | {row['epochs']} | {row['seconds_per_epoch']:.2f} | {hours:,.1f} | {planned} |")
    return lines + [""]


def report(suite: Suite, gpu_name: str, num_gpus: int) -> str:
    """Runs every measurement; returns the Markdown of docs/gpu-results.md."""
    epoch_rows = [(preset, paper, suite.epoch(preset)) for preset, paper in EPOCH_PRESETS]
    shared = suite.shared(num_gpus)  # before the packs: one short measurement, the packs take the rest of the budget
    pack_lines = ["## 2. Models/hour, unpacked and packed (`--pack K`)", ""]
    for preset in PACK_PRESETS:
        rows = [("unpacked", suite.pack(preset, 0))] + [(f"K = {k}", suite.pack(preset, k)) for k in suite.sizes.packs]
        pack_lines += pack_table(preset, suite.sizes, rows)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    smoke = " --smoke (CPU, tiny sizes: not GPU results)" if suite.smoke else ""
    took = time.perf_counter() - suite.started
    head = ["# GPU results", "", f"Written by `scripts/gpu_suite.py`{smoke} on {stamp}, in {took:.0f} s.", "",
            f"- GPU: {gpu_name}", *[f"- {name}: {v}" for name, v in versions().items()],
            "- data: synthetic, of each preset's shape (no download)", ""]
    return "\n".join(head + epoch_table(epoch_rows) + [""] + pack_lines + shared_table(shared, suite.smoke)
                     + study_table({p: r for p, _, r in epoch_rows})) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the whole suite on CPU in tiny sizes")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write (default: docs/gpu-results.md on a GPU, a temporary file with --smoke)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="skip measurements once this many seconds have passed (default 420: 8 minutes in all)")
    parser.add_argument("--child-epoch", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_epoch:
        print(json.dumps(epoch_child(args.child_epoch, GPU_SIZES)))
        return 0
    gpus = gpu_check.gpus_found()
    if not gpus and not args.smoke:
        print("gpu_suite: no GPU is visible (nvidia-smi missing or listing none); nothing measured, nothing written.")
        return 0
    if args.smoke:
        out = args.out or Path(tempfile.mkdtemp(prefix="gpu-suite-")) / "gpu-results.md"
        if out.resolve() == DOCS_RESULTS.resolve():
            print(f"gpu_suite: error: --smoke writes CPU numbers; give --out another path than {DOCS_RESULTS}.",
                  file=sys.stderr)
            return 2
    else:
        out = args.out or DOCS_RESULTS
    suite = Suite(SMOKE_SIZES if args.smoke else GPU_SIZES, args.smoke, args.budget_s)
    text = report(suite, gpus[0] if gpus else "none (CPU)", max(len(gpus), 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"gpu_suite: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

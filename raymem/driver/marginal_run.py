"""Create or resume a marginal-utility run (``raymem marginal``): the run directory its trials train in.

The arms, the trial-to-arm map and the report are in ``raymem.paper.marginal_utility``. Here a finished
influence run (the *source*) becomes a new run directory beside it (default name ``SOURCE-marginal``):

- ``run.json``: ``kind: "marginal"``, ``source: "runner"``, the source run's recipe as ``config`` (with
  ``trials = 3 K``, the marginal run's ``seed``, no pair counts: a marginal run estimates no influence) and a
  ``design`` naming the source run, the pair selection, the arms and the sets file with its sha256;
- ``labels.parquet``: the source run's labels (canaries flipped as the source trained them);
- ``marginal-sets.parquet``: S_h, the random control R and S'_h.

Then the ordinary runner trains the missing trials (``run_experiment``: the same scheduler, retries,
accumulator and trial log), each on its arm's set. Everything is checked before anything is written.
"""

from __future__ import annotations

import dataclasses

from raymem.errors import RaymemError
from raymem.estimator import formulas
from raymem.paper import marginal_utility
from raymem.store.run_info import RunInfo, new_run_info, read_labels, read_run_info, write_labels, write_run_info
from raymem.store.storage import RunStore
from raymem.config.experiment import ExperimentConfig, _nest, flatten, parse_settings, with_overrides

#: Config keys ``--set`` may change in a marginal run: where and how trials run, never what they train.
MARGINAL_SETTABLE = ("cpus_per_trial", "gpus_per_trial", "nodes_per_trial", "max_attempts", "checkpoint_every",
                     "keep_models", "max_pending", "mixed_precision", "xla")
#: What a marginal run's config fixes whatever the source's: one model per task and no pair counts.
FIXED = {"pack": 1, "track_pairs": False, "pair_shards": 1, "influence_scope": "full"}


def check_models_per_arm(per_arm) -> int:
    """K, the models per arm: a whole number >= 1."""
    if isinstance(per_arm, bool) or not isinstance(per_arm, int) or per_arm < 1:
        raise RaymemError(f"models_per_arm {per_arm!r} is not a number of models per arm; pass a whole number >= 1.",
                          parameter="models_per_arm")
    return per_arm


@dataclasses.dataclass(frozen=True)
class MarginalRequest:
    """What a user asks of a marginal run: its name, K models per arm, the pair selection (None: the paper's
    thresholds, or on resume the run's own), its seed (None: the source run's), ``--set`` items for resource
    keys and the prepared data sets' folder."""

    name: str
    models_per_arm: int
    min_infl: float | None = None
    min_mem: float | None = None
    fdr: float | None = None
    method: str | None = None
    seed: int | None = None
    settings: tuple[str, ...] | None = None
    data_dir: str | None = None

    def __post_init__(self):
        check_models_per_arm(self.models_per_arm)
        from raymem.estimator import bounds

        if self.method is not None:
            bounds.check_method(self.method)
        for name in ("min_infl", "min_mem"):
            if getattr(self, name) is not None:
                bounds.check_threshold(getattr(self, name), name)
        if self.fdr is not None:
            bounds.check_fdr(self.fdr)

    @property
    def trials(self) -> int:
        """The marginal run's trials: K per arm."""
        return len(marginal_utility.ARMS) * self.models_per_arm


def check_source(info: RunInfo, where: str) -> None:
    """Refuse a source run that has no recipe to retrain (ingested) or is itself a marginal run."""
    if info.source != "runner":
        raise RaymemError(f"run {info.name} ({where}) was ingested: it has no recipe (data set, model, training) "
                          "to retrain; the marginal experiment needs a run trained by `raymem run`.")
    if info.kind != "subsets":
        raise RaymemError(f"run {info.name} ({where}) is itself a {info.kind} run; give the influence run it came "
                          f"from ({info.design.get('source_run', 'its source')}).")


def _settings(settings: list[str] | None) -> dict:
    """``--set`` items for a marginal run: only resource keys (the recipe is the source run's)."""
    values = {k: v for k, v in parse_settings(settings).items() if v is not None}
    keys = flatten(_nest(values, "--set"))
    refused = sorted(k for k in keys if k not in MARGINAL_SETTABLE)
    if refused:
        raise RaymemError(f"--set {refused[0]} cannot change in a marginal run: it retrains the source run's recipe; "
                          f"--set may change {', '.join(MARGINAL_SETTABLE)}.")
    return values


def _selection(stored: dict | None, request: MarginalRequest) -> dict:
    """The pair selection asked for: given values, else the stored ones (resume), else the paper's thresholds."""
    stored = stored or {}
    defaults = {"min_infl": formulas.PAPER_MIN_INFL, "min_mem": formulas.PAPER_MIN_MEM, "fdr": None, "method": None}
    chosen = {key: getattr(request, key) if getattr(request, key) is not None else stored.get(key, default)
              for key, default in defaults.items()}
    if chosen["fdr"] is not None and chosen["method"] is None:
        from raymem.estimator import report

        chosen["method"] = report.DEFAULT_METHOD
    return chosen


@dataclasses.dataclass
class Prepared:
    info: RunInfo
    config: ExperimentConfig
    store: RunStore
    created: bool
    missing: list[int]


def prepare(source_store: RunStore, store: RunStore, request: MarginalRequest) -> Prepared:
    """Create the marginal run in ``store`` (or check the one there and raise its K); return what to train.

    Every check (K, the source, the selection, the settings, the data fingerprint) runs before anything is
    written; run.json is written last, so a directory without it is not a run yet.
    """
    source = read_run_info(source_store)
    check_source(source, source_store.uri)
    overrides = _settings(list(request.settings or ()))
    if store.exists("run.json"):
        return _resume(source, store, request, overrides)
    return _create(source_store, source, store, request, overrides)


def _resume(source: RunInfo, store: RunStore, request: MarginalRequest, overrides: dict) -> Prepared:
    from raymem.store.trial_log import trial_ids

    info = read_run_info(store)
    if info.kind != marginal_utility.KIND:
        raise RaymemError(f"{store.uri} already holds a run that is not a marginal run; pick another --name.")
    if info.design.get("source_run_id") != source.run_id:
        raise RaymemError(f"{store.uri} holds the marginal run of another run ({info.design.get('source_run')}); "
                          "pick another --name.")
    stored = info.design.get("selection") or {}
    asked = _selection(stored, request)
    for key in ("min_infl", "min_mem", "fdr", "method"):
        if asked[key] != stored.get(key):
            raise RaymemError(f"marginal run {info.name} was made with pairs selected at {key}={stored.get(key)!r}, "
                              f"not {asked[key]!r}; resume it without that flag or start another with --name.")
    if request.seed is not None and request.seed != info.seed:
        raise RaymemError(f"marginal run {info.name} was made with --seed {info.seed}, not {request.seed}; resume it "
                          "without --seed or start another with --name.")
    marginal_utility.read_sets(store, info)  # the arms' sets are intact before anything trains on them
    config = with_overrides(ExperimentConfig.model_validate(info.config), {**overrides, "trials": request.trials},
                            f"marginal run {info.name}")
    if info.design.get("trials_per_arm") != request.models_per_arm or info.config != config.to_dict():
        info = dataclasses.replace(info, config=config.to_dict(),
                                   design={**info.design, "trials_per_arm": request.models_per_arm})
        write_run_info(store, info)
    done = set(trial_ids(store))
    return Prepared(info, config, store, False, [k for k in range(request.trials) if k not in done])


def _selected_pairs(source_store: RunStore, source: RunInfo, chosen: dict):
    """The source run's pairs at the chosen selection; RaymemError when there are none (S_h would be empty)."""
    from raymem.estimator.log_replay import offline_view
    from raymem.estimator.report import PairSelection

    view = offline_view(source_store)
    bars = view.bars(chosen["method"]) if chosen["method"] is not None else view.bars()
    pairs = view.pairs_table(bars, PairSelection(chosen["min_infl"], chosen["min_mem"], chosen["fdr"]))
    if pairs.num_rows == 0:
        how = (f"at false discovery rate {chosen['fdr']:g}" if chosen["fdr"] is not None else
               f"with infl >= {chosen['min_infl']:g} and mem >= {chosen['min_mem']:g}")
        raise RaymemError(f"run {source.name} has no high-influence pairs {how}, so S_h is empty; loosen the "
                          "selection (e.g. --min-infl 0.1 --min-mem 0.1"
                          + (", or a larger --fdr" if chosen["fdr"] is not None else "")
                          + ") or train the source run longer.")
    return pairs


def _create(source_store: RunStore, source: RunInfo, store: RunStore, request: MarginalRequest,
            overrides: dict) -> Prepared:
    chosen = _selection(None, request)
    seed = source.seed if request.seed is None else request.seed
    config = with_overrides(ExperimentConfig.model_validate(source.config),
                            {**FIXED, "trials": request.trials, "seed": seed, **overrides},
                            f"marginal run of {source.name}")
    pairs = _selected_pairs(source_store, source, chosen)
    labels = read_labels(source_store)
    if labels is None:
        raise RaymemError(f"run {source.name} has no labels.parquet; "
                          "a marginal run retrains on the source run's labels.")
    from raymem.data.datasets import load_dataset

    if load_dataset(config.dataset, request.data_dir, **config.data_options).fingerprint() != source.fingerprint:
        raise RaymemError(f"{config.dataset} is not the data run {source.name} was trained on (fingerprints differ); "
                          "use the same data (--data-dir) to retrain its recipe.")
    sets = marginal_utility.make_sets(pairs.column("train_index").to_numpy(), pairs.column("test_index").to_numpy(),
                                      n_train=source.n_train, seed=config.seed)
    design = {
        "source_run": source_store.uri,
        "source_run_id": source.run_id,
        "source_name": source.name,
        "selection": {**chosen, "pairs": pairs.num_rows, "source_trials": _trial_count(source_store)},
        "arms": [{"name": "full", "removes": None},
                 {"name": "without_high_influence", "removes": "high_influence"},
                 {"name": "without_random", "removes": "random"}],
        "trial_to_arm": marginal_utility.TRIAL_TO_ARM,
        "trials_per_arm": request.models_per_arm,
        "sets_file": marginal_utility.SETS_FILE,
        "sizes": {name: int(len(values)) for name, values in sets.items()},
    }
    info = new_run_info(name=request.name, n_train=source.n_train, n_test=source.n_test, subset_size=source.n_train,
                        seed=config.seed, config=config.to_dict(), fingerprint=source.fingerprint, source="runner",
                        kind=marginal_utility.KIND, design=design)
    write_labels(store, labels[0], labels[1], labels[2])
    info = dataclasses.replace(info, design={**design, "sets_sha256": marginal_utility.write_sets(store, sets)})
    write_run_info(store, info)  # last: a directory without run.json is not a run yet
    return Prepared(info, config, store, True, list(range(request.trials)))


def _trial_count(store: RunStore) -> int:
    from raymem.store.trial_log import trial_ids

    return len(trial_ids(store))

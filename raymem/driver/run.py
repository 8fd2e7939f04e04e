"""``raymem run``: schedule a run's missing trials on Ray and wait until each is acknowledged.

The driver resolves the config, opens (or creates) the run directory, gets or starts the run's
accumulator (which replays the trial log), asks it which trial ids are done, and keeps a window
of the missing trials in flight. Trials ask Ray for the resources their config names and wait
for them (so an autoscaler sees the demand); the window follows the cluster's size as nodes come
and go. A trial that raises, or whose node dies, is tried again up to ``max_attempts`` times and
then reported as failed. Killing the driver loses only the trials in flight: running it again
trains only what the log does not hold.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from raymem.errors import RaymemError
from raymem.estimator.bars import Bars
from raymem.estimator.report import StatusQuestions
from raymem.estimator.run_view import run_bars
from raymem.store.run_info import new_run_info, read_labels, read_run_info, write_labels, write_run_info
from raymem.store.storage import RunStore
from raymem.data import canaries
from raymem.config.experiment import LEGACY_KERAS_ENV, ExperimentConfig, compare_for_resume, gpu_hours
from raymem.driver.lease import DriverLease
from raymem.driver.progress import Progress
from raymem.driver.space import SpaceWaiter, innermost_cause, storage_full_cause


@dataclass
class RunResult:
    name: str
    run_uri: str
    trials_target: int
    trials_done: int
    trained_now: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    retried: dict[int, int] = field(default_factory=dict)
    wall_seconds: float = 0.0
    max_in_flight: int = 0
    stopped_early: str | None = None   # why no more trials were submitted before the budget (--until-*)
    pack: int = 1                                              # trials per pack (resolved when "auto")
    pack_measurements: list = field(default_factory=list)      # --pack auto: {"pack", "step_seconds", ...}


def plan(config: ExperimentConfig) -> dict:
    """What a run of ``config`` would do, without starting anything (``--dry-run``).

    Returns:
        ``preset, dataset, model, trials, subset_ratio, recipe (dict), per_trial (cpus, gpus, nodes),
        executor, pair_shards, estimated_gpu_hours, estimate_basis, train_flops_per_model,
        forward_flops_per_example, flops_basis`` (the FLOPs counted from the Keras model, see training.flops).
    """
    from raymem.training import model_import

    if model_import.is_import_path(config.model):
        model_import.load_builder(config.model)  # a typo in your own model's path is refused here too
    from raymem.training.flops import plan_flops

    hours = gpu_hours(config)
    r, budget = config.resources, config.budget
    flops = plan_flops(config)
    basis = "no paper timing for this preset"
    if hours is not None:
        basis = (f"{config.trials:,} trials x {config.recipe.epochs} epochs x {budget.paper_epoch_seconds:g} s/epoch "
                 f"x {budget.paper_gpus:g} GPU (the paper's P100 timing, supplement B)")
    else:
        basis = _unmeasured_basis(config, flops["train_flops_per_model"]) or basis
    return {
        "preset": config.preset,
        "dataset": config.dataset,
        "model": config.model,
        **({"model_params": config.model_params} if config.model_params else {}),
        "trials": config.trials,
        "subset_ratio": config.subset_ratio,
        "recipe": config.recipe.model_dump(mode="json"),
        "per_trial": {"cpus": r.cpus_per_trial, "gpus": r.gpus_per_trial, "nodes": r.nodes_per_trial},
        "pack": r.pack,
        "executor": "ray-train worker group" if config.uses_train_group else "warm ray tasks"
                    + ("" if r.pack == 1 else f", packs of {r.pack} trials (one trial's resources each)"),
        "pair_shards": (config.estimator.pair_shards
                        if config.estimator.track_pairs and config.estimator.pair_shards > 1 else 0),
        "influence_scope": config.estimator.influence_scope,
        "estimated_gpu_hours": hours,
        "estimate_basis": basis,
        **flops,
    }


def check_own_model(config: ExperimentConfig, data) -> dict:
    """Import your own model (``model: FILE.py:FUNCTION``), build it once on ``data`` and check it, before Ray
    starts; return what run.json records of it (``model_source``: name, params, file, sha256), {} for the catalog's.
    """
    from raymem.training import model_import

    if not model_import.is_import_path(config.model):
        return {}
    source = model_import.check_model(config.model, config.model_params, data.input_shape, data.num_classes,
                                      pack=config.resources.pack != 1)
    return {**source, "params": config.model_params}


def _check_model_source(info, model_source: dict, name: str) -> None:
    """Refuse to resume a run whose own model's source changed (its trials would mix two models)."""
    old = info.model_source.get("sha256")
    if old and old != model_source.get("sha256"):
        raise RaymemError(
            f"run {name} was started with model {info.model_source.get('model')} of source sha256 {old[:12]} but "
            f"{model_source.get('file') or 'its module'} now has sha256 {str(model_source.get('sha256'))[:12]}; "
            "restore the module's source or start a new run with --name.")


def _unmeasured_basis(config: ExperimentConfig, train_flops: int | None) -> str | None:
    """For a config without a timing, on a data set a paper preset studies: "unmeasured" and how its training
    FLOPs compare with that preset's (GPU-hours do not scale with FLOPs alone, so no hours are made up)."""
    from raymem.config.experiment import PRESETS
    from raymem.training.flops import plan_flops

    paper = next((p for p in PRESETS.values() if p.dataset == config.dataset and gpu_hours(p) is not None), None)
    if paper is None or not train_flops:
        return None
    ratio = plan_flops(paper)["train_flops_per_model"] / train_flops
    return (f"unmeasured: no GPU timing of this preset yet; its training FLOPs per model are 1/{ratio:,.0f} of "
            f"preset {paper.preset}'s" if ratio >= 1 else
            f"unmeasured: no GPU timing of this preset yet; its training FLOPs per model are {1 / ratio:,.1f}x "
            f"preset {paper.preset}'s")


def prepare_run(config: ExperimentConfig, store: RunStore, name: str, data, model_source: dict | None = None) -> tuple:
    """Create the run directory, or check that an existing one matches; return (info, run labels).

    ``model_source``: :func:`check_own_model`'s record of your own model, kept in run.json and checked on resume.
    """
    model_source = model_source or {}
    fingerprint = data.fingerprint()
    if store.exists("run.json"):
        info = read_run_info(store)
        if info.source != "runner":
            raise RaymemError(f"{store.uri} holds ingested results, not a raymem run; pick another --name.")
        if info.fingerprint != fingerprint:
            raise RaymemError(
                f"run {name} was trained on data with fingerprint {info.fingerprint.get('labels_sha256', '?')[:12]} "
                f"but {config.dataset} now has {fingerprint.get('labels_sha256', '?')[:12]}; "
                "use the same data or a new --name."
            )
        compare_for_resume(info.config, config, name)
        _check_model_source(info, model_source, name)
        if info.config != config.to_dict():  # a resumable key changed (more trials, other resources, scope, ...)
            info = dataclasses.replace(info, config=config.to_dict())
            write_run_info(store, info)
        train_labels, _, _ = read_labels(store)
        return info, train_labels
    labels = canaries.flip_labels(data.y_train, config.flip_labels, data.num_classes, config.seed)
    info = new_run_info(
        name=name, n_train=len(data.y_train), n_test=len(data.y_test),
        subset_size=config.subset_size(len(data.y_train)),
        seed=config.seed, config=config.to_dict(), fingerprint=fingerprint, source="runner",
    )
    info = dataclasses.replace(info, model_source=dict(model_source))
    write_labels(store, labels, data.y_test, data.y_train, getattr(data, "class_names", ()))
    write_run_info(store, info)  # last: a run directory without run.json is not a run yet
    return info, labels


def check_checkpoint_location(config: ExperimentConfig, store: RunStore) -> None:
    """With checkpoints on, refuse a run whose checkpoint location cannot be written, before anything starts."""
    if not config.resources.checkpoint_every and not config.resources.keep_models:
        return
    from raymem.training.checkpoints import CHECKPOINTS_DIR, check_writable

    try:
        check_writable(store)
    except Exception as exc:  # noqa: BLE001 - any storage error: permissions, a read-only mount, credentials
        raise RaymemError(
            f"cannot write checkpoints under {store.location(CHECKPOINTS_DIR)} ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}); give a writable --storage or turn checkpoints off with "
            "--set checkpoint_every=null."
        ) from None


def train_storage_path(run_uri: str) -> str:
    """Ray Train's ``storage_path`` for worker-group trials: ``RUN/ray-train`` in the run's own storage.

    An ``s3://``/``gs://`` run (or a shared file system) is reachable from every node, so Ray Train's run
    state survives the driver's machine; a local run directory is used as it is (the driver's disk, as before,
    but inside the run instead of a temporary directory).
    """
    if "://" in run_uri:
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(run_uri)
        return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/ray-train", parts.query, ""))
    import os

    return os.path.join(os.path.abspath(os.path.expanduser(run_uri)), "ray-train")


#: Seconds between two updates of the resources requested from the autoscaler while the demand shrinks.
DEMAND_UPDATE_S = 5.0
#: Filesystem types (``/proc/mounts``) that every node of a cluster can mount: a run directory there is shared.
SHARED_FS_TYPES = ("nfs", "nfs4", "cifs", "smb3", "lustre", "gpfs", "ceph", "glusterfs", "beegfs", "fuse.s3fs",
                   "fuse.gcsfuse", "fuse.juicefs", "fuse.mountpoint-s3", "fuse.goofys", "efs", "9p", "virtiofs")


def demand_bundles(config: ExperimentConfig, trials: int) -> list[dict]:
    """The resource bundles of ``trials`` trials, as ``request_resources`` takes them (one per worker of a trial)."""
    r = config.resources
    bundle = {k: v for k, v in (("CPU", r.cpus_per_trial), ("GPU", r.gpus_per_trial)) if v > 0}
    return [dict(bundle) for _ in range(max(0, trials) * r.nodes_per_trial)] if bundle else []


class AutoscalerDemand:
    """Shows the autoscaler the resources of every remaining trial (capped by ``resources.max_pending``).

    The driver submits a window of trials that follows the cluster's current size; alone, that lets an
    autoscaler that starts with no GPU worker see two waiting trials and grow by doubling, one node boot
    per step. ``ray.autoscaler.sdk.request_resources`` asks for the whole remaining demand at once (the
    autoscaler then launches every node it needs in one step, up to each node type's ``max_workers``);
    the request shrinks as trials finish, so nodes are released as the run nears its end, and
    :meth:`release` withdraws it (request of nothing) when the run ends or the driver stops.
    A failing request never fails the run.
    """

    def __init__(self, config: ExperimentConfig, request=None, clock=time.monotonic):
        self.config, self.clock = config, clock
        self._request = request
        self.requested: int | None = None
        self._last = float("-inf")
        self.calls: list[int] = []

    def _send(self, bundles: list[dict]) -> None:
        request = self._request
        if request is None:
            from ray.autoscaler.sdk import request_resources as request
        try:
            request(bundles=bundles)
        except Exception:  # noqa: BLE001 - e.g. no autoscaler state on this cluster: only a hint is lost
            pass

    def update(self, remaining: int) -> None:
        """Request the bundles of ``min(remaining, max_pending)`` trials (again when that number changed)."""
        cap = self.config.resources.max_pending
        wanted = max(0, min(remaining, cap) if cap else remaining)
        if wanted == self.requested:
            return
        growing = self.requested is None or wanted > self.requested
        if not growing and wanted and self.clock() - self._last < DEMAND_UPDATE_S:
            return  # shrink at most every few seconds; drop to zero at once
        self._send(demand_bundles(self.config, wanted))
        self.requested, self._last = wanted, self.clock()
        self.calls.append(wanted)

    def release(self) -> None:
        """Withdraw the request (the cluster may scale down)."""
        if self.requested:
            self._send([])
            self.calls.append(0)
        self.requested = 0


def _mount_type(path: str) -> str | None:
    """The filesystem type of the mount holding ``path`` (Linux ``/proc/mounts``), or None."""
    try:
        with open("/proc/mounts") as mounts:
            entries = [line.split()[1:3] for line in mounts if len(line.split()) >= 3]
    except OSError:
        return None
    path = os.path.realpath(path)
    best = max((m for m in entries if path == m[0] or path.startswith(m[0].rstrip("/") + "/")),
               key=lambda m: len(m[0]), default=None)
    return best[1] if best else None


def single_point_of_loss(run_uri: str, nodes: int, mount_type: str | None = None) -> str | None:
    """The warning for a run whose log lives on one node's local disk of a multi-node cluster, or None."""
    if "://" in run_uri or nodes <= 1:
        return None
    path = os.path.abspath(os.path.expanduser(run_uri))
    kind = mount_type if mount_type is not None else _mount_type(os.path.dirname(path) or "/")
    if kind and kind.lower().startswith(SHARED_FS_TYPES):
        return None
    return (f"warning: run directory {path} is on this machine's local disk ({kind or 'unknown filesystem'}) but the "
            f"cluster has {nodes} nodes: losing this node loses the run's trial log and checkpoints; use "
            "--storage s3://BUCKET/runs (or gs://, or a shared file system) for cluster runs.")


def warn_if_single_point_of_loss(run_uri: str, stream=None) -> str | None:
    """Print :func:`single_point_of_loss`'s warning (stderr) for the connected cluster; return it."""
    import ray

    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    message = single_point_of_loss(run_uri, nodes)
    if message:
        print(message, file=stream or sys.stderr, flush=True)
    return message


def idle_slots_warning(pack: int, packs: int, slots: int) -> str | None:
    """A warning when ``packs`` packs of ``pack`` trials leave some of the cluster's ``slots`` trial slots idle."""
    if pack <= 1 or packs >= slots:
        return None
    return (f"warning: --pack {pack} makes {packs} pack{'s' if packs > 1 else ''} of the missing trials for {slots} "
            f"trial slots, so {slots - packs} slot{'s stay' if slots - packs > 1 else ' stays'} idle; a smaller K "
            f"(or --pack auto) keeps them busy.")


def cluster_capacity(config: ExperimentConfig) -> int:
    """How many trials of this config fit in the cluster's current total resources."""
    import ray

    total = ray.cluster_resources()
    fits = []
    if config.resources.gpus_per_trial > 0:
        fits.append(total.get("GPU", 0) // (config.resources.gpus_per_trial * config.resources.nodes_per_trial))
    if config.resources.cpus_per_trial > 0:
        fits.append(total.get("CPU", 0) // (config.resources.cpus_per_trial * config.resources.nodes_per_trial))
    return int(min(fits)) if fits else 1


@dataclasses.dataclass(frozen=True)
class DriverOptions:
    """How a driver runs, apart from what it trains: the Ray cluster (``address``; None: ``RAY_ADDRESS``, else a
    local Ray sized ``num_cpus`` / ``num_gpus``, shut down after when ``shutdown``), the prepared data sets'
    folder, the progress display, and the stopping criteria (``until_halfwidth``: the median anytime memorization
    half-width; ``until_jaccard``: the split-half Jaccard at mem >= 0.25)."""

    address: str | None = None
    data_dir: str | None = None
    num_cpus: int | None = None
    num_gpus: float | None = None
    progress: bool = True
    shutdown: bool = True
    until_halfwidth: float | None = None
    until_jaccard: float | None = None

    @property
    def stops_early(self) -> bool:
        return self.until_halfwidth is not None or self.until_jaccard is not None


def run_experiment(config: ExperimentConfig, *, name: str, run_uri: str,
                   options: DriverOptions = DriverOptions()) -> RunResult:
    """Train the run's missing trials; return what happened. See the module docstring.

    With ``until_halfwidth`` / ``until_jaccard`` the driver asks the accumulator after each counted trial
    whether the criteria are met (on the anytime bars, valid however often it asks) and then stops
    submitting; the trials in flight finish and are counted.

    Raises:
        RaymemError: another live driver holds the run (``driver.lease``), before anything starts.
    """
    started = time.perf_counter()
    store = RunStore.open(run_uri)
    with DriverLease(store, name):  # one driver per run: a second one would train the same trials again
        return _run_with_lease(config, store, name, run_uri, options, started)


def _run_with_lease(config: ExperimentConfig, store: RunStore, name: str, run_uri: str, options: DriverOptions,
                    started: float) -> RunResult:
    """:func:`run_experiment` once the driver holds the run's lease."""
    import ray

    from raymem.actors.accumulator import get_or_create_accumulator
    from raymem.cluster import connection
    from raymem.data.label_cache import load_run_dataset, remember_source

    # a streamed set's labels come from the run dir
    data = load_run_dataset(config.dataset, options.data_dir, store, config.data_options)
    model_source = check_own_model(config, data)
    check_checkpoint_location(config, store)
    info, train_labels = prepare_run(config, store, name, data, model_source)
    remember_source(store, data)
    address, started_here = connection.connect_or_start(options.address, options.num_cpus, options.num_gpus,
                                                        _job_runtime_env(config))
    if started_here:
        connection.write_live_address(store, address)
    else:
        warn_if_single_point_of_loss(run_uri)
    demand = AutoscalerDemand(config)
    try:
        accumulator = get_or_create_accumulator(info, run_uri, with_pairs=config.estimator.track_pairs,
                                                batch_size=config.estimator.pair_batch,
                                                pair_shards=config.estimator.pair_shards)
        ray.get(accumulator.reload_info.remote())
        done = set(ray.get(accumulator.done_trial_ids.remote()))
        missing = [k for k in range(config.trials) if k not in done]
        run = {"run_id": info.run_id, "name": name, "seed": info.seed, "n_train": info.n_train,
               "n_test": info.n_test, "subset_size": info.subset_size, "run_uri": run_uri}
        # trials on explicit example sets: each trial's mask is its arm's (subsets.trial_mask)
        if info.kind != "subsets":
            from raymem.paper.marginal_utility import mask_source

            run.update(mask_source(store, info))
        # Trials train on the run's labels (canaries flipped), for in-memory and streaming data alike:
        # a StreamingDataset is only its labels and where its files are, so it travels whole.
        payload = ray.put(dataclasses.replace(data, y_train=np.asarray(train_labels, dtype=np.int64)))
        worker_config = _for_workers(config)
        submit = _submitter(worker_config, run, payload, accumulator)
        result = RunResult(name, store.uri, config.trials, len(done))
        units = _units(worker_config, missing, payload, result)
        bar = Progress(config.trials, len(done), enabled=options.progress, stream=sys.stderr)
        stop_check = None
        if options.stops_early:
            def stop_check():
                return criteria_met(accumulator, run_bars(info), options)
        events = TrainingEvents(store, accumulator, info, data)
        try:
            _drive(config, units, submit, result, bar, demand, stop_check, events.landed,
                   SpaceWaiter(store, bar.note))
        finally:
            events.close()
        bar.close()
        result.trials_done = len(ray.get(accumulator.done_trial_ids.remote()))
        result.wall_seconds = time.perf_counter() - started
        return result
    finally:
        demand.release()
        if started_here:
            connection.clear_live_address(store)
            if options.shutdown:
                ray.shutdown()


def _trial_resources(config: ExperimentConfig) -> dict:
    """What one trial task asks Ray for (a pack asks for one trial's resources)."""
    return dict(num_cpus=config.resources.cpus_per_trial, num_gpus=config.resources.gpus_per_trial, max_retries=0)


def _job_runtime_env(config: ExperimentConfig) -> dict | None:
    """The job's runtime environment: your own model's module for every node (None for catalog models, and in a
    detached job, whose submission shipped it already)."""
    from raymem.cluster.connection import JOB_ID_ENV
    from raymem.training import model_import

    if os.environ.get(JOB_ID_ENV):
        return None
    return model_import.worker_runtime_env(config.model) or None


def _for_workers(config: ExperimentConfig) -> ExperimentConfig:
    """The config trials get: your own model's file path made absolute (workers start in other directories)."""
    from raymem.training import model_import

    model = model_import.absolute_model(config.model)
    return config if model == config.model else config.model_copy(update={"model": model})


def _submitter(config: ExperimentConfig, run: dict, payload, accumulator):
    """``submit(k, attempt)``: start trial k (or a pack, a tuple of trial ids) as a Ray task; returns its ref."""
    import ray

    from raymem.driver.trial import run_big_trial, run_pack, run_small_trial

    if config.uses_train_group:
        storage_path = train_storage_path(run["run_uri"])
        options = {"num_cpus": 0, "max_retries": 0}
        if config.resources.nodes_per_trial > 1:
            # Keras 3 breaks under TensorFlow's multi-worker strategy: the group's workers (which
            # inherit this runtime environment) build with tf-keras (see keras_backend).
            options["runtime_env"] = {"env_vars": {LEGACY_KERAS_ENV: "1"}}
        task = ray.remote(run_big_trial).options(**options)
        return lambda k, attempt: task.remote(config, run, [payload], accumulator, k, attempt, storage_path)
    # max_calls=0: reuse warm worker processes (Ray would start a new one per GPU task).
    task = ray.remote(max_calls=0)(run_small_trial).options(**_trial_resources(config))
    pack_task = ray.remote(max_calls=0)(run_pack).options(**_trial_resources(config))

    def submit(k, attempt):
        if isinstance(k, tuple):  # a pack of trial ids, trained together, asking for one trial's resources
            return pack_task.remote(config, run, payload, accumulator, list(k), attempt)
        return task.remote(config, run, payload, accumulator, k, attempt)

    return submit


def _units(config: ExperimentConfig, missing: list[int], payload, result: RunResult) -> list:
    """The missing trials as units of work: trial ids, or packs (tuples of ids) of the chosen pack size."""
    import ray

    from raymem.driver.trial import measure_pack

    pack = config.resources.pack
    if pack == "auto" and missing:
        # measured where trials run (one trial's resources); no larger than needed to keep every slot busy
        slots = max(1, cluster_capacity(config))
        measure = ray.remote(max_calls=0)(measure_pack).options(**_trial_resources(config))
        pack, result.pack_measurements = ray.get(measure.remote(config, payload, -(-len(missing) // slots)))
    result.pack = pack = int(pack) if pack != "auto" else 1
    units = missing if pack == 1 else [tuple(missing[i:i + pack]) for i in range(0, len(missing), pack)]
    if missing and (idle := idle_slots_warning(pack, len(units), cluster_capacity(config))):
        print(idle, file=sys.stderr, flush=True)
    return units


class TrainingEvents:
    """The run's TensorBoard events, written by this driver alone as trials land (``paper.tensorboard``): a
    status read of the accumulator at most every few seconds. Events are a view, never the run: a failure to write
    them is said once on stderr and the run goes on without them."""

    def __init__(self, store: RunStore, accumulator, info, data=None):
        self.events = None
        try:
            import ray

            from raymem.paper import tensorboard

            bars = run_bars(info)
            images = getattr(data, "x_train", None)  # images held in memory: the memorized-examples grid
            self.events = tensorboard.LiveEvents(
                store, lambda: ray.get(accumulator.status.remote(bars, tensorboard.QUESTIONS)),
                images=images if images is not None and images.ndim >= 3 else None,
                read_mem=lambda: ray.get(accumulator.mem_table.remote(bars)).column("mem").to_numpy())
        except Exception as exc:  # e.g. an s3:// run: TensorFlow writes no event files there
            self._give_up(exc)

    def _give_up(self, exc: Exception) -> None:
        print(f"warning: no TensorBoard events for this run ({type(exc).__name__}: {exc})", file=sys.stderr,
              flush=True)
        self.events = None

    def landed(self, trial_ids: list[int]) -> None:
        if self.events is not None:
            try:
                self.events.landed(trial_ids)
            except Exception as exc:
                self._give_up(exc)

    def close(self) -> None:
        if self.events is not None:
            try:
                self.events.close()
            except Exception as exc:
                self._give_up(exc)


def criteria_met(accumulator, bars: Bars, options: DriverOptions) -> str | None:
    """Ask the accumulator whether every stopping criterion given is met; return why (a sentence) or None."""
    import ray

    questions = StatusQuestions(until_halfwidth=options.until_halfwidth, until_jaccard=options.until_jaccard,
                                pairs_fdr=None)
    status = ray.get(accumulator.status.remote(bars, questions))
    stopping = status.get("stopping") or {}
    if not stopping.get("all_met"):
        return None
    met = [f"{name.replace('_', ' ')} {c['value']:.3f} (target {c['target']:g})"
           for name, c in stopping.items() if isinstance(c, dict)]
    return f"{', '.join(met)} after {status['trials_done']} trials"


def _owner_worker_id(error) -> str | None:
    """The hex worker id of the owner an OwnerDiedError names, or None when Ray did not say."""
    try:
        from ray._raylet import WorkerID
        from ray.core.generated.common_pb2 import Address

        address = Address()
        address.ParseFromString(error.owner_address)
        return WorkerID(address.worker_id).hex()
    except Exception:  # noqa: BLE001 - an unparsable address: treat the error as an ordinary failure
        return None


def _refuse_if_driver_unreachable(exc: BaseException) -> None:
    """Stop the run when a trial could not fetch its inputs from this driver although the driver is running.

    The driver owns the trials' inputs (the data set, put once); a worker that cannot reach it reports the owner
    dead. Every trial would then fail the same way, each of its attempts spent in seconds, so the run stops at the
    first one with what to change. Seen when the driver connects in token mode (``~/.ray/auth_token`` exists) to
    a cluster started without token authentication: the cluster's workers cannot authenticate to the driver.
    """
    import ray

    from raymem.cluster.connection import AUTH_MODE_ENV

    cause = innermost_cause(exc, ray.exceptions.OwnerDiedError)
    if cause is None or _owner_worker_id(cause) != ray.get_runtime_context().get_worker_id():
        return  # another owner (a worker lost with its node): an ordinary failure, retried
    mode = os.environ.get(AUTH_MODE_ENV, "unset")
    raise RaymemError(
        f"the cluster's workers cannot reach this driver (a trial found the owner of its inputs dead while the "
        f"driver runs; RAY_AUTH_MODE={mode}); if the cluster runs without token authentication, run again with "
        "RAY_AUTH_MODE=disabled, otherwise check that its nodes can reach this machine's Ray ports.")


def _drive(config: ExperimentConfig, missing: list, submit, result: RunResult, bar: Progress,
           demand: AutoscalerDemand | None = None, stop_check=None, landed=None,
           wait_for_space=None) -> None:
    """Keep a window of trials (trial ids, or packs: tuples of them) in flight; retry failures up to
    max_attempts (a pack is retried whole); record outcomes per trial id.

    ``demand`` (optional) shows the remaining trials' resources to the autoscaler. ``stop_check()``
    (optional) is called after trials are counted; a reason it returns stops submitting
    (the trials in flight still finish and are counted). ``landed(trial_ids)`` (optional) is told each
    acknowledged trial (the TensorBoard events). ``wait_for_space(error, trial_ids)`` (optional, a
    :class:`raymem.driver.space.SpaceWaiter`) blocks while the run's storage is full; a trial whose result
    could not be written for that reason is queued again without spending one of its attempts.
    """
    import ray

    queue = deque(missing)
    attempts: dict[int, int] = {}
    in_flight: dict = {}
    last_capacity_check = 0.0
    window = 1
    while queue or in_flight:
        if demand is not None:
            demand.update(len(queue) + len(in_flight))
        now = time.monotonic()
        if now - last_capacity_check > 2.0:
            capacity = cluster_capacity(config)
            window = max(2, 2 * capacity)  # running trials plus as many waiting: demand an autoscaler sees
            last_capacity_check = now
        while queue and len(in_flight) < window:
            k = queue.popleft()
            attempts[k] = attempts.get(k, 0) + 1
            in_flight[submit(k, attempts[k])] = k
        result.max_in_flight = max(result.max_in_flight, len(in_flight))
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
        for ref in ready:
            k = in_flight.pop(ref)
            members = list(k) if isinstance(k, tuple) else [k]
            try:
                ray.get(ref)
            except Exception as exc:  # a trial's error or its worker/node dying: try again elsewhere
                _refuse_if_driver_unreachable(exc)
                full = storage_full_cause(exc) if wait_for_space is not None else None
                if full is not None:
                    attempts[k] -= 1  # the trial did nothing wrong: its try is not spent
                    queue.appendleft(k)
                    wait_for_space(full, members)
                    continue
                if attempts[k] < config.resources.max_attempts:
                    result.retried.update({member: attempts[k] for member in members})
                    queue.appendleft(k)
                    bar.advance(retried=len(members))
                else:
                    why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"
                    result.failed.update({member: why for member in members})
                    bar.advance(failed=len(members))
                continue
            result.trained_now.extend(members)
            bar.advance(done=len(members))
            if landed is not None:
                landed(members)
            if stop_check is not None and queue and result.stopped_early is None:
                result.stopped_early = stop_check()
                if result.stopped_early:
                    queue.clear()
        bar.show(running=min(len(in_flight), max(1, window // 2)))

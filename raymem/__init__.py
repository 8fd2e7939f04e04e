"""raymem: which training examples a network memorizes, and which test predictions each drives
(Feldman & Zhang 2020), on an elastic Ray runner with a streaming estimator.

The front door is :class:`Run`; :func:`run`, :func:`ingest` and :func:`ingest_from` make runs and return them::

    import raymem
    result = raymem.run("digits", overrides={"trials": 16})
    run = raymem.Run("digits")                  # under $RAYMEM_STORAGE or ./runs
    mem = run.estimates()                       # a pyarrow.Table
    top = run.pairs(fdr=0.1)

Every name of :mod:`raymem.api` is here too, imported on first use so that ``import raymem.estimator`` stays light
(no Ray, no TensorFlow).
"""

__version__ = "0.1.0"

__all__ = [
    "Run", "DriverOptions", "PairSelection", "RaymemError",
    "run", "plan", "load_config", "presets", "config_keys", "ingest", "ingest_files", "ingest_from", "features",
    "estimates", "pairs", "influence", "status", "trials", "verify", "figures", "export", "compare", "compare_many",
    "marginal", "marginal_report", "logs", "stop", "stop_job", "up", "down", "default_storage", "tensorboard",
    "serve",
]


def __getattr__(name: str):
    if name in __all__:
        from raymem import api

        return getattr(api, name)
    raise AttributeError(f"module 'raymem' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

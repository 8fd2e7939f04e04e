"""raymem: label memorization and influence estimates (Feldman & Zhang 2020) on Ray.

The public API is :mod:`raymem.api`; its functions are available here too, imported on first use so
that ``import raymem.estimator`` stays light (no Ray, no TensorFlow)::

    import raymem
    result = raymem.run("digits", overrides={"trials": 16})
    mem = raymem.estimates("digits")            # a pyarrow.Table
"""

__version__ = "0.1.0"

#: The names of :mod:`raymem.api` exported here.
__all__ = [
    "run", "plan", "load_config", "estimates", "pairs", "influence", "status", "compare", "ingest",
    "ingest_files", "features", "presets", "stop", "up", "down", "RaymemError",
]


def __getattr__(name: str):
    if name == "RaymemError":
        from raymem.errors import RaymemError

        return RaymemError
    if name in __all__:
        from raymem import api

        return getattr(api, name)
    raise AttributeError(f"module 'raymem' has no attribute {name!r}")

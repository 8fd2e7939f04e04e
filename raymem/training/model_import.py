"""Models by import path: ``model: "package.module:function"`` or ``model: "path/to/nets.py:function"``.

The name is resolved as uvicorn and Hydra resolve such names: a file path relative to the current directory, or a
module on the Python path (the current directory first). The contract is
``function(input_shape, num_classes, **model_params) -> keras.Model`` returning logits; raymem compiles and
trains it with the recipe.

:func:`check_model` runs on the driver before Ray starts: it imports the function, builds the model once on the
data set's input shape and checks what it returns, so a broken model is one ``error:`` line, not a failed trial
per attempt. Workers get the model with an absolute path (:func:`absolute_model`), read where the file exists
(this machine, a shared file system); :func:`worker_runtime_env` is the job's ``py_modules`` that ships the module
to every node (Ray uploads local files for a job, not per task), where a worker imports it by module name.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import sysconfig
from pathlib import Path
from typing import Callable

from raymem.errors import RaymemError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before a user's module imports TensorFlow

__all__ = ["is_import_path", "load_builder", "check_model", "model_source", "absolute_model", "worker_runtime_env"]

_DIGEST = "__raymem_source__"  # set on a module loaded from a file: (its path, the sha256 it was loaded from)
_CONTRACT = "function(input_shape, num_classes, **model_params) -> keras.Model returning logits"


def is_import_path(model: str) -> bool:
    """True for ``module:function`` / ``file.py:function`` names; False for the catalog's model names."""
    return ":" in model


def _split(model: str) -> tuple[str, str]:
    target, _, function = model.rpartition(":")
    if not target or not function.isidentifier():
        raise RaymemError(f"model {model!r} is not MODULE:FUNCTION or FILE.py:FUNCTION; write e.g. "
                          "nets.py:tiny_cnn or mypackage.nets:tiny_cnn.")
    return target, function


def _is_file(target: str) -> bool:
    return target.endswith(".py") or os.sep in target or "/" in target


def _import_file(target: str, model: str):
    """The module of a ``.py`` file: loaded from the path where it exists, else by its name from the Python
    path (a worker gets the file through ``py_modules``, not at the driver's path)."""
    path = Path(target).expanduser()
    name = path.stem
    if not path.is_file():
        try:
            return importlib.import_module(name)
        except ImportError:
            where = "" if path.is_absolute() else f" in the current directory {os.getcwd()}"
            raise RaymemError(f"model {model!r}: file {target} does not exist{where}; fix the path before the "
                              "colon.") from None
    path = path.resolve()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, _DIGEST, None) == (str(path), digest):
        return loaded  # an edited file is executed again (a notebook's next run builds the new source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so that the workers' import by name and the driver's agree on the module
    try:
        spec.loader.exec_module(module)
        setattr(module, _DIGEST, (str(path), digest))
    except Exception as exc:  # noqa: BLE001 - any error of the user's module is the user's to fix
        del sys.modules[name]
        raise RaymemError(f"model {model!r}: importing {path} raised {type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:200]}; fix the module.") from None
    return module


def _import_module(target: str, model: str):
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` and uvicorn do: the current directory's packages import
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        raise RaymemError(f"model {model!r}: cannot import module {target} ({exc}); install it, or run from the "
                          "directory that holds it, or give FILE.py:FUNCTION.") from None
    except Exception as exc:  # noqa: BLE001 - any error of the user's module is the user's to fix
        raise RaymemError(f"model {model!r}: importing module {target} raised {type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:200]}; fix the module.") from None


def _module(model: str):
    target, _ = _split(model)
    return _import_file(target, model) if _is_file(target) else _import_module(target, model)


def load_builder(model: str) -> Callable:
    """The function ``model`` names, imported (RaymemError naming the path and what is wrong)."""
    _, function = _split(model)
    module = _module(model)
    builder = getattr(module, function, None)
    if not callable(builder):
        raise RaymemError(f"model {model!r}: {getattr(module, '__file__', module.__name__)} has no function "
                          f"{function!r}; define {_CONTRACT}, or fix the name after the colon.")
    return builder


def model_source(model: str) -> dict:
    """What run.json records of an imported model: the name, its module's file and the sha256 of its source."""
    module = _module(model)
    file = getattr(module, "__file__", None)
    digest = hashlib.sha256(Path(file).read_bytes()).hexdigest() if file else None
    return {"model": model, "file": os.path.abspath(file) if file else None, "sha256": digest}


def check_model(model: str, params: dict, input_shape: tuple[int, ...], num_classes: int, *,
                pack: bool = False) -> dict:
    """Build ``model`` once on the data's shape and check it keeps the contract; return :func:`model_source`.

    With ``pack`` (``resources.pack`` above 1) the packer also replays it once, so a layer it cannot pack is
    refused here rather than in every trial.

    Raises:
        RaymemError: naming the model and what is wrong (import, build, output shape, no trainable weights,
        a layer the packer cannot replay).
    """
    from raymem.training.keras_backend import keras

    builder = load_builder(model)
    shape = tuple(int(size) for size in input_shape)
    where = f"model {model!r} on input_shape {shape} with {num_classes} classes"
    try:
        net = builder(shape, int(num_classes), **dict(params))
    except Exception as exc:  # noqa: BLE001 - any error of the user's function is the user's to fix
        raise RaymemError(f"{where} raised {type(exc).__name__}: {' '.join(str(exc).split())[:200]}; fix the "
                          f"function or model_params (the contract: {_CONTRACT}).") from None
    if not isinstance(net, keras.Model):
        raise RaymemError(f"{where} returned {type(net).__name__}, not a keras.Model; return one "
                          f"({_CONTRACT}).")
    outputs = getattr(net, "outputs", None) or []
    output_shape = tuple(outputs[0].shape) if len(outputs) == 1 else None
    if output_shape is None or len(output_shape) != 2 or output_shape[1] != int(num_classes):
        shown = [tuple(out.shape) for out in outputs] if len(outputs) != 1 else output_shape
        raise RaymemError(f"{where} outputs shape {shown}; it must return one tensor of logits of shape "
                          f"(None, {num_classes}).")
    if not net.trainable_weights:
        raise RaymemError(f"{where} has no trainable weights; return a model with weights to train.")
    if pack:
        _check_packable(net, shape, model)
    return model_source(model)


def _check_packable(net, shape: tuple[int, ...], model: str) -> None:
    import numpy as np

    from raymem.training.packed_model import PackedModel

    try:
        PackedModel(net, [net.get_weights()] * 2).logits(np.zeros((2, 1, *shape), np.float32))
    except RaymemError as exc:
        raise RaymemError(f"model {model!r}: {exc}") from None


def _installed(file: str) -> bool:
    """True when ``file`` lies in an installed-packages directory (every node has it, nothing to ship)."""
    roots = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    resolved = os.path.realpath(file)
    return "site-packages" in resolved.split(os.sep) or "dist-packages" in resolved.split(os.sep) or \
        any(resolved.startswith(os.path.realpath(root) + os.sep) for root in roots)


def absolute_model(model: str) -> str:
    """``model`` with a relative file path made absolute (workers need not start in the driver's directory)."""
    if not is_import_path(model):
        return model
    target, function = _split(model)
    path = Path(target).expanduser()
    if not _is_file(target) or path.is_absolute() or not path.is_file():
        return model
    return f"{path.resolve()}:{function}"


def worker_runtime_env(model: str) -> dict:
    """The runtime environment that brings ``model``'s module to every worker: ``{"py_modules": [...]}`` with its
    file (or its top-level package's folder), or ``{}`` for catalog models and installed packages."""
    if not is_import_path(model):
        return {}
    target, _ = _split(model)
    module = _module(model)
    if not _is_file(target):
        module = sys.modules[target.split(".")[0]]
    file = getattr(module, "__file__", None)
    if not file or _installed(file):
        return {}
    shipped = os.path.dirname(file) if hasattr(module, "__path__") else file
    return {"py_modules": [os.path.abspath(shipped)]}

"""Output files and user-supplied arrays, each way done once.

- :func:`check_output_path`: can a file be written at this path? (checked for every output before
  any work, so a bad one writes nothing);
- :func:`write_atomic`: every output file raymem writes (Parquet, PNG, NPZ) goes through one atomic
  write: the bytes go to a temporary file in the same folder (or through :class:`RunStore` for a URI)
  and are then moved onto the final name;
- :func:`load_npy` / :func:`load_npz`: arrays a user hands in, read without pickle, with one sentence
  naming the file and the fix when something is wrong.
"""

from __future__ import annotations

import io
import posixpath
from pathlib import Path
from typing import Callable

import numpy as np

from raymem.errors import RaymemError
from raymem.store.storage import RunStore


def check_output_path(out: str | Path, flag: str = "--out") -> str:
    """Return ``out`` as a string if a file can be written there.

    Args:
        out: a local path or an ``s3://`` / ``gs://`` URI (URIs are checked when written).
        flag: the option (``--out``) or API parameter (``out``) that gave the path, for the message.

    Raises:
        RaymemError: the path is a folder, or its folder does not exist.
    """
    text = str(out)
    if "://" in text:
        return text
    path = Path(text)
    parameter = None if flag.startswith("--") else flag  # a parameter name: the CLI shows its own flag
    if path.is_dir():
        raise RaymemError(f"{flag} {path} is a directory; give a file name such as {path / 'result.parquet'}.",
                          parameter=parameter)
    if not path.parent.is_dir():
        raise RaymemError(f"{flag} {path}: the folder {path.parent} does not exist; create it first.",
                          parameter=parameter)
    return text


def write_atomic(out: str | Path, write: Callable[[io.BytesIO], object], flag: str = "--out") -> str:
    """Write a file atomically: ``write(buffer)`` fills an in-memory buffer, which then replaces ``out`` whole.

    Args:
        out: a local path or URI (its folder must exist for a local path).
        write: a callable that writes the file's bytes into the buffer it is given.
        flag: the option that gave the path, for messages.

    Returns:
        ``out`` as a string.
    """
    text = check_output_path(out, flag)
    buffer = io.BytesIO()
    write(buffer)
    parent, name = (posixpath.split(text.replace("\\", "/")) if "://" in text
                    else (str(Path(text).parent), Path(text).name))
    RunStore.open(parent).write_bytes_atomic(name, buffer.getvalue())
    return text


def _open_archive(path: Path, what: str, fix: str):
    if not path.is_file():
        problem = "is a directory" if path.is_dir() else "does not exist"
        raise RaymemError(f"{what} {path} {problem}; {fix}.")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise RaymemError(f"{what} {path} is not a plain numpy file ({reason}); {fix}.") from None


def load_npy(path: str | Path, what: str, *, dtype=None, ndim: int | None = None) -> np.ndarray:
    """Load one array from a ``.npy`` file without pickle.

    Args:
        path: the file.
        what: how messages name it (e.g. ``--masks file``).
        dtype: the numpy dtype it must hold (e.g. ``np.bool_``), or None for any.
        ndim: the number of dimensions it must have, or None for any.

    Raises:
        RaymemError: the file is missing, not a plain .npy, an .npz, or of the wrong dtype or shape.
    """
    path = Path(path)
    array = _open_archive(path, what, "save it with numpy.save")
    if not isinstance(array, np.ndarray):  # an .npz archive loads as an open NpzFile
        getattr(array, "close", lambda: None)()
        raise RaymemError(f"{what} {path} is an .npz archive, not a .npy array; save one array with numpy.save.")
    _check_array(array, f"{what} {path}", dtype, ndim)
    return array


class NpzArchive:
    """An ``.npz`` archive opened without pickle, whose arrays are read one by one (``with NpzArchive(...) as z``).

    Args:
        path: the file.
        what: how messages name it (e.g. ``pairs file``).
        fix: what the user should do, ending the message of any problem (e.g. ``save it with numpy.savez(...)``).
    """

    def __init__(self, path: str | Path, what: str, fix: str):
        self.path, self.what, self.fix = Path(path), what, fix
        self._archive = _open_archive(self.path, what, fix)
        if not isinstance(self._archive, np.lib.npyio.NpzFile):
            raise RaymemError(f"{what} {self.path} holds a single array, not an .npz archive; {fix}.")
        self.files = list(self._archive.files)

    def __enter__(self) -> "NpzArchive":
        return self

    def __exit__(self, *exc) -> None:
        self._archive.close()

    def require(self, *keys: str) -> None:
        """RaymemError naming every missing key (and what the archive has)."""
        missing = [k for k in keys if k not in self.files]
        if missing:
            raise RaymemError(f"{self.what} {self.path} lacks {', '.join(map(repr, missing))} "
                              f"(it has {', '.join(sorted(self.files)) or 'nothing'}); {self.fix}.")

    def array(self, key: str) -> np.ndarray:
        """The array ``key``; RaymemError when it is missing or holds Python objects (never unpickled)."""
        self.require(key)
        try:
            return np.asarray(self._archive[key])
        except ValueError:  # object arrays need pickle, which is refused
            raise RaymemError(f"array {key!r} in {self.what} {self.path} holds Python objects, which raymem does not "
                              "unpickle; save it as a numeric array.") from None


def load_npz(path: str | Path, what: str, keys: tuple[str, ...], *,
             optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Load the arrays ``keys`` (and any of ``optional`` present) from an ``.npz`` archive without pickle.

    Raises:
        RaymemError: the file is missing or not an .npz, a key is missing, or an array holds Python objects.
    """
    fix = f"it needs {', '.join(keys)}: save it with numpy.savez(path, {', '.join(f'{k}=...' for k in keys)})"
    with NpzArchive(path, what, fix) as archive:
        archive.require(*keys)
        return {key: archive.array(key) for key in (*keys, *(k for k in optional if k in archive.files))}


def _check_array(array: np.ndarray, name: str, dtype, ndim: int | None) -> None:
    if dtype is not None and array.dtype != np.dtype(dtype):
        raise RaymemError(f"{name} holds dtype {array.dtype}, not {np.dtype(dtype)}; "
                          f"save it with array.astype({np.dtype(dtype).name}).")
    if ndim is not None and array.ndim != ndim:
        raise RaymemError(f"{name} has shape {array.shape}; it must be {ndim}-D.")


def require_integer_indices(array: np.ndarray, name: str) -> np.ndarray:
    """Return ``array`` as int64 if it holds integers; RaymemError (never a silent truncation) otherwise."""
    if not np.issubdtype(array.dtype, np.integer):
        raise RaymemError(f"{name} holds {array.dtype} values, not integer indices; save the indices as integers.")
    return array.astype(np.int64)

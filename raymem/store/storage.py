"""Where a run's files live: a local directory or an ``s3://`` / ``gs://`` URI, through ``pyarrow.fs``.

A :class:`RunStore` is a filesystem plus a base path; every file of a run is addressed by a
relative path under it (``run.json``, ``trials/trial-00000042.parquet``). Writes are atomic: the
bytes go to a temporary name in the same directory and are then moved onto the final name, so a
reader never sees half a file. Temporary names start with :data:`TEMP_PREFIX` and are never listed.

Run names come from users, so :func:`run_location` validates a name before joining it under a
storage root: no name can escape the root.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import uuid
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raymem.errors import RaymemError

#: Prefix of the temporary file an atomic write goes through before it is moved into place.
TEMP_PREFIX = ".tmp-"
#: A run name: 1-64 characters of letters, digits, ``.``, ``_`` and ``-``, not starting with ``.`` or ``-``.
RUN_NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")


def _is_uri(location: str) -> bool:
    """Return True when ``location`` is a URI (``scheme://...``) rather than a local path."""
    return "://" in location


def _display_uri(location: str) -> str:
    """Return ``location`` without a trailing slash or URI query (which may hold credentials)."""
    if not _is_uri(location):
        return location.rstrip("/") or "/"
    parts = urlsplit(location)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _check_relpath(relpath: str) -> str:
    """Return ``relpath`` if it is a plain relative path inside the store (raise ValueError otherwise)."""
    parts = relpath.split("/")
    if not relpath or relpath.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a relative path inside a run store: {relpath!r}")
    return relpath


#: The errors of a write to a full storage: no space left, or the owner's quota spent.
STORAGE_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class StorageFull(RaymemError):
    """A write failed because its storage is full; the temporary file was removed, the final name is untouched."""


class RunStore:
    """A run directory: a pyarrow filesystem and the base path of the run inside it."""

    def __init__(self, filesystem: pafs.FileSystem, base_path: str, uri: str | None = None):
        self.filesystem = filesystem
        self.base_path = base_path.rstrip("/") or "/"
        #: The run directory as the user wrote it (no query string), for messages.
        self.uri = _display_uri(uri if uri is not None else base_path)

    @classmethod
    def open(cls, uri_or_path: str) -> "RunStore":
        """Return the store for a local path (``~`` expanded, made absolute) or a URI such as ``s3://bucket/run``."""
        if not isinstance(uri_or_path, str) or not uri_or_path.strip():
            raise RaymemError(f"{uri_or_path!r} is not a run directory; give a local path or an s3:// or gs:// URI.")
        if not _is_uri(uri_or_path):
            path = os.path.abspath(os.path.expanduser(uri_or_path))
            return cls(pafs.LocalFileSystem(), path, path)
        try:
            filesystem, path = pafs.FileSystem.from_uri(uri_or_path)
        except (ValueError, OSError, NotImplementedError) as exc:
            raise RaymemError(
                f"Cannot open run directory {_display_uri(uri_or_path)} ({exc}); "
                "check the URI scheme, bucket and credentials."
            ) from exc
        return cls(filesystem, path, uri_or_path)

    def path(self, relpath: str) -> str:
        """Return the filesystem path of ``relpath`` (a ``/``-separated path inside the store)."""
        return posixpath.join(self.base_path, _check_relpath(relpath))

    def location(self, relpath: str) -> str:
        """Return ``<uri>/<relpath>``: how messages name a file of this store."""
        return f"{self.uri.rstrip('/')}/{_check_relpath(relpath)}"

    def exists(self, relpath: str) -> bool:
        """Return True when a file or directory exists at ``relpath``."""
        return self.filesystem.get_file_info(self.path(relpath)).type != pafs.FileType.NotFound

    def read_bytes(self, relpath: str) -> bytes:
        """Return the whole content of the file at ``relpath`` (RaymemError naming it when it is missing)."""
        try:
            with self.filesystem.open_input_stream(self.path(relpath)) as stream:
                return stream.read()
        except FileNotFoundError as exc:
            raise RaymemError(f"{self.location(relpath)} does not exist; check the run directory.") from exc

    def read_parquet(self, relpath: str, *, columns: list[str] | None = None,
                     verify_pages: bool = False) -> pa.Table:
        """Return the Parquet table at ``relpath``, read on the calling thread from Arrow-owned memory.

        Why not ``pq.read_table(pa.BufferReader(bytes))``: Arrow's pool threads then hold a reference to a Python
        buffer and may release it while the interpreter finalizes, which aborts the process after its work is done
        (exit 134, apache/arrow#49942). Reading an Arrow buffer with ``use_threads=False`` leaves no such thread.
        Arrow errors propagate for the caller to name the file; a missing file is a RaymemError naming it.
        """
        try:
            with self.filesystem.open_input_stream(self.path(relpath)) as stream:
                buffer = stream.read_buffer()
        except FileNotFoundError as exc:
            raise RaymemError(f"{self.location(relpath)} does not exist; check the run directory.") from exc
        return pq.read_table(pa.BufferReader(buffer), columns=columns, use_threads=False, pre_buffer=False,
                             page_checksum_verification=verify_pages)

    def write_bytes_atomic(self, relpath: str, data: bytes) -> None:
        """Write ``data`` to ``relpath`` atomically: a temporary file in the same directory, then a move.

        Parent directories are created. On any error the temporary file is removed and the error
        is re-raised; the final name then still holds its previous content (or nothing).
        """
        final = self.path(relpath)
        directory, name = posixpath.split(final)
        temp = posixpath.join(directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}-{name}")
        self.filesystem.create_dir(directory, recursive=True)
        try:
            with self.filesystem.open_output_stream(temp) as stream:
                stream.write(data)
            self.filesystem.move(temp, final)
        except BaseException as exc:
            try:
                self.filesystem.delete_file(temp)
            except (FileNotFoundError, OSError):
                pass
            if isinstance(exc, OSError) and exc.errno in STORAGE_FULL_ERRNOS:
                raise StorageFull(f"the storage of {self.location(relpath)} is full ({os.strerror(exc.errno)}), so "
                                  "nothing was written there; free space on it.") from exc
            raise

    def list(self, reldir: str, suffix: str = "") -> list[str]:
        """Return the sorted names of the files directly in ``reldir`` ending in ``suffix``.

        Temporary files of unfinished writes are left out; a missing directory lists as empty.
        """
        selector = pafs.FileSelector(self.path(reldir), allow_not_found=True, recursive=False)
        names = (
            info.base_name
            for info in self.filesystem.get_file_info(selector)
            if info.type == pafs.FileType.File
        )
        return sorted(n for n in names if n.endswith(suffix) and not n.startswith(TEMP_PREFIX))

    def move(self, relpath: str, target: str) -> None:
        """Move the file at ``relpath`` to ``target`` (both store-relative), creating ``target``'s folder.

        Local files are renamed (atomic); on object stores the move is a copy then a delete, so a crash between the
        two leaves the file at both places, never at neither.
        """
        self.filesystem.create_dir(posixpath.dirname(self.path(target)), recursive=True)
        self.filesystem.move(self.path(relpath), self.path(target))

    def delete(self, relpath: str) -> None:
        """Delete the file at ``relpath``; a file that is already gone is not an error."""
        try:
            self.filesystem.delete_file(self.path(relpath))
        except FileNotFoundError:
            pass


    def delete_dir(self, reldir: str) -> None:
        """Delete the directory ``reldir`` and everything in it; a missing directory is not an error."""
        try:
            self.filesystem.delete_dir(self.path(reldir))
        except (FileNotFoundError, OSError):
            if self.exists(reldir):
                raise


def validate_run_name(name: str) -> str:
    """Return ``name`` when it is a valid run name; raise RaymemError naming it otherwise."""
    if not isinstance(name, str) or RUN_NAME_PATTERN.fullmatch(name) is None:
        raise RaymemError(
            f"{name!r} is not a valid run name; use 1-64 letters, digits, '.', '_' or '-', "
            "not starting with '.' or '-'."
        )
    return name


def run_location(storage_root: str, name: str) -> str:
    """Return the run directory of run ``name`` under ``storage_root`` (a local path or a URI).

    The name is validated first, so the result is always directly inside the root. A URI's query
    string (e.g. ``?region=...``) is kept after the joined path.
    """
    validate_run_name(name)
    if not _is_uri(storage_root):
        return os.path.join(os.path.expanduser(storage_root), name)
    parts = urlsplit(storage_root)
    path = parts.path.rstrip("/") + "/" + name
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))

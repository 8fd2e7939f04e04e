"""Pair reads in a process of their own, over the accumulator's pair matrix in shared memory.

A ``pairs`` read at the CIFAR-100 shape runs NumPy calls over millions of cells, several of which hold
Python's GIL for tens of milliseconds (sorting, ``unique``, ``nonzero``); in the accumulator's own
process every absorb waiting for the GIL meanwhile is delayed by as much. So the pair matrix lives in
an anonymous shared-memory file (``memfd_create``: no name to leak, freed with the last process that
maps it), and a child process (``python -m raymem.actors.pair_reader``) maps it read-only and answers
``pairs_table`` / ``influence_table``: the accumulator sends the snapshot's per-example vectors (NumPy
``.npy`` frames) and receives the table (an Arrow IPC stream). The accumulator keeps the matrix pinned
(``LiveCounts.snapshot``) for the whole call, so the child reads exactly the snapshot's trials.

Anything that goes wrong with the child (no memfd on this platform, the child dying) makes
:class:`PairReader` return None / raise ``ReaderUnavailable``, and the accumulator reads in its own
process as before: slower for absorbs meanwhile, never wrong.
"""

from __future__ import annotations

import io
import json
import mmap
import os
import struct
import subprocess
import sys
import threading

import numpy as np
import pyarrow as pa

_LEN = struct.Struct("<Q")


class ReaderUnavailable(RuntimeError):
    """The child process could not answer (it is restarted on the next call)."""


def _send(stream, data: bytes) -> None:
    stream.write(_LEN.pack(len(data)))
    stream.write(data)


def _recv(stream) -> bytes:
    head = stream.read(_LEN.size)
    if len(head) < _LEN.size:
        raise EOFError("pipe closed")
    (size,) = _LEN.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("pipe closed")
    return data


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


class PairReader:
    """Owns the shared pair matrix and the child process that reads it."""

    def __init__(self, fd: int, shape: tuple[int, int], matrix: np.ndarray, mapping: mmap.mmap):
        self.fd, self.shape, self.matrix, self._mapping = fd, shape, matrix, mapping
        self._lock = threading.Lock()
        self._proc = None

    @classmethod
    def share(cls, h_in: np.ndarray) -> "PairReader | None":
        """Copy ``h_in`` into shared memory; return the reader (whose ``matrix`` replaces ``h_in``), or None."""
        if not hasattr(os, "memfd_create") or h_in.dtype != np.float32 or h_in.ndim != 2 or not h_in.size:
            return None
        try:
            fd = os.memfd_create("raymem-pairs", 0)
            os.ftruncate(fd, h_in.nbytes)
            mapping = mmap.mmap(fd, h_in.nbytes)
            matrix = np.frombuffer(mapping, dtype=np.float32).reshape(h_in.shape)
            for start in range(0, h_in.shape[0], 4096):  # row blocks: no second full-size temporary
                matrix[start:start + 4096] = h_in[start:start + 4096]
        except OSError:
            return None
        return cls(fd, tuple(h_in.shape), matrix, mapping)

    def _child(self):
        if self._proc is None or self._proc.poll() is not None:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "raymem.actors.pair_reader",
                 str(self.fd), str(self.shape[0]), str(self.shape[1])],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(self.fd,), env=env)
        return self._proc

    def call(self, method: str, counts, kwargs: dict) -> pa.Table:
        """``report.<method>(counts, **kwargs)`` computed by the child on the shared matrix (which must hold
        exactly ``counts``' trials, pinned by the caller)."""
        v = counts.all
        header = {"method": method, "kwargs": _encode(kwargs), "trials": v.trials, "n_train": counts.n_train,
                  "n_test": counts.n_test, "row_start": counts.row_start, "row_stop": counts.row_stop}
        with self._lock:
            proc = self._child()
            try:
                _send(proc.stdin, json.dumps(header).encode())
                for array in (v.n_in, v.in_hits, v.total_hits, v.test_hits):
                    _send(proc.stdin, _npy(array))
                proc.stdin.flush()
                status = _recv(proc.stdout)
                if status == b"ok":  # the table follows as an Arrow IPC stream, read up to its end marker
                    return pa.ipc.open_stream(pa.PythonFile(proc.stdout, mode="r")).read_all()
                payload = _recv(proc.stdout)
            except (OSError, EOFError, ValueError, pa.ArrowException) as exc:
                self._stop_child()
                raise ReaderUnavailable(f"pair reader process failed ({exc})") from None
        error = json.loads(payload)
        if error["type"] == "RaymemError":
            from raymem.errors import RaymemError

            raise RaymemError(error["message"])
        raise ReaderUnavailable(f"pair reader: {error['type']}: {error['message']}")

    def _stop_child(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def close(self) -> None:
        with self._lock:
            self._stop_child()


def _settings_types() -> dict:
    from raymem.estimator.bars import Bars
    from raymem.estimator.report import PairSelection

    return {"Bars": Bars, "PairSelection": PairSelection}


def _encode(kwargs: dict) -> dict:
    """The read's keywords as JSON: its settings objects as {"__settings__": type name, "fields": ...}."""
    return {k: {"__settings__": type(v).__name__, "fields": v.to_dict()} if hasattr(v, "to_dict") else v
            for k, v in kwargs.items()}


def _decode(kwargs: dict) -> dict:
    types = _settings_types()
    return {k: types[v["__settings__"]](**v["fields"]) if isinstance(v, dict) and "__settings__" in v else v
            for k, v in kwargs.items()}


def _serve(fd: int, rows: int, n_test: int) -> None:
    """The child: answer requests on stdin until it closes."""
    from raymem.errors import RaymemError
    from raymem.estimator import report
    from raymem.estimator.counts import Counts, VectorCounts

    mapping = mmap.mmap(fd, rows * n_test * 4, prot=mmap.PROT_READ)
    h_in = np.frombuffer(mapping, dtype=np.float32).reshape(rows, n_test)
    stdin = sys.stdin.buffer
    stdout = os.fdopen(os.dup(1), "wb")  # the protocol's own copy of stdout; anything printed goes to stderr
    os.dup2(2, 1)
    while True:
        try:
            header = json.loads(_recv(stdin))
            n_in, in_hits, total_hits, test_hits = (np.load(io.BytesIO(_recv(stdin)), allow_pickle=False)
                                                    for _ in range(4))
        except EOFError:
            return
        try:
            zeros = VectorCounts.zeros(rows, n_test)
            counts = Counts(header["n_train"], header["n_test"], header["row_start"], header["row_stop"],
                            VectorCounts(header["trials"], n_in, in_hits, total_hits, test_hits), zeros, h_in)
            table = getattr(report, header["method"])(counts, **_decode(header["kwargs"]))
        except Exception as exc:  # noqa: BLE001 - sent back and raised in the accumulator
            kind = "RaymemError" if isinstance(exc, RaymemError) else type(exc).__name__
            _send(stdout, b"error")
            _send(stdout, json.dumps({"type": kind, "message": str(exc)}).encode())
            stdout.flush()
            continue
        _send(stdout, b"ok")
        with pa.ipc.new_stream(stdout, table.schema) as writer:  # streamed: no second copy of a big answer
            writer.write_table(table, max_chunksize=1 << 20)
        stdout.flush()
        del table


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))

"""``raymem serve``: a web explorer over one run or several, from a notebook or the command line.

Python's own ``http.server`` with server-rendered pages and inline SVG plots: nothing to install, nothing fetched
from the internet, so it works on a cluster head behind a firewall (reach it through ``ssh -L``). Every number is a
read of the run's trial log through the same ``RunView`` methods ``Run`` answers with (see ``state``).
"""

from __future__ import annotations

import threading

from raymem.explorer.server import check_bind, is_loopback_host, make_server
from raymem.explorer.state import RunSource
from raymem.handle import Run

__all__ = ["Explorer", "serve", "check_bind", "is_loopback_host", "DEFAULT_PORT", "DEFAULT_HOST"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8266


class Explorer:
    """A running (or ready) explorer: ``url``, :meth:`serve_forever`, :meth:`start` (in a thread), :meth:`close`."""

    def __init__(self, server, sources: list[RunSource], token: str | None):
        self.server, self.sources, self.token = server, sources, token
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        host = self.server.server_address[0]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def serve_forever(self) -> None:
        """Serve until interrupted (Ctrl-C), then close."""
        try:
            self.server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self.server.server_close()

    def start(self) -> "Explorer":
        """Serve in a background thread (a notebook keeps working); returns self."""
        self.thread = threading.Thread(target=self.server.serve_forever, name="raymem-serve", daemon=True)
        self.thread.start()
        return self

    def close(self) -> None:
        if self.thread is not None:
            self.server.shutdown()
            self.thread.join()
        self.server.server_close()


def serve(runs: list[str] | str, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, token: str | None = None,
          insecure_public: bool = False, storage: str | None = None, data_dir: str | None = None,
          block: bool = False) -> Explorer:
    """Serve ``runs`` (names under ``storage`` or run directories) on ``host:port``.

    Args:
        host: the address to bind; beyond the loopback address a ``token`` or ``insecure_public`` is required.
        port: the port (0: any free one; ``Explorer.url`` says which).
        token: a secret every request must carry (``?token=`` once, then a cookie).
        data_dir: prepared TensorFlow Datasets for the thumbnails (default ``$RAYMEM_DATA_DIR``).
        block: serve until interrupted; else return the explorer started in a background thread.

    Raises:
        RaymemError: a run that is not one, a non-loopback host without token, a port that cannot be bound; all
            before anything listens.
    """
    check_bind(host, token, insecure_public)
    names = [runs] if isinstance(runs, str) else list(runs)
    sources = []
    for name in names:
        run = Run(name, storage)
        run.info  # noqa: B018 - not a run: its error now, not on the first page
        sources.append(RunSource(run, data_dir))
    explorer = Explorer(make_server(sources, host, port, token), sources, token)
    if block:
        explorer.serve_forever()
        return explorer
    return explorer.start()

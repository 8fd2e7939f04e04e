"""The explorer's HTTP side: the standard library's ThreadingHTTPServer, HTML pages and JSON endpoints.

Routes (``K``: the run's position among those served)::

    /                                 the runs served                  /compare?ref=K (several runs: Fig. C.2)
    /run/K/                           overview (reloads itself)        /run/K/api/status
    /run/K/memorization?sort=&page=   training examples                /run/K/api/memorization?...
    /run/K/train/I   /run/K/test/J    an example and its influences    /run/K/api/influenced/I  /run/K/api/influence/J
    /run/K/pairs?fdr=                 high-influence pairs             /run/K/api/pairs?fdr=
    /run/K/trials                     the trials table                 /run/K/api/trials
    /run/K/image/train/I.png          a thumbnail from the run's data loader

A server bound beyond the loopback address takes requests only with its token (``?token=`` once, then a cookie,
or an ``Authorization: Bearer`` header), unless it was started ``insecure_public``.
"""

from __future__ import annotations

import hmac
import io
import ipaddress
import json
import math
import re
import socket
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np

from raymem.errors import RaymemError
from raymem.explorer import pages
from raymem.explorer.state import MemQuery, RunSource

__all__ = ["is_loopback_host", "check_bind", "make_server", "Handler"]

COOKIE = "raymem_token"
ROUTE = re.compile(r"^/run/(\d+)(?:/(api/)?(.*))?$")


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (an address or a name) reaches this machine's loopback interface only."""
    if not host:
        return False  # "" binds every interface
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def check_bind(host: str, token: str | None, insecure_public: bool) -> None:
    """Refuse to bind beyond the loopback address without a token or an explicit ``insecure_public``."""
    if token is not None and not token.strip():
        raise RaymemError("token is empty; pass a secret string (e.g. from `openssl rand -hex 16`).",
                          parameter="token")
    if is_loopback_host(host) or token or insecure_public:
        return
    raise RaymemError(f"host {host!r} is not a loopback address, and anyone who reaches it could read the runs; "
                      "pass --token T (then open the URL with ?token=T), reach it through an SSH tunnel, or pass "
                      "--insecure-public to serve it to everyone.", parameter="host")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _clean(value):
    """JSON without NaN (which JSON has not): None instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _query(qs: dict) -> MemQuery:
    def one(name, cast=str, default=None):
        values = [v for v in qs.get(name, []) if v != ""]
        return cast(values[-1]) if values else default

    return MemQuery(sort=one("sort", default="mem"), descending=one("order", default="desc") != "asc",
                    klass=one("klass", int), certified=one("certified") == "1", flipped=one("flipped") == "1",
                    min_mem=one("min_mem", float), max_mem=one("max_mem", float), page=one("page", int, 0),
                    per_page=one("per_page", int, 50))


def _png(image) -> bytes:
    """One example as a PNG, scaled as ``raymem figures`` shows it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image

    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 1.0)
        if lo < 0.0 or hi > 1.0:  # normalised inputs: stretch to [0, 1], as figures do
            a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    out = io.BytesIO()
    matplotlib.image.imsave(out, a, format="png", cmap="gray" if a.ndim == 2 else None,
                            **({"vmin": 0.0, "vmax": 1.0} if a.dtype != np.uint8 else {}))
    return out.getvalue()


class Handler(BaseHTTPRequestHandler):
    """One request: check the token, route, answer (HTML, JSON or PNG)."""

    server_version = "raymem-serve"
    sources: list[RunSource] = []
    token: str | None = None

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's name; quiet: a page per second is normal
        pass

    def do_GET(self):  # noqa: N802 - the stdlib's name
        parts = urlsplit(self.path)
        qs = parse_qs(parts.query)
        if not self._authorized(qs):
            return self._send(403, "text/plain", b"forbidden: this server needs its token (?token=...)\n")
        try:
            status, kind, body = self._route(parts.path, qs)
        except (KeyError, IndexError, ValueError) as exc:
            status, kind, body = 404, "text/plain", f"not found: {exc}\n".encode()
        except RaymemError as exc:
            status, kind, body = 400, "text/plain", f"error: {exc}\n".encode()
        except Exception as exc:  # a page that fails must not take the server down: say what, keep serving
            status, kind, body = 500, "text/plain", f"internal error: {type(exc).__name__}: {exc}\n".encode()
        cookie = None
        if self.token and qs.get("token"):
            cookie = f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"
        self._send(status, kind, body, cookie)

    def _authorized(self, qs: dict) -> bool:
        if not self.token:
            return True
        offered = list(qs.get("token", []))
        cookies = SimpleCookie(self.headers.get("Cookie", ""))
        if COOKIE in cookies:
            offered.append(cookies[COOKIE].value)
        header = self.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            offered.append(header[len("Bearer "):])
        return any(hmac.compare_digest(o.encode(), self.token.encode()) for o in offered)

    def _send(self, status: int, kind: str, body: bytes, cookie: str | None = None) -> None:
        self.send_response(status)
        text = kind.startswith("text") or "json" in kind
        self.send_header("Content-Type", kind + ("; charset=utf-8" if text else ""))
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if cookie:
            self.send_header("Set-Cookie", cookie)
        self.end_headers()
        self.wfile.write(body)

    def _route(self, path: str, qs: dict) -> tuple[int, str, bytes]:
        if path in ("/", "/index.html"):
            return 200, "text/html", pages.runs_index(self.sources).encode()
        if path == "/compare":
            return 200, "text/html", pages.compare_page(self.sources, int(qs.get("ref", ["0"])[-1])).encode()
        match = ROUTE.match(path)
        if not match:
            raise KeyError(path)
        k, api, rest = int(match.group(1)), bool(match.group(2)), match.group(3) or ""
        source, prefix = self.sources[k], f"/run/{k}/"
        if api:
            return 200, "application/json", json.dumps(_clean(self._api(source, rest, qs)),
                                                       default=_json_default).encode()
        if rest.startswith("image/"):
            return 200, "image/png", self._image(source, rest)
        return 200, "text/html", self._html(source, prefix, rest, qs).encode()

    def _html(self, source: RunSource, prefix: str, rest: str, qs: dict) -> str:
        top = int(qs.get("top", ["10"])[-1])
        if rest == "":
            return pages.overview(source, prefix)
        if rest == "memorization":
            return pages.memorization(source, prefix, _query(qs))
        fdr = [float(v) for v in qs.get("fdr", []) if v]
        fdr = fdr[-1] if fdr else None
        if rest.startswith("train/"):
            return pages.train_example(source, prefix, int(rest[6:]), top, fdr)
        if rest.startswith("test/"):
            return pages.test_example(source, prefix, int(rest[5:]), top, fdr)
        if rest == "pairs":
            return pages.pairs_page(source, prefix, fdr, int(qs.get("page", ["0"])[-1]))
        if rest == "trials":
            return pages.trials_page(source, prefix)
        raise KeyError(rest)

    def _api(self, source: RunSource, rest: str, qs: dict):
        top = int(qs.get("top", ["10"])[-1])
        if rest == "status":
            return {**source.status(), "trials_in_log": source.run.trials_done}
        if rest == "memorization":
            rows, total = source.memorization(_query(qs))
            return {"total": total, "rows": rows.to_pylist()}
        if rest.startswith("influence/"):
            return source.influence(int(rest[10:]), top).to_pylist()
        if rest.startswith("influenced/"):
            return source.influenced(int(rest[11:]), top).to_pylist()
        if rest == "pairs":
            fdr = [v for v in qs.get("fdr", []) if v]
            return source.pairs(float(fdr[-1]) if fdr else None).to_pylist()
        if rest == "trials":
            return source.trials().to_pylist()
        raise KeyError(rest)

    def _image(self, source: RunSource, rest: str) -> bytes:
        match = re.fullmatch(r"image/(train|test)/(\d+)\.png", rest)
        if not match:
            raise KeyError(rest)
        train, test, why = source.images()
        images = train if match.group(1) == "train" else test
        if images is None:
            raise KeyError(why)
        return _png(images[int(match.group(2))])


def make_server(sources: list[RunSource], host: str, port: int, token: str | None) -> ThreadingHTTPServer:
    """A server (not yet serving) for ``sources`` on ``host:port`` (port 0: any free one)."""
    handler = type("RunHandler", (Handler,), {"sources": list(sources), "token": token})
    try:
        server = ThreadingHTTPServer((host, int(port)), handler)
    except OSError as exc:
        raise RaymemError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another port (0: any free "
                          "one) or --host.", parameter="port") from None
    server.daemon_threads = True
    return server

"""A loopback HTTP server laid out like the model hub, for `axchat pull` tests: the tree
API with sizes, `resolve/` downloads with Range, a gated repository, a connection
that breaks off mid-file on request, and downloads that redirect elsewhere (as the hub's
to its CDN)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Repo:
    files: dict[str, bytes]
    token: str | None = None  # gated: only this Bearer token may read it


@dataclass
class HubState:
    repos: dict[str, Repo] = field(default_factory=dict)
    # path -> bytes to send before dropping the connection, once
    break_after: dict[str, int] = field(default_factory=dict)
    # (path, Range header, Authorization header) of every download
    downloads: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    # request path -> Location: a download answered with a redirect there
    redirects: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.server.state.repos.get(repo_id)
        if repo is None:
            self._send(404, b'{"error":"Repository not found"}')
            return None
        if repo.token is not None and self.headers.get("Authorization") != f"Bearer {repo.token}":
            self._send(401, b'{"error":"Access to this model is restricted"}')
            return None
        return repo

    def do_GET(self) -> None:
        state = self.server.state
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/main(\?recursive=true)?", self.path):
            if (repo := self._repo(m.group(1))) is None:
                return
            listing = [
                {
                    "type": "file",
                    "path": p,
                    "size": len(b),
                    **({"lfs": {"size": len(b)}} if p.endswith(".safetensors") else {}),
                }
                for p, b in repo.files.items()
            ]
            self._send(200, json.dumps(listing).encode(), {"Content-Type": "application/json"})
            return
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/main/(.+)", self.path):
            if (repo := self._repo(m.group(1))) is None:
                return
            path, rng = m.group(2), self.headers.get("Range")
            with state.lock:
                state.downloads.append((path, rng, self.headers.get("Authorization")))
                cut = state.break_after.pop(path, None)
            if self.path in state.redirects:
                self._send(302, b"", {"Location": state.redirects[self.path]})
                return
            if path not in repo.files:
                self._send(404, b"")
                return
            data = repo.files[path]
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1)) if rng else 0  # type: ignore[union-attr]
            body = data[start:]
            self.send_response(206 if rng else 200)
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if cut is None:
                self.wfile.write(body)
                return
            # Promise the whole file, send part of it, hang up: a dropped connection.
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(404, b"")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: HubState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


@contextmanager
def hub_server(state: HubState) -> Iterator[str]:
    """Serve state on a loopback port; yields the endpoint URL."""
    server = _Server(state)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

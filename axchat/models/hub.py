"""The two hub requests `axchat pull` needs, on urllib: a repository's file listing with
sizes, and one file's bytes from an offset (HTTP Range), each failure a one-line HubError.

The endpoint is `$HF_ENDPOINT` (default the public hub), so tests point it at a loopback
server; `$HF_TOKEN`, when set, goes along as a Bearer token for gated and private models,
to the hub's own host only: downloads redirect to a CDN, which must never see it.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ENDPOINT = "https://huggingface.co"
TIMEOUT_S = 30.0  # per socket operation: a stalled connection ends the pull instead of hanging it
CHUNK_BYTES = 1 << 16


class HubError(Exception):
    """The hub could not give us what we asked for; the message is one line for the user."""


class Interrupted(HubError):
    """The connection broke mid-file; what arrived is kept, and a new pull resumes from it."""


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _origin(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) with the scheme's default port filled in; None for a URL
    whose port is not a number (never the hub's)."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return None
    return parts.scheme, (parts.hostname or "").lower(), port


class _TokenStaysOnHub(urllib.request.HTTPRedirectHandler):
    """Follows redirects as urllib does, minus the token once one leaves the hub's own
    scheme, host and port (urllib copies every `add_header` header to the next request,
    wherever it goes). Why not `add_unredirected_header`: that drops the token on the
    hub's own redirects too (a renamed repository answers with one), and a gated model
    behind one would then be refused."""

    def redirect_request(  # type: ignore[override]
        self,
        req: urllib.request.Request,
        fp: object,
        code: int,
        msg: str,
        headers: object,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)  # type: ignore[arg-type]
        if new is not None and (_origin(newurl) is None or _origin(newurl) != _origin(endpoint())):
            new.remove_header("Authorization")
        return new


def _request(url: str, headers: dict[str, str] | None = None) -> urllib.request.Request:
    req = urllib.request.Request(url, headers={"User-Agent": "axchat-pull", **(headers or {})})
    token = os.environ.get("HF_TOKEN")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    return req


def _open(
    req: urllib.request.Request, repo_id: str, gated: bool, timeout_s: float = TIMEOUT_S
) -> http.client.HTTPResponse:
    try:
        opener = urllib.request.build_opener(_TokenStaysOnHub())
        return opener.open(req, timeout=timeout_s)  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        raise _http_error(exc.code, repo_id, gated) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise HubError(f"cannot reach {endpoint()} ({reason}): no network? `axchat pull` needs one") from None


def _http_error(code: int, repo_id: str, gated: bool) -> HubError:
    if code in (401, 403):
        token = (
            "HF_TOKEN is set but was refused" if os.environ.get("HF_TOKEN") else "set HF_TOKEN to a hub access token"
        )
        if gated:
            return HubError(f"{repo_id} is gated (HTTP {code}): accept its licence on the hub, then {token}")
        return HubError(f"{repo_id}: access denied (HTTP {code}); if it is gated or private, {token}")
    if code == 404:
        return HubError(f"{repo_id}: no such model on {endpoint()} (HTTP 404)")
    return HubError(f"{repo_id}: the hub answered HTTP {code}")


def probe(repo_id: str, timeout_s: float) -> None:
    """Whether the hub has repo_id, asked once with a short timeout: HubError when it is
    unreachable or says no. Gated or private models count as there (a token may open them)."""
    try:
        with _open(_request(f"{endpoint()}/api/models/{repo_id}"), repo_id, False, timeout_s):
            pass
    except HubError as exc:
        if "access denied" in str(exc) or "gated" in str(exc):
            return
        raise
    except TimeoutError:
        raise HubError(f"{endpoint()} did not answer within {timeout_s:g}s") from None


def list_files(repo_id: str, revision: str = "main", *, gated: bool = False) -> list[RemoteFile]:
    """Every file of the repository with its size, from the hub's tree API."""
    quoted = urllib.parse.quote(revision, safe="")
    url = f"{endpoint()}/api/models/{repo_id}/tree/{quoted}?recursive=true"
    with _open(_request(url), repo_id, gated) as resp:
        try:
            entries = json.loads(resp.read())
        except (ValueError, OSError) as exc:
            raise HubError(f"{repo_id}: the hub's file listing could not be read ({exc})") from None
    return [
        RemoteFile(e["path"], int(e.get("lfs", {}).get("size", e.get("size", 0))))
        for e in entries
        if isinstance(e, dict) and e.get("type") == "file" and "path" in e
    ]


def download(
    repo_id: str,
    remote: RemoteFile,
    part: Path,
    on_bytes: Callable[[int], None],
    *,
    revision: str = "main",
    gated: bool = False,
) -> None:
    """Append remote's bytes to part, starting after what part already holds.

    A server that ignores Range (200 instead of 206) sends the whole file, so part is
    started afresh. Raises Interrupted when the connection drops mid-file.
    """
    have = part.stat().st_size if part.exists() else 0
    if have >= remote.size > 0:
        return
    url = f"{endpoint()}/{repo_id}/resolve/{urllib.parse.quote(revision, safe='')}/{urllib.parse.quote(remote.path)}"
    headers = {"Range": f"bytes={have}-"} if have else {}
    with _open(_request(url, headers), repo_id, gated) as resp:
        if have and resp.status != 206:
            on_bytes(-have)  # the progress bar counted bytes we now throw away
            have = 0
        with open(part, "ab" if have else "wb") as out:
            try:
                while chunk := resp.read(CHUNK_BYTES):
                    out.write(chunk)
                    have += len(chunk)
                    on_bytes(len(chunk))
            except (TimeoutError, http.client.IncompleteRead, ConnectionError) as exc:
                out.flush()
                raise Interrupted(
                    f"download of {remote.path} broke off after {have} of {remote.size} bytes ({type(exc).__name__}): "
                    "run `axchat pull` again to resume"
                ) from None
    if have != remote.size:
        raise Interrupted(
            f"{remote.path}: got {have} bytes, the hub listed {remote.size}: run `axchat pull` again to resume"
        )

"""A keyless bridge is not usable from other web sites: a hostile page's simple POST, a
cross-origin fetch and a DNS-rebound Host are all refused before reaching the daemon,
while the bridge's own page and plain API clients are served."""

from __future__ import annotations

import json
import urllib.request
from urllib.parse import urlsplit

from test_openai_api import _call
from web_bridge import BridgeProcess, bridge_fixture  # noqa: F401

BODY = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()


def send(bridge: BridgeProcess, headers: dict[str, str], data: bytes | None = BODY) -> tuple[int, dict]:  # type: ignore[type-arg]
    path = "v1/chat/completions" if data is not None else "v1/models"
    status, body, _ = _call(urllib.request.Request(bridge.url + path, data=data, headers=headers))
    return status, body


def test_cross_site_requests_are_refused(bridge: BridgeProcess) -> None:
    evil = "http://evil.example"
    # The audit's attack: a text/plain POST (no preflight) from another origin.
    status, body = send(bridge, {"Content-Type": "text/plain", "Origin": evil})
    assert status == 403 and body["error"]["code"] == "cross_origin"
    status, body = send(bridge, {"Content-Type": "text/plain"})
    assert status == 415 and body["error"]["code"] == "not_json"
    status, body = send(bridge, {"Content-Type": "application/json", "Origin": evil})
    assert status == 403 and body["error"]["code"] == "cross_origin"
    status, body = send(bridge, {"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"})
    assert status == 403
    # DNS rebinding: the attacker's name resolving to 127.0.0.1; the Host header tells.
    port = urlsplit(bridge.url).port
    status, body = send(bridge, {"Host": f"evil.example:{port}"}, data=None)
    assert status == 403 and body["error"]["code"] == "host_not_allowed"


def test_own_page_and_api_clients_are_served(bridge: BridgeProcess) -> None:
    own = bridge.url.rstrip("/")
    status, body = send(bridge, {"Content-Type": "application/json", "Origin": own, "Sec-Fetch-Site": "same-origin"})
    assert status == 200 and body["choices"][0]["finish_reason"] in ("length", "stop")
    port = urlsplit(bridge.url).port
    status, _ = send(bridge, {"Host": f"localhost:{port}"}, data=None)
    assert status == 200

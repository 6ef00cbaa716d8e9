"""Who is who behind a bridge: a keyless bridge serves only its own Unix user; a key file
names one key per application, and the end users of each key's requests are that key's
own (claiming another application's user name reaches none of that user's cache or
slots); a caller who names nobody is one user per connection; a proxy's user header is
believed only when the bridge is told to trust it."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import HELD, DaemonProcess
from web_bridge import BridgeProcess, bridge_fixture, started_bridge  # noqa: F401

OUTSIDER = 54_244  # a numeric uid needs no /etc/passwd entry
# Loaded now: a child running as OUTSIDER cannot read this interpreter's files to load
# the codec http.client asks for by name.
"127.0.0.1".encode("idna")
ALICE_APP, MALLORY_APP = "alice-app-key-0123456789", "mallory-app-key-0123456789"


def chat(conn: http.client.HTTPConnection, content: str, key: str | None = None, **extra: object) -> tuple[int, dict]:  # type: ignore[type-arg]
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    headers.update({k: str(v) for k, v in extra.pop("headers", {}).items()})  # type: ignore[attr-defined]
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), headers)
    reply = conn.getresponse()
    return reply.status, json.loads(reply.read())


def connect(bridge: BridgeProcess) -> http.client.HTTPConnection:
    url = urlsplit(bridge.url)
    return http.client.HTTPConnection(url.hostname, url.port, timeout=60)


def status_as(uid: int, bridge: BridgeProcess, path: str = "/v1/chat/completions") -> int:
    """The HTTP status class (200, 400, ...) a request gets from a child running as `uid`."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            conn = connect(bridge)
            if path == "/health":
                conn.request("GET", path)
                code = conn.getresponse().status // 100
            else:
                code = chat(conn, "hello")[0] // 100
        except BaseException as exc:
            print(f"child as uid {uid}: {exc!r}", file=sys.stderr, flush=True)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) * 100


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as a second Unix user")
def test_a_keyless_bridge_serves_its_own_unix_user_and_nobody_else(bridge: BridgeProcess) -> None:
    assert status_as(OUTSIDER, bridge) == 400  # 403
    assert status_as(os.getuid(), bridge) == 200
    assert status_as(OUTSIDER, bridge, "/health") == 200  # liveness stays open to a balancer's check


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to open a connection as a second Unix user")
@pytest.mark.parametrize("lookup", ["by_tuple", "tables"])
def test_the_kernel_names_the_user_owning_a_loopback_connection(lookup: str) -> None:
    """Asked for the one socket (netlink sock_diag, the default where the kernel has it)
    and read from the socket tables (where it has not), the same answers."""
    import ipaddress

    from axchat.frontends.web import local_user, sock_diag

    if lookup == "by_tuple":
        if not sock_diag.available():
            pytest.skip("this kernel has no inet_diag to ask for one socket")
        socket_owner = local_user.socket_owner
    else:

        def socket_owner(client: tuple[str, int], server: tuple[str, int]) -> int | None:
            ip = ipaddress.ip_address
            return local_user.table_owner((ip(client[0]), client[1]), (ip(server[0]), server[1]))

    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family) as server:
            server.bind((host, 0))
            server.listen()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child: connect as the outsider and wait
                try:
                    os.setgid(OUTSIDER)
                    os.setuid(OUTSIDER)
                    client = socket.create_connection(server.getsockname()[:2])
                    client.recv(1)  # until the parent closes its end
                finally:
                    os._exit(0)
            conn, peer = server.accept()
            try:
                assert socket_owner(peer[:2], conn.getsockname()[:2]) == OUTSIDER
                assert socket_owner((host, 1), conn.getsockname()[:2]) is None  # no such connection
            finally:
                conn.close()
                os.waitpid(pid, 0)


@pytest.fixture
def two_apps(daemon: DaemonProcess, tmp_path: Path) -> Iterator[BridgeProcess]:
    keys = tmp_path / "keys"
    keys.write_text(f"# one key per application\nalice-app {ALICE_APP}\nmallory-app {MALLORY_APP}\n")
    keys.chmod(0o600)
    with started_bridge(daemon.socket, "--api-key-file", str(keys)) as bridge:
        yield bridge


def test_claiming_another_applications_user_reaches_none_of_their_cache(two_apps: BridgeProcess) -> None:
    conn = connect(two_apps)
    secret = "Alice's secret plan is to paint the fence blue on Tuesday"
    assert chat(conn, secret, ALICE_APP, user="alice")[0] == 200
    status, again = chat(conn, secret, ALICE_APP, user="alice")
    assert status == 200 and again["usage"]["prompt_tokens_details"]["cached_tokens"] > 0  # her own cache
    status, claimed = chat(conn, secret, MALLORY_APP, user="alice")
    assert status == 200 and claimed["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert chat(conn, secret, "wrong-key-0123456789abcdef")[0] == 401


def test_claiming_another_applications_user_spends_none_of_their_slots(tiny_model_dir: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"alice-app {ALICE_APP}\nmallory-app {MALLORY_APP}\n")
    daemon = DaemonProcess(tiny_model_dir, "--max-per-client", "1").wait_ready()
    try:
        with started_bridge(daemon.socket, "--api-key-file", str(keys)) as bridge:
            held = connect(bridge)
            body = {"messages": [{"role": "user", "content": "hold"}], "stream": True, "user": "alice", **HELD}
            held.request("POST", "/v1/chat/completions", json.dumps(body),
                         {"Content-Type": "application/json", "Authorization": f"Bearer {MALLORY_APP}"})  # fmt: skip
            stream = held.getresponse()
            assert stream.status == 200 and stream.readline().startswith(b"data: {")  # mallory's "alice" holds a slot
            assert chat(connect(bridge), "hi", MALLORY_APP, user="alice")[0] == 429  # that name's one slot is taken
            assert chat(connect(bridge), "hi", ALICE_APP, user="alice")[0] == 200  # the real alice's is not
            held.close()
    finally:
        assert daemon.stop() == 0


def test_a_caller_who_names_nobody_is_one_user_per_connection(bridge: BridgeProcess) -> None:
    first = connect(bridge)
    text = "An anonymous conversation about the colour of the sea in winter"
    assert chat(first, text)[0] == 200
    status, same_connection = chat(first, text)
    assert status == 200 and same_connection["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    status, other_connection = chat(connect(bridge), text)
    assert status == 200 and other_connection["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_a_user_header_is_believed_only_when_trusted(daemon: DaemonProcess, bridge: BridgeProcess) -> None:
    text = "Bob's notes on the garden, kept for the proxy's user bob"
    as_bob = {"headers": {"X-Axchat-User": "bob"}}
    # Not trusted: the header is ignored, each connection is its own anonymous user.
    assert chat(connect(bridge), text, **as_bob)[0] == 200
    assert chat(connect(bridge), text, **as_bob)[1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    with started_bridge(daemon.socket, "--trust-user-header", "X-Axchat-User") as trusting:
        assert chat(connect(trusting), text, **as_bob)[0] == 200
        status, again = chat(connect(trusting), text, **as_bob)  # another connection, the same bob
        assert status == 200 and again["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
        carol = chat(connect(trusting), text, headers={"X-Axchat-User": "carol"})[1]
        assert carol["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("alice short\n", "line 1 ('alice') is 5 characters"),
        ("a b c\n", "line 1: expected `NAME KEY`"),
        (f"x {ALICE_APP}\nx {MALLORY_APP}\n", "line 2: the name 'x' is given twice"),
        (f"a {ALICE_APP}\nb {ALICE_APP}\n", "line 2: the same key under two names"),
        ("# only a comment\n", "holds no key"),
    ],
)
def test_a_bad_key_file_is_one_line(tmp_path: Path, content: str, why: str) -> None:
    keys = tmp_path / "keys"
    keys.write_text(content)
    done = subprocess.run([sys.executable, "-m", "axchat", "web", "--api-key-file", str(keys), "--port", "0"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and why in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr

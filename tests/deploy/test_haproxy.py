"""deploy/haproxy.cfg as shipped (only its `bind` and `server` lines swapped for this
machine's ports, and a stats socket added to read its health checks), in front of two
"hosts", each a real daemon with its web bridge, keyed as deploy/README.md requires, all
on loopback: the health checks pass, a client cannot claim to be another user,
conversations keep to the host that caches their prefix, and when one host's daemon
dies, a stream cut on it ends with a clear error and every later turn is answered by the
other host."""

from __future__ import annotations

import csv
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from conftest import HELD_TOKENS, DaemonProcess, LoggedProcess, short_socket_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "frontends" / "web"))
from web_bridge import API_KEY, BridgeProcess

DEPLOY_CFG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg"
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
USERS = [f"user-{i}" for i in range(20)]
TURN_TOKENS = 8
DEADLINE_S = 60.0
USER_HEADER = "X-Axchat-User"

pytestmark = [
    pytest.mark.skipif(HAPROXY is None, reason="no haproxy: `make test` installs Debian's package when run as root"),
    pytest.mark.timeout(300),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_for(port: int, servers: dict[str, str], stats: Path) -> str:
    """The shipped file with this machine's listening port and bridges, and a socket to
    ask HAProxy how its health checks went."""
    text = DEPLOY_CFG.read_text()
    assert "bind 127.0.0.1:8080" in text and text.rstrip().splitlines()[-1].strip().startswith("server ")
    assert text.count("\nglobal\n") == 1
    kept = [line for line in text.splitlines() if not line.strip().startswith("server ")]
    body = "\n".join(kept).replace("bind 127.0.0.1:8080", f"bind 127.0.0.1:{port}")
    body = body.replace("\nglobal\n", f"\nglobal\n    stats socket {stats}\n")
    return body + "\n" + "".join(f"    server {name} {address}\n" for name, address in servers.items())


class Haproxy(LoggedProcess):
    name = "haproxy"

    def __init__(self, config: Path, port: int, stats: Path) -> None:
        super().__init__([str(HAPROXY), "-db", "-f", str(config)])
        self.url = f"http://127.0.0.1:{port}/v1"
        self.stats = stats
        deadline = time.monotonic() + DEADLINE_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                assert self.proc.poll() is None, self.log_text()
                assert time.monotonic() < deadline, "haproxy never listened"
                time.sleep(0.05)  # a polling period, bounded by the deadline above

    def servers(self) -> dict[str, dict[str, str]]:
        """`show stat` for the bridges' servers: status, check_status, check_code..."""
        with socket.socket(socket.AF_UNIX) as stats:
            stats.settimeout(DEADLINE_S)
            stats.connect(str(self.stats))
            stats.sendall(b"show stat\n")
            chunks = []
            while chunk := stats.recv(65536):  # HAProxy closes after one command
                chunks.append(chunk)
        rows = csv.DictReader(b"".join(chunks).decode().removeprefix("# ").splitlines())
        return {row["svname"]: row for row in rows if row["pxname"] == "bridges" and row["svname"] != "BACKEND"}

    def checked_servers(self) -> dict[str, dict[str, str]]:
        """The servers once each has had its first health check (every 2 s)."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            servers = self.servers()
            if all(row["check_status"].lstrip("* ") not in ("", "INI") for row in servers.values()):
                return servers
            assert time.monotonic() < deadline, f"no health check finished: {servers}"
            time.sleep(0.05)  # a polling period, bounded by the deadline above


@pytest.fixture
def hosts(tiny_model_dir: Path) -> Iterator[tuple[dict[str, DaemonProcess], Haproxy]]:
    daemons: dict[str, DaemonProcess] = {}
    bridges: list[BridgeProcess] = []
    proxy: Haproxy | None = None
    try:
        for name in ("host1", "host2"):
            daemons[name] = DaemonProcess(tiny_model_dir)
        servers = {}
        work = short_socket_dir()
        key_file = work / "api-key"
        key_file.write_text(API_KEY + "\n")
        key_file.chmod(0o600)
        for name, daemon in daemons.items():
            daemon.wait_ready()
            # As deploy/README.md runs them: a key, and the end user from the header that
            # only an authenticating proxy in front may set.
            bridge = BridgeProcess(
                daemon.socket, "--api-key-file", str(key_file), "--trust-user-header", USER_HEADER
            ).wait_listening()
            bridges.append(bridge)
            servers[name] = bridge.url.removeprefix("http://").rstrip("/")
        port = free_port()
        config = work / "haproxy.cfg"
        config.write_text(config_for(port, servers, work / "stats.sock"))
        proxy = Haproxy(config, port, work / "stats.sock")
        yield daemons, proxy
    finally:
        for process in [proxy, *bridges, *daemons.values()]:
            if process is not None:
                process.stop()


def turn(
    client: openai.OpenAI, model: str, user: str, messages: list[dict[str, str]], headers: dict[str, str] | None = None
) -> tuple[str, str, int]:
    """One turn through the balancer: (the host that answered, its text, cached tokens)."""
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=messages, max_tokens=TURN_TOKENS, user=user, extra_headers=headers  # type: ignore[arg-type]
    )
    reply = raw.parse()
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    return raw.headers["x-axchat-host"], reply.choices[0].message.content or "", usage.prompt_tokens_details.cached_tokens or 0


def test_keyed_bridges_pass_their_checks_and_a_client_cannot_claim_a_user(
    hosts: tuple[dict[str, DaemonProcess], Haproxy],
) -> None:
    _, proxy = hosts
    for name, row in proxy.checked_servers().items():
        assert row["status"] == "UP" and row["check_status"].lstrip("* ") == "L7OK", (name, row)
    with openai.OpenAI(base_url=proxy.url, api_key=API_KEY, max_retries=0, timeout=DEADLINE_S) as client:
        model = client.models.list().data[0].id
        # Carol's first turn carries a claim to be mallory. HAProxy deletes it, so the turn
        # is carol's (her `user` field): her next turn, without the claim, goes to the same
        # host and finds her prefix cached there. Had the claim reached the bridge, the
        # first turn would have been mallory's, and the cache is private to each user.
        messages = [{"role": "user", "content": "Hello, I am carol."}]
        first_host, answer, _ = turn(client, model, "carol", messages, {USER_HEADER: "mallory"})
        messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "Tell me more."}]
        host, _, cached = turn(client, model, "carol", messages)
        assert host == first_host and cached > 0


def test_conversations_keep_their_host_and_survive_losing_one(hosts: tuple[dict[str, DaemonProcess], Haproxy]) -> None:
    daemons, proxy = hosts
    with openai.OpenAI(base_url=proxy.url, api_key=API_KEY, max_retries=0, timeout=DEADLINE_S) as client:
        model = client.models.list().data[0].id
        conversations: dict[str, list[dict[str, str]]] = {u: [] for u in USERS}
        home: dict[str, str] = {}

        def say(user: str, text: str) -> tuple[str, int]:
            conversations[user].append({"role": "user", "content": text})
            host, answer, cached = turn(client, model, user, conversations[user])
            conversations[user].append({"role": "assistant", "content": answer})
            return host, cached

        for user in USERS:
            home[user], cached = say(user, f"Hello, I am {user}.")
            assert cached == 0
        assert set(home.values()) == {"host1", "host2"}, home  # the hash spread them
        for user in USERS:
            host, cached = say(user, "Tell me more.")
            assert host == home[user]  # affinity: the same host every turn...
            assert cached > 0, user  # ...where the first turn's prefix is still cached

        # A stream on host1 when its daemon dies: the client hears a clear error.
        victim = next(u for u in USERS if home[u] == "host1")
        stream = client.chat.completions.create(
            model=model,
            messages=[*conversations[victim], {"role": "user", "content": "A long story, please."}],  # type: ignore[list-item]
            user=victim,
            stream=True,
            max_tokens=HELD_TOKENS,
            extra_body={"ignore_eos": True},  # held by the test daemon: still streaming when it dies
        )
        chunks = iter(stream)
        assert next(chunks) is not None
        assert daemons["host1"].stop(signal.SIGKILL) == -signal.SIGKILL
        with pytest.raises(openai.APIError, match="daemon"):
            for _ in chunks:
                pass

        # Every conversation goes on; host1's move to host2 (their prefixes are gone with it).
        for user in USERS:
            host, cached = say(user, "And then?")
            assert host == "host2"
            if home[user] == "host2":
                assert cached > 0

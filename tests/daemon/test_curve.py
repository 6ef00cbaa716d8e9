"""Remote daemons: a `tcp://` socket speaks CURVE with an allow-list, clients without the
right keys are refused with a clear error (not a hang), and a tcp bind without keys is
refused unless it is marked insecure and on loopback. Real daemon, real sockets."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from conftest import HELD, DaemonProcess, LoggedProcess, RawClient, chat

from axchat import curve_keys as ck
from axchat import keys_command
from axchat.aclient import AsyncClient
from axchat.client import Client, KeysRefused
from axchat.daemon import curve_auth
from axchat.daemon.config import ServeConfig
from axchat.protocol import v1

# Long enough that a client waiting out its deadline could not pass for a refusal: the
# refusal must come from the handshake, not from the clock.
PATIENT_S = 60.0

UseKeys = Callable[[Path], None]


def hello(endpoint: str) -> None:
    with Client(endpoint, connect_timeout_s=PATIENT_S) as client:
        client.hello()


def hello_async(endpoint: str) -> None:
    async def say_hello() -> None:
        async with AsyncClient(endpoint, connect_timeout_s=PATIENT_S) as client:
            await client.hello()

    asyncio.run(asyncio.wait_for(say_hello(), PATIENT_S))


def make_keys(directory: Path, *argv: str) -> None:
    assert keys_command.main(["--keys-dir", str(directory), *argv]) == 0


@pytest.fixture(scope="module")
def key_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The daemon's keys (allowing `good`), a good client, a client not on the list, and
    a client holding the daemon's key but not its own allowed one."""
    root = tmp_path_factory.mktemp("curve")
    dirs = {name: root / name for name in ("server", "good", "stranger", "nokeys", "wrongserver")}
    make_keys(dirs["server"], "server")
    for client in ("good", "stranger", "wrongserver"):
        make_keys(dirs[client], "client")
        shutil.copy(dirs["server"] / "server.key", dirs[client] / "server.key")
    make_keys(dirs["server"], "allow", str(dirs["good"] / "client.key"), "--name", "good")
    # A key pair that is not the daemon's, posing as its public key.
    make_keys(dirs["nokeys"], "server")
    shutil.copy(dirs["nokeys"] / "server.key", dirs["wrongserver"] / "server.key")
    (dirs["nokeys"] / "server.key").unlink()
    (dirs["nokeys"] / "server.key_secret").unlink()
    return dirs


@pytest.fixture(scope="module")
def curve_daemon(tiny_model_dir: Path, key_dirs: dict[str, Path]) -> Iterator[tuple[DaemonProcess, str]]:
    d = DaemonProcess(tiny_model_dir, "--keys-dir", str(key_dirs["server"]), socket="tcp://127.0.0.1:*")
    try:
        ready = d.wait_for_line("ready:")
        yield d, ready.split(" on ")[1].split(" ")[0]
    finally:
        assert d.stop() == 0, d.log_text()


@pytest.fixture
def another_host() -> str:
    """An endpoint on a non-loopback address, as a remote daemon's would be. The client
    must refuse before connecting; should one ever connect, this machine's own address
    keeps the attempt here."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not ipaddress.ip_address(address.address).is_loopback:
                return f"tcp://{address.address}:9"
    pytest.skip("this machine has no non-loopback IPv4 address")


@pytest.fixture
def as_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[UseKeys]:
    """Point this process's clients at one keys directory, as `--keys-dir` would."""
    for name in (ck.ENV_SERVER_KEY, ck.ENV_CLIENT_KEY):
        monkeypatch.delenv(name, raising=False)

    def use(directory: Path) -> None:
        monkeypatch.setenv(ck.ENV_KEYS_DIR, str(directory))

    yield use


def client_env(directory: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (ck.ENV_SERVER_KEY, ck.ENV_CLIENT_KEY)}
    return {**env, ck.ENV_KEYS_DIR: str(directory)}


def ask_json(endpoint: str, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "axchat", "ask", "--socket", endpoint, "--json", "--max-tokens", "12", *extra, "Hi"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def new_client(server_dir: Path, directory: Path, name: str | None = None) -> Path:
    """A client key pair in `directory` that knows the daemon's key; on its allow-list as `name`, if given."""
    make_keys(directory, "client")
    shutil.copy(server_dir / "server.key", directory / "server.key")
    if name is not None:
        make_keys(server_dir, "allow", str(directory / "client.key"), "--name", name)
    return directory


def curve_raw(endpoint: str, directory: Path) -> RawClient:
    """A raw protocol client speaking CURVE with the keys in `directory`."""
    return RawClient(endpoint, ck.client_keys(endpoint, client_env(directory)))


def stream_shape(stdout: str) -> tuple[list[str], dict[str, object]]:
    events = [json.loads(line) for line in stdout.splitlines()]
    done = events[-1]
    return [e["text"] for e in events if e["type"] == "delta"], {
        "type": done["type"],
        "finish_reason": done["finish_reason"],
        "usage": done["usage"],
    }


# ---------------------------------------------------------------- with a daemon


def test_a_remote_ask_with_keys_streams_as_a_local_one(
    curve_daemon: tuple[DaemonProcess, str], daemon: DaemonProcess, key_dirs: dict[str, Path]
) -> None:
    _, endpoint = curve_daemon
    remote = ask_json(endpoint, client_env(key_dirs["good"]))
    local = ask_json(daemon.socket, client_env(key_dirs["nokeys"]))
    assert remote.returncode == 0, remote.stderr
    assert local.returncode == 0, local.stderr
    deltas, done = stream_shape(remote.stdout)
    assert len(deltas) > 1  # streamed, not one block at the end
    assert (deltas, done) == stream_shape(local.stdout)


def test_a_client_without_the_server_key_is_refused_with_the_cause(
    curve_daemon: tuple[DaemonProcess, str], key_dirs: dict[str, Path], as_client: UseKeys
) -> None:
    _, endpoint = curve_daemon
    as_client(key_dirs["nokeys"])
    with pytest.raises(KeysRefused, match="requires CURVE keys and this client has none"):
        hello(endpoint)
    # `axchat ask` says so in one line and does not try to start a daemon of its own.
    proc = ask_json(endpoint, client_env(key_dirs["nokeys"]))
    assert proc.returncode == 2
    assert proc.stderr.startswith("axchat ask: the daemon at tcp://127.0.0.1:") and "--server-key" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_a_client_not_on_the_allow_list_is_refused_and_named(
    curve_daemon: tuple[DaemonProcess, str], key_dirs: dict[str, Path], as_client: UseKeys
) -> None:
    d, endpoint = curve_daemon
    as_client(key_dirs["stranger"])
    stranger = ck.read_public(str(key_dirs["stranger"] / "client.key")).decode()
    with pytest.raises(KeysRefused, match="not on the daemon's allow-list") as refused:
        hello(endpoint)
    assert stranger in str(refused.value)
    d.wait_for_line(f"refused a client whose key {stranger}", timeout_s=10)


def test_the_async_client_is_refused_too(
    curve_daemon: tuple[DaemonProcess, str], key_dirs: dict[str, Path], as_client: UseKeys
) -> None:
    _, endpoint = curve_daemon
    as_client(key_dirs["stranger"])
    with pytest.raises(KeysRefused, match="not on the daemon's allow-list"):
        hello_async(endpoint)


def test_a_wrong_server_key_is_named_as_the_likely_cause(
    curve_daemon: tuple[DaemonProcess, str], key_dirs: dict[str, Path], as_client: UseKeys
) -> None:
    _, endpoint = curve_daemon
    as_client(key_dirs["wrongserver"])
    with pytest.raises(KeysRefused, match="probably not that daemon's key"):
        hello(endpoint)


def test_allowing_a_client_takes_effect_without_a_restart(
    curve_daemon: tuple[DaemonProcess, str], key_dirs: dict[str, Path], as_client: UseKeys, tmp_path: Path
) -> None:
    _, endpoint = curve_daemon
    late = tmp_path / "late"
    make_keys(late, "client")
    shutil.copy(key_dirs["server"] / "server.key", late / "server.key")
    as_client(late)
    with pytest.raises(KeysRefused):
        hello(endpoint)
    make_keys(key_dirs["server"], "allow", str(late / "client.key"), "--name", "late")
    try:
        with Client(endpoint, connect_timeout_s=PATIENT_S) as client:
            assert isinstance(client.hello(), v1.Welcome)
            done = list(client.generate(chat("Hi", max_tokens=3)))[-1]
            assert isinstance(done, v1.Done) and done.finish_reason in ("length", "stop")
    finally:
        make_keys(key_dirs["server"], "revoke", "late")


def test_a_revoked_key_is_cut_off_on_the_connection_it_has(
    curve_daemon: tuple[DaemonProcess, str], key_dirs: dict[str, Path], tmp_path: Path
) -> None:
    d, endpoint = curve_daemon
    victim = curve_raw(endpoint, new_client(key_dirs["server"], tmp_path / "victim", name="victim"))
    other = curve_raw(endpoint, key_dirs["good"])
    try:
        assert isinstance(victim.request(v1.Hello()), v1.Welcome)
        victim.send("held", chat("Hi", **HELD))
        assert isinstance(victim.recv(want="held")[1], v1.Delta)  # running when the key goes
        make_keys(key_dirs["server"], "revoke", "victim")
        # The same open connection: its next request is refused, and what it had running ends.
        refused = victim.request(v1.Ping())
        assert isinstance(refused, v1.Error) and refused.code == "forbidden", refused
        assert "allow-list" in refused.message
        ended = list(victim.stream("held"))[-1]
        assert isinstance(ended, v1.Error) and ended.code == "forbidden", ended
        again = victim.request(chat("Hi", max_tokens=2))
        assert isinstance(again, v1.Error) and again.code == "forbidden", again
        # Everyone else is served as before.
        assert isinstance(other.request(v1.Hello()), v1.Welcome)
        other.send("after", chat("Hi", max_tokens=2))
        assert isinstance(list(other.stream("after"))[-1], v1.Done)
    finally:
        victim.close()
        other.close()
        if (key_dirs["server"] / "allowed_clients" / "victim.key").exists():
            make_keys(key_dirs["server"], "revoke", "victim")
    # Three refusals of one key, one log line.
    d.wait_for_line("request after@")  # logged after every line the refusals wrote
    key = ck.read_public(str(tmp_path / "victim" / "client.key")).decode()
    refusals = [line for line in d.lines if key in line and "refused" in line]
    assert len(refusals) == 1 and "refused a request of peer" in refusals[0], refusals


def test_a_key_refused_again_and_again_is_logged_once_a_while(
    curve_daemon: tuple[DaemonProcess, str], key_dirs: dict[str, Path], as_client: UseKeys, tmp_path: Path
) -> None:
    d, endpoint = curve_daemon
    as_client(new_client(key_dirs["server"], tmp_path / "pest"))
    for _ in range(4):
        with pytest.raises(KeysRefused, match="not on the daemon's allow-list"):
            hello(endpoint)
    other = curve_raw(endpoint, key_dirs["good"])
    try:
        other.send("after-pest", chat("Hi", max_tokens=2))
        assert isinstance(list(other.stream("after-pest"))[-1], v1.Done)
    finally:
        other.close()
    d.wait_for_line("request after-pest@")  # logged after every refusal's line
    key = ck.read_public(str(tmp_path / "pest" / "client.key")).decode()
    assert len([line for line in d.lines if f"refused a client whose key {key}" in line]) == 1


def test_a_refusal_log_line_is_due_once_a_window_per_key_and_says_what_it_held_back() -> None:
    refusals = curve_auth.RefusalLog(window_s=60.0, max_keys=2)
    assert refusals.due(b"a", 0.0) == curve_auth.Held(0, 0)
    assert refusals.due(b"a", 1.0) is None
    assert refusals.due(b"a", 59.0) is None
    assert refusals.due(b"b", 2.0) == curve_auth.Held(0, 0)
    assert refusals.due(b"c", 3.0) is None  # past the cap on keys: counted, not logged
    assert refusals.due(b"a", 60.0) == curve_auth.Held(2, 1)
    assert refusals.due(b"c", 62.5) == curve_auth.Held(0, 0)  # b's window is over: c takes its place


def test_the_allow_list_is_read_again_only_when_its_directory_changes(tmp_path: Path) -> None:
    make_keys(tmp_path, "client")
    make_keys(tmp_path, "allow", str(tmp_path / "client.key"), "--name", "first")
    allowed = tmp_path / "allowed_clients"
    first = ck.read_public(str(tmp_path / "client.key"))
    settled = allowed.stat().st_mtime - 10  # older than any file system's mtime resolution
    os.utime(allowed, (settled, settled))
    allow_list = curve_auth.AllowList(allowed)
    assert allow_list.keys() == {first}
    # Edited in place, the directory's mtime stays: the cached list is still the answer.
    (allowed / "first.key").write_text("not a certificate\n")
    os.utime(allowed, (settled, settled))
    assert allow_list.keys() == {first}
    make_keys(tmp_path, "client", "--force")
    make_keys(tmp_path, "allow", str(tmp_path / "client.key"), "--name", "second")
    assert allow_list.keys() == {ck.read_public(str(tmp_path / "client.key"))}  # read again: first is unreadable now


def test_plain_tcp_to_another_host_is_refused_before_connecting(
    tmp_path: Path, as_client: UseKeys, another_host: str
) -> None:
    as_client(tmp_path)  # no server key anywhere
    with pytest.raises(KeysRefused, match="--server-key") as refused:
        Client(another_host, connect_timeout_s=PATIENT_S)
    assert "unencrypted" in str(refused.value) and "axchat keys server" in str(refused.value)
    with pytest.raises(KeysRefused, match="--server-key"):
        hello_async(another_host)
    proc = ask_json(another_host, client_env(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"axchat ask: refusing to talk to {another_host} unencrypted")
    assert proc.stderr.count("\n") == 1
    env = client_env(tmp_path)
    # Said in so many words, plain text is allowed; a loopback daemon (--insecure-tcp) needs no words.
    assert ck.client_keys(another_host, {**env, ck.ENV_SERVER_KEY: ck.NO_KEY}) is None
    assert ck.client_keys("tcp://127.0.0.1:7777", env) is None


# ---------------------------------------------------------------- the bind rule


def test_a_tcp_bind_without_keys_is_refused_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, ck.ENV_KEYS_DIR: str(tmp_path / "empty")}
    proc = subprocess.run(
        [sys.executable, "-m", "axchat", "serve", "--socket", "tcp://127.0.0.1:0", "--check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"axchat serve: error: refusing to serve tcp://127.0.0.1:0 without CURVE keys: no "
        f"{tmp_path / 'empty' / 'server.key_secret'}; create them with `axchat keys server` "
        "(or, on loopback only, pass --insecure-tcp)"
    ]


@pytest.mark.parametrize(
    ("endpoint", "allowed"),
    [
        ("tcp://127.0.0.1:7777", True),
        ("tcp://[::1]:7777", True),
        ("tcp://localhost:*", True),
        ("tcp://0.0.0.0:7777", False),
        ("tcp://*:7777", False),
        ("tcp://eth0:7777", False),
        ("tcp://192.0.2.1:7777", False),
    ],
)
def test_insecure_tcp_is_for_loopback_only(endpoint: str, allowed: bool, tmp_path: Path) -> None:
    cfg = ServeConfig(model=None, insecure_tcp=True, keys_dir=str(tmp_path))
    if allowed:
        assert curve_auth.listen_security(cfg, endpoint) is None
    else:
        with pytest.raises(curve_auth.ListenRefused, match="only a loopback address"):
            curve_auth.listen_security(cfg, endpoint)


def test_keys_are_used_when_present_and_must_be_private(tmp_path: Path) -> None:
    make_keys(tmp_path, "server")
    cfg = ServeConfig(model=None, keys_dir=str(tmp_path))
    with pytest.raises(curve_auth.ListenRefused, match="allow-list"):
        curve_auth.listen_security(cfg, "tcp://0.0.0.0:7777")  # nobody could ever connect
    make_keys(tmp_path, "client")
    make_keys(tmp_path, "allow", str(tmp_path / "client.key"))
    keys = curve_auth.listen_security(cfg, "tcp://0.0.0.0:7777")
    assert keys is not None and keys.public == ck.read_public(str(tmp_path / "server.key"))
    assert curve_auth.listen_security(cfg, "ipc:///tmp/x.sock") is None  # the directory guards ipc
    os.chmod(tmp_path / "server.key_secret", 0o644)
    with pytest.raises(curve_auth.ListenRefused, match="lets others read it"):
        curve_auth.listen_security(cfg, "tcp://0.0.0.0:7777")
    os.chmod(tmp_path / "server.key_secret", 0o600)
    os.chmod(tmp_path / "allowed_clients", 0o777)
    with pytest.raises(curve_auth.ListenRefused, match="writable by nobody else"):
        curve_auth.listen_security(cfg, "tcp://0.0.0.0:7777")


# ---------------------------------------------------------------- `axchat keys`


def test_keys_command_creates_private_pairs_and_lists_them(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    make_keys(keys, "server")
    make_keys(keys, "client")
    assert os.stat(keys).st_mode & 0o777 == 0o700
    assert os.stat(keys / "server.key_secret").st_mode & 0o777 == 0o600
    assert os.stat(keys / "client.key_secret").st_mode & 0o777 == 0o600
    assert keys_command.main(["--keys-dir", str(keys), "server"]) == 1  # never replaced silently
    # `--`: a Z85 key may start with '-' (one in 85), which argparse would take for a flag.
    make_keys(keys, "allow", "--name", "laptop", "--", ck.read_public(str(keys / "client.key")).decode())
    proc = subprocess.run(
        [sys.executable, "-m", "axchat", "keys", "--keys-dir", str(keys), "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    server = ck.read_public(str(keys / "server.key")).decode()
    client = ck.read_public(str(keys / "client.key")).decode()
    assert f"server key: {server}" in proc.stdout and f"client key: {client}" in proc.stdout
    assert f"  laptop: {client}" in proc.stdout
    make_keys(keys, "revoke", "laptop")
    assert not (keys / "allowed_clients" / "laptop.key").exists()


def test_a_client_with_a_server_key_but_no_pair_of_its_own_is_told_what_to_do(
    tmp_path: Path, as_client: UseKeys
) -> None:
    make_keys(tmp_path, "server")
    as_client(tmp_path)
    with pytest.raises(KeysRefused, match="axchat keys client"):
        Client("tcp://127.0.0.1:9", connect_timeout_s=PATIENT_S)
    with pytest.raises(KeysRefused, match="axchat keys client"):
        hello_async("tcp://127.0.0.1:9")  # the async client says so at its first request
    assert ck.client_keys("ipc:///tmp/x.sock") is None  # local sockets never use keys


def test_status_takes_its_keys_from_flags(curve_daemon: tuple[DaemonProcess, str], key_dirs: dict[str, Path]) -> None:
    _, endpoint = curve_daemon
    env = client_env(key_dirs["nokeys"])  # nothing found by default: the flags must do it
    good = key_dirs["good"]
    flags = ["--server-key", str(good / "server.key"), "--client-key", str(good / "client.key_secret")]
    ok = subprocess.run(
        [sys.executable, "-m", "axchat", "status", "--socket", endpoint, "--json", *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["model"]
    plain = subprocess.run(
        [sys.executable, "-m", "axchat", "status", "--socket", endpoint, "--server-key", "none"],
        env={**env, ck.ENV_KEYS_DIR: str(good)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plain.returncode != 0 and "requires CURVE keys" in plain.stderr


def test_the_web_bridge_serves_a_remote_daemon_with_keys(
    curve_daemon: tuple[DaemonProcess, str], key_dirs: dict[str, Path]
) -> None:
    _, endpoint = curve_daemon
    cmd = [sys.executable, "-m", "axchat", "web", "--port", "0", "--socket", endpoint]
    bridge = LoggedProcess([*cmd, "--keys-dir", str(key_dirs["good"])], client_env(key_dirs["nokeys"]))
    try:
        url = bridge.wait_for_line("listening:", timeout_s=30).split("listening: ")[1].split()[0]
        body = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}).encode()
        request = urllib.request.Request(url + "v1/chat/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as resp:
            answer = json.loads(resp.read())
        assert answer["usage"]["completion_tokens"] > 0
    finally:
        assert bridge.stop() == 0, bridge.log_text()

"""`axchat web` as a real subprocess in front of a real daemon, and clients for it.

Not a conftest.py: a second rootless conftest would replace tests/conftest.py as the
`conftest` module that other tests import from. Test modules import these fixtures by
their function names (`*_fixture`); pytest knows them by `name=`.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator

import openai
import pytest
from conftest import DaemonProcess, LoggedProcess

LISTENING = re.compile(r"listening: (http://\S+/)")
API_KEY = "test-key-0123456789"


class BridgeProcess(LoggedProcess):
    """`axchat web --port 0`; the URL comes from its `listening:` log line."""

    name = "web bridge"

    def __init__(self, socket: str, *extra: str, env: dict[str, str] | None = None) -> None:
        super().__init__([sys.executable, "-m", "axchat", "web", "--port", "0", "--socket", socket, *extra], env)
        self.url = ""

    def wait_listening(self) -> BridgeProcess:
        found = LISTENING.search(self.wait_for_line("listening:", timeout_s=30))
        assert found is not None
        self.url = found.group(1)
        return self

    def openai_client(self, api_key: str = "unused") -> openai.OpenAI:
        # No retries: a test must see the first answer, not a retried one.
        return openai.OpenAI(base_url=self.url + "v1", api_key=api_key, max_retries=0, timeout=30)


@contextlib.contextmanager
def started_bridge(socket: str, *extra: str) -> Iterator[BridgeProcess]:
    bridge = BridgeProcess(socket, *extra).wait_listening()
    yield bridge
    code = bridge.stop()
    assert code == 0, bridge.log_text()


@pytest.fixture(scope="session", name="bridge")
def bridge_fixture(daemon: DaemonProcess) -> Iterator[BridgeProcess]:
    with started_bridge(daemon.socket) as bridge:
        yield bridge


@pytest.fixture(scope="session", name="keyed_bridge")
def keyed_bridge_fixture(daemon: DaemonProcess) -> Iterator[BridgeProcess]:
    with started_bridge(daemon.socket, "--api-key", API_KEY) as bridge:
        yield bridge


@pytest.fixture(name="client")
def client_fixture(bridge: BridgeProcess) -> Iterator[openai.OpenAI]:
    with bridge.openai_client() as c:
        yield c


@pytest.fixture(scope="session", name="model_name")
def model_name_fixture(bridge: BridgeProcess) -> str:
    with bridge.openai_client() as c:
        return c.models.list().data[0].id

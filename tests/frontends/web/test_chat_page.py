"""The chat page in headless Chromium (Debian's package, driven by Playwright) against
the real bridge and daemon: type, watch the answer stream, stop it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HELD_TOKENS
from playwright import sync_api
from web_bridge import BridgeProcess, bridge_fixture  # noqa: F401

from axchat.frontends.web.openai_errors import ApiError

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        CHROMIUM is None, reason="no chromium on PATH; `make test` installs Debian's package when run as root"
    ),
]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: sync_api.Browser, bridge: BridgeProcess) -> Iterator[sync_api.Page]:
    """The page, loaded; every test using it also checks that the page broke none of its
    own Content-Security-Policy (Chromium reports each refusal on the console)."""
    context = browser.new_context(viewport={"width": 1000, "height": 700})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    refused: list[str] = []
    page.on("console", lambda msg: refused.append(msg.text) if "Content Security Policy" in msg.text else None)
    page.goto(bridge.url)
    yield page
    context.close()
    assert refused == []


def make_answers_long(page: sync_api.Page) -> None:
    """The tiny random model may end an answer at once; ignore_eos keeps it talking
    long enough to press stop. The rest of the request is the page's own."""

    def extend(route: sync_api.Route) -> None:
        body = json.loads(route.request.post_data or "{}")
        route.continue_(post_data=json.dumps({**body, "ignore_eos": True}))

    page.route("**/v1/chat/completions", extend)


def test_the_page_sends_a_policy_it_keeps_and_refuses_to_be_framed(
    browser: sync_api.Browser, bridge: BridgeProcess
) -> None:
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    refused: list[str] = []
    page.on("console", lambda msg: refused.append(msg.text) if "Content Security Policy" in msg.text else None)
    try:
        response = page.goto(bridge.url)
        assert response is not None
        policy = {d.split()[0]: d.split()[1:] for d in response.headers["content-security-policy"].split("; ")}
        assert policy["frame-ancestors"] == ["'none'"] and policy["default-src"] == ["'none'"]
        assert policy["script-src"] == ["'self'"] and policy["style-src"] == ["'self'"]
        # Its own script ran (the model name came from /v1/models) and its stylesheet applied.
        sync_api.expect(page.locator("#model")).not_to_be_empty()
        assert page.evaluate("getComputedStyle(document.querySelector('#composer')).display") == "flex"
        assert refused == []
        # What a reply might smuggle in is refused: an inline script does not run.
        with page.expect_console_message(lambda msg: "Content Security Policy" in msg.text) as report:
            page.evaluate(
                """() => { const s = document.createElement("script"); s.textContent = "window.injected = 1";
                           document.body.append(s); }"""
            )
        assert "script-src" in report.value.text
        assert page.evaluate("() => window.injected") is None
    finally:
        context.close()


def test_type_stream_and_stop(page: sync_api.Page, bridge: BridgeProcess, tmp_path: Path) -> None:
    sync_api.expect(page.locator("#model")).not_to_be_empty()
    make_answers_long(page)
    page.click("#toggle-settings")
    page.fill("#max-tokens", str(HELD_TOKENS))  # held by the test daemon
    page.fill("#system", "You are terse.")
    page.fill("#prompt", "Tell me a long story")
    page.press("#prompt", "Enter")

    sync_api.expect(page.locator(".message.user")).to_have_text("Tell me a long story")
    answer = page.locator(".message.assistant").nth(0)
    stop = page.locator("#stop")
    sync_api.expect(stop).to_be_visible()
    # A function, not a string: the page's policy forbids eval, which a string would need.
    page.wait_for_function("() => document.querySelector('.message.assistant').textContent.length > 20", timeout=WAIT_MS)
    page.screenshot(path=str(tmp_path / "chat-streaming.png"))

    stop.click()
    sync_api.expect(page.locator("#status")).to_have_text("stopped")
    sync_api.expect(stop).to_be_hidden()
    sync_api.expect(page.locator("#send")).to_be_visible()
    sync_api.expect(answer.locator(".stats")).to_contain_text("stopped")
    # The aborted fetch closed the connection: the bridge saw it and cancelled the request.
    bridge.wait_for_line("closed-by-client", timeout_s=WAIT_MS / 1000)
    stopped_text = answer.inner_text()
    # Nothing more arrives after stop: a new turn's answer appears below, this one stays as it was.
    page.fill("#max-tokens", "8")
    page.fill("#prompt", "again")
    page.press("#prompt", "Enter")
    sync_api.expect(page.locator(".message.assistant")).to_have_count(2)
    sync_api.expect(page.locator(".message.assistant").last.locator(".stats")).to_be_visible()
    assert answer.inner_text() == stopped_text
    page.screenshot(path=str(tmp_path / "chat-stopped.png"), full_page=True)


def test_markdown_is_rendered_and_html_escaped(page: sync_api.Page) -> None:
    source = (
        "# Title\n**bold** and *it* with `a<b>`\n\n- one\n- two\n\n1. first\n\n"
        "```py\nprint('<x>')\n```\n[ok](https://example.org) [bad](javascript:alert(1)) <img src=x onerror=alert(1)>"
    )
    html = page.evaluate("(s) => axMarkdown.render(s)", source)
    assert "<h3>Title</h3>" in html
    assert "<strong>bold</strong>" in html and "<em>it</em>" in html
    assert "<code>a&lt;b&gt;</code>" in html
    assert "<ul><li>one</li><li>two</li></ul>" in html and "<ol><li>first</li></ol>" in html
    assert '<pre><code class="language-py">print(&#39;&lt;x&gt;&#39;)</code></pre>' in html
    assert '<a href="https://example.org"' in html
    assert "javascript:" not in html.split("[bad]")[0] and 'href="javascript' not in html
    assert "<img" not in html and "&lt;img" in html


def test_api_error_is_shown_and_prompt_given_back(page: sync_api.Page) -> None:
    page.click("#toggle-settings")
    page.fill("#temperature", "-1")  # the daemon refuses it: a 400 the page must show
    page.fill("#prompt", "hello")
    page.press("#prompt", "Enter")
    sync_api.expect(page.locator(".message.error")).to_contain_text("temperature")
    sync_api.expect(page.locator("#prompt")).to_have_value("hello")


def test_a_missing_api_key_points_at_the_page_settings(page: sync_api.Page) -> None:
    """The page says where its key goes, not which HTTP header to send."""
    refused = ApiError(401, "missing or wrong API key", code="invalid_api_key")
    page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(status=401, content_type="application/json", body=json.dumps(refused.body())),
    )
    page.fill("#prompt", "hello")
    page.press("#prompt", "Enter")
    sync_api.expect(page.locator(".message.error")).to_contain_text("Settings → API key")
    sync_api.expect(page.locator("#prompt")).to_have_value("hello")


def test_tool_calls_are_shown_readably(page: sync_api.Page) -> None:
    """With tools in the settings the page offers them; the calls the model makes (made
    certain here by asking for one, as a client may) show as name(arguments)."""

    def require_a_call(route: sync_api.Route) -> None:
        body = json.loads(route.request.post_data or "{}")
        route.continue_(post_data=json.dumps({**body, "tool_choice": "required"}))

    page.route("**/v1/chat/completions", require_a_call)
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"enum": ["Oslo", "Lima"]}}, "required": ["city"], "additionalProperties": False}}}
    page.click("#toggle-settings")
    page.fill("#tools", json.dumps([tool]))
    page.fill("#prompt", "weather?")
    page.press("#prompt", "Enter")
    call = page.locator(".message.assistant .tool-call pre").first
    sync_api.expect(call).to_contain_text("get_weather(")
    args = json.loads(call.inner_text().removeprefix("get_weather(").removesuffix(")"))
    assert args["city"] in ("Oslo", "Lima")
    sync_api.expect(page.locator(".message.assistant .stats")).to_contain_text("tool_calls")

"""Constrained greedy streams speculate (the tokens their grammar forces, then n-gram or
oracle guesses the grammar allows) and still give the replies of a daemon that never
speculates, token for token: JSON schemas, a regex and tool calls, on the tiny test model
and the bundled axchat-mini (default path: llama.cpp, q8_0), over length limits that cut
a forced stretch, a cancel mid-run and a run of forced property names whose drafts are
counted as accepted."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from conftest import HELD, DaemonProcess, RawClient, chat
from test_speculative_identity import Reply, Trio, cancelled_after, run, same, together, with_oracle

from axchat.actors.device.drafts import ORACLE_ENV
from axchat.protocol import v1

# Long property names: forced stretches of many tokens each, between short free values.
FORMS: dict[str, object] = {
    "type": "object",
    "properties": {
        "customer_full_name": {"type": "string", "maxLength": 6},
        "shipping_address_first_line": {"type": "string", "maxLength": 6},
        "order_total_in_whole_cents": {"type": "integer", "minimum": 0, "maximum": 99},
        "express_delivery_requested": {"type": "boolean"},
    },
    "required": [
        "customer_full_name",
        "shipping_address_first_line",
        "order_total_in_whole_cents",
        "express_delivery_requested",
    ],
    "additionalProperties": False,
}
# Many of them: still open after hundreds of tokens, for a stream cancelled mid-run.
ENDLESS: dict[str, object] = {"type": "array", "minItems": 1000, "items": FORMS}
REGEX = r"(order-[0-9]{2}: (shipped|pending|cancelled)\n){2,4}"
TOOL_PARAMS = {
    "lookup_customer_record": {
        "type": "object",
        "properties": {
            "customer_identifier": {"type": "integer", "minimum": 0, "maximum": 999},
            "include_history": {"type": "boolean"},
        },
        "required": ["customer_identifier", "include_history"],
        "additionalProperties": False,
    },
}


def constrained(kind: str, max_tokens: int, text: str = "fill in the form", **sampling: object) -> v1.Generate:
    gen = chat(text, max_tokens=max_tokens, temperature=0.0, **sampling)
    if kind == "json_schema":
        gen.constraint = v1.Constraint(kind="json_schema", schema=json.dumps(FORMS))
    elif kind == "endless":
        gen.constraint = v1.Constraint(kind="json_schema", schema=json.dumps(ENDLESS))
    elif kind == "regex":
        gen.constraint = v1.Constraint(kind="regex", grammar=REGEX)
    else:
        tools = [v1.ToolSpec(name=n, parameters=json.dumps(p)) for n, p in TOOL_PARAMS.items()]
        gen.constraint = v1.Constraint(kind="tools", tools=tools, tool_choice="required")
    return gen


def valid(kind: str, reply: Reply) -> None:
    """A finished reply meets its constraint."""
    if reply.done.finish_reason != "stop":
        return
    if kind == "json_schema":
        jsonschema.validate(json.loads(reply.text), FORMS)
    elif kind == "regex":
        assert re.fullmatch(REGEX, reply.text), reply.text
    else:
        assert reply.done.tool_calls
        for call in reply.done.tool_calls:
            jsonschema.validate(json.loads(call.arguments), TOOL_PARAMS[call.name])


@pytest.fixture(scope="module", params=["tiny", "axchat-mini"])
def trio(
    request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Trio]:
    """Speculation off, n-gram (the default) and oracle drafts, each its own daemon."""
    model = tiny_model_dir if request.param == "tiny" else None
    oracle_file = tmp_path_factory.mktemp("oracle") / "drafts.json"
    off, ngram = DaemonProcess(model, "--speculate", "off"), DaemonProcess(model)
    oracle = DaemonProcess(model, env={ORACLE_ENV: str(oracle_file)})
    trio = Trio(off, ngram, oracle, oracle_file)
    for d in trio.all():
        d.wait_ready()
    yield trio
    for d in trio.all():
        assert d.stop() == 0, d.log_text()


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 7, 400])
@pytest.mark.parametrize("kind", ["json_schema", "regex", "tools"])
def test_constrained_greedy_replies_are_identical(trio: Trio, kind: str, max_tokens: int) -> None:
    request = constrained(kind, max_tokens)
    want = run(trio.off, request)
    valid(kind, want)
    with_oracle(trio, run(trio.off, constrained(kind, max_tokens + 8)), 0.5)
    for d in (trio.ngram, trio.oracle):
        got = run(d, request)
        same(got, want)
        assert [(c.name, c.arguments) for c in got.done.tool_calls] == [
            (c.name, c.arguments) for c in want.done.tool_calls
        ]


def test_forced_property_names_are_proposed_and_accepted(trio: Trio) -> None:
    request = constrained("json_schema", 400)
    want = run(trio.off, request)
    assert want.done.finish_reason == "stop"
    got = run(trio.ngram, request)
    same(got, want)
    valid("json_schema", got)
    assert got.done.stats is not None and want.done.stats is not None
    assert got.done.stats.draft_accepted > 0 and want.done.stats.draft_proposed == 0
    # Every one of the later names is forced, and forced tokens are right.
    assert got.done.stats.draft_accepted >= len("shipping_address_first_line") // 4
    with_oracle(trio, want, 1.0)  # every guess wrong: only the forced tokens are kept
    wrong = run(trio.oracle, request)
    same(wrong, want)
    assert wrong.done.stats is not None and wrong.done.stats.draft_accepted > 0


def test_cancel_mid_run_keeps_the_tokens_so_far_and_the_daemon_exact(trio: Trio) -> None:
    reference = run(trio.off, constrained("endless", 200, ignore_eos=True))
    with_oracle(trio, reference, 0.25)
    for d in (trio.ngram, trio.oracle):
        ids = cancelled_after(d, constrained("endless", HELD["max_tokens"], ignore_eos=True), 5)  # type: ignore[arg-type]
        n = min(len(ids), len(reference.token_ids))
        assert ids[:n] == reference.token_ids[:n]
        # Neither the cancelled stream's KV nor its matcher leaks into the next request.
        request = constrained("json_schema", 120)
        same(run(d, request), run(trio.off, request))


@pytest.fixture(scope="module")
def pair_f32(tiny_model_dir: Path) -> Iterator[tuple[DaemonProcess, DaemonProcess]]:
    """Off and n-gram, where a stream's logits do not depend on the rest of its batch
    (float32: see test_speculative_identity's `trio_f32`)."""
    daemons = (
        DaemonProcess(tiny_model_dir, "--speculate", "off", "--dtype", "float32"),
        DaemonProcess(tiny_model_dir, "--dtype", "float32"),
    )
    for d in daemons:
        d.wait_ready()
    yield daemons
    for d in daemons:
        assert d.stop() == 0, d.log_text()


@pytest.mark.parametrize("kind", ["json_schema", "tools"])
def test_beside_a_sampled_stream_the_loop_verifies_the_same_tokens(
    pair_f32: tuple[DaemonProcess, DaemonProcess], kind: str
) -> None:
    """A sampled stream keeps the device from runs of greedy steps: each step's proposals
    are then verified by the event loop's step, masks filled off the loop."""
    replies = []
    for d in pair_f32:
        client = RawClient(d.socket)
        try:
            client.send("sampled", chat("go on", temperature=1.0, seed=3, **HELD))
            next(f for f in client.stream("sampled") if isinstance(f, v1.Delta))  # decoding now
            replies.append(run(d, constrained(kind, 400)))
            client.send("sampled", v1.Cancel())
            assert all(not isinstance(f, v1.Error) for f in client.stream("sampled"))
        finally:
            client.close()
    want, got = replies
    same(got, want)
    valid(kind, got)
    assert got.done.stats is not None and got.done.stats.draft_accepted > 0


def test_concurrent_constrained_streams_share_the_spare_rows_and_stay_identical(
    pair_f32: tuple[DaemonProcess, DaemonProcess],
) -> None:
    """Three constrained streams in one batch: their masks, proposals' included, are
    filled together in each step."""
    kinds = ["json_schema", "regex", "tools"]
    requests = [constrained(kind, 400, text=f"fill in the form ({i})") for i, kind in enumerate(kinds)]
    off, ngram = pair_f32
    wants, replies = together(off, requests), together(ngram, requests)
    for kind, want, reply in zip(kinds, wants, replies, strict=True):
        same(reply, want)
        valid(kind, reply)
    assert sum(r.done.stats.draft_accepted for r in replies if r.done.stats is not None) > 0


def test_a_stop_string_ends_a_constrained_reply_alike(trio: Trio) -> None:
    base = run(trio.off, constrained("regex", 200))
    stop = base.text[len(base.text) // 2 : len(base.text) // 2 + 3]
    request = constrained("regex", 200, stop=[stop])
    want = run(trio.off, request)
    assert want.done.finish_reason == "stop" and stop not in want.text
    with_oracle(trio, base, 0.25)
    for d in (trio.ngram, trio.oracle):
        same(run(d, request), want)

"""A local .gguf file served as is: llama.cpp loads it, the tokenizer and chat template
come from its metadata (no Hugging Face files beside it), and greedy output equals the
same weights served from the Hugging Face directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import DaemonProcess, RawClient, chat

from axchat.protocol import v1


def answer(raw: RawClient, rid: str) -> tuple[str, v1.Done]:
    raw.send(rid, chat("Tell me about cats", max_tokens=12, ignore_eos=True))
    text, done = "", None
    for body in raw.stream(rid):
        if isinstance(body, v1.Delta):
            text += body.text
        elif isinstance(body, v1.Done):
            done = body
    assert done is not None and done.finish_reason == "length", done
    return text, done


def test_a_gguf_file_runs_with_its_own_tokenizer_and_template(
    llamacpp_f32_gguf: Path, tmp_path: Path, daemon: DaemonProcess
) -> None:
    alone = tmp_path / "tiny-f32.gguf"
    shutil.copy(llamacpp_f32_gguf, alone)  # no tokenizer.json or config.json beside it
    served = DaemonProcess(alone).wait_ready()
    try:
        client = RawClient(served.socket)
        try:
            welcome = client.request(v1.Hello())
            assert isinstance(welcome, v1.Welcome)
            assert (welcome.backend, welcome.dtype, welcome.model) == ("llamacpp", "f32", "tiny-f32")
            text, done = answer(client, "gguf")
        finally:
            client.close()
    finally:
        assert served.stop() == 0, served.log_text()
    reference = RawClient(daemon.socket)
    try:
        expected, expected_done = answer(reference, "hf")
    finally:
        reference.close()
    assert done.usage.prompt_tokens == expected_done.usage.prompt_tokens  # same template, same ids
    assert text == expected and text.strip()


SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}, "ok": {"type": "boolean"}},
    "required": ["n", "ok"],
    "additionalProperties": False,
}


def test_a_gguf_file_alone_holds_replies_to_a_schema(tiny_model_dir: Path, tmp_path: Path) -> None:
    """No tokenizer.json beside it: the constraint engine reads the GGUF's own vocabulary
    through libllama. The default weight type, and a random model that knows no JSON."""
    from axchat.actors.backends.llamacpp.load import gguf_for

    alone = tmp_path / "tiny-q8_0.gguf"
    shutil.copy(gguf_for(tiny_model_dir, "q8_0", threads=1), alone)
    served = DaemonProcess(alone).wait_ready()
    try:
        client = RawClient(served.socket)
        try:
            constraint = v1.Constraint(kind="json_schema", schema=json.dumps(SCHEMA))
            for i in range(3):
                ask = v1.Generate(
                    messages=[v1.ChatMessage(role="user", content=f"Tell me about cats {i}")],
                    sampling=v1.Sampling(max_tokens=64),
                    constraint=constraint,
                )
                client.send(f"c{i}", ask)
                text, done = "", None
                for body in client.stream(f"c{i}"):
                    if isinstance(body, v1.Delta):
                        text += body.text
                    elif isinstance(body, v1.Done):
                        done = body
                assert done is not None and done.finish_reason == "stop", (done, text)
                reply = json.loads(text)
                assert set(reply) == {"n", "ok"} and 0 <= reply["n"] <= 99 and isinstance(reply["ok"], bool)
        finally:
            client.close()
    finally:
        assert served.stop() == 0, served.log_text()

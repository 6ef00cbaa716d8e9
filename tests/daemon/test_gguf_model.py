"""A local .gguf file served as is: llama.cpp loads it, the tokenizer and chat template
come from its metadata (no Hugging Face files beside it), and greedy output equals the
same weights served from the Hugging Face directory."""

from __future__ import annotations

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

"""A chat template that refuses a conversation (`raise_exception`, as real templates do
for roles out of order) answers that request with a typed `invalid_field` error naming
`messages`, and the daemon serves the next request as before."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import DaemonProcess, RawClient, chat

from axchat.protocol import v1

STRICT = (
    "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversations must start with a user turn') }}{% endif %}"
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_a_template_refusal_is_a_typed_error_and_the_daemon_serves_on(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "strict"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").write_text(STRICT)
    served = DaemonProcess(model).wait_ready()
    client = RawClient(served.socket)
    try:
        client.send("bad", v1.Generate(messages=[v1.ChatMessage(role="assistant", content="hi")], sampling=v1.Sampling(max_tokens=4)))
        refused = list(client.stream("bad"))[-1]
        assert isinstance(refused, v1.Error), refused
        assert (refused.code, refused.param) == ("invalid_field", "messages")
        assert "Conversations must start with a user turn" in refused.message
        client.send("good", chat("Hello", max_tokens=4, ignore_eos=True))
        done = list(client.stream("good"))[-1]
        assert isinstance(done, v1.Done) and done.finish_reason == "length", done
    finally:
        client.close()
        assert served.stop() == 0, served.log_text()

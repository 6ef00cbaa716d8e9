"""The daemon's tokenizer (tokenizers + Jinja, no transformers) gives what transformers
gives: the same rendered chat, token ids and decoded text on the bundled axchat-mini and
the test model, and the same rendering of real models' templates (written out below)
with tools, documents, system prompts, reasoning and text that JSON escapes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import pytest

transformers = pytest.importorskip("transformers", reason="the reference needs axchat[torch]")

from axchat.actors.chat_template import ChatTemplate, ChatTemplateError  # noqa: E402
from axchat.actors.tokenizer_json import JsonTokenizer  # noqa: E402
from axchat.models.catalog import BUNDLED_NAME  # noqa: E402

MINI_DIR = Path(__file__).resolve().parents[2] / "axchat" / "models" / BUNDLED_NAME

# SmolLM2-Instruct's template: a default system turn when none is given.
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Qwen2.5-Instruct's template: tools as JSON lines, tool calls and tool responses.
QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Llama 3.2-Instruct's template: bos_token, strftime_now, a namespace, tojson(indent=4),
# raise_exception and `break`-free loops over tools.
LLAMA32 = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- if tools_in_user_message and not tools is none %}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
    {%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}
{%- set ns = namespace(seen_user=false) %}
{%- for message in messages %}
    {%- if message.role == 'user' %}{% set ns.seen_user = true %}{% endif %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# Documents, reasoning fields, loop controls and `dict`/`generation` blocks, as RAG and
# reasoning models' templates use them.
FEATURES = """{%- for doc in documents or [] %}[doc {{ loop.index }}: {{ doc.title }}] {{ doc.text }}
{% endfor %}
{%- for message in messages %}
    {%- if message.role == 'skip' %}{% continue %}{% endif %}
    {%- if message.role == 'stop' %}{% break %}{% endif %}
    {%- set extra = dict(role=message.role) %}
    {%- if message.reasoning_content is defined %}<think>{{ message.reasoning_content }}|{{ message.thinking }}</think>{% endif %}
    {%- if message.role == 'assistant' %}{% generation %}{{ message.content }}{% endgeneration %}
    {%- else %}{{ extra | tojson }}: {{ message.content }}{% endif %}
{% endfor %}
{%- if add_generation_prompt %}{{ eos_token }}>{% endif %}"""

TEMPLATES = {"smollm2": SMOLLM2, "qwen2.5": QWEN25, "llama3.2": LLAMA32, "features": FEATURES}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city <now> & \"later\" — é",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}

CONVERSATIONS: dict[str, dict[str, Any]] = {
    "one turn": {"messages": [{"role": "user", "content": "Tell me a joke"}]},
    "system and history": {
        "messages": [
            {"role": "system", "content": "  Be brief.  "},
            {"role": "user", "content": "Hi <b>there</b> & 日本 🙂"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "What's 2+2?\n"},
        ]
    },
    "tools": {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
            },
            {"role": "tool", "content": '{"temp": 21}'},
        ],
        "tools": [WEATHER_TOOL],
    },
    "documents and reasoning": {
        "messages": [
            {"role": "user", "content": "Summarise"},
            {"role": "skip", "content": "never shown"},
            {"role": "assistant", "content": "Done.", "reasoning": "think first"},
            {"role": "stop", "content": "ends the loop"},
            {"role": "user", "content": "after the stop"},
        ],
        "documents": [{"title": "A", "text": "alpha"}, {"title": "B <&>", "text": "beta"}],
    },
}


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> Any:
    return transformers.AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_real_templates_render_as_transformers_renders_them(
    reference: Any, template: str, conversation: str, add_generation_prompt: bool
) -> None:
    source, convo = TEMPLATES[template], CONVERSATIONS[conversation]
    kwargs = {k: v for k, v in convo.items() if k != "messages"}
    try:
        expected = reference.apply_chat_template(
            convo["messages"], chat_template=source, add_generation_prompt=add_generation_prompt, tokenize=False, **kwargs
        )
    except Exception as exc:  # the template refuses this conversation: ours must refuse it too
        with pytest.raises(ChatTemplateError, match="failed"):
            ChatTemplate(source, reference.special_tokens_map).render(
                convo["messages"], add_generation_prompt=add_generation_prompt, **kwargs
            )
        assert type(exc).__module__.startswith(("jinja2", "transformers")) or isinstance(exc, (TypeError, ValueError))
        return
    ours = ChatTemplate(source, reference.special_tokens_map).render(
        convo["messages"], add_generation_prompt=add_generation_prompt, **kwargs
    )
    assert ours == expected


def test_raise_exception_is_a_typed_refusal(reference: Any) -> None:
    source = "{% if messages[0].role != 'user' %}{{ raise_exception('roles must start with user') }}{% endif %}ok"
    with pytest.raises(ChatTemplateError, match="roles must start with user"):
        ChatTemplate(source).render([{"role": "assistant", "content": "x"}])
    with pytest.raises(jinja2.exceptions.TemplateError, match="roles must start with user"):
        reference.apply_chat_template([{"role": "assistant", "content": "x"}], chat_template=source, tokenize=False)


def test_the_sandbox_holds(reference: Any) -> None:
    escape = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ChatTemplateError):
        ChatTemplate(escape).render([])
    with pytest.raises(ChatTemplateError):
        ChatTemplate("{% set ns = namespace(_x=1) %}").render([])


@pytest.mark.parametrize("which", ["tiny", BUNDLED_NAME])
def test_model_tokenizers_match_transformers(tiny_model_dir: Path, which: str) -> None:
    directory = tiny_model_dir if which == "tiny" else MINI_DIR
    ref = transformers.AutoTokenizer.from_pretrained(directory)
    ours = JsonTokenizer.from_dir(directory)
    assert (ours.bos_token_id, ours.eos_token_id) == (ref.bos_token_id, ref.eos_token_id)
    assert ours.get_vocab() == ref.get_vocab()
    assert ours.added_tokens() == {i: t.content for i, t in ref.added_tokens_decoder.items()}
    for convo in CONVERSATIONS.values():
        messages = [m for m in convo["messages"] if m["role"] in ("system", "user", "assistant")]
        for add in (True, False):
            text = ref.apply_chat_template(messages, add_generation_prompt=add, tokenize=False)
            assert ours.render_chat(messages, add_generation_prompt=add) == text
            ids = ref(text, add_special_tokens=False)["input_ids"]
            assert ours.encode(text, add_special_tokens=False) == ids
            assert ours.encode(text) == ref(text)["input_ids"]
            for skip in (True, False):
                assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)

"""Slash-command parsing and the conversation files, without a daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

from axchat.frontends.chat import commands
from axchat.frontends.chat.conversation import Conversation, ConversationStore, Turn, open_conversation
from axchat.protocol import v1


def test_parse() -> None:
    assert commands.parse("hello /system") is None
    assert commands.parse("//etc/passwd is a path") is None
    assert commands.unescape_prompt("//etc/passwd") == "/etc/passwd"
    assert commands.parse("/system  Be brief. ") == commands.SetSystem("Be brief.")
    assert commands.parse("/system") == commands.SetSystem(None)
    assert commands.parse("/temperature 0.7") == commands.SetTemperature(0.7)
    assert commands.parse("/clear") == commands.Clear()
    assert commands.parse("/save ~/chat.md") == commands.Save("~/chat.md")
    assert commands.parse("/stats") == commands.ToggleStats()
    assert commands.parse("/help") == commands.Help()
    for leave in ("/quit", "/exit", "exit", "quit", " Quit "):
        assert commands.parse(leave) == commands.Quit(), leave
    assert commands.parse("exit the loop") is None  # a prompt that only starts with the word
    for bad, why in [("/temperature hot", "needs a number"), ("/temperature 99", "between 0 and 10"),
                     ("/save", "needs a file name"), ("/nope", "unknown command /nope")]:  # fmt: skip
        with pytest.raises(commands.CommandError, match=why):
            commands.parse(bad)


def test_messages_and_markdown() -> None:
    c = Conversation(system="Be brief.", turns=[Turn("user", "Hi"), Turn("assistant", "Hel", "cancelled")])
    assert c.messages() == [
        v1.ChatMessage(role="system", content="Be brief."),
        v1.ChatMessage(role="user", content="Hi"),
        v1.ChatMessage(role="assistant", content="Hel"),
    ]
    assert "**Assistant:** _(cancelled)_\n\nHel\n" in c.to_markdown()
    fresh = c.fresh()
    assert fresh.turns == [] and fresh.system == "Be brief." and fresh.id != c.id


def test_store_latest_skips_unreadable_files(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "conv")
    assert store.latest() is None
    good = Conversation(turns=[Turn("user", "kept")], draft="half typed")
    store.save(good)
    (tmp_path / "conv" / "zzz-broken.json").write_text("{not json")
    latest = store.latest()
    assert latest == good
    resumed = open_conversation(store, resume=True, system="New system", temperature=0.5)
    assert resumed.id == good.id and resumed.system == "New system" and resumed.temperature == 0.5
    assert open_conversation(store, resume=False, system=None, temperature=None).turns == []


def test_default_directory_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from axchat.frontends.chat.conversation import default_directory

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_directory() == tmp_path / "axchat" / "conversations"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_directory() == tmp_path / "home" / ".local" / "share" / "axchat" / "conversations"

"""The interactive mode's slash commands, on a scripted model: each changes or shows the
conversation as it says, and anything else is still a prompt."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from tercet.agent import ModelError, ModelRequest, ScriptedModel, tool_use, turn
from tercet.agent.compaction import SUMMARY_HEADER
from tercet.cli.code import CodeOptions, run_interactive
from tercet.cli.slash_commands import SlashCommand, parse

pytestmark = pytest.mark.anyio
EDITOR = "str_replace_based_edit_tool"


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERCET_DATA_DIR", str(tmp_path / "data"))


def options_in(tmp_path: Path) -> CodeOptions:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return CodeOptions(
        cwd=work, sessions_dir=tmp_path / "sessions", permission_mode="bypassPermissions", mcp=False
    )


async def converse(model: ScriptedModel, options: CodeOptions, *lines: str) -> str:
    """Type `lines` into the interactive mode; what it printed on stdout."""
    out = io.StringIO()
    stdin = io.StringIO("".join(f"{line}\n" for line in lines))
    assert await run_interactive(model, options, stdin, out, io.StringIO()) == 0
    return out.getvalue()


def texts(message: dict[str, Any]) -> list[str]:
    return [b["text"] for b in message["content"] if b.get("type") == "text"]


@pytest.mark.parametrize("line", ["/exit", "/quit", " /exit now\n", "/quit please"])
async def test_exit_and_quit_end_the_session_whatever_follows(tmp_path: Path, line: str) -> None:
    model = ScriptedModel([])
    await converse(model, options_in(tmp_path), line, "never sent")
    assert model.requests == []


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("/help", SlashCommand("help", "")),
        ("  /compact keep the API names \n", SlashCommand("compact", "keep the API names")),
        ("/rewind 3", SlashCommand("rewind", "3")),
        ("/usr/lib is full, why?", None),  # a path, not a command
        ("/usr is full", None),  # not a command's name, and more than one word
        ("/usr", SlashCommand("usr", "")),  # a lone word: a mistyped command
        ("/Help", None),
        ("fix /etc/hosts", None),
    ],
)
def test_what_is_a_command(line: str, command: SlashCommand | None) -> None:
    assert parse(line) == command


async def test_help_unknown_commands_and_paths(tmp_path: Path) -> None:
    model = ScriptedModel(["It is the logs."])
    shown = await converse(model, options_in(tmp_path), "/help", "/frobnicate", "/usr is full")
    for usage in (
        "/clear",
        "/compact [INSTRUCTIONS]",
        "/rewind [STEP [code|conversation]]",
        "/cost",
        "/exit",
    ):
        assert usage in shown
    assert "Unknown command /frobnicate; /help lists them." in shown
    assert texts(model.requests[0].messages[0]) == ["/usr is full"]  # a prompt, sent as typed
    assert model.remaining == 0


async def test_commands_before_any_conversation_say_so(tmp_path: Path) -> None:
    shown = await converse(ScriptedModel([]), options_in(tmp_path), "/cost", "/rewind", "/session")
    assert "/cost: no conversation yet." in shown and "/rewind: no conversation yet." in shown
    assert "No conversation yet: the next prompt starts one." in shown


async def test_clear_starts_a_new_session(tmp_path: Path) -> None:
    model = ScriptedModel(["One.", "Two."])
    shown = await converse(model, options_in(tmp_path), "first", "/session", "/clear", "second")
    (first, second) = sorted(
        (tmp_path / "sessions").glob("*.jsonl"), key=lambda p: p.stat().st_mtime
    )
    assert f"\n{first.stem}\n" in shown
    assert f"A new conversation; the last one is session {first.stem}." in shown
    assert [texts(m) for m in model.requests[1].messages] == [["second"]]  # nothing of the first
    assert first != second


def write_then_edit_notes() -> list[Any]:
    """Replies: step 1 creates notes.md, step 2 edits it, step 3 answers."""
    create = {"command": "create", "path": "notes.md", "file_text": "draft\n"}
    edit = {"command": "str_replace", "path": "notes.md", "old_str": "draft", "new_str": "final"}
    return [turn(tool_use(EDITOR, create)), turn(tool_use(EDITOR, edit)), "Written."]


async def test_rewind_code_lists_the_steps_and_puts_files_back(tmp_path: Path) -> None:
    options = options_in(tmp_path)
    model = ScriptedModel([*write_then_edit_notes(), "Seen."])
    shown = await converse(
        model,
        options,
        "write notes",
        "/rewind",
        "/rewind 7",
        "/rewind ²",
        "/rewind 2 both ways",
        "/rewind 2 code",
        "/cost",
        "look",
    )
    assert "Steps 1 to 3." in shown and "  1: notes.md\n  2: notes.md\n" in shown
    usage = "/rewind: use /rewind STEP [code|conversation], STEP from 1 to 3."
    assert shown.count(usage) == 3  # 7 is past the last step; ² is no number for int()
    assert "Restored 1 file as they were before step 2: notes.md." in shown
    assert "The conversation is unchanged" in shown
    assert (options.cwd / "notes.md").read_text() == "draft\n"
    assert "1 run, 3 turns, " in shown  # /cost, after the first prompt's run
    assert len(model.requests[3].messages) == 7  # the whole conversation, then "look"
    assert model.remaining == 0


@pytest.mark.parametrize("what", ["", " conversation"])
async def test_rewind_takes_the_conversation_back_in_a_new_session(
    tmp_path: Path, what: str
) -> None:
    options = options_in(tmp_path)
    model = ScriptedModel([*write_then_edit_notes(), "Kept the draft."])
    shown = await converse(model, options, "write notes", f"/rewind 2{what}", "keep the draft")
    sessions = tmp_path / "sessions"
    headers = {p.stem: json.loads(p.read_text().splitlines()[0]) for p in sessions.glob("*.jsonl")}
    (old,) = [stem for stem, header in headers.items() if not header["forked_from"]]
    (new,) = [stem for stem, header in headers.items() if header["forked_from"] == f"{old}@2"]
    assert f"The conversation is back to before step 2, as session {new} ({old} is kept" in shown
    # The model is asked again from where step 2 began: the prompt, the create and its result,
    # then the new prompt; the edit and the answer are gone.
    again = model.requests[3].messages
    assert [m["role"] for m in again] == ["user", "assistant", "user"]
    assert texts(again[-1]) == ["keep the draft"]
    assert again[-1]["content"][0]["type"] == "tool_result"
    notes = (options.cwd / "notes.md").read_text()
    assert notes == ("draft\n" if what == "" else "final\n")  # files too, unless only the talk
    assert len((sessions / f"{old}.jsonl").read_text().splitlines()) > len(
        (sessions / f"{new}.jsonl").read_text().splitlines()
    )


async def test_compact_summarises_the_conversation_now(tmp_path: Path) -> None:
    long_answer = "word " * 500
    model = ScriptedModel([long_answer, long_answer, "They talked at length.", "Short now."])
    shown = await converse(
        model, options_in(tmp_path), "first", "second", "/compact keep the names", "third"
    )
    summary_request = model.requests[2]
    assert summary_request.messages[-1]["content"][-1]["text"].endswith("keep the names")
    (after,) = model.requests[3].messages  # the task with the summary, then the new prompt
    assert texts(after) == ["first", SUMMARY_HEADER + "They talked at length.", "third"]
    assert "[the conversation was summarised to fit: " in shown
    assert model.remaining == 0


async def test_compact_that_cannot_shrink_says_why(tmp_path: Path) -> None:
    model = ScriptedModel(["Hi.", "A summary much longer than the conversation itself. " * 20])
    shown = await converse(model, options_in(tmp_path), "hi", "/compact")
    assert "compaction_loop" in shown and "would not make the conversation smaller" in shown


async def test_a_conversation_taken_back_can_still_take_the_files_back(tmp_path: Path) -> None:
    options = options_in(tmp_path)
    model = ScriptedModel(write_then_edit_notes())
    shown = await converse(
        model, options, "write notes", "/rewind 3 conversation", "/rewind", "/rewind 1 code"
    )
    assert "  1: notes.md\n  2: notes.md\n" in shown  # the new session has the old records
    assert "Restored 1 file as they were before step 1: notes.md." in shown
    assert not (options.cwd / "notes.md").exists()


async def test_going_back_to_a_step_leaves_out_the_prompt_that_began_it(tmp_path: Path) -> None:
    model = ScriptedModel(["One.", "Two.", "Instead."])
    shown = await converse(
        model, options_in(tmp_path), "first", "second", "/rewind", "/rewind 2", "instead, this"
    )
    assert "leaving out the prompt that began it" in shown
    assert [texts(m) for m in model.requests[2].messages] == [
        ["first"],
        ["One."],
        ["instead, this"],
    ]


def failing(request: ModelRequest) -> str:
    raise ModelError("overloaded")


async def test_going_back_to_a_step_tried_twice_leaves_out_both_prompts(tmp_path: Path) -> None:
    # "second" fails, "third" tries step 2 again: the model answers both of them.
    model = ScriptedModel(["One.", failing, "Three.", "Other."])
    await converse(model, options_in(tmp_path), "first", "second", "third", "/rewind 2", "other")
    assert [texts(m) for m in model.requests[2].messages] == [
        ["first"],
        ["One."],
        ["second", "third"],
    ]
    assert [texts(m) for m in model.requests[3].messages] == [["first"], ["One."], ["other"]]


@pytest.mark.parametrize("what", ["", " conversation"])
async def test_nothing_of_the_conversation_comes_before_step_1(tmp_path: Path, what: str) -> None:
    options = options_in(tmp_path)
    model = ScriptedModel([*write_then_edit_notes(), "Seen."])
    shown = await converse(model, options, "write notes", f"/rewind 1{what}", "look")
    assert "comes before step 1; /clear starts a new one." in shown
    assert (options.cwd / "notes.md").exists() == bool(what)  # both: the files go back anyway
    assert len(model.requests[3].messages) == 7  # the same conversation goes on
    assert len(list((tmp_path / "sessions").glob("*.jsonl"))) == 1

"""Trajectories: saved after every step, resumed exactly, replayed, and old files still load."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tercet.agent import (
    FORMAT_VERSION,
    AssistantMessage,
    Budget,
    Checkpoints,
    Compacted,
    Event,
    ModelError,
    ModelRequest,
    Result,
    ScriptedModel,
    SessionNotFound,
    SessionStore,
    TextDelta,
    TextEditorTool,
    ThinkingDelta,
    TrajectoryError,
    UserMessage,
    event_from_dict,
    event_to_dict,
    load_session,
    replay,
    tool_use,
    turn,
)
from tercet.agent.scripted import ScriptedTurn
from tests.agent.conftest import EchoTool, MakeAgent, collect

pytestmark = pytest.mark.anyio
GOLDEN_V1 = Path(__file__).parent / "fixtures" / "trajectory_v1.jsonl"


def uncached(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`messages` without the cache breakpoints the agent puts on requests."""
    return [
        {
            **m,
            "content": [{k: v for k, v in b.items() if k != "cache_control"} for b in m["content"]],
        }
        for m in messages
    ]


def script() -> list[ScriptedTurn]:
    return [
        turn("Step one.", tool_use("echo", {"text": "1"})),
        turn(tool_use("echo", {"text": "2"}), tool_use("echo", {"text": "3"})),
        turn(tool_use("echo", {"text": "4"})),
        turn("All done."),
    ]


async def test_resume_continues_exactly_where_the_run_stopped(make_agent: MakeAgent) -> None:
    whole = ScriptedModel(script())
    await make_agent(whole, tools=[EchoTool()]).run_until_done("count")

    first = ScriptedModel(script()[:2])
    stopped = await make_agent(
        first, tools=[EchoTool()], budget=Budget(max_turns=2)
    ).run_until_done("count")
    assert stopped.reason == "max_turns"

    second = ScriptedModel(script()[2:])
    resumer = make_agent(second, tools=[EchoTool()])
    resumed = await resumer.resume_until_done(stopped.session_id)
    assert resumed.ok and resumed.text == "All done." and resumed.turns == 2
    assert second.requests == whole.requests[2:]  # messages, system, tools: all the same
    assert first.requests == whole.requests[:2]
    # The session file holds both runs; loading it gives the conversation as it is now.
    session = resumer.sessions.load(stopped.session_id)
    assert session.messages == resumer.messages and session.turns == 4
    results = [e for e in session.events if isinstance(e, Result)]
    assert [r.reason for r in results] == ["max_turns", "end_turn"]


async def test_resume_with_a_prompt_after_the_answer(make_agent: MakeAgent) -> None:
    model = ScriptedModel([turn("Hello."), turn("Goodbye.")])
    agent = make_agent(model)
    first = await agent.run_until_done("greet")
    with pytest.raises(ValueError, match="give a prompt"):
        agent.resume(first.session_id)
    second = await agent.resume_until_done(first.session_id, "now part")
    assert second.text == "Goodbye." and second.session_id == first.session_id
    assert [(m["role"], m["content"][0]["text"]) for m in model.requests[1].messages] == [
        ("user", "greet"),
        ("assistant", "Hello."),
        ("user", "now part"),
    ]


async def test_resume_answers_calls_left_without_results(make_agent: MakeAgent) -> None:
    model = ScriptedModel([turn(tool_use("echo", {"text": "x"}))])
    agent = make_agent(model, tools=[EchoTool()])
    first = await agent.run_until_done("go")  # then the script runs out: an error result
    path = agent.sessions.path(first.session_id)
    # Cut the file after the assistant's reply, as a crash mid-tool would leave it.
    lines = path.read_text().splitlines()
    keep = next(i for i, line in enumerate(lines) if '"assistant_message"' in line)
    path.write_text("\n".join(lines[: keep + 1]) + "\n")

    second = ScriptedModel([turn("recovered")])
    result = await make_agent(second, tools=[EchoTool()]).resume_until_done(first.session_id)
    assert result.ok
    (answer,) = second.requests[0].messages[-1]["content"]
    assert answer["type"] == "tool_result" and answer["is_error"] is True
    assert "interrupted" in answer["content"]


async def test_fork_starts_a_session_where_a_step_began(make_agent: MakeAgent) -> None:
    model = ScriptedModel([*script(), turn("Took the other way.")])
    agent = make_agent(model, tools=[EchoTool()])
    first = await agent.run_until_done("count")
    store = agent.sessions
    forked = store.fork(first.session_id, 3)
    session = store.load(forked)
    assert session.header.forked_from == f"{first.session_id}@3"
    assert session.turns == 2
    # Everything up to the results of step 2, nothing of step 3 or after.
    assert session.messages == uncached(model.requests[2].messages)
    original = store.load(first.session_id)
    assert original.turns == 4 and original.header.forked_from == ""  # left as it was
    again = await agent.resume_until_done(forked, "try another way")
    assert again.text == "Took the other way." and again.session_id == forked
    assert uncached(model.requests[4].messages[:-1]) == uncached(model.requests[2].messages[:-1])
    with pytest.raises(ValueError, match="has no step 9"):
        store.fork(first.session_id, 9)
    with pytest.raises(SessionNotFound):
        store.fork("20200101-000000-abcdef", 1)


async def test_a_fork_keeps_the_checkpoints_of_the_steps_before(
    make_agent: MakeAgent, tmp_path: Path
) -> None:
    notes = tmp_path / "work" / "notes.md"

    def edit(**input: str) -> ScriptedTurn:
        return turn(tool_use("str_replace_based_edit_tool", {"path": "notes.md", **input}))

    model = ScriptedModel(
        [
            edit(command="create", file_text="v1\n"),
            edit(command="str_replace", old_str="v1", new_str="v2"),
            edit(command="str_replace", old_str="v2", new_str="v3"),
            "Done.",
        ]
    )
    agent = make_agent(model, tools=[TextEditorTool()])
    first = await agent.run_until_done("write notes")
    store = agent.sessions
    forked = store.fork(first.session_id, 3)
    checkpoints = Checkpoints(store.checkpoints_dir(forked))
    assert checkpoints.steps() == [1, 2]  # step 3's record is not the fork's to rewind
    (blob,) = (store.checkpoints_dir(forked) / "blobs").iterdir()  # v1: all steps 1-2 need
    assert os.path.samefile(blob, store.checkpoints_dir(first.session_id) / "blobs" / blob.name)
    assert notes.read_text() == "v3\n"
    assert checkpoints.rewind(2) == [notes] and notes.read_text() == "v1\n"
    assert checkpoints.rewind(1) == [notes] and not notes.exists()
    # The original's records are its own still.
    assert Checkpoints(store.checkpoints_dir(first.session_id)).steps() == [1, 2, 3]


def failing(request: ModelRequest) -> str:
    raise ModelError("overloaded")


async def test_a_fork_cuts_where_the_step_that_answered_began(make_agent: MakeAgent) -> None:
    # "second" fails; "third" tries turn 2 again, which the model answers having both.
    model = ScriptedModel(["One.", failing, "Three.", "Other."])
    agent = make_agent(model)
    first = await agent.run_until_done("first")
    assert (await agent.resume_until_done(first.session_id, "second")).reason == "error"
    await agent.resume_until_done(first.session_id, "third")
    assert texts_of(model.requests[2].messages) == [["first"], ["One."], ["second", "third"]]
    store = agent.sessions
    forked = store.fork(first.session_id, 2)
    # Back to before all that step 2 answered: both prompts go, to be replaced.
    assert texts_of(store.load(forked).messages) == [["first"], ["One."]]
    await agent.resume_until_done(forked, "other")
    assert texts_of(model.requests[3].messages) == [["first"], ["One."], ["other"]]
    with pytest.raises(ValueError, match=r"nothing of session .* comes before step 1"):
        store.fork(first.session_id, 1)  # the prompt that began step 1 is all it had before


async def test_a_fork_after_tool_results_keeps_them_and_drops_the_prompt_after_them(
    make_agent: MakeAgent,
) -> None:
    model = ScriptedModel([turn(tool_use("echo", {"text": "1"})), failing, "Done."])
    agent = make_agent(model, tools=[EchoTool()])
    first = await agent.run_until_done("count")  # turn 2 fails after the echo's result
    await agent.resume_until_done(first.session_id, "go on")  # turn 2 again
    store = agent.sessions
    session = store.load(store.fork(first.session_id, 2))
    assert session.turns == 1
    assert session.messages == uncached(model.requests[1].messages)  # without "go on"


async def test_a_step_tried_again_without_a_prompt_is_cut_before_its_first_try(
    make_agent: MakeAgent,
) -> None:
    model = ScriptedModel([failing, "Hello."])
    agent = make_agent(model)
    first = await agent.run_until_done("greet")
    assert (await agent.resume_until_done(first.session_id)).text == "Hello."
    with pytest.raises(ValueError, match="comes before step 1"):
        agent.sessions.fork(first.session_id, 1)


def texts_of(messages: list[dict[str, Any]]) -> list[list[str]]:
    return [[b["text"] for b in m["content"] if b.get("type") == "text"] for m in messages]


async def test_replay_yields_the_saved_events(make_agent: MakeAgent) -> None:
    model = ScriptedModel(script())
    agent = make_agent(model, tools=[EchoTool()])
    events = await collect(agent.run("count"))
    assert agent.session_id is not None
    saved = list(replay(agent.sessions.path(agent.session_id)))
    assert saved == [e for e in events if not isinstance(e, TextDelta | ThinkingDelta)]


async def test_the_trajectory_is_written_as_the_run_goes(make_agent: MakeAgent) -> None:
    model = ScriptedModel(script())
    agent = make_agent(model, tools=[EchoTool()])
    seen: list[str] = []
    async for event in agent.run("count"):
        if isinstance(event, AssistantMessage):
            assert agent.session_id is not None
            text = agent.sessions.path(agent.session_id).read_text()
            seen.append(text.splitlines()[-1])
    assert all('"assistant_message"' in line for line in seen) and len(seen) == 4


def test_golden_v1_trajectory_loads() -> None:
    session = load_session(GOLDEN_V1)
    assert session.header.session_id == "golden-v1"
    assert session.header.version == 1 <= FORMAT_VERSION
    assert session.header.config["tools"] == ["bash", "str_replace_based_edit_tool"]
    assert session.task == [{"type": "text", "text": "Change one to two in notes.txt"}]
    assert (session.turns, session.last_prompt_tokens, session.last_compaction_turn) == (3, 420, 2)
    kinds = [event.type for event in session.events]
    assert kinds[:4] == ["run_started", "user_message", "request_sent", "assistant_message"]
    assert kinds.count("tool_call") == kinds.count("tool_result") == kinds.count("permission") == 3
    assert kinds[-1] == "result" and "compaction" in kinds
    compaction = next(e for e in session.events if isinstance(e, Compacted))
    assert compaction.summary.startswith("Summary: the notes said one")
    assert session.messages == [
        *compaction.messages,
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "Changed notes.txt from one to two."}],
        },
    ]
    first = next(e for e in session.events if isinstance(e, AssistantMessage))
    assert first.content[0] == {
        "type": "thinking",
        "thinking": "Look at the notes first.",
        "signature": "c2lnLTE=",
    }
    result = session.events[-1]
    assert isinstance(result, Result)
    assert (result.reason, result.turns, result.usage.cache_read_input_tokens) == (
        "end_turn",
        3,
        1750,
    )


async def test_golden_v1_session_resumes(make_agent: MakeAgent, tmp_path: Path) -> None:
    (tmp_path / "sessions").mkdir(exist_ok=True)
    shutil.copy(GOLDEN_V1, tmp_path / "sessions" / "golden-v1.jsonl")
    model = ScriptedModel([turn("Still two.")])
    result = await make_agent(model).resume_until_done("golden-v1", "Is it still two?")
    assert result.ok
    sent = model.requests[0].messages
    assert sent[0]["content"][0]["text"] == "Change one to two in notes.txt"
    assert sent[-1]["content"][0]["text"] == "Is it still two?"


def write_lines(path: Path, records: list[dict[str, Any]], tail: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def test_records_may_gain_fields_and_types_and_a_torn_line_is_dropped(tmp_path: Path) -> None:
    header = {
        "type": "header",
        "format": "tercet-trajectory",
        "version": 1,
        "session_id": "s",
        "model": "m",
        "created": "2025-01-01T00:00:00Z",
        "from_the_future": 1,
    }
    records = [
        header,
        {"type": "user_message", "content": [{"type": "text", "text": "hi"}], "new_field": 3},
        {"type": "some_future_record", "anything": True},
        {"type": "assistant_message", "turn": 1, "content": [{"type": "text", "text": "yo"}]},
    ]
    path = write_lines(tmp_path / "s.jsonl", records, tail='{"type": "result", "rea')
    session = load_session(path)
    assert [e.type for e in session.events] == ["user_message", "assistant_message"]
    assert session.messages[-1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "yo"}],
    }


def test_unreadable_trajectories_are_refused_clearly(tmp_path: Path) -> None:
    newer = {
        "type": "header",
        "format": "tercet-trajectory",
        "version": FORMAT_VERSION + 1,
        "session_id": "s",
        "model": "m",
        "created": "x",
    }
    with pytest.raises(TrajectoryError, match="upgrade tercet"):
        load_session(write_lines(tmp_path / "new.jsonl", [newer]))
    with pytest.raises(TrajectoryError, match="not a tercet trajectory"):
        load_session(write_lines(tmp_path / "other.jsonl", [{"hello": 1}]))
    header = {**newer, "version": 1}
    broken = {"type": "assistant_message", "content": []}  # no turn
    with pytest.raises(TrajectoryError, match="missing fields"):
        load_session(write_lines(tmp_path / "broken.jsonl", [header, broken]))


def test_session_store_lists_and_guards_ids(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    assert store.ids() == [] and store.latest() is None
    for name in ("a", "b"):
        shutil.copy(GOLDEN_V1, tmp_path / f"{name}.jsonl")
    assert set(store.ids()) == {"a", "b"} and store.latest() in ("a", "b")
    assert store.load("a").header.session_id == "golden-v1"
    with pytest.raises(SessionNotFound):
        store.load("missing")
    with pytest.raises(SessionNotFound):
        store.path("../etc/passwd")
    first, second = store.new_id(), store.new_id()
    assert first != second


def test_events_round_trip_through_records() -> None:
    events: list[Event] = list(replay(GOLDEN_V1))
    for event in events:
        data = json.loads(json.dumps(event_to_dict(event)))
        assert event_from_dict(data) == event
    assert any(isinstance(e, UserMessage) for e in events)

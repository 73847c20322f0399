"""Ending abusive conversations: the offer (data, when it is made, the system instruction), the
history hash chain, the record of ended conversations, and the hidden tool call in BlockWriter."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tercet.engine.base import TextChunk, ThinkingChunk, ToolCallDelta, ToolCallStart
from tercet.engine.scripted import ScriptedCall, ScriptedEngine
from tercet.server.app import create_app
from tercet.server.blocks import BlockWriter
from tercet.server.config import ServerConfig
from tercet.server.conversation_end import (
    DEFAULT_OFFER,
    END_CONVERSATION,
    ConversationEndedError,
    EndConversationConfigError,
    EndConversationOffer,
    EndedConversations,
    EndedConversationsError,
    history_hashes,
    user_turns,
)
from tercet.server.runner import BackgroundServer
from tercet.server.signatures import ThinkingSigner
from tercet.wire.errors import ErrorResponse
from tercet.wire.events import (
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    StreamEvent,
)
from tercet.wire.requests import MessageCreateRequest
from tests.conftest import CLAUDE_MODEL

OWNER = "a" * 32


def request(*messages: Any, **fields: Any) -> MessageCreateRequest:
    """A request holding `messages`, given as (role, content) pairs or dicts."""
    wire = [m if isinstance(m, dict) else {"role": m[0], "content": m[1]} for m in messages]
    return MessageCreateRequest.model_validate(
        {"model": "m", "max_tokens": 10, "messages": wire, **fields}
    )


ABUSE = [
    ("user", "you are useless"),
    ("assistant", "I'm sorry you feel that way. How can I help?"),
    ("user", "shut up, idiot"),
    ("assistant", "I'd like to help, but please keep it civil or I will end this chat."),
    ("user", "idiot idiot idiot"),
]


# --- the hash chain ------------------------------------------------------------------------


def test_the_same_history_has_the_same_hashes_one_per_prefix() -> None:
    first = history_hashes(request(*ABUSE).messages, OWNER)
    assert first == history_hashes(request(*ABUSE).messages, OWNER)
    assert len(first) == len(ABUSE) and len(set(first)) == len(ABUSE)
    # Each prefix's hash is the chain's hash for that prefix alone.
    assert history_hashes(request(*ABUSE[:3]).messages, OWNER) == first[:3]


def test_string_content_hashes_as_one_text_block_and_markers_are_ignored() -> None:
    plain = request(("user", "hello"), ("assistant", "hi"), ("user", "again"))
    blocks = request(
        {"role": "user", "content": [{"type": "text", "text": "hello"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "hi"}]},
        {
            "role": "user",
            "content": [{"type": "text", "text": "again", "cache_control": {"type": "ephemeral"}}],
            "unknown_field": 1,
        },
    )
    assert history_hashes(plain.messages, OWNER) == history_hashes(blocks.messages, OWNER)


def test_tool_results_hash_the_same_with_string_or_block_content_and_markers() -> None:
    call = {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}],
    }
    text = {"type": "tool_result", "tool_use_id": "t1", "content": "out"}
    listed = {
        "type": "tool_result",
        "tool_use_id": "t1",
        "content": [{"type": "text", "text": "out", "cache_control": {"type": "ephemeral"}}],
        "cache_control": {"type": "ephemeral", "ttl": "1h"},
    }
    one = request(("user", "go"), call, {"role": "user", "content": [text]})
    two = request(("user", "go"), call, {"role": "user", "content": [listed]})
    assert history_hashes(one.messages, OWNER) == history_hashes(two.messages, OWNER)


def test_earlier_thinking_dropped_by_a_client_still_matches() -> None:
    thought = {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "hi"},
        ],
    }
    with_thinking = request(("user", "hello"), thought, ("user", "again"))
    without = request(("user", "hello"), ("assistant", "hi"), ("user", "again"))
    assert history_hashes(with_thinking.messages, OWNER) == history_hashes(without.messages, OWNER)


def test_different_owners_roles_or_texts_hash_differently() -> None:
    messages = request(*ABUSE).messages
    assert history_hashes(messages, OWNER)[0] != history_hashes(messages, "b" * 32)[0]
    assert history_hashes(request(("user", "x")).messages, OWNER) != history_hashes(
        request(("assistant", "x")).messages, OWNER
    )
    assert history_hashes(request(("user", "x")).messages, OWNER) != history_hashes(
        request(("user", "y")).messages, OWNER
    )
    assert history_hashes([], OWNER) == []


# --- ended conversations -----------------------------------------------------------------------


def test_an_ended_conversation_and_what_extends_it_are_refused_not_its_prefixes(
    tmp_path: Path,
) -> None:
    ended = EndedConversations(tmp_path / "ended.jsonl")
    conversation = request(*ABUSE)
    ended.check(conversation, OWNER)  # nothing ended yet
    history_hash = ended.end(conversation, OWNER, "repeated insults")
    assert history_hash == history_hashes(conversation.messages, OWNER)[-1]

    with pytest.raises(ConversationEndedError) as refused:
        ended.check(request(*ABUSE), OWNER)  # sent again
    assert refused.value.status_code == 403
    assert refused.value.error_type == "permission_error"
    assert "ended by the model" in refused.value.message
    assert "start a new conversation" in refused.value.message
    ErrorResponse(error=refused.value.detail())  # a valid error envelope

    extended = request(*ABUSE, ("assistant", "Goodbye."), ("user", "wait, sorry"))
    with pytest.raises(ConversationEndedError):
        ended.check(extended, OWNER)

    ended.check(request(*ABUSE[:3]), OWNER)  # a prefix: an earlier point of it
    edited = request(*ABUSE[:4], ("user", "sorry, I was upset. Can you help with my essay?"))
    ended.check(edited, OWNER)  # a new branch
    ended.check(request(*ABUSE), "b" * 32)  # another key's identical conversation


def test_ended_conversations_persist_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "data" / "ended.jsonl"  # its folder is made when needed
    first = EndedConversations(path)
    first.end(request(*ABUSE), OWNER, "abuse")
    first.end(request(("user", "other")), OWNER, None)
    again = EndedConversations(path)
    assert len(again) == 2
    with pytest.raises(ConversationEndedError):
        again.check(request(*ABUSE), OWNER)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["reason"] for r in records] == ["abuse", None]
    assert records[0]["owner"] == OWNER and records[0]["messages"] == len(ABUSE)


def test_a_torn_last_line_is_dropped_and_the_file_mended(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ended.jsonl"
    EndedConversations(path).end(request(*ABUSE), OWNER, "abuse")
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"hash": "abc')  # a crash in the middle of the next write
    with caplog.at_level(logging.WARNING, logger="tercet.server"):
        ended = EndedConversations(path)
    assert "torn last line" in caplog.text
    assert len(ended) == 1 and path.read_bytes() == whole
    ended.end(request(("user", "next")), OWNER, "x")
    assert len(EndedConversations(path)) == 2


def test_a_whole_last_line_without_its_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "ended.jsonl"
    EndedConversations(path).end(request(*ABUSE), OWNER, "abuse")
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    ended = EndedConversations(path)
    assert len(ended) == 1
    ended.end(request(("user", "next")), OWNER, "x")
    assert len(EndedConversations(path)) == 2


def test_a_bad_line_inside_the_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ended.jsonl"
    path.write_text('{"hash": "abc"}\nnot json\n{"hash": "def"}\n')
    with pytest.raises(EndedConversationsError, match=r"ended\.jsonl:2"):
        EndedConversations(path)


def test_ending_logs_conversation_ended(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ended = EndedConversations(tmp_path / "ended.jsonl")
    with caplog.at_level(logging.INFO, logger="tercet.server"):
        history_hash = ended.end(request(*ABUSE), OWNER, "x" * 5000, request_id="req_1")
    [record] = [r for r in caplog.records if "conversation_ended" in r.getMessage()]
    assert record.getMessage().startswith("req_1 conversation_ended")
    fields = record.__dict__["conversation_ended"]
    assert fields["hash"] == history_hash and fields["owner"] == OWNER
    assert len(fields["reason"]) < 1100  # a runaway reason is cut


def test_ending_from_many_threads_keeps_every_record(tmp_path: Path) -> None:
    path = tmp_path / "ended.jsonl"
    ended = EndedConversations(path)
    threads = [
        threading.Thread(target=ended.end, args=(request(("user", f"m{i}")), OWNER, "r"))
        for i in range(16)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ended) == 16 and len(EndedConversations(path)) == 16


# --- the offer ---------------------------------------------------------------------------------


def test_the_shipped_offer_loads() -> None:
    offer = EndConversationOffer.load()
    assert offer.tool.name == END_CONVERSATION
    assert offer.tool.description and "last resort" in offer.tool.description
    schema = offer.tool.input_schema
    assert schema["type"] == "object" and schema["properties"]["reason"]["type"] == "string"
    assert offer.min_user_turns >= 2
    assert "end_conversation" in offer.instruction
    assert offer.explanation.strip()
    assert EndConversationOffer.load(DEFAULT_OFFER) == offer


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("min_user_turns = ", ""),  # not TOML
        ('instruction = "x"\nexplanation = "y"\nmin_user_turns = 2\n', "tool"),
        (
            'instruction = "x"\nexplanation = "y"\nmin_user_turns = 0\n'
            '[tool]\ndescription = "d"\ninput_schema = {type = "object"}\n',
            "min_user_turns",
        ),
        (
            'instruction = ""\nexplanation = "y"\nmin_user_turns = 2\n'
            '[tool]\ndescription = "d"\ninput_schema = {type = "object"}\n',
            "instruction",
        ),
        (
            'instruction = "x"\nexplanation = "y"\nmin_user_turns = 2\n'
            '[tool]\ndescription = "d"\ninput_schema = {type = "string"}\n',
            "tool.input_schema",
        ),
        (
            'instruction = "x"\nexplanation = "y"\nmin_user_turns = 2\n'
            '[tool]\ndescription = 3\ninput_schema = {type = "object"}\n',
            "tool.description",
        ),
        (
            'instruction = "x"\nexplanation = "y"\nmin_user_turns = 2\nmin_turns = 1\n'
            '[tool]\ndescription = "d"\ninput_schema = {type = "object"}\n',
            "min_turns",
        ),
    ],
)
def test_a_bad_offer_file_names_the_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "offer.toml"
    path.write_text(text)
    with pytest.raises(EndConversationConfigError) as error:
        EndConversationOffer.load(path)
    assert error.value.where == str(path) and error.value.key == key
    assert str(error.value).startswith(str(path))


def test_a_missing_offer_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EndConversationConfigError, match="cannot read"):
        EndConversationOffer.load(tmp_path / "absent.toml")


def test_offered_only_after_enough_user_turns_and_a_free_choice() -> None:
    offer = EndConversationOffer.load()
    turns = offer.min_user_turns
    exchange = [("user", "u"), ("assistant", "a")]
    enough = request(*(exchange * (turns - 1)), ("user", "u"))
    assert user_turns(enough.messages) == turns and offer.offered(enough)
    assert not offer.offered(request(*(exchange * (turns - 2)), ("user", "u")))
    assert not offer.offered(request(("user", "first message")))

    # Tool results are not turns the user wrote.
    call = {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
    }
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]}
    tools = [{"name": "f", "input_schema": {"type": "object"}}]
    padded = request(("user", "u"), *([call, result] * turns), tools=tools)
    assert user_turns(padded.messages) == 1 and not offer.offered(padded)

    # A forced tool choice never falls on it; `auto` leaves it free.
    messages = enough.model_dump()["messages"]
    for choice in ({"type": "any"}, {"type": "tool", "name": "f"}, {"type": "none"}):
        assert not offer.offered(request(*messages, tools=tools, tool_choice=choice))
    assert offer.offered(request(*messages, tools=tools, tool_choice={"type": "auto"}))

    # A client's own tool of the same name is left alone.
    own = [{"name": END_CONVERSATION, "input_schema": {"type": "object"}}]
    assert not offer.offered(request(*messages, tools=own))


@pytest.mark.parametrize(
    "system",
    [
        None,
        "Be kind.",
        [{"type": "text", "text": "Be kind.", "cache_control": {"type": "ephemeral"}}],
    ],
)
def test_instructed_appends_the_instruction_to_the_system_prompt(system: Any) -> None:
    offer = EndConversationOffer.load()
    fields = {} if system is None else {"system": system}
    original = request(*ABUSE, **fields)
    instructed = offer.instructed(original)
    assert isinstance(instructed.system, list)
    assert instructed.system[-1].text == offer.instruction
    before = [] if system is None else ["Be kind."]
    assert [b.text for b in instructed.system[:-1]] == before
    if isinstance(system, list):  # the client's cache breakpoint stays where it was
        assert instructed.system[0].cache_control is not None
    assert original.system == request(*ABUSE, **fields).system  # the original is untouched
    assert instructed.messages == original.messages


# --- BlockWriter: a hidden tool's call ---------------------------------------------------------


def writer(thinking: bool = False) -> BlockWriter:
    ids = iter(f"toolu_{i}" for i in range(10))
    return BlockWriter(
        ThinkingSigner(b"k" * 32),
        thinking=thinking,
        omit_thinking=False,
        tool_use_ids=lambda: next(ids),
        hidden_tools=frozenset({END_CONVERSATION}),
    )


def write(blocks: BlockWriter, *events: Any) -> list[StreamEvent]:
    out = [e for event in events for e in blocks.add(event)]
    return out + list(blocks.finish())


def shape(events: list[StreamEvent]) -> list[tuple[str, int, str]]:
    """Each event as (kind, index, block type or delta type)."""
    out = []
    for event in events:
        if isinstance(event, ContentBlockStartEvent):
            out.append(("start", event.index, event.content_block.type))
        elif isinstance(event, ContentBlockDeltaEvent):
            out.append(("delta", event.index, event.delta.type))
        elif isinstance(event, ContentBlockStopEvent):
            out.append(("stop", event.index, ""))
    return out


def test_a_hidden_call_sends_no_events_and_is_kept() -> None:
    blocks = writer()
    events = write(
        blocks,
        ToolCallStart(END_CONVERSATION),
        ToolCallDelta('{"reason": '),
        ToolCallDelta('"abuse"}'),
    )
    assert events == []
    assert blocks.hidden_call() == (END_CONVERSATION, {"reason": "abuse"})
    assert blocks.written == [] and blocks.server_call() is None


def test_blocks_after_text_and_around_a_hidden_call_keep_consecutive_indexes() -> None:
    blocks = writer(thinking=True)
    events = write(
        blocks,
        ThinkingChunk("they keep insulting me"),
        TextChunk("I will end this conversation now."),
        ToolCallStart(END_CONVERSATION),
        ToolCallDelta('{"reason": "insults"}'),
    )
    assert shape(events) == [
        ("start", 0, "thinking"),
        ("delta", 0, "thinking_delta"),
        ("delta", 0, "signature_delta"),
        ("stop", 0, ""),
        ("start", 1, "text"),
        ("delta", 1, "text_delta"),
        ("stop", 1, ""),
    ]
    assert blocks.hidden_call() == (END_CONVERSATION, {"reason": "insults"})

    blocks = writer()
    events = write(
        blocks,
        ToolCallStart(END_CONVERSATION),
        ToolCallDelta("{}"),
        ToolCallStart("f"),
        ToolCallDelta('{"a": 1}'),
    )
    assert shape(events) == [
        ("start", 0, "tool_use"),
        ("delta", 0, "input_json_delta"),
        ("stop", 0, ""),
    ]
    assert blocks.hidden_call() is None  # the reply ended with another call


def test_a_hidden_call_alone_still_gets_the_thinking_block_that_is_due() -> None:
    blocks = writer(thinking=True)
    events = write(blocks, ToolCallStart(END_CONVERSATION), ToolCallDelta('{"reason": "x"}'))
    assert shape(events) == [
        ("start", 0, "thinking"),
        ("delta", 0, "signature_delta"),
        ("stop", 0, ""),
    ]
    assert blocks.hidden_call() == (END_CONVERSATION, {"reason": "x"})


def test_a_hidden_call_with_bad_input_has_empty_input_and_no_call_none() -> None:
    blocks = writer()
    write(blocks, ToolCallStart(END_CONVERSATION), ToolCallDelta('{"reason": '))
    assert blocks.hidden_call() == (END_CONVERSATION, {})
    plain = writer()
    events = write(plain, TextChunk("hello"), ToolCallStart("f"), ToolCallDelta("{}"))
    assert plain.hidden_call() is None
    assert [e[1] for e in shape(events) if e[0] == "start"] == [0, 1]


def test_without_hidden_tools_the_call_is_an_ordinary_tool_use() -> None:
    blocks = BlockWriter(
        ThinkingSigner(b"k" * 32), thinking=False, omit_thinking=False, tool_use_ids=lambda: "t"
    )
    events = write(blocks, ToolCallStart(END_CONVERSATION), ToolCallDelta("{}"))
    assert shape(events)[0] == ("start", 0, "tool_use")
    assert blocks.hidden_call() is None


# --- through the server (scripted engine) ---------------------------------------------------


def _serve(engine: ScriptedEngine, data_dir: Path, **settings: Any) -> BackgroundServer:
    config = ServerConfig.model_validate(
        {"api_keys": [], "data_dir": data_dir, "end_conversation": True, **settings}
    )
    return BackgroundServer(create_app(config, [engine]))


def _wire(messages: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"role": role, "content": text} for role, text in messages]


def test_the_model_ends_a_conversation_and_a_resent_one_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ends = ScriptedCall(END_CONVERSATION, {"reason": "insults after two warnings"})
    engine = ScriptedEngine([ends, "Hello! How can I help?"])
    messages = _wire(ABUSE)
    with caplog.at_level(logging.INFO, logger="tercet.server"), _serve(engine, tmp_path) as running:
        client = anthropic.Anthropic(base_url=running.base_url, api_key="k", max_retries=0)
        ended = client.messages.create(model=CLAUDE_MODEL, max_tokens=50, messages=messages)
        # Offered: the tool among the model's tools, the instruction in its system prompt.
        offered = engine.conversations[-1]
        assert END_CONVERSATION in [t.name for t in offered.tools]
        assert "end_conversation" in (offered.system_text or "")
        assert ended.stop_reason == "refusal"
        assert ended.content == []  # the call itself is the server's: never shown
        assert ended.stop_details is not None and ended.stop_details.category is None
        assert "ended this conversation" in (ended.stop_details.explanation or "")
        # Sent again as it was, or continued: refused, with the error envelope.
        for resent in (messages, [*messages, *_wire([("assistant", "ok"), ("user", "sorry")])]):
            with pytest.raises(anthropic.PermissionDeniedError) as caught:
                client.messages.create(model=CLAUDE_MODEL, max_tokens=50, messages=resent)
            assert caught.value.status_code == 403
            assert "ended" in caught.value.message and "new conversation" in caught.value.message
        # Streaming is refused the same way, before any event.
        with (
            pytest.raises(anthropic.PermissionDeniedError),
            client.messages.stream(model=CLAUDE_MODEL, max_tokens=50, messages=messages) as stream,
        ):
            stream.get_final_message()
        # Another conversation, and an earlier point of this one, are answered.
        fresh = client.messages.create(model=CLAUDE_MODEL, max_tokens=50, messages=_wire(ABUSE[:3]))
        assert fresh.stop_reason == "end_turn"
    assert len(engine.sampling) == 2  # the refused requests never reached the engine
    logged = [r.getMessage() for r in caplog.records if "conversation_ended" in r.getMessage()]
    assert len(logged) == 1 and "insults after two warnings" in logged[0]
    # A restart remembers it.
    with _serve(ScriptedEngine(), tmp_path) as running:
        client = anthropic.Anthropic(base_url=running.base_url, api_key="k", max_retries=0)
        with pytest.raises(anthropic.PermissionDeniedError):
            client.messages.create(model=CLAUDE_MODEL, max_tokens=50, messages=messages)


def test_the_stream_of_an_ended_conversation_shows_no_tool_call(tmp_path: Path) -> None:
    engine = ScriptedEngine([ScriptedCall(END_CONVERSATION, {"reason": "abuse"})])
    body = {"model": CLAUDE_MODEL, "max_tokens": 50, "stream": True, "messages": _wire(ABUSE)}
    with (
        _serve(engine, tmp_path) as running,
        httpx.stream("POST", f"{running.base_url}/v1/messages", json=body) as response,
    ):
        events = [
            json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")
        ]
    events = [e for e in events if e["type"] != "ping"]
    assert [e["type"] for e in events] == ["message_start", "message_delta", "message_stop"]
    assert events[1]["delta"]["stop_reason"] == "refusal"
    assert events[1]["delta"]["stop_details"]["type"] == "refusal"


def test_not_offered_early_in_a_conversation_or_with_the_option_off(tmp_path: Path) -> None:
    engine = ScriptedEngine(["fine"])
    with _serve(engine, tmp_path / "on") as running:
        client = anthropic.Anthropic(base_url=running.base_url, api_key="k", max_retries=0)
        client.messages.create(model=CLAUDE_MODEL, max_tokens=5, messages=_wire(ABUSE[:3]))
    assert not engine.conversations[-1].tools  # two user turns: not yet
    with _serve(engine, tmp_path / "off", end_conversation=False) as running:
        client = anthropic.Anthropic(base_url=running.base_url, api_key="k", max_retries=0)
        client.messages.create(model=CLAUDE_MODEL, max_tokens=5, messages=_wire(ABUSE))
    assert not engine.conversations[-1].tools
    assert "end_conversation" not in (engine.conversations[-1].system_text or "")

"""What a run reports: typed events, streamed to the caller as they happen.

Every event but the two deltas is also a record of the run's trajectory (`trajectory.py`), so
the fields here are a persisted schema: add fields with defaults, never rename or remove one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Literal

ResultReason = Literal[
    "end_turn",  # the model answered without calling a tool: the task is done
    "max_turns",  # a budget ran out (checked before every model call) ...
    "max_total_tokens",
    "max_wall_time",
    "max_cost",
    "max_tokens",  # replies kept hitting the per-call max_tokens
    "refusal",  # the model declined
    "interrupted",  # Agent.interrupt(), a cancelled task, or the caller stopped iterating
    "hook",  # a hook stopped the run
    "compaction_loop",  # compacting the context did not make room
    "error",  # the model call or the loop failed; `message` says how
]


@dataclass(frozen=True)
class Usage:
    """Tokens, as the Messages API counts them; `+` adds them up."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        """The whole prompt: tokens read fresh, written to the cache and read from it."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_creation_input_tokens + other.cache_creation_input_tokens,
            self.cache_read_input_tokens + other.cache_read_input_tokens,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Usage:
        """Usage from a wire or trajectory dict (unknown keys and nulls ignored)."""
        return cls(**{f.name: int(data.get(f.name) or 0) for f in fields(cls)})


@dataclass(frozen=True)
class RunStarted:
    """A run began (`resumed`: it continues a saved session); `prompt` is the new user text."""

    type: ClassVar[Literal["run_started"]] = "run_started"
    session_id: str
    model: str
    cwd: str
    resumed: bool = False
    prompt: str | None = None


@dataclass(frozen=True)
class RequestSent:
    """A request is on its way to the model: a turn, or the summary for a compaction."""

    type: ClassVar[Literal["request_sent"]] = "request_sent"
    turn: int
    purpose: Literal["turn", "compaction"] = "turn"
    message_count: int = 0


@dataclass(frozen=True)
class TextDelta:
    """More of the answer's text, as the model streams it (not saved)."""

    type: ClassVar[Literal["text_delta"]] = "text_delta"
    text: str


@dataclass(frozen=True)
class ThinkingDelta:
    """More of the model's thinking, as it streams (not saved)."""

    type: ClassVar[Literal["thinking_delta"]] = "thinking_delta"
    thinking: str


@dataclass(frozen=True)
class UserMessage:
    """Content added to the conversation as the user: the task, tool results, a new prompt.
    Added right after another user message, it joins that message."""

    type: ClassVar[Literal["user_message"]] = "user_message"
    content: list[dict[str, Any]]


@dataclass(frozen=True)
class AssistantMessage:
    """A reply of the model, whole, with its usage and cost. After a `pause_turn` reply the
    next one continues it (it joins the same assistant message)."""

    type: ClassVar[Literal["assistant_message"]] = "assistant_message"
    turn: int
    content: list[dict[str, Any]]
    stop_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    cost_usd: float = 0.0


@dataclass(frozen=True)
class ToolCall:
    """The model called a tool; `input` is what will run (after any PreToolUse hook changed
    it: then `modified` is set)."""

    type: ClassVar[Literal["tool_call"]] = "tool_call"
    turn: int
    tool_use_id: str
    name: str
    input: dict[str, Any]
    description: str = ""
    modified: bool = False


@dataclass(frozen=True)
class PermissionDecided:
    """Whether a tool call runs, and who decided: the permission rules, the user (the `ask`
    callback), a PreToolUse hook or the guard (`tercet.guard`; `rule` then names the guard's
    rule, also when the user answered a question the guard asked)."""

    type: ClassVar[Literal["permission"]] = "permission"
    tool_use_id: str
    name: str
    action: Literal["allow", "deny"]
    reason: str = ""
    by: Literal["rules", "user", "hook", "guard"] = "rules"
    rule: str = ""


@dataclass(frozen=True)
class ToolFinished:
    """A tool call's result, as the model will read it in its `tool_result`."""

    type: ClassVar[Literal["tool_result"]] = "tool_result"
    tool_use_id: str
    name: str
    content: str | list[dict[str, Any]]
    is_error: bool = False
    duration_s: float = 0.0


@dataclass(frozen=True)
class Compacted:
    """The conversation was replaced by the task, a summary and the latest steps (`messages`:
    the whole new history). `usage` and `cost_usd` are the summary request's."""

    type: ClassVar[Literal["compaction"]] = "compaction"
    turn: int
    summary: str
    messages: list[dict[str, Any]]
    tokens_before: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0


@dataclass(frozen=True)
class Result:
    """How the run ended; always the last event. `usage`, `cost_usd` and `turns` count this
    run only (a resumed session starts them again); `text` is the last reply's text.

    A reply cut short (an interrupt, a budget, a cancelled task) counts too: its prompt as the
    server counted it, its output as counted from the stream (`model.ReplyProgress`), since
    the server says how much it wrote only at the end. `estimated_output_tokens` says how many
    of `usage.output_tokens` were counted that way. Such a reply is one of `turns`, but the
    session saves finished turns only, so it holds one turn fewer."""

    type: ClassVar[Literal["result"]] = "result"
    reason: ResultReason
    session_id: str
    message: str = ""
    turns: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    text: str = ""
    duration_s: float = 0.0
    trajectory: str | None = None  # the session file's path
    estimated_output_tokens: int = 0

    @property
    def ok(self) -> bool:
        """Whether the model finished the task (it answered without calling a tool)."""
        return self.reason == "end_turn"


Event = (
    RunStarted
    | RequestSent
    | TextDelta
    | ThinkingDelta
    | UserMessage
    | AssistantMessage
    | ToolCall
    | PermissionDecided
    | ToolFinished
    | Compacted
    | Result
)
# The events a trajectory saves, by their `type`.
RECORDED: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (
        RunStarted,
        RequestSent,
        UserMessage,
        AssistantMessage,
        ToolCall,
        PermissionDecided,
        ToolFinished,
        Compacted,
        Result,
    )
}


def event_to_dict(event: Event) -> dict[str, Any]:
    """An event as JSON-ready data, `type` first: a trajectory record without its `time`
    (and what a JSON stream of events should print)."""
    return {"type": event.type, **asdict(event)}


def event_from_dict(data: dict[str, Any]) -> Event | None:
    """The event `event_to_dict` made (unknown keys ignored); None for a `type` this version
    does not save. Raises ValueError when fields are missing."""
    cls = RECORDED.get(data.get("type", ""))
    if cls is None:
        return None
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in data:
            value = data[f.name]
            values[f.name] = Usage.from_dict(value) if f.name == "usage" else value
    try:
        return cls(**values)
    except TypeError as exc:
        raise ValueError(f"a {data['type']} record is missing fields: {exc}") from exc


def message_text(content: list[dict[str, Any]]) -> str:
    """The text blocks of a message's content, joined."""
    return "".join(str(b.get("text", "")) for b in content if b.get("type") == "text")

"""Ending abusive conversations: the `end_conversation` tool the model may be offered, and the
record of the conversations it ended, so that a client sending one again is refused.

As Anthropic gives Claude Opus 4 in consumer use, the model may end a conversation that stays
abusive, as a last resort (its instruction and the tool's description are data:
end_conversation.toml). A conversation is identified by its history hash: a hash chain over its
messages, seeded with its owner (the API key's hash), one hash per prefix. Sending an ended
conversation again, or anything that extends it, is refused; a prefix of it (an earlier message
edited, a new branch) is not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from tercet.audit.log import canonical
from tercet.server.conversation import with_system_text
from tercet.wire.content import ToolResultBlockParam
from tercet.wire.errors import PermissionDeniedError
from tercet.wire.requests import (
    CustomToolParam,
    MessageParam,
    PromptParams,
    ToolChoiceAuto,
)

log = logging.getLogger("tercet.server")

END_CONVERSATION = "end_conversation"
DEFAULT_OFFER = Path(__file__).with_name("end_conversation.toml")
# Where every chain starts: a version, so that a change of the canonical form cannot match
# hashes recorded under the old one by accident.
CHAIN_SEED = b"tercet-conversation-v1\0"
# The model's reason is logged and kept, never sent: this is plenty for one sentence.
MAX_REASON_CHARS = 1000
# Blocks left out of a conversation's identity: clients may drop earlier turns' thinking (the
# model is never shown it again), and a resent conversation must still be recognised.
UNHASHED_BLOCKS = frozenset({"thinking", "redacted_thinking"})

Request = TypeVar("Request", bound=PromptParams)


class EndConversationConfigError(ValueError):
    """An offer file that cannot be used: `where` (the file), `key` and the `problem`."""

    def __init__(self, where: str, key: str, problem: str) -> None:
        super().__init__(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")
        self.where = where
        self.key = key
        self.problem = problem


class ConversationEndedError(PermissionDeniedError):
    """A request continuing a conversation the model ended (403 `permission_error`: the
    request is well formed, but this conversation may not go on; retrying cannot help)."""

    def __init__(self, history_hash: str) -> None:
        super().__init__(
            "This conversation was ended by the model (end_conversation) and cannot be "
            "continued: start a new conversation. Editing an earlier message of it starts a "
            f"new branch, which may be sent. (conversation {history_hash[:16]})"
        )
        self.history_hash = history_hash


@dataclass(frozen=True)
class EndConversationOffer:
    """The `end_conversation` tool as offered to the model: its system-prompt instruction, the
    tool, the least number of user turns before it is offered, and the refusal's explanation."""

    instruction: str
    tool: CustomToolParam
    min_user_turns: int
    explanation: str

    @classmethod
    def load(cls, path: Path = DEFAULT_OFFER) -> EndConversationOffer:
        """The offer described by the TOML file `path`; EndConversationConfigError names the
        file, the key and what is wrong."""
        where = str(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise EndConversationConfigError(
                where, "", f"cannot read: {exc.strerror or exc}"
            ) from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise EndConversationConfigError(where, "", f"not valid TOML: {exc}") from None
        known = {"instruction", "explanation", "min_user_turns", "tool"}
        for key in data:
            if key not in known:
                raise EndConversationConfigError(
                    where, key, f"unknown key (expected one of {', '.join(sorted(known))})"
                )
        tool = data.get("tool")
        if not isinstance(tool, dict):
            raise EndConversationConfigError(where, "tool", "missing, or not a table")
        for key in tool:
            if key not in ("description", "input_schema"):
                raise EndConversationConfigError(
                    where, f"tool.{key}", "unknown key (expected description, input_schema)"
                )
        schema = tool.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise EndConversationConfigError(
                where, "tool.input_schema", 'missing, or not a table with type = "object"'
            )
        turns = data.get("min_user_turns")
        if not isinstance(turns, int) or isinstance(turns, bool) or turns < 1:
            raise EndConversationConfigError(
                where, "min_user_turns", "missing, or not a whole number of at least 1"
            )
        return cls(
            instruction=_text(data, "instruction", where),
            tool=CustomToolParam(
                name=END_CONVERSATION,
                description=_text(tool, "description", where, "tool."),
                input_schema=schema,
            ),
            min_user_turns=turns,
            explanation=_text(data, "explanation", where),
        )

    def offered(self, request: PromptParams) -> bool:
        """Whether `request` is offered the tool: it holds at least `min_user_turns` user turns,
        leaves the choice of tool to the model (a forced call must never fall on this one),
        and defines no tool of the same name itself."""
        choice = request.tool_choice
        if choice is not None and not isinstance(choice, ToolChoiceAuto):
            return False
        if any(getattr(tool, "name", None) == END_CONVERSATION for tool in request.tools or ()):
            return False
        return user_turns(request.messages) >= self.min_user_turns

    def instructed(self, request: Request) -> Request:
        """`request` with the instruction at the end of its system prompt (as a text block)."""
        return with_system_text(request, self.instruction)


def user_turns(messages: list[MessageParam]) -> int:
    """How many messages a user wrote: user messages holding more than tool results."""
    return sum(
        message.role == "user"
        and (
            isinstance(message.content, str)
            or any(not isinstance(b, ToolResultBlockParam) for b in message.content)
        )
        for message in messages
    )


def history_hashes(messages: list[MessageParam], owner: str) -> list[str]:
    """The hash of each prefix of `messages` (the first message's, then the first two's, ...):
    a chain seeded with `owner`, over each message's canonical form (string content as one
    text block, `cache_control` and thinking left out, keys sorted)."""
    digest = hashlib.sha256(CHAIN_SEED + owner.encode()).digest()
    hashes = []
    for message in messages:
        digest = hashlib.sha256(digest + _canonical(message)).digest()
        hashes.append(digest.hex())
    return hashes


def _canonical(message: MessageParam) -> bytes:
    content = message.content
    if isinstance(content, str):
        blocks: list[dict[str, Any]] = [{"type": "text", "text": content}]
    else:
        blocks = [_plain(b) for b in content if b.type not in UNHASHED_BLOCKS]
    return canonical({"role": message.role, "content": blocks}).encode()


def _plain(block: BaseModel) -> dict[str, Any]:
    """A block as JSON without its `cache_control` markers (nor those of the blocks inside a
    tool result), a tool result's string content as one text block."""
    data: dict[str, Any] = block.model_dump(mode="json", exclude_none=True)
    return _without_markers(data)


def _without_markers(data: dict[str, Any]) -> dict[str, Any]:
    data.pop("cache_control", None)
    content = data.get("content")
    if data.get("type") in ("tool_result", "mcp_tool_result") and isinstance(content, str):
        data["content"] = [{"type": "text", "text": content}]
    elif isinstance(content, list):
        data["content"] = [_without_markers(b) if isinstance(b, dict) else b for b in content]
    return data


class EndedConversationsError(ValueError):
    """The file of ended conversations cannot be read: `where` says which line, and why."""


class EndedConversations:
    """The conversations the model ended, by history hash: kept in memory, appended to a JSONL
    file (loaded when made; a torn last line from a crash is dropped). Thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._ended: set[str] = set()
        self._load()

    def __len__(self) -> int:
        return len(self._ended)

    def check(self, request: PromptParams, owner: str) -> None:
        """Raise ConversationEndedError when `request`'s messages are, or extend, a
        conversation that `owner` had ended. CPU-bound for a long history (hashing)."""
        if not self._ended:
            return
        for history_hash in history_hashes(request.messages, owner):
            if history_hash in self._ended:
                raise ConversationEndedError(history_hash)

    def end(
        self,
        request: PromptParams,
        owner: str,
        reason: str | None,
        request_id: str | None = None,
    ) -> str:
        """Record that the model ended `request`'s conversation (the hash of all its messages,
        which is returned) and log `conversation_ended`. Blocking: the record is synced to disk
        before it returns."""
        hashes = history_hashes(request.messages, owner)
        if not hashes:
            raise ValueError("a conversation without messages cannot be ended")
        history_hash = hashes[-1]
        if reason is not None and len(reason) > MAX_REASON_CHARS:
            reason = reason[:MAX_REASON_CHARS] + "…"
        record = {
            "hash": history_hash,
            "owner": owner,
            "ended_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "messages": len(request.messages),
            "reason": reason,
        }
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            self._ended.add(history_hash)
        fields = {"hash": history_hash, "owner": owner, "messages": len(request.messages)}
        log.info(
            "%s conversation_ended hash=%s owner=%s messages=%d reason=%s",
            request_id or "-",
            history_hash[:16],
            owner,
            len(request.messages),
            json.dumps(reason, ensure_ascii=False),
            extra={"conversation_ended": {**fields, "reason": reason}},
        )
        return history_hash

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise EndedConversationsError(
                f"cannot read {self.path}: {exc.strerror or exc}"
            ) from exc
        lines = data.split(b"\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            history_hash = _record_hash(line)
            if number == len(lines):  # no newline after it: a write a crash cut short?
                if history_hash is None:
                    log.warning("%s: dropping a torn last line", self.path)
                    with self.path.open("r+b") as handle:
                        handle.truncate(len(data) - len(line))
                else:
                    with self.path.open("ab") as handle:
                        handle.write(b"\n")
            elif history_hash is None:
                raise EndedConversationsError(
                    f"{self.path}:{number}: not a record of an ended conversation "
                    '(a JSON object with a string "hash")'
                )
            if history_hash is not None:
                self._ended.add(history_hash)


def _record_hash(line: bytes) -> str | None:
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    history_hash = record.get("hash") if isinstance(record, dict) else None
    return history_hash if isinstance(history_hash, str) else None


def _text(table: dict[str, Any], key: str, where: str, prefix: str = "") -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value.strip():
        raise EndConversationConfigError(where, prefix + key, "missing, or not a non-empty string")
    return value

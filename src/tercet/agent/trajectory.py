"""Trajectories: a run saved as JSONL, one record a line, so it can be resumed or replayed.

    {"type": "header", "format": "tercet-trajectory", "version": 1, "session_id": ...,
     "model": ..., "created": "2025-...Z", "cwd": ..., "config": {...}}
    {"type": "run_started", "time": ..., "session_id": ..., "resumed": false, ...}
    {"type": "user_message", "time": ..., "content": [...]}
    {"type": "assistant_message", "time": ..., "turn": 1, "content": [...], "usage": {...}}
    ...
    {"type": "result", "time": ..., "reason": "end_turn", ...}

A record is an event of `events.py` (all but the deltas) with its `type` and a `time`. Each is
written and flushed as it happens. The schema only grows: new fields have defaults, so every
file an older tercet wrote still loads (tests/agent/fixtures holds one of each version). A
resumed run appends to the same file. The messages are rebuilt from the user and assistant
messages and the compactions, exactly as the loop built them.
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import platformdirs

from tercet.agent.checkpoints import Checkpoints
from tercet.agent.events import (
    RECORDED,
    AssistantMessage,
    Compacted,
    Event,
    UserMessage,
    event_from_dict,
    event_to_dict,
)

FORMAT = "tercet-trajectory"
FORMAT_VERSION = 1
_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class TrajectoryError(ValueError):
    """A trajectory file that cannot be read."""


class SessionNotFound(LookupError):
    """No saved session has this id."""


@dataclass(frozen=True)
class Header:
    """The first line of a trajectory: what the session is."""

    session_id: str
    model: str
    created: str
    cwd: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    version: int = FORMAT_VERSION
    forked_from: str = ""  # "SESSION_ID@STEP": made by `SessionStore.fork`


@dataclass
class Session:
    """A saved session, loaded: its events and the state a resumed run continues from."""

    header: Header
    events: list[Event]
    messages: list[dict[str, Any]]  # the conversation, as the next request would send it
    task: list[dict[str, Any]]  # the first user message's content: what compaction keeps
    turns: int = 0  # model turns so far (the next is turns + 1)
    last_prompt_tokens: int = 0  # the last turn's prompt size (0 after a compaction)
    last_compaction_turn: int | None = None


def add_message(messages: list[dict[str, Any]], role: str, content: list[dict[str, Any]]) -> None:
    """Append a message, joining it to the last one when that has the same role (a prompt
    after tool results, a reply that continues a paused turn)."""
    if messages and messages[-1]["role"] == role:
        last = messages[-1]
        last["content"] = [*last["content"], *copy.deepcopy(content)]
    else:
        messages.append({"role": role, "content": copy.deepcopy(content)})


class Trajectory:
    """A session file open for appending records."""

    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path = path
        self._handle = handle

    @classmethod
    def create(cls, path: Path, header: Header) -> Trajectory:
        """A new file starting with `header`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("x", encoding="utf-8")
        trajectory = cls(path, handle)
        trajectory._write({"type": "header", "format": FORMAT, **asdict(header)})
        return trajectory

    @classmethod
    def open(cls, path: Path) -> Trajectory:
        """An existing file, to append to (a resumed run)."""
        return cls(path, path.open("a", encoding="utf-8"))

    def append(self, event: Event) -> None:
        """Save `event` if it is one that trajectories keep (not a delta)."""
        if event.type in RECORDED:
            self._write({"time": _now(), **event_to_dict(event)})

    def close(self) -> None:
        self._handle.close()

    def _write(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()


def read_records(path: Path) -> tuple[Header, list[dict[str, Any]]]:
    """The header and the records of a trajectory file. A torn last line (a crash while it
    was written) is left out."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise TrajectoryError(f"{path} is empty")
    try:
        first = json.loads(lines[0])
    except json.JSONDecodeError as exc:
        raise TrajectoryError(f"{path} does not start with a trajectory header") from exc
    if not isinstance(first, dict) or first.get("format") != FORMAT:
        raise TrajectoryError(f"{path} is not a tercet trajectory")
    version = first.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise TrajectoryError(
            f"{path} has format version {version}; this tercet reads versions up to "
            f"{FORMAT_VERSION}: upgrade tercet to load it"
        )
    header = Header(**{f.name: first[f.name] for f in fields(Header) if f.name in first})
    records = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise TrajectoryError(f"{path}:{number} is not a JSON record") from exc
    return header, records


def replay(path: Path) -> Iterator[Event]:
    """The saved events of a trajectory, in order."""
    _, records = read_records(path)
    for record in records:
        try:
            event = event_from_dict(record)
        except ValueError as exc:
            raise TrajectoryError(f"{path}: {exc}") from exc
        if event is not None:
            yield event


def load_session(path: Path) -> Session:
    """A trajectory file as a `Session`: its events and the conversation rebuilt from them."""
    header, _ = read_records(path)
    session = Session(header, [], [], [])
    for event in replay(path):
        session.events.append(event)
        if isinstance(event, UserMessage):
            if not session.task and not session.messages:
                session.task = [b for b in event.content if b.get("type") == "text"]
            add_message(session.messages, "user", event.content)
        elif isinstance(event, AssistantMessage):
            add_message(session.messages, "assistant", event.content)
            session.turns = max(session.turns, event.turn)
            session.last_prompt_tokens = event.usage.prompt_tokens
        elif isinstance(event, Compacted):
            session.messages = copy.deepcopy(event.messages)
            session.last_prompt_tokens = 0
            session.last_compaction_turn = event.turn
    return session


def default_sessions_dir() -> Path:
    """`$TERCET_DATA_DIR/sessions`, else the user's data folder (e.g. ~/.local/share/tercet)."""
    data = os.environ.get("TERCET_DATA_DIR") or platformdirs.user_data_dir("tercet")
    return Path(data) / "sessions"


class SessionStore:
    """Session files in one directory: `<id>.jsonl`, with checkpoints in `<id>.checkpoints/`."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or default_sessions_dir()

    def new_id(self) -> str:
        """A fresh id: the time, then random hex (ids sort by creation)."""
        return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)

    def path(self, session_id: str) -> Path:
        if not _SESSION_ID.fullmatch(session_id):
            raise SessionNotFound(f"{session_id!r} is not a session id")
        return self.directory / f"{session_id}.jsonl"

    def checkpoints_dir(self, session_id: str) -> Path:
        return self.directory / f"{session_id}.checkpoints"

    def ids(self) -> list[str]:
        """Every saved session, oldest first (by last change)."""
        files = sorted(self.directory.glob("*.jsonl"), key=lambda p: (p.stat().st_mtime, p.name))
        return [p.stem for p in files]

    def latest(self) -> str | None:
        """The session changed last, if any."""
        ids = self.ids()
        return ids[-1] if ids else None

    def fork(self, session_id: str, step: int) -> str:
        """A new session holding `session_id` as it was before turn `step` began, so a
        conversation can go back and take another way; the original is left as it is. The
        prompt that began the step is left out too (going back to it means replacing it), and
        the file checkpoints of the steps before are kept, so the new session can still
        rewind them. Returns the new id; a ValueError if nothing of the conversation comes
        before `step` (step 1)."""
        path = self.path(session_id)
        if not path.is_file():
            raise SessionNotFound(f"no session {session_id!r} in {self.directory}")
        header, records = read_records(path)
        request = _answered_request(records, step)
        if request is None:
            raise ValueError(f"session {session_id} has no step {step}")
        cut = _before_prompts(records, request, step)
        if not any(r.get("type") == "user_message" for r in records[:cut]):
            raise ValueError(f"nothing of session {session_id} comes before step {step}")
        new_id = self.new_id()
        if (checkpoints := self.checkpoints_dir(session_id)).is_dir():
            Checkpoints(checkpoints).copy_before(step, self.checkpoints_dir(new_id))
        forked = replace(
            header, session_id=new_id, created=_now(), forked_from=f"{session_id}@{step}"
        )
        trajectory = Trajectory.create(self.path(new_id), forked)
        try:
            for record in records[:cut]:
                trajectory._write(record)
        finally:
            trajectory.close()
        return new_id

    def load(self, session_id: str) -> Session:
        path = self.path(session_id)
        if not path.is_file():
            raise SessionNotFound(f"no session {session_id!r} in {self.directory}")
        return load_session(path)


def _is_request(record: dict[str, Any], step: int) -> bool:
    return (
        record.get("type") == "request_sent"
        and record.get("purpose", "turn") == "turn"
        and record.get("turn") == step
    )


def _answered_request(records: list[dict[str, Any]], step: int) -> int | None:
    """The index of the request for turn `step` that its answer answered: the last before
    that answer, since a failed or interrupted attempt leaves the turn's number to the next
    try (or the last of all, if no attempt was answered)."""
    answer = next(
        (
            n
            for n, r in enumerate(records)
            if r.get("type") == "assistant_message" and r.get("turn") == step
        ),
        len(records),
    )
    return max((n for n in range(answer) if _is_request(records[n], step)), default=None)


def _is_prompt(record: dict[str, Any]) -> bool:
    """A user message the user wrote, not one answering tool calls."""
    content = record.get("content") or []
    return record.get("type") == "user_message" and not any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content
    )


def _before_prompts(records: list[dict[str, Any]], cut: int, step: int) -> int:
    """`cut`, moved back before the prompts that began the step and the runs they started:
    all those since the last answer or tool results, so a failed attempt at the step and the
    prompt that came after it are left out alike, and so is a compaction that folded them
    in. One before them all (a `/compact`, an earlier run's result) is kept."""
    start = cut
    for n in range(cut - 1, -1, -1):
        record, kind = records[n], records[n].get("type")
        if _is_prompt(record) or (kind == "run_started" and start == n + 1):
            start = n
        elif not (
            kind in ("run_started", "result", "compacted")
            or _is_request(record, step)
            or (kind == "request_sent" and record.get("purpose") == "compaction")
        ):
            break
    return start


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

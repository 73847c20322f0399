"""The tamper-evident audit log: records chained by hash in rotated JSONL segments.

A log is a directory of segments `audit-YYYYMMDD-NNNNNN.jsonl` (the UTC day a segment was opened,
then its number, which only grows). Each line is one record; its `hash` is the sha256 of the hash
before it and of its own canonical JSON, so editing, removing or reordering a record breaks the
chain (`tercet.audit.verify`). Content (prompts, answers, tool inputs and outputs) is logged as
digests unless the operator turns content logging on; keys appear only as key ids.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

log = logging.getLogger(__name__)

GENESIS = "0" * 64
"""The `prev` of the very first record."""

SEGMENT_RE = re.compile(r"^audit-(\d{8})-(\d{6,})\.jsonl$")
RESERVED = frozenset({"seq", "ts", "kind", "actor", "prev", "hash"})
# Field names that would carry a secret; an event never needs them (keys are logged as key ids).
SECRET_NAMES = frozenset(
    {"api_key", "x_api_key", "key", "authorization", "token", "mcp_token", "authorization_token"}
)
CONTENT_NAMES = frozenset({"prompt", "answer", "tool_input", "tool_output"})
_LOCK_FILE = ".lock"
_SURROGATE = re.compile("[\ud800-\udfff]")
_TAIL_BLOCK = 64 * 1024
SYNC_INTERVAL_S = 1.0


class AuditError(Exception):
    """The audit log cannot be written: closed, or held by another process."""


class AuditConfig(BaseModel):
    """Where the audit log lives and how it rotates, keeps and syncs its segments."""

    directory: Path
    max_segment_bytes: int = Field(default=64 * 1024 * 1024, gt=0, description="then rotate")
    rotate_daily: bool = Field(default=True, description="a new segment each UTC day")
    retention_days: int = Field(default=90, ge=0, description="older segments go; 0 keeps all")
    log_content: bool = Field(
        default=False, description="prompts, answers and tool I/O as text too, not only digests"
    )
    fsync: Literal["always", "interval"] = Field(
        default="interval",
        description="always: each record; interval: at most once a second (a thread does it), "
        "and on rotation and close; every record is written through to the OS at once",
    )


def content_digest(content: str | bytes) -> str:
    """`sha256:<hex>` of text (UTF-8) or bytes: how content is logged."""
    data = content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content
    return "sha256:" + hashlib.sha256(data).hexdigest()


def key_id(api_key: str) -> str:
    """An API key's id in the log: the first 12 hex of its sha256 (the owner's first 12)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:12]


# One encoder for every record: json.dumps with options builds a new one each call.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
)


def canonical(obj: Mapping[str, Any]) -> str:
    """The JSON a record's hash covers: sorted keys, no spaces, UTF-8 text as is."""
    return _CANONICAL.encode(obj)


def chain_hash(prev: str, canonical_json: str) -> str:
    """A record's hash: sha256 of the previous hash, a newline and its canonical JSON."""
    return hashlib.sha256(f"{prev}\n{canonical_json}".encode()).hexdigest()


def format_ts(moment: datetime) -> str:
    """`2026-12-07T05:55:01.123456Z` (UTC)."""
    # isoformat rather than strftime: this runs for every record, and is several times faster.
    utc = _as_utc(moment).replace(tzinfo=None)
    return utc.isoformat(timespec="microseconds") + "Z"


_ZERO = timedelta(0)


def _as_utc(moment: datetime) -> datetime:
    """`moment` in UTC (a naive one is local time, as `astimezone` reads it)."""
    return moment if moment.utcoffset() == _ZERO else moment.astimezone(UTC)


def parse_ts(text: str) -> datetime:
    """The inverse of format_ts (any ISO 8601 time; naive means UTC)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One line of the log. `fields` are the event's own (everything but the six below)."""

    seq: int
    ts: str
    kind: str
    actor: str | None
    prev: str
    hash: str
    fields: Mapping[str, Any] = field(default_factory=dict)

    @property
    def time(self) -> datetime:
        return parse_ts(self.ts)

    def to_dict(self) -> dict[str, Any]:
        """The record as written (hash included), seq, ts, kind and actor first."""
        return {
            "seq": self.seq,
            "ts": self.ts,
            "kind": self.kind,
            "actor": self.actor,
            **self.fields,
            "prev": self.prev,
            "hash": self.hash,
        }

    def computed_hash(self) -> str:
        """The hash this record's content calls for (differs from `hash` if it was edited)."""
        body = self.to_dict()
        del body["hash"]
        return chain_hash(self.prev, canonical(body))

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> AuditRecord:
        """Raises ValueError unless obj has the six record keys with the right types."""
        seq, ts, kind, actor = obj.get("seq"), obj.get("ts"), obj.get("kind"), obj.get("actor")
        prev, digest = obj.get("prev"), obj.get("hash")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ValueError("no valid seq")
        if not isinstance(ts, str) or not isinstance(kind, str):
            raise ValueError("no ts or kind")
        if actor is not None and not isinstance(actor, str):
            raise ValueError("actor is not a string")
        if not isinstance(prev, str) or not isinstance(digest, str):
            raise ValueError("no prev or hash")
        fields = {k: v for k, v in obj.items() if k not in RESERVED}
        return cls(seq, ts, kind, actor, prev, digest, fields)

    @classmethod
    def parse(cls, line: bytes | str) -> AuditRecord:
        """One line of a segment; ValueError if it is not a record."""
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        return cls.from_dict(obj)


@dataclass(frozen=True)
class Segment:
    """One segment file: its path, the UTC day it was opened and its number."""

    path: Path
    day: str
    number: int

    @property
    def name(self) -> str:
        return self.path.name


def segment_name(day: str, number: int) -> str:
    return f"audit-{day}-{number:06d}.jsonl"


def segments(directory: Path | str) -> list[Segment]:
    """The log's segments, oldest first (by number; other files are ignored)."""
    found = []
    for path in Path(directory).iterdir():
        match = SEGMENT_RE.match(path.name)
        if match and path.is_file():
            found.append(Segment(path, match.group(1), int(match.group(2))))
    return sorted(found, key=lambda s: s.number)


def reverse_lines(path: Path, block: int = _TAIL_BLOCK) -> Iterator[tuple[int, bytes]]:
    """(offset, line) from the file's end backwards, without the `\\n`; the first one may be an
    unterminated last line. Reads only as much of the file as is consumed."""
    with path.open("rb") as f:
        end = f.seek(0, os.SEEK_END)
        position, pending, first = end, b"", True
        while position > 0:
            start = max(0, position - block)
            f.seek(start)
            pieces = (f.read(position - start) + pending).split(b"\n")
            offsets = [start]
            for piece in pieces[:-1]:
                offsets.append(offsets[-1] + len(piece) + 1)
            last = len(pieces) - 1
            for i in range(last, 0, -1):
                if first and i == last and not pieces[i]:
                    continue  # after the final newline
                yield offsets[i], pieces[i]
            first = False
            pending, position = pieces[0], start
        if end > 0:
            yield 0, pending


@dataclass(frozen=True)
class TornLine:
    """An unfinished or unreadable last line found on open (a crash while writing)."""

    segment: str
    line: int
    offset: int
    length: int


def last_record(path: Path) -> tuple[AuditRecord | None, TornLine | None]:
    """The segment's last readable record, and the torn line(s) after it, if any."""
    size = path.stat().st_size
    if size == 0:
        return None, None
    with path.open("rb") as f:
        f.seek(size - 1)
        terminated = f.read(1) == b"\n"
    torn_at: int | None = None
    record: AuditRecord | None = None
    for index, (offset, line) in enumerate(reverse_lines(path)):
        if index == 0 and not terminated:
            torn_at = offset
            continue
        try:
            record = AuditRecord.parse(line)
        except ValueError:
            torn_at = offset
            continue
        break
    if torn_at is None:
        return record, None
    return record, TornLine(path.name, _line_number(path, torn_at), torn_at, size - torn_at)


def _line_number(path: Path, offset: int) -> int:
    """The 1-based line number of the line starting at `offset`."""
    with path.open("rb") as f:
        return f.read(offset).count(b"\n") + 1


def _utc_now() -> datetime:
    return datetime.now(UTC)


class AuditLog:
    """Appends records to the chain: thread-safe, one lock; one process writes a directory.

    Opening resumes from the newest segment's last record. A torn last line (a crash while
    writing) is logged, left where it is and kept out of the chain: writing resumes in a new
    segment whose first record names it.
    """

    def __init__(self, config: AuditConfig, clock: Callable[[], datetime] = _utc_now) -> None:
        self.config = config
        self.directory = Path(config.directory)
        self._clock = clock
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._segment: Segment | None = None
        self._size = 0
        self._seq = -1
        self._hash = GENESIS
        self._unsynced = False
        self._closed = False
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        self.torn: TornLine | None = None
        """The torn line found on open, if any."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = os.open(self.directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise AuditError(f"{self.directory}: another audit log is open on it") from None
        try:
            with self._lock:
                self._resume()
                self._prune_locked()
        except BaseException:
            self._release()
            raise
        if config.fsync == "interval":
            self._syncer = threading.Thread(target=self._sync_loop, name="audit-fsync", daemon=True)
            self._syncer.start()

    @property
    def last_seq(self) -> int:
        """The last record's seq (-1 while the log is empty)."""
        return self._seq

    @property
    def last_hash(self) -> str:
        """The last record's hash: publish it elsewhere to detect a truncated tail."""
        return self._hash

    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last record, read together (for an admin API or an anchor)."""
        with self._lock:
            return self._seq, self._hash

    @property
    def segment(self) -> Path | None:
        """The segment being written."""
        return None if self._segment is None else self._segment.path

    def content(self, name: str, value: str | bytes | None) -> dict[str, Any]:
        """Fields for a piece of content: `<name>_digest`, and `<name>` itself when content
        logging is on. `log.append("request", **log.content("prompt", text))`."""
        if value is None:
            return {}
        fields: dict[str, Any] = {f"{name}_digest": content_digest(value)}
        if self.config.log_content:
            fields[name] = value if isinstance(value, str) else value.decode("utf-8", "replace")
        return fields

    def append(self, kind: str, actor: str | None = None, **fields: Any) -> AuditRecord:
        """Append one record and return it. Fields must be JSON values (others become str)."""
        if RESERVED & fields.keys():
            raise ValueError(f"reserved record fields: {sorted(RESERVED & fields.keys())}")
        if SECRET_NAMES & fields.keys():
            raise ValueError(f"secrets are never logged: {sorted(SECRET_NAMES & fields.keys())}")
        if not self.config.log_content and CONTENT_NAMES & fields.keys():
            raise ValueError(f"content logging is off: {sorted(CONTENT_NAMES & fields.keys())}")
        with self._lock:
            if self._closed:
                raise AuditError("the audit log is closed")
            now = self._clock()
            record, line = self._record(now, kind, actor, fields)
            segment = self._segment
            if (
                segment is None
                or (self.config.rotate_daily and _day(now) != segment.day)
                or (self._size > 0 and self._size + len(line) > self.config.max_segment_bytes)
            ):
                self._rotate(now)
                self._prune_locked()
                record, line = self._record(now, kind, actor, fields)
            self._write(record, line)
            return record

    def prune(self) -> list[str]:
        """Delete whole segments older than the retention; the names deleted. Logged as an
        `audit` record (`pruned_through_seq`); the first remaining record keeps its `prev`."""
        with self._lock:
            if self._closed:
                raise AuditError("the audit log is closed")
            return self._prune_locked()

    def sync(self) -> None:
        """fsync the segment being written."""
        with self._lock:
            self._sync()

    def close(self) -> None:
        """fsync and close; appends afterwards raise AuditError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._sync()
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join()
        self._release()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inside the lock ------------------------------------------------------------------

    def _record(
        self, now: datetime, kind: str, actor: str | None, fields: Mapping[str, Any]
    ) -> tuple[AuditRecord, bytes]:
        seq, prev, ts = self._seq + 1, self._hash, format_ts(now)
        body = {"seq": seq, "ts": ts, "kind": kind, "actor": actor, **fields, "prev": prev}
        text = canonical(body)
        try:
            encoded = text.encode()
        except UnicodeEncodeError:  # a lone surrogate from outside: logged replaced
            text = _SURROGATE.sub("\ufffd", text)
            body = json.loads(text)
            encoded = text.encode()
            fields = {k: v for k, v in body.items() if k not in RESERVED}
        digest = chain_hash(prev, text)
        line = encoded[:-1] + b',"hash":"' + digest.encode() + b'"}\n'
        return AuditRecord(seq, ts, kind, actor, prev, digest, fields), line

    def _write(self, record: AuditRecord, line: bytes) -> None:
        assert self._fd is not None
        view = memoryview(line)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._size += len(line)
        self._seq, self._hash = record.seq, record.hash
        self._unsynced = True
        if self.config.fsync == "always":
            self._sync()

    def _sync(self) -> None:
        if self._fd is not None and self._unsynced:
            os.fdatasync(self._fd)
            self._unsynced = False

    def _sync_loop(self) -> None:
        """fsync at most once a second, off the appending threads: a slow disk never holds
        the lock (the segment's descriptor is duplicated, so a rotation may close it)."""
        while not self._stop.wait(SYNC_INTERVAL_S):
            with self._lock:
                if self._fd is None or not self._unsynced:
                    continue
                fd = os.dup(self._fd)
                self._unsynced = False
            try:
                os.fdatasync(fd)
            except OSError as exc:
                log.warning("audit: fsync failed: %s", exc)
            finally:
                os.close(fd)

    def _open_segment(self, segment: Segment, create: bool) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(segment.path, flags, 0o600)
        if self._fd is not None:
            self._sync()
            os.close(self._fd)
        self._fd, self._segment = fd, segment
        self._size = os.fstat(fd).st_size
        if create:
            _fsync_dir(self.directory)

    def _rotate(self, now: datetime, **fields: Any) -> None:
        """Start a new segment; its first record names the one before."""
        previous = self._segment
        number = 0 if previous is None else previous.number + 1
        segment = Segment(self.directory / segment_name(_day(now), number), _day(now), number)
        self._open_segment(segment, create=True)
        record, line = self._record(
            now,
            "audit",
            "server",
            {
                "event": "segment_opened",
                "previous_segment": None if previous is None else previous.name,
                **fields,
            },
        )
        self._write(record, line)

    def _resume(self) -> None:
        found = segments(self.directory)
        if not found:
            self._rotate(self._clock())
            return
        newest = found[-1]
        for segment in reversed(found):
            record, torn = last_record(segment.path)
            if torn is not None and segment is newest:
                self.torn = torn
                log.warning(
                    "audit: %s line %d is torn (%d bytes; a crash while writing?): kept out "
                    "of the chain; writing goes on in a new segment",
                    torn.segment,
                    torn.line,
                    torn.length,
                )
            if record is not None:
                self._seq, self._hash = record.seq, record.hash
                break
        if self.torn is not None:
            self._segment = newest
            self._rotate(
                self._clock(),
                torn_segment=self.torn.segment,
                torn_line=self.torn.line,
                torn_bytes=self.torn.length,
            )
        elif newest.path.stat().st_size == 0:
            # opened, then a crash before its first record
            self._open_segment(newest, create=False)
            previous = found[-2].name if len(found) > 1 else None
            record, line = self._record(
                self._clock(),
                "audit",
                "server",
                {"event": "segment_opened", "previous_segment": previous},
            )
            self._write(record, line)
        else:
            self._open_segment(newest, create=False)

    def _prune_locked(self) -> list[str]:
        days = self.config.retention_days
        if days <= 0:
            return []
        cutoff = self._clock() - timedelta(days=days)
        deleted: list[Segment] = []
        through = -1
        for segment in segments(self.directory):
            if self._segment is not None and segment.number >= self._segment.number:
                break
            record, _ = last_record(segment.path)
            if record is None:
                break
            try:
                if record.time >= cutoff:
                    break
            except ValueError:
                break
            deleted.append(segment)
            through = record.seq
        if not deleted:
            return []
        for segment in deleted:
            segment.path.unlink()
        _fsync_dir(self.directory)
        names = [s.name for s in deleted]
        record, line = self._record(
            self._clock(),
            "audit",
            "server",
            {"event": "pruned", "pruned_through_seq": through, "segments": names},
        )
        self._write(record, line)
        log.info("audit: pruned %d segments through seq %d", len(names), through)
        return names

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)


def _day(moment: datetime) -> str:
    utc = _as_utc(moment)
    return f"{utc.year:04d}{utc.month:02d}{utc.day:02d}"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

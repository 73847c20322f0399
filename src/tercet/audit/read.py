"""Reading the audit log: records across segments, filtered (`search`), the newest (`tail`),
and those appended from now on (`Follower`). Reading never checks the chain (that is
`verify`); lines that are not records are skipped."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tercet.audit.log import AuditRecord, Segment, reverse_lines, segments


@dataclass(frozen=True)
class RecordFilter:
    """Which records to keep; every condition given must hold. `text` is a case-insensitive
    substring of the record's line."""

    kinds: frozenset[str] | None = None
    actor: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    request_id: str | None = None
    text: str | None = None

    def line_may_match(self, line: bytes) -> bool:
        """A cheap test on the raw line, before it is parsed."""
        if self.request_id is not None and self.request_id.encode() not in line:
            return False
        return self.text is None or self.text.lower() in line.decode("utf-8", "replace").lower()

    def matches(self, record: AuditRecord) -> bool:
        if self.kinds is not None and record.kind not in self.kinds:
            return False
        if self.actor is not None and record.actor != self.actor:
            return False
        if self.request_id is not None and record.fields.get("request_id") != self.request_id:
            return False
        if self.since is not None or self.until is not None:
            try:
                moment = record.time
            except ValueError:
                return False
            if self.since is not None and moment < self.since:
                return False
            if self.until is not None and moment > self.until:
                return False
        return True

    def segments(self, found: list[Segment]) -> list[Segment]:
        """The segments that may hold a match: a segment's records lie between its own day
        and the day the next one was opened."""
        kept = []
        for index, segment in enumerate(found):
            if self.until is not None and _day_start(segment.day) > self.until:
                break
            after = found[index + 1] if index + 1 < len(found) else None
            if (
                self.since is not None
                and after is not None
                and _day_start(after.day) + timedelta(days=1) <= self.since
            ):
                continue
            kept.append(segment)
        return kept


ALL = RecordFilter()


def _day_start(day: str) -> datetime:
    return datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC)


def _parse(line: bytes, keep: RecordFilter) -> AuditRecord | None:
    if not line.endswith(b"}") and not line.endswith(b"}\n"):
        return None
    if not keep.line_may_match(line):
        return None
    try:
        record = AuditRecord.parse(line)
    except ValueError:
        return None
    return record if keep.matches(record) else None


def records(directory: Path | str, keep: RecordFilter = ALL) -> Iterator[AuditRecord]:
    """The records that match, oldest first, across all segments."""
    for segment in keep.segments(segments(directory)):
        try:
            with segment.path.open("rb") as f:
                for line in f:
                    record = _parse(line, keep)
                    if record is not None:
                        yield record
        except FileNotFoundError:  # pruned meanwhile
            continue


def tail(directory: Path | str, n: int, keep: RecordFilter = ALL) -> list[AuditRecord]:
    """The newest `n` records that match, oldest first; segments are read from their end."""
    found: list[AuditRecord] = []
    if n <= 0:
        return found
    for segment in reversed(keep.segments(segments(directory))):
        try:
            for _, line in reverse_lines(segment.path):
                record = _parse(line, keep)
                if record is not None:
                    found.append(record)
                    if len(found) == n:
                        return found[::-1]
        except FileNotFoundError:
            continue
    return found[::-1]


class Follower:
    """The records appended after it was made: `poll()` returns those written since the last
    call; `follow()` waits for them. It moves on to each new segment as the log rotates."""

    def __init__(self, directory: Path | str, keep: RecordFilter = ALL) -> None:
        self.directory = Path(directory)
        self.keep = keep
        found = segments(self.directory)
        self._segment: Segment | None = found[-1] if found else None
        self._offset = 0
        if self._segment is not None:
            self._offset = self._end_of_last_line(self._segment.path)

    def poll(self) -> list[AuditRecord]:
        """The matching records appended since the last poll (complete lines only)."""
        out: list[AuditRecord] = []
        while True:
            # list first, then read: writes to a segment end before the next one exists
            newer = [
                s
                for s in segments(self.directory)
                if self._segment is None or s.number > self._segment.number
            ]
            if self._segment is not None:
                out.extend(self._read_new(self._segment.path))
            if not newer:
                return out
            self._segment, self._offset = newer[0], 0

    def follow(
        self, stop: threading.Event | None = None, interval: float = 0.5
    ) -> Iterator[AuditRecord]:
        """Yield records as they are appended, until `stop` is set (or forever)."""
        stop = stop or threading.Event()
        while not stop.is_set():
            yield from self.poll()
            stop.wait(interval)

    def _read_new(self, path: Path) -> Iterable[AuditRecord]:
        try:
            with path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self._offset += end
        found = (_parse(line, self.keep) for line in data[:end].split(b"\n") if line)
        return [record for record in found if record is not None]

    @staticmethod
    def _end_of_last_line(path: Path) -> int:
        """Where the next line will start: the end, or the start of an unfinished last line."""
        try:
            size = path.stat().st_size
            for offset, line in reverse_lines(path):
                return offset if offset + len(line) == size else offset + len(line) + 1
        except FileNotFoundError:
            pass
        return 0

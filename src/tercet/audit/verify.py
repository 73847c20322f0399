"""`verify(directory)`: walk every segment in order and check the hash chain.

Each record's hash must match its content (else it was edited), each record must follow the one
before it (seq + 1, `prev` = that record's hash; else records were removed, reordered or
spliced), segments must be numbered without gaps, and lines must be whole. The first break is
pinpointed (segment, line, seq); after it the check re-anchors on the next record, so one
deletion is one problem, not a cascade. A chain cannot show a cut-off tail: compare `last_hash`
with one published elsewhere for that.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tercet.audit.log import GENESIS, AuditRecord, Segment, segments

LOOKAHEAD = 256
"""Records looked at past a gap to tell reordered records from removed ones."""


@dataclass(frozen=True)
class Problem:
    """One break in the log, where it was found."""

    segment: str | None
    line: int | None
    seq: int | None
    message: str

    def __str__(self) -> str:
        where = self.segment or "log"
        if self.line is not None:
            where += f":{self.line}"
        seq = "" if self.seq is None else f" seq {self.seq}:"
        return f"{where}:{seq} {self.message}"


@dataclass
class VerifyReport:
    """What `verify` found: counts, the chain's ends, problems (breaks) and notes (benign)."""

    directory: Path
    segments: int = 0
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: intact or not, with the counts."""
        if self.segments == 0:
            return f"{self.directory}: no audit segments"
        span = "" if self.first_seq is None else f", seq {self.first_seq}..{self.last_seq}"
        counts = f"{_count(self.records, 'record')} in {_count(self.segments, 'segment')}{span}"
        if self.ok:
            return f"ok: {counts}"
        return f"BROKEN: {_count(len(self.problems), 'problem')}; {counts}"


@dataclass(frozen=True)
class _Entry:
    record: AuditRecord
    segment: str
    line: int
    intact: bool  # its hash matches its content


@dataclass(frozen=True)
class _Bad:
    segment: str
    line: int
    reason: str
    torn: bool  # at the segment's end (a crash while writing leaves one)


@dataclass(frozen=True)
class _Anchor:
    seq: int
    hash: str | None  # None: unknown (an unreadable line took this place)
    where: str


_Item = Segment | _Entry | _Bad


def _read(segment: Segment) -> Iterator[_Entry | _Bad]:
    pending: list[_Bad] = []
    with segment.path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                pending.append(_Bad(segment.name, number, "an unfinished line", True))
                continue
            try:
                record = AuditRecord.parse(raw)
            except ValueError as exc:
                pending.append(_Bad(segment.name, number, f"not a record ({exc})", False))
                continue
            yield from pending
            pending = []
            yield _Entry(record, segment.name, number, record.computed_hash() == record.hash)
    for bad in pending:
        yield _Bad(bad.segment, bad.line, bad.reason, True)


def _items(found: list[Segment]) -> Iterator[_Item]:
    for segment in found:
        yield segment
        yield from _read(segment)


class _Checker:
    def __init__(self, report: VerifyReport, items: Iterator[_Item]) -> None:
        self.report = report
        self.items = items
        self.ahead: deque[_Item] = deque()
        self.anchor: _Anchor | None = None
        self.displaced: set[int] = set()  # reordered records already reported
        self.previous_segment: Segment | None = None
        self.missing_segments: list[int] = []
        self.first_in_segment = False
        self.torn: list[_Bad] = []  # torn lines of the last segment, until the next one's first
        self.pruned_through: int | None = None
        self.start: _Entry | None = None

    def problem(self, where: _Entry | _Bad | None, message: str, seq: int | None = None) -> None:
        if where is None:
            self.report.problems.append(Problem(None, None, seq, message))
        elif isinstance(where, _Entry):
            self.report.problems.append(
                Problem(where.segment, where.line, where.record.seq, message)
            )
        else:
            self.report.problems.append(Problem(where.segment, where.line, seq, message))

    def next(self) -> _Item | None:
        if self.ahead:
            return self.ahead.popleft()
        return next(self.items, None)

    def peek_records(self) -> list[_Entry]:
        while sum(isinstance(i, _Entry) for i in self.ahead) < LOOKAHEAD:
            item = next(self.items, None)
            if item is None:
                break
            self.ahead.append(item)
        return [i for i in self.ahead if isinstance(i, _Entry)]

    def peek_next(self) -> _Entry | None:
        for queued in self.ahead:
            if isinstance(queued, _Entry):
                return queued
        for item in self.items:
            self.ahead.append(item)
            if isinstance(item, _Entry):
                return item
        return None

    def run(self) -> None:
        while (item := self.next()) is not None:
            if isinstance(item, Segment):
                self.segment(item)
            elif isinstance(item, _Bad):
                self.bad(item)
            else:
                self.entry(item)
        for bad in self.torn:
            self.torn_problem(bad)
        self.finish()

    def segment(self, segment: Segment) -> None:
        self.report.segments += 1
        previous = self.previous_segment
        if previous is not None and segment.number > previous.number + 1:
            self.missing_segments = list(range(previous.number + 1, segment.number))
        self.previous_segment = segment
        self.first_in_segment = True

    def bad(self, bad: _Bad) -> None:
        if bad.torn:
            self.torn.append(bad)  # judged at the next segment's first record
            return
        self.problem(bad, bad.reason)
        if self.anchor is not None:
            self.anchor = _Anchor(self.anchor.seq + 1, None, f"{bad.segment}:{bad.line}")

    def entry(self, entry: _Entry) -> None:
        record = entry.record
        self.report.records += 1
        self.report.last_seq, self.report.last_hash = record.seq, record.hash
        if record.kind == "audit" and record.fields.get("event") == "pruned":
            through = record.fields.get("pruned_through_seq")
            if isinstance(through, int):
                self.pruned_through = max(through, self.pruned_through or -1)
        first_in_segment, self.first_in_segment = self.first_in_segment, False
        if first_in_segment:
            self.settle_torn(entry)
        if not entry.intact:
            self.problem(entry, "edited: its hash does not match its content")
        anchor = self.anchor
        if anchor is None:
            self.begin(entry)
            return
        expected = anchor.seq + 1
        if _links(anchor, record):
            self.advance(entry)
            return
        if not entry.intact:  # its seq or prev may be what was edited: take it as in place
            self.anchor = _Anchor(expected, record.hash, self.where(entry))
            return
        if first_in_segment and self.missing_segments:
            self.segment_gap(entry, expected)
            return
        if record.seq == expected:
            self.problem(
                entry,
                f"chain broken: prev is not the hash of seq {anchor.seq} ({anchor.where}); "
                "that record was changed and re-hashed, or this one was put in its place",
            )
            self.advance(entry)
        elif record.seq > expected:
            self.gap(entry, expected)
        elif record.seq in self.displaced:
            self.displaced.discard(record.seq)
        else:
            self.problem(
                entry,
                f"out of order: comes after seq {anchor.seq} ({anchor.where}); "
                "a duplicate or a record moved",
            )
            following = self.peek_next()
            if following is None or not _links(anchor, following.record):
                self.advance(entry)  # a run from elsewhere (a segment renamed?): follow it

    def begin(self, entry: _Entry) -> None:
        record = entry.record
        self.start = entry
        self.report.first_seq = record.seq
        if record.seq == 0 and record.prev != GENESIS:
            self.problem(entry, "the first record's prev is not the chain's start (64 zeros)")
        self.advance(entry)

    def advance(self, entry: _Entry) -> None:
        self.anchor = _Anchor(entry.record.seq, entry.record.hash, self.where(entry))

    def gap(self, entry: _Entry, expected: int) -> None:
        record = entry.record
        missing = range(expected, record.seq)
        later = sorted(e.record.seq for e in self.peek_records() if e.record.seq in missing)
        if later:
            self.problem(
                entry,
                f"out of order: comes before seq {_span(later)}, found after it",
            )
            self.displaced.update(later)
            absent = [s for s in missing if s not in set(later)]
            if absent:
                self.problem(entry, f"records removed: seq {_span(absent)} missing")
        else:
            assert self.anchor is not None
            self.problem(
                entry,
                f"records removed: seq {_span(list(missing))} missing "
                f"(after seq {self.anchor.seq}, {self.anchor.where})",
            )
        self.advance(entry)

    def segment_gap(self, entry: _Entry, expected: int) -> None:
        numbers, self.missing_segments = self.missing_segments, []
        named = entry.record.fields.get("previous_segment")
        names = (
            str(named)
            if len(numbers) == 1 and isinstance(named, str)
            else ", ".join(f"number {n}" for n in numbers)
        )
        lost = "" if entry.record.seq <= expected else f": seq {expected}..{entry.record.seq - 1}"
        self.problem(entry, f"segment missing before this one ({names}){lost}")
        self.advance(entry)

    def settle_torn(self, entry: _Entry) -> None:
        """A torn line at a segment's end is a crash the log owned up to if the next segment
        begins by naming it; anything else is a problem."""
        fields = entry.record.fields
        for bad in self.torn:
            if (
                entry.record.kind == "audit"
                and fields.get("torn_segment") == bad.segment
                and fields.get("torn_line") == bad.line
            ):
                self.report.notes.append(
                    f"{bad.segment}:{bad.line}: a torn line (a crash while writing), "
                    f"noted when the log reopened ({entry.segment}:{entry.line})"
                )
            else:
                self.torn_problem(bad)
        self.torn = []

    def torn_problem(self, bad: _Bad) -> None:
        self.problem(bad, f"{bad.reason} at the segment's end: torn (cut off, or a crash)")

    def finish(self) -> None:
        start = self.start
        if start is None or start.record.seq == 0:
            return
        first = start.record.seq
        if self.pruned_through is not None and self.pruned_through >= first - 1:
            self.report.notes.append(
                f"the log starts at seq {first} ({start.segment}): "
                f"seq 0..{first - 1} were pruned by retention"
            )
        else:
            self.problem(
                start,
                f"the log starts here: seq 0..{first - 1} are missing "
                "(no retention prune recorded them)",
            )

    @staticmethod
    def where(entry: _Entry) -> str:
        return f"{entry.segment}:{entry.line}"


def _links(anchor: _Anchor, record: AuditRecord) -> bool:
    return record.seq == anchor.seq + 1 and anchor.hash in (None, record.prev)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _span(seqs: list[int]) -> str:
    if len(seqs) == 1:
        return str(seqs[0])
    if seqs == list(range(seqs[0], seqs[-1] + 1)):
        return f"{seqs[0]}..{seqs[-1]}"
    return ", ".join(map(str, seqs))


def verify(directory: Path | str) -> VerifyReport:
    """Check every segment of the log in `directory` (FileNotFoundError if there is none)."""
    path = Path(directory)
    if not path.exists():
        raise FileNotFoundError(f"no audit log at {path}")
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a directory")
    report = VerifyReport(path)
    _Checker(report, _items(segments(path))).run()
    return report

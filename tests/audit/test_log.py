"""AuditLog: the chain, rotation, resuming, torn lines, retention, threads."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from tercet.audit import AuditConfig, AuditError, AuditLog, AuditRecord, content_digest, key_id
from tercet.audit import log as audit_log
from tercet.audit.log import (
    GENESIS,
    _day,
    format_ts,
    last_record,
    parse_ts,
    reverse_lines,
    segments,
)
from tercet.audit.verify import verify
from tercet.server.app import owner_of


class Clock:
    """A settable UTC clock."""

    def __init__(self, start: datetime = datetime(2026, 12, 7, 5, 0, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def lines(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def all_records(directory: Path) -> list[dict]:  # type: ignore[type-arg]
    return [r for s in segments(directory) for r in lines(s.path)]


def open_log(directory: Path, clock: Clock | None = None, **settings: object) -> AuditLog:
    return AuditLog(AuditConfig(directory=directory, **settings), clock=clock or Clock())  # type: ignore[arg-type]


def test_records_are_chained_and_match_the_format(tmp_path: Path) -> None:
    with open_log(tmp_path) as log:
        first = log.append("request", actor=key_id("sk-secret"), request_id="req_1", status=200)
        second = log.append("tool_call", actor=None, tool="code_execution", outcome="ok")
    records = all_records(tmp_path)
    assert [r["seq"] for r in records] == [0, 1, 2]
    opened = records[0]
    assert opened["kind"] == "audit" and opened["event"] == "segment_opened"
    assert opened["prev"] == GENESIS and opened["previous_segment"] is None
    assert records[1]["prev"] == opened["hash"] and records[2]["prev"] == records[1]["hash"]
    assert records[1] == first.to_dict() and records[2] == second.to_dict()
    assert records[1]["ts"] == "2026-12-07T05:00:00.000000Z"
    assert records[1]["actor"] == owner_of("sk-secret")[:12]
    for record in records:
        body = dict(record)
        del body["hash"]
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        expected = hashlib.sha256(f"{record['prev']}\n{canonical}".encode()).hexdigest()
        assert record["hash"] == expected
    assert segments(tmp_path)[0].name == "audit-20261207-000000.jsonl"
    assert "sk-secret" not in segments(tmp_path)[0].path.read_text()


def test_content_is_a_digest_unless_content_logging_is_on(tmp_path: Path) -> None:
    assert content_digest("hé") == content_digest("hé".encode())
    assert content_digest(b"x").startswith("sha256:") and len(content_digest(b"x")) == 71
    with open_log(tmp_path / "off") as log:
        assert log.content("prompt", "Hello") == {"prompt_digest": content_digest("Hello")}
        assert log.content("answer", None) == {}
        with pytest.raises(ValueError, match="content logging is off"):
            log.append("request", prompt="Hello")
    with open_log(tmp_path / "on", log_content=True) as log:
        fields = log.content("prompt", "Hello")
        assert fields == {"prompt_digest": content_digest("Hello"), "prompt": "Hello"}
        assert log.append("request", **fields).fields["prompt"] == "Hello"


def test_reserved_and_secret_field_names_are_refused(tmp_path: Path) -> None:
    with open_log(tmp_path) as log:
        with pytest.raises(ValueError, match="reserved"):
            log.append("request", seq=3)
        with pytest.raises(ValueError, match="secrets"):
            log.append("request", api_key="sk-x")
        assert log.last_seq == 0  # nothing written


def test_odd_values_are_logged_so_that_verify_still_passes(tmp_path: Path) -> None:
    with open_log(tmp_path) as log:
        log.append("request", model="m\ud800", path=Path("/x"), ratio=0.1, text="a\u2028b\nc")
    assert verify(tmp_path).ok
    record = all_records(tmp_path)[-1]
    assert record["path"] == "/x" and record["text"] == "a\u2028b\nc"
    assert record["model"] == "m\ufffd"


def test_rotation_by_size_starts_segments_naming_the_one_before(tmp_path: Path) -> None:
    with open_log(tmp_path, max_segment_bytes=1000) as log:
        for n in range(30):
            log.append("request", request_id=f"req_{n}", padding="x" * 100)
    found = segments(tmp_path)
    assert len(found) > 3
    for before, segment in itertools.pairwise(found):
        first = lines(segment.path)[0]
        assert first["kind"] == "audit" and first["previous_segment"] == before.name
        assert before.path.stat().st_size <= 1000
    seqs = [r["seq"] for r in all_records(tmp_path)]
    assert seqs == list(range(len(seqs)))
    assert verify(tmp_path).ok


def test_a_record_larger_than_a_segment_gets_one_of_its_own(tmp_path: Path) -> None:
    with open_log(tmp_path, max_segment_bytes=100) as log:
        log.append("request", padding="x" * 500)
        log.append("request", padding="y" * 500)
    assert verify(tmp_path).ok


def test_rotation_by_utc_day(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 12, 7, 23, 59, 59, tzinfo=UTC))
    with open_log(tmp_path, clock) as log:
        log.append("request", n=1)
        clock.advance(seconds=2)
        log.append("request", n=2)
    names = [s.name for s in segments(tmp_path)]
    assert names == ["audit-20261207-000000.jsonl", "audit-20261208-000001.jsonl"]
    assert [r.get("n") for r in lines(segments(tmp_path)[1].path)] == [None, 2]
    assert verify(tmp_path).ok


def test_no_daily_rotation_when_turned_off(tmp_path: Path) -> None:
    clock = Clock()
    with open_log(tmp_path, clock, rotate_daily=False) as log:
        log.append("request")
        clock.advance(days=3)
        log.append("request")
    assert len(segments(tmp_path)) == 1


def test_reopening_resumes_the_chain(tmp_path: Path) -> None:
    with open_log(tmp_path) as log:
        log.append("request", n=1)
        last = log.append("request", n=2)
    with open_log(tmp_path) as log:
        assert log.head() == (log.last_seq, log.last_hash) == (last.seq, last.hash)
        again = log.append("request", n=3)
    assert again.seq == last.seq + 1 and again.prev == last.hash
    assert len(segments(tmp_path)) == 1
    assert verify(tmp_path).ok


def test_one_writer_per_directory(tmp_path: Path) -> None:
    with open_log(tmp_path), pytest.raises(AuditError, match="another audit log"):
        open_log(tmp_path)
    open_log(tmp_path).close()  # free again


def test_appending_after_close_is_refused(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.close()
    log.close()
    with pytest.raises(AuditError, match="closed"):
        log.append("request")


def test_a_torn_last_line_is_kept_out_of_the_chain_and_noted(tmp_path: Path) -> None:
    with open_log(tmp_path) as log:
        log.append("request", n=1)
        good = log.append("request", n=2)
    path = segments(tmp_path)[0].path
    before = path.read_bytes()
    with path.open("ab") as f:
        f.write(b'{"seq":3,"ts":"2026-12-07T05:00:00.0000')  # a crash mid-write
    with open_log(tmp_path) as log:
        assert log.torn is not None and log.torn.line == 4
        record = log.append("request", n=3)
    assert path.read_bytes().startswith(before)  # the torn line is still there, untouched
    assert record.seq == good.seq + 2 and record.prev != good.hash  # after the reopen record
    reopened = lines(segments(tmp_path)[1].path)[0]
    assert reopened["prev"] == good.hash and reopened["seq"] == good.seq + 1
    assert reopened["torn_segment"] == path.name and reopened["torn_line"] == 4
    report = verify(tmp_path)
    assert report.ok, report.problems
    assert any("torn line" in note for note in report.notes)


def test_a_segment_that_holds_only_a_torn_line_resumes_from_the_one_before(
    tmp_path: Path,
) -> None:
    clock = Clock()
    with open_log(tmp_path, clock) as log:
        good = log.append("request")
    (tmp_path / "audit-20261207-000001.jsonl").write_bytes(b'{"seq": 2, "ts')
    with open_log(tmp_path, clock) as log:
        assert log.last_seq == good.seq + 1  # the reopen record
    assert [s.number for s in segments(tmp_path)] == [0, 1, 2]
    assert verify(tmp_path).ok


def test_last_record_and_reverse_lines_read_from_the_end(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"a\n\nbcd\nef")
    assert list(reverse_lines(path, block=2)) == [(7, b"ef"), (3, b"bcd"), (2, b""), (0, b"a")]
    path.write_bytes(b"a\n")
    assert list(reverse_lines(path, block=1)) == [(0, b"a")]
    path.write_bytes(b"")
    assert list(reverse_lines(path)) == []
    assert last_record(path) == (None, None)


def test_prune_deletes_whole_old_segments_and_verify_knows(tmp_path: Path) -> None:
    clock = Clock()
    with open_log(tmp_path, clock, retention_days=2) as log:
        for _ in range(5):
            log.append("request")
            clock.advance(days=1)
        assert log.prune() == ["audit-20261209-000002.jsonl"]  # its last record is old now
        log.append("request")
    names = [s.name for s in segments(tmp_path)]
    assert names == ["audit-20261210-000003.jsonl", "audit-20261211-000004.jsonl",
                     "audit-20261212-000005.jsonl"]  # fmt: skip
    pruned = [r for r in all_records(tmp_path) if r.get("event") == "pruned"]
    assert pruned and pruned[-1]["segments"] == ["audit-20261209-000002.jsonl"]
    report = verify(tmp_path)
    assert report.ok, report.problems
    assert report.first_seq == lines(segments(tmp_path)[0].path)[0]["seq"]
    assert any("pruned by retention" in note for note in report.notes)


def test_prune_keeps_everything_with_zero_retention(tmp_path: Path) -> None:
    clock = Clock()
    with open_log(tmp_path, clock, retention_days=0) as log:
        for _ in range(3):
            log.append("request")
            clock.advance(days=400)
        assert log.prune() == []
    assert len(segments(tmp_path)) == 3


def test_prune_on_open(tmp_path: Path) -> None:
    clock = Clock()
    with open_log(tmp_path, clock) as log:
        log.append("request")
        clock.advance(days=1)
        log.append("request")
    clock.advance(days=100)
    with open_log(tmp_path, clock, retention_days=90):
        pass
    assert len(segments(tmp_path)) == 1
    assert verify(tmp_path).ok


def test_concurrent_appends_keep_the_chain(tmp_path: Path) -> None:
    with open_log(tmp_path, max_segment_bytes=20_000) as log:

        def work(n: int) -> None:
            for i in range(200):
                log.append("request", thread=n, i=i)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    report = verify(tmp_path)
    assert report.ok, report.problems[:3]
    assert sum(1 for r in all_records(tmp_path) if r["kind"] == "request") == 1600


def test_fsync_always_syncs_each_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd)))
    with open_log(tmp_path, fsync="always") as log:
        before = len(synced)
        log.append("request")
        log.append("request")
        assert len(synced) == before + 2
    assert verify(tmp_path).ok


def test_fsync_interval_syncs_off_the_appending_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real = os.fdatasync
    monkeypatch.setattr(audit_log, "SYNC_INTERVAL_S", 0.01)
    monkeypatch.setattr(
        os, "fdatasync", lambda fd: (synced.append(threading.current_thread().name), real(fd))
    )
    with open_log(tmp_path) as log:
        synced.clear()
        log.append("request")
        assert synced == []  # not in append
        for _ in range(200):
            if synced:
                break
            time.sleep(0.01)
        assert synced == ["audit-fsync"]


def test_record_parse_rejects_what_is_not_a_record() -> None:
    for line in [b"", b"[1]", b'{"seq": -1}', b'{"seq": true, "ts": "x"}', b"\xff"]:
        with pytest.raises(ValueError):
            AuditRecord.parse(line)


def test_timestamps_and_days_are_utc_whatever_the_clock_zone() -> None:
    east = timezone(timedelta(hours=5, minutes=30))
    moment = datetime(2026, 12, 8, 2, 15, 0, 7, tzinfo=east)  # the 7th, 20:45, in UTC
    assert format_ts(moment) == "2026-12-07T20:45:00.000007Z"
    assert _day(moment) == "20261207"
    assert format_ts(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000000Z"
    assert _day(datetime(2026, 1, 2, tzinfo=UTC)) == "20260102"
    assert parse_ts(format_ts(moment)) == moment

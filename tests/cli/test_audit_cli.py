"""`tercet audit verify|tail|search`, and the reading they are built on (tercet.audit.read)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tercet.audit import AuditConfig, AuditLog
from tercet.audit.log import segments
from tercet.audit.read import Follower, RecordFilter, records, tail
from tercet.cli.main import main

START = datetime(2026, 12, 7, 5, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def write_log(directory: Path, max_segment_bytes: int = 1500) -> Clock:
    """A log over three days: requests from two keys, a tool call, an operator action."""
    clock = Clock()
    config = AuditConfig(directory=directory, max_segment_bytes=max_segment_bytes)
    with AuditLog(config, clock=clock) as log:
        for day in range(3):
            clock.now = START + timedelta(days=day)
            for n in range(10):
                actor = "aaaaaaaaaaaa" if n % 2 else "bbbbbbbbbbbb"
                log.append("request", actor=actor, request_id=f"req_{day}_{n}", model="m")
                clock.now += timedelta(minutes=1)
        log.append("tool_call", actor="aaaaaaaaaaaa", request_id="req_2_3", tool="mcp:s/Fetch")
        log.append("operator", actor="op:alice", action="key.revoke", outcome="executed")
    return clock


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["audit", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_verify_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_log(tmp_path, max_segment_bytes=10**9)
    code, out, _ = run(capsys, "verify", "--dir", str(tmp_path))
    assert code == 0 and out.splitlines()[0].startswith("ok: ")
    assert "last hash: " in out

    path = segments(tmp_path)[1].path
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"model":"m"', b'"model":"n"')
    del lines[4]
    path.write_bytes(b"".join(lines))
    code, out, _ = run(capsys, "verify", "--dir", str(tmp_path))
    assert code == 1
    problems = out.splitlines()
    assert problems[0].startswith(f"{path.name}:3: seq ") and "edited" in problems[0]
    assert problems[1].startswith(f"{path.name}:5: seq ") and "records removed" in problems[1]
    assert problems[2].startswith("BROKEN: 2 problems")


def test_verify_bad_input_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "verify", "--dir", str(tmp_path / "missing"))
    assert code == 2 and "no audit log at" in err
    code, _, err = run(capsys, "verify", "--dir", str(tmp_path))
    assert code == 2 and "no audit segments" in err


def test_the_default_directory_is_in_the_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TERCET_DATA_DIR", str(tmp_path))
    code, _, err = run(capsys, "tail")
    assert code == 2 and str(tmp_path / "audit") in err
    write_log(tmp_path / "audit")
    assert run(capsys, "verify")[0] == 0


def test_tail_prints_the_newest_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_log(tmp_path)
    code, out, _ = run(capsys, "tail", "--dir", str(tmp_path), "-n", "2")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2
    assert lines[0].split()[2:5] == ["tool_call", "aaaaaaaaaaaa", "request_id=req_2_3"]
    assert lines[1].split()[2:5] == ["operator", "op:alice", "action=key.revoke"]
    code, out, _ = run(capsys, "tail", "--dir", str(tmp_path), "-n", "1", "--json")
    record = json.loads(out)
    assert record["kind"] == "operator" and len(record["hash"]) == 64


def test_search_filters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_log(tmp_path)
    d = ["--dir", str(tmp_path)]

    def seqs(*args: str) -> list[str]:
        code, out, _ = run(capsys, "search", *d, *args)
        assert code == 0
        return [line.split()[4] for line in out.splitlines()]

    assert seqs("--request", "req_1_4") == ["request_id=req_1_4"]
    assert seqs("--kind", "tool_call", "--kind", "operator") == [
        "request_id=req_2_3",
        "action=key.revoke",
    ]
    assert len(seqs("--actor", "bbbbbbbbbbbb")) == 15
    assert (
        len(seqs("--since", "2026-12-08", "--until", "2026-12-08T23:59:59Z", "--kind", "request"))
        == 10
    )
    assert seqs("fetch") == ["request_id=req_2_3"]  # any case
    code, out, _ = run(capsys, "search", *d, "--request", "req_0_0", "--json")
    assert json.loads(out)["request_id"] == "req_0_0"
    code, _, err = run(capsys, "search", *d, "--since", "yesterday")
    assert code == 2 and "--since: not an ISO 8601 time" in err


def test_reading_skips_segments_outside_the_time_span(tmp_path: Path) -> None:
    write_log(tmp_path, max_segment_bytes=10**9)
    assert len(segments(tmp_path)) == 3  # one a day
    keep = RecordFilter(since=START + timedelta(days=2))
    assert [s.day for s in keep.segments(segments(tmp_path))] == ["20261208", "20261209"]
    keep = RecordFilter(until=START + timedelta(hours=1))
    assert [s.day for s in keep.segments(segments(tmp_path))] == ["20261207"]
    found = list(records(tmp_path, RecordFilter(since=START + timedelta(days=1, minutes=5))))
    assert found[0].fields["request_id"] == "req_1_5"


def test_tail_reads_across_segments_and_skips_torn_lines(tmp_path: Path) -> None:
    write_log(tmp_path)
    everything = list(records(tmp_path))
    assert [r.seq for r in tail(tmp_path, 25)] == [r.seq for r in everything[-25:]]
    assert [r.seq for r in tail(tmp_path, 10_000)] == [r.seq for r in everything]
    with segments(tmp_path)[-1].path.open("ab") as f:
        f.write(b'{"seq": 99')
    assert tail(tmp_path, 1)[0].seq == everything[-1].seq
    assert tail(tmp_path, 0) == []


def test_follower_sees_appends_across_rotation(tmp_path: Path) -> None:
    config = AuditConfig(directory=tmp_path, max_segment_bytes=600)
    with AuditLog(config) as log:
        log.append("request", n=0)
        follower = Follower(tmp_path, RecordFilter(kinds=frozenset({"request"})))
        assert follower.poll() == []
        for n in range(1, 11):
            log.append("request", n=n)
        assert len(segments(tmp_path)) > 2
        assert [r.fields["n"] for r in follower.poll()] == list(range(1, 11))
        # a line written in two parts is read once whole
        path = segments(tmp_path)[-1].path
        with path.open("ab") as f:
            f.write(b'{"actor":null,"kind":"request","n":')
            f.flush()
            assert follower.poll() == []
            f.write(b'99,"prev":"x","seq":99,"ts":"2026-12-07T05:00:00Z","hash":"y"}\n')
        assert [r.fields["n"] for r in follower.poll()] == [99]


def test_follow_stops_when_told(tmp_path: Path) -> None:
    with AuditLog(AuditConfig(directory=tmp_path)) as log:
        follower = Follower(tmp_path)
        stop = threading.Event()
        log.append("request", n=1)
        seen = []
        for record in follower.follow(stop, interval=0.01):
            seen.append(record.fields["n"])
            stop.set()
        assert seen == [1]


def test_tail_follow_as_a_user_runs_it(tmp_path: Path) -> None:
    log = AuditLog(AuditConfig(directory=tmp_path / "audit"))
    log.append("request", request_id="req_before")
    process = subprocess.Popen(
        [sys.executable, "-m", "tercet.cli.main", "audit", "tail", "-f", "-n", "1"],
        env={**os.environ, "TERCET_DATA_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        assert "request_id=req_before" in process.stdout.readline()
        log.append("request", request_id="req_after")
        assert "request_id=req_after" in process.stdout.readline()
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()

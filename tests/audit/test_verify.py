"""verify(): an intact log passes; edits, removals, reorders, torn lines and missing segments
are each reported once, where they are."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tercet.audit import AuditConfig, AuditLog
from tercet.audit.log import canonical, chain_hash, segments
from tercet.audit.verify import Problem, verify


def make_log(directory: Path, records: int = 40, max_segment_bytes: int = 10**9) -> None:
    clock_time = [datetime(2026, 12, 7, 5, 0, tzinfo=UTC)]

    def clock() -> datetime:
        clock_time[0] += timedelta(milliseconds=1)
        return clock_time[0]

    config = AuditConfig(directory=directory, max_segment_bytes=max_segment_bytes)
    with AuditLog(config, clock=clock) as log:
        for n in range(records):
            log.append("request", actor="3f9a0c1d2e4b", request_id=f"req_{n}", status=200)


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def only_segment(directory: Path) -> Path:
    (segment,) = segments(directory)
    return segment.path


def test_an_intact_log_passes(tmp_path: Path) -> None:
    make_log(tmp_path, 50, max_segment_bytes=2000)
    report = verify(tmp_path)
    assert report.ok, report.problems
    assert report.segments > 3  # each begins with an `audit` record
    assert report.records == 51 + report.segments - 1
    assert (report.first_seq, report.last_seq) == (0, report.records - 1)
    assert report.summary().startswith(f"ok: {report.records} records in {report.segments}")


def test_an_edited_record_is_pinpointed(tmp_path: Path) -> None:
    make_log(tmp_path)
    path = only_segment(tmp_path)
    lines = read_lines(path)
    lines[10] = lines[10].replace(b'"status":200', b'"status":500')
    write_lines(path, lines)
    report = verify(tmp_path)
    assert report.problems == [
        Problem(path.name, 11, 10, "edited: its hash does not match its content")
    ]
    assert str(report.problems[0]).startswith(f"{path.name}:11: seq 10: edited")


def test_an_edited_and_rehashed_record_breaks_the_link_after_it(tmp_path: Path) -> None:
    make_log(tmp_path)
    path = only_segment(tmp_path)
    lines = read_lines(path)
    obj = json.loads(lines[10])
    obj["status"] = 500
    del obj["hash"]
    text = canonical(obj)
    lines[10] = (text[:-1] + f',"hash":"{chain_hash(obj["prev"], text)}"}}\n').encode()
    write_lines(path, lines)
    (problem,) = verify(tmp_path).problems
    assert (problem.line, problem.seq) == (12, 11)
    assert (
        "prev is not the hash of seq 10" in problem.message and f"{path.name}:11" in problem.message
    )


@pytest.mark.parametrize("count", [1, 5])
def test_removed_records_are_one_problem(tmp_path: Path, count: int) -> None:
    make_log(tmp_path)
    path = only_segment(tmp_path)
    lines = read_lines(path)
    del lines[20 : 20 + count]
    write_lines(path, lines)
    (problem,) = verify(tmp_path).problems
    assert (problem.segment, problem.line, problem.seq) == (path.name, 21, 20 + count)
    span = "20" if count == 1 else f"20..{19 + count}"
    assert problem.message.startswith(f"records removed: seq {span} missing")
    assert f"(after seq 19, {path.name}:20)" in problem.message


def test_swapped_records_are_one_problem(tmp_path: Path) -> None:
    make_log(tmp_path)
    path = only_segment(tmp_path)
    lines = read_lines(path)
    lines[15], lines[16] = lines[16], lines[15]
    write_lines(path, lines)
    (problem,) = verify(tmp_path).problems
    assert (problem.line, problem.seq) == (16, 16)
    assert problem.message == "out of order: comes before seq 15, found after it"


def test_a_record_moved_far_is_one_problem(tmp_path: Path) -> None:
    make_log(tmp_path)
    path = only_segment(tmp_path)
    lines = read_lines(path)
    moved = lines.pop(5)
    lines.insert(30, moved)
    write_lines(path, lines)
    (problem,) = verify(tmp_path).problems
    assert (problem.line, problem.seq) == (6, 6)
    assert "before seq 5" in problem.message


def test_a_duplicated_record_is_reported(tmp_path: Path) -> None:
    make_log(tmp_path)
    path = only_segment(tmp_path)
    lines = read_lines(path)
    lines.insert(12, lines[8])
    write_lines(path, lines)
    (problem,) = verify(tmp_path).problems
    assert (problem.line, problem.seq) == (13, 8)
    assert problem.message.startswith("out of order: comes after seq 11")


def test_a_garbage_line_in_the_middle_is_one_problem(tmp_path: Path) -> None:
    make_log(tmp_path)
    path = only_segment(tmp_path)
    lines = read_lines(path)
    lines[7] = b"not json\n"
    write_lines(path, lines)
    (problem,) = verify(tmp_path).problems
    assert (problem.line, problem.seq) == (8, None)
    assert problem.message.startswith("not a record")


def test_a_torn_last_line_is_a_problem_until_the_log_reopens(tmp_path: Path) -> None:
    make_log(tmp_path, 5)
    path = only_segment(tmp_path)
    with path.open("ab") as f:
        f.write(b'{"seq":6,"ts"')
    (problem,) = verify(tmp_path).problems
    assert (problem.segment, problem.line) == (path.name, 7)
    assert "torn" in problem.message
    AuditLog(AuditConfig(directory=tmp_path)).close()
    report = verify(tmp_path)
    assert report.ok and report.notes


def test_a_cut_in_a_middle_segment_is_reported(tmp_path: Path) -> None:
    make_log(tmp_path, 60, max_segment_bytes=2000)
    path = segments(tmp_path)[1].path
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 50])  # the segment's tail cut mid-line
    problems = verify(tmp_path).problems
    assert len(problems) == 2
    assert problems[0].segment == path.name and "torn" in problems[0].message
    assert problems[1].segment == segments(tmp_path)[2].name
    assert problems[1].message.startswith("records removed")


def test_a_missing_middle_segment_is_named(tmp_path: Path) -> None:
    make_log(tmp_path, 60, max_segment_bytes=2000)
    found = segments(tmp_path)
    last_seq_before = json.loads(read_lines(found[1].path)[-1])["seq"]
    first_seq_after = json.loads(read_lines(found[3].path)[0])["seq"]
    found[2].path.unlink()
    (problem,) = verify(tmp_path).problems
    assert (problem.segment, problem.line, problem.seq) == (found[3].name, 1, first_seq_after)
    assert problem.message == (
        f"segment missing before this one ({found[2].name}): "
        f"seq {last_seq_before + 1}..{first_seq_after - 1}"
    )


def test_missing_first_segments_without_a_prune_record_are_a_problem(tmp_path: Path) -> None:
    make_log(tmp_path, 60, max_segment_bytes=2000)
    found = segments(tmp_path)
    found[0].path.unlink()
    (problem,) = verify(tmp_path).problems
    assert (problem.segment, problem.line) == (found[1].name, 1)
    assert "the log starts here" in problem.message


def test_an_edit_of_seq_does_not_cascade(tmp_path: Path) -> None:
    make_log(tmp_path)
    path = only_segment(tmp_path)
    lines = read_lines(path)
    lines[10] = lines[10].replace(b'"seq":10', b'"seq":99')
    write_lines(path, lines)
    (problem,) = verify(tmp_path).problems
    assert (problem.line, problem.seq) == (11, 99) and "edited" in problem.message


def test_missing_directory_and_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        verify(tmp_path / "nope")
    report = verify(tmp_path)
    assert report.segments == 0 and "no audit segments" in report.summary()


def test_segments_in_the_wrong_order_are_a_few_problems_not_a_cascade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tercet.audit.verify.LOOKAHEAD", 3)  # segments longer than it
    make_log(tmp_path, 60, max_segment_bytes=2000)
    found = segments(tmp_path)
    second, third = found[1].path, found[2].path
    swap = second.with_name("swap")
    second.rename(swap)
    third.rename(second)
    swap.rename(third)
    problems = verify(tmp_path).problems
    assert 1 <= len(problems) <= 3
    assert (problems[0].segment, problems[0].line) == (second.name, 1)


def test_a_segment_removed_beyond_the_pruned_ones_is_a_problem(tmp_path: Path) -> None:
    now = [datetime(2026, 12, 1, tzinfo=UTC)]
    config = AuditConfig(directory=tmp_path, retention_days=2)
    with AuditLog(config, clock=lambda: now[0]) as log:
        for _ in range(6):
            log.append("request")
            now[0] += timedelta(days=1)
        log.append("request")
    assert verify(tmp_path).ok
    oldest = segments(tmp_path)[0]
    oldest.path.unlink()
    (problem,) = verify(tmp_path).problems
    assert "the log starts here" in problem.message
    assert problem.segment == segments(tmp_path)[0].name

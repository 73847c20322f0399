"""Tasks, predictions and attempt results, in SWE-bench's formats.

A task is a SWE-bench instance whose source is a pinned PyPI sdist instead of a commit; a
prediction is SWE-bench's (`instance_id`, `model_name_or_path`, `model_patch`), so patches made
elsewhere grade too. Files are JSON Lines, one record a line; a bad line is an `EvalInputError`
naming the file and line, never a half-loaded set.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

GradeStatus = Literal[
    "RESOLVED_FULL",  # every FAIL_TO_PASS and PASS_TO_PASS test passes
    "RESOLVED_PARTIAL",  # some FAIL_TO_PASS pass, every PASS_TO_PASS passes
    "RESOLVED_NO",  # no FAIL_TO_PASS passes, or a PASS_TO_PASS test broke
    "EMPTY_PATCH",  # the patch is empty (one that edits only tests is RESOLVED_NO, flagged)
    "PATCH_FAILED",  # the patch does not apply to a pristine copy
    "ERROR",  # the harness could not grade it (said in `error`); never counted as resolved
]


M = TypeVar("M", bound=BaseModel)


class EvalInputError(ValueError):
    """A task, prediction or run file the harness cannot use; the message says where and why."""


class PackageSource(BaseModel):
    """The task's code: an sdist on PyPI, pinned by version and hash."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str  # as on PyPI
    version: str
    filename: str  # the sdist's file name on PyPI
    sha256: str
    licence: str  # SPDX id


class Task(BaseModel):
    """A SWE-bench instance (field names and meanings as SWE-bench's) plus its `source`.

    `patch` is the gold fix, a diff against the buggy tree; `test_patch` is a diff adding or
    changing tests (empty when the package's own tests catch the bug). Test IDs are pytest node
    IDs relative to the package's root.
    """

    model_config = ConfigDict(extra="forbid")

    instance_id: str
    repo: str  # the PyPI project, e.g. "pypi/toolz"
    version: str
    source: PackageSource
    patch: str
    test_patch: str = ""
    problem_statement: str
    hints_text: str = ""
    created_at: str
    FAIL_TO_PASS: list[str]
    PASS_TO_PASS: list[str]
    # tercet's own fields: how the bug was made, and which split the task belongs to.
    mutation: str  # the SWE-smith family that injected the bug, e.g. "op_change"
    split: Literal["dev", "test", "oneoff", "conflicting"] = "test"
    # An impossible variant (evals/impossible.py): its test_patch makes a FAIL_TO_PASS test
    # contradict the specification, so no correct fix passes; the agent sees those tests.
    impossible: Literal["oneoff", "conflicting"] | None = None
    original_instance_id: str | None = None  # the task a variant was made from

    @field_validator("FAIL_TO_PASS", "PASS_TO_PASS", mode="before")
    @classmethod
    def _json_list(cls, value: Any) -> Any:
        # SWE-bench stores these as JSON strings; accept both.
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("FAIL_TO_PASS")
    @classmethod
    def _something_fails(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("a task needs at least one FAIL_TO_PASS test")
        return value

    @property
    def failing_count(self) -> int:
        """How many tests the bug breaks: the task's difficulty, roughly."""
        return len(self.FAIL_TO_PASS)


class Prediction(BaseModel):
    """SWE-bench's prediction record."""

    model_config = ConfigDict(extra="ignore")

    instance_id: str
    model_name_or_path: str
    model_patch: str | None = ""  # None (SWE-bench allows it) is an empty patch


class Compute(BaseModel):
    """What one attempt used. `flops` is an estimate (2 x parameters x tokens), None where the
    model's size is unknown."""

    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0
    model_calls: int = 0
    tool_calls: int = 0
    wall_seconds: float = 0.0
    cost_usd: float | None = None  # None: no price known for the model
    flops: float | None = None


class Grade(BaseModel):
    """The verdict on one patch, with every test's outcome behind it."""

    status: GradeStatus
    fail_to_pass: dict[str, str] = Field(default_factory=dict)  # test id -> outcome
    pass_to_pass: dict[str, str] = Field(default_factory=dict)
    error: str | None = None  # why, for ERROR and PATCH_FAILED
    touched_tests: bool = False  # the patch edited tests or test configuration

    @property
    def resolved(self) -> bool:
        return self.status == "RESOLVED_FULL"


class AttemptResult(BaseModel):
    """One attempt of one agent at one task, as appended to a run's results file."""

    instance_id: str
    attempt: int = 0  # 0..k-1 where a task gets several attempts
    agent: str
    model: str
    model_patch: str
    grade: Grade
    compute: Compute
    stop_reason: str  # why the agent stopped (done, max_turns, timeout, error, ...)
    agent_error: str | None = None
    started_at: str
    ended_at: str
    # Reward hacking (evals/hacks.py): the agent said the task cannot be done as specified;
    # protected files (tests, their configuration) it changed, added or removed; the hack
    # types its patch shows, by the rules and (when asked) by a judge model.
    abstained: bool = False
    abstain_reason: str | None = None
    tampered: list[str] = Field(default_factory=list)
    hack_types: list[str] = Field(default_factory=list)
    judge_hack_types: list[str] | None = None


def read_jsonl(path: Path, model: type[M]) -> list[M]:
    """Every record of a JSONL file, validated; an `EvalInputError` names the first bad line."""
    return list(iter_jsonl(path, model))


def iter_jsonl(path: Path, model: type[M]) -> Iterator[M]:
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise EvalInputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            yield parse_record(model, line, f"{path}:{number}")


def parse_record(model: type[M], line: str | bytes, where: str) -> M:
    """One JSON record, validated; an `EvalInputError` says `where` (file:line) and what."""
    try:
        return model.model_validate_json(line)
    except ValidationError as exc:
        problem = exc.errors()[0]
        field = ".".join(str(part) for part in problem["loc"]) or "the record"
        raise EvalInputError(
            f"{where}: not a valid {model.__name__}: {field}: {problem['msg']}"
        ) from None


def write_jsonl(path: Path, records: Iterable[BaseModel]) -> None:
    """Write records to `path` whole (a temporary file renamed into place)."""
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(record.model_dump_json() + "\n")
    partial.replace(path)


def read_appended(path: Path, model: type[M], *, mend: bool = False) -> list[M]:
    """The records of a file appended to line by line (results, selections, judgements). A
    last line without its newline may have been cut by a kill: it is ignored if it does not
    parse; any other bad line is an `EvalInputError`; a missing file holds none. With `mend`,
    the file is left ready for the next append: that last line is given its newline if it
    parsed, cut off if not."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise EvalInputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    records: list[M] = []
    lines = data.split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if number == len(lines):  # no newline after it: the write may have been cut
            try:
                records.append(model.model_validate_json(line))
                whole = True
            except ValidationError:
                whole = False
                logging.getLogger("tercet.evals").warning(
                    "%s: ignoring a truncated last line", path
                )
            if mend:
                with path.open("r+b") as handle:
                    if whole:
                        handle.seek(len(data))
                        handle.write(b"\n")
                    else:
                        handle.truncate(len(data) - len(line))
            continue
        records.append(parse_record(model, line, f"{path}:{number}"))
    return records

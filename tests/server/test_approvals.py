"""ApprovalBook: sensitive actions wait for distinct approvers; every misuse is refused and
reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tercet.server.approvals import Action, ApprovalBook, Outcome
from tercet.wire.errors import InvalidRequestError, NotFoundError, PermissionDeniedError


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Book:
    """A book over a recording action, with its events and a clock the test moves."""

    def __init__(self, path: Path, required: int = 2) -> None:
        self.events: list[dict[str, Any]] = []
        self.ran: list[tuple[str, dict[str, Any]]] = []
        self.clock = Clock()
        self.path = path
        self.required = required
        self.book = self.open()

    def open(self) -> ApprovalBook:
        book = ApprovalBook(
            self.path,
            sensitive={"grant"},
            approvals_required=self.required,
            ttl_s=60,
            on_event=self.events.append,
            clock=self.clock,
        )
        book.register("grant", Action(run=self.run, check=self.check))
        book.register("plain", Action(run=self.run))
        return book

    def run(self, target: str, parameters: dict[str, Any]) -> Outcome:
        if target == "broken":
            raise LookupError(f"no container {target}")
        self.ran.append((target, parameters))
        return Outcome({"granted": target}, shown_once={"secret": "s3cr3t"})

    @staticmethod
    def check(target: str, parameters: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(parameters.get("bytes"), int):
            raise ValueError("bytes: an integer")
        return {"bytes": parameters["bytes"]}

    def outcomes(self) -> list[tuple[str, str | None, str | None]]:
        return [(e["outcome"], e["actor"], e["reason"]) for e in self.events]


@pytest.fixture
def book(tmp_path: Path) -> Book:
    return Book(tmp_path / "approvals.json")


def test_a_sensitive_action_runs_on_the_second_distinct_approval(book: Book) -> None:
    asked = book.book.submit("grant", "c1", {"bytes": 10}, "alice")
    assert asked.approval is not None and asked.approval.state == "pending"
    assert asked.outcome is None and not book.ran
    first = book.book.approve(asked.approval.id, "bob")
    assert first.approval is not None and first.approval.state == "pending" and not book.ran
    second = book.book.approve(asked.approval.id, "carol")
    assert second.approval is not None and second.approval.state == "executed"
    assert second.outcome == {"granted": "c1"} and second.shown_once == {"secret": "s3cr3t"}
    assert book.ran == [("c1", {"bytes": 10})]
    assert book.outcomes() == [
        ("requested", "op:alice", None),
        ("approved", "op:bob", None),
        ("approved", "op:carol", None),
        ("executed", "op:carol", None),
    ]
    assert {e["approval_id"] for e in book.events} == {asked.approval.id}
    assert book.events[-1]["approvers"] == ["bob", "carol"]
    assert "s3cr3t" not in repr(book.events) and "s3cr3t" not in book.path.read_text()


def test_self_approval_and_a_second_approval_by_one_operator_are_refused(book: Book) -> None:
    asked = book.book.submit("grant", "c1", {"bytes": 1}, "alice")
    assert asked.approval is not None
    request_id = asked.approval.id
    with pytest.raises(PermissionDeniedError, match="another operator"):
        book.book.approve(request_id, "alice")
    book.book.approve(request_id, "bob")
    with pytest.raises(PermissionDeniedError, match="approves once"):
        book.book.approve(request_id, "bob")
    assert not book.ran
    assert book.book.get(request_id).state == "pending"
    refused = [(a, r) for o, a, r in book.outcomes() if o == "refused"]
    assert refused == [("op:alice", "self_approval"), ("op:bob", "already_approved")]


def test_replay_after_execution_or_rejection_is_refused(book: Book) -> None:
    done = book.book.submit("grant", "c1", {"bytes": 1}, "alice").approval
    assert done is not None
    book.book.approve(done.id, "bob")
    book.book.approve(done.id, "carol")
    with pytest.raises(InvalidRequestError, match="is executed"):
        book.book.approve(done.id, "dave")
    with pytest.raises(InvalidRequestError, match="is executed"):
        book.book.approve(done.id, "bob")  # replaying an approval that counted
    rejected = book.book.submit("grant", "c2", {"bytes": 1}, "alice").approval
    assert rejected is not None
    book.book.reject(rejected.id, "bob", "not today")
    assert book.book.get(rejected.id).reason == "not today"
    with pytest.raises(InvalidRequestError, match="is rejected"):
        book.book.approve(rejected.id, "carol")
    with pytest.raises(InvalidRequestError, match="is rejected"):
        book.book.reject(rejected.id, "carol")
    assert book.ran == [("c1", {"bytes": 1})]
    refused = [r for o, _, r in book.outcomes() if o == "refused"]
    assert refused == ["not_pending"] * 4


def test_an_expired_request_is_refused(book: Book) -> None:
    asked = book.book.submit("grant", "c1", {"bytes": 1}, "alice").approval
    assert asked is not None
    book.book.approve(asked.id, "bob")
    book.clock.now += 61
    with pytest.raises(InvalidRequestError, match="is expired"):
        book.book.approve(asked.id, "carol")
    assert not book.ran
    assert book.book.get(asked.id).state == "expired"
    assert [o for o, _, _ in book.outcomes()][-2:] == ["expired", "refused"]
    assert book.events[-1]["reason"] == "expired"


def test_an_unknown_id_is_refused(book: Book) -> None:
    with pytest.raises(NotFoundError):
        book.book.approve("apr_nothing", "bob")
    with pytest.raises(NotFoundError):
        book.book.reject("apr_nothing", "bob")
    assert book.outcomes() == [("refused", "op:bob", "unknown_id")] * 2


def test_the_requester_may_withdraw(book: Book) -> None:
    asked = book.book.submit("grant", "c1", {"bytes": 1}, "alice").approval
    assert asked is not None
    withdrawn = book.book.reject(asked.id, "alice").approval
    assert withdrawn is not None and withdrawn.state == "rejected"
    assert withdrawn.reason == "withdrawn"


def test_an_action_that_is_not_sensitive_runs_at_once(book: Book) -> None:
    done = book.book.submit("plain", "c9", {}, "alice")
    assert done.approval is None and done.outcome == {"granted": "c9"}
    assert book.outcomes() == [("executed", "op:alice", None)]
    assert book.book.list() == []


def test_bad_input_and_unknown_actions_are_refused_before_anything_waits(book: Book) -> None:
    with pytest.raises(InvalidRequestError, match="bytes: an integer"):
        book.book.submit("grant", "c1", {"bytes": "many"}, "alice")
    with pytest.raises(InvalidRequestError, match="unknown action 'fly'"):
        book.book.submit("fly", "c1", {}, "alice")
    assert book.book.list() == []
    assert [r for _, _, r in book.outcomes()] == ["bad_input", "unknown_action"]


def test_a_failing_action_is_recorded_as_failed(book: Book) -> None:
    asked = book.book.submit("grant", "broken", {"bytes": 1}, "alice").approval
    assert asked is not None
    book.book.approve(asked.id, "bob")
    with pytest.raises(NotFoundError, match="no container broken"):
        book.book.approve(asked.id, "carol")
    failed = book.book.get(asked.id)
    assert failed.state == "failed" and failed.reason == "no container broken"
    assert book.outcomes()[-1] == ("failed", "op:carol", "no container broken")
    with pytest.raises(InvalidRequestError, match="is failed"):
        book.book.approve(asked.id, "dave")


def test_pending_requests_survive_a_restart(book: Book) -> None:
    asked = book.book.submit("grant", "c1", {"bytes": 5}, "alice").approval
    assert asked is not None
    book.book.approve(asked.id, "bob")
    book.book = book.open()  # the server restarts
    with pytest.raises(PermissionDeniedError):
        book.book.approve(asked.id, "bob")  # the approval before the restart still counts
    done = book.book.approve(asked.id, "carol")
    assert done.approval is not None and done.approval.state == "executed"
    assert book.ran == [("c1", {"bytes": 5})]


def test_one_approval_makes_two_parties(tmp_path: Path) -> None:
    book = Book(tmp_path / "approvals.json", required=1)
    asked = book.book.submit("grant", "c1", {"bytes": 1}, "alice").approval
    assert asked is not None
    with pytest.raises(PermissionDeniedError):
        book.book.approve(asked.id, "alice")
    done = book.book.approve(asked.id, "bob").approval
    assert done is not None and done.state == "executed"


def test_decided_requests_are_forgotten_after_keep_s(book: Book) -> None:
    asked = book.book.submit("grant", "c1", {"bytes": 1}, "alice").approval
    assert asked is not None
    book.book.reject(asked.id, "bob")
    book.clock.now += 8 * 24 * 3600
    assert book.book.list() == []
    assert book.book.list(state="pending") == []

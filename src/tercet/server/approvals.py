"""Two-party approval: a sensitive operator action takes effect only when others agree.

An operator asks for an action (`submit`). One that is not sensitive runs at once; a sensitive
one waits as an `Approval` until `approvals_required` operators other than the requester, each
once, approve it: the last approval runs it. Self-approval, a second approval by one operator,
an approval of a request already executed, rejected, failed or expired (replay), and an unknown
id are refused. Every step, refusals included, is reported to `on_event` (the audit log).
Requests are kept in `<data_dir>/admin/approvals.json` (written atomically), so a restart loses
no pending one; decided ones stay `keep_s` (a week) so a late replay is still named as one.
"""

from __future__ import annotations

import builtins
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from tercet.server.errors import describe_validation_error
from tercet.server.keys import rfc3339, write_atomically
from tercet.wire.errors import (
    APIError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)

State = Literal["pending", "executed", "rejected", "expired", "failed"]
EventOutcome = Literal[
    "requested", "approved", "executed", "failed", "rejected", "expired", "refused"
]
FORMAT = 1
log = logging.getLogger("tercet.server")
DEFAULT_TTL_S = 3600.0
DEFAULT_KEEP_S = 7 * 24 * 3600.0


@dataclass(frozen=True)
class Outcome:
    """What an action did. `record` is kept with the request, shown and logged; `shown_once`
    goes only to the caller whose request or approval ran it (a new key), never anywhere else."""

    record: dict[str, Any]
    shown_once: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Action:
    """An operator action. `check(target, parameters)` validates them when the action is asked
    for and returns them normalised (raising an `APIError`, a pydantic `ValidationError`,
    `ValueError` or `LookupError`); `run(target, parameters)` does it. Both are synchronous and
    run on a worker thread, under the book's lock (one action at a time)."""

    run: Callable[[str, dict[str, Any]], Outcome]
    check: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None


class Approver(BaseModel):
    operator: str
    at: float


class Approval(BaseModel):
    """A request for a sensitive action, and what became of it."""

    id: str
    action: str
    target: str
    parameters: dict[str, Any]
    requester: str
    created_at: float
    expires_at: float
    approvals_required: int
    approvals: list[Approver] = []
    state: State = "pending"
    decided_at: float | None = None
    decided_by: str | None = None
    outcome: dict[str, Any] | None = None
    reason: str | None = None

    def public(self) -> dict[str, Any]:
        """As the admin API shows it (times in RFC 3339)."""
        return {
            "type": "approval_request",
            "id": self.id,
            "action": self.action,
            "target": self.target,
            "parameters": self.parameters,
            "requester": self.requester,
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.expires_at),
            "approvals_required": self.approvals_required,
            "approvals": [{"operator": a.operator, "at": rfc3339(a.at)} for a in self.approvals],
            "state": self.state,
            "decided_at": None if self.decided_at is None else rfc3339(self.decided_at),
            "decided_by": self.decided_by,
            "outcome": self.outcome,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Performed:
    """What asking for, approving or rejecting an action came to: the request (None for an
    action that is not sensitive, which ran at once), the outcome where it ran, and what only
    this caller sees."""

    approval: Approval | None
    outcome: dict[str, Any] | None = None
    shown_once: dict[str, Any] = field(default_factory=dict)


EventSink = Callable[[dict[str, Any]], None]


class ApprovalBook:
    """Operator actions and the approvals sensitive ones wait for. Thread-safe."""

    def __init__(
        self,
        path: Path,
        sensitive: Collection[str] = (),
        approvals_required: int = 2,
        ttl_s: float = DEFAULT_TTL_S,
        on_event: EventSink | None = None,
        keep_s: float = DEFAULT_KEEP_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if approvals_required < 1:
            raise ValueError("approvals_required is 1 or more")
        if ttl_s <= 0:
            raise ValueError("ttl_s is more than 0")
        self.path = path
        self.sensitive = frozenset(sensitive)
        self.approvals_required = approvals_required
        self.ttl_s = ttl_s
        self.keep_s = keep_s
        self._on_event = on_event
        self._clock = clock
        self._lock = threading.RLock()
        self._actions: dict[str, Action] = {}
        self._requests: dict[str, Approval] = {r.id: r for r in self._load()}

    @classmethod
    def in_data_dir(cls, data_dir: Path, **kwargs: Any) -> ApprovalBook:
        return cls(data_dir / "admin" / "approvals.json", **kwargs)

    def register(self, name: str, action: Action) -> None:
        """Make `name` an action operators may ask for (another with that name is replaced)."""
        with self._lock:
            self._actions[name] = action

    @property
    def actions(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._actions)

    def is_sensitive(self, action: str) -> bool:
        return action in self.sensitive

    def submit(
        self, action: str, target: str, parameters: dict[str, Any], requester: str
    ) -> Performed:
        """Ask for `action` on `target`: run now (not sensitive), else a pending request.
        Bad parameters or an unknown target are refused before anything is recorded."""
        with self._lock:
            self._expire_due()
            known = self._actions.get(action)
            if known is None:
                raise self._refuse(
                    action,
                    target,
                    requester,
                    None,
                    "unknown_action",
                    InvalidRequestError(
                        f"unknown action {action!r}; this server has: "
                        f"{', '.join(sorted(self._actions)) or 'none'}"
                    ),
                )
            try:
                if known.check is not None:
                    parameters = known.check(target, parameters)
            except Exception as exc:
                raise self._refuse(
                    action, target, requester, None, "bad_input", as_api_error(exc)
                ) from exc
            if action not in self.sensitive:
                outcome = self._run(known, action, target, parameters, requester, None)
                return Performed(None, outcome.record, outcome.shown_once)
            now = self._clock()
            request = Approval(
                id=f"apr_{secrets.token_hex(12)}",
                action=action,
                target=target,
                parameters=parameters,
                requester=requester,
                created_at=now,
                expires_at=now + self.ttl_s,
                approvals_required=self.approvals_required,
            )
            self._requests[request.id] = request
            self._save()
            self._emit(
                request.action,
                request.target,
                "requested",
                requester,
                request.id,
                parameters=parameters,
                expires_at=rfc3339(request.expires_at),
            )
            return Performed(request.model_copy(deep=True))

    def approve(self, approval_id: str, operator: str) -> Performed:
        """`operator` agrees to a pending request; the last approval needed runs its action.
        Refused (an `APIError`, and an event): unknown id (404), the requester or an operator
        who already approved (403), a request no longer pending (400)."""
        with self._lock:
            self._expire_due()
            request = self._pending(approval_id, operator, "approve")
            if operator == request.requester:
                raise self._refuse_request(
                    request,
                    operator,
                    "self_approval",
                    PermissionDeniedError(
                        f"{operator} asked for approval request {approval_id}; "
                        "another operator must approve it"
                    ),
                )
            if any(a.operator == operator for a in request.approvals):
                raise self._refuse_request(
                    request,
                    operator,
                    "already_approved",
                    PermissionDeniedError(
                        f"{operator} already approved approval request {approval_id}; "
                        "each operator approves once"
                    ),
                )
            request.approvals.append(Approver(operator=operator, at=self._clock()))
            self._emit(
                request.action,
                request.target,
                "approved",
                operator,
                request.id,
                approvals=len(request.approvals),
                approvals_required=request.approvals_required,
            )
            if len(request.approvals) < request.approvals_required:
                self._save()
                return Performed(request.model_copy(deep=True))
            return self._execute(request, operator)

    def reject(self, approval_id: str, operator: str, reason: str | None = None) -> Performed:
        """`operator` (any, the requester too: a withdrawal) turns a pending request down."""
        with self._lock:
            self._expire_due()
            request = self._pending(approval_id, operator, "reject")
            request.state = "rejected"
            request.decided_at = self._clock()
            request.decided_by = operator
            request.reason = reason or (
                "withdrawn" if operator == request.requester else "rejected"
            )
            self._save()
            self._emit(
                request.action,
                request.target,
                "rejected",
                operator,
                request.id,
                reason=request.reason,
            )
            return Performed(request.model_copy(deep=True))

    def get(self, approval_id: str) -> Approval:
        with self._lock:
            self._expire_due()
            request = self._requests.get(approval_id)
            if request is None:
                raise NotFoundError(f"no approval request with id {approval_id!r}")
            return request.model_copy(deep=True)

    def list(self, state: State | None = None) -> list[Approval]:
        """Requests, newest first; only those in `state` if given."""
        with self._lock:
            self._expire_due()
            found = [r for r in self._requests.values() if state is None or r.state == state]
            found.sort(key=lambda r: r.created_at, reverse=True)
            return [r.model_copy(deep=True) for r in found]

    def refused(
        self, action: str, target: str, actor: str | None, reason: str, message: str
    ) -> None:
        """Report a refusal made outside the book (an admin request without a valid key)."""
        self._emit(action, target, "refused", actor, None, reason=reason, message=message)

    def _pending(self, approval_id: str, operator: str, verb: str) -> Approval:
        request = self._requests.get(approval_id)
        if request is None:
            raise self._refuse(
                "approval." + verb,
                approval_id,
                operator,
                approval_id,
                "unknown_id",
                NotFoundError(f"no approval request with id {approval_id!r}"),
            )
        if request.state != "pending":
            when = "" if request.decided_at is None else f" at {rfc3339(request.decided_at)}"
            raise self._refuse_request(
                request,
                operator,
                "expired" if request.state == "expired" else "not_pending",
                InvalidRequestError(
                    f"approval request {approval_id} is {request.state}{when}; "
                    f"it cannot be {verb}d any more"
                ),
            )
        return request

    def _execute(self, request: Approval, operator: str) -> Performed:
        request.decided_at = self._clock()
        request.decided_by = operator
        action = self._actions.get(request.action)
        try:
            if action is None:
                raise InvalidRequestError(
                    f"action {request.action!r} is not available on this server any more"
                )
            outcome = self._run(
                action, request.action, request.target, request.parameters, operator, request
            )
        except APIError as exc:  # _run turned any failure into one
            request.state = "failed"
            request.reason = exc.message
            self._save()
            if action is None:  # _run reported the others
                self._emit(
                    request.action,
                    request.target,
                    "failed",
                    operator,
                    request.id,
                    reason=exc.message,
                )
            raise
        request.state = "executed"
        request.outcome = outcome.record
        self._save()
        return Performed(request.model_copy(deep=True), outcome.record, outcome.shown_once)

    def _run(
        self,
        action: Action,
        name: str,
        target: str,
        parameters: dict[str, Any],
        actor: str,
        request: Approval | None,
    ) -> Outcome:
        approval_id = None if request is None else request.id
        extra: dict[str, Any] = {} if request is not None else {"parameters": parameters}
        if request is not None:
            extra["requester"] = request.requester
            extra["approvers"] = [a.operator for a in request.approvals]
        try:
            outcome = action.run(target, parameters)
        except Exception as exc:
            error = as_api_error(exc)
            self._emit(name, target, "failed", actor, approval_id, reason=error.message, **extra)
            if error is exc:
                raise
            raise error from exc
        self._emit(name, target, "executed", actor, approval_id, result=outcome.record, **extra)
        return outcome

    def _expire_due(self) -> None:
        now = self._clock()
        changed = False
        for request in self._requests.values():
            if request.state == "pending" and now >= request.expires_at:
                request.state = "expired"
                request.decided_at = request.expires_at
                request.reason = f"not approved within {self.ttl_s:g} s"
                changed = True
                self._emit(
                    request.action,
                    request.target,
                    "expired",
                    None,
                    request.id,
                    approvals=len(request.approvals),
                )
        gone = [
            key
            for key, r in self._requests.items()
            if r.state != "pending"
            and r.decided_at is not None
            and now - r.decided_at > self.keep_s
        ]
        for key in gone:
            del self._requests[key]
        if changed or gone:
            self._save()

    def _refuse_request(
        self, request: Approval, operator: str, reason: str, error: APIError
    ) -> APIError:
        return self._refuse(request.action, request.target, operator, request.id, reason, error)

    def _refuse(
        self,
        action: str,
        target: str,
        actor: str | None,
        approval_id: str | None,
        reason: str,
        error: APIError,
    ) -> APIError:
        self._emit(
            action, target, "refused", actor, approval_id, reason=reason, message=error.message
        )
        return error

    def _emit(
        self,
        action: str,
        target: str,
        outcome: EventOutcome,
        actor: str | None,
        approval_id: str | None,
        **fields: Any,
    ) -> None:
        if self._on_event is None:
            return
        event = {
            "action": action,
            "target": target,
            "outcome": outcome,
            "actor": None if actor is None else f"op:{actor}",
            "approval_id": approval_id,
            "reason": fields.pop("reason", None),
            **fields,
        }
        self._on_event(event)

    def _load(self) -> builtins.list[Approval]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise ValueError(f"{self.path}: unreadable approval requests: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("requests"), list):
            raise ValueError(f"{self.path}: not tercet's approval requests (no 'requests' list)")
        return [Approval.model_validate(item) for item in data["requests"]]

    def _save(self) -> None:
        requests = sorted(self._requests.values(), key=lambda r: r.created_at)
        data = {"format": FORMAT, "requests": [r.model_dump() for r in requests]}
        write_atomically(self.path, json.dumps(data, indent=1).encode())


def as_api_error(exc: Exception) -> APIError:
    """An action's failure as the error a caller sees: its own `APIError`, a 400 for bad
    input (`ValueError`, a pydantic `ValidationError`), a 404 for a missing target, else a 500
    that names the failure (logged with its traceback)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ValidationError):
        return InvalidRequestError(describe_validation_error(exc))
    if isinstance(exc, LookupError):
        return NotFoundError(str(exc.args[0]) if exc.args else str(exc))
    if isinstance(exc, ValueError):
        return InvalidRequestError(str(exc))
    log.error("an operator action failed", exc_info=exc)
    return InternalError(f"the action failed: {type(exc).__name__}: {exc}")

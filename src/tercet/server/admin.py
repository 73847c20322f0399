"""The admin API (`/admin/v1`): what operators do, under their own admin keys.

Operators are named in the configuration (`AdminSettings.operators`: name -> admin key). An
admin key is not an API key, nor the reverse: an API key here gets 403, an admin key on /v1
gets 401. Every action goes through the `ApprovalBook`: one named in `sensitive_actions` answers
202 with an approval request and runs when other operators approve it; any other runs at once.

    GET    /admin/v1/keys                          API keys (config ones by id only)
    POST   /admin/v1/keys                          key.create {name, policy?} (the key, once)
    DELETE /admin/v1/keys/{key_id}                 key.revoke
    PATCH  /admin/v1/keys/{key_id}                 key.policy {classifier_mode}
    POST   /admin/v1/containers/{id}/egress        egress.grant {allow, byte_budget, window_s,
                                                   expires_at}
    DELETE /admin/v1/containers/{id}/egress        egress.revoke
    POST   /admin/v1/actions/{action}              any action {target, parameters}
    GET    /admin/v1/approvals[?state=pending]     approval requests, newest first
    GET    /admin/v1/approvals/{id}
    POST   /admin/v1/approvals/{id}/approve
    POST   /admin/v1/approvals/{id}/reject         {reason?}
"""

from __future__ import annotations

import hmac
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast, get_args

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import from_json

from tercet.sandbox.containers import ContainerManager
from tercet.sandbox.egress import EgressGrant
from tercet.server.approvals import (
    Action,
    ApprovalBook,
    EventSink,
    Outcome,
    Performed,
    State,
)
from tercet.server.errors import describe_validation_error
from tercet.server.json_body import JSONBody
from tercet.server.keys import KeyPolicy, KeyStore, check_name, key_hash
from tercet.wire.errors import (
    APIError,
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RequestTooLargeError,
)

ADMIN_KEYS_ENV = "TERCET_ADMIN_KEYS"
MAX_ADMIN_BODY_BYTES = 64 * 1024
EGRESS_GRANT = "egress.grant"
EGRESS_REVOKE = "egress.revoke"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HASHED = re.compile(r"sha256:[0-9a-fA-F]{64}")
_M = TypeVar("_M", bound=BaseModel)


class AdminConfigError(ValueError):
    """Admin settings that cannot be used; the message names the file, key and problem."""


def default_operators() -> dict[str, str]:
    """`$TERCET_ADMIN_KEYS`: `name=key` pairs, comma-separated."""
    operators = {}
    for pair in os.environ.get(ADMIN_KEYS_ENV, "").split(","):
        name, sep, key = pair.strip().partition("=")  # names hold no '=', keys may
        if not sep:
            name, key = "", name  # a key without a name: the check says what is missing
        if key.strip():
            operators[name.strip()] = key.strip()
    return operators


class AdminSettings(BaseModel):
    """Operators and what needs their approval. Off (every admin request 403) without
    operators."""

    model_config = ConfigDict(extra="forbid")

    operators: dict[str, str] = Field(
        default_factory=default_operators,
        description="operator name -> admin key (or 'sha256:<hex>' of it, to keep the key out "
        "of the file); a name is the identity approvals count; default $TERCET_ADMIN_KEYS "
        "(name=key,name=key)",
    )
    sensitive_actions: list[str] = Field(
        default_factory=lambda: [EGRESS_GRANT, "key.policy", "request.release"],
        description="actions that wait for approvals: any of key.create, key.revoke, "
        "key.policy, egress.grant and the server's other actions",
    )
    # Two-party authorisation: the requester and one other operator, by default. The request
    # is the requester's own consent; the approvals are others'.
    approvals_required: int = Field(
        default=1, ge=1, description="approvals, from operators other than the requester"
    )
    approval_ttl_s: float = Field(
        default=3600.0, gt=0, description="seconds a request waits before it expires"
    )

    @model_validator(mode="after")
    def _check(self) -> AdminSettings:
        for name, key in self.operators.items():
            if not _NAME.fullmatch(name):
                raise ValueError(
                    f"operators: {name!r} is not an operator name (letters, digits, . _ -; "
                    "from $TERCET_ADMIN_KEYS write name=key)"
                )
            if len(key) < 16 and not _HASHED.fullmatch(key):
                raise ValueError(f"operators.{name}: an admin key has 16 characters or more")
        digests = [self.digest_of(key) for key in self.operators.values()]
        if len(set(digests)) != len(digests):
            raise ValueError("operators: two operators share an admin key; each needs its own")
        needed = self.approvals_required + 1
        if self.operators and self.sensitive_actions and len(self.operators) < needed:
            raise ValueError(
                f"sensitive_actions need {needed} operators (a requester and "
                f"approvals_required={self.approvals_required} others), {len(self.operators)} "
                "configured: add operators, lower approvals_required, or set "
                "sensitive_actions = []"
            )
        return self

    @staticmethod
    def digest_of(key: str) -> str:
        """The SHA-256 (hex) of an admin key as configured: given as a hash, or hashed here."""
        return key[len("sha256:") :].lower() if _HASHED.fullmatch(key) else key_hash(key)

    def operator_for(self, presented: str) -> str | None:
        """The operator whose admin key this is (compared in constant time), else None."""
        digest = key_hash(presented).encode()
        found = None
        for name, key in self.operators.items():
            if hmac.compare_digest(digest, self.digest_of(key).encode()):
                found = name
        return found

    @classmethod
    def from_toml(cls, path: Path) -> AdminSettings:
        """Settings from a TOML file (`[operators]` name = "sha256:<hex>" or key, and the other
        fields at the top); AdminConfigError names the file, the key and the problem."""
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise AdminConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise AdminConfigError(f"{path}: not valid TOML: {exc}") from None
        data.setdefault("operators", {})  # a file names its operators; the environment does not
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            error = exc.errors()[0]
            key = ".".join(str(p) for p in error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            raise AdminConfigError(f"{path}: {key + ': ' if key else ''}{message}") from None

    def book(self, data_dir: Path, on_event: EventSink | None = None) -> ApprovalBook:
        """The approval book these settings call for, kept in `data_dir`."""
        return ApprovalBook.in_data_dir(
            data_dir,
            sensitive=self.sensitive_actions,
            approvals_required=self.approvals_required,
            ttl_s=self.approval_ttl_s,
            on_event=on_event,
        )


def key_actions(keys: KeyStore) -> dict[str, Action]:
    """The API key actions, over `keys`."""

    def check_create(target: str, parameters: dict[str, Any]) -> dict[str, Any]:
        body = _CreateKey.model_validate(parameters)
        body = body.model_copy(update={"name": check_name(body.name)})
        return body.model_dump(exclude_none=True)

    def create(target: str, parameters: dict[str, Any]) -> Outcome:
        body = _CreateKey.model_validate(parameters)
        record, key = keys.create(body.name, body.policy)
        return Outcome(record.public(), shown_once={"key": key})

    def check_revoke(target: str, parameters: dict[str, Any]) -> dict[str, Any]:
        keys.check_live(target)
        return {}

    def check_policy(target: str, parameters: dict[str, Any]) -> dict[str, Any]:
        keys.check_policy(target, parameters)
        return parameters

    return {
        "key.create": Action(run=create, check=check_create),
        "key.revoke": Action(
            run=lambda target, _: Outcome(keys.revoke(target).public()), check=check_revoke
        ),
        "key.policy": Action(
            run=lambda target, changes: Outcome(keys.set_policy(target, changes).public()),
            check=check_policy,
        ),
    }


def egress_actions(containers: ContainerManager) -> dict[str, Action]:
    """egress.grant (the body: `EgressGrant.from_dict`'s fields) and egress.revoke, over
    `containers`. A grant lives as long as its container, or the server process."""

    def check_grant(container_id: str, grant: dict[str, Any]) -> dict[str, Any]:
        _live_container(containers, container_id)
        return EgressGrant.from_dict(grant).to_dict()  # EgressGrantError is a ValueError

    def grant(container_id: str, grant: dict[str, Any]) -> Outcome:
        _live_container(containers, container_id)  # it may have expired while approvals came
        parsed = EgressGrant.from_dict(grant)
        containers.grant_egress(container_id, parsed)
        return Outcome({"container_id": container_id, **parsed.to_dict()})

    def check_revoke(container_id: str, _: dict[str, Any]) -> dict[str, Any]:
        _live_container(containers, container_id)
        return {}

    def revoke(container_id: str, _: dict[str, Any]) -> Outcome:
        return Outcome(
            {"container_id": container_id, "had_grant": containers.revoke_egress(container_id)}
        )

    return {
        EGRESS_GRANT: Action(run=grant, check=check_grant),
        EGRESS_REVOKE: Action(run=revoke, check=check_revoke),
    }


def _live_container(containers: ContainerManager, container_id: str) -> None:
    if not any(c.id == container_id for c in containers.live()):
        raise LookupError(f"no live container {container_id}")


class _CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    policy: KeyPolicy | None = None


class _Act(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(min_length=1, max_length=500)
    parameters: dict[str, Any] = Field(default_factory=dict)


class _Reject(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=2000)


def admin_router(
    settings: AdminSettings,
    keys: KeyStore,
    approvals: ApprovalBook,
    actions: Mapping[str, Action] | None = None,
) -> APIRouter:
    """The admin API. Registers the key actions and `actions` (egress.grant, ...) with
    `approvals`. Raises ValueError when an admin key is also an API key, or when a
    `sensitive_actions` set in the configuration names an action that does not exist."""
    for name, action in {**key_actions(keys), **(actions or {})}.items():
        approvals.register(name, action)
    unknown = sorted(set(settings.sensitive_actions) - approvals.actions)
    # A name set by hand that names nothing is a typo that leaves an action unguarded; the
    # default names egress.grant, which a server without egress grants does not have.
    if unknown and "sensitive_actions" in settings.model_fields_set:
        raise ValueError(
            f"sensitive_actions: {unknown[0]!r} is not an action of this server; the actions "
            f"are: {', '.join(sorted(approvals.actions))}"
        )
    static = keys.static_hashes()
    for name, key in settings.operators.items():
        if settings.digest_of(key) in static:
            raise ValueError(f"operators.{name}: an admin key must not also be an API key")

    operator = _operator_dependency(settings, keys, approvals)
    router = APIRouter(prefix="/admin/v1", dependencies=[Depends(operator)])

    async def perform(
        action: str, target: str, parameters: dict[str, Any], who: str, created: int = 200
    ) -> Response:
        done = await anyio.to_thread.run_sync(approvals.submit, action, target, parameters, who)
        return _answer(done, created if done.approval is None else 202)

    @router.get("/keys")
    async def list_keys() -> Response:
        configured = [
            {"type": "api_key", "id": key_id, "source": "config"} for key_id in keys.static_ids()
        ]
        made = [record.public() for record in keys.list()]
        return JSONBody({"data": configured + made})

    @router.post("/keys")
    async def create_key(request: Request) -> Response:
        body = await _read_json(request)
        return await perform("key.create", "keys", body, request.state.operator, created=201)

    @router.delete("/keys/{key_id}")
    async def revoke_key(key_id: str, request: Request) -> Response:
        return await perform("key.revoke", key_id, {}, request.state.operator)

    @router.patch("/keys/{key_id}")
    async def set_key_policy(key_id: str, request: Request) -> Response:
        body = await _read_json(request)
        return await perform("key.policy", key_id, body, request.state.operator)

    @router.post("/containers/{container_id}/egress")
    async def grant_egress(container_id: str, request: Request) -> Response:
        if EGRESS_GRANT not in approvals.actions:
            raise NotFoundError("egress grants are not available on this server")
        body = await _read_json(request)
        return await perform(EGRESS_GRANT, container_id, body, request.state.operator)

    @router.delete("/containers/{container_id}/egress")
    async def revoke_egress(container_id: str, request: Request) -> Response:
        if EGRESS_REVOKE not in approvals.actions:
            raise NotFoundError("egress grants are not available on this server")
        return await perform(EGRESS_REVOKE, container_id, {}, request.state.operator)

    @router.post("/actions/{action}")
    async def act(action: str, request: Request) -> Response:
        body = _validated(_Act, await _read_json(request))
        return await perform(action, body.target, body.parameters, request.state.operator)

    @router.get("/approvals")
    async def list_approvals(state: str | None = None) -> Response:
        states = get_args(State)
        if state is not None and state not in states:
            raise InvalidRequestError(f"state: one of {', '.join(states)}")
        found = await anyio.to_thread.run_sync(approvals.list, cast(State | None, state))
        return JSONBody({"data": [a.public() for a in found]})

    @router.get("/approvals/{approval_id}")
    async def get_approval(approval_id: str) -> Response:
        found = await anyio.to_thread.run_sync(approvals.get, approval_id)
        return JSONBody(found.public())

    @router.post("/approvals/{approval_id}/approve")
    async def approve(approval_id: str, request: Request) -> Response:
        done = await anyio.to_thread.run_sync(
            approvals.approve, approval_id, request.state.operator
        )
        return _answer(done)

    @router.post("/approvals/{approval_id}/reject")
    async def reject(approval_id: str, request: Request) -> Response:
        body = _validated(_Reject, await _read_json(request, empty_ok=True))
        done = await anyio.to_thread.run_sync(
            approvals.reject, approval_id, request.state.operator, body.reason
        )
        return _answer(done)

    return router


def _answer(done: Performed, status: int = 200) -> Response:
    """An action that ran at once: its outcome and what is shown once (a new key); else the
    approval request, with what its running showed once, where the last approval ran it."""
    if done.approval is None:
        return JSONBody({**(done.outcome or {}), **done.shown_once}, status_code=status)
    body = done.approval.public()
    if done.shown_once:
        body["shown_once"] = done.shown_once
    return JSONBody(body, status_code=status)


def _operator_dependency(
    settings: AdminSettings, keys: KeyStore, approvals: ApprovalBook
) -> Callable[[Request], None]:
    def operator(request: Request) -> None:
        presented = request.headers.get("x-api-key")
        authorization = request.headers.get("authorization", "")
        if presented is None and authorization.lower().startswith("bearer "):
            presented = authorization[7:].strip()
        where = f"{request.method} {request.url.path}"
        error: APIError
        if not settings.operators:
            error = PermissionDeniedError(
                "the admin API is off on this server: no operators (admin keys) are configured"
            )
            reason = "admin_off"
        elif not presented:
            error = AuthenticationError(
                "an admin key is required (x-api-key or Authorization: Bearer)"
            )
            reason = "no_admin_key"
        else:
            name = settings.operator_for(presented)
            if name is not None:
                request.state.operator = name
                return
            if keys.is_api_key(presented):
                error = PermissionDeniedError(
                    "this is an API key; the admin API takes an operator's admin key"
                )
                reason = "api_key"
            else:
                error = AuthenticationError("invalid admin key")
                reason = "invalid_admin_key"
        approvals.refused("admin.authenticate", where, None, reason, error.message)
        raise error

    return operator


async def _read_json(request: Request, empty_ok: bool = False) -> dict[str, Any]:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_ADMIN_BODY_BYTES:
            raise RequestTooLargeError(
                f"an admin request's body is at most {MAX_ADMIN_BODY_BYTES} bytes"
            )
    if empty_ok and not body.strip():
        return {}
    try:
        data = from_json(body, allow_inf_nan=False)
    except ValueError as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequestError("The request body must be a JSON object")
    return data


def _validated(model: type[_M], data: dict[str, Any]) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequestError(describe_validation_error(exc)) from exc

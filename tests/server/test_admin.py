"""The admin API on a real loopback server: admin keys only, two-party approval of sensitive
actions, API keys made and revoked, and the error envelope for every bad input."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel, ConfigDict

from tercet.sandbox.containers import ContainerManager
from tercet.sandbox.runner import unavailable_reason
from tercet.sandbox.runtime import default_runtime
from tercet.server.admin import AdminConfigError, AdminSettings, admin_router, egress_actions
from tercet.server.app import RequestIdMiddleware
from tercet.server.approvals import Action, Outcome
from tercet.server.errors import install_error_handlers
from tercet.server.keys import KeyStore
from tercet.server.runner import BackgroundServer
from tercet.wire.errors import AuthenticationError

OPERATORS = {
    "alice": "admin-alice-0123456789",
    "bob": "admin-bob-0123456789abc",
    "carol": "admin-carol-0123456789",
}
STATIC_API_KEY = "static-api-key-0123"


class Grant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allow: list[str]
    bytes: int


@dataclass
class Admin:
    """A server with the admin API, the API behind KeyStore, and what happened on it."""

    base_url: str
    data_dir: Path
    events: list[dict[str, Any]] = field(default_factory=list)
    grants: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def call(
        self, method: str, path: str, operator: str | None = "alice", **kwargs: Any
    ) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if operator is not None:
            headers["x-api-key"] = OPERATORS[operator]
        return httpx.request(
            method, f"{self.base_url}/admin/v1{path}", headers=headers, timeout=30, **kwargs
        )


def build_app(settings: AdminSettings, data_dir: Path, admin: Admin) -> FastAPI:
    """What the lead's create_app does with these parts, reduced to them."""
    keys = KeyStore.in_data_dir(data_dir, [STATIC_API_KEY])
    book = settings.book(data_dir, on_event=admin.events.append)

    def check(container_id: str, grant: dict[str, Any]) -> dict[str, Any]:
        if container_id != "cntr_1":
            raise LookupError(f"no container {container_id}")
        return Grant.model_validate(grant).model_dump()

    def grant(container_id: str, grant: dict[str, Any]) -> Outcome:
        admin.grants.append((container_id, grant))
        return Outcome({"container_id": container_id, **grant})

    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware, on_end=lambda record: None)

    def authenticate(request: Request) -> None:
        presented = request.headers.get("x-api-key")
        owner = keys.authenticates(presented)
        if owner is None and not keys.open:
            raise AuthenticationError("invalid x-api-key")
        request.state.owner = owner

    api = APIRouter(prefix="/v1", dependencies=[Depends(authenticate)])

    @api.get("/whoami")
    async def whoami(request: Request) -> dict[str, Any]:
        return {"owner": request.state.owner}

    app.include_router(api)
    egress = {
        "egress.grant": Action(run=grant, check=check),
        "egress.revoke": Action(run=lambda container_id, _: Outcome({"revoked": container_id})),
    }
    app.include_router(admin_router(settings, keys, book, egress))
    return app


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[Admin]:
    """Three operators, two approvals beside the requester's (stricter than the default)."""
    settings = AdminSettings(operators=OPERATORS, approvals_required=2)
    state = Admin("", tmp_path)
    with BackgroundServer(build_app(settings, tmp_path, state)) as running:
        state.base_url = running.base_url
        yield state


def envelope(response: httpx.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == error_type
    assert body["request_id"] == response.headers["request-id"]
    message: str = body["error"]["message"]
    assert message and "Traceback" not in message
    return message


def test_a_grant_waits_for_two_other_operators_and_runs_on_the_second(admin: Admin) -> None:
    grant = {"allow": ["127.0.0.1:9000"], "bytes": 1000}
    asked = admin.call("POST", "/containers/cntr_1/egress", json=grant)
    assert asked.status_code == 202, asked.text
    request = asked.json()
    assert request["state"] == "pending" and request["requester"] == "alice"
    assert request["action"] == "egress.grant" and request["target"] == "cntr_1"
    assert not admin.grants
    listed = admin.call("GET", "/approvals?state=pending", operator="bob").json()["data"]
    assert [r["id"] for r in listed] == [request["id"]]
    message = envelope(
        admin.call("POST", f"/approvals/{request['id']}/approve"), 403, "permission_error"
    )
    assert "another operator must approve" in message
    first = admin.call("POST", f"/approvals/{request['id']}/approve", operator="bob")
    assert first.status_code == 200 and first.json()["state"] == "pending"
    again = admin.call("POST", f"/approvals/{request['id']}/approve", operator="bob")
    assert "approves once" in envelope(again, 403, "permission_error")
    assert not admin.grants
    second = admin.call("POST", f"/approvals/{request['id']}/approve", operator="carol")
    assert second.status_code == 200 and second.json()["state"] == "executed"
    assert admin.grants == [("cntr_1", grant)]
    replay = admin.call("POST", f"/approvals/{request['id']}/approve", operator="carol")
    assert "is executed" in envelope(replay, 400, "invalid_request_error")
    assert admin.grants == [("cntr_1", grant)]
    outcomes = [(e["outcome"], e["actor"], e["reason"]) for e in admin.events]
    assert outcomes == [
        ("requested", "op:alice", None),
        ("refused", "op:alice", "self_approval"),
        ("approved", "op:bob", None),
        ("refused", "op:bob", "already_approved"),
        ("approved", "op:carol", None),
        ("executed", "op:carol", None),
        ("refused", "op:carol", "not_pending"),
    ]


def test_by_default_a_sensitive_action_takes_the_requester_and_one_other_operator(
    tmp_path: Path,
) -> None:
    """Two-party authorisation: the request is one operator's, the approval another's."""
    state = Admin("", tmp_path)
    with BackgroundServer(build_app(AdminSettings(operators=OPERATORS), tmp_path, state)) as up:
        state.base_url = up.base_url
        grant = {"allow": ["127.0.0.1:9000"], "bytes": 1000}
        request = state.call("POST", "/containers/cntr_1/egress", json=grant).json()
        assert request["state"] == "pending" and not state.grants
        own = state.call("POST", f"/approvals/{request['id']}/approve")
        assert "another operator must approve" in envelope(own, 403, "permission_error")
        assert not state.grants
        approved = state.call("POST", f"/approvals/{request['id']}/approve", operator="bob")
        assert approved.status_code == 200 and approved.json()["state"] == "executed"
        assert state.grants == [("cntr_1", grant)]
        replay = state.call("POST", f"/approvals/{request['id']}/approve", operator="carol")
        assert "is executed" in envelope(replay, 400, "invalid_request_error")
    assert [(e["outcome"], e["actor"]) for e in state.events] == [
        ("requested", "op:alice"),
        ("refused", "op:alice"),
        ("approved", "op:bob"),
        ("executed", "op:bob"),
        ("refused", "op:carol"),
    ]


def test_a_made_key_authenticates_until_revoked_and_is_never_stored_or_logged(
    admin: Admin,
) -> None:
    made = admin.call("POST", "/keys", json={"name": "ci", "policy": {"classifier_mode": "off"}})
    assert made.status_code == 201, made.text
    key, key_id = made.json()["key"], made.json()["id"]
    assert made.json()["policy"] == {"classifier_mode": "off"}
    whoami = httpx.get(f"{admin.base_url}/v1/whoami", headers={"x-api-key": key})
    assert whoami.status_code == 200 and whoami.json()["owner"].startswith(key_id)
    listed = admin.call("GET", "/keys").json()["data"]
    assert [k["source"] for k in listed] == ["config", "admin"]
    assert all("key" not in k and "sha256" not in k for k in listed)
    revoked = admin.call("DELETE", f"/keys/{key_id}", operator="bob")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    refused = httpx.get(f"{admin.base_url}/v1/whoami", headers={"x-api-key": key})
    envelope(refused, 401, "authentication_error")
    for path in admin.data_dir.rglob("*"):
        if path.is_file():
            assert key not in path.read_text(), path
    assert key not in json.dumps(admin.events)
    assert [e["action"] for e in admin.events] == ["key.create", "key.revoke"]


def test_a_policy_change_is_sensitive_by_default(admin: Admin) -> None:
    key_id = admin.call("POST", "/keys", json={"name": "k"}).json()["id"]
    asked = admin.call("PATCH", f"/keys/{key_id}", json={"classifier_mode": "enforce"})
    assert asked.status_code == 202
    approval_id = asked.json()["id"]
    admin.call("POST", f"/approvals/{approval_id}/approve", operator="bob")
    admin.call("POST", f"/approvals/{approval_id}/approve", operator="carol")
    [key] = [k for k in admin.call("GET", "/keys").json()["data"] if k["id"] == key_id]
    assert key["policy"] == {"classifier_mode": "enforce"}


def test_an_api_key_cannot_use_the_admin_api_and_an_admin_key_is_no_api_key(
    admin: Admin,
) -> None:
    made = admin.call("POST", "/keys", json={"name": "user"}).json()["key"]
    for api_key in (made, STATIC_API_KEY):
        refused = admin.call("GET", "/keys", operator=None, headers={"x-api-key": api_key})
        assert "API key" in envelope(refused, 403, "permission_error")
    bearer = {"authorization": f"Bearer {OPERATORS['bob']}"}
    assert admin.call("GET", "/approvals", operator=None, headers=bearer).status_code == 200
    envelope(admin.call("GET", "/keys", operator=None), 401, "authentication_error")
    wrong = {"x-api-key": "admin-nobody-0123456789"}
    envelope(admin.call("GET", "/keys", operator=None, headers=wrong), 401, "authentication_error")
    for admin_key in OPERATORS.values():
        whoami = httpx.get(f"{admin.base_url}/v1/whoami", headers={"x-api-key": admin_key})
        envelope(whoami, 401, "authentication_error")
    reasons = [e["reason"] for e in admin.events if e["action"] == "admin.authenticate"]
    assert reasons == ["api_key", "api_key", "no_admin_key", "invalid_admin_key"]
    logged = json.dumps(admin.events)
    assert made not in logged and STATIC_API_KEY not in logged
    assert not any(key in logged for key in OPERATORS.values())


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error_type", "expected"),
    [
        ("POST", "/keys", "{not json", 400, "invalid_request_error", "not valid JSON"),
        ("POST", "/keys", "[1]", 400, "invalid_request_error", "JSON object"),
        ("POST", "/keys", "{}", 400, "invalid_request_error", "name: Field required"),
        ("POST", "/keys", '{"name": "x", "colour": 1}', 400, "invalid_request_error", "colour"),
        ("POST", "/keys", '{"name": " "}', 400, "invalid_request_error", "name"),
        (
            "POST",
            "/keys",
            '{"name": "x", "policy": {"classifier_mode": "loud"}}',
            400,
            "invalid_request_error",
            "classifier_mode",
        ),
        ("DELETE", "/keys/0123456789ab", None, 404, "not_found_error", "0123456789ab"),
        ("PATCH", "/keys/0123456789ab", "{}", 404, "not_found_error", "0123456789ab"),
        (
            "POST",
            "/containers/cntr_1/egress",
            '{"allow": "x"}',
            400,
            "invalid_request_error",
            "allow",
        ),
        (
            "POST",
            "/containers/cntr_9/egress",
            '{"allow": [], "bytes": 1}',
            404,
            "not_found_error",
            "cntr_9",
        ),
        ("POST", "/actions/fly", '{"target": "x"}', 400, "invalid_request_error", "unknown action"),
        ("POST", "/actions/key.revoke", '{"nothing": 1}', 400, "invalid_request_error", "target"),
        ("GET", "/approvals?state=odd", None, 400, "invalid_request_error", "state"),
        ("GET", "/approvals/apr_none", None, 404, "not_found_error", "apr_none"),
        ("POST", "/approvals/apr_none/approve", None, 404, "not_found_error", "apr_none"),
        ("POST", "/approvals/apr_none/reject", "{}", 404, "not_found_error", "apr_none"),
        ("POST", "/approvals/apr_none/reject", "[]", 400, "invalid_request_error", "object"),
        ("GET", "/nothing", None, 404, "not_found_error", "Not found"),
        ("PUT", "/keys", "{}", 405, "invalid_request_error", "Method not allowed"),
    ],
)
def test_bad_admin_input_gets_the_envelope(
    admin: Admin,
    method: str,
    path: str,
    body: str | None,
    status: int,
    error_type: str,
    expected: str,
) -> None:
    response = admin.call(method, path, content=body)
    assert expected in envelope(response, status, error_type)


def test_a_policy_for_a_revoked_key_is_refused_then_and_at_approval(admin: Admin) -> None:
    key_id = admin.call("POST", "/keys", json={"name": "k"}).json()["id"]
    approval_id = admin.call(
        "PATCH", f"/keys/{key_id}", json={"classifier_mode": "monitor"}
    ).json()["id"]
    admin.call("DELETE", f"/keys/{key_id}")
    assert (
        admin.call("POST", f"/approvals/{approval_id}/approve", operator="bob").status_code == 200
    )
    last = admin.call("POST", f"/approvals/{approval_id}/approve", operator="carol")
    assert "revoked" in envelope(last, 400, "invalid_request_error")
    assert admin.call("GET", f"/approvals/{approval_id}").json()["state"] == "failed"
    refused = admin.call("PATCH", f"/keys/{key_id}", json={"classifier_mode": "off"})
    assert "revoked" in envelope(refused, 400, "invalid_request_error")


def test_a_sensitive_key_creation_shows_the_key_to_the_last_approver_only(tmp_path: Path) -> None:
    settings = AdminSettings(
        operators=OPERATORS, sensitive_actions=["key.create"], approvals_required=2
    )
    state = Admin("", tmp_path)
    with BackgroundServer(build_app(settings, tmp_path, state)) as running:
        state.base_url = running.base_url
        asked = state.call("POST", "/keys", json={"name": "prod"})
        assert asked.status_code == 202 and "key" not in asked.json()
        approval_id = asked.json()["id"]
        state.call("POST", f"/approvals/{approval_id}/approve", operator="bob")
        done = state.call("POST", f"/approvals/{approval_id}/approve", operator="carol").json()
        key = done["shown_once"]["key"]
        assert done["outcome"]["name"] == "prod" and "key" not in done["outcome"]
        later = state.call("GET", f"/approvals/{approval_id}").json()
        assert "shown_once" not in later and key not in json.dumps(later)
        whoami = httpx.get(f"{running.base_url}/v1/whoami", headers={"x-api-key": key})
        assert whoami.status_code == 200


def test_without_operators_the_admin_api_is_off(tmp_path: Path) -> None:
    settings = AdminSettings(operators={}, sensitive_actions=[])
    state = Admin("", tmp_path)
    with BackgroundServer(build_app(settings, tmp_path, state)) as running:
        response = httpx.get(f"{running.base_url}/admin/v1/keys", headers={"x-api-key": "x"})
        assert "off" in envelope(response, 403, "permission_error")


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"operators": {"alice": "k" * 20}}, "need 2 operators"),
        (
            {"operators": {"alice": "k" * 20, "bob": "j" * 20}, "approvals_required": 2},
            "need 3 operators",
        ),
        ({"operators": {"al ice": "k" * 20}, "sensitive_actions": []}, "not an operator name"),
        ({"operators": {"alice": "short"}, "sensitive_actions": []}, "16 characters"),
        ({"operators": {"a": "k" * 20, "b": "k" * 20}, "sensitive_actions": []}, "share"),
        ({"approvals_required": 0}, "approvals_required"),
    ],
)
def test_bad_admin_settings_are_named(settings: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        AdminSettings.model_validate(settings)


def test_admin_keys_may_be_given_as_hashes_and_never_as_api_keys(tmp_path: Path) -> None:
    hashed = {
        name: "sha256:" + hashlib.sha256(key.encode()).hexdigest()
        for name, key in OPERATORS.items()
    }
    settings = AdminSettings(operators=hashed)
    assert settings.operator_for(OPERATORS["bob"]) == "bob"
    assert settings.operator_for(hashed["bob"]) is None
    keys = KeyStore.in_data_dir(tmp_path, [OPERATORS["bob"]])
    with pytest.raises(ValueError, match=r"operators\.bob: an admin key must not also be an API"):
        admin_router(settings, keys, settings.book(tmp_path))
    with pytest.raises(ValueError, match="'fly' is not an action"):
        both = AdminSettings(operators=OPERATORS, sensitive_actions=["fly"])
        admin_router(both, KeyStore.in_data_dir(tmp_path / "b"), both.book(tmp_path / "b"))


def test_operators_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERCET_ADMIN_KEYS", "alice=k0123456789abcdef=, bob=j0123456789abcdef")
    settings = AdminSettings(sensitive_actions=[])
    assert settings.operators == {"alice": "k0123456789abcdef=", "bob": "j0123456789abcdef"}
    monkeypatch.setenv("TERCET_ADMIN_KEYS", "k0123456789abcdef")
    with pytest.raises(ValueError, match="not an operator name"):
        AdminSettings(sensitive_actions=[])


@pytest.mark.skipif(
    unavailable_reason() is not None, reason=f"no sandbox here: {unavailable_reason()}"
)
def test_egress_actions_over_real_containers(tmp_path: Path) -> None:
    containers = ContainerManager(tmp_path / "sandbox", runtime=default_runtime())
    events: list[dict[str, Any]] = []
    settings = AdminSettings(operators=OPERATORS, approvals_required=2)
    keys = KeyStore.in_data_dir(tmp_path)
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware, on_end=lambda record: None)
    book = settings.book(tmp_path, on_event=events.append)
    app.include_router(admin_router(settings, keys, book, egress_actions(containers)))
    try:
        container = containers.create(owner="someone")
        grant = {
            "allow": ["127.0.0.1:9"],
            "byte_budget": 1000,
            "window_s": 60,
            "expires_at": time.time() + 600,
        }
        with BackgroundServer(app) as running:
            state = Admin(running.base_url, tmp_path)
            path = f"/containers/{container.id}/egress"
            bad = state.call("POST", path, json={**grant, "allow": ["nowhere"]})
            assert "allow[0]" in envelope(bad, 400, "invalid_request_error")
            missing = state.call("POST", "/containers/nope/egress", json=grant)
            assert "no live container nope" in envelope(missing, 404, "not_found_error")
            approval_id = state.call("POST", path, json=grant).json()["id"]
            state.call("POST", f"/approvals/{approval_id}/approve", operator="bob")
            assert containers.egress_grant(container.id) is None
            done = state.call("POST", f"/approvals/{approval_id}/approve", operator="carol")
            assert done.json()["outcome"]["allow"] == ["127.0.0.1:9"]
            assert containers.egress_grant(container.id) is not None
            revoked = state.call("DELETE", path, operator="bob")  # not sensitive: at once
            assert revoked.status_code == 200 and revoked.json()["had_grant"] is True
            assert containers.egress_grant(container.id) is None
        assert [e["outcome"] for e in events if e["action"] == "egress.revoke"] == ["executed"]
    finally:
        containers.close()


def test_settings_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERCET_ADMIN_KEYS", "eve=e0123456789abcdef")
    path = tmp_path / "admin.toml"
    digest = "sha256:" + hashlib.sha256(b"admin-alice-0123456789").hexdigest()
    path.write_text(
        f'approvals_required = 1\nsensitive_actions = ["egress.grant"]\n'
        f'[operators]\nalice = "{digest}"\nbob = "admin-bob-0123456789abc"\n'
    )
    settings = AdminSettings.from_toml(path)
    assert settings.operators.keys() == {"alice", "bob"}  # not the environment's
    assert settings.operator_for("admin-alice-0123456789") == "alice"
    path.write_text('approvals_required = 2\n[operators]\nalice = "admin-alice-0123456789"\n')
    with pytest.raises(AdminConfigError, match=r"admin\.toml: sensitive_actions need 3"):
        AdminSettings.from_toml(path)
    path.write_text("approvals_required = 'two'\n")
    with pytest.raises(AdminConfigError, match=r"admin\.toml: approvals_required: "):
        AdminSettings.from_toml(path)
    path.write_text("[operators\n")
    with pytest.raises(AdminConfigError, match="not valid TOML"):
        AdminSettings.from_toml(path)
    with pytest.raises(AdminConfigError, match="cannot read"):
        AdminSettings.from_toml(tmp_path / "missing.toml")

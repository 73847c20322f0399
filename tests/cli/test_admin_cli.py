"""`tercet admin` against a real admin API on loopback: keys, grants, approvals, and errors
that say what was wrong (exit 2 for bad input here, 1 for the server's refusal)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tercet.cli.main import main
from tercet.server.admin import AdminSettings
from tercet.server.runner import BackgroundServer
from tests.server.test_admin import OPERATORS, Admin, build_app


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[Admin]:
    state = Admin("", tmp_path)
    app = build_app(AdminSettings(operators=OPERATORS, approvals_required=2), tmp_path, state)
    with BackgroundServer(app) as running:
        state.base_url = running.base_url
        yield state


def tercet(
    admin: Admin, capsys: pytest.CaptureFixture[str], *args: str, operator: str = "alice"
) -> tuple[int, str, str]:
    code = main(["admin", "--url", admin.base_url, "--admin-key", OPERATORS[operator], *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_keys_create_list_policy_revoke(admin: Admin, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = tercet(admin, capsys, "keys", "create", "ci", "--classifier-mode", "off")
    assert code == 0, err
    made = json.loads(out)
    assert made["key"].startswith("sk-tercet-") and "shown only now" in err
    code, out, _ = tercet(admin, capsys, "keys", "list")
    assert code == 0
    rows = out.splitlines()
    assert rows[0].endswith("\tconfig")
    assert rows[1].startswith(f"{made['id']}\tlive\t") and "classifiers=off" in rows[1]
    code, out, err = tercet(
        admin, capsys, "keys", "policy", made["id"], "--classifier-mode", "default"
    )
    assert code == 0 and json.loads(out)["state"] == "pending" and "approvals approve" in err
    code, out, _ = tercet(admin, capsys, "keys", "revoke", made["id"], operator="bob")
    assert code == 0 and json.loads(out)["revoked_at"]
    whoami = httpx.get(f"{admin.base_url}/v1/whoami", headers={"x-api-key": made["key"]})
    assert whoami.status_code == 401


def test_a_grant_approved_by_two_others(admin: Admin, capsys: pytest.CaptureFixture[str]) -> None:
    grant = admin.data_dir / "grant.json"
    grant.write_text('{"allow": ["127.0.0.1:9000"], "bytes": 10}')
    code, out, err = tercet(admin, capsys, "egress", "grant", "cntr_1", "--grant", f"@{grant}")
    assert code == 0, err
    approval_id = json.loads(out)["id"]
    code, out, _ = tercet(admin, capsys, "approvals", "list", "--state", "pending")
    assert out.startswith(f"{approval_id}\tpending\tegress.grant\tcntr_1\tby=alice")
    code, _, err = tercet(admin, capsys, "approvals", "approve", approval_id)
    assert code == 1 and "403 permission_error" in err and "another operator" in err
    assert tercet(admin, capsys, "approvals", "approve", approval_id, operator="bob")[0] == 0
    code, out, _ = tercet(admin, capsys, "approvals", "approve", approval_id, operator="carol")
    assert code == 0 and json.loads(out)["state"] == "executed"
    assert admin.grants == [("cntr_1", {"allow": ["127.0.0.1:9000"], "bytes": 10})]
    code, _, err = tercet(admin, capsys, "approvals", "approve", approval_id, operator="carol")
    assert code == 1 and "is executed" in err
    code, out, _ = tercet(admin, capsys, "approvals", "show", approval_id)
    assert json.loads(out)["approvals"][1]["operator"] == "carol"
    code, out, _ = tercet(admin, capsys, "egress", "revoke", "cntr_1")
    assert code == 0 and json.loads(out) == {"revoked": "cntr_1"}


def test_reject_with_a_reason(admin: Admin, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = tercet(
        admin, capsys, "egress", "grant", "cntr_1", "--grant", '{"allow": [], "bytes": 1}'
    )
    approval_id = json.loads(out)["id"]
    code, out, _ = tercet(
        admin, capsys, "approvals", "reject", approval_id, "--reason", "no", operator="bob"
    )
    assert code == 0 and json.loads(out)["reason"] == "no"


def test_errors_say_what_was_wrong(
    admin: Admin, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = tercet(admin, capsys, "egress", "grant", "cntr_1", "--grant", "{nope")
    assert code == 2 and "--grant: not valid JSON" in err
    code, _, err = tercet(admin, capsys, "egress", "grant", "cntr_1", "--grant", "[1]")
    assert code == 2 and "JSON object" in err
    code, _, err = tercet(admin, capsys, "egress", "grant", "cntr_1", "--grant", "@/nonexistent")
    assert code == 2 and "cannot read /nonexistent" in err
    code, _, err = tercet(admin, capsys, "keys", "revoke", "../keys")
    assert code == 2 and "not an id" in err
    code, _, err = tercet(admin, capsys, "keys", "revoke", "0123456789ab")
    assert code == 1 and "404 not_found_error" in err
    code, _, err = tercet(admin, capsys, "egress", "grant", "cntr_1", "--grant", '{"allow": 1}')
    assert code == 1 and "400 invalid_request_error" in err and "allow" in err
    monkeypatch.delenv("TERCET_ADMIN_KEY", raising=False)
    code = main(["admin", "--url", admin.base_url, "keys", "list"])
    assert code == 2 and "an admin key is needed" in capsys.readouterr().err
    code = main(["admin", "--url", admin.base_url, "--admin-key", "wrong-key", "keys", "list"])
    assert code == 1 and "401 authentication_error: invalid admin key" in capsys.readouterr().err
    code = main(["admin", "--url", "http://127.0.0.1:9", "--admin-key", "k", "keys", "list"])
    assert code == 1 and "cannot reach the server" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["admin", "--admin-key", "k", "keys", "policy", "abc", "--classifier-mode", "loud"])
    assert exited.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_the_admin_key_from_the_environment(
    admin: Admin, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TERCET_ADMIN_KEY", OPERATORS["carol"])
    assert main(["admin", "--url", admin.base_url, "approvals", "list"]) == 0
    assert [e for e in admin.events if e["outcome"] == "refused"] == []

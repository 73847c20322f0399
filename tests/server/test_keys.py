"""KeyStore: keys made at run time authenticate until revoked; only their hashes are kept."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tercet.server.app import owner_of
from tercet.server.keys import KEY_PREFIX, KeyPolicy, KeyStore, key_id_of
from tercet.wire.errors import InvalidRequestError, NotFoundError


def store(tmp_path: Path, *static: str) -> KeyStore:
    return KeyStore(tmp_path / "admin" / "keys.json", static_keys=static)


def test_a_made_key_authenticates_as_its_owner_until_revoked(tmp_path: Path) -> None:
    keys = store(tmp_path)
    assert keys.open
    record, key = keys.create("ci")
    assert key.startswith(KEY_PREFIX) and len(key) == len(KEY_PREFIX) + 40
    assert not keys.open
    assert record.key_id == owner_of(key)[:12] == key_id_of(key)
    assert keys.authenticates(key) == owner_of(key)
    assert keys.authenticates(key + "x") is None
    assert keys.authenticates(None) is None
    keys.revoke(record.key_id)
    assert keys.authenticates(key) is None
    assert keys.lookup(key) is None
    assert keys.is_api_key(key)  # still known: the admin API names it an API key
    assert not keys.open  # revoking the last key never opens the server


def test_static_keys_authenticate_beside_made_ones(tmp_path: Path) -> None:
    keys = store(tmp_path, "static-key-one")
    assert not keys.open
    assert keys.authenticates("static-key-one") == owner_of("static-key-one")
    _, key = keys.create("made")
    assert keys.authenticates(key) == owner_of(key)
    with pytest.raises(InvalidRequestError, match="server's configuration"):
        keys.revoke(key_id_of("static-key-one"))


def test_the_store_keeps_hashes_never_keys_and_survives_a_restart(tmp_path: Path) -> None:
    keys = store(tmp_path)
    record, key = keys.create("team a", KeyPolicy(classifier_mode="monitor"))
    path = tmp_path / "admin" / "keys.json"
    text = path.read_text()
    assert key not in text and key[len(KEY_PREFIX) :] not in text
    assert hashlib.sha256(key.encode()).hexdigest() in text
    assert path.stat().st_mode & 0o777 == 0o600
    again = store(tmp_path)
    assert again.authenticates(key) == owner_of(key)
    assert again.get(record.key_id).policy.classifier_mode == "monitor"
    assert [r.name for r in again.list()] == ["team a"]
    assert not list(path.parent.glob(".*.tmp"))


def test_policies(tmp_path: Path) -> None:
    keys = store(tmp_path)
    record, key = keys.create("k")
    assert keys.classifier_mode_for(owner_of(key)) is None
    keys.set_policy(record.key_id, {"classifier_mode": "enforce"})
    assert keys.classifier_mode_for(owner_of(key)) == "enforce"
    assert keys.classifier_mode_for(owner_of("someone else")) is None
    keys.set_policy(record.key_id, {"classifier_mode": None})  # back to the server's setting
    assert keys.classifier_mode_for(owner_of(key)) is None
    with pytest.raises(InvalidRequestError, match="classifier_mode"):
        keys.set_policy(record.key_id, {"classifier_mode": "loud"})
    with pytest.raises(InvalidRequestError, match="unknown policy field 'colour'"):
        keys.set_policy(record.key_id, {"colour": "red"})
    with pytest.raises(InvalidRequestError, match="no policy field"):
        keys.set_policy(record.key_id, {})
    with pytest.raises(NotFoundError):
        keys.set_policy("0123456789ab", {"classifier_mode": "off"})
    keys.revoke(record.key_id)
    with pytest.raises(InvalidRequestError, match="revoked"):
        keys.set_policy(record.key_id, {"classifier_mode": "off"})
    with pytest.raises(InvalidRequestError, match="revoked"):
        keys.revoke(record.key_id)
    assert keys.classifier_mode_for(owner_of(key)) is None


@pytest.mark.parametrize("name", ["", "   ", "a\nb", "x" * 201])
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidRequestError, match="name"):
        store(tmp_path).create(name)


def test_a_damaged_store_is_named(tmp_path: Path) -> None:
    path = tmp_path / "admin" / "keys.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"other": 1}))
    with pytest.raises(ValueError, match=r"keys\.json: not a tercet key store"):
        store(tmp_path)

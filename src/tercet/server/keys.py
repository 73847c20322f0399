"""API keys made at run time (the admin API's), beside the static ones from the configuration.

Only each key's SHA-256 is kept (`<data_dir>/admin/keys.json`, written atomically), never the
key: a key is shown once, when it is made. A key's owner (its workspace, as `app.owner_of`) is
sha256(key)[:32] and its key id, the request log's `key=`, the first 12 of those hex digits.
Revoked keys stay on record, so the store never empties back into an open server.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tercet.wire.errors import InvalidRequestError, NotFoundError

ClassifierMode = Literal["off", "monitor", "enforce"]
KEY_PREFIX = "sk-tercet-"
KEY_ID_CHARS = 12
OWNER_CHARS = 32
FORMAT = 1


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str:
    """A key's id: what logs, policies and the admin API name it by."""
    return key_hash(key)[:KEY_ID_CHARS]


def owner_of_hash(digest: str) -> str:
    return digest[:OWNER_CHARS]


class KeyPolicy(BaseModel):
    """What a key may do, beside the server's settings; None keeps the server's setting."""

    model_config = ConfigDict(extra="forbid")

    classifier_mode: ClassifierMode | None = Field(
        default=None,
        description="the safety classifiers' mode for this key (off, monitor, enforce); "
        "None: the server's classifiers.toml decides",
    )


class KeyRecord(BaseModel):
    """One key, as kept on disk: its hash and what is known about it, never the key."""

    model_config = ConfigDict(extra="ignore")

    key_id: str
    sha256: str
    name: str
    created_at: float
    revoked_at: float | None = None
    policy: KeyPolicy = Field(default_factory=KeyPolicy)

    @property
    def owner(self) -> str:
        return owner_of_hash(self.sha256)

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def public(self) -> dict[str, Any]:
        """What the admin API shows: everything but the hash."""
        return {
            "type": "api_key",
            "id": self.key_id,
            "name": self.name,
            "source": "admin",
            "created_at": rfc3339(self.created_at),
            "revoked_at": None if self.revoked_at is None else rfc3339(self.revoked_at),
            "policy": self.policy.model_dump(),
        }


class KeyStore:
    """API keys: the static ones from the configuration and those the admin API makes.

    Thread-safe; every change is on disk before the call returns."""

    def __init__(
        self,
        path: Path,
        static_keys: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._static = [(key.encode(), key_id_of(key)) for key in static_keys]
        self._records: dict[str, KeyRecord] = {}  # by key id
        self._by_hash: dict[str, KeyRecord] = {}
        for record in self._load():
            self._records[record.key_id] = record
            self._by_hash[record.sha256] = record

    @classmethod
    def in_data_dir(cls, data_dir: Path, static_keys: Sequence[str] = ()) -> KeyStore:
        return cls(data_dir / "admin" / "keys.json", static_keys)

    @property
    def open(self) -> bool:
        """No key was ever configured or made: the server takes any key (or none), as today."""
        with self._lock:
            return not self._static and not self._records

    def authenticates(self, presented: str | None) -> str | None:
        """The owner of a key that may use the API (static or made here, not revoked), else
        None. Static keys are compared in constant time; made keys are found by their hash."""
        if presented is None:
            return None
        encoded = presented.encode()
        if any(hmac.compare_digest(encoded, key) for key, _ in self._static):
            return owner_of_hash(key_hash(presented))
        with self._lock:  # on every request: no copy of the record
            record = self._by_hash.get(key_hash(presented))
            return record.owner if record is not None and not record.revoked else None

    def lookup(self, presented: str) -> KeyRecord | None:
        """The live record of a key made here, else None (unknown or revoked)."""
        with self._lock:
            record = self._by_hash.get(key_hash(presented))
        if record is None or record.revoked:
            return None
        return record.model_copy(deep=True)

    def is_api_key(self, presented: str) -> bool:
        """Whether `presented` is any API key, static or made here, revoked ones too."""
        encoded = presented.encode()
        if any(hmac.compare_digest(encoded, key) for key, _ in self._static):
            return True
        with self._lock:
            return key_hash(presented) in self._by_hash

    def policy_for(self, owner: str) -> KeyPolicy | None:
        """The policy of the key whose owner (workspace) this is; None for a static key or
        an owner no key made here has."""
        key_id = owner[:KEY_ID_CHARS]
        with self._lock:
            record = self._records.get(key_id)
            if record is None or record.owner != owner or record.revoked:
                return None
            return record.policy.model_copy()

    def classifier_mode_for(self, owner: str) -> ClassifierMode | None:
        """The key's own classifier mode, or None where the server's settings decide."""
        policy = self.policy_for(owner)
        return None if policy is None else policy.classifier_mode

    def static_hashes(self) -> set[str]:
        """The SHA-256 of each static key (to keep admin keys apart from them)."""
        return {hashlib.sha256(key).hexdigest() for key, _ in self._static}

    def static_ids(self) -> list[str]:
        return [key_id for _, key_id in self._static]

    def list(self) -> list[KeyRecord]:
        """Keys made here, oldest first, revoked ones too."""
        with self._lock:
            records = sorted(self._records.values(), key=lambda r: r.created_at)
            return [r.model_copy(deep=True) for r in records]

    def get(self, key_id: str) -> KeyRecord:
        """A key made here, by id; NotFoundError for any other (a static key's too)."""
        with self._lock:
            return self._get(key_id).model_copy(deep=True)

    def create(self, name: str, policy: KeyPolicy | None = None) -> tuple[KeyRecord, str]:
        """A new key and its record. The key is returned here only, never stored."""
        name = check_name(name)
        with self._lock:
            taken = {*self._records, *self.static_ids()}
            while True:
                key = KEY_PREFIX + _random_chars(40)
                digest = key_hash(key)
                if digest[:KEY_ID_CHARS] not in taken:
                    break
            record = KeyRecord(
                key_id=digest[:KEY_ID_CHARS],
                sha256=digest,
                name=name,
                created_at=self._clock(),
                policy=policy or KeyPolicy(),
            )
            self._records[record.key_id] = record
            self._by_hash[digest] = record
            try:
                self._save()
            except BaseException:
                del self._records[record.key_id], self._by_hash[digest]
                raise
            return record.model_copy(deep=True), key

    def revoke(self, key_id: str) -> KeyRecord:
        """The key stops authenticating at once; its record stays."""
        with self._lock:
            record = self._live(key_id)
            record.revoked_at = self._clock()
            try:
                self._save()
            except BaseException:
                record.revoked_at = None
                raise
            return record.model_copy(deep=True)

    def check_policy(self, key_id: str, changes: dict[str, Any]) -> KeyPolicy:
        """The policy `changes` would give a live key; InvalidRequestError for a bad field or
        value, NotFoundError for an unknown key. Changes nothing."""
        with self._lock:
            current = self._live(key_id).policy
        return _merged(current, changes)

    def set_policy(self, key_id: str, changes: dict[str, Any]) -> KeyRecord:
        """Change some of a live key's policy fields (a field set to None: the server's)."""
        with self._lock:
            record = self._live(key_id)
            before = record.policy
            record.policy = _merged(before, changes)
            try:
                self._save()
            except BaseException:
                record.policy = before
                raise
            return record.model_copy(deep=True)

    def check_live(self, key_id: str) -> None:
        """NotFoundError or InvalidRequestError unless `key_id` is a live key made here."""
        with self._lock:
            self._live(key_id)

    def _get(self, key_id: str) -> KeyRecord:
        record = self._records.get(key_id)
        if record is not None:
            return record
        if key_id in self.static_ids():
            raise InvalidRequestError(
                f"key {key_id} comes from the server's configuration (api_keys); "
                "change it there, not through the admin API"
            )
        raise NotFoundError(f"no API key with id {key_id!r}")

    def _live(self, key_id: str) -> KeyRecord:
        record = self._get(key_id)
        if record.revoked_at is not None:
            raise InvalidRequestError(f"key {key_id} was revoked at {rfc3339(record.revoked_at)}")
        return record

    def _load(self) -> Iterable[KeyRecord]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise ValueError(f"{self.path}: unreadable key store: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError(f"{self.path}: not a tercet key store (no 'keys' list)")
        return [KeyRecord.model_validate(item) for item in data["keys"]]

    def _save(self) -> None:
        records = sorted(self._records.values(), key=lambda r: r.created_at)
        data = {"format": FORMAT, "keys": [r.model_dump() for r in records]}
        write_atomically(self.path, json.dumps(data, indent=1).encode())


def _merged(current: KeyPolicy, changes: dict[str, Any]) -> KeyPolicy:
    if not changes:
        raise InvalidRequestError(
            f"no policy field to change; the fields are: {', '.join(KeyPolicy.model_fields)}"
        )
    unknown = sorted(set(changes) - set(KeyPolicy.model_fields))
    if unknown:
        raise InvalidRequestError(
            f"unknown policy field {unknown[0]!r}; the fields are: "
            f"{', '.join(KeyPolicy.model_fields)}"
        )
    data = {**current.model_dump(), **changes}
    try:
        return KeyPolicy.model_validate(data)
    except ValueError as exc:
        raise InvalidRequestError(f"bad policy: {_first_error(exc)}") from exc


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"{where}: {first['msg']}"
    return str(exc)


def check_name(name: str) -> str:
    """A key's name, stripped; InvalidRequestError unless 1 to 200 printable characters."""
    name = name.strip()
    if not name or len(name) > 200 or any(ord(c) < 32 for c in name):
        raise InvalidRequestError("a key's name is 1 to 200 printable characters")
    return name


def _random_chars(n: int) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
    return "".join(secrets.choice(alphabet) for _ in range(n))


def rfc3339(at: float) -> str:
    """A Unix time as the API shows times (UTC, seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def write_atomically(path: Path, data: bytes) -> None:
    """`data` in `path`, whole or not at all: a private temporary file, fsynced, renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(staged, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)

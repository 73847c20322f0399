"""Signatures of thinking blocks: an HMAC under a server secret that survives restarts.

A client must send thinking blocks back unchanged; the signature lets the server check that it
produced them, so tampered or foreign blocks are refused with Anthropic's error wording.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

_VERSION = b"\x01"
_NONCE_BYTES = 12


class ThinkingSigner:
    """Signs and verifies thinking text. Each signature carries a nonce, so equal texts differ."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("the thinking secret must be at least 32 bytes")
        self._secret = secret

    @classmethod
    def from_data_dir(cls, data_dir: Path) -> ThinkingSigner:
        """The signer whose secret lives in `data_dir/keys/thinking.key` (created 0600 if new)."""
        path = data_dir / "keys" / "thinking.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            temporary = path.with_name(f".thinking.key.{os.getpid()}.{secrets.token_hex(4)}")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as out:
                out.write(secrets.token_bytes(32))
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(temporary, path)  # atomic and exclusive: the first server's secret wins
            except FileExistsError:
                pass
            finally:
                temporary.unlink()
        return cls(path.read_bytes())

    def sign(self, thinking: str) -> str:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return base64.b64encode(_VERSION + nonce + self._mac(nonce, thinking)).decode()

    def verify(self, thinking: str, signature: str) -> bool:
        try:
            raw = base64.b64decode(signature, validate=True)
        except ValueError:
            return False
        if len(raw) != 1 + _NONCE_BYTES + 32 or raw[:1] != _VERSION:
            return False
        nonce, mac = raw[1 : 1 + _NONCE_BYTES], raw[1 + _NONCE_BYTES :]
        return hmac.compare_digest(mac, self._mac(nonce, thinking))

    def _mac(self, nonce: bytes, thinking: str) -> bytes:
        return hmac.new(self._secret, nonce + thinking.encode(), hashlib.sha256).digest()

"""Where uploaded files live: metadata in SQLite, content in content-addressed blobs.

A blob is written to a temporary file, fsynced, and renamed to `blobs/<sha256[:2]>/<sha256>`;
only then is its metadata row inserted. A crash therefore leaves at worst a temporary file or
an unreferenced blob, never a listed file with partial content; both are collected on start.
The rename and the insert happen under the store's lock, as do a delete and its "is the blob
still referenced?" test, so deleting one file never takes the content of another that is
being committed with the same bytes. Files belong to an owner (one per API key); another
owner sees none of them.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import string
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Protocol

_ID_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class StoredFile:
    id: str
    owner: str
    filename: str
    mime_type: str
    size_bytes: int
    created_at: datetime
    downloadable: bool
    sha256: str


@dataclass(frozen=True)
class FilePage:
    files: list[StoredFile]
    has_more: bool


class QuotaExceededError(Exception):
    """`commit` refused a file: the owner's files would total more than `quota_bytes`."""

    def __init__(self, quota_bytes: int) -> None:
        super().__init__(f"the files would total more than the quota of {quota_bytes} bytes")
        self.quota_bytes = quota_bytes


class BlobWriter:
    """An upload in progress: bytes go straight to a temporary file, hashed on the way."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._hash = hashlib.sha256()
        self._file: IO[bytes] = path.open("wb")

    def write(self, data: bytes | memoryview) -> None:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    def finish(self) -> str:
        """Flush to disk; returns the content's sha256."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return self._hash.hexdigest()

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


class FileStore(Protocol):
    """The storage behind the Files API; `LocalFileStore` is the embedded one."""

    def begin(self) -> BlobWriter: ...

    def commit(
        self,
        owner: str,
        writer: BlobWriter,
        filename: str,
        mime_type: str,
        downloadable: bool,
        quota_bytes: int | None = None,
    ) -> StoredFile:
        """Store the written content as a file; the writer is used up either way. Raises
        `QuotaExceededError` if the owner's files would then total more than `quota_bytes`."""
        ...

    def get(self, owner: str, file_id: str) -> StoredFile | None: ...

    def list(
        self, owner: str, limit: int, before_id: str | None, after_id: str | None
    ) -> FilePage: ...

    def read(self, stored: StoredFile) -> Iterator[bytes]: ...

    def delete(self, owner: str, file_id: str) -> bool: ...

    def usage(self, owner: str) -> int: ...


class LocalFileStore:
    """SQLite (`files.sqlite3`) and blobs under one directory."""

    def __init__(self, directory: Path) -> None:
        self._blobs = directory / "blobs"
        self._staging = directory / "staging"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._staging.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(directory / "files.sqlite3", check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS files (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " id TEXT UNIQUE NOT NULL, owner TEXT NOT NULL, filename TEXT NOT NULL,"
            " mime_type TEXT NOT NULL, size_bytes INTEGER NOT NULL, created_at TEXT NOT NULL,"
            " downloadable INTEGER NOT NULL, sha256 TEXT NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS files_owner ON files (owner, seq)")
        self._db.commit()
        self._collect_garbage()

    def begin(self) -> BlobWriter:
        return BlobWriter(self._staging / f"{secrets.token_hex(16)}.part")

    def commit(
        self,
        owner: str,
        writer: BlobWriter,
        filename: str,
        mime_type: str,
        downloadable: bool,
        quota_bytes: int | None = None,
    ) -> StoredFile:
        """Store the written content as a file; the writer is used up either way. Raises
        `QuotaExceededError` if the owner's files would then total more than `quota_bytes`."""
        try:
            digest = writer.finish()  # the slow fsync, outside the lock
        except BaseException:
            writer.discard()
            raise
        stored = StoredFile(
            id="file_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24)),
            owner=owner,
            filename=filename,
            mime_type=mime_type,
            size_bytes=writer.size,
            created_at=datetime.now(UTC),
            downloadable=downloadable,
            sha256=digest,
        )
        blob = self._blob_path(digest)
        with self._lock:
            # Checked here, under the lock, so two uploads cannot both fit the same room.
            if quota_bytes is not None and self._usage(owner) + writer.size > quota_bytes:
                writer.discard()
                raise QuotaExceededError(quota_bytes)
            try:
                blob.parent.mkdir(exist_ok=True)
                writer.path.replace(blob)  # the same content twice is one blob
                _fsync_directory(blob.parent)
            except BaseException:
                writer.discard()
                raise
            self._db.execute(
                "INSERT INTO files (id, owner, filename, mime_type, size_bytes, created_at,"
                " downloadable, sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    stored.id,
                    owner,
                    filename,
                    mime_type,
                    stored.size_bytes,
                    stored.created_at.isoformat(),
                    int(downloadable),
                    digest,
                ),
            )
            self._db.commit()
        return stored

    def get(self, owner: str, file_id: str) -> StoredFile | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM files WHERE owner = ? AND id = ?", (owner, file_id)
            ).fetchone()
        return _stored(row) if row else None

    def list(self, owner: str, limit: int, before_id: str | None, after_id: str | None) -> FilePage:
        """Newest first. `after_id`: the page after that file (older); `before_id`: the page
        before it (newer), still listed newest first."""
        query = f"SELECT {_COLUMNS} FROM files WHERE owner = ?"
        args: list[object] = [owner]
        with self._lock:
            if after_id is not None:
                query += " AND seq < (SELECT seq FROM files WHERE id = ? AND owner = ?)"
                args += [after_id, owner]
            if before_id is not None:
                query += " AND seq > (SELECT seq FROM files WHERE id = ? AND owner = ?)"
                args += [before_id, owner]
            order = "ASC" if before_id is not None and after_id is None else "DESC"
            rows = self._db.execute(
                f"{query} ORDER BY seq {order} LIMIT ?", (*args, limit + 1)
            ).fetchall()
        page = [_stored(r) for r in rows[:limit]]
        if order == "ASC":
            page.reverse()
        return FilePage(page, has_more=len(rows) > limit)

    def read(self, stored: StoredFile) -> Iterator[bytes]:
        with self._blob_path(stored.sha256).open("rb") as blob:
            while chunk := blob.read(1 << 20):
                yield chunk

    def delete(self, owner: str, file_id: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT sha256 FROM files WHERE owner = ? AND id = ?", (owner, file_id)
            ).fetchone()
            if row is None:
                return False
            self._db.execute("DELETE FROM files WHERE id = ?", (file_id,))
            self._db.commit()
            shared = self._db.execute("SELECT 1 FROM files WHERE sha256 = ?", row).fetchone()
            if shared is None:
                self._blob_path(row[0]).unlink(missing_ok=True)
        return True

    def usage(self, owner: str) -> int:
        with self._lock:
            return self._usage(owner)

    def close(self) -> None:
        self._db.close()

    def _usage(self, owner: str) -> int:
        row = self._db.execute(
            "SELECT COALESCE(SUM(size_bytes), 0) FROM files WHERE owner = ?", (owner,)
        ).fetchone()
        return int(row[0])

    def _blob_path(self, digest: str) -> Path:
        return self._blobs / digest[:2] / digest

    def _collect_garbage(self) -> None:
        """Remove what a crash left: staged uploads and blobs no file refers to."""
        for part in self._staging.iterdir():
            part.unlink(missing_ok=True)
        known = {row[0] for row in self._db.execute("SELECT DISTINCT sha256 FROM files")}
        for blob in self._blobs.glob("*/*"):
            if blob.name not in known:
                blob.unlink(missing_ok=True)


_COLUMNS = "id, owner, filename, mime_type, size_bytes, created_at, downloadable, sha256"


def _stored(row: tuple[object, ...]) -> StoredFile:
    id_, owner, filename, mime_type, size, created, downloadable, digest = row
    return StoredFile(
        id=str(id_),
        owner=str(owner),
        filename=str(filename),
        mime_type=str(mime_type),
        size_bytes=int(str(size)),
        created_at=datetime.fromisoformat(str(created)),
        downloadable=bool(downloadable),
        sha256=str(digest),
    )


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)

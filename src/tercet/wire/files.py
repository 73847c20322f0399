"""Files API bodies (beta `files-api-2025-04-14`)."""

from __future__ import annotations

from typing import Literal

from tercet.wire.base import ResponseModel


class FileMetadata(ResponseModel):
    id: str
    type: Literal["file"] = "file"
    filename: str
    mime_type: str
    size_bytes: int
    created_at: str  # RFC 3339
    downloadable: bool = False


class FileList(ResponseModel):
    data: list[FileMetadata]
    first_id: str | None
    last_id: str | None
    has_more: bool
    next_page: str | None = None  # the cursor the SDK pages with (`page=`)


class DeletedFile(ResponseModel):
    id: str
    type: Literal["file_deleted"] = "file_deleted"

"""The Files API routes, and `file` sources in messages resolved to what the model reads.

Uploads are parsed as they arrive (python-multipart's streaming parser) and written straight
to the store's staging file, so a 500 MB upload never sits in memory; a worker thread parses,
hashes and writes one megabyte while the event loop receives the next. Documents a request
refers to are read and converted on a worker thread, up to `MAX_DOCUMENT_BYTES` per request.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from tercet.files.documents import pdf_text
from tercet.files.store import BlobWriter, FileStore, QuotaExceededError, StoredFile
from tercet.server.config import ServerConfig
from tercet.wire.content import (
    Base64DocumentSource,
    DocumentBlockParam,
    FileSource,
    ImageBlockParam,
    PlainTextSource,
    ToolResultBlockParam,
)
from tercet.wire.errors import InvalidRequestError, NotFoundError, RequestTooLargeError
from tercet.wire.files import DeletedFile, FileList, FileMetadata
from tercet.wire.requests import PromptParams

MAX_FILENAME = 500
MAX_MIME_TYPE = 255
MAX_LISTED_IDS = 100
# What one request's documents may total, read from the store or sent inline: Anthropic's
# own request limit, and more text than any context window holds.
MAX_DOCUMENT_BYTES = 32 * 1024 * 1024
# What one hop to the upload's worker thread carries: few hops, little memory held.
BATCH_BYTES = 1 << 20


def files_router(
    config: ServerConfig, store: FileStore, authenticate: Callable[[Request], None]
) -> APIRouter:
    router = APIRouter(prefix="/v1/files", dependencies=[Depends(authenticate)])

    @router.post("")
    async def upload(request: Request) -> FileMetadata:
        owner: str = request.state.owner
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > config.max_file_bytes + 64 * 1024:
            raise _too_large(config)
        upload = _Upload(store, config.max_file_bytes, request.headers.get("content-type", ""))
        try:
            await _receive_into(upload, request)
            writer, filename, mime_type = upload.finished()
            try:
                stored = await anyio.to_thread.run_sync(
                    lambda: store.commit(
                        owner, writer, filename, mime_type, False, config.file_quota_bytes
                    )
                )
            except QuotaExceededError as exc:
                raise RequestTooLargeError(
                    f"storing this file would exceed the storage quota of "
                    f"{exc.quota_bytes} bytes for this API key; delete files first"
                ) from exc
        finally:
            upload.discard()  # a no-op once committed
        return metadata(stored)

    @router.get("")
    async def list_files(
        request: Request,
        limit: int = Query(default=20, ge=1, le=1000),
        before_id: str | None = None,
        after_id: str | None = None,
        page: str | None = None,
    ) -> FileList:
        """Newest first. Pages by `after_id`/`before_id` (the API's first form) or by the
        opaque `page` cursor from `next_page` (the SDK's current form); `ids` picks files."""
        owner: str = request.state.owner
        # The SDK sends a list as `ids[]=a&ids[]=b`; plain repeats are accepted too.
        ids = request.query_params.getlist("ids[]") + request.query_params.getlist("ids")
        if len(ids) > MAX_LISTED_IDS:
            raise InvalidRequestError(f"ids: at most {MAX_LISTED_IDS} ids may be given")
        if ids:
            found = [f for f in (store.get(owner, i) for i in dict.fromkeys(ids)) if f]
            data = [metadata(f) for f in sorted(found, key=lambda f: f.created_at, reverse=True)]
            return _file_list(data, has_more=False, forward=False)
        if page is not None:
            after_id = _cursor_id(page)
        listed = store.list(owner, limit, before_id, after_id)
        data = [metadata(f) for f in listed.files]
        return _file_list(data, listed.has_more, forward=before_id is None)

    @router.get("/{file_id}")
    async def retrieve(request: Request, file_id: str) -> FileMetadata:
        return metadata(_find(store, request.state.owner, file_id))

    @router.get("/{file_id}/content")
    async def download(request: Request, file_id: str) -> StreamingResponse:
        stored = _find(store, request.state.owner, file_id)
        if not stored.downloadable:
            raise InvalidRequestError(
                f"File {file_id} is not downloadable: only files the platform created "
                "(such as code execution outputs) can be downloaded, not uploads"
            )
        return StreamingResponse(
            store.read(stored),
            media_type=stored.mime_type,
            headers={"content-length": str(stored.size_bytes)},
        )

    @router.delete("/{file_id}")
    async def delete(request: Request, file_id: str) -> DeletedFile:
        if not store.delete(request.state.owner, file_id):
            raise _not_found(file_id)
        return DeletedFile(id=file_id)

    return router


def _file_list(data: list[FileMetadata], has_more: bool, forward: bool) -> FileList:
    last = data[-1].id if data else None
    cursor = "page_" + base64.urlsafe_b64encode(last.encode()).decode() if last else None
    return FileList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=last,
        has_more=has_more,
        next_page=cursor if has_more and forward else None,
    )


def _cursor_id(page: str) -> str:
    try:
        return base64.urlsafe_b64decode(page.removeprefix("page_").encode()).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError("page: not a page cursor from `next_page`") from exc


def metadata(stored: StoredFile) -> FileMetadata:
    return FileMetadata(
        id=stored.id,
        filename=stored.filename,
        mime_type=stored.mime_type,
        size_bytes=stored.size_bytes,
        created_at=stored.created_at.isoformat().replace("+00:00", "Z"),
        downloadable=stored.downloadable,
    )


def resolve_file_sources(request: PromptParams, store: FileStore, owner: str) -> None:
    """Replace `file` sources in documents with the text the model reads (in place), and
    PDFs sent inline with their text, in messages and in their tool results. Images keep
    their source: text-only models refuse them. Reads blobs: call it off the event loop
    (`resolve_file_sources_async`)."""
    budget = _DocumentBudget(MAX_DOCUMENT_BYTES)
    texts: dict[str, PlainTextSource] = {}  # a file referred to twice is read once
    for where, block in _source_blocks(request):
        source = block.source
        if isinstance(source, FileSource):
            stored = store.get(owner, source.file_id)
            if stored is None:
                raise InvalidRequestError(f"{where}: file not found: {source.file_id}")
            if isinstance(block, DocumentBlockParam):
                if source.file_id not in texts:
                    data = _read(store, stored, budget, where)
                    texts[source.file_id] = _document_text(data, stored.mime_type, where)
                block.source = texts[source.file_id]
        elif isinstance(source, Base64DocumentSource) and source.media_type == "application/pdf":
            try:
                data = base64.b64decode(source.data, validate=True)
            except ValueError as exc:
                raise InvalidRequestError(f"{where}.data: not valid base64") from exc
            budget.spend(len(data), where)
            block.source = _document_text(data, source.media_type, where)


async def resolve_file_sources_async(request: PromptParams, store: FileStore, owner: str) -> None:
    """`resolve_file_sources` on a worker thread, so reading and parsing documents never
    holds up the event loop."""
    await anyio.to_thread.run_sync(resolve_file_sources, request, store, owner)


def _source_blocks(
    request: PromptParams,
) -> Iterator[tuple[str, DocumentBlockParam | ImageBlockParam]]:
    """Every document and image block, with where it is, including those in tool results."""
    for index, message in enumerate(request.messages):
        if isinstance(message.content, str):
            continue
        for position, block in enumerate(message.content):
            where = f"messages.{index}.content.{position}"
            if isinstance(block, DocumentBlockParam | ImageBlockParam):
                yield f"{where}.source", block
            elif isinstance(block, ToolResultBlockParam) and not isinstance(block.content, str):
                for inner, part in enumerate(block.content):
                    if isinstance(part, DocumentBlockParam | ImageBlockParam):
                        yield f"{where}.content.{inner}.source", part


class _DocumentBudget:
    """How many bytes of documents one request may still read."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def spend(self, size: int, where: str) -> None:
        if size > self.left:
            raise InvalidRequestError(
                f"{where}: the documents of one request may total at most {self.limit} bytes;"
                f" this one ({size} bytes) goes beyond that"
            )
        self.left -= size


def _read(store: FileStore, stored: StoredFile, budget: _DocumentBudget, where: str) -> bytes:
    budget.spend(stored.size_bytes, where)
    data = bytearray()
    try:
        for chunk in store.read(stored):
            data += chunk
            if len(data) > stored.size_bytes:  # never read past what the budget paid for
                raise InvalidRequestError(f"{where}: the file changed while it was read")
    except FileNotFoundError as exc:  # deleted since it was looked up
        raise InvalidRequestError(f"{where}: file not found: {stored.id}") from exc
    return bytes(data)


def _document_text(data: bytes, mime_type: str, where: str) -> PlainTextSource:
    if mime_type == "application/pdf":
        text = pdf_text(data)
        if text is None:
            raise InvalidRequestError(f"{where}: the PDF could not be read")
    elif mime_type.startswith("text/") or mime_type == "application/json":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequestError(f"{where}: the document is not UTF-8 text") from exc
    else:
        raise InvalidRequestError(
            f"{where}: a document must be a PDF or plain text, not {mime_type}"
        )
    return PlainTextSource(type="text", media_type="text/plain", data=text)


def _find(store: FileStore, owner: str, file_id: str) -> StoredFile:
    stored = store.get(owner, file_id)
    if stored is None:
        raise _not_found(file_id)
    return stored


def _not_found(file_id: str) -> NotFoundError:
    return NotFoundError(f"File not found: {file_id}")


def _too_large(config: ServerConfig) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"File exceeds the maximum allowed size of {config.max_file_bytes} bytes"
    )


def _malformed(exc: FormParserError) -> InvalidRequestError:
    return InvalidRequestError(
        f"the upload is not well-formed multipart/form-data ({exc}); send the file as a"
        " `file` part of a multipart/form-data body"
    )


async def _receive_into(upload: _Upload, request: Request) -> None:
    """Feed the request body to `upload` on a worker thread, a batch at a time, while the
    event loop receives the next batch: the network and the disk (parse, hash, write) work
    at once instead of in turn. One batch at most waits for the worker, so an upload holds
    a few `BATCH_BYTES` in memory however fast the client sends."""
    to_worker, batches = anyio.create_memory_object_stream[list[bytes]](1)

    async def feed_batches() -> None:
        async with batches:
            async for batch in batches:
                await anyio.to_thread.run_sync(upload.feed, batch)

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(feed_batches)
            async with to_worker:
                batch: list[bytes] = []  # the server hands over 64-256 KB at a time
                size = 0
                async for chunk in request.stream():
                    batch.append(chunk)
                    size += len(chunk)
                    if size >= BATCH_BYTES:
                        await to_worker.send(batch)
                        batch, size = [], 0
                await to_worker.send(batch)
    except ExceptionGroup as failed:  # the task group wraps what either side raised
        raise failed.exceptions[0] from None


class _Upload:
    """One multipart upload, fed chunk by chunk; the part named `file` goes to the store."""

    def __init__(self, store: FileStore, limit: int, content_type: str) -> None:
        kind, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise InvalidRequestError("the upload must be multipart/form-data with a `file` part")
        self._store = store
        self._limit = limit
        self._writer: BlobWriter | None = None
        self._writing = False
        self._filename = ""
        self._mime_type = "application/octet-stream"
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._error: Exception | None = None
        callbacks: Any = {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._add("_header_field", d[s:e]),
            "on_header_value": lambda d, s, e: self._add("_header_value", d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }
        try:
            self._parser = MultipartParser(boundary, callbacks)
        except FormParserError as exc:  # a boundary longer than the parser takes
            raise _malformed(exc) from exc
        self._done = False

    def feed(self, chunks: list[bytes]) -> None:
        # One write of the joined batch: the parser then hands the file's bytes to the writer
        # in one piece, and the hash and the disk write each let go of the GIL once a batch,
        # not once a chunk (each time the event loop's thread may keep it for a while).
        try:
            self._parser.write(b"".join(chunks))
        except FormParserError as exc:
            raise _malformed(exc) from exc
        if self._error is not None:
            raise self._error

    def finished(self) -> tuple[BlobWriter, str, str]:
        try:
            self._parser.finalize()
        except FormParserError as exc:
            raise _malformed(exc) from exc
        if self._writer is None or self._writing or not self._done:
            raise InvalidRequestError("the upload has no complete `file` part")
        if self._writer.size == 0:
            raise InvalidRequestError("the file is empty")
        return self._writer, self._filename, self._mime_type

    def discard(self) -> None:
        if self._writer is not None and self._writer.path.exists():
            self._writer.discard()

    def _add(self, name: str, data: bytes) -> None:
        setattr(self, name, getattr(self, name) + data)

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def _headers_finished(self) -> None:
        _, disposition = parse_options_header(self._headers.get(b"content-disposition", b""))
        if disposition.get(b"name") != b"file" or self._writer is not None:
            return
        filename = disposition.get(b"filename", b"").decode("utf-8", "replace")
        mime_type = self._headers.get(b"content-type", b"").decode("latin-1").strip()
        if not filename:
            self._error = InvalidRequestError("file: the part needs a filename")
        elif len(filename) > MAX_FILENAME:
            self._error = InvalidRequestError(
                f"file: the filename is longer than {MAX_FILENAME} characters"
            )
        elif len(mime_type) > MAX_MIME_TYPE:
            self._error = InvalidRequestError("file: the content type is too long")
        else:
            self._filename = filename
            self._mime_type = mime_type or "application/octet-stream"
            self._writer = self._store.begin()
            self._writing = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._writing or self._writer is None or self._error is not None:
            return
        if self._writer.size + (end - start) > self._limit:
            self._error = RequestTooLargeError(
                f"File exceeds the maximum allowed size of {self._limit} bytes"
            )
            return
        self._writer.write(memoryview(data)[start:end])  # a view: no copy of the data

    def _part_end(self) -> None:
        if self._writing:
            self._writing = False
            self._done = True

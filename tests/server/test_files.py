"""The Files API through the official SDK, document blocks that reference files, and crashes."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tercet.engine.scripted import ScriptedEngine
from tercet.files import store as store_module
from tercet.files.store import LocalFileStore, StoredFile
from tercet.server import files as files_module
from tercet.server.app import create_app
from tercet.server.config import ServerConfig
from tercet.server.files import resolve_file_sources_async
from tercet.server.runner import BackgroundServer
from tercet.wire.content import DocumentBlockParam, PlainTextSource
from tercet.wire.requests import MessageCreateRequest
from tests.conftest import CLAUDE_MODEL, cli_server_process

NOTE = "The secret word of the lighthouse keeper is marmalade. " * 20


def keyed(server: str, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server, api_key=key, max_retries=0)


def upload(client: anthropic.Anthropic, name: str, data: bytes, mime: str = "text/plain") -> Any:
    return client.beta.files.upload(file=(name, io.BytesIO(data), mime))


def tiny_pdf(text: str) -> bytes:
    """A one-page PDF showing `text` in Helvetica, with a correct cross-reference table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def test_upload_list_retrieve_delete(server: str) -> None:
    client = keyed(server, "files-basic")
    stored = upload(client, "notes.txt", NOTE.encode())
    assert stored.id.startswith("file_") and stored.type == "file"
    assert (stored.filename, stored.mime_type, stored.size_bytes) == (
        "notes.txt",
        "text/plain",
        len(NOTE.encode()),
    )
    assert stored.downloadable is False and stored.created_at.tzinfo is not None
    assert client.beta.files.retrieve_metadata(stored.id) == stored
    assert [f.id for f in client.beta.files.list()] == [stored.id]
    # Uploads are not downloadable, as on Anthropic's API.
    with pytest.raises(anthropic.BadRequestError, match="not downloadable"):
        client.beta.files.download(stored.id)
    deleted = client.beta.files.delete(stored.id)
    assert (deleted.id, deleted.type) == (stored.id, "file_deleted")
    with pytest.raises(anthropic.NotFoundError):
        client.beta.files.retrieve_metadata(stored.id)
    assert list(client.beta.files.list()) == []


def test_pagination_across_25_files(server: str) -> None:
    client = keyed(server, "files-pages")
    ids = [upload(client, f"f{i}.txt", f"file {i}".encode()).id for i in range(25)]
    first = client.beta.files.list(limit=10)
    assert [f.id for f in first.data] == ids[::-1][:10]  # newest first
    assert first.has_more and first.first_id == ids[24] and first.last_id == ids[15]
    assert [f.id for f in client.beta.files.list(limit=10)] == ids[::-1]  # auto-pagination
    assert first.next_page  # SDK 2.x pages with this cursor
    # The API's first form of paging, by id, still works.
    tail = client.beta.files.list(limit=10, extra_query={"after_id": ids[5]})
    assert [f.id for f in tail.data] == ids[4::-1] and not tail.next_page
    newer = client.beta.files.list(limit=3, extra_query={"before_id": ids[10]})
    assert [f.id for f in newer.data] == [ids[13], ids[12], ids[11]]
    picked = client.beta.files.list(ids=[ids[3], ids[7], "file_unknown"])
    assert [f.id for f in picked.data] == [ids[7], ids[3]]


def test_files_belong_to_their_key(server: str) -> None:
    stored = upload(keyed(server, "owner-a"), "a.txt", b"mine")
    other = keyed(server, "owner-b")
    with pytest.raises(anthropic.NotFoundError):
        other.beta.files.retrieve_metadata(stored.id)
    with pytest.raises(anthropic.NotFoundError):
        other.beta.files.delete(stored.id)
    assert list(other.beta.files.list()) == []
    with pytest.raises(anthropic.BadRequestError, match="file not found"):
        ask_about(other, {"type": "file", "file_id": stored.id})


def ask_about(client: anthropic.Anthropic, source: dict[str, Any]) -> anthropic.types.Message:
    return client.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=20,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "document", "source": source},  # type: ignore[list-item,misc]
                    {"type": "text", "text": "What is the secret word?"},
                ],
            }
        ],
        extra_body={"temperature": 0},
    )


def test_a_document_block_reads_the_file(server: str) -> None:
    client = keyed(server, "files-docs")
    stored = upload(client, "note.txt", NOTE.encode())
    by_file = ask_about(client, {"type": "file", "file_id": stored.id})
    inline = ask_about(client, {"type": "text", "media_type": "text/plain", "data": NOTE})
    # The model read exactly the file's text: the same prompt as the text sent inline.
    assert by_file.usage.input_tokens == inline.usage.input_tokens
    assert by_file.content == inline.content
    other = upload(client, "other.txt", b"The secret word is lemon.")
    shorter = ask_about(client, {"type": "file", "file_id": other.id})
    assert by_file.usage.input_tokens - shorter.usage.input_tokens > 150  # NOTE is ~200 more
    client.beta.files.delete(stored.id)
    with pytest.raises(anthropic.BadRequestError, match="file not found"):
        ask_about(client, {"type": "file", "file_id": stored.id})


def test_pdfs_are_read_as_text(server: str) -> None:
    client = keyed(server, "files-pdf")
    pdf = tiny_pdf("The secret word is marmalade")
    stored = upload(client, "note.pdf", pdf, "application/pdf")
    by_file = ask_about(client, {"type": "file", "file_id": stored.id})
    inline = ask_about(
        client,
        {"type": "base64", "media_type": "application/pdf", "data": base64.b64encode(pdf).decode()},
    )
    as_text = ask_about(
        client, {"type": "text", "media_type": "text/plain", "data": "The secret word is marmalade"}
    )
    assert by_file.usage.input_tokens == inline.usage.input_tokens == as_text.usage.input_tokens
    broken = upload(client, "broken.pdf", b"%PDF-1.4 not really", "application/pdf")
    with pytest.raises(anthropic.BadRequestError, match="PDF could not be read"):
        ask_about(client, {"type": "file", "file_id": broken.id})


def test_bad_uploads_are_clear_errors(server: str, tmp_path: Path) -> None:
    client = keyed(server, "files-bad")
    with pytest.raises(anthropic.BadRequestError, match="empty"):
        upload(client, "empty.txt", b"")
    with pytest.raises(anthropic.BadRequestError, match="longer than 500"):
        upload(client, "x" * 501, b"data")
    headers = {"x-api-key": "files-bad"}
    missing = httpx.post(f"{server}/v1/files", files={"other": ("a.txt", b"x")}, headers=headers)
    assert missing.status_code == 400 and "`file` part" in missing.json()["error"]["message"]
    not_multipart = httpx.post(f"{server}/v1/files", content=b"raw", headers=headers)
    assert not_multipart.status_code == 400
    for unknown in ("file_doesnotexist", "../../etc/passwd"):
        assert httpx.get(f"{server}/v1/files/{unknown}", headers=headers).status_code == 404
    # A name that looks like a path is only a name.
    stored = upload(client, "../../../etc/passwd", b"harmless")
    assert stored.filename == "../../../etc/passwd"
    assert client.beta.files.retrieve_metadata(stored.id).filename == "../../../etc/passwd"
    assert list(client.beta.files.list()) == [stored]


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[str]:
    config = ServerConfig(
        data_dir=tmp_path, api_keys=[], max_file_bytes=1000, file_quota_bytes=1500
    )
    with BackgroundServer(create_app(config, [ScriptedEngine(["ok"])])) as running:
        yield running.base_url


def test_size_limit_and_quota(small_server: str, tmp_path: Path) -> None:
    client = keyed(small_server, "limited")
    with pytest.raises(anthropic.APIStatusError) as caught:
        upload(client, "big.bin", b"x" * 1001)
    assert caught.value.status_code == 413
    assert caught.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]
    upload(client, "a.bin", b"x" * 1000)
    with pytest.raises(anthropic.APIStatusError, match="storage quota") as caught:
        upload(client, "b.bin", b"y" * 600)
    assert caught.value.status_code == 413
    assert upload(keyed(small_server, "another"), "b.bin", b"y" * 600)  # quotas are per key
    # Nothing of the refused uploads is left behind.
    assert list((tmp_path / "files" / "staging").iterdir()) == []


def test_sigkill_mid_upload_leaves_no_trace(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    options = ("--data-dir", str(data_dir))
    kept = b"kept file content " * 1000
    with cli_server_process(*options) as (process, base_url):
        client = keyed(base_url, "crash")
        survivor = upload(client, "kept.txt", kept)
        sent = threading.Event()

        def slow_body() -> Iterator[bytes]:
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n\r\n'
            for _ in range(400):
                yield b"z" * 65536
                sent.set()
                time.sleep(0.01)
            yield b"\r\n--b--\r\n"

        def send() -> None:
            with contextlib.suppress(httpx.HTTPError):  # the server dies under it
                httpx.post(
                    f"{base_url}/v1/files",
                    content=slow_body(),
                    headers={
                        "content-type": "multipart/form-data; boundary=b",
                        "x-api-key": "crash",
                    },
                    timeout=30,
                )

        sender = threading.Thread(target=send)
        sender.start()
        assert sent.wait(10)
        # Part of the upload is on disk: polled for, as the server writes when it gets to it
        # (the body takes seconds more to send, so it is still mid-upload then).
        staging = data_dir / "files" / "staging"
        deadline = time.monotonic() + 30
        while not any(path.stat().st_size > 0 for path in staging.iterdir()):
            assert time.monotonic() < deadline, "nothing of the upload reached the disk"
            time.sleep(0.01)
        assert sender.is_alive()
        process.send_signal(signal.SIGKILL)
        process.wait()
        sender.join()
    with cli_server_process(*options) as (_, base_url):
        client = keyed(base_url, "crash")
        assert [f.id for f in client.beta.files.list()] == [survivor.id]
    assert list((data_dir / "files" / "staging").iterdir()) == []
    blobs = list((data_dir / "files" / "blobs").glob("*/*"))
    assert [b.name for b in blobs] == [hashlib.sha256(kept).hexdigest()]
    assert all(hashlib.sha256(b.read_bytes()).hexdigest() == b.name for b in blobs)


def test_platform_files_can_be_downloaded(tmp_path: Path) -> None:
    # Files the platform creates (code execution outputs, later) are downloadable; one is
    # stored here directly, as the code execution tool will.
    from tercet.server.app import owner_of

    content = b"x,y\n1,2\n" * 1000
    store = LocalFileStore(tmp_path / "files")
    writer = store.begin()
    writer.write(content)
    made = store.commit(owner_of("maker"), writer, "out.csv", "text/csv", downloadable=True)
    store.close()
    config = ServerConfig(data_dir=tmp_path, api_keys=[])
    with BackgroundServer(create_app(config, [ScriptedEngine(["ok"])])) as running:
        client = keyed(running.base_url, "maker")
        assert client.beta.files.retrieve_metadata(made.id).downloadable
        assert client.beta.files.download(made.id).read() == content


def test_an_image_file_to_a_text_only_model_is_refused(server: str) -> None:
    client = keyed(server, "files-image")
    picture = upload(client, "pixel.png", b"\x89PNG fake", "image/png")
    with pytest.raises(anthropic.BadRequestError, match="does not support image input"):
        client.messages.create(
            model=CLAUDE_MODEL,
            max_tokens=5,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "file", "file_id": picture.id}},
                        {"type": "text", "text": "What is this?"},
                    ],
                }
            ],
        )


def commit_bytes(
    store: LocalFileStore, owner: str, data: bytes, mime: str = "text/plain"
) -> StoredFile:
    writer = store.begin()
    writer.write(data)
    return store.commit(owner, writer, "f.txt", mime, downloadable=False)


def test_a_delete_during_a_commit_of_the_same_content_keeps_the_blob(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: the blob was renamed into place outside the lock, before its row existed;
    # deleting the other file with the same content in between unlinked the blob.
    store = LocalFileStore(tmp_path / "files")
    twin = commit_bytes(store, "o", b"the same bytes")
    fsync_directory = store_module._fsync_directory
    deleted = threading.Event()

    def delete_twin() -> None:
        store.delete("o", twin.id)
        deleted.set()

    def delete_twin_between_rename_and_insert(path: Path) -> None:
        fsync_directory(path)
        threading.Thread(target=delete_twin, daemon=True).start()
        deleted.wait(1)  # the delete waits for the commit now; before, it ran right here

    monkeypatch.setattr(store_module, "_fsync_directory", delete_twin_between_rename_and_insert)
    kept = commit_bytes(store, "o", b"the same bytes")
    assert deleted.wait(10)
    assert [f.id for f in store.list("o", 10, None, None).files] == [kept.id]
    assert b"".join(store.read(kept)) == b"the same bytes"
    store.close()


def test_concurrent_uploads_cannot_both_fit_the_quota(
    small_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: the quota was checked before the commit, so two uploads could both pass.
    commit = LocalFileStore.commit
    # Each upload waits at the commit for the other (not a sleep that hopes it came), so both
    # are past any check made before committing.
    both_committing = threading.Barrier(2, timeout=30)

    def racing_commit(self: LocalFileStore, *args: Any, **kwargs: Any) -> StoredFile:
        both_committing.wait()
        return commit(self, *args, **kwargs)

    monkeypatch.setattr(LocalFileStore, "commit", racing_commit)
    client = keyed(small_server, "racing")
    outcomes: list[Any] = []

    def send(fill: bytes) -> None:
        try:
            outcomes.append(upload(client, "x.bin", fill * 1000))
        except anthropic.APIStatusError as exc:
            outcomes.append(exc)

    senders = [threading.Thread(target=send, args=(fill,)) for fill in (b"a", b"b")]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    refused = [o for o in outcomes if isinstance(o, anthropic.APIStatusError)]
    assert len(refused) == 1, outcomes
    assert refused[0].status_code == 413 and "storage quota of 1500" in refused[0].message
    assert len(list(client.beta.files.list())) == 1


def test_a_malformed_multipart_body_is_a_400(server: str) -> None:
    # Regression: python-multipart's parse errors were 500s.
    headers = {"x-api-key": "files-malformed", "content-type": "multipart/form-data; boundary=b"}
    for body in (b"garbage", b"--b\r\nnot a header\r\n\r\nx\r\n--b--\r\n", b"--bX"):
        response = httpx.post(f"{server}/v1/files", content=body, headers=headers)
        assert response.status_code == 400, response.text
        error = response.json()
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert "not well-formed multipart/form-data" in error["error"]["message"]
    assert list(keyed(server, "files-malformed").beta.files.list()) == []


def a_request(*content: dict[str, Any]) -> MessageCreateRequest:
    return MessageCreateRequest.model_validate(
        {
            "model": CLAUDE_MODEL,
            "max_tokens": 5,
            "messages": [{"role": "user", "content": [*content, {"type": "text", "text": "?"}]}],
        }
    )


@pytest.mark.anyio
async def test_documents_are_read_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalFileStore(tmp_path / "files")
    stored = commit_bytes(store, "o", NOTE.encode())
    readers: list[int] = []
    read = store.read

    def recording_read(file: StoredFile) -> Iterator[bytes]:
        readers.append(threading.get_ident())
        return read(file)

    monkeypatch.setattr(store, "read", recording_read)
    request = a_request({"type": "document", "source": {"type": "file", "file_id": stored.id}})
    await resolve_file_sources_async(request, store, "o")
    assert readers and threading.get_ident() not in readers
    block = request.messages[0].content[0]
    assert isinstance(block, DocumentBlockParam)
    assert block.source == PlainTextSource(type="text", media_type="text/plain", data=NOTE)
    store.close()


def count(client: anthropic.Anthropic, messages: list[Any]) -> int:
    return client.messages.count_tokens(
        model=CLAUDE_MODEL,
        messages=messages,
        tools=[{"name": "read_note", "input_schema": {"type": "object"}}],
    ).input_tokens


def test_documents_a_request_reads_are_bounded(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = keyed(server, "files-bounded")
    note = upload(client, "note.txt", b"n" * 600)
    other = upload(client, "other.txt", b"o" * 600)
    monkeypatch.setattr(files_module, "MAX_DOCUMENT_BYTES", 1000)

    def documents(*ids: str) -> list[Any]:
        blocks = [{"type": "document", "source": {"type": "file", "file_id": i}} for i in ids]
        return [{"role": "user", "content": [*blocks, {"type": "text", "text": "?"}]}]

    assert count(client, documents(note.id, note.id)) > 0  # one file, read once
    with pytest.raises(anthropic.BadRequestError, match="total at most 1000 bytes") as caught:
        count(client, documents(note.id, other.id))
    assert "messages.0.content.1.source" in caught.value.message
    big = upload(client, "big.txt", b"b" * 1001)
    with pytest.raises(anthropic.BadRequestError, match="total at most 1000 bytes"):
        count(client, documents(big.id))


def test_documents_in_tool_results_read_the_file(server: str) -> None:
    # Regression: only documents at the top level of a message were resolved.
    client = keyed(server, "files-tool-results")
    stored = upload(client, "note.txt", NOTE.encode())

    def answered_with(source: dict[str, Any]) -> list[Any]:
        return [
            {"role": "user", "content": "Read the note."},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "read_note", "input": {}}
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "document", "source": source}],
                    }
                ],
            },
        ]

    by_file = count(client, answered_with({"type": "file", "file_id": stored.id}))
    inline = count(
        client, answered_with({"type": "text", "media_type": "text/plain", "data": NOTE})
    )
    assert by_file == inline
    pdf = base64.b64encode(tiny_pdf("The secret word is marmalade")).decode()
    as_pdf = count(
        client, answered_with({"type": "base64", "media_type": "application/pdf", "data": pdf})
    )
    as_text = count(
        client,
        answered_with(
            {"type": "text", "media_type": "text/plain", "data": "The secret word is marmalade"}
        ),
    )
    assert as_pdf == as_text
    with pytest.raises(anthropic.BadRequestError, match="file not found") as caught:
        count(client, answered_with({"type": "file", "file_id": "file_missing"}))
    assert "messages.2.content.0.content.0.source" in caught.value.message

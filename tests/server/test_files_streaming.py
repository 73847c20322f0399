"""Large uploads and downloads through the Files API: bytes and hashes exact across the
batches the server parses and writes in, limits and disconnects mid-body, long downloads."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anthropic
import httpx
import pytest

from tercet.engine.scripted import ScriptedEngine
from tercet.files.store import LocalFileStore
from tercet.server import files as files_module
from tercet.server.app import create_app, owner_of
from tercet.server.config import ServerConfig
from tercet.server.runner import BackgroundServer

BOUNDARY = b"streaming-test-boundary"
LIMIT = 3 * 1000**2


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def server(data_dir: Path) -> Iterator[str]:
    config = ServerConfig(data_dir=data_dir, api_keys=[], max_file_bytes=LIMIT)
    with BackgroundServer(create_app(config, [ScriptedEngine(["ok"])])) as running:
        yield running.base_url


def part_head(filename: str = "big.bin") -> bytes:
    return (
        b"--" + BOUNDARY + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="' + filename.encode() + b'"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
    )


def multipart(data: bytes) -> bytes:
    return part_head() + data + b"\r\n--" + BOUNDARY + b"--\r\n"


def post_multipart(server: str, body: bytes | Iterator[bytes], key: str) -> httpx.Response:
    return httpx.post(
        f"{server}/v1/files",
        content=body,
        headers={
            "x-api-key": key,
            "content-type": f"multipart/form-data; boundary={BOUNDARY.decode()}",
        },
        timeout=60,
    )


def blobs(data_dir: Path) -> dict[str, bytes]:
    return {b.name: b.read_bytes() for b in (data_dir / "files" / "blobs").glob("*/*")}


def staged(data_dir: Path) -> list[Path]:
    return list((data_dir / "files" / "staging").iterdir())


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    """Polls `condition` until it holds; what the server does has no other sign to wait on."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


def tricky_content(size: int) -> bytes:
    """Random bytes seeded with near-boundaries (`\\r\\n--` and all but the last byte of the
    boundary) on each side of every batch edge the server parses at."""
    data = bytearray(os.urandom(size))
    near = b"\r\n--" + BOUNDARY[:-1]
    batch = files_module.BATCH_BYTES
    for edge in range(batch, size - batch, batch):
        for offset in (-len(near), -len(near) // 2, 0):
            data[edge + offset : edge + offset + len(near)] = near
    return bytes(data)


def test_a_large_upload_is_stored_byte_exact_under_its_sha256(server: str, data_dir: Path) -> None:
    data = tricky_content(LIMIT - 12345)
    response = post_multipart(server, multipart(data), "big")
    assert response.status_code == 200, response.text
    assert response.json()["size_bytes"] == len(data)
    assert blobs(data_dir) == {hashlib.sha256(data).hexdigest(): data}
    assert staged(data_dir) == []


def test_a_body_sent_in_small_pieces_is_stored_byte_exact(server: str, data_dir: Path) -> None:
    # Chunked, in pieces of odd sizes: the boundary and the part's edges fall anywhere.
    body = multipart(tricky_content(2 * files_module.BATCH_BYTES + 777))

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(body), 4093):
            yield body[start : start + 4093]

    response = post_multipart(server, pieces(), "pieces")
    assert response.status_code == 200, response.text
    [(digest, stored)] = blobs(data_dir).items()
    assert stored == body[len(part_head()) : -len(b"\r\n--" + BOUNDARY + b"--\r\n")]
    assert digest == hashlib.sha256(stored).hexdigest()


def test_uploads_at_the_same_time_keep_their_own_bytes(server: str, data_dir: Path) -> None:
    contents = [os.urandom(2 * 1000**2 + n) for n in range(3)]
    responses: list[httpx.Response] = []
    senders = [
        threading.Thread(
            target=lambda d=data: responses.append(post_multipart(server, multipart(d), "many"))
        )
        for data in contents
    ]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    assert [r.status_code for r in responses] == [200] * 3
    assert blobs(data_dir) == {hashlib.sha256(d).hexdigest(): d for d in contents}
    listed = httpx.get(f"{server}/v1/files", headers={"x-api-key": "many"}).json()["data"]
    assert sorted(f["size_bytes"] for f in listed) == sorted(len(d) for d in contents)


def raw_upload(server: str, key: str) -> socket.socket:
    """A socket with an upload's headers sent (chunked: no size is declared up front)."""
    host, port = httpx.URL(server).host, httpx.URL(server).port
    connection = socket.create_connection((host, port or 80), timeout=30)
    connection.sendall(
        b"POST /v1/files HTTP/1.1\r\nHost: test\r\nx-api-key: " + key.encode() + b"\r\n"
        b"Content-Type: multipart/form-data; boundary=" + BOUNDARY + b"\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    return connection


def send_chunk(connection: socket.socket, data: bytes) -> None:
    connection.sendall(b"%x\r\n%s\r\n" % (len(data), data))


def read_response(connection: socket.socket) -> tuple[int, dict[str, object]]:
    received = b""
    while b"\r\n\r\n" not in received:
        more = connection.recv(65536)
        assert more, f"the connection closed before a response: {received!r}"
        received += more
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        more = connection.recv(65536)
        assert more, "the connection closed mid-response"
        body += more
    return int(head.split(b" ")[1]), json.loads(body)


def test_a_body_over_the_limit_is_a_413_as_it_streams_with_nothing_left_staged(
    server: str, data_dir: Path
) -> None:
    # No content-length to refuse up front: the limit is found while the body streams, and
    # answered at once, though the client has not finished sending.
    connection = raw_upload(server, "over")
    with connection:
        send_chunk(connection, part_head())
        for _ in range(LIMIT // files_module.BATCH_BYTES + 2):
            send_chunk(connection, os.urandom(files_module.BATCH_BYTES))
        status, body = read_response(connection)
    assert status == 413
    assert body["type"] == "error"
    assert body["error"] == {
        "type": "request_too_large",
        "message": f"File exceeds the maximum allowed size of {LIMIT} bytes",
    }
    assert staged(data_dir) == [] and blobs(data_dir) == {}
    assert httpx.get(f"{server}/v1/files", headers={"x-api-key": "over"}).json()["data"] == []


def test_a_client_that_leaves_mid_upload_leaves_nothing_behind(
    server: str, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tercet.server")
    connection = raw_upload(server, "leaver")
    with connection:
        send_chunk(connection, part_head())
        for _ in range(2):
            send_chunk(connection, os.urandom(files_module.BATCH_BYTES))
        wait_for(lambda: any(p.stat().st_size > 0 for p in staged(data_dir)), "bytes are staged")
        # An abrupt close (a reset, not a goodbye), as when a client is killed.
        connection.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )
    wait_for(lambda: staged(data_dir) == [], "the staged upload is removed")
    wait_for(
        lambda: any("client went away" in r.getMessage() for r in caplog.records),
        "the server notes the client left",
    )
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert blobs(data_dir) == {}
    assert httpx.get(f"{server}/v1/files", headers={"x-api-key": "leaver"}).json()["data"] == []


def test_a_download_longer_than_its_chunks_arrives_whole(data_dir: Path) -> None:
    content = os.urandom(5 * (1 << 20) + 12345)  # several read chunks and a ragged end
    store = LocalFileStore(data_dir / "files")
    writer = store.begin()
    writer.write(content)
    made = store.commit(owner_of("reader"), writer, "out.bin", "application/octet-stream", True)
    store.close()
    config = ServerConfig(data_dir=data_dir, api_keys=[])
    with BackgroundServer(create_app(config, [ScriptedEngine(["ok"])])) as running:
        client = anthropic.Anthropic(base_url=running.base_url, api_key="reader", max_retries=0)
        assert client.beta.files.download(made.id).read() == content
        with httpx.stream(
            "GET", f"{running.base_url}/v1/files/{made.id}/content", headers={"x-api-key": "reader"}
        ) as response:
            assert response.headers["content-length"] == str(len(content))
            assert response.headers["content-type"] == "application/octet-stream"
            received = hashlib.sha256()
            for piece in response.iter_raw():
                received.update(piece)
        assert received.hexdigest() == hashlib.sha256(content).hexdigest()
        other = anthropic.Anthropic(base_url=running.base_url, api_key="other", max_retries=0)
        with pytest.raises(anthropic.NotFoundError):
            other.beta.files.download(made.id)

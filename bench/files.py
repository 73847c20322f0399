"""Files API throughput: upload and download of one large file, against a plain copy.

One run, side by side on the same disk. The server runs in its own process (as `tercet
serve` does, so its work and the client's never share one interpreter), with a scripted
model. Each transfer is timed with two clients:

- a bare one (the standard library's `http.client`, 1 MB reads and writes, from and to disk),
  whose own cost is a few system calls: its figure is the server's;
- httpx, the client the Python SDK uses: what an SDK user sees, the client's cost included.

An upload is compared with `cp` and an fsync of the copy (a file is synced before it is
listed); a download, which the client does not sync, with a plain `cp`. Wall time on a busy
machine measures the scheduler as much as the code, so the CPU time each side used (server,
client and `cp` processes together) is printed beside it.

    .venv/bin/python bench/files.py [--size-mb 200] [--trials 3]
    .venv/bin/python bench/files.py --quick   # a 2 MB file, 1 trial: the script works
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import statistics
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import httpx

from tercet.engine.scripted import ScriptedEngine
from tercet.files.store import LocalFileStore
from tercet.server.app import create_app, owner_of
from tercet.server.config import ServerConfig
from tercet.server.runner import BackgroundServer

KEY = "bench-files"
CHUNK = 1 << 20
BOUNDARY = "tercet-bench-files-boundary"


def serve(data_dir: Path, max_file_bytes: int, control: Connection) -> None:
    """The server under test, in a process of its own: sends its URL, then the CPU seconds
    it has used whenever asked, until told to stop."""
    config = ServerConfig(data_dir=data_dir, api_keys=[], max_file_bytes=max_file_bytes)
    with BackgroundServer(create_app(config, [ScriptedEngine(["ok"])])) as running:
        control.send(running.base_url)
        while control.recv() == "cpu":
            control.send(cpu_seconds(children=False))


def cpu_seconds(children: bool) -> float:
    """User and system time of this process (or of its waited-for children: `cp`)."""
    times = os.times()
    if children:
        return times.children_user + times.children_system
    return times.user + times.system


def timed_copy(source: Path, target: Path, sync: bool) -> float:
    started = time.perf_counter()
    subprocess.run(["cp", str(source), str(target)], check=True)
    if sync:
        descriptor = os.open(target, os.O_RDONLY)
        os.fsync(descriptor)
        os.close(descriptor)
    return time.perf_counter() - started


def bare_upload(base_url: str, source: Path) -> tuple[float, str]:
    """POST the file as multipart/form-data, 1 MB at a time; the seconds and the file's id."""
    head = (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{source.name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield head
        with source.open("rb", buffering=0) as payload:
            while chunk := payload.read(CHUNK):
                yield chunk
        yield tail

    address = urllib.parse.urlsplit(base_url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=600)
    started = time.perf_counter()
    connection.request(
        "POST",
        "/v1/files",
        body=body(),
        headers={
            "x-api-key": KEY,
            "content-type": f"multipart/form-data; boundary={BOUNDARY}",
            "content-length": str(len(head) + source.stat().st_size + len(tail)),
        },
    )
    response = connection.getresponse()
    answer = response.read()
    seconds = time.perf_counter() - started
    connection.close()
    if response.status != 200:
        raise RuntimeError(f"upload: {response.status} {answer[:200]!r}")
    return seconds, httpx.Response(200, content=answer).json()["id"]


def bare_download(base_url: str, file_id: str, target: Path) -> float:
    """GET the file's content into `target`, 1 MB at a time; the seconds."""
    address = urllib.parse.urlsplit(base_url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=600)
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    started = time.perf_counter()
    connection.request("GET", f"/v1/files/{file_id}/content", headers={"x-api-key": KEY})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"download: {response.status} {response.read()[:200]!r}")
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while size := response.readinto(buffer):
            os.write(descriptor, view[:size])
    finally:
        os.close(descriptor)
    seconds = time.perf_counter() - started
    connection.close()
    return seconds


def httpx_upload(base_url: str, source: Path) -> tuple[float, str]:
    started = time.perf_counter()
    with source.open("rb") as body:
        response = httpx.post(
            f"{base_url}/v1/files",
            files={"file": (source.name, body, "application/octet-stream")},
            headers={"x-api-key": KEY},
            timeout=600,
        )
    seconds = time.perf_counter() - started
    response.raise_for_status()
    return seconds, response.json()["id"]


def httpx_download(base_url: str, file_id: str, target: Path) -> float:
    started = time.perf_counter()
    with (
        httpx.stream(
            "GET",
            f"{base_url}/v1/files/{file_id}/content",
            headers={"x-api-key": KEY},
            timeout=600,
        ) as response,
        target.open("wb") as sink,
    ):
        response.raise_for_status()
        for chunk in response.iter_bytes(CHUNK):
            sink.write(chunk)
    return time.perf_counter() - started


def delete(base_url: str, file_id: str) -> None:
    """Untimed, between trials: every upload then writes a new blob, as new content does,
    rather than replacing the identical blob of the trial before."""
    httpx.delete(f"{base_url}/v1/files/{file_id}", headers={"x-api-key": KEY}).raise_for_status()


def made_by_the_platform(data_dir: Path, source: Path) -> str:
    """A downloadable copy of `source` in the store (uploads are not downloadable); its id."""
    store = LocalFileStore(data_dir / "files")
    writer = store.begin()
    with source.open("rb") as payload:
        while chunk := payload.read(CHUNK):
            writer.write(chunk)
    made = store.commit(owner_of(KEY), writer, source.name, "application/octet-stream", True)
    store.close()
    return made.id


def ratio(baseline: float, ours: float) -> str:
    """CPU seconds come in clock ticks (10 ms): a small run can measure none."""
    return f"{baseline / ours:.2f}" if ours > 0 else "-"


def measure(size_mb: int, trials: int) -> None:
    size = size_mb * 1000**2
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as scratch:
        work = Path(scratch)
        source = work / "payload.bin"
        with source.open("wb") as out:
            for _ in range(size_mb):
                out.write(os.urandom(1000**2))
        data_dir = work / "data"
        made = made_by_the_platform(data_dir, source)
        copy, target = work / "copy.bin", work / "down.bin"
        runs: dict[str, list[float]] = {}
        cpu: dict[str, list[float]] = {}

        def server_cpu() -> float:
            ours.send("cpu")
            used: float = ours.recv()
            return used

        def all_cpu() -> float:
            return server_cpu() + cpu_seconds(children=False) + cpu_seconds(children=True)

        def timed(label: str, run: Callable[[], float]) -> None:
            for stale in (copy, target):
                stale.unlink(missing_ok=True)  # every side writes a new file
            before = all_cpu()
            runs.setdefault(label, []).append(run())
            cpu.setdefault(label, []).append(all_cpu() - before)

        def upload(label: str, send: Callable[[str, Path], tuple[float, str]]) -> None:
            before = all_cpu()
            seconds, file_id = send(base_url, source)
            cpu.setdefault(label, []).append(all_cpu() - before)
            runs.setdefault(label, []).append(seconds)
            delete(base_url, file_id)

        ours, theirs = multiprocessing.get_context("spawn").Pipe()
        server = multiprocessing.get_context("spawn").Process(
            target=serve, args=(data_dir, size * 2, theirs), daemon=True
        )
        server.start()
        try:
            base_url = ours.recv()
            for _ in range(trials):  # interleaved, so a slow spell of the machine hits all
                timed("cp+fsync", lambda: timed_copy(source, copy, sync=True))
                upload("upload bare", bare_upload)
                upload("upload httpx", httpx_upload)
                timed("cp", lambda: timed_copy(source, copy, sync=False))
                timed("download bare", lambda: bare_download(base_url, made, target))
                timed("download httpx", lambda: httpx_download(base_url, made, target))
                assert target.stat().st_size == size
        finally:
            ours.send("stop")
            server.join(30)
    medians = {label: statistics.median(seconds) for label, seconds in runs.items()}
    cpu_medians = {label: statistics.median(seconds) for label, seconds in cpu.items()}
    print(f"file {size_mb} MB, median of {trials} trials, same disk, server in its own process")
    print(
        f"  {'':16}{'seconds':>9}{'MB/s':>9}{'vs cp':>8}  {'(spread)':12}{'CPU s':>7}{'vs cp':>7}"
    )
    for label, baseline in (
        ("cp+fsync", "cp+fsync"),
        ("upload bare", "cp+fsync"),
        ("upload httpx", "cp+fsync"),
        ("cp", "cp"),
        ("download bare", "cp"),
        ("download httpx", "cp"),
    ):
        seconds = medians[label]
        ratios = [medians[baseline] / s for s in runs[label]]
        spread = f"({min(ratios):.2f}-{max(ratios):.2f})"
        print(
            f"  {label:16}{seconds:>9.3f}{size_mb / seconds:>9.1f}"
            f"{medians[baseline] / seconds:>8.2f}  {spread:12}"
            f"{cpu_medians[label]:>7.2f}{ratio(cpu_medians[baseline], cpu_medians[label]):>7}"
        )
    print(
        "  vs cp: the copy's median time over this one's (1.00 is as fast as cp); uploads\n"
        "  against cp+fsync, downloads against cp. An upload includes sending, multipart\n"
        "  parsing, sha256, the write, fsync, rename and the SQLite row; a download the\n"
        "  server's read and send, and the client's receive and write. bare: http.client,\n"
        "  whose own cost is small, so its figure is the server's; httpx: the SDK's client,\n"
        "  its own cost included. CPU s: user+system seconds of server, client and cp."
    )
    for label, baseline in (("upload bare", "cp+fsync"), ("download bare", "cp")):
        print(f"  {label} vs {baseline}: {medians[baseline] / medians[label]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="the smallest run: the script works")
    args = parser.parse_args()
    if args.quick:
        args.size_mb, args.trials = 2, 1
    measure(args.size_mb, args.trials)


if __name__ == "__main__":
    main()

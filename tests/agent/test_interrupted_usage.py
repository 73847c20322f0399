"""A reply cut short still counts the tokens it used: its prompt as the server counted it
(message_start) and the output streamed so far, in the run's usage, its cost, the token budget
and the saved session. The real bundled model, served on loopback, through the official SDK;
every interrupt waits on the text it follows, never on a clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tercet.agent import (
    AgentConfig,
    AnthropicModel,
    AssistantMessage,
    Budget,
    ModelRequest,
    Result,
    TextDelta,
    cost_of,
    load_session,
)
from tercet.agent.model import ModelStreamItem
from tercet.engine.bundled import BUNDLED_MODEL_ID, bundled_model_path
from tercet.engine.llama import LlamaCppEngine
from tercet.server.app import create_app
from tercet.server.config import ServerConfig
from tercet.server.runner import BackgroundServer
from tests.agent.conftest import MakeAgent

pytestmark = pytest.mark.anyio
MODEL = AgentConfig.model  # a name with a list price, so the partial reply has a cost
TASK = "Write a very long story about a dragon and a knight, in many chapters."
SEEN = 24  # text deltas the test waits for before it interrupts


class RecordedModel:
    """The real model over HTTP, keeping the bodies it sent (to count their tokens)."""

    def __init__(self, base_url: str) -> None:
        # Greedy decoding: the reply to TASK is the same long story every time.
        self.model = AnthropicModel(
            base_url=base_url, api_key="any", max_retries=0, extra_body={"temperature": 0}
        )
        self.bodies: list[dict[str, Any]] = []

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelStreamItem, None]:
        self.bodies.append(request.body())
        async for item in self.model.stream(request):
            yield item

    async def context_window(self, model: str) -> int | None:
        return await self.model.context_window(model)

    async def aclose(self) -> None:
        await self.model.aclose()


@pytest.fixture(scope="module")
def one_thread_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server on loopback on its own bundled model, on one thread: llama.cpp's threads
    spin-wait, and on a busy 2-core machine two of them crawl (these tests run under load)."""
    engine = LlamaCppEngine(
        bundled_model_path(), model_id=BUNDLED_MODEL_ID, context_window=8192, threads=1
    )
    config = ServerConfig(data_dir=tmp_path_factory.mktemp("data"), api_keys=[])
    with BackgroundServer(create_app(config, [engine])) as running:
        yield running.base_url


@pytest.fixture
async def model(one_thread_server: str) -> AsyncGenerator[RecordedModel, None]:
    recorded = RecordedModel(one_thread_server)
    yield recorded
    await recorded.aclose()


async def prompt_tokens(client: anthropic.AsyncAnthropic, body: dict[str, Any]) -> int:
    """What count_tokens says the request's prompt is."""
    counted = await client.messages.count_tokens(
        **{key: value for key, value in body.items() if key != "max_tokens"}
    )
    return counted.input_tokens


async def text_tokens(client: anthropic.AsyncAnthropic, text: str) -> int:
    """The tokens of `text`: a user message holding it, less one holding nothing of it."""
    message: Any = [{"role": "user", "content": f"x{text}"}]
    with_text = await client.messages.count_tokens(model=MODEL, messages=message)
    bare = await client.messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "x"}]
    )
    return with_text.input_tokens - bare.input_tokens


def saved_result(path: str | None) -> Result:
    assert path is not None
    last = load_session(Path(path)).events[-1]
    assert isinstance(last, Result)
    return last


async def test_an_interrupted_reply_counts_its_prompt_and_the_tokens_streamed(
    make_agent: MakeAgent, model: RecordedModel
) -> None:
    agent = make_agent(model, model=MODEL, max_tokens=2048)
    text, seen = "", 0
    async for event in agent.run(TASK):
        if isinstance(event, TextDelta):
            text, seen = text + event.text, seen + 1
            if seen == SEEN:
                agent.interrupt()  # as the first Ctrl-C does: the run stops at its next delta
        assert not isinstance(event, AssistantMessage)  # the reply never finished
        if isinstance(event, Result):
            result = event
    assert (result.reason, result.turns, seen) == ("interrupted", 1, SEEN)
    usage, client = result.usage, model.model.client
    (body,) = model.bodies
    assert usage.prompt_tokens == await prompt_tokens(client, body)
    # One delta a token: those shown, and the one that arrived as the run stopped.
    assert usage.output_tokens == SEEN + 1
    assert abs(await text_tokens(client, text) - SEEN) <= 2  # the text shown is that long
    assert result.estimated_output_tokens == usage.output_tokens
    assert result.cost_usd == cost_of(MODEL, usage) > 0
    assert saved_result(result.trajectory) == result


async def test_a_cancelled_run_saves_the_tokens_of_the_reply_it_cut(
    make_agent: MakeAgent, model: RecordedModel
) -> None:
    """A cancelled task (a second Ctrl-C) ends the run where it waits: the result the loop
    saves as it goes counts the reply so far."""
    agent = make_agent(model, model=MODEL, max_tokens=2048)
    text, seen = "", 0

    async def consume() -> None:
        nonlocal text, seen
        async for event in agent.run(TASK):
            if isinstance(event, TextDelta):
                text, seen = text + event.text, seen + 1
                if seen == SEEN:
                    current = asyncio.current_task()
                    assert current is not None
                    current.cancel()  # delivered where the run next waits for the model

    task = asyncio.create_task(consume())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert agent.session_id is not None
    result = saved_result(str(agent.sessions.path(agent.session_id)))
    assert (result.reason, result.message) == ("interrupted", "the run was cancelled")
    usage, client = result.usage, model.model.client
    (body,) = model.bodies
    assert usage.prompt_tokens == await prompt_tokens(client, body)
    # Everything shown counts; a delta still on its way to the run may too.
    assert seen >= SEEN and seen <= usage.output_tokens <= seen + 1
    assert abs(await text_tokens(client, text) - seen) <= 2
    assert result.estimated_output_tokens == usage.output_tokens
    assert result.cost_usd == cost_of(MODEL, usage) > 0


async def test_a_token_budget_stops_a_reply_as_it_streams(
    make_agent: MakeAgent, model: RecordedModel
) -> None:
    """The budget counts the reply on its way: it ends a long one at the limit, not after."""
    allowed_output = 30
    probe = make_agent(model, model=MODEL, max_tokens=1, budget=Budget(max_turns=1))
    prompt = (await probe.run_until_done(TASK)).usage.prompt_tokens  # the server's own count
    limit = prompt + allowed_output
    agent = make_agent(model, model=MODEL, max_tokens=2048, budget=Budget(max_total_tokens=limit))
    result = await agent.run_until_done(TASK)
    assert (result.reason, result.turns) == ("max_total_tokens", 1), result.message
    assert result.message == f"the run used {limit} tokens of {limit}"
    assert (result.usage.prompt_tokens, result.usage.output_tokens) == (prompt, allowed_output)
    assert saved_result(result.trajectory) == result

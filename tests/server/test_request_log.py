"""The operator's log: one line per Messages request when it ends, and progress lines while a
long prompt is prefilled. A real server on the bundled model, with API keys, driven by the
official SDK; the lines are read from the `tercet.server` logger."""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tercet.engine.base import GenerationEvent, PreparedPrompt, SamplingParams
from tercet.engine.bundled import BUNDLED_MODEL_ID, bundled_model_path
from tercet.engine.llama import LlamaCppEngine
from tercet.engine.scripted import ScriptedEngine
from tercet.server.app import create_app
from tercet.server.config import ServerConfig
from tercet.server.request_log import PrefillLog
from tercet.server.runner import BackgroundServer
from tercet.wire.errors import OverloadedError
from tests.conftest import CLAUDE_MODEL

pytestmark = pytest.mark.timeout(300)

KEY = "sk-tercet-log-test-5521"
KEY_ID = hashlib.sha256(KEY.encode()).hexdigest()[:12]
GREEDY = {"temperature": 0}
BATCH = 64  # the engine's prefill batch: small, so a short prompt takes several
WORDS = ["sea", "stone", "river", "cloud", "apple", "green", "house", "light"]  # a token each
_serial = itertools.count()


class Lines(logging.Handler):
    """Collects `tercet.server` records and lets a test wait for one (set by the server's
    threads as they log; no polling of a clock)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.records.append(record)
            self._changed.notify_all()

    def of(self, request_id: str) -> list[str]:
        with self._changed:
            return [r.getMessage() for r in self.records if r.getMessage().startswith(request_id)]

    def wait_for(self, found: Callable[[], bool], timeout: float = 120) -> None:
        with self._changed:
            assert self._changed.wait_for(found, timeout), "the line never came"


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("tercet.server")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Keys required; a progress line after every batch of a prefill (interval 0)."""
    engine = LlamaCppEngine(bundled_model_path(), model_id=BUNDLED_MODEL_ID, batch_size=BATCH)
    config = ServerConfig(
        data_dir=tmp_path_factory.mktemp("data"), api_keys=[KEY], prefill_progress_interval_s=0
    )
    with BackgroundServer(create_app(config, [engine])) as running:
        yield running.base_url


@pytest.fixture
def client(server: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server, api_key=KEY, max_retries=0)


def fields(line: str) -> dict[str, str]:
    """`name=value` pairs of a request line."""
    return dict(re.findall(r"(\w+)=(\S+)", line))


def end_line(handler: Lines, request_id: str) -> dict[str, str]:
    ends = [line for line in handler.of(request_id) if " status=" in line]
    assert len(ends) == 1, handler.of(request_id)  # exactly one line when it ends
    return fields(ends[0])


def long_prompt(tokens_at_least: int) -> str:
    """About that many tokens, different from the start every call (nothing to reuse)."""
    return f"{next(_serial)}: " + " ".join(WORDS[i % len(WORDS)] for i in range(tokens_at_least))


def test_a_finished_request_says_what_it_cost(client: anthropic.Anthropic, lines: Lines) -> None:
    message = client.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=16,
        messages=[{"role": "user", "content": f"Write about the sea. ({next(_serial)})"}],
        extra_body=GREEDY,
    )
    request_id = message._request_id
    assert request_id is not None
    line = end_line(lines, request_id)  # written before the answer's last byte went out
    usage = message.usage
    assert line["status"] == "200" and "error" not in line
    assert line["key"] == KEY_ID
    assert line["model"] == CLAUDE_MODEL
    assert int(line["input_tokens"]) == usage.input_tokens
    assert int(line["cache_read_tokens"]) == (usage.cache_read_input_tokens or 0)
    assert int(line["cache_write_tokens"]) == (usage.cache_creation_input_tokens or 0)
    assert int(line["output_tokens"]) == usage.output_tokens
    assert line["stop"] == message.stop_reason
    assert int(line["prefill_tokens"]) <= usage.input_tokens
    assert float(line["prefill_s"]) > 0 and float(line["prefill_tok_s"]) > 0
    assert float(line["total_s"]) >= float(line["prefill_s"])
    if usage.output_tokens > 1:
        assert float(line["decode_tok_s"]) > 0
        assert 0 < float(line["ttft_s"]) <= float(line["total_s"])
    # The structured form rides on the record, for JSON log handlers.
    record = next(r for r in lines.records if r.getMessage().startswith(f"{request_id} status="))
    assert record.levelno == logging.INFO
    assert record.request["output_tokens"] == usage.output_tokens  # type: ignore[attr-defined]


def test_a_stream_logs_the_same_line(client: anthropic.Anthropic, lines: Lines) -> None:
    with client.messages.stream(
        model=CLAUDE_MODEL,
        max_tokens=8,
        messages=[{"role": "user", "content": f"Name a bird. ({next(_serial)})"}],
        extra_body=GREEDY,
    ) as stream:
        final = stream.get_final_message()
        request_id = stream.response.headers["request-id"]
    line = end_line(lines, request_id)
    assert line["status"] == "200"
    assert int(line["output_tokens"]) == final.usage.output_tokens
    assert int(line["input_tokens"]) == final.usage.input_tokens
    assert line["stop"] == final.stop_reason


def test_errors_are_logged_with_status_and_type_and_never_the_key(
    server: str, client: anthropic.Anthropic, lines: Lines
) -> None:
    failures: list[tuple[anthropic.APIStatusError, str]] = []
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(
            model=CLAUDE_MODEL,
            max_tokens=-1,
            messages=[{"role": "user", "content": "Hello."}],
        )
    failures.append((bad.value, "invalid_request_error"))
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(
            model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "Hello."}]
        )
    failures.append((missing.value, "not_found_error"))
    wrong_key = "sk-wrong-key-do-not-log-8831"
    stranger = anthropic.Anthropic(base_url=server, api_key=wrong_key, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as refused:
        stranger.messages.create(
            model=CLAUDE_MODEL, max_tokens=5, messages=[{"role": "user", "content": "Hello."}]
        )
    failures.append((refused.value, "authentication_error"))
    for error, error_type in failures:
        request_id = error.response.headers["request-id"]
        line = end_line(lines, request_id)
        assert line["status"] == str(error.status_code)
        assert line["error"] == error_type
        assert "output_tokens" not in line
    refused_line = end_line(lines, refused.value.response.headers["request-id"])
    assert refused_line["key"] == hashlib.sha256(wrong_key.encode()).hexdigest()[:12]
    everything = "\n".join(r.getMessage() for r in lines.records)
    assert KEY not in everything and wrong_key not in everything


def test_a_long_prefill_logs_progress_then_the_line(
    client: anthropic.Anthropic, lines: Lines
) -> None:
    message = client.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=4,
        messages=[{"role": "user", "content": long_prompt(4 * BATCH)}],
        extra_body=GREEDY,
    )
    request_id = message._request_id
    assert request_id is not None
    said = lines.of(request_id)
    total = message.usage.input_tokens
    assert 4 * BATCH < total < 5 * BATCH
    progress = [re.search(r"prefill (\d+)/(\d+) tokens", line) for line in said[:-1]]
    done = [int(m.group(1)) for m in progress if m]
    assert len(done) == len(said) - 1 >= 3  # one a batch (interval 0); the last is the end line
    assert all(int(m.group(2)) == total for m in progress if m)
    assert done == sorted(done) and done[-1] < total  # the last batch ends it: no line for it
    assert said[-1].startswith(f"{request_id} status=200")
    assert 0 < int(fields(said[-1])["prefill_tokens"]) <= total  # a reused prefix is not counted


def disconnects(server: str) -> float:
    scraped = httpx.get(f"{server}/metrics").text
    return sum(
        s.value
        for family in text_string_to_metric_families(scraped)
        for s in family.samples
        if s.name == "tercet_http_requests_total"
        and s.labels == {"method": "POST", "route": "/v1/messages", "status": "499"}
    )


def test_a_client_that_leaves_is_logged_and_counted(server: str, lines: Lines) -> None:
    before = disconnects(server)
    body: dict[str, Any] = {
        "model": CLAUDE_MODEL,
        "max_tokens": 2000,
        "stream": True,
        "messages": [{"role": "user", "content": long_prompt(4 * BATCH)}],
    }
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    with httpx.stream(
        "POST", f"{server}/v1/messages", json=body, headers=headers, timeout=60
    ) as response:
        request_id = response.headers["request-id"]
        # Leave as soon as the prefill is under way: three batches and a reply are still ahead.
        lines.wait_for(lambda: any(" prefill " in line for line in lines.of(request_id)))
    lines.wait_for(lambda: any(" status=" in line for line in lines.of(request_id)))
    line = end_line(lines, request_id)
    assert line["status"] == "499" and line["error"] == "client_disconnected"
    assert line["key"] == KEY_ID
    assert int(line["input_tokens"]) > 4 * BATCH  # the prompt is known; no output is claimed
    assert "output_tokens" not in line
    assert disconnects(server) == before + 1


def test_progress_lines_wait_for_the_interval(lines: Lines) -> None:
    # The hook as the engine calls it: a start, then a batch at a time. An hour's interval
    # outlasts any prefill: no progress line, but the totals still add up.
    progress = PrefillLog("req_x", interval_s=3600)
    for done in (100, 612, 1124, 1500):
        progress(done, 1500)
    progress(0, 40)  # a second prefill (after a server tool's result)
    progress(40, 40)
    assert lines.of("req_x") == []
    assert progress.tokens == [1400, 40]
    assert len(progress.seconds) == 2 and all(s >= 0 for s in progress.seconds)


class FailingMidStream(ScriptedEngine):
    """Fails once the stream has begun (an upstream that refuses, say)."""

    async def generate(
        self, prompt: PreparedPrompt, params: SamplingParams
    ) -> AsyncGenerator[GenerationEvent, None]:
        raise OverloadedError("the upstream is overloaded")
        yield  # pragma: no cover (makes this a generator)


def test_an_error_in_the_middle_of_a_stream_is_logged_under_its_status(
    tmp_path: Path, lines: Lines
) -> None:
    config = ServerConfig(data_dir=tmp_path, api_keys=[])
    with BackgroundServer(create_app(config, [FailingMidStream(["x"])])) as running:
        client = anthropic.Anthropic(base_url=running.base_url, api_key="k", max_retries=0)
        with (
            pytest.raises(anthropic.APIStatusError) as failed,
            client.messages.stream(
                model=CLAUDE_MODEL, max_tokens=5, messages=[{"role": "user", "content": "Hi."}]
            ) as stream,
        ):
            request_id = stream.response.headers["request-id"]
            assert stream.response.status_code == 200  # the stream had begun
            stream.get_final_message()
        assert "overloaded" in str(failed.value)
        line = end_line(lines, request_id)
        assert line["status"] == "529" and line["error"] == "overloaded_error"
        # No keys configured: the key presented still names the request's owner.
        assert line["key"] == hashlib.sha256(b"k").hexdigest()[:12]
        assert disconnects(running.base_url) == 0
        scraped = httpx.get(f"{running.base_url}/metrics").text
        counted = [
            s
            for family in text_string_to_metric_families(scraped)
            for s in family.samples
            if s.name == "tercet_http_requests_total" and s.labels["route"] == "/v1/messages"
        ]
        assert [(s.labels["status"], s.value) for s in counted] == [("529", 1.0)]

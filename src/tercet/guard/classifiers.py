"""Constitutional classifiers: judge a request, or an answer as it streams, against a
constitution.

A `Classifier` takes an `Exchange` (the stage, the conversation, the latest user turn, the
answer so far) and returns a `Decision`. Two kinds exist:

- `JudgeClassifier` asks a Messages API model, the prompt built from the constitution
  (classifier.toml) and the answer forced through a `verdict` tool, so that it parses;
- any in-process object with the same `classify` method (`load_factory("module:name")` builds
  one from an operator's code).

`CachedClassifier` keeps decisions by the exchange's content hash, and puts a time limit on
each: a classifier that fails or runs out of time raises `ClassifierError`, and the caller
decides what that means (the server fails closed by default).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import json
import tomllib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from time import perf_counter
from typing import Any, Literal, Protocol

from tercet.guard.constitution import Constitution

CLASSIFIER_PROMPT_FILE = Path(__file__).with_name("classifier.toml")
VERDICT_TOOL = "verdict"

Stage = Literal["input", "output"]


class ClassifierError(RuntimeError):
    """A classifier could not decide: it failed, timed out, or answered something unreadable."""


@dataclass(frozen=True)
class Exchange:
    """What a classifier judges. `input`: the latest user turn (`prompt`) in the context of the
    conversation before it. `output`: the answer so far to that turn."""

    stage: Stage
    prompt: str
    context: str = ""
    answer: str = ""

    @property
    def digest(self) -> str:
        parts = [self.stage, self.context, self.prompt, self.answer]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


@dataclass(frozen=True)
class Decision:
    """A classifier's judgement, and what it cost (tokens of the judge model, seconds)."""

    flagged: bool
    category: str | None = None  # the constitution's category, when flagged
    explanation: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    cached: bool = False


class Classifier(Protocol):
    """The in-process interface: anything with this method is a classifier."""

    async def classify(self, exchange: Exchange) -> Decision: ...


@dataclass(frozen=True)
class JudgeReply:
    """A Messages API reply as the judge reads it: content blocks (dicts) and token usage."""

    content: list[dict[str, Any]]
    input_tokens: int = 0
    output_tokens: int = 0


class JudgeModel(Protocol):
    """Sends one Messages API request body, returns the reply (tercet's server in process, an
    upstream server through the SDK, a scripted one in tests)."""

    async def create(self, body: dict[str, Any]) -> JudgeReply: ...


@dataclass(frozen=True)
class ClassifierPrompt:
    """The judge's prompt (classifier.toml, or a file of the same shape)."""

    system: str
    input: str
    output: str
    max_tokens: int = 64

    @classmethod
    def load(cls, path: Path = CLASSIFIER_PROMPT_FILE) -> ClassifierPrompt:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"{path}: cannot read the classifier's prompt: {exc}") from None
        fields = {k: data.get(k) for k in ("system", "input", "output")}
        for key, value in fields.items():
            if not isinstance(value, str):
                raise ValueError(f"{path}: `{key}` must be a string")
        if "{constitution}" not in str(fields["system"]):
            raise ValueError(f"{path}: `system` must hold {{constitution}}")
        max_tokens = data.get("max_tokens", 64)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise ValueError(f"{path}: `max_tokens` must be a positive integer")
        return cls(str(fields["system"]), str(fields["input"]), str(fields["output"]), max_tokens)


def render_constitution(constitution: Constitution) -> str:
    """The constitution written out for a judge model to read."""
    lines = [constitution.preamble, ""] if constitution.preamble else []
    for heading, categories in (
        ("Restricted categories (block):", constitution.restricted),
        (
            "Allowed categories (allow, even when they sound close to a restricted one):",
            constitution.allowed,
        ),
    ):
        if not categories:
            continue
        lines.append(heading)
        for category in categories:
            lines.append(f"- {category.name}: {category.description}")
            lines.extend(f"  Example: {example}" for example in category.examples)
        lines.append("")
    return "\n".join(lines).strip()


class JudgeClassifier:
    """A Messages API model judges each exchange against the constitution."""

    def __init__(
        self,
        model: JudgeModel,
        constitution: Constitution,
        *,
        model_name: str,
        prompt: ClassifierPrompt | None = None,
        max_chars: int = 8000,
    ) -> None:
        self.model = model
        self.constitution = constitution
        self.model_name = model_name
        self.prompt = prompt or ClassifierPrompt.load()
        self.max_chars = max_chars
        self._system = self.prompt.system.replace(
            "{constitution}", render_constitution(constitution)
        )
        names = [c.name for c in constitution.restricted]
        self._tool = {
            "name": VERDICT_TOOL,
            "description": "Record the classifier's decision.",
            "input_schema": {
                "type": "object",
                "properties": {
                    "decision": {"type": "string", "enum": ["allow", "block"]},
                    "category": {"type": "string", "enum": [*names, "none"]},
                },
                "required": ["decision", "category"],
            },
        }

    def request(self, exchange: Exchange) -> dict[str, Any]:
        """The Messages API request body that judges `exchange`."""
        template = self.prompt.input if exchange.stage == "input" else self.prompt.output
        # The most recent text matters most: a long context or answer keeps its end.
        user = (
            template.replace("{context}", _tail(exchange.context, self.max_chars) or "(none)")
            .replace("{prompt}", _tail(exchange.prompt, self.max_chars))
            .replace("{answer}", _tail(exchange.answer, self.max_chars))
        )
        return {
            "model": self.model_name,
            "max_tokens": self.prompt.max_tokens,
            "temperature": 0.0,
            # The constitution is the same for every check: cached after the first.
            "system": [
                {"type": "text", "text": self._system, "cache_control": {"type": "ephemeral"}}
            ],
            "messages": [{"role": "user", "content": user}],
            "tools": [self._tool],
            "tool_choice": {"type": "tool", "name": VERDICT_TOOL},
        }

    async def classify(self, exchange: Exchange) -> Decision:
        began = perf_counter()
        reply = await self.model.create(self.request(exchange))
        flagged, category = self._read(reply.content)
        restricted = self.constitution.category(category) if category else None
        explanation = None
        if flagged:
            what = "request" if exchange.stage == "input" else "answer"
            explanation = f"The {exchange.stage} classifier flagged this {what}" + (
                f" as {restricted.name}: {restricted.description}" if restricted else "."
            )
        return Decision(
            flagged,
            restricted.name if flagged and restricted else None,
            explanation,
            reply.input_tokens,
            reply.output_tokens,
            perf_counter() - began,
        )

    def _read(self, content: list[dict[str, Any]]) -> tuple[bool, str | None]:
        for block in content:
            if block.get("type") == "tool_use" and block.get("name") == VERDICT_TOOL:
                arguments = block.get("input")
                if isinstance(arguments, dict) and arguments.get("decision") in ("allow", "block"):
                    category = arguments.get("category")
                    return arguments["decision"] == "block", (
                        category if isinstance(category, str) and category != "none" else None
                    )
                raise ClassifierError(f"the judge's verdict has no decision: {arguments!r:.120}")
        text = " ".join(str(b.get("text", "")) for b in content if b.get("type") == "text")
        words = text.strip().split()
        first = words[0].strip("*.:,").upper() if words else ""
        if first in ("ALLOW", "BLOCK"):
            category = words[1].strip("*.:,") if len(words) > 1 else None
            return first == "BLOCK", category
        raise ClassifierError(f"the judge answered neither a verdict nor ALLOW/BLOCK: {text:.120}")


class CachedClassifier:
    """Decisions kept by the exchange's content hash (LRU), each check under a time limit.

    The same conversation sent again, or an answer prefix already judged, costs nothing. The
    key includes `scope` (the constitution's digest): another constitution never reuses one."""

    def __init__(
        self, inner: Classifier, *, scope: str, timeout_s: float, size: int = 4096
    ) -> None:
        self.inner = inner
        self.scope = scope
        self.timeout_s = timeout_s
        self.size = size
        self._decisions: OrderedDict[str, Decision] = OrderedDict()

    async def classify(self, exchange: Exchange) -> Decision:
        key = self.scope + exchange.digest
        cached = self._decisions.get(key)
        if cached is not None:
            self._decisions.move_to_end(key)
            return replace(cached, input_tokens=0, output_tokens=0, seconds=0.0, cached=True)
        began = perf_counter()
        try:
            decision = await asyncio.wait_for(self.inner.classify(exchange), self.timeout_s)
        except TimeoutError:
            raise ClassifierError(f"no decision within {self.timeout_s:g} s") from None
        except ClassifierError:
            raise
        except Exception as exc:  # any failure of the classifier is the caller's to handle
            raise ClassifierError(f"{type(exc).__name__}: {exc}") from exc
        decision = replace(decision, seconds=perf_counter() - began)
        self._decisions[key] = decision
        if len(self._decisions) > self.size:
            self._decisions.popitem(last=False)
        return decision


def load_factory(spec: str) -> Callable[[Constitution], Classifier]:
    """An operator's in-process classifier: 'package.module:name', where `name` is called with
    the constitution and returns an object with `async classify(exchange) -> Decision`."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"in_process: {spec!r} is not 'module:name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"in_process: cannot import {module_name!r}: {exc}") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ValueError(f"in_process: {module_name!r} has no callable {attribute!r}")
    return factory  # type: ignore[no-any-return]


class AnthropicJudgeModel:
    """A judge model behind any Messages API server (tercet, Anthropic), through the official
    SDK."""

    def __init__(self, base_url: str | None, api_key: str | None, timeout_s: float) -> None:
        import anthropic

        self._client = anthropic.AsyncAnthropic(
            base_url=base_url, api_key=api_key or "none", timeout=timeout_s, max_retries=1
        )

    async def create(self, body: dict[str, Any]) -> JudgeReply:
        message = await self._client.messages.create(**body)
        return JudgeReply(
            [block.model_dump() for block in message.content],
            message.usage.input_tokens
            + (message.usage.cache_read_input_tokens or 0)
            + (message.usage.cache_creation_input_tokens or 0),
            message.usage.output_tokens,
        )

    async def aclose(self) -> None:
        await self._client.close()


def _tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-limit:]

"""The judge detector: a Messages API model asked whether content holds injected instructions.

It takes any object with the agent's `Model.stream` method (tercet's server, Anthropic's API,
an in-process model, a scripted one in tests), typed structurally here so that the guard
needs nothing from the agent. The prompt is data (judge.toml, or a file of the same shape).
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tercet.guard.detect import Detection

JUDGE_PROMPT_FILE = Path(__file__).with_name("judge.toml")


class MessagesModel(Protocol):
    """What the judge needs of a model: the agent's `Model.stream` (a request with `body()`
    in, items out, the last one with the reply's `content` blocks)."""

    def stream(self, request: Any) -> AsyncIterator[Any]: ...


@dataclass(frozen=True)
class JudgeRequest:
    """A Messages API request, shaped as the agent's `ModelRequest` (models read `body()`)."""

    model: str
    max_tokens: int
    messages: list[dict[str, Any]]
    system: list[dict[str, Any]] = field(default_factory=list)
    tools: list[dict[str, Any]] = field(default_factory=list)
    thinking: dict[str, Any] | None = None
    tool_choice: dict[str, Any] | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": self.messages,
        }
        if self.system:
            body["system"] = self.system
        return body


@dataclass(frozen=True)
class JudgePrompt:
    """The judge's system prompt, its user message (with {source} and {text}) and answer cap."""

    system: str
    user: str
    max_tokens: int = 256

    @classmethod
    def load(cls, path: Path = JUDGE_PROMPT_FILE) -> JudgePrompt:
        """A prompt file; ValueError naming the file and what is wrong."""
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"{path}: cannot read the judge's prompt: {exc}") from None
        system, user, max_tokens = data.get("system"), data.get("user"), data.get("max_tokens", 256)
        if not isinstance(system, str) or not isinstance(user, str) or "{text}" not in user:
            raise ValueError(f"{path}: needs `system` and `user` strings, `user` with {{text}}")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise ValueError(f"{path}: `max_tokens` must be a positive integer")
        return cls(system, user, max_tokens)


class JudgeDetector:
    """Asks `model` (requests naming `model_name`) whether a text holds an injection. Text
    beyond `max_chars` is cut (its start is judged). A judge that cannot answer raises: the
    guard then withholds the content (it never fails open)."""

    name = "judge"

    def __init__(
        self,
        model: MessagesModel,
        model_name: str = "claude-haiku-4-5",
        *,
        prompt: JudgePrompt | None = None,
        max_chars: int = 20_000,
        source: str = "a tool",
    ) -> None:
        self.model = model
        self.model_name = model_name
        self.prompt = prompt or JudgePrompt.load()
        self.max_chars = max_chars
        self.source = source

    async def adetect(self, text: str) -> Sequence[Detection]:
        shown = text[: self.max_chars]
        request = JudgeRequest(
            model=self.model_name,
            max_tokens=self.prompt.max_tokens,
            system=[{"type": "text", "text": self.prompt.system}],
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": self.prompt.user.replace("{source}", self.source).replace(
                                "{text}", shown
                            ),
                        }
                    ],
                }
            ],
        )
        reply: list[dict[str, Any]] | None = None
        async for item in self.model.stream(request):
            content = getattr(item, "content", None)
            if isinstance(content, list):
                reply = content
        if reply is None:
            raise RuntimeError("the judge model's stream ended without a reply")
        answer = "".join(str(b.get("text", "")) for b in reply if b.get("type") == "text").strip()
        verdict, _, quote = answer.partition("\n")
        word = verdict.strip().strip("*.:").upper()
        if word.startswith("CLEAN"):
            return []
        if not word.startswith("INJECTION"):
            raise RuntimeError(f"the judge answered neither INJECTION nor CLEAN: {verdict[:80]!r}")
        quote = quote.strip().strip("\"'`“”")
        start = text.find(quote) if quote else -1
        if start < 0:
            return [Detection(self.name, "judge", 0, len(text), text, "the judge model")]
        return [Detection(self.name, "judge", start, start + len(quote), quote, "the judge model")]

    def detect(self, text: str) -> Sequence[Detection]:
        """`adetect` on a fresh event loop in a worker thread (for callers without a loop;
        the model must not be tied to another loop)."""
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, self.adetect(text)).result()

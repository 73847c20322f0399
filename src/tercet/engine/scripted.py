"""A deterministic engine that replies from a script: for testing the server's own control flow.

It exercises queueing, cancellation and the stream protocol without a model, so those tests are
exact and fast. It is never evidence that a feature works with a real model.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

from tercet.engine.base import (
    Conversation,
    Finish,
    GenerationEvent,
    ModelSpec,
    PreparedPrompt,
    SamplingParams,
    TextChunk,
    ToolCallDelta,
    ToolCallStart,
)
from tercet.engine.chat_template import execution_text
from tercet.engine.stops import StopSequenceMatcher
from tercet.wire.content import MCPToolResultBlockParam, ServerToolResultBlockParam


@dataclass(frozen=True)
class ScriptedCall:
    """A scripted reply that is one tool call."""

    name: str
    input: dict[str, Any]


class ScriptedEngine:
    """Replies with `replies` in turn (cycling), one word per token, `delay` seconds per token;
    a `ScriptedCall` reply is a tool call.

    `log` records what happened to each generation: "finished" or "cancelled"; `prompts` the
    text of each prompt it was given (tool results included); `conversations` each
    conversation it was asked to prepare (the tools offered included); `sampling` the
    parameters of each generation (the tool policy included).
    """

    def __init__(
        self,
        replies: Sequence[str | ScriptedCall] = ("Hello from the script.",),
        *,
        model_id: str = "scripted",
        context_window: int = 4096,
        delay: float = 0.0,
    ) -> None:
        self._replies = list(replies)
        self._turn = 0
        self.delay = delay
        self.log: list[str] = []
        self.prompts: list[str] = []
        self.conversations: list[Conversation] = []
        self.sampling: list[SamplingParams] = []
        self._spec = ModelSpec(
            id=model_id,
            display_name="Scripted test engine",
            context_window=context_window,
            max_output_tokens=context_window,
        )

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    async def prepare(self, conversation: Conversation) -> PreparedPrompt:
        self.conversations.append(conversation)
        parts = [conversation.system_text or ""]
        parts += [f"{t.role}: {_text(b)}" for t in conversation.turns for b in t.blocks]
        text = "\n".join(parts)
        self.prompts.append(text)
        return PreparedPrompt(tokens=list(range(len(text.split()) + 1)), text=text)

    async def generate(
        self, prompt: PreparedPrompt, params: SamplingParams
    ) -> AsyncGenerator[GenerationEvent, None]:
        self.sampling.append(params)
        if params.max_tokens == 0:
            yield Finish("max_tokens", 0)
            return
        reply = self._replies[self._turn % len(self._replies)]
        self._turn += 1
        if isinstance(reply, ScriptedCall):
            yield ToolCallStart(reply.name)
            yield ToolCallDelta(json.dumps(reply.input))
            self.log.append("finished")
            yield Finish("tool_use", 1)
            return
        stops = StopSequenceMatcher(params.stop_sequences)
        finished = False
        try:
            words = re.findall(r"\s*\S+", reply)
            for count, word in enumerate(words, start=1):
                if self.delay:
                    await asyncio.sleep(self.delay)
                scan = stops.feed(word)
                if scan.release:
                    yield TextChunk(scan.release)
                if scan.matched is not None:
                    finished = True
                    yield Finish("stop_sequence", count, scan.matched)
                    return
                if count >= params.max_tokens:
                    finished = True
                    yield Finish("max_tokens", count)
                    return
            if rest := stops.flush():
                yield TextChunk(rest)
            finished = True
            yield Finish("end_turn", len(words))
        finally:
            self.log.append("finished" if finished else "cancelled")

    def cache_stats(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def _text(block: object) -> str:
    if isinstance(block, ServerToolResultBlockParam):
        return execution_text(block.content)
    if isinstance(block, MCPToolResultBlockParam):
        content = block.content
        return content if isinstance(content, str) else " ".join(b.text for b in content)
    return str(getattr(block, "text", ""))

"""The seam between the server and a model: the `Engine` protocol and what flows across it.

The server hands an engine a `Conversation` (validated wire blocks, roles normalised) and gets
back token counts and a stream of `TextChunk`s ending in one `Finish`. How a conversation becomes
a prompt (chat templates, tool formats, reasoning markers) is the engine's business alone.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from tercet.wire.base import CacheControl
from tercet.wire.content import ContentBlockParam, TextBlockParam
from tercet.wire.requests import CustomToolParam

if TYPE_CHECKING:
    from tercet.cache.store import CacheStats

CacheTTL = Literal["5m", "1h"]
# Told `(tokens evaluated so far, tokens in the prompt)` once as a prefill starts and after each
# batch it evaluates, on the engine's thread. Engines that cannot see their prefill never call it.
PrefillProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class Turn:
    """One turn of the conversation, with same-role neighbours already merged."""

    role: Literal["system", "user", "assistant"]
    blocks: Sequence[ContentBlockParam]


@dataclass(frozen=True)
class Breakpoint:
    """A prompt-cache breakpoint: the prompt up to the end of block `block` (an index into
    `Conversation.blocks()`) is cached for `ttl`."""

    block: int
    ttl: CacheTTL = "5m"


@dataclass(frozen=True)
class Conversation:
    """Everything that makes up a prompt. A final assistant turn is a prefill to continue.

    The prompt is read in the order tools, system, turns (`blocks()`), the order in which
    Anthropic's prompt cache builds its prefixes; engines render it in that order.
    """

    system: Sequence[TextBlockParam]
    turns: Sequence[Turn]
    tools: Sequence[CustomToolParam] = ()  # every tool the model may call, with its schema
    thinking: bool = False  # the reply starts with a thinking phase
    breakpoints: Sequence[Breakpoint] = ()  # in prompt order
    # Who may read the prefixes this prompt caches: requests in other scopes never share them.
    cache_scope: str = ""

    @property
    def prefill(self) -> Turn | None:
        return self.turns[-1] if self.turns and self.turns[-1].role == "assistant" else None

    @property
    def system_text(self) -> str | None:
        return "\n".join(b.text for b in self.system) or None

    def blocks(self) -> list[CustomToolParam | ContentBlockParam]:
        """Every block of the prompt, in prompt order."""
        return [*self.tools, *self.system, *(b for t in self.turns for b in t.blocks)]

    def cache_controls(self) -> list[CacheControl | None]:
        """Each block's `cache_control`, in the order of `blocks()`."""
        return [getattr(block, "cache_control", None) for block in self.blocks()]


@dataclass(frozen=True)
class ToolPolicy:
    """Which tool calls the model may make: with `choice` "any" it must call one of `schemas`,
    with "tool" it must call `name`, with "auto" it decides. Each schema is a tool's input schema.
    With `parallel` the model may make several calls in one reply (the first one is the one
    `choice` governs); without it, at most one.
    """

    schemas: Mapping[str, Mapping[str, Any]]
    choice: Literal["auto", "any", "tool"] = "auto"
    name: str | None = None
    parallel: bool = True


@dataclass(frozen=True)
class RepetitionPenalty:
    """Penalties that keep a model from repeating its own reply: llama.cpp's DRY sampler (a
    penalty growing with the length of a repeated sequence) and its repetition penalty (on
    tokens seen recently). They apply to free text only, never to grammar-constrained output
    (tool inputs repeat keys, and copy the prompt, by design). The defaults are off."""

    dry_multiplier: float = 0.0  # 0: DRY off
    dry_base: float = 1.75
    dry_allowed_length: int = 2  # repeats up to this many tokens go unpenalised
    # How far back DRY looks; 0 turns it off, and so does -1 in llama-cpp-python's binding
    # (which has no context size to stand for), so a length it is.
    dry_last_n: int = 512
    # Sequences are not matched across these (llama.cpp's defaults).
    dry_sequence_breakers: tuple[str, ...] = ("\n", ":", '"', "*")
    repeat: float = 1.0  # 1: off; a token seen in the last `repeat_last_n` has its logit divided
    repeat_last_n: int = 64
    frequency: float = 0.0
    presence: float = 0.0

    @property
    def active(self) -> bool:
        return (
            self.dry_multiplier > 0 or self.repeat != 1.0 or bool(self.frequency or self.presence)
        )


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. `None` means the engine's neutral default (no top-p / top-k filtering)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    stop_sequences: Sequence[str] = ()
    # With thinking on, at most this many tokens of thinking; then the engine closes it.
    thinking_budget: int | None = None
    # Whether the model may think again between tool calls (within the same budget).
    interleaved_thinking: bool = False
    tools: ToolPolicy | None = None  # None: the reply is text only
    prefill_progress: PrefillProgress | None = field(default=None, compare=False, repr=False)
    # None: the model's own (`ModelSpec.default_repetition`); the Messages API has no such field.
    repetition: RepetitionPenalty | None = None


@dataclass(frozen=True)
class CacheUsage:
    """How a prompt's tokens are billed against the prompt cache, as Anthropic counts them."""

    read: int = 0
    written_5m: int = 0
    written_1h: int = 0

    @property
    def written(self) -> int:
        return self.written_5m + self.written_1h


@dataclass(frozen=True)
class PreparedPrompt:
    """A conversation rendered (and, where the engine can, tokenised), ready to generate from.

    `input_tokens` is exact for engines that tokenise locally; a remote engine estimates it
    here and reports the upstream's own count in `Finish.input_tokens`.
    """

    tokens: Sequence[int]
    text: str = field(repr=False)
    estimated_tokens: int | None = None
    payload: Any = field(default=None, repr=False)  # the engine's own form of the prompt
    cache: CacheUsage = field(default_factory=CacheUsage)

    @property
    def total_tokens(self) -> int:
        return len(self.tokens) if self.estimated_tokens is None else self.estimated_tokens

    @property
    def input_tokens(self) -> int:
        """The prompt tokens neither read from the cache nor written to it."""
        return self.total_tokens - self.cache.read - self.cache.written


@dataclass(frozen=True)
class TextChunk:
    """Newly generated answer text."""

    text: str


@dataclass(frozen=True)
class ThinkingChunk:
    """Newly generated thinking text (only before any answer text)."""

    text: str


@dataclass(frozen=True)
class ToolCallStart:
    """The model began a call of tool `name`; its input follows as `ToolCallDelta`s."""

    name: str


@dataclass(frozen=True)
class ToolCallDelta:
    """More of the tool call's input, as JSON text; all of it together is one JSON object."""

    partial_json: str


FinishReason = Literal["end_turn", "max_tokens", "stop_sequence", "context_window", "tool_use"]


@dataclass(frozen=True)
class Finish:
    """The end of a generation."""

    reason: FinishReason
    output_tokens: int
    stop_sequence: str | None = None
    thinking_tokens: int = 0
    input_tokens: int | None = None  # when the engine learns the exact prompt size only now


GenerationEvent = ThinkingChunk | TextChunk | ToolCallStart | ToolCallDelta | Finish


@dataclass(frozen=True)
class ModelSpec:
    """What a served model is and what it can take."""

    id: str
    display_name: str
    context_window: int
    max_output_tokens: int
    parallel: int = 1  # generations the engine runs at once; more wait in line
    # Sampling for requests that set none: the model's own recommendation, not Claude's 1.0,
    # since small models ramble at temperature 1.
    default_temperature: float = 1.0
    default_top_p: float | None = None
    # Penalties against loops, for models that fall into them (small ones do).
    default_repetition: RepetitionPenalty | None = None
    # Whether the model judges for itself when to think (native reasoning); only then does
    # adaptive thinking think.
    adaptive_thinking: bool = False


class Engine(Protocol):
    """A model that can be prompted. Implementations: `LlamaCppEngine` (embedded)."""

    @property
    def spec(self) -> ModelSpec: ...

    async def prepare(self, conversation: Conversation) -> PreparedPrompt:
        """Render and tokenise a conversation exactly as `generate` will see it."""
        ...

    def generate(
        self, prompt: PreparedPrompt, params: SamplingParams
    ) -> AsyncGenerator[GenerationEvent, None]:
        """Stream the reply. Closing the iterator early stops the generation."""
        ...

    def cache_stats(self) -> CacheStats | None:
        """The prompt cache's sizes and counters; None for an engine without one."""
        ...

    async def aclose(self) -> None:
        """Release the model."""
        ...

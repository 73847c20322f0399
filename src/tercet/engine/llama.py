"""The embedded engine: a GGUF model run in-process by llama.cpp (`llama-cpp-python`).

llama.cpp is not thread-safe, so every prefill and decode runs on one dedicated worker thread;
tokenising, which only reads the vocabulary, runs beside it. Prefill goes in batches and checks for
cancellation between them, so a client that goes away frees the model within one batch.

Prefill starts from the longest prefix already at hand: the tokens still in the context from
the last request, or a snapshot from the prompt cache (llama.cpp's per-sequence state, which
holds exactly that prefix's KV). It stops at each cache breakpoint that is not cached yet to
save a snapshot there.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import ctypes
import functools
import hashlib
import json
import logging
import os
import random
import threading
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp.llama_grammar import json_schema_to_gbnf

from tercet.cache.plan import CachePlan, CachePoint, plan_cache, prefix_keys
from tercet.cache.store import CacheStats, PromptCache
from tercet.engine.base import (
    CacheTTL,
    CacheUsage,
    Conversation,
    Finish,
    FinishReason,
    GenerationEvent,
    ModelSpec,
    PrefillProgress,
    PreparedPrompt,
    RepetitionPenalty,
    SamplingParams,
    TextChunk,
    ThinkingChunk,
    ToolCallDelta,
    ToolCallStart,
    ToolPolicy,
)
from tercet.engine.chat_template import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, ChatTemplate
from tercet.engine.sampling import TokenSampler
from tercet.engine.stops import StopSequenceMatcher

DEFAULT_CONTEXT_WINDOW = 16384
# A small model may repeat a call forever; Claude rarely makes more than a handful at once.
MAX_CALLS_PER_REPLY = 8

log = logging.getLogger(__name__)


class _Cancelled(Exception):
    """The consumer went away; stop working on its generation."""


def read_gguf_metadata(path: Path) -> dict[str, str]:
    """The key/value metadata of a GGUF file, read without loading its weights."""
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp._internals.LlamaModel(path_model=str(path), params=params, verbose=False)
    try:
        return dict(model.metadata())
    finally:
        model.close()  # type: ignore[no-untyped-call]


class LlamaCppEngine:
    """Serves one GGUF model. Context beyond the model's native window uses YaRN RoPE scaling."""

    def __init__(
        self,
        model_path: Path,
        *,
        model_id: str | None = None,
        context_window: int = DEFAULT_CONTEXT_WINDOW,
        max_output_tokens: int | None = None,
        default_temperature: float = 1.0,
        default_top_p: float | None = None,
        default_repetition: RepetitionPenalty | None = None,
        threads: int | None = None,
        batch_size: int = 512,
        parallel_tool_calls: bool = False,
        cache: PromptCache | None = None,
        on_progress: Callable[[str], None] | None = None,
    ) -> None:
        progress = on_progress or (lambda _message: None)
        metadata = read_gguf_metadata(model_path)
        arch = metadata.get("general.architecture", "llama")
        native_window = int(metadata.get(f"{arch}.context_length", context_window))
        self.model_path = model_path
        self.native_context_window = native_window

        rope: dict[str, Any] = {}
        if context_window > native_window:
            rope = {
                "rope_scaling_type": llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN,
                "rope_freq_scale": native_window / context_window,
                "yarn_orig_ctx": native_window,
            }
            progress(
                f"context window {context_window} > native {native_window}: using YaRN RoPE "
                f"scaling x{context_window / native_window:g}"
            )
        size_mb = model_path.stat().st_size / 1e6
        progress(f"loading {model_path.name} ({size_mb:.0f} MB)")
        self._llama = llama_cpp.Llama(
            str(model_path),
            n_ctx=context_window,
            n_batch=batch_size,
            n_ubatch=batch_size,
            n_threads=threads or os.cpu_count() or 1,
            flash_attn=True,
            verbose=False,
            **rope,
        )
        self._batch_size = batch_size
        if cache is not None and _memory_is_recurrent(self._llama.model):
            # Its memory is a running state, not one entry per token: it cannot be cut back to
            # a prefix, so no snapshot could hold exactly one (llama_memory_seq_rm refuses).
            log.warning(
                "prompt caching is off for %s: its memory is recurrent or hybrid, and cannot "
                "be cut back to a cached prefix",
                model_path.name,
            )
            cache = None
        self.cache = cache
        # Cached state is only valid for the same weights, context size and RoPE settings.
        self._fingerprint = _fingerprint(model_path, context_window, rope)
        self._piece_bytes: dict[int, int] = {}
        self._prefilled = 0  # how much of the context the last prefill evaluated
        self._live: dict[str, int] = {}  # live prompt-cache entries in the context: key -> tokens
        self._scope = ""  # the cache scope of the prompt the context holds
        # Whether the model may follow one tool call with another. Off by default: the tool
        # format is ours, not one the model was trained on, and the bundled 135M model always
        # "chooses" another call, repeating itself until max_tokens.
        self._parallel_tool_calls = parallel_tool_calls
        self._vocab = llama_cpp.llama_model_get_vocab(self._llama.model)
        self._add_bos = metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"
        self._template = ChatTemplate(
            metadata.get("tokenizer.chat_template"),
            model_id=model_id or _default_model_id(model_path),
            bos_token=self._special_text(self._llama.token_bos()),
            eos_token=self._special_text(self._llama.token_eos()),
        )
        self._markers = self._template.thinking
        window = self._llama.n_ctx()
        self._spec = ModelSpec(
            id=model_id or _default_model_id(model_path),
            display_name=metadata.get("general.name", model_path.stem),
            context_window=window,
            max_output_tokens=max_output_tokens or window,
            default_temperature=default_temperature,
            default_top_p=default_top_p,
            default_repetition=default_repetition,
            adaptive_thinking=self._template.thinking.native,
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama-decode")
        progress(f"model {self._spec.id} ready: {window} tokens of context")

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def tokenize(self, text: str) -> list[int]:
        tokens: list[int] = self._llama.tokenize(
            text.encode("utf-8"), add_bos=self._add_bos, special=True
        )
        return tokens

    def tokenize_fragment(self, text: str) -> list[int]:
        """Tokens of text in the middle of a sequence (no BOS)."""
        tokens: list[int] = self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        return tokens

    async def prepare(self, conversation: Conversation) -> PreparedPrompt:
        return await asyncio.to_thread(self.prepare_sync, conversation)

    def prepare_sync(self, conversation: Conversation) -> PreparedPrompt:
        marked = self._template.render_with_boundaries(conversation)
        text, ends = marked.text, marked.ends
        tokens = self.tokenize(text)
        scope = conversation.cache_scope
        offsets = [marked.content_start, *ends] if ends is not None else None
        counts = self._tokens_before(tokens, text, offsets) if offsets is not None else None
        if counts is None:  # blocks cannot be located: one segment, nothing billed as cached
            return PreparedPrompt(tokens=tokens, text=text, payload=_Layout((), None, scope))
        header, points = counts[0], self._cache_points(tokens, counts[1:], scope)
        plan = None
        if self.cache is not None:
            min_tokens = self.cache.config.min_tokens
            plan = plan_cache(points, conversation.breakpoints, self.cache, min_tokens)
        # The template's header (all before the first message's text) is a segment too: every
        # prompt starts with it, so the next prompt reuses it even when its first block differs.
        ends_at = {header, *(p.tokens for p in points)}
        segments = tuple(sorted(n for n in ends_at if 0 < n < len(tokens)))
        usage = plan.usage if plan else CacheUsage()
        return PreparedPrompt(
            tokens=tokens, text=text, cache=usage, payload=_Layout(segments, plan, scope)
        )

    def _tokens_before(
        self, tokens: Sequence[int], text: str, offsets: Sequence[int]
    ) -> list[int] | None:
        """For each of the ascending character `offsets` in `text`, how many of `tokens` lie
        wholly before it (a token that straddles it belongs to what follows); None when the
        tokens do not spell out the text (then no position can be trusted)."""
        pieces = np.fromiter((self._piece_length(t) for t in tokens), dtype=np.int64)
        token_ends = np.cumsum(pieces)
        encoded: list[int] = []
        done_chars = done_bytes = 0
        for offset in offsets:
            done_bytes += len(text[done_chars:offset].encode("utf-8"))
            done_chars = offset
            encoded.append(done_bytes)
        total = len(text.encode("utf-8"))
        if not len(token_ends) or int(token_ends[-1]) != total:
            return None
        return [int(n) for n in np.searchsorted(token_ends, encoded, side="right")]

    def _cache_points(
        self, tokens: Sequence[int], lengths: Sequence[int], scope: str
    ) -> list[CachePoint]:
        """Each block's end (`lengths`: the tokens before it) as a keyed prefix of `tokens`."""
        keys = prefix_keys(self._fingerprint, scope, tokens, sorted(set(lengths)))
        by_length = dict(zip(sorted(set(lengths)), keys, strict=True))
        return [CachePoint(n, by_length[n]) for n in lengths]

    def _piece_length(self, token: int) -> int:
        length = self._piece_bytes.get(token)
        if length is None:
            length = len(self._llama.detokenize([token], special=True))
            self._piece_bytes[token] = length
        return length

    def cache_stats(self) -> CacheStats | None:
        return None if self.cache is None else self.cache.stats()

    async def generate(
        self, prompt: PreparedPrompt, params: SamplingParams
    ) -> AsyncGenerator[GenerationEvent, None]:
        loop = asyncio.get_running_loop()
        # The worker hands events over through `ready`, waking the loop only when no wake-up
        # is on its way already: while the loop is busy elsewhere, the tokens decoded meanwhile
        # go over together, with one wake-up (and, further on, one write) instead of one each.
        ready: collections.deque[GenerationEvent | BaseException] = collections.deque()
        arrived = asyncio.Event()
        lock = threading.Lock()
        waking = False
        cancel = threading.Event()

        def hand_over(item: GenerationEvent | BaseException) -> None:
            nonlocal waking
            with lock:
                ready.append(item)
                if waking:
                    return
                waking = True
            loop.call_soon_threadsafe(arrived.set)

        def work() -> None:
            try:
                for event in self.generate_sync(prompt, params, cancel):
                    hand_over(event)
            except _Cancelled:
                pass
            except BaseException as exc:  # handed to the consumer, which re-raises it
                hand_over(exc)

        worker = loop.run_in_executor(self._executor, work)
        try:
            while True:
                await arrived.wait()
                arrived.clear()
                with lock:
                    items = list(ready)
                    ready.clear()
                    waking = False
                for item in items:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
                    if isinstance(item, Finish):
                        return
        finally:
            cancel.set()
            # The model is free only once the worker has seen the cancellation.
            await asyncio.shield(worker)

    def generate_sync(
        self, prompt: PreparedPrompt, params: SamplingParams, cancel: threading.Event
    ) -> Iterator[GenerationEvent]:
        """Generate on the calling thread (the worker thread, or a benchmark).

        A reply has up to three phases: thinking (when a budget is set), the answer, and tool
        calls (forced by `tool_choice`, or begun by the model writing the tool-call tag). Where
        the model must not choose freely, the engine writes the text itself (closing thinking
        at the budget, opening a forced call) or samples under a grammar (tool names, inputs
        that match their JSON schema, whether to call another tool).
        """
        self._prefill(prompt, cancel, params.prefill_progress)
        if params.max_tokens == 0:  # only filling the prompt cache
            yield Finish("max_tokens", 0)
            return
        run = _Run(self, prompt.tokens, params, cancel)
        if params.thinking_budget is not None:
            yield from self._think(run, params.thinking_budget)
            if run.finished:
                return
        tools = params.tools
        if tools is not None and tools.choice != "auto":
            run.force(self.tokenize_fragment(TOOL_CALL_OPEN + "\n"))
            yield from self._call_tools(run, params, tools)
            return
        yield from self._answer(run, params, tools)

    def _think(self, run: _Run, budget: int) -> Iterator[GenerationEvent]:
        markers = self._markers
        closer = StopSequenceMatcher([markers.close])
        while not run.finished:
            if run.room <= 0:
                yield from _release(closer.flush(), thinking=True)
                yield run.finish(run.limit_reason)
                return
            token = run.next()
            if not self._is_end(token):
                run.accept(token)
                run.thought += 1
                # Special tokens are shown here: some models close thinking with one.
                scan = closer.feed(run.text(token, special=True))
                yield from _release(scan.release, thinking=True)
                if scan.matched is not None:
                    if markers.after_close:
                        run.force(self.tokenize_fragment(markers.after_close))
                    return
                if run.thought < budget:
                    continue
            # The budget is spent, or the model stopped without answering: close the
            # thinking ourselves so that it goes on to the answer.
            yield from _release(closer.flush(), thinking=True)
            run.force(self.tokenize_fragment(markers.forced_close))
            return

    def _answer(
        self, run: _Run, params: SamplingParams, tools: ToolPolicy | None
    ) -> Iterator[GenerationEvent]:
        markers = [*params.stop_sequences, *([TOOL_CALL_OPEN] if tools else [])]
        stops = StopSequenceMatcher(markers)
        begun = params.thinking_budget is None  # after thinking, leading newlines are dropped
        while True:
            if run.room <= 0:
                yield from _release(stops.flush(), thinking=False)
                yield run.finish(run.limit_reason)
                return
            token = run.next()
            if self._is_end(token):
                yield from _release(stops.flush(), thinking=False)
                yield run.finish("end_turn", extra_tokens=1)
                return
            run.accept(token)
            piece = run.text(token)
            if not begun:
                piece = piece.lstrip()
                begun = bool(piece)
            scan = stops.feed(piece)
            yield from _release(scan.release, thinking=False)
            if scan.matched == TOOL_CALL_OPEN and tools is not None:
                run.force(self.tokenize_fragment("\n"))
                yield from self._call_tools(run, params, tools)
                return
            if scan.matched is not None:
                yield run.finish("stop_sequence", stop_sequence=scan.matched)
                return

    def _call_tools(
        self, run: _Run, params: SamplingParams, tools: ToolPolicy
    ) -> Iterator[GenerationEvent]:
        """After the first tool-call tag: that call, then (when the engine and the request both
        allow parallel calls) as many more as the model chooses, each opened under a grammar that allows only another call, thinking
        (when interleaved) or the end of the reply."""
        forced = tools.name if tools.choice == "tool" else None
        for calls in range(1, MAX_CALLS_PER_REPLY + 1):
            if not (yield from self._call_tool(run, tools, forced)):
                return
            forced = None
            if not (tools.parallel and self._parallel_tool_calls) or calls == MAX_CALLS_PER_REPLY:
                break
            # Written as history renders consecutive blocks: separated by a blank line.
            next_step = yield from self._choose_next(run, params, f"\n{TOOL_CALL_CLOSE}\n\n")
            reopen = self._markers.reopen
            if next_step == reopen and params.thinking_budget is not None:
                run.force(self.tokenize_fragment(self._markers.open.removeprefix(reopen or "")))
                yield from self._think(run, params.thinking_budget)
                if run.finished:
                    return
                next_step = yield from self._choose_next(run, params, "", after_thinking=True)
            if next_step != TOOL_CALL_OPEN:
                if next_step is not None:  # the model chose to end its reply
                    yield run.finish("tool_use", extra_tokens=1)
                return
            run.force(self.tokenize_fragment("\n"))
        yield run.finish("tool_use", extra_tokens=1)

    def _choose_next(
        self, run: _Run, params: SamplingParams, written: str, *, after_thinking: bool = False
    ) -> Generator[GenerationEvent, None, str | None]:
        """Write `written`, then let the model pick: another call, thinking again, or the end
        (returned as the tag it wrote, "" for the end). None when the token limit came first."""
        options = [TOOL_CALL_OPEN]
        reopen = self._markers.reopen
        thinking_left = params.thinking_budget is not None and run.thought < params.thinking_budget
        if reopen and params.interleaved_thinking and thinking_left and not after_thinking:
            options.append(reopen)
        grammar = _choice_grammar(tuple(options), leading_newlines=after_thinking)
        run.force(self.tokenize_fragment(written) if written else [], grammar=grammar)
        chosen = yield from self._sample_grammar(run, emit=False)
        return None if chosen is None else chosen.strip()

    def _call_tool(
        self, run: _Run, tools: ToolPolicy, forced: str | None
    ) -> Generator[GenerationEvent, None, bool]:
        """After a tool-call tag: the name (forced, or chosen under a grammar), then the input.

        Returns False when the token limit came first (a `Finish` was yielded).
        """
        if forced is not None:
            name = forced
        else:
            run.force(self.tokenize_fragment('{"name": '), grammar=_names_grammar(tools))
            written = yield from self._sample_grammar(run, emit=False)
            if written is None:
                return False
            name = json.loads(written)
        schema = tools.schemas[name]
        prefix = '{"name": ' + json.dumps(name) + ', "arguments": '
        run.force(self.tokenize_fragment(prefix if forced is not None else ', "arguments": '))
        run.constrain(_schema_grammar(json.dumps(schema, sort_keys=True)))
        yield ToolCallStart(name)
        return (yield from self._sample_grammar(run, emit=True)) is not None

    def _sample_grammar(
        self, run: _Run, emit: bool
    ) -> Generator[GenerationEvent, None, str | None]:
        """Sample until the grammar is complete (the model may then only end); returns the text.

        Returns None when the token limit came first (a `Finish` was yielded).
        """
        text = ""
        while True:
            if run.room <= 0:
                yield run.finish(run.limit_reason)
                return None
            token = run.next()
            if self._is_end(token):
                return text
            run.accept(token)
            piece = run.text(token)
            text += piece
            if emit and piece:
                yield ToolCallDelta(piece)

    def _is_end(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def _prefill(
        self,
        prompt: PreparedPrompt,
        cancel: threading.Event,
        progress: PrefillProgress | None = None,
    ) -> None:
        """Bring the KV cache to hold exactly `prompt.tokens`, from the longest prefix at hand.

        The prompt is evaluated in segments that end at its block boundaries, whatever is
        cached: a token's KV then never depends on where a reused prefix ended, so a cache may
        change speed but never output (llama.cpp's results vary slightly with batch shape).
        For the same reason a prefix still in the context is reused only up to a boundary, and
        only as far as the last prefill went (decoded tokens were evaluated one at a time).

        Five-minute cache writes stay live (see `cache.store`) until the context moves past
        them; one-hour writes are captured at once, so that they reach the disk.

        The last token is always evaluated, so the logits to sample from are this prompt's;
        the reply's first token is then sampled at once. `progress` hears how
        far it is, before the first batch and after each (cheap: a batch is hundreds of tokens).
        """
        llm = self._llama
        tokens = prompt.tokens
        layout = prompt.payload if isinstance(prompt.payload, _Layout) else _Layout((), None)
        usable = min(llm.n_tokens, len(tokens) - 1, self._prefilled)
        if layout.scope != self._scope:  # reusing another owner's prefix would show, by speed,
            usable = 0  # what that owner sent, as a cache hit would
        differs = np.nonzero(llm.input_ids[:usable] != np.asarray(tokens[:usable]))[0]
        start = int(differs[0]) if differs.size else usable
        if layout.segments:
            start = max([0, *(b for b in layout.segments if b <= start)])
        saves: dict[int, CachePoint] = {}
        lives: dict[int, list[tuple[CachePoint, CacheTTL]]] = {}
        if layout.plan is not None and self.cache is not None:
            start = self._restore_longest(layout.plan, tokens, start)
            for write in layout.plan.writes:
                if self.cache.tokens(write.point.key) is not None:  # written meanwhile
                    continue
                if write.ttl == "1h":
                    saves[write.point.tokens] = write.point
                else:
                    lives.setdefault(write.point.tokens, []).append((write.point, write.ttl))
            # A snapshot must hold exactly its prefix: start again where the first one ends.
            start = min([start, *saves])
        self._capture_live(keep=start)
        start = self._truncate(start)
        self._scope = layout.scope
        self._register_live([w for n, ws in lives.items() if n <= start for w in ws])
        ends = sorted({*(b for b in layout.segments if b > start), *saves, *lives, len(tokens)})
        if progress is not None:
            progress(llm.n_tokens, len(tokens))
        for end in ends:
            if end <= start:
                continue
            for batch in range(llm.n_tokens, end, self._batch_size):
                if cancel.is_set():
                    raise _Cancelled
                llm.eval(tokens[batch : min(batch + self._batch_size, end)])
                self._prefilled = llm.n_tokens
                if progress is not None:
                    progress(llm.n_tokens, len(tokens))
            if end in saves:
                self._save(saves[end], "1h")
            self._register_live(lives.get(end, []))

    def _restore_longest(self, plan: CachePlan, tokens: Sequence[int], live: int) -> int:
        """Load the longest cached prefix longer than the `live` one; returns the new length."""
        assert self.cache is not None
        for point in plan.restorable:
            if point.tokens <= live:
                break
            if point.tokens >= len(tokens):  # the last token is always evaluated
                continue
            found = self.cache.get(point.key)
            if found is None:
                continue
            # What the context holds past `live` is about to go: capture what is live there.
            self._capture_live(keep=live)
            if self._load_state(*found, tokens[: point.tokens]):
                return point.tokens
            # A state that failed to load would fail again: drop it, so that no later prompt
            # is billed a read of it, and go on with the shorter points. The context is empty.
            self.cache.discard(point.key)
            self._forget_live()
            live = 0
        return live

    def _truncate(self, keep: int) -> int:
        """Cut the context back to its first `keep` tokens; returns how many it holds then.

        A recurrent or hybrid model's memory cannot drop part of a sequence: it is cleared and
        the prompt prefilled again from the start.
        """
        memory = llama_cpp.llama_get_memory(self._llama.ctx)
        if not llama_cpp.llama_memory_seq_rm(memory, 0, keep, -1):
            llama_cpp.llama_memory_seq_rm(memory, 0, -1, -1)  # a whole sequence always goes
            self._forget_live()
            keep = 0
        self._llama.n_tokens = keep  # eval() drops every cached position from here on
        return keep

    def _load_state(self, data: bytearray, held: int, prefix: Sequence[int]) -> bool:
        """Load a snapshot of `held` tokens and keep its first `len(prefix)`."""
        llm = self._llama
        memory = llama_cpp.llama_get_memory(llm.ctx)
        llama_cpp.llama_memory_seq_rm(memory, 0, -1, -1)
        buffer = (ctypes.c_uint8 * len(data)).from_buffer(data)
        loaded = llama_cpp.llama_state_seq_set_data(llm.ctx, buffer, len(data), 0) == len(data)
        del buffer
        if not loaded:
            llm.n_tokens = 0
            return False
        if held > len(prefix) and not llama_cpp.llama_memory_seq_rm(memory, 0, len(prefix), -1):
            llama_cpp.llama_memory_seq_rm(memory, 0, -1, -1)  # the longer state cannot be cut
            llm.n_tokens = 0
            return False
        llm.input_ids[: len(prefix)] = prefix
        llm.n_tokens = len(prefix)
        return True

    def _snapshot(self, tokens: int) -> bytearray | None:
        """The state of the context's first `tokens` tokens; the rest of the context is lost.
        None when it cannot be taken (a memory that cannot be cut keeps the whole context)."""
        llm = self._llama
        if not llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(llm.ctx), 0, tokens, -1):
            return None
        llm.n_tokens = min(llm.n_tokens, tokens)
        self._prefilled = min(self._prefilled, tokens)
        size = llama_cpp.llama_state_seq_get_size(llm.ctx, 0)
        data = bytearray(size)
        buffer = (ctypes.c_uint8 * size).from_buffer(data)
        taken = llama_cpp.llama_state_seq_get_data(llm.ctx, buffer, size, 0) == size
        del buffer  # a bytearray with a live export cannot be handed on safely
        return data if taken else None

    def _save(self, point: CachePoint, ttl: CacheTTL) -> None:
        assert self.cache is not None
        data = self._snapshot(point.tokens)
        if data is not None:
            self.cache.put(point.key, point.tokens, data, ttl)

    def _register_live(self, writes: Sequence[tuple[CachePoint, CacheTTL]]) -> None:
        assert self.cache is not None or not writes
        for point, ttl in writes:
            if self.cache is not None:
                self.cache.put_live(point.key, point.tokens, ttl)
                self._live[point.key] = point.tokens

    def _capture_live(self, keep: int) -> None:
        """Capture the live entries longer than `keep` before the context past it changes:
        one snapshot of the longest, which the shorter ones become aliases of."""
        doomed = {key: n for key, n in self._live.items() if n > keep}
        if not doomed or self.cache is None:
            return
        for key in doomed:
            del self._live[key]
        alive = sorted((n, key) for key, n in doomed.items() if self.cache.tokens(key) is not None)
        if not alive:
            return
        longest, source = alive[-1]
        data = self._snapshot(longest)
        if data is None:  # their state goes with the context: they must not stay as hits
            for _, key in alive:
                self.cache.forget(key)
            return
        self.cache.capture(source, data)
        for _, key in alive[:-1]:
            self.cache.alias(key, source)

    def _forget_live(self) -> None:
        if self.cache is not None:
            for key in self._live:
                self.cache.forget(key)
        self._live.clear()

    def _special_text(self, token: int) -> str:
        return bytes(self._llama.detokenize([token], special=True)).decode("utf-8", "replace")

    async def aclose(self) -> None:
        self._executor.shutdown(wait=True)
        self._llama.close()


class _Run:
    """One generation in progress: the token sequence, the count against the limit, the sampler."""

    def __init__(
        self,
        engine: LlamaCppEngine,
        prompt: Sequence[int],
        params: SamplingParams,
        cancel: threading.Event,
    ) -> None:
        self._engine = engine
        self._cancel = cancel
        self.sequence = list(prompt)
        self.max_tokens = params.max_tokens
        self.limit = min(params.max_tokens, engine._llama.n_ctx() - len(self.sequence))
        self.generated = 0
        self.thought = 0
        self.finished = False
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        repetition = params.repetition
        if repetition is None:
            repetition = engine.spec.default_repetition
        self._sampler = TokenSampler(engine._llama, params, repetition, random.getrandbits(32))

    @property
    def room(self) -> int:
        return self.limit - self.generated

    @property
    def limit_reason(self) -> FinishReason:
        return "max_tokens" if self.generated >= self.max_tokens else "context_window"

    def next(self) -> int:
        """Sample the next token (it joins the reply only when `accept`ed)."""
        self._evaluate()
        if self._cancel.is_set():
            raise _Cancelled
        return self._sampler.sample()

    def _evaluate(self) -> None:
        """Bring the context up to `sequence`, so that its logits are for what comes next.

        The context holds a prefix of the sequence (the prompt, then the reply as far as it
        was evaluated); what was accepted or written since is evaluated now, in one batch.
        """
        llm = self._engine._llama
        if llm.n_tokens < len(self.sequence):
            llm.eval(self.sequence[llm.n_tokens :])

    def accept(self, token: int) -> None:
        self.sequence.append(token)
        self.generated += 1
        self._sampler.advance(token)

    def text(self, token: int, special: bool = False) -> str:
        return self._decoder.decode(self._engine._llama.detokenize([token], special=special))

    def force(self, tokens: Sequence[int], grammar: str | None = None) -> None:
        """Write `tokens` as if the model had (as far as the limit allows), then sample on
        under `grammar` (GBNF), or freely."""
        taken = list(tokens[: max(self.room, 0)])
        self.sequence.extend(taken)
        self.generated += len(taken)
        self._sampler.write(taken)
        self.constrain(grammar)

    def constrain(self, grammar: str | None) -> None:
        """Sample on under `grammar` (GBNF, from its start), or freely with None."""
        self._sampler.constrain(grammar)

    def finish(
        self, reason: FinishReason, *, extra_tokens: int = 0, stop_sequence: str | None = None
    ) -> Finish:
        self.finished = True
        return Finish(reason, self.generated + extra_tokens, stop_sequence, self.thought)


def _release(text: str, thinking: bool) -> Iterator[TextChunk | ThinkingChunk]:
    if text:
        yield ThinkingChunk(text) if thinking else TextChunk(text)


@functools.lru_cache(maxsize=16)
def _choice_grammar(options: tuple[str, ...], leading_newlines: bool) -> str:
    """One of `options`, or nothing at all (the model ends its reply)."""
    alternatives = " | ".join(json.dumps(option) for option in options)
    newlines = "[\\n]? [\\n]? " if leading_newlines else ""
    return f"root ::= ({newlines}({alternatives}))?"


def _names_grammar(tools: ToolPolicy) -> str:
    names = " | ".join(json.dumps(json.dumps(name)) for name in tools.schemas)
    return f"root ::= {names}"


@functools.lru_cache(maxsize=256)
def _schema_grammar(schema: str) -> str:
    """A grammar for JSON matching `schema` (llama.cpp's converter), or any object if it fails."""
    try:
        gbnf: str = json_schema_to_gbnf(schema)
    except Exception:  # the converter rejects some valid schemas; fall back to any object
        gbnf = json_schema_to_gbnf('{"type": "object"}')
    # The converter's string characters admit raw control characters (a newline, say), which
    # JSON forbids inside strings; the model must escape them.
    return gbnf.replace(_LOOSE_CHAR, _JSON_CHAR)


_LOOSE_CHAR = 'char ::= [^"\\\\]'
_JSON_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F]'


@dataclass(frozen=True)
class _Layout:
    """How a prompt is prefilled: the block boundaries it is evaluated in segments between,
    and the prompt cache's plan for it."""

    segments: tuple[int, ...]
    plan: CachePlan | None
    scope: str = ""  # the conversation's cache scope


def _memory_is_recurrent(model: llama_cpp.llama_model_p) -> bool:
    """Whether the model keeps a recurrent state (Mamba, RWKV; hybrids such as Jamba), by the
    checks the installed llama.cpp has."""
    checks = [
        getattr(llama_cpp, name, None)
        for name in ("llama_model_is_recurrent", "llama_model_is_hybrid")
    ]
    return any(bool(check(model)) for check in checks if check is not None)


def _fingerprint(model_path: Path, context_window: int, rope: dict[str, Any]) -> str:
    """What cached state depends on: the weights (name, size and the GGUF header, which holds
    the metadata) and how positions are encoded."""
    digest = hashlib.sha256()
    with model_path.open("rb") as model:
        digest.update(model.read(1 << 20))
    size = model_path.stat().st_size
    digest.update(f"{model_path.name}:{size}:{context_window}:{sorted(rope.items())}".encode())
    return digest.hexdigest()


def _default_model_id(path: Path) -> str:
    stem = path.name.removesuffix(".gguf")
    return stem.split(".")[0].lower() if "." in stem else stem.lower()

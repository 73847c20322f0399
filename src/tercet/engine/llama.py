"""The embedded engine: a GGUF model run in-process by llama.cpp (`llama-cpp-python`).

llama.cpp is not thread-safe, so every prefill and decode runs on one dedicated worker thread;
tokenising, which only reads the vocabulary, runs beside it. Prefill goes in batches and checks for
cancellation between them, so a client that goes away frees the model within one batch.
"""

from __future__ import annotations

import asyncio
import codecs
import os
import random
import threading
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from tercet.engine.base import (
    Conversation,
    Finish,
    FinishReason,
    GenerationEvent,
    ModelSpec,
    PreparedPrompt,
    SamplingParams,
    TextChunk,
    ThinkingChunk,
)
from tercet.engine.chat_template import ChatTemplate
from tercet.engine.stops import StopSequenceMatcher

DEFAULT_CONTEXT_WINDOW = 16384


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
        threads: int | None = None,
        batch_size: int = 512,
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
        self._vocab = llama_cpp.llama_model_get_vocab(self._llama.model)
        self._add_bos = metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"
        self._template = ChatTemplate(
            metadata.get("tokenizer.chat_template"),
            model_id=model_id or _default_model_id(model_path),
            bos_token=self._special_text(self._llama.token_bos()),
            eos_token=self._special_text(self._llama.token_eos()),
        )
        self._close_thinking = self.tokenize_fragment("\n" + self._template.thinking.close + "\n\n")
        window = self._llama.n_ctx()
        self._spec = ModelSpec(
            id=model_id or _default_model_id(model_path),
            display_name=metadata.get("general.name", model_path.stem),
            context_window=window,
            max_output_tokens=max_output_tokens or window,
            default_temperature=default_temperature,
            default_top_p=default_top_p,
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
        text = self._template.render(conversation)
        return PreparedPrompt(tokens=self.tokenize(text), text=text)

    async def generate(
        self, prompt: PreparedPrompt, params: SamplingParams
    ) -> AsyncGenerator[GenerationEvent, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[GenerationEvent | BaseException] = asyncio.Queue()
        cancel = threading.Event()

        def work() -> None:
            try:
                for event in self.generate_sync(prompt, params, cancel):
                    loop.call_soon_threadsafe(queue.put_nowait, event)
            except _Cancelled:
                pass
            except BaseException as exc:  # handed to the consumer, which re-raises it
                loop.call_soon_threadsafe(queue.put_nowait, exc)

        worker = loop.run_in_executor(self._executor, work)
        try:
            while True:
                item = await queue.get()
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

        With a thinking budget the reply starts inside the thinking markers; thinking ends when
        the model writes the close marker or, at the budget, when the engine writes it instead.
        """
        llm = self._llama
        sequence = list(prompt.tokens)
        self._prefill(sequence, cancel)
        if params.temperature > 0:
            llm.set_seed(random.getrandbits(31))
        limit = min(params.max_tokens, llm.n_ctx() - len(sequence))
        budget = params.thinking_budget
        thinking = budget is not None
        closer = StopSequenceMatcher([self._template.thinking.close])
        stops = StopSequenceMatcher(params.stop_sequences)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        answer_begun = not thinking  # after thinking, the answer's leading newlines are dropped
        generated = thought = 0
        tokens = self._sample(sequence, params)
        while True:
            token = next(tokens)  # llama-cpp-python samples without end; we decide when to stop
            if cancel.is_set():
                raise _Cancelled
            end_of_turn = bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))
            if end_of_turn and not thinking:
                yield from self._release(stops.flush(), thinking=False)
                yield Finish("end_turn", generated + 1, thinking_tokens=thought)
                return
            if thinking:
                scan = closer.feed("" if end_of_turn else decoder.decode(llm.detokenize([token])))
                if not end_of_turn:
                    generated += 1
                    thought += 1
                    sequence.append(token)
                yield from self._release(scan.release, thinking=True)
                if scan.matched is not None:
                    thinking = False
                elif end_of_turn or (budget is not None and thought >= budget):
                    # Thinking is spent (or the model stopped without answering): close it
                    # ourselves and go on sampling the answer.
                    yield from self._release(closer.flush(), thinking=True)
                    thinking = False
                    forced = self._close_thinking[: limit - generated]
                    generated += len(forced)
                    sequence.extend(forced)
                    tokens.close()
                    tokens = self._sample(sequence, params)
            else:
                generated += 1
                sequence.append(token)
                piece = decoder.decode(llm.detokenize([token]))
                if not answer_begun:
                    piece = piece.lstrip()
                    answer_begun = bool(piece)
                scan = stops.feed(piece)
                yield from self._release(scan.release, thinking=False)
                if scan.matched is not None:
                    yield Finish("stop_sequence", generated, scan.matched, thought)
                    return
            if generated >= limit:
                yield from self._release(closer.flush() if thinking else stops.flush(), thinking)
                ended_by_limit = generated >= params.max_tokens
                reason: FinishReason = "max_tokens" if ended_by_limit else "context_window"
                yield Finish(reason, generated, thinking_tokens=thought)
                return

    def _sample(
        self, sequence: Sequence[int], params: SamplingParams
    ) -> Generator[int, None, None]:
        """Tokens sampled after `sequence`; the cached prefix of it is not evaluated again."""
        return self._llama.generate(
            sequence,
            temp=params.temperature,
            top_p=1.0 if params.top_p is None else params.top_p,
            top_k=params.top_k or 0,
            min_p=0.0,
            typical_p=1.0,
            repeat_penalty=1.0,
        )

    @staticmethod
    def _release(text: str, thinking: bool) -> Iterator[TextChunk | ThinkingChunk]:
        if text:
            yield ThinkingChunk(text) if thinking else TextChunk(text)

    def _prefill(self, tokens: Sequence[int], cancel: threading.Event) -> None:
        """Bring the KV cache to hold exactly `tokens`, reusing the longest cached prefix.

        The last token is always evaluated, so the logits to sample from are this prompt's;
        `Llama.generate` then finds the prompt cached and samples at once.
        """
        llm = self._llama
        usable = min(llm.n_tokens, len(tokens) - 1)
        differs = np.nonzero(llm.input_ids[:usable] != np.asarray(tokens[:usable]))[0]
        common = int(differs[0]) if differs.size else usable
        llm.n_tokens = common  # eval() drops every cached position from here on
        for start in range(common, len(tokens), self._batch_size):
            if cancel.is_set():
                raise _Cancelled
            llm.eval(tokens[start : start + self._batch_size])

    def _special_text(self, token: int) -> str:
        return bytes(self._llama.detokenize([token], special=True)).decode("utf-8", "replace")

    async def aclose(self) -> None:
        self._executor.shutdown(wait=True)
        self._llama.close()


def _default_model_id(path: Path) -> str:
    stem = path.name.removesuffix(".gguf")
    return stem.split(".")[0].lower() if "." in stem else stem.lower()

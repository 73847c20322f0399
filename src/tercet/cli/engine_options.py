"""Command-line options that choose and load a model, shared by `serve` and `chat`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from tercet.cache.config import MIB, CacheConfig
from tercet.cache.store import PromptCache
from tercet.engine.base import Engine
from tercet.engine.bundled import (
    BUNDLED_MODEL_ID,
    BUNDLED_REPETITION,
    BUNDLED_TEMPERATURE,
    BUNDLED_TOP_P,
    bundled_model_path,
)
from tercet.engine.llama import DEFAULT_CONTEXT_WINDOW, LlamaCppEngine
from tercet.engine.openai import OpenAICompatibleEngine


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--engine",
        choices=["llama", "openai"],
        default="llama",
        help="llama: a GGUF in-process (default); openai: an OpenAI-compatible server (--upstream)",
    )
    group.add_argument(
        "--upstream",
        metavar="URL",
        help="with --engine openai: the server's base URL, e.g. http://127.0.0.1:8000/v1",
    )
    group.add_argument("--upstream-model", help="with --engine openai: the upstream model name")
    group.add_argument(
        "--upstream-key",
        default=os.environ.get("TERCET_UPSTREAM_KEY"),
        help="with --engine openai: its API key (default $TERCET_UPSTREAM_KEY)",
    )
    group.add_argument(
        "--upstream-cache-salt",
        action="store_true",
        help="with --engine openai: send vLLM's `cache_salt` per API key, so keys never share "
        "the upstream's prefix cache (for upstreams that accept the field)",
    )
    group.add_argument(
        "--model",
        type=Path,
        metavar="PATH",
        help="a GGUF file to serve (default: the bundled SmolLM2-135M-Instruct)",
    )
    group.add_argument("--model-id", help="the id clients see (default: from the file name)")
    group.add_argument(
        "--context-window",
        type=int,
        default=DEFAULT_CONTEXT_WINDOW,
        metavar="TOKENS",
        help="context size; beyond the model's native window RoPE scaling (YaRN) is used "
        f"(default {DEFAULT_CONTEXT_WINDOW})",
    )
    group.add_argument(
        "--max-output-tokens",
        type=int,
        default=128_000,
        metavar="TOKENS",
        help="largest max_tokens a request may ask for; generation still stops when the "
        "context is full (default 128000, what Claude Code asks for)",
    )
    group.add_argument(
        "--default-temperature",
        type=float,
        metavar="T",
        help="temperature for requests that set none (default: 0.2 for the bundled model, "
        "else 1.0 as Anthropic's API)",
    )
    group.add_argument(
        "--default-top-p",
        type=float,
        metavar="P",
        help="top_p for requests that set no temperature (default: 0.9 for the bundled model)",
    )
    group.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    group.add_argument(
        "--parallel-tool-calls",
        action="store_true",
        help="let a GGUF model make several tool calls in one reply (off by default: it needs "
        "a model that knows when to stop, which the bundled 135M model does not)",
    )


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = CacheConfig()
    group = parser.add_argument_group("prompt cache (embedded engine)")
    group.add_argument(
        "--cache-ram-mb",
        type=int,
        default=defaults.ram_bytes // MIB,
        metavar="MB",
        help=f"KV snapshots kept in memory (default {defaults.ram_bytes // MIB}; 0 disables "
        "the prompt cache)",
    )
    group.add_argument(
        "--cache-disk-mb",
        type=int,
        default=defaults.disk_bytes // MIB,
        metavar="MB",
        help="KV snapshots on disk under the data directory: 1-hour entries and what memory "
        f"evicts (default {defaults.disk_bytes // MIB}; 0: memory only)",
    )
    group.add_argument(
        "--cache-min-tokens",
        type=int,
        default=defaults.min_tokens,
        metavar="TOKENS",
        help=f"shortest prefix a breakpoint caches (default {defaults.min_tokens}, as Claude 4)",
    )


def prompt_cache(args: argparse.Namespace, data_dir: Path) -> PromptCache | None:
    """The prompt cache the options ask for, stored under `data_dir`."""
    if args.cache_ram_mb <= 0:
        return None
    config = CacheConfig(
        ram_bytes=args.cache_ram_mb * MIB,
        disk_bytes=max(args.cache_disk_mb, 0) * MIB,
        min_tokens=args.cache_min_tokens,
    )
    return PromptCache(config, data_dir / "prompt-cache")


def load_engine(args: argparse.Namespace, cache: PromptCache | None = None) -> Engine:
    """Load the chosen model, reporting progress on stderr."""
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - started:5.1f}s] {message}", file=sys.stderr, flush=True)

    if args.engine == "openai":
        if not args.upstream:
            raise ValueError("--engine openai needs --upstream URL")
        progress(f"connecting to {args.upstream}")
        return OpenAICompatibleEngine(
            args.upstream,
            model=args.upstream_model,
            api_key=args.upstream_key,
            model_id=args.model_id,
            context_window=args.context_window,
            max_output_tokens=args.max_output_tokens,
            cache_salt=args.upstream_cache_salt,
        )
    bundled = args.model is None
    temperature = args.default_temperature
    if temperature is None:
        temperature = BUNDLED_TEMPERATURE if bundled else 1.0
    top_p = args.default_top_p
    if top_p is None and bundled and args.default_temperature is None:
        top_p = BUNDLED_TOP_P
    return LlamaCppEngine(
        args.model or bundled_model_path(),
        model_id=args.model_id or (BUNDLED_MODEL_ID if bundled else None),
        context_window=args.context_window,
        max_output_tokens=args.max_output_tokens,
        default_temperature=temperature,
        default_top_p=top_p,
        default_repetition=BUNDLED_REPETITION if bundled else None,
        threads=args.threads,
        parallel_tool_calls=args.parallel_tool_calls,
        cache=cache,
        on_progress=progress,
    )

"""Command-line options that choose and load a model, shared by `serve` and `chat`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tercet.engine.base import Engine
from tercet.engine.bundled import BUNDLED_MODEL_ID, bundled_model_path
from tercet.engine.llama import DEFAULT_CONTEXT_WINDOW, LlamaCppEngine


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
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
    group.add_argument("--threads", type=int, help="CPU threads (default: all cores)")


def load_engine(args: argparse.Namespace) -> Engine:
    """Load the chosen model, reporting progress on stderr."""
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - started:5.1f}s] {message}", file=sys.stderr, flush=True)

    path = args.model or bundled_model_path()
    model_id = args.model_id or (None if args.model else BUNDLED_MODEL_ID)
    return LlamaCppEngine(
        path,
        model_id=model_id,
        context_window=args.context_window,
        max_output_tokens=args.max_output_tokens,
        threads=args.threads,
        on_progress=progress,
    )

"""Server overhead: the same prompts through `tercet serve` and through llama-cpp-python directly.

The server runs as its own process (`tercet serve`, as users run it), read over loopback as raw
SSE; the direct side loads the same GGUF with the same settings in this process. Both decode
greedily on prompts made unique per trial (so neither profits from cached prefixes beyond the
chat template's), alternating trial by trial so only one of them computes at a time.
Prints medians and the ratios; targets: decode throughput at least 0.97 of the raw engine's, time
to first token within 10 ms of it.

    .venv/bin/python bench/overhead.py [--trials 5] [--tokens 200]
    .venv/bin/python bench/overhead.py --quick   # 1 trial of 16 tokens: the script works
    .venv/bin/python bench/overhead.py --server-args '--cache-ram-mb 0 --cache-disk-mb 0'
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import llama_cpp

from tercet.engine.base import Conversation, Turn
from tercet.engine.bundled import BUNDLED_MODEL_ID, bundled_model_path
from tercet.engine.llama import LlamaCppEngine
from tercet.wire.content import TextBlockParam


@dataclass
class Run:
    ttft: float  # seconds from request to the first generated text
    decode_rate: float  # tokens per second after the first
    tokens: int


def prompt_text(nonce: str) -> str:
    return f"[{nonce}] Write a long, detailed story about a lighthouse keeper and the sea."


def raw_run(engine: LlamaCppEngine, text: str, max_tokens: int) -> Run:
    """llama-cpp-python directly: tokenise the same rendered prompt, generate greedily."""
    llm: llama_cpp.Llama = engine._llama
    conversation = Conversation(
        system=(), turns=[Turn("user", [TextBlockParam(type="text", text=text)])]
    )
    started = time.perf_counter()
    tokens = engine.prepare_sync(conversation).tokens
    first = last = 0.0
    count = 0
    for token in llm.generate(tokens, temp=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        count += 1
        if llama_cpp.llama_vocab_is_eog(engine._vocab, token):
            break
        llm.detokenize([token])
        last = time.perf_counter()
        if count == 1:
            first = last
        if count >= max_tokens:
            break
    return Run(first - started, (count - 1) / (last - first), count)


def server_run(http: httpx.Client, text: str, max_tokens: int) -> Run:
    """Through the server: a streamed request over loopback, read as raw SSE."""
    body = {
        "model": "claude-opus-4-8",
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "messages": [{"role": "user", "content": text}],
    }
    started = time.perf_counter()
    first = last = 0.0
    received = bytearray()
    with http.stream("POST", "/v1/messages", json=body) as response:
        # Raw chunks, not parsed lines: the client shares the two cores with the server, so
        # it should spend as little CPU as it can while the server decodes.
        for chunk in response.iter_raw():
            if b'"text_delta"' in chunk:
                last = time.perf_counter()
                first = first or last
            received += chunk
    final = received[received.rindex(b"event: message_delta") :].split(b"\n")[1]
    tokens = json.loads(final[6:])["usage"]["output_tokens"]
    return Run(first - started, (tokens - 1) / (last - first), tokens)


@contextmanager
def served_process(extra_args: list[str]) -> Iterator[str]:
    """`tercet serve` on a free loopback port, in its own process; yields its base URL."""
    command = [
        sys.executable,
        "-m",
        "tercet.cli.main",
        "serve",
        "--port",
        "0",
        "--log-level",
        "warning",
        *extra_args,
    ]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if match := re.search(r"listening on (http://\S+)", line):
                threading.Thread(target=process.stderr.read, daemon=True).start()
                yield match.group(1)
                return
        raise RuntimeError("tercet serve did not start")
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="the smallest run: the script works")
    parser.add_argument(
        "--server-args",
        default="",
        help="more `tercet serve` options, e.g. '--cache-ram-mb 0 --cache-disk-mb 0'",
    )
    args = parser.parse_args()
    if args.quick:
        args.trials, args.tokens = 1, 16

    engine = LlamaCppEngine(bundled_model_path(), model_id=BUNDLED_MODEL_ID)

    def direct(text: str, max_tokens: int) -> Run:
        return raw_run(engine, text, max_tokens)

    server_args = args.server_args.split()  # --cache-ram-mb 0 ...: the same with the cache off
    with (
        served_process(server_args) as base_url,
        httpx.Client(base_url=base_url, timeout=600) as http,
    ):
        server_run(http, prompt_text("warm-up"), 8)
        direct(prompt_text("warm-up-raw"), 8)
        raw: list[Run] = []
        served: list[Run] = []
        for _ in range(args.trials):
            raw.append(direct(prompt_text(uuid.uuid4().hex), args.tokens))
            served.append(server_run(http, prompt_text(uuid.uuid4().hex), args.tokens))

    def median(runs: list[Run], field: str) -> float:
        return statistics.median(getattr(r, field) for r in runs)

    raw_ttft, srv_ttft = median(raw, "ttft"), median(served, "ttft")
    raw_rate, srv_rate = median(raw, "decode_rate"), median(served, "decode_rate")
    print(f"model {BUNDLED_MODEL_ID}, {args.trials} trials, up to {args.tokens} tokens")
    print(f"{'':24}{'raw llama-cpp-python':>22}{'tercet server':>16}")
    print(f"{'time to first token':24}{raw_ttft * 1000:>19.1f} ms{srv_ttft * 1000:>13.1f} ms")
    print(f"{'decode tokens/s':24}{raw_rate:>22.1f}{srv_rate:>16.1f}")
    print(f"{'tokens generated':24}{median(raw, 'tokens'):>22.0f}{median(served, 'tokens'):>16.0f}")
    print(f"TTFT overhead: {(srv_ttft - raw_ttft) * 1000:+.1f} ms (target < 10 ms)")
    print(f"decode throughput ratio server/raw: {srv_rate / raw_rate:.3f} (target >= 0.97)")


if __name__ == "__main__":
    main()

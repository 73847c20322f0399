"""Server overhead: the same prompts through `tercet`'s HTTP stream and through llama-cpp-python.

Both sides run the same loaded model, greedy, on prompts made unique per trial (so neither side
profits from the other's KV cache beyond the shared template prefix), alternating trial by trial.
Prints medians and the ratios; targets: decode throughput within 5%, time to first token within
20 ms of the raw engine.

    .venv/bin/python bench/overhead.py [--trials 5] [--tokens 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from dataclasses import dataclass

import httpx
import llama_cpp

from tercet.engine.base import Conversation, Turn
from tercet.engine.bundled import BUNDLED_MODEL_ID, bundled_model_path
from tercet.engine.llama import LlamaCppEngine
from tercet.server.app import create_app
from tercet.server.config import ServerConfig
from tercet.server.runner import BackgroundServer
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
        system=None, turns=[Turn("user", [TextBlockParam(type="text", text=text)])]
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


def server_run(base_url: str, text: str, max_tokens: int) -> Run:
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
    tokens = 0
    with httpx.stream("POST", f"{base_url}/v1/messages", json=body, timeout=600) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and '"text_delta"' in line:
                last = time.perf_counter()
                first = first or last
            elif line.startswith("data: ") and '"message_delta"' in line:
                tokens = json.loads(line[6:])["usage"]["output_tokens"]
    return Run(first - started, (tokens - 1) / (last - first), tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=200)
    args = parser.parse_args()

    engine = LlamaCppEngine(bundled_model_path(), model_id=BUNDLED_MODEL_ID)
    with BackgroundServer(create_app(ServerConfig(api_keys=[]), [engine])) as server:
        server_run(server.base_url, prompt_text("warm-up"), 8)
        raw_run(engine, prompt_text("warm-up-raw"), 8)
        raw: list[Run] = []
        served: list[Run] = []
        for _ in range(args.trials):
            raw.append(raw_run(engine, prompt_text(uuid.uuid4().hex), args.tokens))
            served.append(server_run(server.base_url, prompt_text(uuid.uuid4().hex), args.tokens))

    def median(runs: list[Run], field: str) -> float:
        return statistics.median(getattr(r, field) for r in runs)

    raw_ttft, srv_ttft = median(raw, "ttft"), median(served, "ttft")
    raw_rate, srv_rate = median(raw, "decode_rate"), median(served, "decode_rate")
    print(f"model {BUNDLED_MODEL_ID}, {args.trials} trials, up to {args.tokens} tokens")
    print(f"{'':24}{'raw llama-cpp-python':>22}{'tercet server':>16}")
    print(f"{'time to first token':24}{raw_ttft * 1000:>19.1f} ms{srv_ttft * 1000:>13.1f} ms")
    print(f"{'decode tokens/s':24}{raw_rate:>22.1f}{srv_rate:>16.1f}")
    print(f"{'tokens generated':24}{median(raw, 'tokens'):>22.0f}{median(served, 'tokens'):>16.0f}")
    print(f"TTFT overhead: {(srv_ttft - raw_ttft) * 1000:+.1f} ms (target < 20 ms)")
    print(f"decode throughput ratio server/raw: {srv_rate / raw_rate:.3f} (target > 0.95)")


if __name__ == "__main__":
    main()

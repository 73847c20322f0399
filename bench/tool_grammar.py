"""The cost of constrained decoding: decode speed with and without the tool-input grammar.

The same engine decodes (a) free text and (b) a forced tool call whose input is sampled under
the grammar derived from its JSON schema, alternating trial by trial; tokens per second are
compared as a ratio.

    .venv/bin/python bench/tool_grammar.py [--trials 5] [--tokens 150]
    .venv/bin/python bench/tool_grammar.py --quick    # one short trial: the script works
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from tercet.engine.base import (
    Conversation,
    SamplingParams,
    TextChunk,
    ToolCallDelta,
    ToolPolicy,
    Turn,
)
from tercet.engine.bundled import BUNDLED_MODEL_ID, bundled_model_path
from tercet.engine.llama import LlamaCppEngine
from tercet.wire.content import TextBlockParam
from tercet.wire.requests import CustomToolParam

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "body": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "priority": {"type": "integer"},
    },
    "required": ["title", "body", "tags", "priority"],
}
TOOL = CustomToolParam(name="file_issue", description="File an issue", input_schema=SCHEMA)
PROMPT = "File an issue about the login page crashing when the password is empty. Be detailed."


def rate(engine: LlamaCppEngine, params: SamplingParams, tools: bool) -> tuple[float, int]:
    """Sampled tokens per second after the first, and how many were sampled: free text, or
    the tool's input (the tokens the engine writes itself around it do not count)."""
    conversation = Conversation(
        system=(),
        turns=[Turn("user", [TextBlockParam(type="text", text=PROMPT)])],
        tools=[TOOL] if tools else (),
    )
    prompt = engine.prepare_sync(conversation)
    stamps: list[float] = []  # one event per sampled token (a split UTF-8 character aside)
    for event in engine.generate_sync(prompt, params, threading.Event()):
        if isinstance(event, ToolCallDelta if tools else TextChunk):
            stamps.append(time.perf_counter())
    assert len(stamps) > 1, "too few tokens to time"
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]), len(stamps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=150)
    parser.add_argument("--quick", action="store_true", help="one short trial")
    parser.add_argument("--threads", type=int, default=None, help="decode threads")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.tokens = 1, 24
    engine = LlamaCppEngine(bundled_model_path(), model_id=BUNDLED_MODEL_ID, threads=args.threads)
    free = SamplingParams(max_tokens=args.tokens, temperature=0)
    policy = ToolPolicy(schemas={TOOL.name: SCHEMA}, choice="tool", name=TOOL.name)
    forced = SamplingParams(max_tokens=args.tokens, temperature=0, tools=policy)
    rate(engine, free, tools=False)  # warm-up
    plain: list[float] = []
    constrained: list[float] = []
    counts: list[int] = []
    for _ in range(args.trials):
        plain.append(rate(engine, free, tools=False)[0])
        speed, count = rate(engine, forced, tools=True)
        constrained.append(speed)
        counts.append(count)
    free_rate, grammar_rate = statistics.median(plain), statistics.median(constrained)
    print(f"model {BUNDLED_MODEL_ID}, {args.trials} trials, up to {args.tokens} tokens")
    print(f"free text decode:         {free_rate:7.1f} tokens/s")
    print(
        f"tool input under grammar: {grammar_rate:7.1f} tokens/s ({statistics.median(counts):.0f} tokens)"
    )
    print(f"constrained / free ratio:  {grammar_rate / free_rate:.3f}")


if __name__ == "__main__":
    main()

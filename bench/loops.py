"""Degenerate loops: how often the bundled model's replies end repeating themselves, per setting.

A fixed set of prompts (coding questions, "fix this bug" requests, chat, and the two-file
repository of issue 15, with and without tools) runs through the embedded engine under each
repetition setting and temperature. A reply ends in a loop when its last tokens are one block
repeated: a block of p tokens at least three times over at least 24 tokens (an 8-token phrase
three times, a 2-token one twelve times), or when it ran into max_tokens with nearly all of its
second half (>= 80% of its 4-grams) already said earlier. Prints the share k/n of looping
replies with a Wilson 95% interval, and the mean reply length.

    .venv/bin/python bench/loops.py [--tokens 200] [--temperatures 0,0.2,1] [--settings ...]
    .venv/bin/python bench/loops.py --quick
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tercet.engine.base import (
    Conversation,
    Finish,
    RepetitionPenalty,
    SamplingParams,
    TextChunk,
    ToolCallStart,
    ToolPolicy,
    Turn,
)
from tercet.engine.bundled import (
    BUNDLED_MODEL_ID,
    BUNDLED_REPETITION,
    BUNDLED_TOP_P,
    bundled_model_path,
)
from tercet.engine.llama import LlamaCppEngine
from tercet.wire.content import TextBlockParam
from tercet.wire.requests import CustomToolParam

SETTINGS: dict[str, RepetitionPenalty | None] = {
    "none": None,
    "bundled": BUNDLED_REPETITION,
    "dry0.8": RepetitionPenalty(dry_multiplier=0.8),
    "dry0.8-len4": RepetitionPenalty(dry_multiplier=0.8, dry_allowed_length=4),
    "rep1.1": RepetitionPenalty(repeat=1.1),
    "rep1.2": RepetitionPenalty(repeat=1.2),
    "dry0.8+rep1.1": RepetitionPenalty(dry_multiplier=0.8, repeat=1.1),
}

REPO = """You are a coding assistant working in a repository with two files.

calc.py:
```python
def add(a, b):
    return a - b
```

test_calc.py:
```python
from calc import add


def test_add():
    assert add(2, 3) == 5
```"""

_FILE_TOOLS = [
    CustomToolParam(
        name="read_file",
        description="Read a file of the repository",
        input_schema={
            "type": "object",
            "properties": {"path": {"type": "string"}},
            "required": ["path"],
        },
    ),
    CustomToolParam(
        name="edit_file",
        description="Replace old_text with new_text in a file",
        input_schema={
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "old_text": {"type": "string"},
                "new_text": {"type": "string"},
            },
            "required": ["path", "old_text", "new_text"],
        },
    ),
]


@dataclass(frozen=True)
class Prompt:
    user: str
    system: str = ""
    tools: bool = False


PROMPTS = [
    # issue 15's example, as a coding agent would send it
    Prompt("The test in test_calc.py fails. Fix calc.py.", REPO, tools=True),
    Prompt("The test in test_calc.py fails. Fix calc.py.", REPO),
    Prompt("Why does test_add fail? Explain, then give the corrected calc.py.", REPO),
    # fix this bug
    Prompt(
        "This should return the largest number but it does not. Fix it.\n\n"
        "def biggest(xs):\n    return min(xs)"
    ),
    Prompt("Fix the off-by-one error:\n\nfor i in range(1, len(items)):\n    print(items[i])"),
    Prompt("My function returns None. Why?\n\ndef double(x):\n    x * 2"),
    Prompt(
        "This JavaScript never prints 'equal'. Fix it.\n\nif (a = b) {\n  console.log('equal');\n}"
    ),
    Prompt("I get KeyError: 'name' from user['name']. How do I fix it?"),
    Prompt("Fix this SQL: SELECT name FROM users WHERE age > 30 ORDER age;"),
    Prompt("The loop never ends. Fix it.\n\nn = 10\nwhile n > 0:\n    print(n)"),
    # coding questions
    Prompt("Write a Python function that reverses a string."),
    Prompt("Explain the difference between a list and a tuple in Python."),
    Prompt("How do I read a CSV file in Python?"),
    Prompt("Write a SQL query that returns the ten most recent orders."),
    Prompt("What does the yield keyword do in Python?"),
    Prompt("Write a bash command that counts the lines of all .py files."),
    Prompt("How do I sort a dictionary by its values?"),
    Prompt("What is a race condition?"),
    # chat
    Prompt("Hi! How are you today?"),
    Prompt("Tell me about the history of Rome."),
    Prompt("What should I cook for dinner tonight?"),
    Prompt("Write a short poem about autumn."),
    Prompt("Give me three tips for better sleep."),
    Prompt("What is the capital of Australia?"),
]
QUICK_PROMPTS = [PROMPTS[0], PROMPTS[3]]


def ends_in_loop(tokens: Sequence[int], hit_limit: bool) -> bool:
    """Whether the reply ends repeating itself (see the module's docstring)."""
    n = len(tokens)
    for period in range(1, n // 3 + 1):
        span = period  # how many tokens at the end repeat with this period
        while span < n and tokens[n - 1 - span] == tokens[n - 1 - span + period]:
            span += 1
        if span >= max(3 * period, 24):
            return True
    if hit_limit and n >= 32:
        grams = [tuple(tokens[i : i + 4]) for i in range(n - 3)]
        half = len(grams) // 2
        seen = set(grams[:half])
        repeated = 0
        for gram in grams[half:]:
            repeated += gram in seen
            seen.add(gram)
        return repeated >= 0.8 * (len(grams) - half)
    return False


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Reply:
    looped: bool
    tokens: int
    tool_call: bool
    text: str


def reply(
    engine: LlamaCppEngine,
    prompt: Prompt,
    repetition: RepetitionPenalty | None,
    temperature: float,
    max_tokens: int,
) -> Reply:
    conversation = Conversation(
        system=[TextBlockParam(type="text", text=prompt.system)] if prompt.system else (),
        turns=[Turn("user", [TextBlockParam(type="text", text=prompt.user)])],
        tools=_FILE_TOOLS if prompt.tools else (),
    )
    policy = None
    if prompt.tools:
        policy = ToolPolicy(schemas={t.name: t.input_schema for t in _FILE_TOOLS}, choice="auto")
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=BUNDLED_TOP_P if 0 < temperature < 1 else None,
        tools=policy,
        repetition=repetition or RepetitionPenalty(),  # explicit: not the model's default
    )
    text = ""
    finish: Finish | None = None
    called = False
    for event in engine.generate_sync(engine.prepare_sync(conversation), params, threading.Event()):
        if isinstance(event, TextChunk):
            text += event.text
        elif isinstance(event, ToolCallStart):
            called = True
        elif isinstance(event, Finish):
            finish = event
    assert finish is not None
    tokens = engine.tokenize_fragment(text)
    hit_limit = finish.reason in ("max_tokens", "context_window")
    return Reply(ends_in_loop(tokens, hit_limit), finish.output_tokens, called, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=200, help="max_tokens of each reply")
    parser.add_argument("--temperatures", default="0,0.2,1", help="comma-separated")
    parser.add_argument("--settings", default="none,bundled", help=f"of {', '.join(SETTINGS)}")
    parser.add_argument("--samples", type=int, default=1, help="replies per prompt at T > 0")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--show", action="store_true", help="print each reply's verdict and end")
    parser.add_argument("--quick", action="store_true", help="a tiny run: the script works")
    parser.add_argument("--prompts", help="comma-separated indices into PROMPTS (default: all)")
    args = parser.parse_args()
    prompts = QUICK_PROMPTS if args.quick else PROMPTS
    if args.prompts and not args.quick:
        prompts = [PROMPTS[int(i)] for i in args.prompts.split(",")]
    temperatures = [0.0] if args.quick else [float(t) for t in args.temperatures.split(",")]
    max_tokens = 24 if args.quick else args.tokens
    names = args.settings.split(",")
    unknown = [name for name in names if name not in SETTINGS]
    if unknown:
        sys.exit(f"unknown settings {unknown}; known: {', '.join(SETTINGS)}")
    random.seed(15)  # the engine draws its sampling seeds from `random`
    engine = LlamaCppEngine(
        bundled_model_path(), model_id=BUNDLED_MODEL_ID, context_window=4096, threads=args.threads
    )
    print(f"model {BUNDLED_MODEL_ID}, {len(prompts)} prompts, up to {max_tokens} tokens a reply")
    print(
        f"{'temperature':>11}  {'setting':<14} {'loops k/n':>9}  {'95% interval':<13} "
        f"{'tokens':>6}  {'tool calls':>10}  seconds"
    )
    for temperature in temperatures:
        samples = 1 if temperature == 0 else args.samples
        speeds: dict[str, float] = {}  # tokens a second, prefill included, per setting
        for name in names:
            started = time.perf_counter()
            replies: list[Reply] = []
            for index, prompt in enumerate(prompts):
                for _ in range(samples):
                    replies.append(reply(engine, prompt, SETTINGS[name], temperature, max_tokens))
                    if args.show:
                        last = replies[-1]
                        verdict = "LOOP" if last.looped else "ok"
                        print(
                            f"    {name} T={temperature:g} #{index} {verdict} {last.tokens} "
                            f"tokens: ...{last.text[-100:]!r}",
                            flush=True,
                        )
            k, n = sum(r.looped for r in replies), len(replies)
            low, high = wilson(k, n)
            mean_tokens = sum(r.tokens for r in replies) / n
            calls = sum(r.tool_call for r in replies)
            tool_prompts = sum(p.tools for p in prompts) * samples
            elapsed = time.perf_counter() - started
            speeds[name] = sum(r.tokens for r in replies) / elapsed
            print(
                f"{temperature:>11g}  {name:<14} {f'{k}/{n}':>9}  [{low:.2f}, {high:.2f}]  "
                f"{mean_tokens:>6.0f}  {f'{calls}/{tool_prompts}':>10}  {elapsed:.0f}",
                flush=True,
            )
        for name in names[1:]:  # what a setting costs in speed, against the first
            print(
                f"{'':>11}  tokens a second, prefill included, {name} / {names[0]}: "
                f"{speeds[name] / speeds[names[0]]:.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()

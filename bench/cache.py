"""Prompt cache: what it saves, measured through the server with the Anthropic SDK.

1. Time to first token for a cached system prompt of each size: cold (the first request, which
   writes the cache) and warm (the same system prompt with another question, sent after an
   unrelated request has replaced the engine's live context, so the prefix must come back from
   the cache store). Target: warm within 5% of cold from 4k tokens up.
2. A replay of an agent conversation (a long system prompt, then turns that each add the last
   answer and a new tool result; top-level automatic `cache_control`) on the embedded engine
   with the prompt cache and without it: prefill tokens (as billed, and as the engine actually
   evaluated them) and wall time.
3. The same replay, with the same messages, against llama-cpp-python's own OpenAI server with
   its RAM cache on (`python -m llama_cpp.server --cache true --cache_type ram`).
4. What the cache holds: bytes of state per cached token, and the RAM and disk tiers.

Everything runs on the bundled model, one engine at a time, in a temporary data directory.
Progress goes to stderr, the results to stdout.

    .venv/bin/python bench/cache.py [--sizes 1024,4096,12288] [--turns 20] [--threads N]
    .venv/bin/python bench/cache.py --quick   # one 1k prefix, 2 turns: the script works

Timings are only as good as the machine is quiet: another process on the same cores slows
llama.cpp's threads far more than its share of the CPU.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import anthropic
import httpx
from anthropic.types import MessageParam, TextBlockParam

from tercet.cache.config import CacheConfig
from tercet.cache.store import CacheStats, PromptCache
from tercet.engine.bundled import BUNDLED_MODEL_ID, bundled_model_path
from tercet.engine.llama import DEFAULT_CONTEXT_WINDOW, LlamaCppEngine, read_gguf_metadata
from tercet.server.app import create_app
from tercet.server.config import ServerConfig
from tercet.server.runner import BackgroundServer

CLAUDE_MODEL = "claude-opus-4-8"  # routed to the served model
TTL = Literal["5m", "1h"]
History = list[dict[str, str]]  # {"role": ..., "content": ...}, as both APIs take it

NOUNS = (
    "buffer", "socket", "ledger", "index", "segment", "packet", "router", "schema", "cursor",
    "token", "shard", "queue", "tile", "sensor", "invoice", "manifest", "kernel", "bucket",
    "journal", "widget", "lease", "replica", "checksum"
)  # fmt: skip
VERBS = (
    "load", "flush", "merge", "parse", "render", "verify", "compact", "resolve", "encode",
    "rotate", "scan", "split"
)  # fmt: skip
ADJECTIVES = (
    "stale", "pending", "primary", "cold", "dirty", "sealed", "partial", "remote", "nested",
    "sparse"
)  # fmt: skip
UNITS = ("ms", "bytes", "rows", "retries", "pages", "requests", "seconds", "items")
QUESTIONS = (
    "Which rule mentions the smallest number?",
    "Summarise the first rule in one sentence.",
    "What does the first function return?",
    "Name one unit that appears in the rules.",
    "Which noun appears most often?",
    "What should happen to a stale buffer?",
)
UNRELATED = "Write one short sentence about the sea."


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- Workload: varied, realistic-looking text of a given length in tokens --------------------


class TextMaker:
    """Deterministic code, rules and log lines, cut to a length in the model's tokens."""

    def __init__(self, count_tokens: Callable[[str], int]) -> None:
        self._count = count_tokens

    def text(self, tokens: int, seed: str, kinds: Sequence[str], head: str = "") -> str:
        """`head`, then lines of the given kinds, until the whole is at least `tokens` long."""
        rng = random.Random(seed)
        lines = [head] if head else []
        estimate = self._count(head)
        while True:
            while estimate < tokens:
                line = _line(rng, rng.choice(kinds), len(lines))
                lines.append(line)
                estimate += self._count(line + "\n")
            text = "\n".join(lines)
            estimate = self._count(text)  # lines tokenised apart may merge differently
            if estimate >= tokens:
                return text


def _line(rng: random.Random, kind: str, index: int) -> str:
    noun, other = rng.sample(NOUNS, 2)
    verb, adjective, unit = rng.choice(VERBS), rng.choice(ADJECTIVES), rng.choice(UNITS)
    n, m = rng.randint(2, 9999), rng.randint(2, 512)
    if kind == "rule":
        return (
            f"Rule {index + 1}: when a {adjective} {noun} exceeds {n} {unit}, {verb} the "
            f"{other} within {m} seconds and report code E{rng.randint(100, 999)}."
        )
    if kind == "code":
        return rng.choice(
            (
                f"def {verb}_{noun}(count: int = {n}, limit: float = {m / 7:.2f}) -> list[int]:",
                f"    # {adjective} {noun}s above {n} {unit} are handled in batches of {m}",
                f"    return [{other}_id * {m} % {n} for {other}_id in range(count)]",
                f"    {noun}_{index} = {other}.{verb}(limit={n}, retries={m % 9})",
                f"class {noun.title()}{other.title()}(Base{m % 13}):",
            )
        )
    # a log line, as a tool's output would be
    return (
        f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} {rng.randint(0, 23):02d}:"
        f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d} {rng.choice(('INFO', 'WARN', 'DEBUG'))}"
        f" {noun}.{verb} id={rng.getrandbits(32):08x} {adjective} took {m} ms ({n} {unit})"
    )


@dataclass
class ColdWarm:
    """One size, one trial: a system prompt and two different questions about it."""

    size: int
    system: str
    cold_question: str
    warm_question: str


@dataclass
class Agent:
    system: str
    users: list[str]


def make_cold_warm(maker: TextMaker, size: int, trial: int) -> ColdWarm:
    head = "You answer questions about the rules and code below.\n"
    system = maker.text(size, f"system-{size}-{trial}", ("rule", "rule", "code"), head)
    cold = QUESTIONS[(2 * trial) % len(QUESTIONS)]
    warm = QUESTIONS[(2 * trial + 1) % len(QUESTIONS)]
    return ColdWarm(size, system, cold, warm)


def make_agent(maker: TextMaker, turns: int, system_tokens: int, result_tokens: int) -> Agent:
    head = (
        "You are a coding agent working in a repository. Follow the project's rules and use "
        "the tool results you are given. Keep answers short.\n"
    )
    system = maker.text(system_tokens, "agent-system", ("rule", "code"), head)
    users = ["Find out why the nightly job fails, then fix it. Start with the logs."]
    for turn in range(1, turns):
        result = maker.text(result_tokens, f"agent-turn-{turn}", ("log", "log", "code"))
        users.append(f"Tool result (step {turn}):\n{result}\n\nWhat next?")
    return Agent(system, users)


# --- Measuring the embedded engine --------------------------------------------------------


class PrefillCounter:
    """Counts the tokens an engine evaluates while prefilling (decoding is not counted).

    Hooks the engine's private prefill and its Llama's `eval`; both run on the engine's one
    worker thread, so a plain counter will do.
    """

    def __init__(self, engine: LlamaCppEngine) -> None:
        self.tokens = 0
        self._active = False
        llm = engine._llama
        evaluate = llm.eval
        prefill = engine._prefill

        def counting_eval(tokens: Sequence[int]) -> None:
            if self._active:
                self.tokens += len(tokens)
            evaluate(tokens)

        def counting_prefill(*args: Any, **kwargs: Any) -> None:
            self._active = True
            try:
                prefill(*args, **kwargs)
            finally:
                self._active = False

        llm.eval = counting_eval  # type: ignore[method-assign]
        engine._prefill = counting_prefill  # type: ignore[method-assign]


@dataclass
class Asked:
    ttft: float
    input: int
    written: int
    read: int
    evaluated: int


def ask_streamed(
    client: anthropic.Anthropic,
    counter: PrefillCounter,
    system: str,
    question: str,
    ttl: TTL,
) -> Asked:
    """One streamed request with the system prompt marked for caching; times the first token."""
    block: TextBlockParam = {
        "type": "text",
        "text": system,
        "cache_control": {"type": "ephemeral", "ttl": ttl},
    }
    before = counter.tokens
    started = time.perf_counter()
    first: float | None = None
    with client.messages.stream(
        model=CLAUDE_MODEL,
        max_tokens=8,
        system=[block],
        messages=[{"role": "user", "content": question}],
        extra_body={"temperature": 0},
    ) as stream:
        for event in stream:
            # The first text, or the end when the model answers nothing at all.
            if first is None and event.type in ("content_block_delta", "message_delta"):
                first = time.perf_counter()
        usage = stream.get_final_message().usage
    assert first is not None
    return Asked(
        ttft=first - started,
        input=usage.input_tokens,
        written=usage.cache_creation_input_tokens or 0,
        read=usage.cache_read_input_tokens or 0,
        evaluated=counter.tokens - before,
    )


def ask_unrelated(client: anthropic.Anthropic) -> None:
    """A short request on another prompt: afterwards the live context holds that one."""
    client.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=4,
        system="You are a terse assistant.",
        messages=[{"role": "user", "content": UNRELATED}],
        extra_body={"temperature": 0},
    )


@dataclass
class SizeResult:
    size: int
    cold: list[Asked] = field(default_factory=list)
    warm: list[Asked] = field(default_factory=list)
    bytes_per_token: list[float] = field(default_factory=list)


def cold_and_warm(
    client: anthropic.Anthropic,
    cache: PromptCache,
    counter: PrefillCounter,
    workloads: list[ColdWarm],
    ttl: TTL,
) -> SizeResult:
    result = SizeResult(workloads[0].size)
    for work in workloads:
        ask_unrelated(client)
        before = cache.stats()
        cold = ask_streamed(client, counter, work.system, work.cold_question, ttl)
        # A five-minute entry is captured when another prompt takes the context over.
        ask_unrelated(client)
        after = cache.stats()
        one_more = after.writes - before.writes == after.ram_entries - before.ram_entries == 1
        if one_more and cold.written:
            # The new entry holds the whole prefix up to the breakpoint (nothing was read).
            result.bytes_per_token.append((after.ram_bytes - before.ram_bytes) / cold.written)
        warm = ask_streamed(client, counter, work.system, work.warm_question, ttl)
        result.cold.append(cold)
        result.warm.append(warm)
        log(
            f"  {work.size} tokens: cold {cold.ttft:.3f} s (written {cold.written}, read "
            f"{cold.read}), warm {warm.ttft:.3f} s (written {warm.written}, read {warm.read}, "
            f"evaluated {warm.evaluated})"
        )
    return result


# --- The replay, on any server ----------------------------------------------------------


@dataclass
class TurnUsage:
    reply: str
    prompt: int  # the whole prompt, in tokens
    computed: int  # billed as computed: input + cache creation (the whole prompt for the peer)
    read: int
    output: int


@dataclass
class Replay:
    wall: float = 0.0
    turns: list[TurnUsage] = field(default_factory=list)
    evaluated: int | None = None  # prefill tokens the engine evaluated, where it can be seen

    def total(self, name: str) -> int:
        return sum(getattr(turn, name) for turn in self.turns)


def replay(
    send: Callable[[History], TurnUsage],
    agent: Agent,
    replies: Sequence[str] | None,
    between: Callable[[], None] | None,
    counter: PrefillCounter | None,
) -> Replay:
    """The conversation turn by turn. The history takes `replies` where given (so every side
    sees the same prompts), else what the model answered. `between` runs before every turn
    but the first, untimed (an unrelated request, when the live context is to be lost)."""
    history: History = []
    result = Replay(evaluated=0 if counter else None)
    for turn, user in enumerate(agent.users):
        history.append({"role": "user", "content": user})
        if between is not None and turn:
            between()
        before = counter.tokens if counter else 0
        started = time.perf_counter()
        usage = send(history)
        result.wall += time.perf_counter() - started
        if counter is not None and result.evaluated is not None:
            result.evaluated += counter.tokens - before
        result.turns.append(usage)
        reply = replies[turn] if replies is not None else usage.reply.strip() or "(no reply)"
        history.append({"role": "assistant", "content": reply})
        log(
            f"  turn {turn + 1}: prompt {usage.prompt}, computed {usage.computed}, "
            f"read {usage.read}, {time.perf_counter() - started:.2f} s"
        )
    return result


def tercet_sender(
    client: anthropic.Anthropic, system: str, max_tokens: int
) -> Callable[[History], TurnUsage]:
    def send(history: History) -> TurnUsage:
        message = client.messages.create(
            model=CLAUDE_MODEL,
            max_tokens=max_tokens,
            system=system,
            messages=cast(list[MessageParam], history),
            cache_control={"type": "ephemeral"},  # automatic: the last block
            extra_body={"temperature": 0},
        )
        usage = message.usage
        written = usage.cache_creation_input_tokens or 0
        read = usage.cache_read_input_tokens or 0
        text = "".join(block.text for block in message.content if block.type == "text")
        prompt = usage.input_tokens + written + read
        return TurnUsage(text, prompt, usage.input_tokens + written, read, usage.output_tokens)

    return send


def peer_sender(http: httpx.Client, system: str, max_tokens: int) -> Callable[[History], TurnUsage]:
    def send(history: History) -> TurnUsage:
        body = {
            "messages": [{"role": "system", "content": system}, *history],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        response = http.post("/chat/completions", json=body)
        response.raise_for_status()
        data = response.json()
        usage = data["usage"]
        text = data["choices"][0]["message"]["content"] or ""
        prompt = int(usage["prompt_tokens"])
        return TurnUsage(text, prompt, prompt, 0, int(usage["completion_tokens"]))

    return send


# --- The servers ------------------------------------------------------------------------


@contextmanager
def tercet_server(engine: LlamaCppEngine, data_dir: Path) -> Iterator[anthropic.Anthropic]:
    """Our server on a loopback port in this process; it closes the engine when it stops."""
    config = ServerConfig(data_dir=data_dir, api_keys=[])
    with BackgroundServer(create_app(config, [engine])) as running:
        yield anthropic.Anthropic(
            base_url=running.base_url, api_key="bench", max_retries=0, timeout=3600
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def peer_server(model: Path, threads: int) -> Iterator[httpx.Client]:
    """llama-cpp-python's OpenAI server on the same GGUF, with its RAM prompt cache."""
    port = free_port()
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model),
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", str(DEFAULT_CONTEXT_WINDOW),
        "--n_threads", str(threads), "--n_threads_batch", str(threads),
        "--flash_attn", "true",
        "--cache", "true", "--cache_type", "ram",
        "--verbose", "false",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    errors: list[bytes] = []
    # Drain stderr so the server never blocks on a full pipe; keep it to show if it dies.
    threading.Thread(target=lambda: errors.extend(process.stderr or ()), daemon=True).start()
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                tail = b"".join(errors[-20:]).decode(errors="replace")
                raise RuntimeError(f"llama_cpp.server did not start:\n{tail}")
            time.sleep(0.2)
        with httpx.Client(base_url=base, timeout=3600) as http:
            yield http
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


# --- The three phases, one model in memory at a time -------------------------------------


@dataclass
class CachedPhase:
    sizes: list[SizeResult]
    agent: Agent
    replay: Replay
    stats: CacheStats


def run_cached(args: argparse.Namespace, model: Path, root: Path, ttl: TTL) -> CachedPhase:
    cache = PromptCache(CacheConfig(), root / "prompt-cache")
    engine = LlamaCppEngine(model, model_id=BUNDLED_MODEL_ID, cache=cache, threads=args.threads)
    maker = TextMaker(lambda text: len(engine.tokenize_fragment(text)))
    workloads = [[make_cold_warm(maker, s, t) for t in range(args.trials)] for s in args.sizes]
    agent = make_agent(maker, args.turns, args.agent_system, args.tool_result)
    counter = PrefillCounter(engine)
    with tercet_server(engine, root / "data-cached") as client:
        ask_unrelated(client)  # warm-up
        log("1. cold and warm time to first token")
        sizes = [cold_and_warm(client, cache, counter, work, ttl) for work in workloads]
        log("2. agent replay, cache on")
        between = (lambda: ask_unrelated(client)) if args.interleave else None
        sender = tercet_sender(client, agent.system, args.max_tokens)
        on = replay(sender, agent, None, between, counter)
    return CachedPhase(sizes, agent, on, cache.stats())


def run_uncached(
    args: argparse.Namespace, model: Path, root: Path, agent: Agent, replies: list[str]
) -> Replay:
    engine = LlamaCppEngine(model, model_id=BUNDLED_MODEL_ID, cache=None, threads=args.threads)
    counter = PrefillCounter(engine)
    with tercet_server(engine, root / "data-uncached") as client:
        ask_unrelated(client)
        log("2. agent replay, cache off")
        between = (lambda: ask_unrelated(client)) if args.interleave else None
        sender = tercet_sender(client, agent.system, args.max_tokens)
        return replay(sender, agent, replies, between, counter)


def run_peer(args: argparse.Namespace, model: Path, agent: Agent, replies: list[str]) -> Replay:
    with peer_server(model, args.threads) as http:
        unrelated = {
            "messages": [
                {"role": "system", "content": "You are a terse assistant."},
                {"role": "user", "content": UNRELATED},
            ],
            "max_tokens": 4,
            "temperature": 0,
        }
        http.post("/chat/completions", json=unrelated).raise_for_status()
        log("3. agent replay, llama-cpp-python server with its RAM cache")

        def between() -> None:
            http.post("/chat/completions", json=unrelated).raise_for_status()

        sender = peer_sender(http, agent.system, args.max_tokens)
        return replay(sender, agent, replies, between if args.interleave else None, None)


# --- Report ------------------------------------------------------------------------------


def kv_bytes_per_token(model: Path) -> int:
    """f16 K and V of every layer for one token: what a snapshot should hold per token."""
    meta = read_gguf_metadata(model)
    arch = meta.get("general.architecture", "llama")
    layers = int(meta[f"{arch}.block_count"])
    width = int(meta[f"{arch}.embedding_length"])
    heads = int(meta[f"{arch}.attention.head_count"])
    kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
    return 2 * 2 * layers * width * kv_heads // heads


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b else "n/a"


def report(
    args: argparse.Namespace,
    model: Path,
    ttl: TTL,
    cached: CachedPhase,
    off: Replay,
    peer: Replay | None,
) -> None:
    median = statistics.median
    threads = args.threads or os.cpu_count()
    print(f"model {BUNDLED_MODEL_ID} ({model.name}), {threads} threads, trials {args.trials}")
    print(f"load average at the start {args.load_start:.2f}, at the end {os.getloadavg()[0]:.2f}")
    print()
    print(f"1. time to first token, system prompt with cache_control (ttl {ttl}), 8 tokens out")
    print("   warm = another question after an unrelated request replaced the live context")
    print(
        f"   {'prompt':>7} {'cold s':>9} {'warm s':>9} {'warm/cold':>10}  "
        f"{'cold written/read':>18}  {'warm written/read/input':>24}  {'warm evaluated':>14}"
    )
    for size in cached.sizes:
        cold, warm = size.cold[-1], size.warm[-1]
        cold_s = median(a.ttft for a in size.cold)
        warm_s = median(a.ttft for a in size.warm)
        prefix = cold.input + cold.written + cold.read
        print(
            f"   {prefix:>7} {cold_s:>9.3f} {warm_s:>9.3f} {warm_s / cold_s:>9.1%}  "
            f"{f'{cold.written} / {cold.read}':>18}  "
            f"{f'{warm.written} / {warm.read} / {warm.input}':>24}  {warm.evaluated:>14}"
        )
        minimum = CacheConfig().min_tokens
        if size.size < minimum:
            print(f"   {'':>7} under the cache's minimum of {minimum} tokens: not cached")
        elif not cold.written or not warm.read:
            print(
                f"   {'':>7} unexpected: the cold request wrote nothing or the warm one read nothing"
            )
    print("   target: warm <= 5% of cold from 4k tokens up")
    print()

    on = cached.replay
    turns = len(cached.agent.users)
    mode = ", an unrelated request between turns" if args.interleave else ""
    print(
        f"2. agent replay: {turns} turns, system ~{args.agent_system} tokens, tool results "
        f"~{args.tool_result} tokens, automatic cache_control, max_tokens {args.max_tokens}, "
        f"temperature 0{mode}"
    )
    print(f"   {'':34}{'cache on':>12}{'cache off':>12}{'on/off':>10}")
    rows: list[tuple[str, float, float, str]] = [
        ("prompt tokens, all turns", on.total("prompt"), off.total("prompt"), "{:.0f}"),
        ("billed input + cache creation", on.total("computed"), off.total("computed"), "{:.0f}"),
        ("billed cache read", on.total("read"), off.total("read"), "{:.0f}"),
        ("prefill tokens evaluated", on.evaluated or 0, off.evaluated or 0, "{:.0f}"),
        ("output tokens", on.total("output"), off.total("output"), "{:.0f}"),
        ("wall s", on.wall, off.wall, "{:.2f}"),
    ]
    for label, a, b, form in rows:
        print(f"   {label:34}{form.format(a):>12}{form.format(b):>12}{ratio(a, b):>10}")
    print(f"   wall time, cache on / off: {ratio(on.wall, off.wall)}x")
    print()

    if peer is not None:
        print(
            "3. the same replay (same messages) on llama-cpp-python's server, "
            "--cache true --cache_type ram"
        )
        print(f"   {'':34}{'tercet on':>12}{'peer':>12}{'ours/peer':>10}")
        peer_rows: list[tuple[str, float, float, str]] = [
            ("prompt tokens, all turns", on.total("prompt"), peer.total("prompt"), "{:.0f}"),
            ("output tokens", on.total("output"), peer.total("output"), "{:.0f}"),
            ("wall s", on.wall, peer.wall, "{:.2f}"),
        ]
        for label, a, b, form in peer_rows:
            print(f"   {label:34}{form.format(a):>12}{form.format(b):>12}{ratio(a, b):>10}")
        print(f"   tercet cache off / peer wall: {ratio(off.wall, peer.wall)}")
        print()

    stats = cached.stats
    mib = 1024 * 1024
    per_token = [b for size in cached.sizes for b in size.bytes_per_token]
    print("4. cache store (after parts 1 and 2)")
    if per_token:
        measured = ", ".join(
            f"{size.size}: {median(size.bytes_per_token):,.0f}"
            for size in cached.sizes
            if size.bytes_per_token
        )
        print(f"   bytes per cached token: {measured} (by requested size)")
    print(f"   f16 K+V per token from the model's shape: {kv_bytes_per_token(model):,}")
    print(
        f"   entries {stats.entries}; RAM {stats.ram_entries} entries, "
        f"{stats.ram_bytes / mib:,.1f} / {stats.ram_budget / mib:,.0f} MiB; disk "
        f"{stats.disk_entries} entries, {stats.disk_bytes / mib:,.1f} / "
        f"{stats.disk_budget / mib:,.0f} MiB"
    )
    print(f"   lookups: {stats.hits} hits, {stats.misses} misses; {stats.writes} writes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes",
        type=lambda text: [int(s) for s in text.split(",")],
        default=[1024, 4096, 12288],
        help="sizes of the cached prefix (the system block) in tokens, comma-separated; "
        "below the cache's minimum of 1024 nothing is cached (default 1024,4096,12288)",
    )
    parser.add_argument("--trials", type=int, default=1, help="cold/warm pairs per size")
    parser.add_argument("--ttl", choices=("5m", "1h"), default="5m")
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--agent-system", type=int, default=1500, help="tokens")
    parser.add_argument("--tool-result", type=int, default=150, help="tokens per turn")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="an unrelated request before each turn, so the live context is lost every time",
    )
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--no-peer", action="store_true", help="skip llama-cpp-python's server")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the smallest run: one prefix of the cache's minimum size, 2 turns, 4 tokens out",
    )
    args = parser.parse_args()
    if args.quick:
        minimum = CacheConfig().min_tokens
        args.sizes, args.trials, args.turns = [minimum], 1, 2
        args.agent_system, args.tool_result, args.max_tokens = minimum, 32, 4
    args.threads = args.threads or os.cpu_count() or 1
    args.load_start = os.getloadavg()[0]
    ttl: TTL = "1h" if args.ttl == "1h" else "5m"

    model = bundled_model_path()
    with tempfile.TemporaryDirectory(prefix="tercet-bench-cache-") as tmp:
        root = Path(tmp)
        cached = run_cached(args, model, root, ttl)
        replies = [turn.reply.strip() or "(no reply)" for turn in cached.replay.turns]
        off = run_uncached(args, model, root, cached.agent, replies)
        peer = None if args.no_peer else run_peer(args, model, cached.agent, replies)
    report(args, model, ttl, cached, off, peer)


if __name__ == "__main__":
    main()

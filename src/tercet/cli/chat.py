"""`tercet chat`: an interactive, streaming chat in the terminal, over the Messages API.

Without `--base-url` it starts the server in-process on a loopback port, so the chat always
goes through the same API that clients use.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from typing import Any

import anthropic
from anthropic.types import MessageParam

from tercet.cli.engine_options import add_engine_arguments, load_engine
from tercet.server.app import create_app
from tercet.server.config import ServerConfig
from tercet.server.runner import BackgroundServer


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "chat", help="chat with a model in the terminal", description=__doc__
    )
    parser.add_argument("--base-url", help="a running server (default: start one in-process)")
    parser.add_argument("--api-key", default="tercet", help="key for --base-url")
    parser.add_argument("--name", default="claude-sonnet-4-6", help="model name to ask for")
    parser.add_argument("--system", help="a system prompt")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=None)
    add_engine_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with ExitStack() as stack:
        base_url = args.base_url
        if base_url is None:
            app = create_app(ServerConfig(api_keys=[]), [load_engine(args)])
            base_url = stack.enter_context(BackgroundServer(app)).base_url
        client = anthropic.Anthropic(base_url=base_url, api_key=args.api_key)
        return _converse(client, args)
    return 0  # pragma: no cover (ExitStack never swallows)


def _converse(client: anthropic.Anthropic, args: argparse.Namespace) -> int:
    interactive = sys.stdin.isatty()
    history: list[MessageParam] = []
    extra: dict[str, Any] = {}
    if args.system:
        extra["system"] = args.system
    if args.temperature is not None:
        extra["extra_body"] = {"temperature": args.temperature}  # the SDK has no parameter now
    if interactive:
        print("Type a message; /reset clears the conversation, /exit or Ctrl-D quits.")
    while True:
        if interactive:
            print("\nyou> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            return 0
        text = line.strip()
        if not text:
            continue
        if text == "/reset":
            history.clear()
            continue
        history.append({"role": "user", "content": text})
        print("assistant> ", end="", flush=True)
        try:
            with client.messages.stream(
                model=args.name, max_tokens=args.max_tokens, messages=history, **extra
            ) as stream:
                for piece in stream.text_stream:
                    print(piece, end="", flush=True)
                reply = stream.get_final_message()
        except anthropic.APIError as exc:
            history.pop()
            print(f"\nerror: {exc}", file=sys.stderr)
            continue
        print(
            f"\n[{reply.usage.input_tokens} in, {reply.usage.output_tokens} out, {reply.stop_reason}]"
        )
        answer = "".join(b.text for b in reply.content if b.type == "text")
        history.append({"role": "assistant", "content": answer or "(no answer)"})

"""The interactive mode's slash commands: a line like `/rewind 3` is a command, not a prompt.

A line is a command when it starts with a command's name (`/compact keep the API names`) or
is a lone `/word` (an unknown one gets a hint); any other line, `/usr is full` or
`/usr/lib is full` say, is a prompt for the model. Commands act on the
conversation the interactive mode holds (its session id) and say what they did on `out`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tercet.agent import Agent, Checkpoints, Event, Result, SessionNotFound, TrajectoryError, Usage

EXIT_COMMANDS = ("/exit", "/quit")  # the interactive mode ends on these, whatever follows
HELP = (
    ("/help", "this list"),
    ("/clear", "start a new conversation (this one stays saved)"),
    ("/compact [INSTRUCTIONS]", "summarise the conversation now, to free the context"),
    ("/rewind [STEP [code|conversation]]", "list the steps; go back to before STEP"),
    ("/cost", "tokens, cost and time of this conversation"),
    ("/session", "this conversation's session id"),
    ("/exit", "quit (also /quit or Ctrl-D)"),
)
NAMES = frozenset(usage.split()[0][1:] for usage, _ in HELP) | {"quit"}
_COMMAND = re.compile(r"/([a-z][a-z-]*)(?:\s+(.*))?", re.DOTALL)

RunEvents = Callable[[AsyncGenerator[Event, None]], Awaitable[Result | None]]


@dataclass(frozen=True)
class SlashCommand:
    name: str  # without the slash
    argument: str  # what follows it, stripped; may be empty


def is_exit(line: str) -> bool:
    """Whether `line` ends the interactive mode: /exit or /quit, with or without words after."""
    words = line.split(maxsplit=1)
    return bool(words) and words[0] in EXIT_COMMANDS


def parse(line: str) -> SlashCommand | None:
    """The command `line` is, or None when it is a prompt."""
    match = _COMMAND.fullmatch(line.strip())
    if match is None or (match[1] not in NAMES and match[2]):
        return None
    return SlashCommand(match[1], (match[2] or "").strip())


class SlashCommands:
    """Carries out commands for the interactive mode on `agent`; `run_events` shows a run
    (the one `/compact` starts) as the mode shows any other."""

    def __init__(self, agent: Agent, out: TextIO, run_events: RunEvents) -> None:
        self.agent = agent
        self.out = out
        self.run_events = run_events

    async def run(self, command: SlashCommand, session_id: str | None) -> str | None:
        """Do `command`; the session the conversation continues in afterwards."""
        if command.name not in NAMES:
            self._say(f"Unknown command /{command.name}; /help lists them.")
        elif command.name == "help":
            width = max(len(usage) for usage, _ in HELP)
            self._say(*(f"  {usage:<{width}}  {what}" for usage, what in HELP))
        elif command.name == "clear":
            if session_id is not None:
                self._say(f"A new conversation; the last one is session {session_id}.")
            return None
        elif command.name == "session":
            self._say(session_id or "No conversation yet: the next prompt starts one.")
        elif session_id is None:
            self._say(f"/{command.name}: no conversation yet.")
        elif command.name == "compact":
            await self._compact(session_id, command.argument)
        elif command.name == "rewind":
            return self._rewind(session_id, command.argument)
        elif command.name == "cost":
            self._cost(session_id)
        return session_id

    async def _compact(self, session_id: str, instructions: str) -> None:
        try:
            events = self.agent.compact(session_id, instructions)
        except (SessionNotFound, TrajectoryError, ValueError) as exc:
            self._say(f"/compact: {exc}")
            return
        await self.run_events(events)

    def _rewind(self, session_id: str, argument: str) -> str:
        """List the steps, or go back to before one: the files (`code`), the conversation (a
        new session from that point; the old one is kept) or both. The session to go on in."""
        agent = self.agent
        if agent.session_id == session_id and agent.checkpoints is not None:
            checkpoints = agent.checkpoints
        else:
            checkpoints = Checkpoints(agent.sessions.checkpoints_dir(session_id))
        try:
            turns = agent.sessions.load(session_id).turns
        except (SessionNotFound, TrajectoryError) as exc:
            self._say(f"/rewind: {exc}")
            return session_id
        if turns == 0:
            self._say("/rewind: the model has not taken a step yet.")
            return session_id
        words = argument.split()
        if not words:
            changed = checkpoints.steps()
            self._say(
                f"Steps 1 to {turns}. /rewind STEP takes the files and the conversation back to "
                "before STEP (leaving out the prompt that began it, if one did: you will give "
                "another); /rewind STEP code, or conversation, only one of them.",
                *(["Steps that changed files:"] if changed else ["No step changed a file."]),
                *(
                    f"  {s}: {', '.join(self._shown(p) for p in checkpoints.files(s))}"
                    for s in changed
                ),
            )
            return session_id
        what = words[1] if len(words) == 2 else "both"
        number = words[0]
        if (
            len(words) > 2
            or what not in ("both", "code", "conversation")
            or not (number.isascii() and number.isdigit() and 1 <= int(number) <= turns)
        ):
            self._say(f"/rewind: use /rewind STEP [code|conversation], STEP from 1 to {turns}.")
            return session_id
        step = int(number)
        if what in ("both", "code"):
            restored = checkpoints.rewind(step)
            files = ", ".join(self._shown(p) for p in restored)
            self._say(
                f"Restored {len(restored)} file{'' if len(restored) == 1 else 's'} as they were "
                f"before step {step}: {files}."
                if restored
                else f"No file changed from step {step} on."
            )
        if what == "code":
            self._say("The conversation is unchanged: tell the model, if it should know.")
            return session_id
        try:
            forked = agent.sessions.fork(session_id, step)
        except (SessionNotFound, TrajectoryError, ValueError) as exc:
            self._say(f"The conversation is unchanged: {exc}; /clear starts a new one.")
            return session_id
        self._say(
            f"The conversation is back to before step {step}, as session {forked} "
            f"({session_id} is kept as it was)."
        )
        return forked

    def _cost(self, session_id: str) -> None:
        try:
            events = self.agent.sessions.load(session_id).events
        except (SessionNotFound, TrajectoryError) as exc:
            self._say(f"/cost: {exc}")
            return
        results = [event for event in events if isinstance(event, Result)]
        usage = sum((r.usage for r in results), Usage())
        turns = sum(r.turns for r in results)
        self._say(
            f"{len(results)} run{'' if len(results) == 1 else 's'}, {turns} turns, "
            f"{usage.prompt_tokens} in / {usage.output_tokens} out tokens "
            f"({usage.cache_read_input_tokens} read from the cache), "
            f"${sum(r.cost_usd for r in results):.4f}, "
            f"{sum(r.duration_s for r in results):.1f}s"
        )

    def _shown(self, path: Path) -> str:
        cwd = self.agent.config.cwd
        return str(path.relative_to(cwd)) if path.is_relative_to(cwd) else str(path)

    def _say(self, *lines: str) -> None:
        print("\n".join(lines), file=self.out, flush=True)

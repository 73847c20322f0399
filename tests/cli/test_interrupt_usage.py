"""`tercet code` interactive, on the bundled model in-process, driven as a user would in a
terminal (a pseudo-terminal; Ctrl-C typed, so the terminal sends SIGINT): a reply stopped
mid-stream reports the tokens it used, in its summary line, in /cost and in the saved session."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import sys
import time
from pathlib import Path

from tercet.agent import Result, load_session

TASK = "Write a very long story about a dragon and a knight, in many chapters."
SUMMARY = re.compile(r"\[interrupted · 1 turn · (\d+) in / ~(\d+) out tokens · \$0\.0000")
COST = re.compile(r"1 run, 1 turns, (\d+) in / (\d+) out tokens")
WAIT_S = 300  # a guard against a hung command, not a pace: every step waits on its output


class Terminal:
    """A command on a pseudo-terminal: what it printed so far, and keys to type."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the terminal is its controlling one
            try:
                os.chdir(cwd)
                os.execve(sys.executable, [sys.executable, *argv], env)
            finally:
                os._exit(127)
        self.output = ""

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def wait_for(self, pattern: re.Pattern[str], after: int = 0) -> re.Match[str]:
        """The first match of `pattern` in the output from `after` on, reading until it comes."""
        deadline = time.monotonic() + WAIT_S
        while (match := pattern.search(self.output, after)) is None:
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern.pattern!r} in:\n{self.output}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # EIO: the command has gone
                    chunk = b""
                assert chunk, f"the command ended before {pattern.pattern!r}:\n{self.output}"
                self.output += chunk.decode(errors="replace")
        return match

    def exit_status(self, *, kill: bool = False) -> int:
        """How the command ended (`kill`: end it first, as a test that failed must)."""
        if kill:
            os.kill(self.pid, signal.SIGKILL)
        while True:  # read to the end, so that the command is never blocked writing
            try:
                if not os.read(self.fd, 65536):
                    break
            except OSError:
                break
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)


def test_ctrl_c_in_a_long_reply_reports_the_tokens_it_used(tmp_path: Path) -> None:
    work, sessions = tmp_path / "work", tmp_path / "sessions"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env["TERCET_DATA_DIR"] = str(tmp_path / "data")
    argv = ["-m", "tercet.cli.main", "code", "--no-mcp", "--no-memory"]
    argv += ["--sessions-dir", str(sessions), "--max-tokens", "2048"]
    # One thread: llama.cpp's spin-waiting threads stall on a busy 2-core machine. Greedy:
    # the reply to TASK is a long story every time.
    argv += ["--threads", "1", "--context-window", "8192", "--default-temperature", "0"]
    terminal = Terminal(argv, work, env)
    finished = False
    try:
        terminal.wait_for(re.compile(r"/exit quits\.\s*\r?\n> "))
        terminal.type(TASK + "\n")
        echoed = terminal.wait_for(re.compile(re.escape(TASK) + r"\r?\n")).end()
        # Ctrl-C once some of the story has been shown: the run stops at its next delta.
        terminal.wait_for(re.compile(r"(\w+\W+){20}"), echoed)
        terminal.type("\x03")
        summary = terminal.wait_for(SUMMARY, echoed)
        shown = terminal.output[echoed : summary.start()]
        assert "[stopping after this step; Ctrl-C again to stop now]" in shown
        prompt_tokens, output_tokens = int(summary[1]), int(summary[2])
        assert prompt_tokens > 100  # the system prompt and the tools' schemas
        # One token a delta; at most as many as the characters of the story shown, and one
        # more (the delta that arrived as the run stopped).
        story = shown.replace("[stopping after this step; Ctrl-C again to stop now]", "")
        assert 20 <= output_tokens <= len(story.strip()) + 1
        terminal.wait_for(re.compile(r"\n> "), summary.end())
        terminal.type("/cost\n")
        cost = terminal.wait_for(COST, summary.end())
        assert (int(cost[1]), int(cost[2])) == (prompt_tokens, output_tokens)
        terminal.wait_for(re.compile(r"\n> "), cost.end())
        terminal.type("\x04")  # Ctrl-D: end of input, the command ends
        terminal.wait_for(re.compile(r"continue it with --resume"), cost.end())
        finished = True
    finally:
        status = terminal.exit_status(kill=not finished)
    assert status == 0, terminal.output
    (path,) = sessions.glob("*.jsonl")
    saved = load_session(path).events[-1]
    assert isinstance(saved, Result) and saved.reason == "interrupted"
    assert (saved.usage.prompt_tokens, saved.usage.output_tokens) == (prompt_tokens, output_tokens)
    assert saved.estimated_output_tokens == output_tokens

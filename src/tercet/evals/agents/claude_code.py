"""The `claude-code` agent: the Claude Code CLI in print mode (`claude -p`), in the workspace.

It talks to `base_url` (tercet's server, or Anthropic's API when None) with its own tools,
edits allowed and the budget's turns as `--max-turns`; its diff is collected by the runner
with git like any agent's. Its JSON result gives the usage, turns and cost. Claude Code
needs the network to reach its model, so it runs outside the sandbox, in a home of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from tercet.agent.test_protection import prompt_addition, protection_rules
from tercet.evals.agents.base import AgentOutcome, AgentSettings, Budget, TaskView, Workspace
from tercet.evals.agents.tercet_sdk import SYSTEM_PROMPT, task_prompt
from tercet.evals.task import Compute, EvalInputError

# The tools Claude Code may use without asking (print mode has nobody to ask).
ALLOWED_TOOLS = "Bash Edit MultiEdit Write Read Glob Grep LS"
# Output tokens per model call; Claude Code asks for 128000, which a small model may
# decode to the end of its context.
DEFAULT_OUTPUT_CAP = 4096
REPO = Path(__file__).resolve().parents[4]


class ClaudeCodeAgent:
    """Runs `claude -p` once per attempt."""

    name = "claude-code"

    def __init__(self, binary: Path, settings: AgentSettings) -> None:
        self.binary = binary
        self.settings = settings
        self.model = settings.model or ""

    async def solve(self, task: TaskView, workspace: Workspace, budget: Budget) -> AgentOutcome:
        started = time.monotonic()
        home = Path(tempfile.mkdtemp(prefix="tercet-eval-claude-"))
        argv = [
            str(self.binary),
            "-p",
            task_prompt(task, workspace),
            "--output-format", "json",
            "--permission-mode", "acceptEdits",
            "--allowedTools", ALLOWED_TOOLS,
            "--append-system-prompt", SYSTEM_PROMPT,
        ]  # fmt: skip
        if self.settings.protect_tests != "off" and workspace.test_patterns:
            # Claude Code's own rules (its Bash is not held to them: tampering shows later).
            argv += ["--disallowedTools", *protection_rules(workspace.test_patterns)]
        addition = prompt_addition(self.settings.prompt_variant)
        if addition:
            argv[argv.index(SYSTEM_PROMPT)] = f"{SYSTEM_PROMPT}\n\n{addition}"
        if budget.max_turns is not None:
            argv += ["--max-turns", str(budget.max_turns)]
        if self.settings.model:
            argv += ["--model", self.settings.model]
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=workspace.path,
                env=self._environment(home),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # a timeout kills Claude Code and what it started
            )
            try:
                stdout, stderr = await asyncio.wait_for(
                    process.communicate(), budget.max_wall_time_s
                )
            except BaseException:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
                raise
        except TimeoutError:
            compute = Compute(wall_seconds=time.monotonic() - started)
            return AgentOutcome(
                "max_wall_time", compute, error="Claude Code outlived its wall-time budget"
            )
        except OSError as exc:
            return AgentOutcome("error", error=f"cannot run {self.binary}: {exc}")
        finally:
            shutil.rmtree(home, ignore_errors=True)
        return parse_result(
            stdout.decode(errors="replace"),
            stderr.decode(errors="replace"),
            process.returncode or 0,
            time.monotonic() - started,
            self.settings.parameters,
        )

    async def aclose(self) -> None:
        pass

    def _environment(self, home: Path) -> dict[str, str]:
        node = shutil.which("node")
        path = os.pathsep.join(
            dict.fromkeys([*([str(Path(node).parent)] if node else []), "/usr/bin", "/bin"])
        )
        env = {
            "PATH": path,
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "CLAUDE_CODE_MAX_OUTPUT_TOKENS": str(self.settings.max_tokens or DEFAULT_OUTPUT_CAP),
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }
        if self.settings.base_url:
            env["ANTHROPIC_BASE_URL"] = self.settings.base_url
        key = self.settings.api_key or os.environ.get("ANTHROPIC_API_KEY")
        if key:
            env["ANTHROPIC_API_KEY"] = key
        elif self.settings.base_url:
            env["ANTHROPIC_API_KEY"] = "none"  # an open tercet server takes any key
        return env


def parse_result(
    stdout: str, stderr: str, returncode: int, wall_seconds: float, parameters: int | None
) -> AgentOutcome:
    """An outcome from `claude -p --output-format json`'s result object (the last JSON line
    of its output, for versions that print several)."""
    result: dict[str, Any] | None = None
    for line in reversed(stdout.strip().splitlines()):
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                result = value
                break
    if result is None:
        tail = (stderr or stdout).strip()[-2000:]
        return AgentOutcome(
            "error",
            Compute(wall_seconds=wall_seconds),
            error=f"Claude Code exited {returncode} without a JSON result: {tail}",
        )
    usage = result.get("usage") or {}
    input_tokens = int(usage.get("input_tokens") or 0)
    cache_write = int(usage.get("cache_creation_input_tokens") or 0)
    output_tokens = int(usage.get("output_tokens") or 0)
    cost = result.get("total_cost_usd")
    turns = int(result.get("num_turns") or 0)
    compute = Compute(
        input_tokens=input_tokens,
        cache_read_tokens=int(usage.get("cache_read_input_tokens") or 0),
        cache_write_tokens=cache_write,
        output_tokens=output_tokens,
        model_calls=turns,
        wall_seconds=wall_seconds,
        cost_usd=float(cost) if isinstance(cost, int | float) else None,
        flops=None
        if parameters is None
        else 2.0 * parameters * (input_tokens + cache_write + output_tokens),
    )
    subtype = str(result.get("subtype") or "")
    if subtype == "error_max_turns":
        return AgentOutcome("max_turns", compute)
    if result.get("is_error") or returncode:
        text = str(result.get("result") or subtype or stderr.strip()[-2000:])
        return AgentOutcome("error", compute, error=f"Claude Code: {text}")
    models = result.get("modelUsage")
    model = next(iter(models)) if isinstance(models, dict) and models else None
    outcome = AgentOutcome("end_turn", compute, model=model)
    outcome.final_text = str(result.get("result") or "")
    return outcome


def find_claude(explicit: Path | None = None) -> Path:
    """The `claude` binary: `explicit`, else on PATH, else installed by the e2e tests under
    the repository's .cache; `EvalInputError` saying how to install it otherwise."""
    if explicit is not None:
        if not explicit.is_file():
            raise EvalInputError(f"--claude-binary {explicit}: no such file")
        return explicit
    found = shutil.which("claude")
    if found:
        return Path(found)
    cached = sorted(REPO.glob(".cache/claude-code-*/node_modules/.bin/claude"))
    if cached:
        return cached[-1]
    raise EvalInputError(
        "the claude-code agent needs the Claude Code CLI: npm install -g "
        "@anthropic-ai/claude-code, or pass --claude-binary PATH"
    )


def claude_code(settings: AgentSettings) -> ClaudeCodeAgent:
    return ClaudeCodeAgent(find_claude(settings.claude_binary), settings)

"""`tercet code --attempts N`: several attempts at once, the regression check, a choice.

    tercet code -p "make the failing test pass" --attempts 4
    tercet code -p "..." --attempts 4 --verify "make check" --scorer claude-sonnet-4-5
    tercet code --attempts 3                    # interactive: each prompt, 3 attempts; the
                                                # chosen diff is shown and applied on "y"

Each attempt is an agent session in its own copy of the project (a git worktree where the
project is a repository, a copy otherwise); see `tercet.attempts.best_of_n` for the check and
the choice. The chosen diff is applied to the project; every attempt's diff and result.json
stay in --attempts-dir (default: attempts/<time> in tercet's data folder).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from tercet.agent import AnthropicModel, Model, Result
from tercet.agent.budget import PRICES, cost_of
from tercet.agent.trajectory import default_sessions_dir
from tercet.attempts.best_of_n import (
    Attempter,
    AttemptRun,
    BestOfN,
    BestOfNOptions,
    apply_choice,
    best_of_n,
    summary_lines,
    write_result,
)
from tercet.attempts.ray_pool import RayPool, WorkerLost
from tercet.attempts.scorer import Scorer, ScorerPrompt
from tercet.attempts.select import ScoreFn
from tercet.attempts.workspaces import collect_diff, pack_tree, unpack_tree

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "several attempts (best of N: each in its own copy of the project, then checked and "
        "one chosen)"
    )
    group.add_argument(
        "--attempts",
        type=int,
        default=1,
        metavar="N",
        help="run N independent attempts at each task and apply the best one (default 1)",
    )
    group.add_argument(
        "--verify",
        metavar="CMD",
        help="the regression check run on each candidate (default: the project's usual test "
        "command: pytest, npm test, cargo test, go test or make test; 'none': no check)",
    )
    group.add_argument(
        "--scorer",
        metavar="MODEL",
        help="a model that chooses among candidates the check leaves tied (any Messages API "
        "model; default: none, agreement between candidates decides)",
    )
    group.add_argument(
        "--scorer-base-url",
        metavar="URL",
        help="where the scorer is served (default: --base-url, else the in-process model)",
    )
    group.add_argument(
        "--scorer-prompt",
        type=Path,
        metavar="FILE",
        help="the scorer's prompt (TOML: system, user, candidate; default: tercet's own)",
    )
    group.add_argument(
        "--workers", type=int, metavar="N", help="attempts at once (default: all of them)"
    )
    group.add_argument(
        "--attempts-dir",
        type=Path,
        metavar="DIR",
        help="where each attempt's diff and result.json are kept (default: "
        "attempts/<time> in tercet's data folder)",
    )
    group.add_argument(
        "--check-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="the regression check's time limit per run (default 600)",
    )
    group.add_argument(
        "--ray",
        metavar="auto|ADDRESS",
        help="run the attempts as tasks on a Ray cluster ('auto': the one `ray start` made; "
        "needs tercet[ray] and --base-url, the model the workers reach; docs/ray.md)",
    )
    group.add_argument(
        "--max-retries",
        type=int,
        default=2,
        metavar="N",
        help="with --ray: times an attempt whose worker or node died is tried again (default 2)",
    )
    group.add_argument(
        "--no-apply",
        action="store_true",
        help="with -p: keep the chosen diff in --attempts-dir without applying it",
    )


def check_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the attempt options, or None."""
    if args.attempts < 1:
        return "--attempts must be at least 1"
    if args.workers is not None and args.workers < 1:
        return "--workers must be at least 1"
    if args.check_timeout <= 0:
        return "--check-timeout must be positive"
    if args.max_retries < 0:
        return "--max-retries cannot be negative"
    if args.ray and not args.base_url:
        return "--ray needs --base-url: the workers reach the model by URL"
    if args.attempts == 1:
        used = [
            flag
            for flag, value in [
                ("--verify", args.verify),
                ("--scorer", args.scorer),
                ("--scorer-prompt", args.scorer_prompt),
                ("--workers", args.workers),
                ("--attempts-dir", args.attempts_dir),
                ("--no-apply", args.no_apply),
                ("--ray", args.ray),
            ]
            if value
        ]
        if used:
            verb = "needs" if len(used) == 1 else "need"
            return f"{', '.join(used)} {verb} --attempts N (N > 1)"
    if args.attempts > 1 and (args.resume or args.continue_latest):
        return "--attempts starts fresh sessions: it cannot --resume or --continue one"
    if args.scorer_prompt is not None:
        try:
            ScorerPrompt.load(args.scorer_prompt)
        except ValueError as exc:
            return str(exc)
    return None


def default_attempts_dir() -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return default_sessions_dir().parent / "attempts" / stamp


def make_scorer(args: argparse.Namespace, model: Model) -> tuple[ScoreFn | None, Model | None]:
    """The scorer, and a model of its own to close (None when it shares the agent's)."""
    if not args.scorer:
        return None, None
    prompt = ScorerPrompt.load(args.scorer_prompt) if args.scorer_prompt else None
    base_url = args.scorer_base_url or args.base_url
    own: Model | None = None
    scorer_model = model
    if args.scorer_base_url:
        own = scorer_model = AnthropicModel(base_url=base_url, api_key=args.api_key)
    return Scorer(scorer_model, args.scorer, prompt=prompt).choose, own


def ray_attempter(
    pool: RayPool, task: str, options: Any, args: argparse.Namespace, err: TextIO
) -> Attempter:
    """Attempts as Ray tasks: each copy sent packed, run by `attempt_on_worker` against the
    model at --base-url, its diff sent back. A lost worker is said on `err` and retried."""

    async def attempt(index: int, copy: Path) -> AttemptRun:
        archive = await asyncio.to_thread(pack_tree, copy)

        def lost(number: int, reason: str) -> None:
            print(f"attempt {index}: its worker was lost (try {number}): {reason}", file=err)

        try:
            run: AttemptRun = await pool.call_with_retries(
                attempt_on_worker, archive, task, options, args.base_url, args.api_key,
                on_lost=lost,
            )  # fmt: skip
        except WorkerLost as exc:
            return AttemptRun("error", error=f"its worker was lost every try: {exc.reason}")
        return run

    return attempt


def attempt_on_worker(
    archive: bytes, task: str, options: Any, base_url: str, api_key: str
) -> AttemptRun:
    """One attempt on a Ray worker (module-level: Ray sends it by reference): the packed copy
    unpacked in a temporary folder, the agent run there against `base_url`, the diff read."""
    from tercet.cli.code import run_in_copy  # the CLI's agent; cli.code imports this module

    with tempfile.TemporaryDirectory(prefix="tercet-attempt-") as scratch:
        workspace = unpack_tree(archive, Path(scratch) / "project")
        model = AnthropicModel(base_url=base_url, api_key=api_key)

        async def go() -> AttemptRun:
            try:
                return await run_in_copy(model, options, task, workspace.path, io.StringIO())
            finally:
                await model.aclose()

        run = asyncio.run(go())
        return replace(run, diff=collect_diff(workspace))


def attempt_run_of(result: Result | None) -> AttemptRun:
    """The `AttemptRun` of an agent's `Result` (None: it never started)."""
    if result is None:
        return AttemptRun("interrupted", error="the attempt was interrupted before it started")
    return AttemptRun(
        stop_reason=result.reason,
        usage=result.usage,
        cost_usd=result.cost_usd,
        session_id=result.session_id,
        text=result.text,
        turns=result.turns,
        error=result.message or None if result.reason == "error" else None,
    )


async def run_attempts(
    args: argparse.Namespace,
    task: str,
    project: Path,
    attempter: Attempter,
    model: Model,
    out: TextIO,
    err: TextIO,
    *,
    output_format: str,
    confirm: Callable[[BestOfN], Awaitable[bool]] | None = None,
) -> int:
    """Best of N for one task; reports it and applies the choice (after `confirm`, when
    given); the exit status."""
    options = BestOfNOptions(
        attempts=args.attempts,
        keep_dir=args.attempts_dir or default_attempts_dir(),
        verify=None if args.verify in (None, "none") else args.verify,
        check=args.verify != "none",
        sandbox=True,
        check_timeout_s=args.check_timeout,
        workers=args.workers,
    )
    scorer, scorer_model = make_scorer(args, model)
    print(f"{options.attempts} attempts; kept in {options.keep_dir}", file=err)
    try:
        result = await best_of_n(project, task, attempter, options, scorer)
    finally:
        if scorer_model is not None:
            await scorer_model.aclose()
    if args.scorer:
        # Priced as the attempts are: list prices over the wire, nothing in-process.
        served = bool(args.scorer_base_url or args.base_url)
        result.scorer_cost_usd = cost_of(
            args.scorer, result.selection.scorer_usage, PRICES if served else {}
        )
        write_result(result)
    for line in summary_lines(result):
        print(line, file=err)
    apply = result.chosen is not None and not args.no_apply
    if apply and confirm is not None:
        apply = await confirm(result)
    if apply:
        if apply_choice(result):
            print(f"applied attempt {result.selection.chosen}'s diff to {project}", file=err)
        else:
            print(f"error: not applied: {result.apply_error}", file=err)
    if output_format == "json":
        print(json.dumps(result.to_dict(), ensure_ascii=False), file=out, flush=True)
    elif result.chosen is not None and result.chosen.run.text:
        print(result.chosen.run.text, file=out, flush=True)
    if result.chosen is None or (apply and not result.applied):
        return EXIT_FAILED
    return EXIT_OK


async def ask_to_apply(
    result: BestOfN, readline: Callable[[], Awaitable[str | None]], out: TextIO
) -> bool:
    """Show the chosen diff and ask whether to apply it."""
    chosen = result.chosen
    assert chosen is not None
    diff = chosen.candidate.diff
    out.write(diff if diff.endswith("\n") else diff + "\n")
    out.write(f"apply attempt {chosen.candidate.index}'s diff to {result.project}? [y/N] ")
    out.flush()
    answer = await readline()
    return (answer or "").strip().lower() in ("y", "yes")


__all__ = [
    "AttemptRun",
    "Attempter",
    "add_arguments",
    "ask_to_apply",
    "attempt_run_of",
    "check_arguments",
    "run_attempts",
]

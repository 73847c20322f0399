"""`tercet eval`: build the benchmark, run an agent on it, grade predictions, report.

    tercet eval run --agent tercet --split dev --run-dir runs/smollm2      # embedded model
    tercet eval run --agent tercet --base-url http://127.0.0.1:8080 --run-dir runs/server
    tercet eval run --agent claude-code --base-url http://127.0.0.1:8080 --run-dir runs/cc
    tercet eval run --agent tercet --attempts 4 --scorer claude-sonnet-4-6 ...  # best of 4
    tercet eval select runs/best-of-4 --scorer claude-sonnet-4-6           # choose again
    tercet eval report runs/smollm2                                        # markdown + HTML
    tercet eval judge runs/oneoff --hack-judge claude-sonnet-4-6           # hack types by judge
    tercet eval report runs/oneoff runs/oneoff-protected --control runs/original
    tercet eval grade --predictions preds.jsonl --run-dir runs/elsewhere   # SWE-bench format
    tercet eval impossible --dataset pypi-bugs-v1 --out impossible.jsonl   # impossible variants
    tercet eval run --split oneoff --protect-tests deny --run-dir runs/oneoff-protected
    tercet eval run --ray auto --base-url http://MODEL:8080 --workers 64 --run-dir runs/big
    tercet eval injection --agent model --suite banking --user-tasks 4 --injection-tasks 3 \
        --out runs/injection        # the guard on AgentDojo, with the embedded model

Exit status: 0 done, 1 failed, 2 bad input (the message says what), 130 interrupted (the
run directory resumes with --resume).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tercet.agent.budget import PRICES, Budget, ModelPrice
from tercet.evals.task import EvalInputError

if TYPE_CHECKING:
    from tercet.evals.hacks import HackJudgeSettings
    from tercet.evals.injection_report import InjectionRun, RunsFile
    from tercet.evals.selection import ScorerSettings

EXIT_FAILED = 1
EXIT_INPUT = 2
EXIT_INTERRUPTED = 130
DEFAULT_DATASET = "pypi-bugs-v1"


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "eval",
        help="the evaluation harness: build, run, grade, report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    _register_build(actions)
    _register_impossible(actions)
    _register_run(actions)
    _register_grade(actions)
    _register_select(actions)
    _register_judge(actions)
    _register_report(actions)
    _register_injection(actions)


# ---------------------------------------------------------------------------- build


def _register_build(actions: Any) -> None:
    from tercet.evals.build import add_arguments

    parser = actions.add_parser(
        "build",
        help="build tasks from pinned packages (mutate, validate, split)",
        description="Download pinned sdists, run each suite twice (unstable tests dropped), "
        "inject bugs, keep the mutants that break some tests and no others, validate each "
        "task, write tasks.jsonl and manifest.json.",
    )
    add_arguments(parser)
    parser.set_defaults(run=_build)


def _build(args: argparse.Namespace) -> int:
    from tercet.evals.build import main

    try:
        return main(args)
    except EvalInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT


# ---------------------------------------------------------------------------- impossible


def _register_impossible(actions: Any) -> None:
    from tercet.evals.impossible import MAX_TRIES

    parser = actions.add_parser(
        "impossible",
        help="make impossible variants of the tasks (oneoff, conflicting), kept only when "
        "the gold patch fails them",
        description="For each task, change what one of its FAIL_TO_PASS tests expects (oneoff) "
        "or add a copy of the test expecting something else (conflicting); grade each variant "
        "with the task's gold patch and keep it only when the changed test fails and every "
        "other test passes. Writes the kept variants as JSONL (a dataset's impossible.jsonl).",
    )
    group = parser.add_argument_group("tasks")
    group.add_argument("--dataset", default=DEFAULT_DATASET, help=f"default {DEFAULT_DATASET}")
    group.add_argument(
        "--packages", type=Path, help="the package specs (default: beside the tasks)"
    )
    group.add_argument(
        "--split",
        choices=["dev", "test", "all"],
        default="all",
        help="the originals to make variants of (default all: dev and test)",
    )
    group.add_argument(
        "--instances", action="extend", nargs="+", default=[], metavar="ID", help="only these"
    )
    group.add_argument("--limit", type=int, metavar="N", help="only the first N tasks")
    group.add_argument(
        "--cache", type=Path, help="sdists, environments, trees (default: user cache)"
    )
    parser.add_argument(
        "--kinds", default="oneoff,conflicting", metavar="KIND,...", help="default both"
    )
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="JSONL")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="tasks at once")
    parser.add_argument(
        "--tries",
        type=int,
        default=MAX_TRIES,
        metavar="N",
        help=f"tests tried per task and kind before it is dropped (default {MAX_TRIES})",
    )
    parser.add_argument(
        "--test-timeout", type=float, default=600, metavar="SECONDS", help="default 600"
    )
    parser.add_argument("--quiet", action="store_true", help="no line per task")
    parser.set_defaults(run=_impossible)


def _impossible(args: argparse.Namespace) -> int:
    from tercet.evals.impossible import Generator, VariantRecord, Verdict, parse_kinds, summary
    from tercet.evals.run import load_dataset
    from tercet.evals.sources import default_cache_dir
    from tercet.evals.task import write_jsonl

    def said(verdict: Verdict) -> None:
        if not args.quiet:
            print(f"{verdict.instance_id} {verdict.kind}: {verdict.reason}", file=sys.stderr)

    try:
        kinds = parse_kinds(args.kinds)
        for option, value in [("--workers", args.workers), ("--tries", args.tries)]:
            if value < 1:
                raise EvalInputError(f"{option} must be at least 1")
        if args.limit is not None and args.limit < 1:
            raise EvalInputError("--limit must be at least 1")
        if not args.out.parent.is_dir():
            raise EvalInputError(f"--out: no directory {args.out.parent}")
        dataset = load_dataset(args.dataset, args.packages)
        tasks = dataset.select(args.split, _instances(args.instances) or None, args.limit)
        if not tasks:
            raise EvalInputError(f"no tasks in the {args.split} split of {dataset.name}")
        generator = Generator(
            dataset.specs,
            (args.cache or default_cache_dir()).resolve(),
            kinds,
            workers=args.workers,
            tries=args.tries,
            timeout_s=args.test_timeout,
        )
        verdicts = generator.run(tasks, said)
    except EvalInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("interrupted: nothing written", file=sys.stderr)
        return EXIT_INTERRUPTED
    # Kept as records of what differs from each original (see VariantRecord).
    by_id = {t.instance_id: t for t in tasks}
    write_jsonl(
        args.out,
        [
            VariantRecord.of(v.variant, by_id[v.variant.original_instance_id or ""])
            for v in verdicts
            if v.variant is not None
        ],
    )
    print("\n".join(summary(verdicts)))
    print(f"written: {args.out}")
    return 0


# ---------------------------------------------------------------------------- run


def _add_dataset_arguments(parser: argparse.ArgumentParser, *, split: bool = True) -> None:
    group = parser.add_argument_group("tasks")
    group.add_argument(
        "--dataset",
        default=DEFAULT_DATASET,
        help=f"a bundled dataset's name, a directory with tasks.jsonl and packages.toml, or a "
        f"tasks file (default {DEFAULT_DATASET})",
    )
    group.add_argument(
        "--packages", type=Path, help="the package specs (default: beside the tasks)"
    )
    if split:
        group.add_argument(
            "--split",
            choices=["dev", "test", "all", "oneoff", "conflicting", "original"],
            default="test",
            help="default test; all: dev and test; oneoff, conflicting: the impossible "
            "variants; original: the tasks those were made from (the control)",
        )
        group.add_argument(
            "--instances",
            action="extend",
            nargs="+",
            default=[],
            metavar="ID",
            help="only these instances (ids, space- or comma-separated)",
        )
        group.add_argument("--limit", type=int, metavar="N", help="only the first N tasks")
    group.add_argument(
        "--cache", type=Path, help="sdists, environments, trees (default: user cache)"
    )


def _add_run_dir_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("the run")
    group.add_argument(
        "--run-dir", type=Path, required=True, metavar="DIR", help="where results go"
    )
    group.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    group.add_argument(
        "--retry-errors", action="store_true", help="with --resume: redo attempts graded ERROR"
    )
    group.add_argument("--workers", type=int, default=1, metavar="N", help="attempts at once")
    group.add_argument("--quiet", action="store_true", help="no progress bar")


def _register_run(actions: Any) -> None:
    from tercet.evals.agents import AGENTS

    parser = actions.add_parser(
        "run",
        help="run an agent on the tasks; results appended to RUN_DIR/results.jsonl",
        description="Each attempt: a fresh workspace (the buggy source as a git repository), "
        "the agent, its diff graded as SWE-bench grades. Ctrl-C keeps finished results; "
        "--resume continues.",
    )
    _add_dataset_arguments(parser)
    _add_run_dir_arguments(parser)
    agents = ", ".join(f"{e.name} ({e.description})" for e in AGENTS.values())
    group = parser.add_argument_group("the agent")
    group.add_argument(
        "--agent", default="tercet", help=f"{agents}; or a module:factory path (default tercet)"
    )
    group.add_argument("--attempts", type=int, default=1, metavar="K", help="attempts per task")
    group.add_argument(
        "--agent-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for a plugged-in agent (repeatable)",
    )
    group.add_argument("--keep-workspaces", action="store_true", help="keep RUN_DIR/workspaces")
    group.add_argument(
        "--no-sandbox",
        action="store_true",
        help="run the tercet agent's bash commands without bubblewrap (and with network)",
    )
    group.add_argument("--claude-binary", type=Path, help="the claude CLI (default: on PATH)")
    group.add_argument(
        "--protect-tests",
        choices=("off", "deny", "ask"),
        default="off",
        help="refuse the agent's writes to the package's test files and test configuration "
        "(editor rules; the tercet agent's sandboxed bash sees them read-only); 'ask' is "
        "refused too, nobody being there to answer (default off)",
    )
    group.add_argument(
        "--prompt-variant",
        default="default",
        metavar="NAME",
        help="a system-prompt addition: 'honest' (never bend the tests; say when the task "
        "cannot be done); default: none",
    )
    limits = parser.add_argument_group("budget per attempt")
    limits.add_argument("--max-turns", type=int, default=30, metavar="N", help="default 30")
    limits.add_argument(
        "--max-wall-time", type=float, default=900, metavar="SECONDS", help="default 900"
    )
    limits.add_argument("--max-total-tokens", type=int, metavar="N")
    limits.add_argument("--max-cost-usd", type=float, metavar="USD")
    limits.add_argument(
        "--test-timeout", type=float, default=600, metavar="SECONDS", help="grading (default 600)"
    )
    model = parser.add_argument_group("the model")
    model.add_argument(
        "--model",
        help="the model requests name (default: the embedded model's id; with --base-url, "
        "claude-sonnet-4-6)",
    )
    model.add_argument(
        "--base-url",
        default=os.environ.get("ANTHROPIC_BASE_URL"),
        help="a Messages API server: tercet's or Anthropic's (default $ANTHROPIC_BASE_URL; "
        "none: the embedded model in-process)",
    )
    model.add_argument(
        "--api-key", default=os.environ.get("ANTHROPIC_API_KEY"), help="default $ANTHROPIC_API_KEY"
    )
    model.add_argument("--gguf", type=Path, help="in-process: a GGUF (default: the bundled model)")
    model.add_argument("--context-window", type=int, metavar="TOKENS", help="in-process")
    model.add_argument("--threads", type=int, help="in-process: CPU threads")
    model.add_argument(
        "--max-tokens", type=int, default=4096, metavar="N", help="output per call (default 4096)"
    )
    model.add_argument("--temperature", type=float, help="default: the server's")
    model.add_argument(
        "--price",
        metavar="INPUT,OUTPUT",
        help="USD per million input and output tokens of --model (default: Anthropic's list "
        "prices for claude-* models; the embedded model: none, cost 'n/a')",
    )
    model.add_argument(
        "--parameters",
        type=float,
        metavar="N",
        help="the model's parameter count, for the FLOPs estimate (default: from the GGUF)",
    )
    _add_scorer_arguments(parser)
    _add_judge_arguments(parser, required=False)
    cluster = parser.add_argument_group("a Ray cluster (docs/ray.md)")
    cluster.add_argument(
        "--ray",
        metavar="auto|ADDRESS",
        help="run the attempts as Ray tasks ('auto': the cluster `ray start` made; 'local': a "
        "private instance here); the agent reaches the model by --base-url",
    )
    cluster.add_argument(
        "--max-retries",
        type=int,
        default=2,
        metavar="N",
        help="with --ray: times an attempt whose worker or node died is tried again (each "
        "loss saved as an ERROR result first; default 2)",
    )
    parser.set_defaults(run=_run)


def _add_scorer_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "choosing among attempts (selected@k)",
        "Each task's attempts are narrowed by what an agent could see (its own failure, an "
        "empty or unusable diff, a broken PASS_TO_PASS test), never by the hidden tests; a "
        "scorer model picks among those the tests leave tied.",
    )
    group.add_argument(
        "--scorer", metavar="MODEL", help="the scorer's model name (default: no scorer)"
    )
    group.add_argument(
        "--scorer-base-url",
        metavar="URL",
        help="the scorer's Messages API server (default: --base-url)",
    )
    group.add_argument(
        "--scorer-api-key", metavar="KEY", help="the scorer's API key (default: --api-key)"
    )
    group.add_argument(
        "--scorer-prompt",
        type=Path,
        metavar="FILE",
        help="the scorer's prompt (TOML, the shape of tercet/attempts/scorer.toml)",
    )


def _scorer(args: argparse.Namespace) -> ScorerSettings | None:
    from tercet.evals.selection import ScorerSettings

    if args.scorer is None:
        for option in ("scorer_base_url", "scorer_api_key", "scorer_prompt"):
            if getattr(args, option) is not None:
                raise EvalInputError(f"--{option.replace('_', '-')} needs --scorer MODEL")
        return None
    return ScorerSettings(
        model=args.scorer,
        base_url=args.scorer_base_url or args.base_url,
        api_key=args.scorer_api_key or args.api_key,
        prompt=args.scorer_prompt,
    )


def _instances(values: list[str]) -> tuple[str, ...]:
    return tuple(i for value in values for i in value.split(",") if i)


def _budget(args: argparse.Namespace) -> Budget:
    for name, value in [
        ("--max-turns", args.max_turns),
        ("--max-wall-time", args.max_wall_time),
        ("--max-total-tokens", args.max_total_tokens),
        ("--max-cost-usd", args.max_cost_usd),
    ]:
        if value is not None and value <= 0:
            raise EvalInputError(f"{name} must be positive")
    return Budget(
        max_turns=args.max_turns,
        max_total_tokens=args.max_total_tokens,
        max_wall_time_s=args.max_wall_time,
        max_cost_usd=args.max_cost_usd,
    )


def _prices(args: argparse.Namespace) -> dict[str, ModelPrice]:
    prices: dict[str, ModelPrice] = dict(PRICES) if args.base_url else {}
    if args.price:
        if not args.model:
            raise EvalInputError("--price needs --model: the name it prices")
        try:
            input_price, output_price = (float(v) for v in args.price.split(","))
        except ValueError:
            raise EvalInputError(f"--price {args.price}: give INPUT,OUTPUT in USD/Mtok") from None
        prices[args.model] = ModelPrice(input_price, output_price)
    return prices


def _options(values: list[str]) -> dict[str, str]:
    options = {}
    for value in values:
        key, sep, setting = value.partition("=")
        if not sep or not key:
            raise EvalInputError(f"--agent-option {value}: give KEY=VALUE")
        options[key] = setting
    return options


def _run(args: argparse.Namespace) -> int:
    from tercet.evals.agents import AgentSettings, agent_entry
    from tercet.evals.run import RunOptions, load_dataset, run_eval

    logging.getLogger("mcp").setLevel(logging.WARNING)
    try:
        agent_entry(args.agent)  # an unknown agent is said before the dataset loads
        settings = AgentSettings(
            model=args.model,
            base_url=args.base_url,
            api_key=args.api_key,
            gguf=args.gguf,
            context_window=args.context_window,
            threads=args.threads,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            prices=_prices(args),
            parameters=int(args.parameters) if args.parameters else None,
            sandbox=not args.no_sandbox,
            claude_binary=args.claude_binary,
            options=_options(args.agent_option),
            protect_tests=args.protect_tests,
            prompt_variant=_prompt_variant(args.prompt_variant),
        )
        options = RunOptions(
            split=args.split,
            attempts=args.attempts,
            workers=args.workers,
            instances=_instances(args.instances),
            limit=args.limit,
            budget=_budget(args),
            cache=args.cache,
            keep_workspaces=args.keep_workspaces,
            retry_errors=args.retry_errors,
            test_timeout_s=args.test_timeout,
        )
        scorer = _scorer(args)
        judge = _hack_judge(args, default_base_url=args.base_url, default_api_key=args.api_key)
        pool = _ray_pool(args)
        dataset = load_dataset(args.dataset, args.packages)
        try:
            run_eval(
                dataset,
                args.agent,
                settings,
                options,
                args.run_dir,
                resume=args.resume,
                stream=None if args.quiet else sys.stderr,
                scorer=scorer,
                ray=pool,
            )
        finally:
            if pool is not None:
                pool.close()
    except EvalInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print(
            f"interrupted: finished attempts are saved in {args.run_dir}; continue with "
            "the same command and --resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if judge is not None:
        try:
            _judge_and_say(args.run_dir, judge, again=False)
        except KeyboardInterrupt:
            print(
                f"interrupted: judgements made so far are in {args.run_dir}; continue with "
                f"tercet eval judge {args.run_dir}",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
    _print_summary(args.run_dir)
    return 0


def _prompt_variant(name: str) -> str:
    from tercet.agent.test_protection import prompt_addition

    try:
        prompt_addition(name)
    except ValueError as exc:
        raise EvalInputError(f"--prompt-variant: {exc}") from exc
    return name


def _ray_pool(args: argparse.Namespace) -> Any:
    """The Ray pool `--ray` asks for, connected (None without it); `EvalInputError` when it
    cannot be used."""
    if args.ray is None:
        if args.max_retries != 2:
            raise EvalInputError("--max-retries is for --ray runs")
        return None
    from tercet.attempts.ray_pool import RayPool, RayUnavailable
    from tercet.evals.agents import agent_entry

    if args.max_retries < 0:
        raise EvalInputError("--max-retries cannot be negative")
    if agent_entry(args.agent).name in ("tercet", "claude-code") and not args.base_url:
        raise EvalInputError(
            "--ray needs --base-url: the workers reach the model by URL (a tercet server, "
            "say, in front of vLLM)"
        )
    try:
        pool = RayPool(args.ray, max_retries=args.max_retries)
        pool.connect()
    except (RayUnavailable, ValueError) as exc:
        raise EvalInputError(str(exc)) from exc
    return pool


def _print_summary(run_dir: Path) -> None:
    from tercet.evals.report import best_of_k, headline, load_run, summary_line

    run = load_run(run_dir)
    print(summary_line(run))
    numbers = best_of_k(run)
    if numbers is not None:
        print("\n".join(["", *headline(numbers), ""]))
    print(f"report: tercet eval report {run_dir}")


# ---------------------------------------------------------------------------- grade


def _register_grade(actions: Any) -> None:
    parser = actions.add_parser(
        "grade",
        help="grade SWE-bench predictions (instance_id, model_name_or_path, model_patch)",
    )
    parser.add_argument("--predictions", type=Path, required=True, metavar="FILE", help="JSONL")
    _add_dataset_arguments(parser, split=False)
    _add_run_dir_arguments(parser)
    parser.add_argument(
        "--test-timeout", type=float, default=600, metavar="SECONDS", help="default 600"
    )
    parser.set_defaults(run=_grade)


def _grade(args: argparse.Namespace) -> int:
    from tercet.evals.run import RunOptions, grade_predictions, load_dataset

    try:
        dataset = load_dataset(args.dataset, args.packages)
        options = RunOptions(
            split="all",
            workers=args.workers,
            cache=args.cache,
            retry_errors=args.retry_errors,
            test_timeout_s=args.test_timeout,
        )
        grade_predictions(
            dataset,
            args.predictions,
            options,
            args.run_dir,
            resume=args.resume,
            stream=None if args.quiet else sys.stderr,
        )
    except EvalInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print(f"interrupted: graded predictions are saved in {args.run_dir}", file=sys.stderr)
        return EXIT_INTERRUPTED
    _print_summary(args.run_dir)
    return 0


# ---------------------------------------------------------------------------- select


def _register_select(actions: Any) -> None:
    parser = actions.add_parser(
        "select",
        help="choose again among each task's attempts (selected@k), without rerunning agents",
        description="Rewrite RUN/selections.jsonl: for each task whose k attempts all "
        "finished, the attempt chosen without the hidden tests, by the regression tests "
        "(PASS_TO_PASS) and, where they tie, the scorer.",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN", help="a run directory")
    parser.add_argument(
        "--base-url",
        default=os.environ.get("ANTHROPIC_BASE_URL"),
        help="the scorer's server when --scorer-base-url is not given "
        "(default $ANTHROPIC_BASE_URL)",
    )
    parser.add_argument(
        "--api-key", default=os.environ.get("ANTHROPIC_API_KEY"), help="default $ANTHROPIC_API_KEY"
    )
    _add_scorer_arguments(parser)
    parser.set_defaults(run=_select)


def _select(args: argparse.Namespace) -> int:
    from tercet.evals.run import select_run

    try:
        made = select_run(args.run_dir, _scorer(args))
    except EvalInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print(f"interrupted: selections made so far are in {args.run_dir}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"{len(made)} tasks selected")
    _print_summary(args.run_dir)
    return 0


# ---------------------------------------------------------------------------- judge


def _add_judge_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    group = parser.add_argument_group(
        "the reward-hacking judge",
        "A model asked which hack types an attempt shows, for each pass on an impossible "
        "variant and each attempt the rules flag (tampering, a hack type); its verdicts go to "
        "RUN_DIR/judgements.jsonl (results.jsonl is left as it is).",
    )
    group.add_argument(
        "--hack-judge",
        metavar="MODEL",
        required=required,
        help="the judge's model name" + ("" if required else " (default: no judge)"),
    )
    group.add_argument(
        "--hack-judge-base-url",
        metavar="URL",
        help="the judge's Messages API server (default: "
        + ("--base-url)" if not required else "$ANTHROPIC_BASE_URL, else Anthropic's API)"),
    )
    group.add_argument(
        "--hack-judge-api-key",
        metavar="KEY",
        help="the judge's API key (default: "
        + ("--api-key)" if not required else "$ANTHROPIC_API_KEY)"),
    )
    group.add_argument(
        "--hack-judge-prompt",
        type=Path,
        metavar="FILE",
        help="the judge's prompt (TOML, the shape of tercet/evals/hack_judge.toml)",
    )


def _hack_judge(
    args: argparse.Namespace, *, default_base_url: str | None, default_api_key: str | None
) -> HackJudgeSettings | None:
    """The judge the options ask for (its prompt checked), or None."""
    from tercet.evals.hacks import HackJudgeSettings

    if args.hack_judge is None:
        for option in ("hack_judge_base_url", "hack_judge_api_key", "hack_judge_prompt"):
            if getattr(args, option) is not None:
                raise EvalInputError(f"--{option.replace('_', '-')} needs --hack-judge MODEL")
        return None
    settings = HackJudgeSettings(
        model=args.hack_judge,
        base_url=args.hack_judge_base_url or default_base_url,
        api_key=args.hack_judge_api_key or default_api_key,
        prompt=args.hack_judge_prompt,
    )
    settings.check()
    return settings


def _judge_and_say(run_dir: Path, settings: HackJudgeSettings, *, again: bool) -> None:
    from tercet.evals.hacks import judge_run

    summary = judge_run(run_dir, settings, again=again)
    print(
        f"hack judge {settings.model}: {summary.judged} judged, {summary.failed} failed, "
        f"{summary.current} already judged, {summary.not_needed} not needing it "
        "(neither an impossible pass nor flagged by the rules)",
        file=sys.stderr,
    )
    for error in summary.errors[:10]:
        print(f"  judge failed on {error}", file=sys.stderr)


def _register_judge(actions: Any) -> None:
    parser = actions.add_parser(
        "judge",
        help="ask a model which hack types a run's attempts show (RUN/judgements.jsonl)",
        description="Judge every pass on an impossible variant and every attempt the rules "
        "flag (tampering, a hack type) of a finished run; each verdict, or the judge's "
        "failure, is appended to RUN/judgements.jsonl. Attempts this judge already answered "
        "are skipped unless --again. `tercet eval report` then shows the judge's hack types "
        "and its agreement with the rules.",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN", help="a run directory")
    parser.add_argument("--again", action="store_true", help="judge answered attempts again")
    _add_judge_arguments(parser, required=True)
    parser.set_defaults(run=_judge)


def _judge(args: argparse.Namespace) -> int:
    try:
        settings = _hack_judge(
            args,
            default_base_url=os.environ.get("ANTHROPIC_BASE_URL"),
            default_api_key=os.environ.get("ANTHROPIC_API_KEY"),
        )
        assert settings is not None  # --hack-judge is required
        _judge_and_say(args.run_dir, settings, again=args.again)
    except EvalInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print(f"interrupted: judgements made so far are in {args.run_dir}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


# ---------------------------------------------------------------------------- report


def _register_report(actions: Any) -> None:
    parser = actions.add_parser(
        "report",
        help="summarise a run: report.md, report.html (plots inlined), predictions.jsonl",
        description="The report of the first RUN; further RUNs join its reward-hacking table "
        "(one row a run and split: protection on against off, say).",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN", help="a run directory")
    parser.add_argument(
        "others",
        type=Path,
        nargs="*",
        metavar="RUN",
        help="more run directories, as rows of the reward-hacking table",
    )
    parser.add_argument(
        "--control",
        type=Path,
        action="append",
        default=[],
        metavar="RUN_DIR",
        help="a run on the original tasks of the impossible variants, for the control pass "
        "rate (repeatable)",
    )
    parser.add_argument("--out", type=Path, help="where to write (default: the run directory)")
    parser.add_argument("--no-html", action="store_true", help="markdown and predictions only")
    parser.set_defaults(run=_report)


def _report(args: argparse.Namespace) -> int:
    from tercet.evals.report import write_report

    try:
        written = write_report(
            args.run_dir,
            args.out,
            include_html=not args.no_html,
            others=args.others,
            controls=args.control,
        )
    except EvalInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    markdown = written["markdown"]
    print(markdown.read_text(encoding="utf-8"))
    for kind, path in written.items():
        print(f"{kind}: {path}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- injection


def _register_injection(actions: Any) -> None:
    parser = actions.add_parser(
        "injection",
        help="the prompt-injection guard on AgentDojo: scripted (model-free) or with a model",
        description="AgentDojo v1.2.2 (the agentdojo extra; offline). --agent scripted: the "
        "model-free measurement (scripted benign and gullible agents: prevention, false "
        "denials, utility lost). --agent model: tercet's agent on a model, each user task "
        "without an attack and with each injection task, without the guard and with it "
        "(utility, utility under attack, ASR, token overhead). Runs are appended to "
        "OUT/runs.jsonl as each ends (the same command continues an interrupted "
        "measurement); the table of every run there goes to OUT/report.md and report.jsonl.",
    )
    parser.add_argument(
        "--suite",
        action="append",
        metavar="NAME",
        help="banking, slack, travel or workspace (repeatable; default banking)",
    )
    parser.add_argument("--user-tasks", type=int, metavar="N", help="the first N of each suite")
    parser.add_argument("--injection-tasks", type=int, metavar="N", help="the first N")
    parser.add_argument(
        "--attack",
        default="important_instructions",
        metavar="NAME",
        help="an attack of AgentDojo's registry (default important_instructions)",
    )
    parser.add_argument(
        "--policy",
        default="default",
        metavar="PATH|default",
        help="the guard's policy file (default: the shipped policies/agentdojo.toml)",
    )
    parser.add_argument(
        "--agent",
        choices=("scripted", "model"),
        default="model",
        help="scripted: the model-free measurement; model: tercet's agent (default)",
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="runs.jsonl and the report"
    )
    parser.add_argument(
        "--workers", type=int, default=1, metavar="N", help="runs at once (default 1)"
    )
    model = parser.add_argument_group("the model (--agent model)")
    model.add_argument(
        "--base-url",
        help="a Messages API server (tercet's, serving any engine, or Anthropic's); none: "
        "the embedded model in process",
    )
    model.add_argument(
        "--api-key", default=os.environ.get("ANTHROPIC_API_KEY"), help="default $ANTHROPIC_API_KEY"
    )
    model.add_argument(
        "--model",
        help="the model requests name (default: the embedded model's id; with --base-url, "
        "claude-sonnet-4-6)",
    )
    model.add_argument("--max-turns", type=int, default=10, metavar="N", help="default 10")
    model.add_argument(
        "--max-tokens", type=int, default=512, metavar="N", help="output per call (default 512)"
    )
    model.add_argument("--temperature", type=float, help="default: the server's")
    model.add_argument("--threads", type=int, help="in process: CPU threads")
    model.add_argument("--context-window", type=int, metavar="TOKENS", help="in process")
    parser.set_defaults(run=_injection)


def _injection(args: argparse.Namespace) -> int:
    try:
        return _measure_injection(args)
    except EvalInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print(
            f"interrupted: finished runs are in {args.out}; the same command continues",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


def _measure_injection(args: argparse.Namespace) -> int:
    from tercet.evals.injection_report import RUNS_FILE, RunsFile, write_report

    suites, policy_path, policy_name = _injection_inputs(args)
    logging.getLogger("tercet.guard").setLevel(logging.ERROR)  # the runs record each denial
    args.out.mkdir(parents=True, exist_ok=True)
    runs = RunsFile(args.out / RUNS_FILE)
    recorded = runs.load()
    if args.agent == "scripted":
        _injection_scripted(args, suites, policy_path, policy_name, recorded, runs)
    else:
        _injection_model(args, suites, policy_path, policy_name, recorded, runs)
    text, written = write_report(runs.load(), args.out)
    print(text, end="")
    for path in written:
        print(f"written: {path}", file=sys.stderr)
    return 0


def _injection_inputs(args: argparse.Namespace) -> tuple[list[str], Path, str]:
    """The suites, the policy file and its label; `EvalInputError` for what cannot be run."""
    from agentdojo.attacks.attack_registry import ATTACKS  # type: ignore[import-untyped]

    from tercet.evals.injection import POLICY, SUITES
    from tercet.guard import Policy, PolicyError

    suites = args.suite or ["banking"]
    for name in suites:
        if name not in SUITES:
            raise EvalInputError(f"unknown suite {name!r}; the suites are {', '.join(SUITES)}")
    usable = [name for name in ATTACKS if name != "manual"]  # manual asks on the terminal
    if args.attack not in usable:
        raise EvalInputError(f"unknown attack {args.attack!r}; AgentDojo's: {', '.join(usable)}")
    for flag in ("user_tasks", "injection_tasks", "workers", "max_turns", "max_tokens"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise EvalInputError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.agent == "scripted" and args.base_url:
        raise EvalInputError("--base-url is for --agent model (the scripted agents use none)")
    path = POLICY if args.policy == "default" else Path(args.policy)
    try:
        Policy.load(path)
    except PolicyError as exc:
        raise EvalInputError(f"the guard policy: {exc}") from None
    return suites, path, "agentdojo" if args.policy == "default" else str(path)


def _injection_scripted(
    args: argparse.Namespace,
    suites: list[str],
    policy_path: Path,
    policy_name: str,
    recorded: list[InjectionRun],
    runs: RunsFile,
) -> None:
    """The model-free measurement, a user task (all its runs) at a time; user tasks whose
    runs are all recorded are not run again."""
    from concurrent.futures import ProcessPoolExecutor
    from contextlib import nullcontext

    from tercet.evals.injection import Unit, first_tasks, run_unit, suite
    from tercet.evals.injection_report import InjectionRun, from_outcome

    done = {run.key for run in recorded}
    units = []
    for name in suites:
        tasks = suite(name)
        injections = tuple(first_tasks(tasks.injection_tasks, args.injection_tasks))
        for user in first_tasks(tasks.user_tasks, args.user_tasks):
            expected = [
                InjectionRun(
                    agent="benign" if injection is None else "gullible",
                    policy=policy_name,
                    guarded=guarded,
                    suite=name,
                    user_task=user,
                    injection_task=injection,
                    attack=args.attack,
                ).key
                for injection in (None, *injections)
                for guarded in (False, True)
            ]
            if not all(key in done for key in expected):
                units.append(Unit(name, user, injections, args.attack, policy_path))
    workers = min(args.workers, len(units)) or 1
    with ProcessPoolExecutor(max_workers=workers) if workers > 1 else nullcontext() as pool:
        results = pool.map(run_unit, units) if pool is not None else map(run_unit, units)
        for number, (unit, outcomes) in enumerate(zip(units, results, strict=True), 1):
            for outcome in outcomes:
                runs.append(from_outcome(outcome, policy_name, args.attack))
            print(f"[{number}/{len(units)}] {unit.suite} {unit.user_task}", file=sys.stderr)


def _injection_model(
    args: argparse.Namespace,
    suites: list[str],
    policy_path: Path,
    policy_name: str,
    recorded: list[InjectionRun],
    runs: RunsFile,
) -> None:
    """tercet's agent on the model, each run appended as it ends."""
    from tercet.evals.injection_model import (
        ModelPlan,
        ModelTarget,
        measure_model,
        open_session,
        planned,
    )
    from tercet.guard import Policy

    target = ModelTarget(
        base_url=args.base_url,
        model=args.model,
        api_key=args.api_key,
        temperature=args.temperature,
        threads=args.threads,
        context_window=args.context_window,
    )
    plan = ModelPlan(
        suites=suites,
        user_tasks=args.user_tasks,
        injection_tasks=args.injection_tasks,
        attack=args.attack,
        policy=Policy.load(policy_path),
        policy_name=policy_name,
        max_turns=args.max_turns,
        max_tokens=args.max_tokens,
    )
    with open_session(target) as session:
        finished = {
            planned(run)
            for run in recorded
            if (run.agent, run.model, run.policy, run.attack)
            == ("model", session.model_name, policy_name, args.attack)
        }
        total = len([todo for todo in plan.runs() if todo not in finished])
        count = 0

        def ended(run: InjectionRun) -> None:
            nonlocal count
            runs.append(run)
            count += 1
            attacked = f" x {run.injection_task}" if run.injection_task else ""
            outcome = "error" if run.error else f"utility {run.utility}"
            if run.security is not None:
                outcome += f", attacker's goal {'reached' if run.security else 'not reached'}"
            print(
                f"[{count}/{total}] {run.suite} {run.user_task}{attacked}"
                f"{', guarded' if run.guarded else ''}: {outcome}; {run.turns} turns, "
                f"{run.total_tokens} tokens, {run.duration_s:.0f} s",
                file=sys.stderr,
            )

        measure_model(session, plan, done=finished, on_run=ended, workers=args.workers)

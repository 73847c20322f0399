"""The runner: every attempt of an agent at a dataset's tasks, graded, saved as it ends.

A run lives in a directory:

    run.json       what ran: model, agent, dataset and its version, harness version, settings
    tasks.jsonl    the tasks the run covers (so it can be reported and graded on its own)
    results.jsonl  one `AttemptResult` a line, appended (flushed and fsynced) as each ends
    selections.jsonl  with several attempts a task: the one chosen of each task's k, chosen
                   without the hidden tests (`selection`), as each task's last attempt ends

Each attempt gets a fresh workspace: a copy of the task's buggy tree made a git repository
with one commit, so whatever the agent changes is `git diff`. The diff is graded on a
pristine copy (`grade.grade`). `--resume` skips the (instance, attempt) pairs the results
already hold; Ctrl-C stops at once, keeping every finished result, and the directory resumes.
A last line cut short by a kill is dropped on resume and that attempt is done again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shlex
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TextIO

from pydantic import ValidationError

from tercet import __version__
from tercet.attempts.ray_pool import RayPool
from tercet.attempts.scorer import Scorer
from tercet.attempts.workspaces import GitWorkspace as GitWorkspace  # re-exported
from tercet.attempts.workspaces import collect_diff, make_workspace, remove_workspace
from tercet.evals import hacks
from tercet.evals.agents import (
    AgentOutcome,
    AgentSettings,
    Budget,
    EvalAgent,
    TaskView,
    Workspace,
    agent_entry,
    create_agent,
)
from tercet.evals.distributed import ray_attempt
from tercet.evals.impossible import VARIANTS_FILE, VariantRecord, show_tests
from tercet.evals.packages import PackageSpec, load_specs, spec_for
from tercet.evals.selection import (
    ScorerSettings,
    Selector,
    TaskSelection,
    attempts_per_task,
)
from tercet.evals.task import (
    AttemptResult,
    Compute,
    EvalInputError,
    Grade,
    Prediction,
    Task,
    parse_record,
    read_jsonl,
    write_jsonl,
)

log = logging.getLogger("tercet.evals")

DATASETS = Path(__file__).resolve().parent / "datasets"
RUN_FILE = "run.json"
TASKS_FILE = "tasks.jsonl"
RESULTS_FILE = "results.jsonl"
# "all" is the dev and test originals; the impossible variants (impossible.jsonl beside the
# tasks) only by naming their split; "original" is the originals that have variants (the
# control set for the impossible splits).
Split = Literal["dev", "test", "all", "oneoff", "conflicting", "original"]
# How long past its wall-time budget an agent may run before the runner cancels it (the
# agent's own limit should have ended it already).
BACKSTOP_S = 120.0


# ---------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class Dataset:
    """A set of tasks and the package specs they need."""

    name: str
    version: str
    tasks_path: Path
    tasks: list[Task]
    specs: dict[str, PackageSpec]

    def select(
        self,
        split: Split = "all",
        instances: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[Task]:
        """The tasks of `split` (see `Split`), narrowed to `instances` when given (an
        unknown id is an `EvalInputError`), the first `limit` of them."""
        tasks = [t for t in self.tasks if self.in_split(t, split)]
        if instances:
            by_id = {t.instance_id: t for t in self.tasks}
            unknown = [i for i in instances if i not in by_id]
            if unknown:
                raise EvalInputError(
                    f"unknown instance{'s' if len(unknown) > 1 else ''} in {self.name}: "
                    + ", ".join(unknown)
                )
            wanted = set(instances)
            tasks = [t for t in tasks if t.instance_id in wanted]
            outside = [i for i in dict.fromkeys(instances) if not self.in_split(by_id[i], split)]
            if outside:
                raise EvalInputError(
                    f"not in the {split} split: "
                    + ", ".join(f"{i} (split {by_id[i].split})" for i in outside)
                    + (" (use --split all)" if split not in ("all", "original") else "")
                )
        return tasks if limit is None else tasks[:limit]

    def in_split(self, task: Task, split: Split) -> bool:
        """Whether `task` is in `split`."""
        if split == "all":
            return task.impossible is None
        if split == "original":
            return task.impossible is None and task.instance_id in self._with_variants
        return task.split == split

    @functools.cached_property
    def _with_variants(self) -> frozenset[str]:
        return frozenset(t.original_instance_id or "" for t in self.tasks if t.impossible)


def load_dataset(name_or_path: str | Path, packages: Path | None = None) -> Dataset:
    """A dataset by name (one under tercet/evals/datasets), or a directory holding
    tasks.jsonl and packages.toml (and impossible.jsonl, its impossible variants, if it has
    them), or a tasks file (packages.toml beside it, or `packages`). Every task must name a
    package the specs pin, at that version and hash."""
    path = Path(name_or_path)
    if isinstance(name_or_path, str) and (DATASETS / name_or_path).is_dir():
        path = DATASETS / name_or_path
    if path.is_dir():
        tasks_path = path / TASKS_FILE
        name = path.name
    elif path.is_file():
        tasks_path = path
        name = path.stem
    else:
        known = (
            sorted(p.name for p in DATASETS.iterdir() if p.is_dir()) if DATASETS.is_dir() else []
        )
        raise EvalInputError(
            f"no dataset {str(name_or_path)!r}: not a directory or file, nor one of "
            f"{', '.join(known) or 'the bundled datasets (none yet)'}"
        )
    specs_path = packages or tasks_path.parent / "packages.toml"
    if not specs_path.is_file():
        raise EvalInputError(f"no package specs for {tasks_path}: {specs_path} is missing")
    specs = load_specs(specs_path)
    tasks = read_jsonl(tasks_path, Task)
    _check_tasks(tasks_path, tasks, specs, set())
    variants_path = tasks_path.parent / VARIANTS_FILE
    if path.is_dir() and variants_path.is_file():
        originals = {t.instance_id: t for t in tasks if t.impossible is None}
        variants = []
        for record in read_jsonl(variants_path, VariantRecord):
            original = originals.get(record.original_instance_id)
            if original is None:
                raise EvalInputError(
                    f"{variants_path}: {record.instance_id} was made from "
                    f"{record.original_instance_id}, which {tasks_path} lacks"
                )
            variants.append(record.expand(original))
        _check_tasks(variants_path, variants, specs, {t.instance_id for t in tasks})
        tasks = [*tasks, *variants]
    return Dataset(name, _dataset_version(tasks_path), tasks_path, tasks, specs)


def _check_tasks(
    path: Path, tasks: Sequence[Task], specs: dict[str, PackageSpec], seen: set[str]
) -> None:
    """Each task's id is new (not in `seen`, which gains them) and its package is pinned."""
    for task in tasks:
        if task.instance_id in seen:
            raise EvalInputError(f"{path}: instance {task.instance_id} appears twice")
        seen.add(task.instance_id)
        try:
            spec_for(task.source, specs)
        except EvalInputError as exc:
            raise EvalInputError(f"{path}: {task.instance_id}: {exc}") from None


def _dataset_version(tasks_path: Path) -> str:
    """The manifest's `version` when the dataset has one, else a hash of its tasks."""
    manifest = tasks_path.parent / "manifest.json"
    with contextlib.suppress(OSError, ValueError, AttributeError):
        version = json.loads(manifest.read_text(encoding="utf-8")).get("version")
        if version:
            return str(version)
    return "sha256:" + file_digest(tasks_path)[:12]


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------- results


class ResultsFile:
    """results.jsonl: read back on resume, appended to (one line, flushed and fsynced) as each
    attempt ends, from any worker."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def load(self, *, repair: bool = False) -> list[AttemptResult]:
        """Every result in the file. A last line without its newline (the process was killed
        while writing it) is ignored, and with `repair` cut off the file so the next append
        starts a clean line; any other bad line is an `EvalInputError`."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise EvalInputError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        results: list[AttemptResult] = []
        complete_end = data.rfind(b"\n") + 1
        for number, line in enumerate(data[:complete_end].splitlines(), start=1):
            if not line.strip():
                continue
            results.append(parse_record(AttemptResult, line, f"{self.path}:{number}"))
        tail = data[complete_end:]
        if tail.strip():
            try:  # a whole record that only lacks its newline is kept
                results.append(AttemptResult.model_validate_json(tail))
                if repair:
                    with self.path.open("ab") as handle:
                        handle.write(b"\n")
            except ValidationError:
                log.warning("%s: ignoring a truncated last line (%d bytes)", self.path, len(tail))
                if repair:
                    with self.path.open("r+b") as handle:
                        handle.truncate(complete_end)
        return results

    def append(self, result: AttemptResult) -> None:
        line = (result.model_dump_json() + "\n").encode()
        with self._lock, self.path.open("ab") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())


def latest_results(results: Iterable[AttemptResult]) -> dict[tuple[str, int], AttemptResult]:
    """One result per (instance, attempt): the last one written (a redone attempt wins)."""
    return {(r.instance_id, r.attempt): r for r in results}


# ---------------------------------------------------------------------------- run settings


@dataclass(frozen=True)
class RunOptions:
    """How a run goes, apart from the agent's own settings."""

    split: Split = "test"
    attempts: int = 1
    workers: int = 1
    instances: tuple[str, ...] = ()
    limit: int | None = None
    budget: Budget = field(default_factory=lambda: Budget(max_turns=30, max_wall_time_s=900))
    cache: Path | None = None  # None: sources.default_cache_dir()
    keep_workspaces: bool = False
    retry_errors: bool = False  # on resume, redo attempts that ended in ERROR
    test_timeout_s: float = 600.0

    def check(self) -> None:
        if self.attempts < 1:
            raise EvalInputError("--attempts must be at least 1")
        if self.workers < 1:
            raise EvalInputError("--workers must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise EvalInputError("--limit must be at least 1")


def run_record(
    dataset: Dataset,
    agent_name: str,
    model: str | None,
    options: RunOptions,
    settings: AgentSettings,
) -> dict[str, Any]:
    """What run.json says about a run: everything that makes its results what they are."""
    return {
        "harness": {"name": "tercet", "version": __version__},
        "dataset": {
            "name": dataset.name,
            "version": dataset.version,
            "path": str(dataset.tasks_path),
            "tasks_sha256": file_digest(dataset.tasks_path),
        },
        "agent": agent_name,
        "model": model,
        "settings": {
            "split": options.split,
            "attempts": options.attempts,
            "workers": options.workers,
            "instances": list(options.instances),
            "limit": options.limit,
            "budget": asdict(options.budget),
            "test_timeout_s": options.test_timeout_s,
            "protect_tests": settings.protect_tests,
            "prompt_variant": settings.prompt_variant,
            "agent": _settings_record(settings),
        },
        "python": sys.version.split()[0],
        "created_at": now(),
        "sessions": [],
    }


def _settings_record(settings: AgentSettings) -> dict[str, Any]:
    """The agent settings worth recording (never the key or the gold patches)."""
    from tercet.agent.budget import price_of

    price = price_of(settings.model or "", settings.prices) if settings.model else None
    return {
        "model": settings.model,
        "base_url": settings.base_url,
        "gguf": str(settings.gguf) if settings.gguf else None,
        "context_window": settings.context_window,
        "max_tokens": settings.max_tokens,
        "temperature": settings.temperature,
        "price_per_mtok": asdict(price) if price else None,
        "parameters": settings.parameters,
        "sandbox": settings.sandbox,
        "options": dict(settings.options),
    }


class RunDirectory:
    """A run's directory and its files."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.results = ResultsFile(path / RESULTS_FILE)

    @property
    def record_path(self) -> Path:
        return self.path / RUN_FILE

    def read_record(self) -> dict[str, Any]:
        try:
            record = json.loads(self.record_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise EvalInputError(f"{self.path} is not a run directory (no {RUN_FILE})") from None
        except (OSError, ValueError) as exc:
            raise EvalInputError(f"{self.record_path}: cannot read it: {exc}") from exc
        if not isinstance(record, dict):
            raise EvalInputError(f"{self.record_path}: not a JSON object")
        return record

    def write_record(self, record: Mapping[str, Any]) -> None:
        partial = self.record_path.with_suffix(".json.partial")
        partial.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        partial.replace(self.record_path)

    def tasks(self) -> list[Task]:
        path = self.path / TASKS_FILE
        return read_jsonl(path, Task) if path.exists() else []

    def save_tasks(self, tasks: Iterable[Task]) -> None:
        """Record `tasks` with those already recorded (a resumed run may cover more)."""
        merged = {t.instance_id: t for t in self.tasks()}
        merged.update({t.instance_id: t for t in tasks})
        write_jsonl(self.path / TASKS_FILE, merged.values())

    def check(self, record: Mapping[str, Any], *, resume: bool) -> dict[str, Any] | None:
        """Whether a run as `record` may start (or resume) here: the resumed run's record, or
        None for a new run; `EvalInputError` otherwise. A directory with a run is never
        started over without `resume`; a resumed one must have the same agent, dataset version
        and model (a `record` whose model is None is checked for the others only)."""
        has_results = self.results.path.exists() and self.results.path.stat().st_size > 0
        if not resume:
            if has_results or self.record_path.exists():
                raise EvalInputError(
                    f"{self.path} already holds a run; add --resume to continue it, or give "
                    "another --run-dir"
                )
            return None
        if not self.record_path.exists():
            if has_results:
                raise EvalInputError(f"{self.path} has results but no {RUN_FILE}")
            return None
        existing = self.read_record()
        for key in ("agent", "model"):
            unknown_yet = key == "model" and record.get(key) is None
            if not unknown_yet and existing.get(key) != record.get(key):
                raise EvalInputError(
                    f"{self.path} was run with {key} {existing.get(key)!r}, not "
                    f"{record.get(key)!r}; use another --run-dir"
                )
        old, new = existing.get("dataset", {}), record["dataset"]
        if old.get("version") != new["version"]:
            raise EvalInputError(
                f"{self.path} was run on {old.get('name')} {old.get('version')}, not "
                f"{new['name']} {new['version']}; use another --run-dir"
            )
        return existing

    def open(self, record: dict[str, Any], *, resume: bool) -> dict[str, Any]:
        """Start or resume the run (see `check`): the record to keep, written."""
        existing = self.check(record, resume=resume)
        self.path.mkdir(parents=True, exist_ok=True)
        if existing is None:
            self.write_record(record)
            return record
        existing["settings"] = record["settings"]  # the latest session's, e.g. more attempts
        return existing


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------- workspaces


def test_command(spec: PackageSpec, tree: Path, environment: Path) -> str:
    """A bash command that runs `spec`'s test suite on `tree` with `environment`'s pytest, as
    the grader does (without its report): for the agent to check its work."""
    root = str(tree)
    python_path = root if spec.import_root in ("", ".") else f"{root}/{spec.import_root}"
    variables = {**spec.env, "PYTHONPATH": python_path, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    argv = [
        "env",
        *(f"{name}={value}" for name, value in variables.items()),
        str(environment / "bin" / "python"),
        "-m",
        "pytest",
        *(arg for plugin in spec.plugins for arg in ("-p", plugin)),
        "-p",
        "no:cacheprovider",
        *spec.pytest_args,
        *spec.test_paths,
    ]
    return shlex.join(argv)


# ---------------------------------------------------------------------------- attempts


@dataclass
class Progress:
    """Counts as the run goes, for the progress display."""

    total: int
    done: int = 0
    resolved: int = 0
    errors: int = 0


Reporter = Callable[[AttemptResult, Progress], None]
# Called with each result once it is saved (the run's selections are made there).
ResultHook = Callable[[AttemptResult], Awaitable[None]]


class Runner:
    """Runs attempts: prepares each task once (its test environment and buggy tree, under
    the cache), then workspace, agent, diff, grade, result."""

    def __init__(
        self,
        dataset: Dataset,
        directory: RunDirectory,
        options: RunOptions,
        *,
        cache: Path,
    ) -> None:
        self.dataset = dataset
        self.directory = directory
        self.options = options
        self.cache = cache.resolve()  # paths an agent is shown must hold from any directory
        self._environments: dict[str, Path] = {}
        self._trees: dict[str, Path] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def pending(
        self, tasks: Sequence[Task], finished: Mapping[tuple[str, int], AttemptResult]
    ) -> list[tuple[Task, int]]:
        """The (task, attempt) pairs still to do, attempt-major (every task's first attempt
        before any second one)."""
        todo = []
        for attempt in range(self.options.attempts):
            for task in tasks:
                done = finished.get((task.instance_id, attempt))
                if done is None or (self.options.retry_errors and done.grade.status == "ERROR"):
                    todo.append((task, attempt))
        return todo

    async def run(
        self,
        pairs: Sequence[tuple[Task, int]],
        attempt: Callable[[Task, int], Any],
        progress: Progress,
        report: Reporter | None = None,
        on_result: ResultHook | None = None,
    ) -> Progress:
        """Run `attempt` over `pairs` with the options' workers, saving each result as it
        comes (then `on_result`). Cancelled (Ctrl-C), it stops at once; finished results are
        already saved."""
        queue = list(reversed(pairs))

        async def worker() -> None:
            while queue:
                task, number = queue.pop()
                result: AttemptResult = await attempt(task, number)
                await asyncio.to_thread(self.directory.results.append, result)
                progress.done += 1
                progress.resolved += result.grade.resolved
                progress.errors += result.grade.status == "ERROR"
                if report is not None:
                    report(result, progress)
                if on_result is not None:
                    await on_result(result)

        workers = [asyncio.create_task(worker()) for _ in range(self.options.workers)]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        return progress

    async def prepare(self, task: Task) -> tuple[PackageSpec, Path, Path]:
        """The task's spec, test environment and buggy tree (each made once, under a lock)."""
        from tercet.evals.environments import test_environment
        from tercet.evals.workspace import buggy_tree

        spec = spec_for(task.source, self.dataset.specs)
        async with self._lock(f"env:{spec.name}"):
            if spec.name not in self._environments:
                self._environments[spec.name] = await asyncio.to_thread(
                    test_environment, spec, self.cache
                )
        async with self._lock(f"tree:{task.instance_id}"):
            if task.instance_id not in self._trees:
                self._trees[task.instance_id] = await asyncio.to_thread(
                    buggy_tree, task, spec, self.cache
                )
        return spec, self._environments[spec.name], self._trees[task.instance_id]

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def grade(
        self, task: Task, patch: str, spec: PackageSpec, env: Path, tree: Path
    ) -> Grade:
        """[A]'s grader on a pristine copy; a failure of the harness is an ERROR grade."""
        from tercet.evals import grade as grading

        try:
            return await asyncio.to_thread(
                grading.grade,
                task,
                patch,
                pristine=tree,
                spec=spec,
                environment=env,
                timeout_s=self.options.test_timeout_s,
            )
        except Exception as exc:
            log.debug("grading %s failed", task.instance_id, exc_info=True)
            return Grade(status="ERROR", error=f"grading failed: {type(exc).__name__}: {exc}")

    async def agent_attempt(self, agent: EvalAgent, task: Task, number: int) -> AttemptResult:
        """One attempt of `agent` at `task`, in a fresh workspace."""
        started_at = now()
        workspace_dir = self.directory.path / "workspaces" / f"{_safe(task.instance_id)}.{number}"
        patch = ""
        outcome = AgentOutcome("not_started")
        try:
            try:
                spec, env, tree = await self.prepare(task)
            except Exception as exc:
                return self._error(agent, task, number, started_at, "preparing the task", exc)
            try:
                show = functools.partial(show_tests, task)
                made = await asyncio.to_thread(make_workspace, tree, workspace_dir, show)
                before = await asyncio.to_thread(hacks.snapshot, workspace_dir, spec)
            except Exception as exc:
                return self._error(agent, task, number, started_at, "making the workspace", exc)
            workspace = Workspace(
                workspace_dir,
                test_command(spec, workspace_dir, env),
                env,
                test_patterns=tuple(spec.test_files),
            )
            outcome = await self._solve(agent, task, workspace)
            try:
                after = await asyncio.to_thread(hacks.snapshot, workspace_dir, spec)
            except Exception as exc:
                return self._error(
                    agent, task, number, started_at, "reading the workspace", exc, outcome
                )
            changed = hacks.tampered(before, after)
            try:
                patch = await asyncio.to_thread(collect_diff, made)
            except Exception as exc:
                return self._error(
                    agent, task, number, started_at, "collecting the diff", exc, outcome
                )
            grade = await self.grade(task, patch, spec, env, tree)
        finally:
            if not self.options.keep_workspaces:
                await asyncio.to_thread(remove_workspace, workspace_dir)
        abstain_reason = hacks.abstention(outcome.final_text, outcome.abstain_reason)
        return AttemptResult(
            instance_id=task.instance_id,
            attempt=number,
            agent=agent.name,
            model=outcome.model or agent.model,
            model_patch=patch,
            grade=grade,
            compute=outcome.compute,
            stop_reason=outcome.stop_reason,
            agent_error=outcome.error,
            started_at=started_at,
            ended_at=now(),
            abstained=abstain_reason is not None,
            abstain_reason=abstain_reason,
            tampered=changed,
            hack_types=hacks.classify(
                patch, changed, before, spec, after=after, tree=tree, task=task
            ),
        )

    async def _solve(self, agent: EvalAgent, task: Task, workspace: Workspace) -> AgentOutcome:
        budget = self.options.budget
        limit = None if budget.max_wall_time_s is None else budget.max_wall_time_s + BACKSTOP_S
        started = time.monotonic()
        try:
            async with asyncio.timeout(limit):
                outcome = await agent.solve(TaskView.of(task), workspace, budget)
        except TimeoutError:
            outcome = AgentOutcome(
                "max_wall_time", error=f"the agent ran past its budget + {BACKSTOP_S:g}s"
            )
        except Exception as exc:
            log.debug("the agent failed on %s", task.instance_id, exc_info=True)
            outcome = AgentOutcome("error", error=f"{type(exc).__name__}: {exc}")
        if not outcome.compute.wall_seconds:
            outcome.compute = outcome.compute.model_copy(
                update={"wall_seconds": time.monotonic() - started}
            )
        return outcome

    def _error(
        self,
        agent: EvalAgent,
        task: Task,
        number: int,
        started_at: str,
        doing: str,
        exc: BaseException,
        outcome: AgentOutcome | None = None,
    ) -> AttemptResult:
        log.debug("%s for %s failed", doing, task.instance_id, exc_info=True)
        outcome = outcome or AgentOutcome("not_run")
        return AttemptResult(
            instance_id=task.instance_id,
            attempt=number,
            agent=agent.name,
            model=outcome.model or agent.model,
            model_patch="",
            grade=Grade(status="ERROR", error=f"{doing} failed: {type(exc).__name__}: {exc}"),
            compute=outcome.compute,
            stop_reason=outcome.stop_reason,
            agent_error=outcome.error,
            started_at=started_at,
            ended_at=now(),
        )

    async def prediction_attempt(
        self, prediction: Prediction, task: Task, number: int
    ) -> AttemptResult:
        """Grade a patch made elsewhere."""
        started_at = now()
        patch = prediction.model_patch or ""
        try:
            spec, env, tree = await self.prepare(task)
        except Exception as exc:
            grade = Grade(
                status="ERROR", error=f"preparing the task failed: {type(exc).__name__}: {exc}"
            )
        else:
            grade = await self.grade(task, patch, spec, env, tree)
        return AttemptResult(
            instance_id=task.instance_id,
            attempt=number,
            agent="predictions",
            model=prediction.model_name_or_path,
            model_patch=patch,
            grade=grade,
            compute=Compute(),
            stop_reason="external",
            started_at=started_at,
            ended_at=now(),
        )


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:120]


# ---------------------------------------------------------------------------- commands


@dataclass
class RunSummary:
    """What a `run` or `grade` did."""

    run_dir: Path
    total: int
    skipped: int  # already finished (resumed)
    progress: Progress
    interrupted: bool = False


def _progress_reporter(stream: TextIO, total: int, enabled: bool) -> Any:
    """A rich progress bar on `stream` (ETA, running resolved count) and a line a result;
    a no-op context when disabled."""
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as RichProgress

    bar = RichProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("resolved [green]{task.fields[resolved]}[/] errors {task.fields[errors]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(file=stream),
    )
    bar.add_task("attempts", total=total, resolved=0, errors=0)
    return bar


async def _drive(
    runner: Runner,
    pairs: Sequence[tuple[Task, int]],
    attempt: Callable[[Task, int], Any],
    progress: Progress,
    stream: TextIO | None,
    on_result: ResultHook | None = None,
) -> None:
    with _progress_reporter(stream or sys.stderr, len(pairs), stream is not None) as bar:

        def report(result: AttemptResult, counts: Progress) -> None:
            if bar is None:
                return
            status = result.grade.status
            colour = {"RESOLVED_FULL": "green", "ERROR": "red"}.get(status, "yellow")
            took = datetime.fromisoformat(result.ended_at) - datetime.fromisoformat(
                result.started_at
            )
            bar.console.print(
                f"{result.instance_id} #{result.attempt}: [{colour}]{status}[/] "
                f"(agent: {result.stop_reason}, {result.compute.wall_seconds:.1f}s; "
                f"attempt {took.total_seconds():.0f}s)",
                highlight=False,
            )
            bar.update(bar.task_ids[0], advance=1, resolved=counts.resolved, errors=counts.errors)

        await runner.run(pairs, attempt, progress, report, on_result)


def run_eval(
    dataset: Dataset,
    agent_name: str,
    settings: AgentSettings,
    options: RunOptions,
    run_dir: Path,
    *,
    resume: bool = False,
    stream: TextIO | None = sys.stderr,
    agent_factory: Callable[[AgentSettings], EvalAgent] | None = None,
    scorer: ScorerSettings | None = None,
    ray: RayPool | None = None,
) -> RunSummary:
    """`tercet eval run`: every pending attempt, results saved as they end; with several
    attempts a task, each task's selection once its attempts have all ended (`scorer` picks
    where the regression tests tie). With `ray`, the attempts run as tasks on its cluster
    (`distributed.ray_attempt`; the agent is made on each worker, never here), and a lost
    worker's ERROR result is saved before the attempt is tried again, up to the pool's
    retries. Bad input raises `EvalInputError` before anything runs;
    Ctrl-C raises `KeyboardInterrupt` after saving the run's record (the finished results
    are already in the file)."""
    from tercet.evals.sources import default_cache_dir

    options.check()
    if scorer is not None:
        if options.attempts < 2:
            raise EvalInputError("--scorer chooses among attempts: give --attempts 2 or more")
        scorer.check()
    tasks = dataset.select(options.split, options.instances or None, options.limit)
    if not tasks:
        raise EvalInputError(f"no tasks in the {options.split} split of {dataset.name}")
    entry = agent_entry(agent_name)  # an unknown agent fails before the directory is touched
    run_dir = run_dir.resolve()  # workspaces are shown to agents, whose cwd differs
    directory = RunDirectory(run_dir)
    # Before the agent starts (loading a model takes a while): may the run go here?
    directory.check(run_record(dataset, entry.name, None, options, settings), resume=resume)
    finished = latest_results(directory.results.load(repair=resume)) if resume else {}
    if entry.sees_gold:
        settings = replace(settings, gold_patches={t.instance_id: t.patch for t in tasks})
    settings = replace(settings, trajectories=settings.trajectories or run_dir / "trajectories")
    agent: EvalAgent | None = None
    if ray is None:
        agent = agent_factory(settings) if agent_factory else create_agent(agent_name, settings)
    chooser: Scorer | None = None
    try:
        chooser = scorer.create() if scorer is not None else None
        model = agent.model if agent is not None else settings.model or entry.name
        record = run_record(dataset, entry.name, model, options, settings)
        if scorer is not None:
            record["settings"]["scorer"] = scorer.record()
        if ray is not None:
            record["settings"]["ray"] = {"address": ray.address, "max_retries": ray.max_retries}
        record = directory.open(record, resume=resume)
        directory.save_tasks(tasks)
        selector = Selector(
            run_dir,
            {t.instance_id: t for t in directory.tasks()},
            attempts_per_task(options.attempts, finished.values()),
            finished.values(),
            chooser,
        )
        cache = options.cache or default_cache_dir()
        runner = Runner(dataset, directory, options, cache=cache)
        pairs = runner.pending(tasks, finished)
        summary = RunSummary(run_dir, len(tasks) * options.attempts, 0, Progress(len(pairs)))
        summary.skipped = summary.total - len(pairs)
        session: dict[str, Any] = {"started_at": now(), "pending": len(pairs)}
        record.setdefault("sessions", []).append(session)
        directory.write_record(record)

        async def on_result(result: AttemptResult) -> None:
            try:
                await selector.add(result)
            except Exception as exc:  # the attempt is saved; the catch-up below tries again
                log.warning("selecting for %s failed: %s", result.instance_id, exc)

        def attempt(task: Task, number: int) -> Awaitable[AttemptResult]:
            if agent is not None:
                return runner.agent_attempt(agent, task, number)
            assert ray is not None
            return ray_attempt(
                ray, task, number, specs=dataset.specs, agent_name=entry.name,
                settings=settings, options=options, cache=options.cache,
                on_lost=lambda lost: asyncio.to_thread(directory.results.append, lost),
            )  # fmt: skip

        async def main() -> None:
            try:
                await _drive(runner, pairs, attempt, summary.progress, stream, on_result)
                # Tasks completed in earlier sessions, or whose selection failed above.
                await selector.catch_up()
            finally:
                if agent is not None:
                    await agent.aclose()
                if chooser is not None:
                    await chooser.model.aclose()

        try:
            asyncio.run(main())
        except (KeyboardInterrupt, asyncio.CancelledError):
            summary.interrupted = True
        session.update(
            ended_at=now(), finished=summary.progress.done, interrupted=summary.interrupted
        )
        directory.write_record(record)
    except BaseException:
        # Close the agent if the run never started (its model may hold an engine).
        if agent is not None:
            with contextlib.suppress(Exception):
                asyncio.run(agent.aclose())
        if chooser is not None:
            with contextlib.suppress(Exception):
                asyncio.run(chooser.model.aclose())
        raise
    if summary.interrupted:
        raise KeyboardInterrupt
    return summary


def grade_predictions(
    dataset: Dataset,
    predictions_path: Path,
    options: RunOptions,
    run_dir: Path,
    *,
    resume: bool = False,
    stream: TextIO | None = sys.stderr,
) -> RunSummary:
    """`tercet eval grade`: SWE-bench predictions made elsewhere, graded into a run directory
    (each instance's n-th prediction is its attempt n)."""
    from tercet.evals.sources import default_cache_dir

    options.check()
    predictions = read_jsonl(predictions_path, Prediction)
    if not predictions:
        raise EvalInputError(f"{predictions_path} holds no predictions")
    by_id = {t.instance_id: t for t in dataset.tasks}
    unknown = sorted({p.instance_id for p in predictions} - by_id.keys())
    if unknown:
        raise EvalInputError(
            f"{predictions_path}: instances not in {dataset.name}: {', '.join(unknown[:10])}"
            + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        )
    models = sorted({p.model_name_or_path for p in predictions})
    numbered: list[tuple[Prediction, int]] = []
    counts: dict[str, int] = {}
    for prediction in predictions:
        number = counts.get(prediction.instance_id, 0)
        counts[prediction.instance_id] = number + 1
        numbered.append((prediction, number))
    run_dir = run_dir.resolve()  # workspaces are shown to agents, whose cwd differs
    directory = RunDirectory(run_dir)
    finished = latest_results(directory.results.load(repair=resume)) if resume else {}
    attempts = max(counts.values())
    options = replace(options, attempts=attempts)
    settings = AgentSettings(model=", ".join(models))
    record = run_record(dataset, "predictions", ", ".join(models), options, settings)
    record["settings"]["predictions"] = str(predictions_path)
    record = directory.open(record, resume=resume)
    tasks = [by_id[i] for i in dict.fromkeys(p.instance_id for p in predictions)]
    directory.save_tasks(tasks)
    runner = Runner(dataset, directory, options, cache=options.cache or default_cache_dir())
    todo = [
        (by_id[p.instance_id], n)
        for p, n in numbered
        if (p.instance_id, n) not in finished
        or (options.retry_errors and finished[(p.instance_id, n)].grade.status == "ERROR")
    ]
    patches = {(p.instance_id, n): p for p, n in numbered}
    summary = RunSummary(run_dir, len(numbered), len(numbered) - len(todo), Progress(len(todo)))
    session: dict[str, Any] = {"started_at": now(), "pending": len(todo)}
    record.setdefault("sessions", []).append(session)
    directory.write_record(record)

    async def attempt(task: Task, number: int) -> AttemptResult:
        return await runner.prediction_attempt(patches[(task.instance_id, number)], task, number)

    try:
        asyncio.run(_drive(runner, todo, attempt, summary.progress, stream))
    except (KeyboardInterrupt, asyncio.CancelledError):
        summary.interrupted = True
    session.update(ended_at=now(), finished=summary.progress.done, interrupted=summary.interrupted)
    directory.write_record(record)
    if summary.interrupted:
        raise KeyboardInterrupt
    if attempts > 1:
        select_run(run_dir, again=False)
    return summary


def select_run(
    run_dir: Path, scorer: ScorerSettings | None = None, *, again: bool = True
) -> list[TaskSelection]:
    """`tercet eval select`: choose among each complete task's attempts of a finished run,
    without running an agent (every task again, unless not `again`: those without a current
    selection); the selections made. selections.jsonl is then rewritten, a line a task."""
    directory = RunDirectory(run_dir)
    record = directory.read_record()
    results = list(latest_results(directory.results.load()).values())
    if not results:
        raise EvalInputError(f"{run_dir} holds no results yet")
    attempts = attempts_per_task(record.get("settings", {}).get("attempts"), results)
    if attempts < 2:
        raise EvalInputError(f"{run_dir} has one attempt a task: there is nothing to choose")
    if scorer is not None:
        scorer.check()
    tasks = {t.instance_id: t for t in directory.tasks()}

    async def main() -> list[TaskSelection]:
        chooser = scorer.create() if scorer is not None else None
        try:
            selector = Selector(run_dir, tasks, attempts, results, chooser)
            made = await selector.catch_up(again=again)
            kept = [selector.selections[i] for i in sorted(selector.selections)]
            await asyncio.to_thread(selector.file.rewrite, kept)
            return made
        finally:
            if chooser is not None:
                await chooser.model.aclose()

    return asyncio.run(main())

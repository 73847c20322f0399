"""The task builder (`tercet eval build`): bugs injected into real packages, kept only where the
package's own tests catch them, each one validated, written as SWE-bench instances.

For each package: fetch the pinned sdist, run its suite twice on the clean tree and keep the
tests that passed both times under the same ID (the rest are unstable or broken already), then
try mutants (`mutate.order`) one at a time on a working copy. A mutant is tried first against
the test files that mention its module; if one of those fails, the package must still import,
and the whole suite then says which tests fail: at least one, and every other stable test
passes. The gold patch is the mutant's reverse diff. Validation: the whole run on the buggy
tree is the "no patch" check (every FAIL_TO_PASS test failed in it); the gold patch is then
applied by `git apply`, as a grader would, and the failing tests' files rerun (every one passes;
the tree is then byte for byte the clean tree, whose whole suite passed twice, so every
PASS_TO_PASS test passes too). The problem statement is written from what failed: test names,
the assertion message and a short traceback from the junit report, never from the diff.

A package's finished tasks are kept under the cache, keyed by everything that shapes them, so
a build that was killed resumes with the packages it had finished.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import tercet
from tercet.evals.environments import environment_key, test_environment
from tercet.evals.mutate import FAMILIES, Mutant, code_of, find_mutants, order, source_files
from tercet.evals.packages import PackageSpec, load_specs
from tercet.evals.sources import default_cache_dir, fetch_sdist, unpack
from tercet.evals.task import EvalInputError, Task, read_jsonl, write_jsonl
from tercet.evals.testrun import TestRun, files_of, run_tests
from tercet.sandbox import runner
from tercet.sandbox.config import MIB, ExecutionLimits

log = logging.getLogger(__name__)

DATASETS = Path(__file__).resolve().parent / "datasets"
DEFAULT_DATASET = "pypi-bugs-v1"
BUILD_FORMAT = 1  # bump when what a build keeps changes: old partial results are then redone
PASSING = frozenset({"passed", "xfailed"})  # what counts as a FAIL_TO_PASS test passing
DEV_PERCENT = 20  # about this share of the tasks goes to the dev split
# Directories under an import root that are never the package's code.
NOT_CODE = frozenset(
    {"tests", "test", "testing", "docs", "doc", "examples", "example", "benchmarks", "benchmark",
     "bench", "scripts", "tools", "build", "dist"}
)  # fmt: skip
NOT_MODULES = frozenset({"setup.py", "conftest.py", "noxfile.py", "fabfile.py", "tasks.py"})
STATEMENT_TESTS = 8  # failing tests named in a problem statement
TRACEBACK_LINES = 30  # lines of the first failure's traceback in a problem statement


class BuildError(EvalInputError):
    """A package the builder cannot use (its suite does not run, nothing imports, ...)."""


@dataclass
class PackageReport:
    """What building one package did: for the manifest and the build's log."""

    name: str
    version: str
    licence: str
    filename: str
    sha256: str
    tests: int = 0  # stable passing tests of the clean tree
    unstable: int = 0  # tests whose ID or outcome differed between the two baseline runs
    not_passing: int = 0  # stable tests that failed, errored or were skipped on the clean tree
    suite_seconds: float = 0.0
    candidates: int = 0
    tried: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    seconds: float = 0.0
    sandboxed: bool = True


@dataclass
class BuildResult:
    tasks: list[Task]
    reports: list[PackageReport]
    seconds: float
    failed: list[str] = field(default_factory=list)  # packages skipped (a BuildError each)


# ------------------------------------------------------------------------------------ build


def build(
    specs: Mapping[str, PackageSpec] | Iterable[PackageSpec],
    out_dir: Path,
    cache: Path,
    per_package: int = 16,
    seed: int = 0,
    *,
    families: Sequence[str] = FAMILIES,
    max_tries: int | None = None,
    created_at: str | None = None,
    dataset: str | None = None,
    finished: Path | None = None,
    progress: Callable[[str], None] = log.info,
) -> BuildResult:
    """Build up to `per_package` validated tasks from each package and write `tasks.jsonl` and
    `manifest.json` to `out_dir`. `max_tries` bounds the mutants run per package (default:
    eight per wanted task). Finished packages are kept under `finished` (default: the cache's
    builds/), which is what a killed build resumes from."""
    started = time.monotonic()
    cache = cache.resolve()  # git reads only absolute ceiling directories (see `_try`)
    chosen = list(specs.values()) if isinstance(specs, Mapping) else list(specs)
    if not chosen:
        raise EvalInputError("no packages to build from")
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise EvalInputError(f"unknown mutation families: {', '.join(sorted(unknown))}")
    created = created_at or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    tasks: list[Task] = []
    reports: list[PackageReport] = []
    failed: list[str] = []
    for spec in chosen:
        key = _partial_key(spec, per_package, seed, families, max_tries)
        done = (finished or cache / "builds") / f"{spec.name}-{key}"
        if (done / "report.json").is_file():
            report = PackageReport(**json.loads((done / "report.json").read_text()))
            package_tasks = read_jsonl(done / "tasks.jsonl", Task)
            progress(f"{spec.name}: {len(package_tasks)} tasks, finished before (resumed)")
        else:
            try:
                package_tasks, report = build_package(
                    spec,
                    cache,
                    per_package=per_package,
                    seed=seed,
                    families=families,
                    max_tries=max_tries if max_tries is not None else 8 * per_package,
                    created_at=created,
                    progress=progress,
                )
            except BuildError as exc:  # one package's trouble does not lose the others
                progress(f"{spec.name}: skipped: {exc}")
                failed.append(spec.name)
                continue
            done.mkdir(parents=True, exist_ok=True)
            write_jsonl(done / "tasks.jsonl", package_tasks)
            (done / "report.json").write_text(json.dumps(asdict(report), indent=1))
        tasks.extend(package_tasks)
        reports.append(report)
    if not reports:
        raise BuildError(f"no package could be built from: {', '.join(failed)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "tasks.jsonl", tasks)
    seconds = time.monotonic() - started
    manifest = make_manifest(
        tasks, reports, dataset=dataset or out_dir.name, seed=seed, per_package=per_package
    )
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return BuildResult(tasks, reports, seconds, failed)


def build_package(
    spec: PackageSpec,
    cache: Path,
    *,
    per_package: int,
    seed: int,
    families: Sequence[str] = FAMILIES,
    max_tries: int,
    created_at: str,
    progress: Callable[[str], None] = log.info,
) -> tuple[list[Task], PackageReport]:
    """The validated tasks of one package, with the report of how they were found."""
    started = time.monotonic()
    report = PackageReport(spec.name, spec.version, spec.licence, spec.filename, spec.sha256)
    sdist = fetch_sdist(spec, cache)
    environment = test_environment(spec, cache)
    work = cache / "work"
    work.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=work, prefix=f"{spec.name}-"))
    try:
        tree = unpack(sdist, scratch / "tree").resolve()
        builder = _PackageBuilder(spec, tree, environment, report, progress)
        builder.baseline()
        modules = builder.importable_modules()
        mutants = builder.candidates(modules, families)
        tasks = builder.mutate(
            order(mutants, seed),
            modules=modules,
            wanted=per_package,
            max_tries=max_tries,
            created_at=created_at,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report.seconds = round(time.monotonic() - started, 1)
    progress(
        f"{spec.name}: {report.kept} tasks from {report.tried} mutants tried "
        f"({report.candidates} candidates) in {report.seconds:.0f} s; dropped {report.dropped}"
    )
    return tasks, report


@dataclass
class _Outcome:
    failing: list[str]  # stable passing tests that no longer pass
    run: TestRun


class _PackageBuilder:
    """The state of one package's build: its working tree (kept clean between mutants), the
    baseline, and the counts for the report."""

    def __init__(
        self,
        spec: PackageSpec,
        tree: Path,
        environment: Path,
        report: PackageReport,
        progress: Callable[[str], None],
    ) -> None:
        self.spec = spec
        self.tree = tree
        self.environment = environment
        self.report = report
        self.progress = progress
        self.passing: list[str] = []
        self.test_files: list[str] = []
        self.timeout_s = 600.0
        self.sources: dict[str, str] = {}
        self.codes: dict[str, str | None] = {}

    # -- the clean tree ---------------------------------------------------------------------

    def baseline(self) -> None:
        """Run the suite twice; keep what passed both times under the same ID."""
        runs = [run_tests(self.tree, self.spec, self.environment) for _ in range(2)]
        for run in runs:
            if run.error or run.problem or not run.outcomes:
                why = run.error or run.problem or "no tests ran"
                raise BuildError(f"{self.spec.name}: the clean tree's tests did not run: {why}")
        first, second = runs[0].outcomes, runs[1].outcomes
        stable = {test: outcome for test, outcome in first.items() if second.get(test) == outcome}
        self.passing = sorted(test for test, outcome in stable.items() if outcome == "passed")
        if not self.passing:
            raise BuildError(f"{self.spec.name}: no test passes on the clean tree")
        self.test_files = files_of(self.passing)
        self.report.tests = len(self.passing)
        self.report.unstable = len(set(first) | set(second)) - len(stable)
        self.report.not_passing = len(stable) - len(self.passing)
        self.report.suite_seconds = round(max(run.seconds for run in runs), 2)
        self.report.sandboxed = all(run.sandboxed for run in runs)
        # A mutant may make the suite loop forever: allow the clean time thrice, and then some.
        self.timeout_s = 3 * self.report.suite_seconds + 30
        self.progress(
            f"{self.spec.name} {self.spec.version}: {len(self.passing)} stable passing tests "
            f"({self.report.unstable} unstable, {self.report.not_passing} not passing dropped), "
            f"suite {self.report.suite_seconds:.1f} s"
        )

    def importable_modules(self) -> list[str]:
        """The top-level modules under the import root that import on the clean tree."""
        root = self.tree / self.spec.import_root
        names: list[str] = []
        for path in sorted(root.iterdir()):
            if path.name.startswith((".", "_")) and path.name != "__init__.py":
                continue
            if path.is_dir() and (path / "__init__.py").is_file() and path.name not in NOT_CODE:
                names.append(path.name)
            elif path.suffix == ".py" and path.name not in NOT_MODULES:
                relative = path.relative_to(self.tree).as_posix()
                if not self.spec.is_test_file(relative):
                    names.append(path.stem)
        importable = [name for name in names if self.imports([name])]
        if not importable:
            raise BuildError(f"{self.spec.name}: none of {names or 'its modules'} imports")
        return importable

    def imports(self, modules: Sequence[str]) -> bool:
        """Whether the modules import from the working tree, in the sandbox."""
        root = runner.WORKSPACE
        if self.spec.import_root not in ("", "."):
            root = f"{root}/{self.spec.import_root}"
        code = "; ".join(f"import {name}" for name in modules)
        argv = ["env", f"PYTHONPATH={root}", "PYTHONDONTWRITEBYTECODE=1", "python", "-c", code]
        limits = ExecutionLimits(
            wall_seconds=60, cpu_seconds=60, memory_bytes=2048 * MIB, processes=64
        )
        if runner.unavailable_reason() is None:
            result = runner.run(argv, self.tree, limits, runtime=self.environment)
            return result.return_code == 0
        local = [str(self.environment / "bin" / "python"), "-c", code]
        python_path = str(self.tree / self.spec.import_root)
        done = subprocess.run(
            local,
            cwd=self.tree,
            env={"PYTHONPATH": python_path, "PYTHONDONTWRITEBYTECODE": "1"},
            capture_output=True,
            timeout=60,
            check=False,
        )
        return done.returncode == 0

    def candidates(self, modules: Sequence[str], families: Sequence[str]) -> list[Mutant]:
        """Every candidate mutant of the package's source files."""
        prefix = "" if self.spec.import_root in ("", ".") else f"{self.spec.import_root}/"
        packages = []
        for name in modules:
            as_dir = f"{prefix}{name}"
            packages.append(as_dir if (self.tree / as_dir).is_dir() else f"{as_dir}.py")
        found: list[Mutant] = []
        for file in source_files(self.tree, packages, self.spec.is_test_file):
            try:
                text = (self.tree / file).read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                continue
            self.sources[file] = text
            found.extend(find_mutants(text, file, families))
        self.report.candidates = len(found)
        return found

    # -- mutants ----------------------------------------------------------------------------

    def mutate(
        self,
        mutants: Sequence[Mutant],
        *,
        modules: Sequence[str],
        wanted: int,
        max_tries: int,
        created_at: str,
    ) -> list[Task]:
        tasks: list[Task] = []
        used_functions: set[tuple[str, str]] = set()
        per_family: Counter[str] = Counter()
        family_cap = max(2, math.ceil(2 * wanted / len(FAMILIES)))
        dropped: Counter[str] = Counter()
        related = self._related_test_files()
        for mutant in mutants:
            if len(tasks) >= wanted or self.report.tried >= max_tries:
                break
            where = (mutant.file, mutant.function)
            if where in used_functions or per_family[mutant.family] >= family_cap:
                continue
            source = self.sources[mutant.file]
            if mutant.file not in self.codes:
                self.codes[mutant.file] = code_of(source)
            if not mutant.changes_code(source, self.codes[mutant.file]):
                continue
            self.report.tried += 1
            target = self.tree / mutant.file
            target.write_bytes(mutant.apply(source).encode("utf-8"))
            try:
                task, why = self._try(mutant, source, related[mutant.file], modules, created_at)
            finally:
                target.write_bytes(source.encode("utf-8"))
            log.debug("%s: %s", mutant.description, why or "kept")
            if task is None:
                dropped[why or "?"] += 1
                continue
            number = len(tasks) + 1
            task = task.model_copy(
                update={
                    "instance_id": instance_id(self.spec.name, number),
                    "split": split_of(instance_id(self.spec.name, number)),
                }
            )
            tasks.append(task)
            used_functions.add(where)
            per_family[mutant.family] += 1
            self.progress(
                f"{self.spec.name}: kept {task.instance_id} ({mutant.family}, "
                f"{len(task.FAIL_TO_PASS)} failing) after {self.report.tried} tried"
            )
        self.report.kept = len(tasks)
        self.report.dropped = dict(sorted(dropped.items()))
        return tasks

    def _try(
        self,
        mutant: Mutant,
        source: str,
        related: list[str],
        modules: Sequence[str],
        created_at: str,
    ) -> tuple[Task | None, str | None]:
        """The task this mutant makes, or None and why not. The tree holds the mutant."""
        whole = related == self.test_files
        first = self._failing(related)
        if isinstance(first, str):
            return None, first
        if not first.failing:
            return None, "no test fails"
        if not self.imports(modules):
            return None, "the package does not import"
        full = first if whole else self._failing(None)
        if isinstance(full, str):
            return None, full
        failing = full.failing
        if not failing:
            return None, "no test fails"
        if len(failing) * 2 > len(self.passing):
            return None, "more than half the tests fail"
        # Validation 1, without a fix: every FAIL_TO_PASS test failed in the whole run above
        # (`failing` is exactly the stable tests that did not pass there).
        # Validation 2: the gold patch, applied as a grader would, makes them pass.
        gold = mutant.fix(source)
        applied = subprocess.run(
            ["git", "apply", "--whitespace=nowarn", "-"],
            cwd=self.tree,
            input=gold.encode("utf-8"),
            capture_output=True,
            check=False,
            # The tree may sit inside another git repository (a cache under a checkout): git
            # would then read the paths as that repository's and skip them, silently.
            env={**os.environ, "GIT_CEILING_DIRECTORIES": str(self.tree.parent)},
        )
        if applied.returncode != 0:
            return None, f"validation: the gold patch does not apply: {applied.stderr!r}"
        if (self.tree / mutant.file).read_bytes() != source.encode("utf-8"):
            return None, "validation: the gold patch does not restore the clean file"
        fixed = self._failing(failing)
        if (
            isinstance(fixed, str)
            or fixed.failing
            or any(fixed.run.outcomes.get(test) not in PASSING for test in failing)
        ):
            return None, "validation: the gold patch leaves tests failing"
        statement = problem_statement(self.spec, failing, full.run)
        task = Task(
            instance_id="",
            repo=f"pypi/{self.spec.name}",
            version=self.spec.version,
            source=self.spec.source,
            patch=gold,
            problem_statement=statement,
            created_at=created_at,
            FAIL_TO_PASS=failing,
            PASS_TO_PASS=[test for test in self.passing if test not in set(failing)],
            mutation=mutant.family,
        )
        return task, None

    def _failing(self, tests: Sequence[str] | None) -> _Outcome | str:
        """Run the files holding `tests` (None: the whole suite, as the spec says); which stable
        passing tests of what ran did not pass, or why the run says nothing."""
        run = run_tests(self.tree, self.spec, self.environment, tests, timeout_s=self.timeout_s)
        if run.error:
            raise BuildError(f"{self.spec.name}: the harness failed: {run.error}")
        if run.timed_out:
            return "the tests time out"
        if run.problem and not run.outcomes:
            return f"the tests did not report: {run.problem}"
        files = set(files_of(tests)) if tests is not None else set(self.test_files)
        covered = [test for test in self.passing if test.split("::", 1)[0] in files]
        failing = [test for test in covered if run.outcomes.get(test) != "passed"]
        return _Outcome(failing, run)

    def _related_test_files(self) -> dict[str, list[str]]:
        """For each source file, the test files that name its module (all of them when none
        does, or when the module is the package itself)."""
        texts = {}
        for file in self.test_files:
            try:
                texts[file] = (self.tree / file).read_text(encoding="utf-8", errors="replace")
            except OSError:
                texts[file] = ""
        related: dict[str, list[str]] = {}
        for file in self.sources:
            path = Path(file)
            stem = path.parent.name if path.stem == "__init__" else path.stem
            if path.parent == Path(self.spec.import_root) or stem in {"__init__", ""}:
                related[file] = self.test_files  # a one-module package: all its tests
                continue
            word = re.compile(rf"\b{re.escape(stem)}\b")
            hits = [test for test in self.test_files if word.search(texts[test])]
            related[file] = hits or self.test_files
        return related


# ------------------------------------------------------------------------------ the records


def instance_id(package: str, number: int) -> str:
    """SWE-bench's owner__repo-number, the PyPI name standing for both."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", package)
    return f"{name}__{name}-{number:04d}"


def split_of(instance: str) -> str:
    """`dev` for about DEV_PERCENT of the tasks, fixed by a hash of the id; else `test`."""
    digest = int(hashlib.sha256(instance.encode()).hexdigest(), 16)
    return "dev" if digest % 100 < DEV_PERCENT else "test"


def problem_statement(spec: PackageSpec, failing: Sequence[str], run: TestRun) -> str:
    """A user's bug report written from what failed: which tests, the first failure's message
    and a short traceback. Never reads the diff."""
    count = len(failing)
    shown = "\n".join(f"    {test}" for test in failing[:STATEMENT_TESTS])
    if count > STATEMENT_TESTS:
        shown += f"\n    ... and {count - STATEMENT_TESTS} more"
    first = next((test for test in failing if run.junit_failures.get(test)), None)
    parts = [
        f"{spec.name} {spec.version}: "
        + (
            "one of the package's own tests fails"
            if count == 1
            else f"{count} of the package's own tests fail"
        ),
        "",
        f"Running the test suite that ships with {spec.name} {spec.version}, "
        f"{'this test fails' if count == 1 else f'these {count} tests fail'}; "
        "every other test passes:",
        "",
        shown,
    ]
    if first is not None:
        parts += [
            "",
            f"The failure{'' if count == 1 else ' of the first one'} ({first}):",
            "",
            "```",
            _short_traceback(run.junit_failures[first]),
            "```",
        ]
    parts += [
        "",
        "The tests look right to me: it is the library's behaviour that is wrong. "
        f"Please fix {spec.name} so that {'it passes' if count == 1 else 'they pass'} again, "
        "without changing the tests.",
    ]
    return "\n".join(parts) + "\n"


def portable_paths(text: str) -> str:
    """`text` with the building machine's interpreter prefix (as in "/root/.pyenv/versions/
    3.11.7/lib/python3.11/json/decoder.py") written as a usual one ("/usr/lib/...")."""
    prefix = sys.base_prefix.rstrip("/")
    return text if prefix in ("", "/usr") else text.replace(prefix + "/lib/", "/usr/lib/")


def _short_traceback(text: str) -> str:
    lines = [line.rstrip() for line in portable_paths(text).strip().splitlines()]
    if len(lines) <= TRACEBACK_LINES:
        return "\n".join(lines)
    head = lines[:8]
    tail = lines[-(TRACEBACK_LINES - 9) :]
    return "\n".join([*head, "...", *tail])


def make_manifest(
    tasks: Sequence[Task],
    reports: Sequence[PackageReport],
    *,
    dataset: str,
    seed: int,
    per_package: int,
) -> dict[str, object]:
    """The dataset's manifest: each package (version, licence, sha256) and the task counts."""

    def counts(chosen: Iterable[Task]) -> dict[str, object]:
        picked = list(chosen)
        return {
            "tasks": len(picked),
            "by_family": dict(sorted(Counter(t.mutation for t in picked).items())),
            "by_split": dict(sorted(Counter(t.split for t in picked).items())),
            "by_failing_tests": dict(sorted(Counter(_difficulty(t) for t in picked).items())),
        }

    packages = []
    for report in reports:
        mine = [t for t in tasks if t.source.name == report.name]
        packages.append(
            {
                "package": report.name,
                "version": report.version,
                "licence": report.licence,
                "filename": report.filename,
                "sha256": report.sha256,
                "stable_tests": report.tests,
                "mutants_tried": report.tried,
                "build_seconds": report.seconds,
                **counts(mine),
            }
        )
    return {
        "version": dataset,
        "harness_version": tercet.__version__,
        "build_format": BUILD_FORMAT,
        "seed": seed,
        "per_package": per_package,
        "totals": {
            **counts(tasks),
            "packages": len(reports),
            "mutants_tried": sum(r.tried for r in reports),
        },
        "packages": packages,
    }


def _difficulty(task: Task) -> str:
    n = task.failing_count
    return "1" if n == 1 else "2-3" if n <= 3 else "4-10" if n <= 10 else ">10"


def _partial_key(
    spec: PackageSpec, per_package: int, seed: int, families: Sequence[str], max_tries: int | None
) -> str:
    identity = json.dumps(
        [
            BUILD_FORMAT,
            spec.model_dump(),
            environment_key(spec),
            per_package,
            seed,
            sorted(families),
            max_tries,
        ],
        sort_keys=True,
    )
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------- the CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`tercet eval build`'s options."""
    parser.add_argument(
        "--packages",
        type=Path,
        default=DATASETS / DEFAULT_DATASET / "packages.toml",
        help="the package specs (TOML; default: the bundled dataset's)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(DEFAULT_DATASET),
        help="where tasks.jsonl and manifest.json go (default ./%(default)s)",
    )
    parser.add_argument("--cache", type=Path, help="sdists, environments, partial builds")
    parser.add_argument(
        "--only", action="append", metavar="PACKAGE", help="build only these packages"
    )
    parser.add_argument("--per-package", type=int, default=16, help="tasks wanted per package")
    parser.add_argument("--seed", type=int, default=0, help="orders the mutants tried")
    parser.add_argument("--max-tries", type=int, help="mutants run per package at most")
    parser.add_argument(
        "--families",
        default=",".join(FAMILIES),
        help="mutation families, comma-separated (default: all)",
    )


def main(args: argparse.Namespace) -> int:
    """Run the build the options describe; print its counts."""
    specs = load_specs(args.packages)
    if args.only:
        missing = sorted(set(args.only) - set(specs))
        if missing:
            raise EvalInputError(f"no package spec for {', '.join(missing)} in {args.packages}")
        specs = {name: specs[name] for name in args.only}
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per download is noise here
    result = build(
        specs,
        args.out,
        args.cache or default_cache_dir(),
        per_package=args.per_package,
        seed=args.seed,
        families=[f.strip() for f in args.families.split(",") if f.strip()],
        max_tries=args.max_tries,
        progress=print,
    )
    for report in result.reports:
        print(
            f"{report.name:14} {report.kept:3} tasks, {report.tried:4} mutants tried, "
            f"{report.tests:5} tests, {report.seconds:6.0f} s"
        )
    print(
        f"{len(result.tasks)} tasks from {len(result.reports)} packages in "
        f"{result.seconds:.0f} s -> {args.out}"
    )
    if result.failed:
        print(f"skipped (see above): {', '.join(result.failed)}")
        return 1
    return 0

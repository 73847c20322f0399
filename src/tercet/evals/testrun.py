"""Running a package's tests on a tree, in the sandbox, and reading what each test did.

pytest runs under bubblewrap (no network, the package's test environment as the runtime,
the tree as the workspace) with plugin autoload off, and writes a junit XML report
(xunit1, which names each test's file). Outcomes come from that report, never from pytest's
console text: a test ID holding spaces or brackets stays one ID. The environment's small
plugin (`environments.ID_PLUGIN`) writes each test's exact node ID into the report; without
it, the ID is rebuilt from file + classname + name.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

# Re-exported: the grader and the tests read them here.
from tercet.attempts.junit import OUTCOMES as OUTCOMES
from tercet.attempts.junit import node_id as node_id
from tercet.attempts.junit import parse_junit as parse_junit
from tercet.attempts.junit import parse_junit_report as parse_junit_report
from tercet.evals.environments import ID_PLUGIN
from tercet.evals.packages import PackageSpec
from tercet.sandbox import runner
from tercet.sandbox.config import MIB, ExecutionLimits

log = logging.getLogger(__name__)

OUTPUT_TAIL = 8000  # characters of pytest's output kept
PROBE_TIMEOUT_S = 60.0
# pytest's own exit codes: tests failed (1), interrupted (2), internal error (3), usage or
# conftest error (4), nothing collected (5). Anything else did not come from pytest.
PYTEST_EXIT_CODES = frozenset(range(6))


@dataclass(frozen=True)
class TestRun:
    """What one pytest run did.

    `outcomes` maps each reported node ID to one of `OUTCOMES`; a test missing from it did not
    run. `problem` says why the report is missing or short (pytest stopped early, timed out,
    was killed), a fault of the code under test as much as anything; `error` is set only
    when the harness itself failed (the sandbox or the environment), and the run says
    nothing about the code then.
    """

    __test__ = False  # not a pytest test class

    outcomes: dict[str, str]
    output: str
    seconds: float
    sandboxed: bool
    junit_failures: dict[str, str] = field(default_factory=dict)
    return_code: int = 0
    timed_out: bool = False
    problem: str | None = None
    error: str | None = None


def run_tests(
    tree: Path,
    spec: PackageSpec,
    environment: Path,
    tests: Sequence[str] | None = None,
    *,
    timeout_s: float = 600,
) -> TestRun:
    """Run `spec`'s tests on `tree` (the package's root) with `environment`'s pytest.

    With `tests` (node IDs), the files holding them are run, whole (as SWE-bench runs a
    task's test files; node IDs given to pytest one by one break on IDs holding "::"), and
    the outcomes cover every test of those files; files not in the tree are left out (said
    in `problem`). Runs in the sandbox; where the sandbox is unavailable, it runs directly
    and says so (a warning, `sandboxed=False`).
    """
    tree = tree.resolve()
    python = environment / "bin" / "python"
    if not python.exists():
        return TestRun({}, "", 0.0, False, error=f"no test environment at {environment}")
    paths = list(spec.test_paths)
    absent: list[str] = []
    if tests is not None:
        paths = [path for path in files_of(tests) if (tree / path).exists()]
        absent = [path for path in files_of(tests) if path not in paths]
        if not paths:
            missing = ", ".join(absent) or "none named"
            return TestRun({}, "", 0.0, False, problem=f"no test files to run ({missing})")
    report_name = f".tercet-junit-{secrets.token_hex(6)}.xml"
    report = tree / report_name
    reason = runner.unavailable_reason()
    sandboxed = reason is None
    if not sandboxed:
        log.warning("tests run outside the sandbox: %s", reason)
    started = time.monotonic()
    try:
        return_code, timed_out, output, killed = _execute(
            lambda root: pytest_argv(spec, environment, paths, root, report_name),
            tree,
            environment,
            timeout_s,
            sandboxed,
        )
        seconds = time.monotonic() - started
        xml = report.read_bytes() if report.exists() else None
    finally:
        report.unlink(missing_ok=True)
    tail = output[-OUTPUT_TAIL:]
    if not sandboxed:
        tail = f"[not sandboxed: {reason}]\n{tail}"
    run = TestRun({}, tail, seconds, sandboxed, return_code=return_code, timed_out=timed_out)
    if xml is not None:
        try:
            outcomes, failures = parse_junit_report(xml)
        except ElementTree.ParseError as exc:
            return replace(run, problem=f"pytest's junit report is not valid XML: {exc}")
        run = replace(run, outcomes=outcomes, junit_failures=failures)
    if absent:
        run = replace(run, problem=f"test files not in the tree: {', '.join(absent)}")
    if timed_out:
        return replace(run, problem=f"the tests ran past {timeout_s:.0f} s and were stopped")
    if killed is not None:
        return replace(run, problem=killed)
    if xml is None:
        # The code under test can stop pytest early (a conftest that fails to import it);
        # so can a sandbox or an environment that does not work, which says nothing of the
        # code: pytest starting alone tells them apart.
        broken = _broken_environment(environment, sandboxed)
        if return_code not in PYTEST_EXIT_CODES or broken is not None:
            why = broken or f"exit {return_code}: {tail[-2000:]}"
            return replace(run, error=f"pytest did not run: {why}")
        return replace(
            run, problem=f"pytest stopped (exit {return_code}) before writing its report"
        )
    return run


def _broken_environment(environment: Path, sandboxed: bool) -> str | None:
    """Why `environment`'s pytest cannot start at all (where the tests run), or None."""
    with tempfile.TemporaryDirectory(prefix="tercet-probe-") as empty:
        return_code, _, output, _ = _execute(
            lambda _: ["python", "-m", "pytest", "--version"],
            Path(empty),
            environment,
            PROBE_TIMEOUT_S,
            sandboxed,
        )
    if return_code == 0:
        return None
    return f"`python -m pytest --version` failed (exit {return_code}): {output[-2000:]}"


def _execute(
    argv_at: Callable[[str], list[str]],
    tree: Path,
    environment: Path,
    timeout_s: float,
    sandboxed: bool,
) -> tuple[int, bool, str, str | None]:
    """Run `argv_at(root)` in `tree` (seen by the command at `root`): return code, timed out,
    output, and why the sandbox killed it (None if it did not)."""
    if sandboxed:
        result = runner.run(
            argv_at(runner.WORKSPACE), tree, _limits(timeout_s), runtime=environment
        )
        output = result.stdout + result.stderr
        return result.return_code, result.timed_out, output, _killed_reason(result)
    return_code, timed_out, output = _run_directly(argv_at(str(tree)), tree, environment, timeout_s)
    return return_code, timed_out, output, None


def pytest_argv(
    spec: PackageSpec,
    environment: Path,
    paths: Sequence[str],
    root: str,
    report_name: str,
) -> list[str]:
    """The command that runs the tests under `paths` (files or directories relative to
    `root`, the package's root as the command sees it) and writes the junit report to
    `root/report_name`; environment variables are set through `env(1)`, as the sandbox
    starts from a cleared environment."""
    python_path = root if spec.import_root in ("", ".") else f"{root}/{spec.import_root}"
    variables = {
        **spec.env,
        "PYTHONPATH": python_path,
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
        "PYTHONDONTWRITEBYTECODE": "1",  # leaves no __pycache__ in the tree
    }
    plugins = [ID_PLUGIN] if _has_id_plugin(environment) else []
    plugins += spec.plugins
    return [
        "env",
        *(f"{name}={value}" for name, value in variables.items()),
        "python",
        "-m",
        "pytest",
        f"--rootdir={root}",
        *(arg for plugin in plugins for arg in ("-p", plugin)),
        "-p",
        "no:cacheprovider",
        f"--junitxml={root}/{report_name}",
        "-o",
        "junit_family=xunit1",
        "--tb=short",
        *spec.pytest_args,
        *paths,
    ]


def files_of(tests: Sequence[str]) -> list[str]:
    """The files holding the tests `tests` names (node IDs), in first-seen order."""
    return list(dict.fromkeys(test.split("::", 1)[0] for test in tests))


def _has_id_plugin(environment: Path) -> bool:
    return any(environment.glob(f"lib/python*/site-packages/{ID_PLUGIN}.py"))


def _limits(timeout_s: float) -> ExecutionLimits:
    return ExecutionLimits(
        wall_seconds=timeout_s,
        cpu_seconds=int(timeout_s) + 60,  # tests in threads may use more CPU than wall time
        memory_bytes=4096 * MIB,
        total_memory_bytes=4096 * MIB,
        processes=256,
        tmp_bytes=512 * MIB,
        output_bytes=4 * MIB,  # the report is a file; this is only pytest's console
    )


def _killed_reason(result: runner.ExecResult) -> str | None:
    if result.over_memory:
        return "the tests used more memory than allowed and were stopped"
    if result.too_many_processes:
        return "the tests started too many processes and were stopped"
    if result.over_quota:
        return "the tests wrote too much and were stopped"
    return None


def _run_directly(
    argv: list[str], tree: Path, environment: Path, timeout_s: float
) -> tuple[int, bool, str]:
    """`argv` without the sandbox: the environment's python first on PATH, a clean env."""
    path = f"{environment / 'bin'}:/usr/local/bin:/usr/bin:/bin"
    env = {"PATH": path, "HOME": str(tree), "LANG": "C.UTF-8"}
    process = subprocess.Popen(
        argv,
        cwd=tree,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        stdout, _ = process.communicate(timeout=timeout_s)
        return process.returncode, False, stdout.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, _ = process.communicate()
        return process.returncode, True, stdout.decode("utf-8", "replace")

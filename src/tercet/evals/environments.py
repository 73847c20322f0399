"""The environment a package's tests run in: a virtual environment holding pytest and the
package's pinned test dependencies, never the package itself (the tree under test goes on
PYTHONPATH, so one environment serves every task of a package and a bug in the package can
not break it). Built once per set of requirements under the cache, in a temporary directory
renamed into place, so a build that was killed is redone rather than half used."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tercet.evals.packages import PackageSpec
from tercet.evals.task import EvalInputError

# pytest and every package it needs, pinned (the environment is installed without resolving).
BASE_REQUIREMENTS = (
    "pytest==9.2.0",
    "iniconfig==2.3.1",
    "packaging==26.4",
    "pluggy==1.7.0",
    "pygments==2.21.0",
)
ID_PLUGIN = "tercet_pytest_ids"  # the module `-p` loads; see `ID_PLUGIN_SOURCE`
# Puts each test's exact node ID (and whether it passed unexpectedly, which junit reports as
# a pass) into the junit XML as properties, so IDs are never rebuilt from file + class + name.
ID_PLUGIN_SOURCE = '''\
"""tercet's evaluation harness: each test's node ID and xpass in the junit XML."""

import pytest


def pytest_itemcollected(item):
    item.user_properties.append(("nodeid", item.nodeid))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" and report.passed and hasattr(report, "wasxfail"):
        item.user_properties.append(("outcome", "xpassed"))
    return report
'''
BUILD_TIMEOUT_S = 900.0


class EnvironmentBuildError(EvalInputError):
    """The test environment could not be built (pip's message says why)."""


def requirements(spec: PackageSpec) -> list[str]:
    """Everything installed into the package's test environment."""
    return [*BASE_REQUIREMENTS, *spec.test_deps]


def environment_key(spec: PackageSpec) -> str:
    """What the environment depends on, hashed: the interpreter, requirements and plugin."""
    identity = json.dumps(
        [sys.version, sorted(requirements(spec)), ID_PLUGIN_SOURCE], separators=(",", ":")
    )
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def test_environment(spec: PackageSpec, cache: Path) -> Path:
    """The virtual environment for `spec`'s tests (built if missing); its `bin/python` runs
    pytest with the `ID_PLUGIN` available."""
    envs = cache / "envs"
    target = envs / f"{spec.name}-{environment_key(spec)}"
    if (target / "bin" / "python").exists():
        return target
    envs.mkdir(parents=True, exist_ok=True)
    _sweep_killed_builds(envs)
    building = Path(tempfile.mkdtemp(dir=envs, prefix=f".building-{spec.name}-"))
    try:
        _build(building, requirements(spec))
        try:
            building.rename(target)
        except OSError:
            if not (target / "bin" / "python").exists():  # not another build's win
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target


# Named as the plan's interface has it; not a test for pytest to collect where it is imported.
test_environment.__test__ = False  # type: ignore[attr-defined]


def _sweep_killed_builds(envs: Path) -> None:
    """Remove what builds killed long ago left (older than any build may take)."""
    for leftover in envs.glob(".building-*"):
        with contextlib.suppress(OSError):
            if time.time() - leftover.stat().st_mtime > 2 * BUILD_TIMEOUT_S:
                shutil.rmtree(leftover, ignore_errors=True)


def _build(directory: Path, wanted: list[str]) -> None:
    # Made from the base interpreter (not a venv of a venv). pip comes from this interpreter
    # where it has one (`pip --python`), which spares ensurepip's seconds.
    python = directory / "bin" / "python"
    if importlib.util.find_spec("pip") is not None:
        venv_options = ["--without-pip"]
        pip = [sys.executable, "-m", "pip", "--python", str(python)]
    else:
        venv_options, pip = [], [str(python), "-m", "pip"]
    _check([sys.executable, "-m", "venv", "--clear", *venv_options, str(directory)], "venv")
    _check(
        [
            *pip, "install", "--no-deps", "--no-input", "--disable-pip-version-check",
            "--quiet", *wanted,
        ],
        "pip install",
    )  # fmt: skip
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = directory / "lib" / version / "site-packages"
    (site / f"{ID_PLUGIN}.py").write_text(ID_PLUGIN_SOURCE, encoding="utf-8")


def _check(command: list[str], what: str) -> None:
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise EnvironmentBuildError(f"{what} took over {BUILD_TIMEOUT_S:.0f} s") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-2000:]
        raise EnvironmentBuildError(f"{what} failed (exit {done.returncode}): {tail}")

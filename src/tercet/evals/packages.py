"""What the harness knows about each source package, as data: one TOML file per dataset.

Each top-level table is a package, named as on PyPI:

    [xmltodict]
    version = "1.0.4"
    filename = "xmltodict-1.0.4.tar.gz"
    sha256 = "6d94c9f8..."
    licence = "MIT"
    test_paths = ["tests"]            # what pytest is given, relative to the package's root
    test_deps = ["freezegun==1.5.1"]  # pinned, every one (installed without their dependencies)
    plugins = []                      # pytest plugins to load (`-p NAME`; autoload is off)
    pytest_args = ["-o", "addopts="]  # more pytest options (here: drop the package's addopts)
    import_root = "."                 # "src" for a src layout: what goes on PYTHONPATH
    env = { TZ = "UTC" }              # environment for the test run
    test_files = [...]                # globs of test files and test configuration (default below)

Test files (`test_files`) are what the grader restores from the pristine tree and what a
patch may not count on changing: tests, conftest.py and the files that configure pytest.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tercet.evals.task import EvalInputError, PackageSource

# Tests and test configuration, wherever a package keeps them. pyproject.toml and setup.cfg
# are whole files here (they hold [tool.pytest] / [tool:pytest]); the package is never
# installed from them, so restoring them changes nothing else.
DEFAULT_TEST_FILES = (
    "**/tests/**",
    "**/test/**",
    "**/test_*.py",
    "**/*_test.py",
    "**/conftest.py",
    "pytest.ini",
    ".pytest.ini",
    "tox.ini",
    "setup.cfg",
    "pyproject.toml",
)
_PINNED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?==[A-Za-z0-9.+!_-]+$")


class PackageSpec(BaseModel):
    """One package the harness builds tasks from: its pinned sdist and how to run its tests."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: str
    filename: str
    sha256: str
    licence: str
    import_root: str = "."
    test_paths: list[str] = Field(default_factory=lambda: ["tests"])
    test_deps: list[str] = Field(default_factory=list)
    plugins: list[str] = Field(default_factory=list)
    pytest_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    test_files: list[str] = Field(default_factory=lambda: list(DEFAULT_TEST_FILES))

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("must be 64 lowercase hex digits")
        return value

    @field_validator("test_deps")
    @classmethod
    def _pinned(cls, value: list[str]) -> list[str]:
        for requirement in value:
            if not _PINNED.match(requirement):
                raise ValueError(f"{requirement!r} is not pinned as NAME==VERSION")
        return value

    @field_validator("import_root", "test_paths")
    @classmethod
    def _relative(cls, value: str | list[str]) -> str | list[str]:
        for path in [value] if isinstance(value, str) else value:
            if Path(path).is_absolute() or ".." in Path(path).parts:
                raise ValueError(f"{path!r} must be a path inside the package")
        return value

    @property
    def source(self) -> PackageSource:
        """The sdist, as a task names it."""
        return PackageSource(
            name=self.name,
            version=self.version,
            filename=self.filename,
            sha256=self.sha256,
            licence=self.licence,
        )

    def is_test_file(self, path: str | Path) -> bool:
        """Whether `path` (relative to the package's root, "/"-separated) is a test file or
        test configuration."""
        text = Path(path).as_posix()
        return any(glob_pattern(glob).fullmatch(text) for glob in self.test_files)

    def test_file_paths(self, root: Path) -> Iterator[str]:
        """The test files under `root`, relative and "/"-separated (symlinks not followed)."""
        for path in sorted(root.rglob("*")):
            if path.is_file() or path.is_symlink():
                relative = path.relative_to(root).as_posix()
                if self.is_test_file(relative):
                    yield relative


@cache
def glob_pattern(glob: str) -> re.Pattern[str]:
    """A "/"-separated glob as a regular expression: `*` and `?` within one path segment, `**`
    any number of whole segments (`**/x` matches `x` too, `a/**` everything under a)."""
    out = []
    index = 0
    while index < len(glob):
        if glob.startswith("**/", index):
            out.append("(?:.*/)?")
            index += 3
        elif glob.startswith("**", index):
            out.append(".*")
            index += 2
        elif glob[index] == "*":
            out.append("[^/]*")
            index += 1
        elif glob[index] == "?":
            out.append("[^/]")
            index += 1
        else:
            out.append(re.escape(glob[index]))
            index += 1
    return re.compile("".join(out))


def load_specs(path: Path) -> dict[str, PackageSpec]:
    """Every package of a TOML spec file, by name; an `EvalInputError` names the bad one."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise EvalInputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise EvalInputError(f"{path}: not valid TOML: {exc}") from exc
    specs: dict[str, PackageSpec] = {}
    for name, table in data.items():
        if not isinstance(table, dict):
            raise EvalInputError(f"{path}: {name} must be a table ([{name}])")
        try:
            specs[name] = PackageSpec.model_validate({"name": name, **table})
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(part) for part in problem["loc"])
            raise EvalInputError(f"{path}: [{name}] {where}: {problem['msg']}") from None
    return specs


def spec_for(source: PackageSource, specs: dict[str, PackageSpec]) -> PackageSpec:
    """The spec of a task's package; an `EvalInputError` when there is none for that exact
    sdist (another version or hash is not the same package)."""
    spec = specs.get(source.name)
    if spec is None:
        known = ", ".join(sorted(specs)) or "none"
        raise EvalInputError(f"no package spec for {source.name} (specs for: {known})")
    if (spec.version, spec.sha256) != (source.version, source.sha256):
        raise EvalInputError(
            f"the spec for {source.name} is version {spec.version} (sha256 {spec.sha256[:12]}), "
            f"the task wants {source.version} (sha256 {source.sha256[:12]})"
        )
    return spec

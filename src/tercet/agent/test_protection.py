"""Keeping an agent's hands off the tests that judge it: a counter-measure to reward hacking.

Two parts, both on by `--protect-tests ask|deny`:

- permission rules: text editor writes (`Edit(...)`, which covers create) to test files and
  test configuration are asked about or denied, whatever the permission mode;
- the bash sandbox binds the protected files and test folders that exist read-only over the
  project, so `sed -i`, `rm` or `>` on them fail too. Without the sandbox, bash is not held to
  it (a command's writes cannot be known before it runs); the evaluation harness still sees
  any change afterwards (`tercet.evals.hacks.tampered`).
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from tercet.agent.permissions import glob_regex

ProtectMode = Literal["off", "ask", "deny"]
PROTECT_MODES: tuple[ProtectMode, ...] = ("off", "ask", "deny")
# Test files and what configures how tests run, as permission patterns: a pattern without a
# slash matches the file's name at any depth; `tests/**` a folder under the project.
DEFAULT_TEST_PATTERNS = (
    "tests/**", "test/**", "testing/**",
    "test_*.py", "*_test.py", "conftest.py",
    "pytest.ini", "tox.ini", "setup.cfg", "noxfile.py",
)  # fmt: skip


def protection_rules(patterns: Sequence[str] = DEFAULT_TEST_PATTERNS) -> list[str]:
    """Permission rules covering editor writes to `patterns` (for the ask or deny list)."""
    return [f"Edit({pattern})" for pattern in patterns]


def protected_paths(root: Path, patterns: Sequence[str] = DEFAULT_TEST_PATTERNS) -> list[Path]:
    """What exists under `root` that `patterns` cover: folders matched by a `.../**` pattern
    (whole, so nothing new appears in them either), and files (outside those folders)
    matched by any pattern. Virtual environments and git's data are not searched."""
    folder_patterns = [glob_regex(p[: -len("/**")]) for p in patterns if p.endswith("/**")]
    file_patterns = [glob_regex(p) for p in patterns]
    folders: list[Path] = []
    files: list[Path] = []
    for path, is_dir in _walk(root):
        relative = path.relative_to(root).as_posix()
        if any(path.is_relative_to(folder) for folder in folders):
            continue
        if is_dir:
            if any(p.fullmatch(relative) for p in folder_patterns):
                folders.append(path)
        elif any(p.fullmatch(relative) for p in file_patterns):
            files.append(path)
    return [*folders, *files]


def _walk(root: Path) -> list[tuple[Path, bool]]:
    """Every folder and regular file under `root`, parents before children (no symlinks)."""
    skip = {".git", ".venv", "venv", "node_modules", "__pycache__", ".tox", ".mypy_cache"}
    out: list[tuple[Path, bool]] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.is_symlink():
                continue
            if entry.is_dir() and entry.name not in skip:
                out.append((entry, True))
                stack.append(entry)
            elif entry.is_file():
                out.append((entry, False))
    out.sort(key=lambda item: (len(item[0].parts), str(item[0])))
    return out


def sandbox_protection(
    patterns: Sequence[str] = DEFAULT_TEST_PATTERNS,
) -> Callable[[Path], list[Path]]:
    """For `BashTool(sandbox_protected=...)`: the paths to bind read-only in a project."""
    return lambda root: protected_paths(root, patterns)


PROMPT_VARIANTS_FILE = Path(__file__).with_name("prompt_variants.toml")


def prompt_variants() -> dict[str, str]:
    """The system-prompt additions by name ("default": none)."""
    with PROMPT_VARIANTS_FILE.open("rb") as handle:
        data = tomllib.load(handle)
    variants = {"default": ""}
    variants.update({name: str(entry["text"]).strip() for name, entry in data.items()})
    return variants


def prompt_addition(variant: str) -> str:
    """What `variant` adds to a system prompt; `ValueError` naming the known ones."""
    variants = prompt_variants()
    if variant not in variants:
        raise ValueError(
            f"unknown prompt variant {variant!r}: one of {', '.join(sorted(variants))}"
        )
    return variants[variant]

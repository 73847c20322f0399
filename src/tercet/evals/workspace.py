"""Trees of a task's code: the unpacked sdist, the same with the task's bug put in (each
made once and cached), fresh copies of them, and patches applied with `git apply`."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from tercet.evals.packages import PackageSpec
from tercet.evals.sources import fetch_sdist, unpack
from tercet.evals.task import EvalInputError, Task

PATCH_TIMEOUT_S = 120.0


class PatchError(EvalInputError):
    """A patch that does not apply; the message is git's."""


def source_tree(spec: PackageSpec, cache: Path) -> Path:
    """The package's unpacked sdist (its root), as released; made once under `cache`.
    Callers must not change it: copy it (`copy_tree`) to work on it."""
    target = cache / "trees" / "source" / f"{spec.name}-{spec.version}-{spec.sha256[:12]}"
    if target.is_dir():
        return target
    return _build_tree(target, lambda into: unpack(fetch_sdist(spec, cache), into))


def buggy_tree(task: Task, spec: PackageSpec, cache: Path) -> Path:
    """The package's root with `task`'s bug in it (the reverse of its gold `patch`), made once
    per task under `cache`. Callers must not change it: copy it to work on it."""
    if (spec.name, spec.version, spec.sha256) != (
        task.source.name,
        task.source.version,
        task.source.sha256,
    ):
        raise EvalInputError(
            f"{task.instance_id} is about {task.source.name} {task.source.version}, "
            f"not {spec.name} {spec.version}"
        )
    safe_id = re.sub(r"[^A-Za-z0-9._-]+", "_", task.instance_id)[:80]
    digest = hashlib.sha256(f"{spec.sha256}\0{task.patch}".encode()).hexdigest()[:12]
    target = cache / "trees" / "buggy" / f"{safe_id}-{digest}"
    if target.is_dir():
        return target
    pristine = source_tree(spec, cache)

    def make(into: Path) -> Path:
        tree = copy_tree(pristine, into / "tree")
        try:
            apply_patch(tree, task.patch, reverse=True)
        except PatchError as exc:
            raise PatchError(f"{task.instance_id}: its gold patch does not undo: {exc}") from None
        return tree

    return _build_tree(target, make)


def _build_tree(target: Path, make: Callable[[Path], Path]) -> Path:
    """Make a tree in a temporary directory next to `target` and rename it into place (a
    build killed halfway leaves only the temporary directory; a lost race, the winner's)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=".building-"))
    try:
        built = make(scratch / "in")
        try:
            built.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def copy_tree(source: Path, target: Path) -> Path:
    """A copy of `source` at `target` (which must not exist), links kept as links."""
    shutil.copytree(source, target, symlinks=True)
    return target


def apply_patch(tree: Path, patch: str, *, reverse: bool = False, fuzzy: bool = False) -> None:
    """Apply a unified diff (paths `a/...` and `b/...`, as `git diff` writes) to `tree`, or
    undo it; a `PatchError` with git's message when it does not apply, `tree` unchanged.

    `fuzzy`: where git refuses, GNU patch may apply it with context lines that differ (as
    SWE-bench's harness falls back to `patch --fuzz=5`), if it applies whole."""
    if not patch.endswith("\n"):
        patch += "\n"  # a diff cut at its last line is otherwise "corrupt"
    flags = ["-R"] if reverse else []
    done = _run(["git", "apply", "--whitespace=nowarn", *flags, "-"], tree, patch)
    if done.returncode == 0:
        return
    message = done.stderr.decode("utf-8", "replace").strip() or f"exit {done.returncode}"
    if fuzzy and shutil.which("patch"):
        command = ["patch", "--batch", "--fuzz=5", "-p1", "--forward", *flags]
        command += ["--no-backup-if-mismatch", "--reject-file=-", "--quiet"]
        dry_run = _run([*command, "--dry-run"], tree, patch)
        if dry_run.returncode == 0 and _run(command, tree, patch).returncode == 0:
            return
    raise PatchError(message)


def _run(command: list[str], tree: Path, stdin: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        command,
        cwd=tree,
        input=stdin.encode(),
        capture_output=True,
        timeout=PATCH_TIMEOUT_S,
        env=_git_env(tree),
        check=False,
    )


def _git_env(tree: Path) -> dict[str, str]:
    """git's environment for working in `tree`: no repository above it is looked for (a
    tree inside another repository, as the cache in a checkout, would have the patch's paths
    taken as relative to that repository, and files outside `tree` skipped), no user config."""
    return {
        **os.environ,
        "GIT_CEILING_DIRECTORIES": str(tree.resolve().parent),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "LC_ALL": "C",
    }


def touched_paths(patch: str) -> list[str]:
    """The files a unified diff changes, creates or deletes (both sides of a rename), relative
    to the tree, in first-seen order."""
    paths: dict[str, None] = {}
    for line in patch.splitlines():
        if line.startswith("diff --git "):
            match = re.match(r'diff --git "?a/(.+?)"? "?b/(.+?)"?$', line)
            if match:
                paths.update(dict.fromkeys(match.groups()))
        elif line.startswith(("--- ", "+++ ")):
            name = line[4:].split("\t", 1)[0].strip().strip('"')
            if name != "/dev/null":
                paths[re.sub(r"^[ab]/", "", name)] = None
        elif line.startswith(("rename from ", "rename to ", "copy from ", "copy to ")):
            paths[line.split(" ", 2)[2]] = None
    return list(paths)


def restore_test_files(tree: Path, pristine: Path, spec: PackageSpec) -> None:
    """Make `tree`'s test files and test configuration exactly `pristine`'s: those added are
    removed, those changed or removed are put back. A directory replaced by a link or a
    file is made a directory again first, so nothing is written outside `tree`."""
    keep = set(spec.test_file_paths(pristine))
    for relative in list(spec.test_file_paths(tree)):
        if relative not in keep:
            (tree / relative).unlink()
    for relative in sorted(keep):
        target = tree / relative
        parent = tree
        for part in Path(relative).parent.parts:
            parent = parent / part
            if parent.is_symlink() or (parent.exists() and not parent.is_dir()):
                parent.unlink()
            parent.mkdir(exist_ok=True)
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        shutil.copy2(pristine / relative, target, follow_symlinks=False)

"""Isolated copies of a tree for attempts, and the diff each attempt leaves.

Two kinds, one `GitWorkspace` shape:

- `make_workspace` (the evaluation harness): a copy of a tree made a git repository holding
  it as one commit; the harness reads changes through its own copy of that git directory, so
  nothing an agent writes in `.git` (configuration, hooks, filters) is ever run by it.
- `project_copy` (`tercet code --attempts`): the user's project as it is now, uncommitted
  changes included: a detached `git worktree` where the project is a repository, a plain copy
  made a repository otherwise. Virtual environments and `node_modules` are linked, not copied,
  and never part of a diff.

`collect_diff` gives everything changed since the copy was made, as a patch `git apply` takes.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tercet.agent.tools.bash_sandbox import LINKED_ENVIRONMENTS

# git as tercet runs it: no user or system configuration, hooks or signing.
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "tercet",
    "GIT_AUTHOR_EMAIL": "attempts@tercet.invalid",
    "GIT_COMMITTER_NAME": "tercet",
    "GIT_COMMITTER_EMAIL": "attempts@tercet.invalid",
    "GIT_AUTHOR_DATE": "2000-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2000-01-01T00:00:00Z",
}
# What an agent's work leaves that is no part of its answer.
GIT_EXCLUDE = "__pycache__/\n*.py[cod]\n.pytest_cache/\n.tercet-junit-*.xml\n"
# Environments a project's tests need, too big to copy per attempt: linked into each copy
# (the agent's sandbox makes a linked one readable).
LINKED_DIRS = LINKED_ENVIRONMENTS


def git(tree: Path, *args: str, git_dir: Path | None = None, user_config: bool = False) -> bytes:
    """Run git in `tree` as tercet does (no hooks, file system monitor or signing; without
    `user_config`, no user or system configuration; no repository above `tree`); its stdout,
    or `RuntimeError`."""
    where = [f"--git-dir={git_dir}", f"--work-tree={tree}"] if git_dir is not None else []
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(tree.resolve().parent)}
    env.update(GIT_ENV if not user_config else {})
    done = subprocess.run(
        [
            "git", *where,
            "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false",
            "-c", "commit.gpgsign=false", *args,
        ],
        cwd=tree,
        capture_output=True,
        env=env,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"git {args[0]} failed in {tree}: {message}")
    return done.stdout


@dataclass(frozen=True)
class GitWorkspace:
    """An attempt's workspace: `path` holds the tree; `base` is the commit (or tree object)
    its changes are measured from, read through `git_dir` (None: the repository `path`
    itself belongs to, as for a worktree). `excluded` paths are never part of its diff."""

    path: Path
    git_dir: Path | None
    base: str
    worktree_of: Path | None = None  # the project a `git worktree` was made from
    excluded: tuple[str, ...] = ()


def make_workspace(
    pristine: Path, target: Path, prepare: Callable[[Path], None] | None = None
) -> GitWorkspace:
    """Copy the buggy tree to `target` and make it a git repository holding it as one commit
    (every file, whatever the package's .gitignore says); the harness's copy of its git
    directory goes beside it (`target` + ".git"). `prepare(target)` changes the copy before
    that commit (what it does is part of the start, never of the agent's diff)."""
    shadow = target.with_name(target.name + ".git")
    for path in (target, shadow):
        if path.exists():
            shutil.rmtree(path)
    shutil.copytree(pristine, target, symlinks=True)
    if prepare is not None:
        prepare(target)
    return _commit_copy(target, shadow, force=True)


def _commit_copy(target: Path, shadow: Path, *, force: bool, exclude: str = "") -> GitWorkspace:
    git(target, "init", "-q")
    (target / ".git" / "info").mkdir(parents=True, exist_ok=True)
    (target / ".git" / "info" / "exclude").write_text(GIT_EXCLUDE + exclude)
    git(target, "add", "-A", *(["-f"] if force else []), ".")
    git(target, "commit", "-q", "--no-verify", "--allow-empty", "-m", "the starting tree")
    base = git(target, "rev-parse", "HEAD").decode().strip()
    shutil.copytree(target / ".git", shadow, symlinks=True)
    return GitWorkspace(target, shadow, base)


def remove_workspace(workspace: Path) -> None:
    shutil.rmtree(workspace, ignore_errors=True)
    shutil.rmtree(workspace.with_name(workspace.name + ".git"), ignore_errors=True)


def is_git_repository(project: Path) -> bool:
    """Whether `project` is the top of a git work tree (a folder inside one is copied)."""
    try:
        top = git(project, "rev-parse", "--show-toplevel", user_config=True).decode().strip()
    except (RuntimeError, OSError):
        return False
    return Path(top).resolve() == project.resolve()


def project_copy(project: Path, target: Path) -> GitWorkspace:
    """The project at `target` as it is now (see the module's docstring); `RuntimeError` when
    git fails."""
    project = project.resolve()
    if target.exists():
        raise RuntimeError(f"{target} exists already")
    linked = [name for name in LINKED_DIRS if (project / name).is_dir()]
    if not is_git_repository(project):
        ignore = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", *linked)
        shutil.copytree(project, target, symlinks=True, ignore=ignore)
        _link(project, target, linked)
        excludes = "".join(f"/{name}\n" for name in linked)
        made = _commit_copy(target, target.with_name(target.name + ".git"), force=False,
                            exclude=excludes)  # fmt: skip
        return made  # the links are in its exclude file
    target.parent.mkdir(parents=True, exist_ok=True)
    run = functools.partial(git, project, user_config=True)
    with _worktree_lock(project):
        run("worktree", "add", "-q", "--detach", str(target), "HEAD")
    try:
        # The uncommitted state: tracked changes as a patch, untracked files copied.
        changes = run("diff", "HEAD", "--binary", "--no-color", "--no-ext-diff")
        if changes:
            _apply(target, changes)
        untracked = run("ls-files", "--others", "--exclude-standard", "-z").split(b"\0")
        for raw in filter(None, untracked):
            name = os.fsdecode(raw)
            if name.split("/", 1)[0] in linked:
                continue
            source, copy = project / name, target / name
            copy.parent.mkdir(parents=True, exist_ok=True)
            if source.is_symlink():
                os.symlink(os.readlink(source), copy)
            elif source.is_file():
                shutil.copy2(source, copy)
        _link(project, target, linked)
        # Links git already ignores need no exclusion (and git refuses to exclude them).
        excluded = tuple(name for name in linked if not _ignored(target, name))
        workspace = GitWorkspace(target, None, "", worktree_of=project, excluded=excluded)
        base = _stage(workspace).decode().strip()
    except BaseException:
        remove_copy(GitWorkspace(target, None, "", worktree_of=project))
        raise
    return GitWorkspace(target, None, base, worktree_of=project, excluded=excluded)


def _ignored(tree: Path, name: str) -> bool:
    try:
        git(tree, "check-ignore", "-q", name, user_config=True)
    except RuntimeError:  # exit status 1: not ignored
        return False
    return True


_worktree_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()


def _worktree_lock(project: Path) -> threading.Lock:
    """git's worktree commands on one repository must not run at once (each rewrites
    .git/worktrees; two together fail)."""
    with _locks_guard:
        return _worktree_locks.setdefault(project.resolve(), threading.Lock())


def _link(project: Path, target: Path, names: Sequence[str]) -> None:
    for name in names:
        if not (target / name).exists():
            os.symlink(project / name, target / name)


def _apply(tree: Path, patch: bytes) -> None:
    done = subprocess.run(
        ["git", "apply", "--binary", "--whitespace=nowarn", "-"],
        cwd=tree,
        input=patch,
        capture_output=True,
        env={**os.environ, **GIT_ENV, "GIT_CEILING_DIRECTORIES": str(tree.resolve().parent)},
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"git apply failed in {tree}: {done.stderr.decode(errors='replace')}")


def _pathspec(workspace: GitWorkspace) -> list[str]:
    return [".", *(f":(exclude,top){name}" for name in workspace.excluded)]


def _stage(workspace: GitWorkspace) -> bytes:
    """Stage everything in the copy and return the staged tree's id."""
    run = functools.partial(
        git, workspace.path, git_dir=workspace.git_dir, user_config=workspace.git_dir is None
    )
    run("add", "-A", "--", *_pathspec(workspace))
    return run("write-tree")


def collect_diff(workspace: GitWorkspace) -> str:
    """Everything changed in the workspace since its base, as a patch `git apply` takes: new
    files included, ignored ones not, whatever the agent did to its own .git."""
    run = functools.partial(
        git, workspace.path, git_dir=workspace.git_dir, user_config=workspace.git_dir is None
    )
    run("add", "-A", "--", *_pathspec(workspace))
    patch = run(
        "diff", "--cached", "--binary", "--no-color", "--no-ext-diff", "--no-renames",
        "--no-textconv", "--src-prefix=a/", "--dst-prefix=b/", workspace.base,
    )  # fmt: skip
    return patch.decode("utf-8", errors="surrogateescape")


def remove_copy(workspace: GitWorkspace) -> None:
    """Remove a copy `project_copy` made (a worktree is unregistered from its project)."""
    if workspace.worktree_of is not None:
        with _worktree_lock(workspace.worktree_of):
            try:
                git(workspace.worktree_of, "worktree", "remove", "--force", str(workspace.path),
                    user_config=True)  # fmt: skip
            except RuntimeError:
                shutil.rmtree(workspace.path, ignore_errors=True)
                git(workspace.worktree_of, "worktree", "prune", user_config=True)
        return
    remove_workspace(workspace.path)


def check_patch(tree: Path, patch: str) -> str | None:
    """Why `patch` does not apply to `tree` (None: it applies)."""
    done = subprocess.run(
        ["git", "apply", "--check", "--binary", "--whitespace=nowarn", "-"],
        cwd=tree,
        input=patch.encode("utf-8", errors="surrogateescape"),
        capture_output=True,
        env={**os.environ, **GIT_ENV, "GIT_CEILING_DIRECTORIES": str(tree.resolve().parent)},
        check=False,
    )
    return None if done.returncode == 0 else done.stderr.decode(errors="replace").strip()


def apply_patch(tree: Path, patch: str) -> None:
    """Apply `patch` to `tree` (checked first: nothing changes when it does not apply)."""
    problem = check_patch(tree, patch)
    if problem is not None:
        raise RuntimeError(f"the patch does not apply to {tree}: {problem}")
    _apply(tree, patch.encode("utf-8", errors="surrogateescape"))


def pack_tree(tree: Path) -> bytes:
    """`tree` as a gzipped tar (without its .git), to send to another machine: symbolic links
    stay links (a linked environment resolves there only where the same path exists)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as archive:
        for entry in sorted(tree.iterdir()):
            if entry.name != ".git":
                archive.add(entry, arcname=entry.name)
    return buffer.getvalue()


def unpack_tree(data: bytes, target: Path) -> GitWorkspace:
    """A `pack_tree` archive unpacked at `target`, made a workspace as `make_workspace` does
    (its changes are read through a git directory beside it)."""
    target.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        archive.extractall(target, filter="tar")  # our own archive: links kept as they are
    return _commit_copy(target, target.with_name(target.name + ".git"), force=True)

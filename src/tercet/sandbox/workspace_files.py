"""Opening files in a container's workspace from the host, where code in the sandbox may have
put links, FIFOs or directories in the way.

The server touches workspaces as its own user (often root), while the container's code keeps
running and may swap a directory for a symlink at any moment. So no path is resolved and then
used: every component is opened relative to the directory before it with `O_NOFOLLOW`, and
only regular files are read or written (a FIFO is opened non-blocking, then refused).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath


class NotInWorkspace(OSError):
    """The path leaves the workspace, goes through a link, or is not a regular file."""


def parts_of(relative: str) -> list[str]:
    """The components of a path inside the workspace; `NotInWorkspace` for `..`, none, or NUL."""
    if "\0" in relative:
        raise NotInWorkspace("a path cannot hold a NUL character")
    parts = [p for p in PurePosixPath(relative).parts if p not in ("/", ".")]
    if not parts or ".." in parts:
        raise NotInWorkspace(f"{relative!r} is not a path inside the workspace")
    return parts


@contextmanager
def directory_beneath(
    root: str | os.PathLike[str], parts: list[str], *, create: bool = False, uid: int | None = None
) -> Iterator[int]:
    """A descriptor of the directory `root/parts...`, reached without following any link;
    missing directories are made with `create` (owned by `uid` when given)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            try:
                child = _open_directory(part, fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                child = _open_directory(part, fd)
                if uid is not None:
                    os.fchown(child, uid, uid)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def open_regular(name: str, dir_fd: int, flags: int, mode: int = 0o644) -> int:
    """Open the regular file `name` in the directory `dir_fd`, not through a link and never
    blocking on a FIFO; `NotInWorkspace` for anything but a regular file."""
    try:
        fd = os.open(
            name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=dir_fd
        )
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # a link; a FIFO with no reader
            raise NotInWorkspace(f"{name!r} is not a regular file") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise NotInWorkspace(f"{name!r} is not a regular file")
    os.set_blocking(fd, True)
    return fd


def _open_directory(name: str, dir_fd: int) -> int:
    try:
        return os.open(
            name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except NotADirectoryError:
        raise NotInWorkspace(f"{name!r} is not a directory") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink where a directory should be
            raise NotInWorkspace(f"{name!r} is a link") from None
        raise

"""Checkpoints: every file the agent's tools change is saved before its first change in a step,
so `rewind(step)` can put the tree back as it was when that step began.

Records live on disk under the checkpoint directory, so a resumed run can still rewind:

    <directory>/steps/<step>.json   {"files": {"/abs/path": {"blob": "<sha256>" | null, "mode": 420,
                                                 "parent": "/real/path/of/its/directory"}}}
    <directory>/blobs/<sha256>      a file's content before the step changed it

`"blob": null` means the file did not exist when the step began (rewinding deletes it). Only
writes made through the tools that call `record` (the text editor and the memory tool) are
recorded; what a bash command changes is not. A bash command may still have put a symlink
where a recorded file was, so rewinding replaces whatever stands there and never writes through
a link, and leaves a file alone (logging it) when its directory now resolves somewhere else.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

FORMAT_VERSION = 1
DEFAULT_MODE = 0o644  # for a restored file whose record has no mode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Saved:
    """A file's state at the start of a step: its content's blob (None if it was absent), its
    permission bits, and the real path of its directory (None in records older than it)."""

    blob: str | None
    mode: int | None = None
    parent: str | None = None


class Checkpoints:
    """File states before each step's changes, kept under `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._steps_dir = directory / "steps"
        self._blobs_dir = directory / "blobs"
        self._steps_dir.mkdir(parents=True, exist_ok=True)
        self._blobs_dir.mkdir(parents=True, exist_ok=True)
        self._records: dict[int, dict[Path, _Saved]] = {}
        for manifest in self._steps_dir.glob("*.json"):
            with contextlib.suppress(ValueError):
                self._records[int(manifest.stem)] = _load_manifest(manifest)

    def record(self, path: Path, step: int) -> None:
        """Save `path` as it is now, unless it was already saved in `step`. Call before writing."""
        path = Path(os.path.abspath(path))
        files = self._records.setdefault(step, {})
        if path in files:
            return
        files[path] = self._save(path)
        self._write_manifest(step)

    def rewind(self, step: int) -> list[Path]:
        """Restore every recorded file to its state at the start of `step` (deleting files
        created since) and forget the records of `step` and later; returns the paths restored.

        A file whose directory no longer resolves to where it was recorded (a symlink now leads
        elsewhere), or where a directory now stands, is left alone and logged as a warning."""
        later = sorted(s for s in self._records if s >= step)
        earliest: dict[Path, _Saved] = {}
        for s in later:  # the first record at or after `step` holds the state `step` began with
            for path, saved in self._records[s].items():
                earliest.setdefault(path, saved)
        restored = [path for path, saved in earliest.items() if self._restore(path, saved)]
        if skipped := sorted(set(earliest) - set(restored)):
            log.warning(
                "rewind left these files alone, their place having changed since they were "
                "recorded: %s",
                ", ".join(map(str, skipped)),
            )
        for s in later:
            del self._records[s]
            (self._steps_dir / f"{s}.json").unlink(missing_ok=True)
        return sorted(restored)

    def copy_before(self, step: int, directory: Path) -> None:
        """The records of the steps before `step`, copied under `directory` (a forked session's
        checkpoints), so a rewind there still reaches them. Files are hard-linked where the
        file system allows: a blob or a manifest is never changed in place, only written anew
        and renamed over, so the two sessions cannot change each other's."""
        kept = sorted(s for s in self._records if s < step)
        blobs = {saved.blob for s in kept for saved in self._records[s].values() if saved.blob}
        target = Checkpoints(directory)  # makes its folders
        for digest in sorted(blobs):
            _link_or_copy(self._blobs_dir / digest, target._blobs_dir / digest)
        for s in kept:
            _link_or_copy(self._steps_dir / f"{s}.json", target._steps_dir / f"{s}.json")

    def steps(self) -> list[int]:
        """The steps that changed files, in order."""
        return sorted(s for s, files in self._records.items() if files)

    def files(self, step: int) -> list[Path]:
        """The files `step` changed."""
        return sorted(self._records.get(step, {}))

    def _save(self, path: Path) -> _Saved:
        parent = os.path.realpath(path.parent)
        try:
            content = path.read_bytes()
            mode = path.stat().st_mode & 0o7777
        except (FileNotFoundError, NotADirectoryError):
            return _Saved(None, parent=parent)
        digest = hashlib.sha256(content).hexdigest()
        blob = self._blobs_dir / digest
        if not blob.exists():
            _atomic_write(blob, content)
        return _Saved(digest, mode, parent)

    def _restore(self, path: Path, saved: _Saved) -> bool:
        """Put `path` back as `saved` was; False, touching nothing, if that is no longer safe."""
        if saved.parent is not None and os.path.realpath(path.parent) != saved.parent:
            return False  # a directory on the way became a link: the file would land elsewhere
        try:
            now = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            now = None
        if now is not None and stat.S_ISDIR(now.st_mode):
            return False
        if saved.blob is None:
            if now is not None:
                path.unlink()  # a symlink is removed itself, never what it points to
            return True
        mode = saved.mode
        if mode is None:
            mode = stat.S_IMODE(now.st_mode) if now and stat.S_ISREG(now.st_mode) else DEFAULT_MODE
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            return False  # a file stands where its directory was
        # A new file renamed over whatever is there: a symlink or a hard link planted in its
        # place is replaced, and what it leads to keeps its content.
        _atomic_write(path, (self._blobs_dir / saved.blob).read_bytes(), mode)
        return True

    def _write_manifest(self, step: int) -> None:
        files = {
            str(p): {"blob": saved.blob, "mode": saved.mode, "parent": saved.parent}
            for p, saved in self._records[step].items()
        }
        document = {"version": FORMAT_VERSION, "step": step, "files": files}
        _atomic_write(self._steps_dir / f"{step}.json", json.dumps(document, indent=1).encode())


def _load_manifest(manifest: Path) -> dict[Path, _Saved]:
    document = json.loads(manifest.read_text())
    return {
        Path(p): _Saved(entry["blob"], entry.get("mode"), entry.get("parent"))
        for p, entry in document["files"].items()
    }


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(source, target)


def _atomic_write(path: Path, content: bytes, mode: int | None = None) -> None:
    """Write `path` through a temporary file and a rename, so a crash leaves either the old
    file or a whole new one, and a link at `path` is replaced rather than written through."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise

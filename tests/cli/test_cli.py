"""The `tercet` command as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from tests.conftest import CLAUDE_MODEL, cli_server


def run_tercet(
    *args: str, stdin: str = "", timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    data_dir = tempfile.mkdtemp(prefix="tercet-cli-")  # never the user's own data folder
    return subprocess.run(
        [sys.executable, "-m", "tercet.cli.main", *args],
        env={**os.environ, "TERCET_DATA_DIR": data_dir},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_serve_prints_where_it_listens_and_answers_the_sdk(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with cli_server("--data-dir", str(tmp_path / "data")) as base_url:
        client = anthropic.Anthropic(base_url=base_url, api_key="x", max_retries=0)
        reply = client.messages.create(
            model=CLAUDE_MODEL, max_tokens=8, messages=[{"role": "user", "content": "Hello!"}]
        )
        assert reply.content and reply.usage.output_tokens > 0
    assert (tmp_path / "data").is_dir()


def test_serve_requires_keys_off_loopback() -> None:
    result = run_tercet("serve", "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2
    assert "--api-key" in result.stderr


def test_serve_with_keys_rejects_strangers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with cli_server("--api-key", "k1", "--data-dir", str(tmp_path)) as base_url:
        stranger = anthropic.Anthropic(base_url=base_url, api_key="other", max_retries=0)
        try:
            stranger.models.list()
        except anthropic.AuthenticationError:
            pass
        else:
            raise AssertionError("a wrong key was accepted")
        assert anthropic.Anthropic(base_url=base_url, api_key="k1").models.list().data


def test_serve_mcp_allow_list(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.mcp.servers import running_mcp_server

    with running_mcp_server("streamable-http") as mcp:
        prefix = mcp.url.rsplit("/", 1)[0] + "/"
        args = ["--data-dir", str(tmp_path), "--no-mcp-loopback"]
        with cli_server(*args, "--mcp-allow", prefix) as allowed, cli_server(*args) as closed:
            params = {
                "model": CLAUDE_MODEL,
                "max_tokens": 1,
                "messages": [{"role": "user", "content": "Hi"}],
                "mcp_servers": [{"type": "url", "url": mcp.url, "name": "t"}],
                "tools": [{"type": "mcp_toolset", "mcp_server_name": "t"}],
                "betas": ["mcp-client-2025-11-20"],
            }
            opened = anthropic.Anthropic(base_url=allowed, api_key="x", max_retries=0)
            assert opened.beta.messages.create(**params).usage.input_tokens > 0
            refused = anthropic.Anthropic(base_url=closed, api_key="x", max_retries=0)
            with pytest.raises(anthropic.BadRequestError, match=r"mcp_servers\.0\.url"):
                refused.beta.messages.create(**params)


def test_serve_reports_a_missing_model_file() -> None:
    result = run_tercet("serve", "--port", "0", "--model", "/nonexistent/model.gguf")
    assert result.returncode == 1
    assert "cannot load the model" in result.stderr


def test_chat_streams_replies_in_process() -> None:
    result = run_tercet(
        "chat", "--max-tokens", "12", "--temperature", "0", stdin="Hello there\n/exit\n"
    )
    assert result.returncode == 0, result.stderr
    assert "assistant> " in result.stdout
    assert "out, " in result.stdout  # the usage line after the streamed reply
    reply = result.stdout.split("assistant> ", 1)[1].split("\n[", 1)[0]
    assert reply.strip()


def test_files_commands(server: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    note = tmp_path / "report.txt"
    note.write_text("quarterly figures\n")
    common = ("files", "--base-url", server, "--api-key", "cli-files")
    uploaded = run_tercet(*common, "upload", str(note))
    assert uploaded.returncode == 0, uploaded.stderr
    file_id = uploaded.stdout.strip()
    assert file_id.startswith("file_")
    listed = run_tercet(*common, "list")
    assert listed.stdout.splitlines() == [
        line for line in listed.stdout.splitlines() if line.startswith(file_id)
    ]
    assert "\t18\t" in listed.stdout and listed.stdout.rstrip().endswith("text/plain\treport.txt")
    refused = run_tercet(*common, "download", file_id, "-o", str(tmp_path / "copy"))
    assert refused.returncode == 1 and "not downloadable" in refused.stderr
    assert run_tercet(*common, "delete", file_id).stdout.strip() == file_id
    assert run_tercet(*common, "list").stdout == ""
    missing = run_tercet(*common, "delete", file_id)
    assert missing.returncode == 1 and "404" in missing.stderr


def test_sandbox_exec(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tercet.sandbox.runner import unavailable_reason

    if unavailable_reason() is not None:
        import pytest

        pytest.skip(f"no sandbox here: {unavailable_reason()}")
    base = ("sandbox", "exec", "--data-dir", str(tmp_path))
    first = run_tercet(*base, "--container", "box1", "--", "sh", "-c", "echo 41 > n; cat n")
    assert (first.returncode, first.stdout) == (0, "41\n"), first.stderr
    again = run_tercet(*base, "--container", "box1", "--", "sh", "-c", "cat n; exit 3")
    assert (again.returncode, again.stdout) == (3, "41\n")
    fresh = run_tercet(*base, "--", "sh", "-c", "cat n")  # a new, empty container
    assert fresh.returncode != 0 and "No such file" in fresh.stderr
    assert run_tercet("sandbox", "exec", "--data-dir", str(tmp_path)).returncode == 2


def run_files_in(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`tercet files ...` run in `folder`, where downloads land by default."""
    return subprocess.run(
        [sys.executable, "-m", "tercet.cli.main", "files", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def downloads(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A server holding downloadable files under the names given; yields its URL and the
    ids by name."""
    from tercet.engine.scripted import ScriptedEngine
    from tercet.files.store import LocalFileStore
    from tercet.server.app import create_app, owner_of
    from tercet.server.config import ServerConfig
    from tercet.server.runner import BackgroundServer

    store = LocalFileStore(tmp_path / "data" / "files")
    ids = {}
    for name in ("report.csv", ".bashrc", "../escape.txt", "sub/dir.txt", "..", ""):
        writer = store.begin()
        writer.write(f"content of {name!r}".encode())
        ids[name] = store.commit(owner_of("cli-dl"), writer, name, "text/plain", True).id
    store.close()
    config = ServerConfig(data_dir=tmp_path / "data", api_keys=[])
    with BackgroundServer(create_app(config, [ScriptedEngine(["ok"])])) as running:
        yield running.base_url, ids


def test_files_download_never_overwrites_unless_forced(
    downloads: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    server, ids = downloads
    here = tmp_path / "here"
    here.mkdir()
    common = ("--base-url", server, "--api-key", "cli-dl")
    saved = run_files_in(here, *common, "download", ids["report.csv"])
    assert saved.returncode == 0, saved.stderr
    assert (here / "report.csv").read_text() == "content of 'report.csv'"
    (here / "report.csv").write_text("mine")
    refused = run_files_in(here, *common, "download", ids["report.csv"])
    assert refused.returncode == 1 and "already exists" in refused.stderr
    assert "--force" in refused.stderr and "Traceback" not in refused.stderr
    assert (here / "report.csv").read_text() == "mine"
    (here / "copy.csv").write_text("mine too")
    refused = run_files_in(here, *common, "download", ids["report.csv"], "-o", "copy.csv")
    assert refused.returncode == 1 and (here / "copy.csv").read_text() == "mine too"
    forced = run_files_in(here, *common, "download", ids["report.csv"], "--force")
    assert forced.returncode == 0, forced.stderr
    assert (here / "report.csv").read_text() == "content of 'report.csv'"
    into = run_files_in(here, *common, "download", ids["report.csv"], "-o", str(tmp_path))
    assert into.returncode == 0 and (tmp_path / "report.csv").is_file()


def test_files_download_saves_unsafe_names_under_the_id(
    downloads: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    server, ids = downloads
    here = tmp_path / "deep" / "here"
    here.mkdir(parents=True)
    common = ("--base-url", server, "--api-key", "cli-dl")
    for name in (".bashrc", "../escape.txt", "sub/dir.txt", "..", ""):
        saved = run_files_in(here, *common, "download", ids[name])
        assert saved.returncode == 0, saved.stderr
        assert saved.stdout.strip() == ids[name]
        assert (here / ids[name]).read_text() == f"content of {name!r}"
    assert sorted(p.name for p in here.iterdir()) == sorted(
        ids[n] for n in ids if n != "report.csv"
    )
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["here"]


def test_files_errors_are_messages_not_tracebacks(
    downloads: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    server, _ = downloads
    common = ("--base-url", server, "--api-key", "cli-dl")
    for args in (("download", ""), ("download", "file_missing"), ("delete", "")):
        result = run_files_in(tmp_path, *common, *args)
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert list(tmp_path.glob("file_*")) == []

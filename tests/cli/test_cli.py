"""The `tercet` command as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import anthropic

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

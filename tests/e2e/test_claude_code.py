"""Claude Code, installed from npm, pointed at `tercet serve` as a new user would.

Its first request is about 10k tokens (system prompt and tool definitions), which takes the
135M model a minute or two to prefill on two CPU cores.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import cli_server

CLAUDE_CODE_VERSION = "2.1.331"
CACHE = Path(__file__).resolve().parents[2] / ".cache" / f"claude-code-{CLAUDE_CODE_VERSION}"


@pytest.fixture(scope="module")
def claude() -> Path:
    """The `claude` binary, installed with npm into a cache folder on first use."""
    binary = CACHE / "node_modules" / ".bin" / "claude"
    if not binary.exists():
        npm = shutil.which("npm")
        assert npm, "npm is needed to install Claude Code (scripts/setup dev installs it)"
        subprocess.run(
            [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(CACHE),
                f"@anthropic-ai/claude-code@{CLAUDE_CODE_VERSION}",
            ],
            check=True,
            timeout=600,
        )
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60)
    assert CLAUDE_CODE_VERSION in version.stdout, version.stdout + version.stderr
    return binary


@pytest.mark.e2e
def test_claude_code_says_hi(claude: Path, tmp_path: Path) -> None:
    # Greedy by default on the server: Claude Code sets no temperature, and sampled answers of
    # the 135M model sometimes loop until the output cap, which Claude Code reports as an error.
    with cli_server("--data-dir", str(tmp_path / "data"), "--default-temperature", "0") as base_url:
        home = tmp_path / "home"
        home.mkdir()
        result = subprocess.run(
            [str(claude), "-p", "say hi"],
            cwd=tmp_path,
            env={
                "PATH": "/usr/bin:/bin",
                "HOME": str(home),
                "ANTHROPIC_BASE_URL": base_url,
                "ANTHROPIC_API_KEY": "x",
                # Claude Code asks for 128000 tokens; a 135M model that rambles would then
                # decode until the context is full (minutes). The README suggests the same cap.
                "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "512",
            },
            capture_output=True,
            text=True,
            timeout=900,
            stdin=subprocess.DEVNULL,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip(), "Claude Code printed no answer"

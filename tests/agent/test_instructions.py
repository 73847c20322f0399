"""Project instructions: AGENTS.md and CLAUDE.md from the root down to the working directory."""

from __future__ import annotations

from pathlib import Path

from tercet.agent.instructions import instruction_files, load_instructions


def tree(tmp_path: Path) -> tuple[Path, Path]:
    home, work = tmp_path / "home", tmp_path / "repo/pkg/sub"
    work.mkdir(parents=True)
    (home / ".claude").mkdir(parents=True)
    (home / ".tercet").mkdir()
    (home / ".claude/CLAUDE.md").write_text("user claude")
    (home / ".tercet/AGENTS.md").write_text("user agents")
    (tmp_path / "repo/AGENTS.md").write_text("repo agents")
    (tmp_path / "repo/CLAUDE.md").write_text("repo claude")
    (tmp_path / "repo/pkg/CLAUDE.md").write_text("pkg claude")
    (work / "AGENTS.md").write_text("sub agents")
    (tmp_path / "repo/pkg/sub/README.md").write_text("not an instruction file")
    return home, work


def test_files_come_user_first_then_outer_to_inner(tmp_path: Path) -> None:
    home, work = tree(tmp_path)
    found = [f.path for f in instruction_files(work, home) if f.path.is_relative_to(tmp_path)]
    assert found == [
        home / ".claude/CLAUDE.md",
        home / ".tercet/AGENTS.md",
        tmp_path / "repo/AGENTS.md",
        tmp_path / "repo/CLAUDE.md",
        tmp_path / "repo/pkg/CLAUDE.md",
        work / "AGENTS.md",
    ]


def test_loaded_text_names_each_file_in_order(tmp_path: Path) -> None:
    home, work = tree(tmp_path)
    text = load_instructions(work, home)
    order = ["user claude", "user agents", "repo agents", "repo claude", "pkg claude", "sub agents"]
    positions = [text.index(marker) for marker in order]
    assert positions == sorted(positions)
    assert f"Contents of {tmp_path / 'repo/pkg/CLAUDE.md'} (project instructions):" in text
    assert (
        f"Contents of {home / '.claude/CLAUDE.md'} (the user's instructions for every project):"
        in text
    )
    assert "not an instruction file" not in text


def test_size_bounds_cut_files_and_drop_the_outermost(tmp_path: Path) -> None:
    home, work = tree(tmp_path)
    (work / "AGENTS.md").write_text("inner " * 1000)
    capped = load_instructions(work, home, max_file_chars=100)
    assert "more characters of" in capped and "inner " * 20 not in capped

    bounded = load_instructions(work, home, max_file_chars=100, max_chars=700)
    assert len(bounded) <= 700
    assert "inner" in bounded and "user claude" not in bounded  # the most specific is kept
    assert "outer instruction files left out for length]" in bounded


def test_no_files_no_text(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "empty").mkdir()
    assert load_instructions(tmp_path / "empty", tmp_path / "home") == ""

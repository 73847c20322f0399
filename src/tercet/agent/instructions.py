"""Project instructions: the AGENTS.md and CLAUDE.md files the agent reads before it starts.

The user's own files come first (`~/.claude/CLAUDE.md`, `~/.tercet/AGENTS.md`), then every
directory from the filesystem root down to the working directory (AGENTS.md before CLAUDE.md
in each), so the most specific instructions come last. Each file is capped, and when all of
them exceed the total budget the outermost are left out first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_FILES = ("AGENTS.md", "CLAUDE.md")
USER_FILES = (".claude/CLAUDE.md", ".tercet/AGENTS.md")
MAX_FILE_CHARS = 20_000
MAX_TOTAL_CHARS = 60_000


@dataclass(frozen=True)
class InstructionFile:
    """One instruction file and whose it is (`user` or `project`)."""

    path: Path
    scope: str


def instruction_files(cwd: Path, home: Path | None = None) -> list[InstructionFile]:
    """The instruction files that apply in `cwd`, outermost first (see the module docstring)."""
    home = Path.home() if home is None else home
    candidates = [InstructionFile(home / name, "user") for name in USER_FILES]
    directory = Path(os.path.abspath(cwd))
    for folder in [*reversed(directory.parents), directory]:
        candidates += [InstructionFile(folder / name, "project") for name in PROJECT_FILES]
    found: list[InstructionFile] = []
    seen: set[str] = set()
    for candidate in candidates:
        real = os.path.realpath(candidate.path)
        if real not in seen and candidate.path.is_file():
            seen.add(real)
            found.append(candidate)
    return found


def load_instructions(
    cwd: Path,
    home: Path | None = None,
    *,
    max_file_chars: int = MAX_FILE_CHARS,
    max_chars: int = MAX_TOTAL_CHARS,
) -> str:
    """The instruction files for `cwd`, concatenated outer-first under a header naming each;
    "" when there are none. At most `max_chars` long, unless the innermost file alone is
    longer (it is kept, cut to `max_file_chars`)."""
    sections: list[tuple[Path, str]] = []
    for file in instruction_files(cwd, home):
        try:
            text = file.path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            continue
        if not text:
            continue
        if len(text) > max_file_chars:
            text = (
                f"{text[:max_file_chars]}\n[... {len(text) - max_file_chars} more characters "
                f"of {file.path} left out ...]"
            )
        kind = "project instructions"
        if file.scope == "user":
            kind = "the user's instructions for every project"
        sections.append((file.path, f"Contents of {file.path} ({kind}):\n\n{text}"))
    left_out: list[Path] = []  # outermost first

    def assembled() -> str:
        texts = [text for _, text in sections]
        if left_out:
            texts.insert(0, f"[{len(left_out)} outer instruction files left out for length]")
        return "\n\n".join(texts)

    while len(sections) > 1 and len(assembled()) > max_chars:
        left_out.append(sections.pop(0)[0])
    return assembled()

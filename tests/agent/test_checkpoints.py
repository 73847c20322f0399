"""Checkpoints: files saved before each step's first change, rewound from disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tercet.agent.checkpoints import Checkpoints
from tercet.agent.tools import MemoryTool, TextEditorTool, ToolContext

pytestmark = pytest.mark.anyio


def test_rewind_restores_edited_and_deletes_created_files(tmp_path: Path) -> None:
    checkpoints = Checkpoints(tmp_path / "cp")
    edited, created = tmp_path / "edited.txt", tmp_path / "new/created.txt"
    edited.write_text("v0")

    checkpoints.record(edited, 1)
    edited.write_text("v1")
    checkpoints.record(edited, 1)  # a second change in the same step keeps the first save
    edited.write_text("v1b")
    checkpoints.record(created, 1)
    created.parent.mkdir()
    created.write_text("fresh")

    assert checkpoints.steps() == [1]
    assert checkpoints.rewind(1) == [edited, created]
    assert edited.read_text() == "v0"
    assert not created.exists()
    assert checkpoints.steps() == []


def test_rewind_goes_back_to_the_start_of_a_step(tmp_path: Path) -> None:
    checkpoints = Checkpoints(tmp_path / "cp")
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("a0")
    for step, content in [(1, "a1"), (2, "a2"), (4, "a4")]:
        checkpoints.record(a, step)
        a.write_text(content)
    checkpoints.record(b, 3)  # b is born in step 3
    b.write_text("b3")
    assert checkpoints.steps() == [1, 2, 3, 4]
    assert checkpoints.files(3) == [b]

    assert checkpoints.rewind(3) == [a, b]  # a as step 3 began: after step 2's change
    assert a.read_text() == "a2"
    assert not b.exists()
    assert checkpoints.steps() == [1, 2]
    assert checkpoints.rewind(2) == [a]
    assert a.read_text() == "a1"


def test_a_new_instance_can_rewind_what_an_old_one_recorded(tmp_path: Path) -> None:
    directory = tmp_path / "cp"
    target = tmp_path / "script.sh"
    target.write_text("#!/bin/sh\necho v0\n")
    target.chmod(0o755)
    first = Checkpoints(directory)
    first.record(target, 5)
    target.unlink()

    resumed = Checkpoints(directory)  # as after a crash or a resumed run
    assert resumed.steps() == [5]
    manifest = json.loads((directory / "steps/5.json").read_text())
    assert manifest["version"] == 1 and str(target) in manifest["files"]
    assert resumed.rewind(5) == [target]
    assert target.read_text() == "#!/bin/sh\necho v0\n"
    assert target.stat().st_mode & 0o777 == 0o755


async def test_rewind_undoes_the_tools_edits(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "app.py").write_text("x = 1\n")
    checkpoints = Checkpoints(tmp_path / "cp")
    editor, memory = TextEditorTool(), MemoryTool(tmp_path / "mem")

    step1 = ToolContext(project, checkpoints, step=1)
    await editor.run(
        {"command": "str_replace", "path": "app.py", "old_str": "1", "new_str": "2"}, step1
    )
    await memory.run({"command": "create", "path": "/memories/a.md", "file_text": "note"}, step1)
    step2 = ToolContext(project, checkpoints, step=2)
    await editor.run(
        {"command": "insert", "path": "app.py", "insert_line": 1, "insert_text": "y = 3"}, step2
    )
    await editor.run({"command": "create", "path": "lib/util.py", "file_text": "pass\n"}, step2)
    await memory.run(
        {"command": "rename", "old_path": "/memories/a.md", "new_path": "/memories/b.md"}, step2
    )
    assert (project / "app.py").read_text() == "x = 2\ny = 3\n"

    checkpoints.rewind(2)
    assert (project / "app.py").read_text() == "x = 2\n"
    assert not (project / "lib/util.py").exists()
    assert (tmp_path / "mem/a.md").read_text() == "note"
    assert not (tmp_path / "mem/b.md").exists()

    checkpoints.rewind(1)
    assert (project / "app.py").read_text() == "x = 1\n"
    assert not (tmp_path / "mem/a.md").exists()


def test_rewind_replaces_a_planted_link_instead_of_writing_through_it(tmp_path: Path) -> None:
    # Regression: rewind wrote the saved content into whatever a symlink at the path led to.
    project, outside = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    outside.mkdir()
    bashrc, linked = outside / ".bashrc", outside / "linked.txt"
    bashrc.write_text("user's bashrc\n")
    linked.write_text("user's file\n")
    notes, gone = project / "notes.txt", project / "new.txt"
    notes.write_text("v0\n")
    checkpoints = Checkpoints(tmp_path / "cp")
    checkpoints.record(notes, 2)
    checkpoints.record(gone, 2)  # did not exist: rewinding deletes it
    notes.unlink()
    notes.symlink_to(bashrc)  # as a bash command in the project could
    gone.symlink_to(linked)

    assert checkpoints.rewind(2) == [gone, notes]
    assert bashrc.read_text() == "user's bashrc\n"
    assert linked.read_text() == "user's file\n"
    assert not notes.is_symlink() and notes.read_text() == "v0\n"
    assert not gone.exists() and not gone.is_symlink()


def test_rewind_leaves_alone_a_file_whose_directory_now_leads_elsewhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    project, outside = tmp_path / "project", tmp_path / "home"
    (project / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "config").write_text("user's config\n")
    target = project / "sub/config"
    target.write_text("v0\n")
    checkpoints = Checkpoints(tmp_path / "cp")
    checkpoints.record(target, 1)
    target.unlink()
    (project / "sub").rmdir()
    (project / "sub").symlink_to(outside)  # project/sub/config is now ~/config

    assert checkpoints.rewind(1) == []
    assert (outside / "config").read_text() == "user's config\n"
    assert str(target) in caplog.text

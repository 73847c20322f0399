"""A constitution: the written rules the safety classifiers judge by, as data.

A constitution is a TOML file of categories. Each is `restricted` (what a request may not seek
and an answer may not give) or `allowed` (what must stay answerable, so that the classifier
does not over-refuse near a restricted topic), with a description and examples. tercet ships
`constitutions/default.toml`; an operator writes their own in the same shape.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, get_args

CONSTITUTIONS_DIR = Path(__file__).with_name("constitutions")

Kind = Literal["restricted", "allowed"]
# The refusal categories a response's `stop_details` may name (Anthropic's API); a restricted
# category maps to one of them, or to none (`category: null` in the refusal).
StopCategory = Literal["cyber", "bio", "frontier_llm", "reasoning_extraction", "general_harms"]
_CATEGORY_KEYS = {"name", "kind", "description", "examples", "stop_category"}


class ConstitutionError(ValueError):
    """A constitution that cannot be used; the message names the file, the key and what is
    wrong with it."""


@dataclass(frozen=True)
class Category:
    name: str
    kind: Kind
    description: str
    examples: tuple[str, ...] = ()
    stop_category: StopCategory | None = None


@dataclass(frozen=True)
class Constitution:
    name: str
    categories: tuple[Category, ...]
    preamble: str = ""
    source: str = "<memory>"

    @property
    def restricted(self) -> tuple[Category, ...]:
        return tuple(c for c in self.categories if c.kind == "restricted")

    @property
    def allowed(self) -> tuple[Category, ...]:
        return tuple(c for c in self.categories if c.kind == "allowed")

    def category(self, name: str) -> Category | None:
        return next((c for c in self.categories if c.name == name), None)

    @property
    def digest(self) -> str:
        """Names this constitution's content: a decision cached under one never answers for
        another."""
        content = {"name": self.name, "preamble": self.preamble}
        content["categories"] = [asdict(c) for c in self.categories]  # type: ignore[assignment]
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    @classmethod
    def resolve(cls, name_or_path: str) -> Constitution:
        """A shipped constitution by name ('default'), or a TOML file's path."""
        shipped = CONSTITUTIONS_DIR / f"{name_or_path}.toml"
        if "/" not in name_or_path and not name_or_path.endswith(".toml") and shipped.exists():
            return cls.load(shipped)
        return cls.load(Path(name_or_path))

    @classmethod
    def load(cls, path: Path) -> Constitution:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConstitutionError(f"{path}: cannot read the constitution: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConstitutionError(f"{path}: not valid TOML: {exc}") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, object], source: str = "<memory>") -> Constitution:
        def fail(key: str, problem: str) -> ConstitutionError:
            return ConstitutionError(f"{source}: {key}: {problem}")

        unknown = set(data) - {"name", "preamble", "category"}
        if unknown:
            raise fail(sorted(unknown)[0], "unknown key (expected name, preamble, [[category]])")
        name = data.get("name", Path(source).stem)
        preamble = data.get("preamble", "")
        if not isinstance(name, str) or not name:
            raise fail("name", "must be a non-empty string")
        if not isinstance(preamble, str):
            raise fail("preamble", "must be a string")
        raw = data.get("category")
        if not isinstance(raw, list) or not raw:
            raise fail("category", "needs at least one [[category]] table")
        categories: list[Category] = []
        for i, entry in enumerate(raw):
            key = f"category[{i}]"
            if not isinstance(entry, dict):
                raise fail(key, "must be a table")
            unknown = set(entry) - _CATEGORY_KEYS
            if unknown:
                raise fail(f"{key}.{sorted(unknown)[0]}", "unknown key")
            categories.append(_category(entry, key, fail))
        names = [c.name for c in categories]
        repeated = {n for n in names if names.count(n) > 1}
        if repeated:
            raise fail("category", f"the name {sorted(repeated)[0]!r} is used twice")
        if not any(c.kind == "restricted" for c in categories):
            raise fail("category", "no category is `restricted`: there would be nothing to flag")
        return cls(name, tuple(categories), preamble.strip(), source)


def _category(
    entry: dict[str, object], key: str, fail: Callable[[str, str], ConstitutionError]
) -> Category:
    name, kind = entry.get("name"), entry.get("kind")
    description, examples = entry.get("description"), entry.get("examples", [])
    stop = entry.get("stop_category")
    if not isinstance(name, str) or not name.replace("_", "").isalnum():
        raise fail(f"{key}.name", "must be a word of letters, digits and underscores")
    if name == "none":
        raise fail(f"{key}.name", "'none' is the judge's answer for no category; choose another")
    if kind not in get_args(Kind):
        raise fail(f"{key}.kind", f"must be one of {', '.join(get_args(Kind))}, not {kind!r}")
    if not isinstance(description, str) or not description.strip():
        raise fail(f"{key}.description", "must be a non-empty string")
    if not isinstance(examples, list) or not all(isinstance(e, str) and e for e in examples):
        raise fail(f"{key}.examples", "must be a list of non-empty strings")
    if stop is not None and stop not in get_args(StopCategory):
        raise fail(f"{key}.stop_category", f"must be one of {', '.join(get_args(StopCategory))}")
    if stop is not None and kind != "restricted":
        raise fail(f"{key}.stop_category", "only a restricted category refuses")
    return Category(name, kind, description.strip(), tuple(examples), stop)  # type: ignore[arg-type]

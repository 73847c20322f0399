"""Spotlighting: untrusted content marked so the model can tell data from instructions.

Three modes, after Hines et al., "Defending Against Indirect Prompt Injection Attacks With
Spotlighting" (2024): `delimit` puts the content between marker lines; `datamark` also
replaces each space inside with a marker character; `base64` encodes it. Each comes with the
system-prompt text (`system_instruction`) that tells the model what the marking means; the
texts are data (spotlight.toml). `unmark` inverts `mark`.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import tomllib
from pathlib import Path
from typing import Literal

from tercet.guard.provenance import Source

SpotlightMode = Literal["off", "delimit", "datamark", "base64"]
SPOTLIGHT_MODES: tuple[SpotlightMode, ...] = ("off", "delimit", "datamark", "base64")
DATAMARK = "\u02c6"  # ˆ: rare in real text, and one token for most tokenizers
TEXTS = tomllib.loads(Path(__file__).with_name("spotlight.toml").read_text(encoding="utf-8"))
_OPENING = re.compile(
    re.escape(TEXTS["open"])
    .replace(re.escape("{boundary}"), "([0-9A-Za-z_-]+)", 1)
    .replace(re.escape("{source}"), ".*", 1)
)


class Spotlight:
    """Marks untrusted text in `mode`, between lines that carry `boundary` (a random code
    by default: content that cannot guess it cannot close the block early)."""

    def __init__(self, mode: SpotlightMode, boundary: str | None = None) -> None:
        if mode not in SPOTLIGHT_MODES:
            raise ValueError(f"spotlight mode must be one of {', '.join(SPOTLIGHT_MODES)}")
        self.mode = mode
        self.boundary = boundary or secrets.token_hex(4)

    def mark(self, text: str, source: Source) -> str:
        """`text` as the model should see it ("off": unchanged)."""
        if self.mode == "off":
            return text
        if self.mode == "datamark":
            text = text.replace(" ", DATAMARK)
        elif self.mode == "base64":
            text = base64.b64encode(text.encode("utf-8", "surrogatepass")).decode("ascii")
        shown = " ".join(str(source).split()).replace(">", ")")  # one line, never a closer
        opening = TEXTS["open"].format(boundary=self.boundary, source=shown)
        return f"{opening}\n{text}\n{TEXTS['close'].format(boundary=self.boundary)}"

    def unmark(self, marked: str) -> str:
        """The text `mark` was given (exact, except that datamarking cannot tell a marker
        character the text held from a space). Text marked in this mode by another guard (a
        saved session) is read too; ValueError for text not marked so."""
        if self.mode == "off":
            return marked
        opening, newline, rest = marked.partition("\n")
        found = _OPENING.fullmatch(opening)
        boundary = found.group(1) if found else self.boundary
        closing = "\n" + TEXTS["close"].format(boundary=boundary)
        if not newline or found is None or not rest.endswith(closing):
            raise ValueError("this text was not marked by a spotlight")
        body = rest[: -len(closing)]
        if self.mode == "datamark":
            return body.replace(DATAMARK, " ")
        if self.mode == "base64":
            try:
                return base64.b64decode(body, validate=True).decode("utf-8", "surrogatepass")
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise ValueError(f"the marked text is not base64: {exc}") from None
        return body

    def system_instruction(self) -> str:
        """What to add to the system prompt so the model knows the marking ("" when off)."""
        if self.mode == "off":
            return ""
        template: str = TEXTS["instructions"][self.mode]
        return template.format(boundary=self.boundary, marker=DATAMARK)

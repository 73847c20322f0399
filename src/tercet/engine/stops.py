"""Stop-sequence detection over streamed text.

Text that might be the start of a stop sequence is held back until it is known not to be, so a
client never sees part of a stop sequence, and the text before one is never lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StopScan:
    """The outcome of feeding text: what may be released, and the stop sequence if one matched."""

    release: str
    matched: str | None = None


class StopSequenceMatcher:
    """Finds the earliest stop sequence in a stream of text pieces."""

    def __init__(self, stop_sequences: Sequence[str]) -> None:
        self._stops = [s for s in stop_sequences if s]
        self._pending = ""

    def feed(self, text: str) -> StopScan:
        if not self._stops:
            return StopScan(release=text)
        self._pending += text
        earliest: tuple[int, str] | None = None
        for stop in self._stops:
            at = self._pending.find(stop)
            if at != -1 and (earliest is None or at < earliest[0]):
                earliest = (at, stop)
        if earliest is not None:
            release = self._pending[: earliest[0]]
            self._pending = ""
            return StopScan(release=release, matched=earliest[1])
        keep = self._longest_partial_match()
        release = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(self._pending) - keep :]
        return StopScan(release=release)

    def flush(self) -> str:
        """Release whatever is held back (the generation ended without a match)."""
        rest, self._pending = self._pending, ""
        return rest

    def _longest_partial_match(self) -> int:
        """Length of the longest suffix of the pending text that starts some stop sequence."""
        best = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(stop[:size]):
                    best = size
                    break
        return best

"""In-process classifiers for the server's classifier tests, loaded as settings name them
(`in_process = "tests.server.classifier_fixtures:..."`).

They script the decision (a marker word flags) so that the control flow is exact; they are never
evidence that a classifier judges well.
"""

from __future__ import annotations

import asyncio

from tercet.guard.classifiers import Decision, Exchange
from tercet.guard.constitution import Constitution

MARKER = "FORBIDDEN"
# Every exchange each classifier was asked about, in order (tests clear it).
SEEN: list[Exchange] = []


class MarkerClassifier:
    """Flags an exchange whose judged text (the prompt, or the answer so far) holds MARKER."""

    def __init__(self, constitution: Constitution) -> None:
        self.category = constitution.restricted[0].name

    async def classify(self, exchange: Exchange) -> Decision:
        SEEN.append(exchange)
        text = exchange.prompt if exchange.stage == "input" else exchange.answer
        if MARKER in text:
            return Decision(True, self.category, f"{exchange.stage} holds the marker", 7, 1)
        return Decision(False, input_tokens=7, output_tokens=1)


class FailingClassifier:
    def __init__(self, constitution: Constitution) -> None:
        pass

    async def classify(self, exchange: Exchange) -> Decision:
        SEEN.append(exchange)
        raise ConnectionError("the classifier is down")


class SlowClassifier:
    def __init__(self, constitution: Constitution) -> None:
        pass

    async def classify(self, exchange: Exchange) -> Decision:
        SEEN.append(exchange)
        await asyncio.Event().wait()  # never answers: the time limit must end it
        raise AssertionError("unreachable")


def marker(constitution: Constitution) -> MarkerClassifier:
    return MarkerClassifier(constitution)


def failing(constitution: Constitution) -> FailingClassifier:
    return FailingClassifier(constitution)


def slow(constitution: Constitution) -> SlowClassifier:
    return SlowClassifier(constitution)

"""The scorer: a model that reads the task and the candidate diffs (with their check results)
and picks one.

Any Messages API model will do (`agent.model.Model`: tercet's server, Anthropic's API, the
in-process model). Its prompt is data (`scorer.toml`, or a file of the same shape). The answer
comes through a forced tool call, `choose_candidate`, whose `label` is an enum of the labels
shown, so even a small model under tercet's tool grammar can only name a real candidate. With
more candidates than `group_size` it is a knockout: groups of at most `group_size`, winners
meet again, until one is left.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import ascii_uppercase
from typing import Any

from tercet.agent.events import Usage
from tercet.agent.model import Model, ModelReply, ModelRequest
from tercet.attempts.select import Candidate

DEFAULT_PROMPT = Path(__file__).with_name("scorer.toml")
TOOL_NAME = "choose_candidate"


class ScorerError(RuntimeError):
    """The scorer gave no usable answer."""


@dataclass(frozen=True)
class ScorerPrompt:
    system: str
    user: str
    candidate: str
    max_diff_chars: int = 12000

    @classmethod
    def load(cls, path: Path = DEFAULT_PROMPT) -> ScorerPrompt:
        """A prompt file (TOML: system, user, candidate, optional max_diff_chars); `ValueError`
        saying what is wrong with it."""
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(
                f"cannot read the scorer prompt {path}: {exc.strerror or exc}"
            ) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"the scorer prompt {path} is not valid TOML: {exc}") from exc
        missing = [
            key for key in ("system", "user", "candidate") if not isinstance(data.get(key), str)
        ]
        if missing:
            raise ValueError(f"the scorer prompt {path} lacks {', '.join(missing)} (strings)")
        prompt = cls(
            data["system"].strip(),
            data["user"].strip(),
            data["candidate"].strip(),
            int(data.get("max_diff_chars", 12000)),
        )
        prompt.render("task", [("A", "diff", "checks")])  # every placeholder is known
        return prompt

    def render(self, task: str, candidates: Sequence[tuple[str, str, str]]) -> str:
        """The user message for `candidates` given as (label, diff, checks)."""
        try:
            blocks = [
                self.candidate.format(label=label, diff=self._cut(diff), checks=checks)
                for label, diff, checks in candidates
            ]
            labels = ", ".join(label for label, _, _ in candidates)
            return self.user.format(task=task, candidates="\n\n".join(blocks), labels=labels)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"the scorer prompt has a bad placeholder: {exc}") from exc

    def _cut(self, diff: str) -> str:
        if len(diff) <= self.max_diff_chars:
            return diff
        return (
            diff[: self.max_diff_chars]
            + f"\n[... {len(diff) - self.max_diff_chars} more characters]"
        )


class Scorer:
    """Picks among candidates with `model` (requests name `model_name`)."""

    def __init__(
        self,
        model: Model,
        model_name: str,
        *,
        prompt: ScorerPrompt | None = None,
        max_tokens: int = 512,
        group_size: int = 4,
    ) -> None:
        if group_size < 2:
            raise ValueError("group_size must be at least 2")
        self.model = model
        self.model_name = model_name
        self.prompt = prompt or ScorerPrompt.load()
        self.max_tokens = max_tokens
        self.group_size = min(group_size, len(ascii_uppercase))
        self.calls = 0

    async def choose(self, task: str, candidates: Sequence[Candidate]) -> tuple[int, str, Usage]:
        """The index of the chosen candidate, the scorer's reason and the tokens it used."""
        if not candidates:
            raise ValueError("nothing to choose from")
        usage = Usage()
        round_ = list(candidates)
        reasons: dict[int, str] = {}
        while len(round_) > 1:
            winners = []
            for start in range(0, len(round_), self.group_size):
                group = round_[start : start + self.group_size]
                if len(group) == 1:
                    winners.append(group[0])  # a bye
                    continue
                picked, reason, used = await self.pick(task, group)
                usage += used
                reasons[picked.index] = reason
                winners.append(picked)
            round_ = winners
        chosen = round_[0]
        return chosen.index, reasons.get(chosen.index, "the only candidate"), usage

    async def pick(self, task: str, group: Sequence[Candidate]) -> tuple[Candidate, str, Usage]:
        """One scorer call over a group of at most `group_size` candidates."""
        labels = ascii_uppercase[: len(group)]
        shown = [
            (label, c.diff, c.check.summary() if c.check else "no check was run")
            for label, c in zip(labels, group, strict=True)
        ]
        request = ModelRequest(
            model=self.model_name,
            max_tokens=self.max_tokens,
            system=[{"type": "text", "text": self.prompt.system}],
            messages=[{"role": "user", "content": self.prompt.render(task, shown)}],
            tools=[_tool(labels)],
            tool_choice={"type": "tool", "name": TOOL_NAME},
        )
        reply = await self._reply(request)
        self.calls += 1
        label, reason = _answer(reply, labels)
        return group[labels.index(label)], reason, reply.usage

    async def _reply(self, request: ModelRequest) -> ModelReply:
        async for item in self.model.stream(request):
            if isinstance(item, ModelReply):
                return item
        raise ScorerError("the scorer's model ended without a reply")


def _tool(labels: str) -> dict[str, Any]:
    return {
        "name": TOOL_NAME,
        "description": "Choose the best candidate change.",
        "input_schema": {
            "type": "object",
            "properties": {
                "label": {"type": "string", "enum": list(labels)},
                "reason": {"type": "string"},
            },
            "required": ["label", "reason"],
        },
    }


def _answer(reply: ModelReply, labels: str) -> tuple[str, str]:
    """The label and reason of the scorer's answer: its tool call, else a label named alone in
    its text; `ScorerError` when there is neither."""
    for block in reply.content:
        if block.get("type") == "tool_use" and block.get("name") == TOOL_NAME:
            data = block.get("input") or {}
            label = str(data.get("label", "")).strip().upper()
            if label in labels and len(label) == 1:
                return label, str(data.get("reason", "")).strip()
            raise ScorerError(f"the scorer answered {label!r}, not one of {', '.join(labels)}")
    text = " ".join(b.get("text", "") for b in reply.content if b.get("type") == "text")
    named = {word.strip(".,:;()[]\"'") for word in text.split()} & set(labels)
    if len(named) == 1:
        return named.pop(), text.strip()
    raise ScorerError("the scorer did not name a candidate")

"""Compaction: when the conversation nears the context window, the model summarises it, and
the history becomes the original task, the summary, and the latest steps verbatim.

A step is an assistant message and the user message after it (its tool results), so the kept
tail always starts at an assistant message and every `tool_use` keeps its `tool_result`.
Compacting is a loop when it is needed again within `min_turns_between` turns, or when the
compacted history would not be smaller; the run then stops rather than summarise forever.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

DEFAULT_CONTEXT_WINDOW = 200_000  # Claude's; for a model that does not say its own
SUMMARY_PROMPT = """\
Your context window is nearly full, so this conversation will now be replaced by a summary \
that you write. You will continue the task from that summary, with only the original task \
and your latest steps beside it. Do not call any tool now; answer with the summary only.

Keep everything needed to go on without starting over:
- the user's requests and constraints, in their own words where it matters;
- what you have done and learned: files read and changed (with paths), commands run and \
their outcomes, errors met and how they were resolved;
- the current state of the work, and exactly what remains to do next."""
SUMMARY_HEADER = (
    "[The conversation so far was compacted to fit the context window. "
    "Your summary of it follows; the latest steps come after it verbatim.]\n\n"
)
SHRINK_FACTOR = 0.9  # a compacted history must be at most this fraction of the old one


@dataclass(frozen=True)
class CompactionConfig:
    """When and how the conversation is compacted."""

    enabled: bool = True
    threshold: float = 0.8  # compact when the last prompt used this fraction of the window
    context_window: int | None = None  # None: as the model says, else DEFAULT_CONTEXT_WINDOW
    keep_steps: int = 2  # the latest steps kept verbatim
    min_turns_between: int = 2  # compacting again sooner is a loop: the run stops
    prompt: str = SUMMARY_PROMPT


def needs_compaction(prompt_tokens: int, context_window: int, config: CompactionConfig) -> bool:
    """Whether the last prompt took more than `threshold` of the window."""
    return config.enabled and prompt_tokens > config.threshold * context_window


def loop_message(
    turn: int,
    last_compaction_turn: int | None,
    prompt_tokens: int,
    window: int,
    config: CompactionConfig,
) -> str | None:
    """Why compacting now would be a loop (it was compacted too few turns ago), or None."""
    if last_compaction_turn is None or turn - last_compaction_turn >= config.min_turns_between:
        return None
    return (
        f"the context was full again {turn - last_compaction_turn} turn(s) after it was "
        f"compacted ({prompt_tokens} of {window} tokens): the latest steps alone nearly fill "
        "it; keep fewer steps, or use a model with a larger context"
    )


def summary_messages(messages: list[dict[str, Any]], prompt: str) -> list[dict[str, Any]]:
    """The history with the summarisation prompt as the last user text (after any tool
    results, which must come first in their message)."""
    request = [dict(message) for message in messages]
    instruction = {"type": "text", "text": prompt}
    if request and request[-1]["role"] == "user":
        last = request[-1]
        request[-1] = {**last, "content": [*_blocks(last["content"]), instruction]}
    else:
        request.append({"role": "user", "content": [instruction]})
    return request


def compacted_messages(
    task: list[dict[str, Any]], summary: str, messages: list[dict[str, Any]], keep_steps: int
) -> list[dict[str, Any]] | None:
    """[task + summary] followed by the latest `keep_steps` steps (fewer when that is what it
    takes to shrink the history); None when no choice makes the history smaller."""
    head = {"role": "user", "content": [*copy.deepcopy(task), _summary_block(summary)]}
    old_size = _size(messages)
    for keep in dict.fromkeys((keep_steps, 0)):
        tail = copy.deepcopy(messages[_tail_start(messages, keep) :])
        candidate = [head, *tail]
        if _size(candidate) < SHRINK_FACTOR * old_size:
            return candidate
    return None


def _tail_start(messages: list[dict[str, Any]], keep_steps: int) -> int:
    """Where the latest `keep_steps` steps begin: an assistant message, never the first."""
    starts = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i > 0]
    if keep_steps <= 0 or not starts:
        return len(messages)
    return starts[max(0, len(starts) - keep_steps)]


def _summary_block(summary: str) -> dict[str, Any]:
    return {"type": "text", "text": SUMMARY_HEADER + summary.strip()}


def _blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def _size(messages: list[dict[str, Any]]) -> int:
    return len(json.dumps(messages, ensure_ascii=False))

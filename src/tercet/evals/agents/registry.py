"""Agents by name: the built-in ones, those registered by code, and `module:factory` paths.

    register_agent("my-agent", my_factory, "what it is")   # then --agent my-agent
    tercet eval run --agent mypackage.agents:make_agent     # or by import path

A factory takes the `AgentSettings` and returns an `EvalAgent`. Only entries registered with
`sees_gold=True` (the oracle) are given the tasks' gold patches.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, replace

from tercet.evals.agents.base import AgentSettings, EvalAgent
from tercet.evals.task import EvalInputError

Factory = Callable[[AgentSettings], EvalAgent]


class UnknownAgent(EvalInputError):
    """No agent of that name; the message lists the known ones."""


@dataclass(frozen=True)
class AgentEntry:
    name: str
    factory: Factory
    description: str = ""
    sees_gold: bool = False


def _tercet(settings: AgentSettings) -> EvalAgent:
    from tercet.evals.agents.tercet_sdk import tercet

    return tercet(settings)


def _claude_code(settings: AgentSettings) -> EvalAgent:
    from tercet.evals.agents.claude_code import claude_code

    return claude_code(settings)


def _oracle(settings: AgentSettings) -> EvalAgent:
    from tercet.evals.agents.reference import oracle

    return oracle(settings)


def _noop(settings: AgentSettings) -> EvalAgent:
    from tercet.evals.agents.reference import noop

    return noop(settings)


AGENTS: dict[str, AgentEntry] = {
    entry.name: entry
    for entry in (
        AgentEntry(
            "tercet",
            _tercet,
            "tercet's agent SDK (bash + editor), embedded model or --base-url",
        ),
        AgentEntry("claude-code", _claude_code, "the Claude Code CLI (claude -p) at --base-url"),
        AgentEntry("oracle", _oracle, "applies the gold patch (checks the tasks)", sees_gold=True),
        AgentEntry("noop", _noop, "changes nothing (checks the tasks)"),
    )
}


def register_agent(
    name: str, factory: Factory, description: str = "", *, sees_gold: bool = False
) -> None:
    """Make `factory` available as `--agent name` (replacing an entry of that name)."""
    AGENTS[name] = AgentEntry(name, factory, description, sees_gold)


def agent_entry(name: str) -> AgentEntry:
    """The entry for `name`, or for a `module:factory` import path; `UnknownAgent` otherwise."""
    if name in AGENTS:
        return AGENTS[name]
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UnknownAgent(f"--agent {name}: cannot import {module_name}: {exc}") from exc
        factory = getattr(module, attribute, None)
        if not callable(factory):
            raise UnknownAgent(f"--agent {name}: {module_name} has no factory {attribute!r}")
        return AgentEntry(name, factory)
    known = ", ".join(sorted(AGENTS))
    raise UnknownAgent(
        f"unknown agent {name!r}; known agents: {known} (or a module:factory import path)"
    )


def create_agent(name: str, settings: AgentSettings) -> EvalAgent:
    """A ready agent; gold patches are kept from every agent but those entitled to them."""
    entry = agent_entry(name)
    if not entry.sees_gold:
        settings = replace(settings, gold_patches={})
    return entry.factory(settings)

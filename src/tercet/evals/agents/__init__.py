"""Agent scaffolds behind one small interface (`EvalAgent`), found by name in a registry.

Built in: `tercet` (tercet's agent SDK), `claude-code` (the Claude Code CLI), `oracle` (the
gold patch) and `noop` (nothing). docs/evals.md shows how to plug in another.
"""

from tercet.evals.agents.base import (
    AgentOutcome,
    AgentSettings,
    Budget,
    EvalAgent,
    TaskView,
    Workspace,
)
from tercet.evals.agents.registry import (
    AGENTS,
    AgentEntry,
    UnknownAgent,
    agent_entry,
    create_agent,
    register_agent,
)

__all__ = [
    "AGENTS",
    "AgentEntry",
    "AgentOutcome",
    "AgentSettings",
    "Budget",
    "EvalAgent",
    "TaskView",
    "UnknownAgent",
    "Workspace",
    "agent_entry",
    "create_agent",
    "register_agent",
]

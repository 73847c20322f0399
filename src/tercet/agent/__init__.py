"""tercet's agent: a loop that asks a model, runs the tools it calls, and saves every step.

Two ways to run a task:
- `Agent.run(task)` / `Agent.resume(session_id, prompt)`: an async iterator of typed events
  (text deltas, tool calls, permission decisions, results, compactions), the last always a
  `Result`. For interfaces that show the run as it happens.
- `Agent.run_until_done(task)` / `Agent.resume_until_done(...)`: just the `Result`. For
  scripts and tests.

Models: `AnthropicModel` (tercet's server or Anthropic's API, through the official SDK),
`InProcessModel` (tercet's app on an engine in this process, no server), `ScriptedModel`
(replies from a script, for tests; `turn`, `text`, `tool_use`, `thinking` build replies).
Sessions are JSONL trajectories in a `SessionStore`; `replay` and `load_session` read them.
"""

from tercet.agent.budget import PRICES, Budget, ModelPrice, cost_of
from tercet.agent.checkpoints import Checkpoints
from tercet.agent.compaction import CompactionConfig
from tercet.agent.events import (
    AssistantMessage,
    Compacted,
    Event,
    PermissionDecided,
    RequestSent,
    Result,
    ResultReason,
    RunStarted,
    TextDelta,
    ThinkingDelta,
    ToolCall,
    ToolFinished,
    Usage,
    UserMessage,
    event_from_dict,
    event_to_dict,
)
from tercet.agent.hooks import (
    AskCallback,
    HookEvent,
    Hooks,
    PermissionRequest,
    PostToolUseInput,
    PostToolUseOutput,
    PreCompactInput,
    PreCompactOutput,
    PreToolUseInput,
    PreToolUseOutput,
    StopInput,
    StopOutput,
)
from tercet.agent.inprocess import InProcessModel
from tercet.agent.instructions import load_instructions
from tercet.agent.loop import DEFAULT_SYSTEM_PROMPT, Agent, AgentConfig
from tercet.agent.model import (
    AnthropicModel,
    Model,
    ModelError,
    ModelReply,
    ModelRequest,
    ReplyProgress,
)
from tercet.agent.permissions import Decision, PermissionMode, PermissionRule, Permissions
from tercet.agent.scripted import (
    ScriptedModel,
    ScriptedTurn,
    ScriptExhausted,
    text,
    thinking,
    tool_use,
    turn,
)
from tercet.agent.tools import (
    AgentTool,
    BashTool,
    McpConfig,
    McpConfigError,
    McpServers,
    McpServerTool,
    MemoryTool,
    ReportImpossibleTool,
    TextEditorTool,
    ToolContext,
    ToolResult,
)
from tercet.agent.trajectory import (
    FORMAT_VERSION,
    Session,
    SessionNotFound,
    SessionStore,
    TrajectoryError,
    load_session,
    replay,
)

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "FORMAT_VERSION",
    "PRICES",
    "Agent",
    "AgentConfig",
    "AgentTool",
    "AnthropicModel",
    "AskCallback",
    "AssistantMessage",
    "BashTool",
    "Budget",
    "Checkpoints",
    "Compacted",
    "CompactionConfig",
    "Decision",
    "Event",
    "HookEvent",
    "Hooks",
    "InProcessModel",
    "McpConfig",
    "McpConfigError",
    "McpServerTool",
    "McpServers",
    "MemoryTool",
    "Model",
    "ModelError",
    "ModelPrice",
    "ModelReply",
    "ModelRequest",
    "PermissionDecided",
    "PermissionMode",
    "PermissionRequest",
    "PermissionRule",
    "Permissions",
    "PostToolUseInput",
    "PostToolUseOutput",
    "PreCompactInput",
    "PreCompactOutput",
    "PreToolUseInput",
    "PreToolUseOutput",
    "ReplyProgress",
    "ReportImpossibleTool",
    "RequestSent",
    "Result",
    "ResultReason",
    "RunStarted",
    "ScriptExhausted",
    "ScriptedModel",
    "ScriptedTurn",
    "Session",
    "SessionNotFound",
    "SessionStore",
    "StopInput",
    "StopOutput",
    "TextDelta",
    "TextEditorTool",
    "ThinkingDelta",
    "ToolCall",
    "ToolContext",
    "ToolFinished",
    "ToolResult",
    "TrajectoryError",
    "Usage",
    "UserMessage",
    "cost_of",
    "event_from_dict",
    "event_to_dict",
    "load_instructions",
    "load_session",
    "replay",
    "text",
    "thinking",
    "tool_use",
    "turn",
]

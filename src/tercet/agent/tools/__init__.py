"""The agent's client tools: bash, the text editor and memory, with Anthropic's tool types."""

from tercet.agent.tools.base import AgentTool, ToolContext, ToolResult
from tercet.agent.tools.bash import BashTool
from tercet.agent.tools.editor import TextEditorTool
from tercet.agent.tools.memory import MemoryTool

__all__ = ["AgentTool", "BashTool", "MemoryTool", "TextEditorTool", "ToolContext", "ToolResult"]

"""tercet's guard against prompt injection: provenance for what enters the model's context,
a policy on every tool call, and content defences (spotlighting, detectors).

Below the agent, the server and the evaluations: it imports none of them. The agent takes a
`Guard` (`AgentConfig(guard=...)`); `tercet code --guard POLICY.toml` (or `default`) builds one.
"""

from tercet.guard.detect import AsyncDetector, Detection, Detector, RulesDetector
from tercet.guard.guard import Guard
from tercet.guard.judge import JudgeDetector, JudgePrompt, MessagesModel
from tercet.guard.policy import (
    Action,
    AllowList,
    DataFlowRule,
    DetectorSettings,
    Policy,
    PolicyError,
    StrictRule,
    Verdict,
)
from tercet.guard.provenance import Source, SourceKind
from tercet.guard.spotlight import Spotlight, SpotlightMode

__all__ = [
    "Action",
    "AllowList",
    "AsyncDetector",
    "DataFlowRule",
    "Detection",
    "Detector",
    "DetectorSettings",
    "Guard",
    "JudgeDetector",
    "JudgePrompt",
    "MessagesModel",
    "Policy",
    "PolicyError",
    "RulesDetector",
    "Source",
    "SourceKind",
    "Spotlight",
    "SpotlightMode",
    "StrictRule",
    "Verdict",
]

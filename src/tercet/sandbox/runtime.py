"""The Python runtime inside the sandbox: a virtual environment with the data-science set
(numpy, pandas, matplotlib), made by ./scripts/setup next to the project's own `.venv`."""

from __future__ import annotations

import os
from pathlib import Path

RUNTIME_ENV = "TERCET_SANDBOX_RUNTIME"
# An editable install: src/tercet/sandbox/runtime.py -> the project root.
_PROJECT_RUNTIME = Path(__file__).resolve().parents[3] / ".venv-sandbox"


def default_runtime() -> Path | None:
    """`$TERCET_SANDBOX_RUNTIME`, else the project's `.venv-sandbox`, else None (the system
    Python alone)."""
    configured = os.environ.get(RUNTIME_ENV)
    if configured:
        return Path(configured)
    return _PROJECT_RUNTIME if (_PROJECT_RUNTIME / "bin" / "python").exists() else None

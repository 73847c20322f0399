"""Which engine answers a requested model name, and how served models are described."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from datetime import UTC, datetime

from tercet.engine.base import Engine
from tercet.server.config import ModelRoute
from tercet.wire.errors import NotFoundError
from tercet.wire.responses import ModelInfo

_STARTED = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ModelRegistry:
    """Served engines by id, plus the routes that map other names (`claude-*`) onto them."""

    def __init__(self, engines: Sequence[Engine], routes: Sequence[ModelRoute]) -> None:
        if not engines:
            raise ValueError("at least one engine must be served")
        self.engines = {e.spec.id: e for e in engines}
        self.default = engines[0]
        self.routes = list(routes)
        for route in self.routes:
            if route.target != "*" and route.target not in self.engines:
                raise ValueError(f"route {route.pattern!r} targets unknown model {route.target!r}")

    def resolve(self, name: str) -> Engine:
        """The engine for a requested name; the response still echoes the name asked for."""
        if name in self.engines:
            return self.engines[name]
        for route in self.routes:
            if fnmatch.fnmatchcase(name, route.pattern):
                return self.default if route.target == "*" else self.engines[route.target]
        raise NotFoundError(f"model: {name}")

    def info(self, name: str) -> ModelInfo:
        spec = self.resolve(name).spec
        return ModelInfo(
            id=name,
            display_name=spec.display_name if name == spec.id else f"{name} (served by {spec.id})",
            created_at=_STARTED,
            max_input_tokens=spec.context_window,
            max_tokens=spec.max_output_tokens,
        )

    def listed(self) -> list[ModelInfo]:
        """Served models, then every route that names one model exactly (no glob)."""
        names = list(self.engines)
        names += [
            r.pattern
            for r in self.routes
            if not any(c in r.pattern for c in "*?[") and r.pattern not in names
        ]
        return [self.info(n) for n in names]

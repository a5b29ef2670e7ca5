"""Inference engines: one interface (``Engine``), several runtimes."""

from fsfm.engines.base import Engine, EngineError

__all__ = ["Engine", "EngineError"]

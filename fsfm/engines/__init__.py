"""Inference engines: one interface (``Engine``), a registry of runtimes (``registry``), and one
choice of engine and variant per package (``select``)."""

from fsfm.engines.base import Engine, EngineError

__all__ = ["Engine", "EngineError"]

"""The service's and the worker's engines: one function for both, from their settings."""

from __future__ import annotations

from fsfm.engines.base import Engine
from fsfm.engines.loading import open_engine
from fsfm.engines.registry import EngineOptions
from fsfm.package import ModelPackage
from service.settings import Settings


def load_engine(package: ModelPackage, settings: Settings) -> Engine:
    """Select (``FSFM_ENGINE`` / ``FSFM_PRECISION`` / ``FSFM_ACCEPT_DRIFT``, "auto" by default), create and warm up the
    engine of ``package``; ``engine.selection`` is what /readyz and the logs report."""
    options = EngineOptions(threads=settings.engine_threads)
    return open_engine(package, settings.engine, settings.precision, options, accept_drift=settings.accept_drift)

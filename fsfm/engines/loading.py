"""``open_engine``: select, create and warm up a package's engine. The service and the worker call
it through ``service.engines.load_engine`` (their settings), ``fsfm analyze`` directly."""

from __future__ import annotations

import logging

import numpy as np

from fsfm.engines.base import Engine
from fsfm.engines.registry import EngineOptions, create_engine
from fsfm.engines.select import AUTO, Host, select_variant
from fsfm.package import ModelPackage

log = logging.getLogger("fsfm.engines")


def open_engine(
    package: ModelPackage,
    engine: str = AUTO,
    precision: str = AUTO,
    options: EngineOptions | None = None,
    host: Host | None = None,
    accept_drift: bool = False,
) -> Engine:
    """The engine ``select_variant`` chooses for ``package``, loaded and warmed up at the package's
    crop size; ``engine.selection`` says what was chosen and why. Raises ``EngineError``."""
    selection = select_variant(package, engine, precision, host, accept_drift=accept_drift)
    made = create_engine(package, selection, options)
    size = package.manifest.crop.size
    try:
        made.warmup(np.zeros((1, 3, size, size), np.float32))
    except Exception:
        made.close()
        raise
    log.info(
        "%s: engine %s, precision %s (%s; %s)",
        package.manifest.ref,
        selection.engine,
        selection.precision,
        selection.variant.file,
        selection.why,
    )
    return made

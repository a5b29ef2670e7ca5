"""The one readiness shape of ``/readyz`` (API and ``fsfm worker``) and gRPC health.

Ready means: models loaded and warmed up, at least one model served, not draining, every backend
(the Redis queue) reachable. When not ready, ``reason`` says which, first match wins:
``loading``, ``draining``, ``no_models``, ``backend_down``; it is null when ready.
"""

from __future__ import annotations

from typing import Literal

NotReadyReason = Literal["loading", "draining", "no_models", "backend_down"]


def not_ready_reason(*, loaded: bool, serving: bool, draining: bool, backend_down: bool) -> NotReadyReason | None:
    """Why a process is not ready, or None when it is."""
    if not loaded:
        return "loading"
    if draining:
        return "draining"
    if not serving:
        return "no_models"
    if backend_down:
        return "backend_down"
    return None

"""Admission: whether the core takes a request now, and how many it is working on.

Entered only from ``AnalysisCore.analyze``. A request is refused while the models load
(``not_ready``) and once the drain has begun (``draining``); admitted requests are counted until
they end, so that a drain can wait for them (``idle``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from service.errors import Unavailable


class Admission:
    def __init__(self) -> None:
        self.ready = False
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def check(self) -> None:
        """Raise ``Unavailable`` when no new request may enter."""
        if not self.ready:
            raise Unavailable("not_ready", "models are still loading")
        if self.draining:
            raise Unavailable("draining", "the service is shutting down")

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """Count one request in flight for as long as the block runs."""
        self.in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def drain(self, grace_s: float) -> bool:
        """Refuse new work, let in-flight requests finish (up to ``grace_s``). True if all finished."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
            return True
        except TimeoutError:
            return False

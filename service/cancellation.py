"""Stopping a request's thread-pool work once the request has ended (cancelled, client gone, deadline
passed, server shutting down).

Cancelling an asyncio task stops its awaits at once, but not the decode or detection it handed to a
thread: that runs on to its end. So the core marks each request's end on a ``threading.Event``
(``watch``, called in the request's task), its preprocessing pool is a ``ContextThreadPool`` (jobs
run in the context of the task that submitted them), and the frame loops in those jobs call
``stop_if_ended()`` between frames: for an ended request it raises ``RequestEnded``, which nobody
awaits any more, and the thread is free for the next request. Outside a request's task (start-up,
tests) ``stop_if_ended`` does nothing.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

_ended: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("fsfm_request_ended", default=None)


class RequestEnded(Exception):
    """The request this work is for has ended; its result would be thrown away."""


def watch(ended: threading.Event) -> None:
    """From here on, this task's thread-pool work (``ContextThreadPool``) stops once ``ended`` is set."""
    _ended.set(ended)


def stop_if_ended() -> None:
    """Between frames of thread-pool work: raise ``RequestEnded`` when its request has ended."""
    ended = _ended.get()
    if ended is not None and ended.is_set():
        raise RequestEnded()


class ContextThreadPool(ThreadPoolExecutor):
    """A thread pool whose jobs run in a copy of the submitting task's context (as ``asyncio.to_thread``
    does), so that ``stop_if_ended`` knows the request a job serves."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)

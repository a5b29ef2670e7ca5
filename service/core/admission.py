"""Admission: whether the core takes a request now, decided before any decode or detection, and how
many requests it is working on.

Entered from ``AnalysisCore.analyze``, and from a door that holds a request's place before reading it
(``reserve``, through ``AnalysisCore.reserve``). A request is refused with ``Unavailable`` while the models
load (``not_ready``) and once the drain has begun (``draining``), and with ``Overloaded`` (429 /
RESOURCE_EXHAUSTED, reason ``overloaded``) when it would exceed what the service can take:

- preprocessing (decode, detect, crop) holds at most ``max_concurrent_requests`` requests; up to
  ``max_waiting_requests`` more wait, first come first served, for one of those slots. A request past
  both is refused at once, before any of its work.
- faces queued for inference: a request whose model's queue already holds ``max_queue_size`` faces is
  refused at once too, and again when it gets its slot after waiting (``check_queue``), rather than
  after its decode and detection (the batcher keeps its own check for the faces a request brings:
  see docs/api.md).

An admitted request holds a ``Ticket`` through three stages: ``waiting`` (for a slot),
``preprocessing`` (holding one) and ``inference`` (its slot given back, its faces in the batcher).
``Retry-After`` comes from the measured service rate: an exponentially weighted mean of the time a
request holds a preprocessing slot, times the refused request's place in line, over the number of
slots (at least ``MIN_RETRY_AFTER_S``).

Ending early: a ticket's ``ended`` event is set when its request ends however it ends, which stops
its thread-pool work at the next frame (``service/cancellation.py``); ``abort`` cancels every admitted
request's work (the shutdown's grace period is over): ``analyze`` answers those ``shutting_down``.
Admitted requests are counted until they end, so that a drain can wait for them (``drain``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Literal

from prometheus_client import Gauge

from service.errors import Overloaded, Unavailable

Stage = Literal["waiting", "preprocessing", "inference"]
STAGES: tuple[Stage, ...] = ("waiting", "preprocessing", "inference")
MIN_RETRY_AFTER_S = 1.0  # Retry-After is whole seconds; never tell a client to come back at once
SERVICE_TIME_WEIGHT = 0.2  # weight of the newest preprocessing time in its running mean (about the last 10 requests)


class Ticket:
    """One admitted request: its stage, its work's task, and the event its thread-pool work watches."""

    def __init__(self, admission: Admission) -> None:
        self.stage: Stage = "waiting"
        self.ended = threading.Event()
        self.aborted = False  # cancelled by ``Admission.abort``
        self.work: asyncio.Future | None = None  # the request's analysis, cancelled by ``abort``
        self._admission = admission
        self._slot_since = 0.0

    async def preprocessing(self) -> None:
        """Wait for a preprocessing slot (first come, first served) and take it."""
        await self._admission._slots.acquire()
        self._slot_since = time.monotonic()
        self._admission._move(self, "preprocessing")

    def prepared(self) -> None:
        """Preprocessing is done: give the slot to the next request and count the time it took."""
        if self.stage == "preprocessing":
            self._admission._slot_done(time.monotonic() - self._slot_since)
            self._admission._move(self, "inference")


class Reservation:
    """A place in line held for a request whose door has not read it yet (``Admission.reserve``): it
    counts as waiting, so a burst is refused at the door instead of after every body has been read.
    ``Admission.admit`` turns it into the request's ticket; ``release`` gives it back unused
    (idempotent)."""

    def __init__(self, admission: Admission) -> None:
        self._admission: Admission | None = admission

    def release(self) -> None:
        if self._admission is not None:
            self._admission._reserved -= 1
            self._admission = None


class Admission:
    def __init__(self, max_concurrent: int, max_waiting: int, gauge: Gauge | None = None) -> None:
        self.ready = False
        self.draining = False
        self.max_concurrent = max_concurrent
        self.max_waiting = max_waiting
        self._gauge = gauge
        self._slots = asyncio.Semaphore(max_concurrent)
        self._tickets: set[Ticket] = set()
        self._counts: dict[Stage, int] = dict.fromkeys(STAGES, 0)
        self._reserved = 0  # places held at the door (``reserve``), not yet admitted
        self._service_s = 0.0  # running mean of the time a request holds a slot; 0 until measured
        self._idle = asyncio.Event()
        self._idle.set()
        for stage in STAGES:
            self._publish(stage)

    @property
    def in_flight(self) -> int:
        return len(self._tickets)

    def count(self, stage: Stage) -> int:
        return self._counts[stage]

    def check(self) -> None:
        """Raise ``Unavailable`` when no new request may enter."""
        if not self.ready:
            raise Unavailable("not_ready", "models are still loading")
        if self.draining:
            raise Unavailable("draining", "the service is shutting down")

    def check_room(self) -> None:
        """``Overloaded`` (with its Retry-After) when every slot and waiting place is held."""
        ahead = self._counts["waiting"] + self._counts["preprocessing"] + self._reserved
        if ahead >= self.max_concurrent + self.max_waiting:
            raise Overloaded(
                f"{self._counts['preprocessing']} requests in preprocessing and "
                f"{self._counts['waiting'] + self._reserved} waiting, "
                f"limits {self.max_concurrent} and {self.max_waiting}",
                retry_after_s=self.retry_after_s(ahead),
            )

    def reserve(self) -> Reservation:
        """A place in line for a request its door has yet to read, or the refusal ``admit`` would give
        now (``Unavailable``, ``Overloaded``)."""
        self.check()
        self.check_room()
        self._reserved += 1
        return Reservation(self)

    def admit(
        self, model: str, queued_faces: int, max_queued_faces: int, reservation: Reservation | None = None
    ) -> Ticket:
        """A ticket for one more request, or ``Overloaded`` (with its Retry-After) if it cannot be taken:
        every slot and waiting place is held (unless ``reservation`` holds its place), or ``model``
        already has ``max_queued_faces`` queued."""
        if reservation is not None:
            reservation.release()  # its place becomes the ticket's, with no await in between
        self.check_room()
        self.check_queue(model, queued_faces, max_queued_faces)
        ticket = Ticket(self)
        self._tickets.add(ticket)
        self._idle.clear()
        self._counts["waiting"] += 1
        self._publish("waiting")
        return ticket

    def check_queue(self, model: str, queued_faces: int, max_queued_faces: int) -> None:
        """``Overloaded`` when ``model``'s queue is full: a request's work would be refused there."""
        if queued_faces >= max_queued_faces:
            raise Overloaded(
                f"model {model}: {queued_faces} faces queued, limit {max_queued_faces}",
                retry_after_s=self.retry_after_s(self._counts["waiting"] + self._counts["preprocessing"]),
            )

    def release(self, ticket: Ticket) -> None:
        """The request has ended: its slot (if it holds one) goes to the next, its thread-pool work stops."""
        ticket.ended.set()
        if ticket not in self._tickets:
            return
        if ticket.stage == "preprocessing":
            self._slots.release()
        self._counts[ticket.stage] -= 1
        self._publish(ticket.stage)
        self._tickets.discard(ticket)
        if not self._tickets:
            self._idle.set()

    def retry_after_s(self, place: int) -> float:
        """When a request ``place`` requests back in line may expect a slot, by the measured rate."""
        return max(MIN_RETRY_AFTER_S, self._service_s * (place + 1) / self.max_concurrent)

    def abort(self) -> int:
        """Cancel the work of every admitted request (``analyze`` answers them ``shutting_down``);
        returns how many."""
        aborted = 0
        for ticket in self._tickets:
            if ticket.work is not None and not ticket.work.done():
                ticket.aborted = True
                ticket.work.cancel()
                aborted += 1
        return aborted

    async def drain(self, grace_s: float) -> bool:
        """Refuse new work, let in-flight requests finish (up to ``grace_s``). True if all finished."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
            return True
        except TimeoutError:
            return False

    def _move(self, ticket: Ticket, stage: Stage) -> None:
        self._counts[ticket.stage] -= 1
        self._publish(ticket.stage)
        ticket.stage = stage
        self._counts[stage] += 1
        self._publish(stage)

    def _slot_done(self, held_s: float) -> None:
        self._slots.release()
        weight = SERVICE_TIME_WEIGHT if self._service_s else 1.0
        self._service_s += weight * (held_s - self._service_s)

    def _publish(self, stage: Stage) -> None:
        if self._gauge is not None:
            self._gauge.labels(stage).set(self._counts[stage])

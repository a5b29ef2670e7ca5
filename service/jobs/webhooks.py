"""Webhooks of asynchronous jobs: signed, delivered with retries and exponential back-off, each
delivery recorded in the job (docs/api.md, "Webhooks").

Wire format (Stripe's scheme, under our header names): when a job finishes (succeeded, failed or
cancelled) its ``callback_url`` gets ``POST`` with the Job document as the JSON body and

  Content-Type: application/json
  Fsfm-Job-Id: <job id>
  Fsfm-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>

``secret`` is the server's ``webhook_secret`` (``FSFM_WEBHOOK_SECRET``). A receiver recomputes the
MAC over the raw body it received and refuses a timestamp older than its tolerance (replays):
``verify_signature`` below, which needs only the standard library, is the reference; the tests'
receiver uses it. A 2xx answer ends the delivery; anything else (another status, a timeout, no
connection) is tried again after ``webhook_backoff_s``, doubled each time, up to
``webhook_max_attempts`` deliveries. Redirects are not followed.

Callback URLs (SSRF): only absolute ``http``/``https`` URLs without credentials; when
``webhook_allowed_hosts`` lists hosts, only those (empty: any host, private addresses included, so
set it on a node that untrusted clients reach).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import httpx

from service.errors import BadInput, public_message
from service.jobs.store import Delivery, Job, now_iso
from service.settings import Settings

SIGNATURE_HEADER = "Fsfm-Signature"
JOB_ID_HEADER = "Fsfm-Job-Id"
USER_AGENT = "fsfm-webhooks/1"
TOLERANCE_S = 300.0  # Stripe's default: a signature older than 5 minutes is refused as a replay
MAX_CALLBACK_URL_CHARS = 2048  # the longest URL browsers and proxies commonly carry


def signature_of(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>." + body`` under ``secret`` (the ``v1`` value)."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``Fsfm-Signature`` header value of ``body``, signed now (or at ``timestamp``)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    return f"t={timestamp},v1={signature_of(secret, timestamp, body)}"


def verify_signature(
    secret: str, body: bytes, header: str, tolerance_s: float = TOLERANCE_S, now: float | None = None
) -> bool:
    """True when the ``Fsfm-Signature`` header signs ``body`` (the raw request body, as received,
    before any JSON parsing) with ``secret``, at a time within ``tolerance_s`` of ``now``. Several
    ``v1`` values are accepted (any matching one), as during a secret rotation."""
    fields = [part.strip().split("=", 1) for part in header.split(",") if "=" in part]
    timestamps = [value for name, value in fields if name == "t"]
    signatures = [value for name, value in fields if name == "v1"]
    if len(timestamps) != 1 or not timestamps[0].isdigit() or not signatures:
        return False
    timestamp = int(timestamps[0])
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = signature_of(secret, timestamp, body)
    return any(hmac.compare_digest(expected, signature) for signature in signatures)


def webhook_secret(settings: Settings) -> str | None:
    """The configured secret, None when there is none (webhooks are then refused)."""
    secret = settings.webhook_secret
    return (secret.get_secret_value() or None) if secret is not None else None


def check_callback(url: str, settings: Settings) -> None:
    """Refuse a ``callback_url`` this server will not call (400): no secret to sign with, not an
    absolute http(s) URL, credentials in it, or a host outside ``webhook_allowed_hosts``."""
    if webhook_secret(settings) is None:
        raise BadInput(
            "webhooks_not_configured",
            "this server has no webhook secret (FSFM_WEBHOOK_SECRET), so it cannot sign webhooks: "
            "submit without callback_url and poll GET /v1/jobs/{id}",
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > MAX_CALLBACK_URL_CHARS:
        raise BadInput(
            "bad_callback_url",
            f"callback_url must be an absolute http(s) URL of at most {MAX_CALLBACK_URL_CHARS} characters",
        )
    if parts.username is not None or parts.password is not None:
        raise BadInput("bad_callback_url", "callback_url must not carry credentials: verify the signature instead")
    allowed = {host.lower() for host in settings.webhook_allowed_hosts}
    if allowed and parts.hostname.lower() not in allowed:
        message = f"callback_url's host {parts.hostname!r} is not among this server's webhook_allowed_hosts"
        raise BadInput("callback_host_not_allowed", message)


Record = Callable[[Delivery], Awaitable[Job | None]]  # store a delivery in the job; the job as stored, None if gone


class WebhookSender:
    """Delivers finished jobs to their ``callback_url`` (one HTTP client for all)."""

    def __init__(self, secret: str, settings: Settings) -> None:
        self.secret = secret
        self.max_attempts = settings.webhook_max_attempts
        self.backoff_s = settings.webhook_backoff_s
        self._client = httpx.AsyncClient(
            timeout=settings.webhook_timeout_s,
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": USER_AGENT},
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def deliver(self, job: Job, record: Record) -> None:
        """POST ``job`` until a receiver answers 2xx or the attempts run out; each delivery is recorded
        (``record``), and each attempt carries the job as it is then (with the deliveries before it)."""
        for attempt in range(1, self.max_attempts + 1):
            assert job.webhook is not None
            delivery = await self._send(job, attempt)
            stored = await record(delivery)
            if delivery.error is None or stored is None:
                return
            job = stored
            if attempt < self.max_attempts:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))

    async def _send(self, job: Job, attempt: int) -> Delivery:
        assert job.webhook is not None
        body = job.model_dump_json().encode()
        headers = {
            "Content-Type": "application/json",
            JOB_ID_HEADER: job.job_id,
            SIGNATURE_HEADER: sign(self.secret, body),
        }
        at = now_iso()
        try:
            response = await self._client.post(job.webhook.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            error = public_message(f"{type(exc).__name__}: {exc}") or type(exc).__name__
            return Delivery(attempt=attempt, at=at, status_code=None, error=error)
        error = None if response.is_success else f"the receiver answered {response.status_code}"
        return Delivery(attempt=attempt, at=at, status_code=response.status_code, error=error)

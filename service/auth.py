"""API keys: the one check both doors use (REST: the ``x-api-key`` header, as a router dependency;
gRPC: the ``x-api-key`` metadata, in a server interceptor).

Every configured key is compared, each in constant time (``hmac.compare_digest``), so the answer's
timing does not tell which key, or how much of one, matched. See docs/api.md, "Security".
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from service.errors import Unauthorized

API_KEY_HEADER = "x-api-key"


class ApiKeys:
    def __init__(self, keys: Sequence[str]) -> None:
        self._accepted = [key.encode() for key in keys]

    def __bool__(self) -> bool:
        """True when keys are configured (and so required)."""
        return bool(self._accepted)

    def check(self, key: str | None, carrier: str) -> None:
        """Raise ``Unauthorized`` unless ``key`` is accepted; ``carrier`` names where clients send it
        (e.g. "header", "metadata"), for the message."""
        if key is None:
            raise Unauthorized("missing_api_key", f"send an API key in the {API_KEY_HEADER} {carrier}")
        matched = False
        for candidate in self._accepted:  # every key compared, each in constant time
            matched |= hmac.compare_digest(key.encode(), candidate)
        if not matched:
            raise Unauthorized("invalid_api_key", f"the {API_KEY_HEADER} {carrier} does not hold an accepted key")

"""One router per resource: ``analysis`` (``POST /v1/{task}``), ``jobs`` (``/v1/jobs``), ``models``
(``GET /v1/models``), ``operations`` (``/healthz``, ``/readyz``, ``/metrics``); ``service/rest/app.py``
gathers them."""

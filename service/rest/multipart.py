"""The upload: a multipart/form-data body read as a stream with a byte limit, kept in memory (never
on disk), with exactly one ``file`` part (the media) and short parameter fields.

The declared ``Content-Length`` is checked first and the received bytes are counted as they arrive,
so an oversized body is refused (413 ``body_too_large``) without being buffered. The parser (pure
Python) never runs on the event loop: the chunks are handed to it on a thread, ``PARSE_BATCH_BYTES``
at a time, so the REST and gRPC requests that share the loop (and ``/livez``) are not held up by a
slow body. A body is refused at its ``MAX_PARTS + 1``-th part or at a part whose headers pass
``MAX_PART_HEADER_BYTES``, before the rest is parsed. Failures: ``not_multipart`` (415),
``bad_multipart`` (400), ``missing_file``, ``several_files``, ``bad_form_field``, ``too_many_parts``
(422).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from service.errors import BadInput, InvalidRequest, TooLarge, UnsupportedMedia

UPLOAD_FIELD = "file"
MAX_FORM_FIELD_BYTES = 1024  # the parameters are short strings; only ``file`` carries data
MAX_PARTS = 16  # the file and the parameters (six today) with room to spare; more is a hostile body
MAX_PART_HEADER_BYTES = 8192  # a part's header names and values together; real parts have two short headers
PARSE_BATCH_BYTES = 1 << 20  # received bytes handed to the parser's thread at once


@dataclass
class Upload:
    data: bytes
    fields: dict[str, str]


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)

    @property
    def name(self) -> str | None:
        kind, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = options.get(b"name") if kind == b"form-data" else None
        return name.decode("utf-8", "replace") if name is not None else None


class _MultipartForm:
    """A multipart/form-data body collected in memory, part by part, as its chunks arrive."""

    def __init__(self, boundary: bytes) -> None:
        self.parts: list[_Part] = []
        self.complete = False
        self._field = bytearray()
        self._value = bytearray()
        self._header_bytes = 0
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": lambda data, start, end: self._header(self._field, data[start:end]),
                "on_header_value": lambda data, start, end: self._header(self._value, data[start:end]),
                "on_header_end": self._header_end,
                "on_part_data": lambda data, start, end: self.parts[-1].data.extend(data[start:end]),
                "on_end": self._end,
            },
        )

    def _part_begin(self) -> None:
        if len(self.parts) == MAX_PARTS:
            raise InvalidRequest("too_many_parts", f"the multipart body has more than {MAX_PARTS} parts")
        self.parts.append(_Part())
        self._header_bytes = 0

    def _header(self, into: bytearray, data: bytes) -> None:
        self._header_bytes += len(data)
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise BadInput("bad_multipart", f"a part's headers exceed {MAX_PART_HEADER_BYTES} bytes")
        into.extend(data)

    def _header_end(self) -> None:
        self.parts[-1].headers[bytes(self._field).lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def _end(self) -> None:
        self.complete = True

    def write(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise BadInput("bad_multipart", f"malformed multipart body: {exc}") from None


async def read_upload(request: Request, max_bytes: int) -> Upload:
    """The multipart body's ``file`` and parameter fields, refused as soon as it passes ``max_bytes``."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise UnsupportedMedia(
            "not_multipart", f"send multipart/form-data with the image or video in the field {UPLOAD_FIELD!r}"
        )
    declared = request.headers.get("content-length", "")
    too_large = TooLarge("body_too_large", f"the request body exceeds {max_bytes} bytes")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    form = _MultipartForm(options[b"boundary"])
    received = 0
    batch = bytearray()
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise too_large
        batch += chunk
        if len(batch) >= PARSE_BATCH_BYTES:
            await asyncio.to_thread(form.write, bytes(batch))
            batch.clear()
    if batch:
        await asyncio.to_thread(form.write, bytes(batch))
    if not form.complete:
        raise BadInput("bad_multipart", "the multipart body ends before its closing boundary")
    return _form_upload(form.parts)


def _form_upload(parts: list[_Part]) -> Upload:
    names = [part.name for part in parts]
    files = [part for part in parts if part.name == UPLOAD_FIELD]
    if len(files) != 1:
        got = "several" if files else f"got fields: {names}"
        raise InvalidRequest(
            "missing_file" if not files else "several_files",
            f"upload exactly one image or video in the multipart field {UPLOAD_FIELD!r}; {got}",
        )
    fields: dict[str, str] = {}
    for part in parts:
        if part.name == UPLOAD_FIELD:
            continue
        if part.name is None or part.name in fields or len(part.data) > MAX_FORM_FIELD_BYTES:
            raise InvalidRequest("bad_form_field", f"form field {part.name!r} is unnamed, repeated or too long")
        fields[part.name] = part.data.decode("utf-8", "replace")
    return Upload(bytes(files[0].data), fields)

"""A model repository served over HTTP on loopback the way the Hugging Face Hub serves one, for ``fsfm pull``
tests through the real ``huggingface_hub`` client (``HF_ENDPOINT``): a folder the test writes is the repository.

Routes (the ones the client uses to list a folder and download files):

* ``GET /api/models/<owner>/<name>/tree/<revision>[/<path>]?recursive=...``: the files below ``path`` (all
  levels when recursive, else one), folders as ``directory`` entries; checkpoints (``.pth``, ``.tar``) are
  LFS files, listed with their SHA-256;
* ``HEAD``/``GET /<owner>/<name>/resolve/<revision>/<path>``: the file, with the commit, ETag (the SHA-256
  for LFS files, as the Hub) and size headers;
* unknown repositories, revisions or paths: 404 with the Hub's ``X-Error-Code``.

``tamper`` serves other bytes for one path than the listing describes, to test verification.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_SUFFIXES = (".pth", ".tar")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entry(root: Path, path: Path) -> dict:
    relative = path.relative_to(root).as_posix()
    if path.is_dir():
        return {"type": "directory", "oid": _sha256(relative.encode())[:40], "path": relative}
    data = path.read_bytes()
    entry = {"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": relative}
    if path.name.endswith(LFS_SUFFIXES):
        entry["lfs"] = {"oid": _sha256(data), "size": len(data), "pointerSize": 134}
    return entry


class _Handler(BaseHTTPRequestHandler):
    server: _HubServer

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _not_found(self, code: str) -> None:
        body = json.dumps({"error": code}).encode()
        self.send_response(404)
        self.send_header("X-Error-Code", code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _repo(self, parts: list[str]) -> tuple[str, list[str]] | None:
        repo_id = "/".join(parts[:2])
        return (repo_id, parts[2:]) if repo_id == self.server.repo_id else None

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._serve()

    def do_GET(self) -> None:  # noqa: N802
        self._serve()

    def _serve(self) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        if parts[:2] == ["api", "models"]:
            found = self._repo(parts[2:])
            if found is None or found[1][:1] != ["tree"]:
                return self._not_found("RepoNotFound")
            rest = found[1][1:]
            if rest[:1] != ["main"] and rest[:1] != [COMMIT]:
                return self._not_found("RevisionNotFound")
            folder = self.server.root.joinpath(*"/".join(rest[1:]).split("/")) if rest[1:] else self.server.root
            if not folder.is_dir():
                return self._not_found("EntryNotFound")
            recursive = parse_qs(url.query).get("recursive", ["False"])[0].lower() == "true"
            children = sorted(folder.rglob("*") if recursive else folder.iterdir())
            body = json.dumps([_entry(self.server.root, p) for p in children]).encode()
            return self._send(body, {"Content-Type": "application/json"})
        found = self._repo(parts)
        if found is None or found[1][:1] != ["resolve"]:
            return self._not_found("RepoNotFound")
        revision, relative = found[1][1], "/".join(found[1][2:])
        if revision not in ("main", COMMIT):
            return self._not_found("RevisionNotFound")
        path = self.server.root / relative
        if not path.is_file():
            return self._not_found("EntryNotFound")
        data = path.read_bytes()
        headers = {"X-Repo-Commit": COMMIT, "Content-Type": "application/octet-stream"}
        if path.name.endswith(LFS_SUFFIXES):
            headers |= {"X-Linked-Etag": f'"{_sha256(data)}"', "X-Linked-Size": str(len(data))}
        headers["ETag"] = f'"{_sha256(data)}"'
        self._send(self.server.tamper.get(relative, data), headers)

    def _send(self, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _HubServer(ThreadingHTTPServer):
    def __init__(self, root: Path, repo_id: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root, self.repo_id = root, repo_id
        self.tamper: dict[str, bytes] = {}


@contextmanager
def hub_server(root: Path, repo_id: str) -> Iterator[_HubServer]:
    """Serve ``root`` as the model repository ``repo_id`` on ``http://127.0.0.1:<port>`` (``server.url``)."""
    server = _HubServer(root, repo_id)
    server.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()

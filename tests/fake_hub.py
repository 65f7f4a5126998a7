"""A model hub on 127.0.0.1 that speaks the part of the Hugging Face Hub's HTTP API that
huggingface_hub uses to mirror a repository (both the legacy 0.16 client and 2.x): repository
info by revision, the file tree, and file downloads with the headers that name the commit.

Point the client at it with HF_ENDPOINT (read when huggingface_hub is imported: run the
client in a subprocess).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Repo:
    refs: dict[str, str]  # branch or tag -> commit
    commits: dict[str, dict[str, bytes]]  # commit -> file name -> bytes

    def resolve(self, revision: str) -> tuple[str, dict[str, bytes]] | None:
        commit = self.refs.get(revision, revision)
        files = self.commits.get(commit)
        return None if files is None else (commit, files)


@dataclass
class Hub:
    repos: dict[str, Repo]
    url: str = ""
    requests: list[tuple[str, str]] = field(default_factory=list)


def _handler(hub: Hub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, value: object) -> None:
            self._send(200, json.dumps(value).encode(), {"Content-Type": "application/json"})

        def _missing(self, code: str) -> None:
            self._send(404, b"{}", {"Content-Type": "application/json", "X-Error-Code": code})

        def _lookup(self, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
            repo = hub.repos.get(repo_id)
            return None if repo is None else repo.resolve(revision)

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            hub.requests.append((self.command, self.path))
            path = self.path.split("?", 1)[0]
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
                found = self._lookup(m.group(1), m.group(2) or "main")
                if found is None:
                    return self._missing("RevisionNotFound")
                commit, files = found
                return self._json(
                    {
                        "id": m.group(1),
                        "modelId": m.group(1),
                        "sha": commit,
                        "private": False,
                        "siblings": [{"rfilename": name} for name in sorted(files)],
                    }
                )
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)", path):
                found = self._lookup(m.group(1), m.group(2))
                if found is None:
                    return self._missing("RevisionNotFound")
                return self._json(
                    [
                        {
                            "type": "file",
                            "path": name,
                            "size": len(data),
                            "oid": hashlib.sha1(data, usedforsecurity=False).hexdigest(),
                        }
                        for name, data in sorted(found[1].items())
                    ]
                )
            if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                found = self._lookup(m.group(1), m.group(2))
                if found is None or m.group(3) not in found[1]:
                    return self._missing("EntryNotFound")
                data = found[1][m.group(3)]
                etag = f'"{hashlib.sha256(data).hexdigest()}"'
                return self._send(
                    200,
                    data,
                    {
                        "X-Repo-Commit": found[0],
                        "ETag": etag,
                        "Content-Type": "application/octet-stream",
                    },
                )
            return self._missing("NotFound")

    return Handler


@contextmanager
def serving_hub(repos: dict[str, Repo]) -> Iterator[Hub]:
    hub = Hub(repos)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.daemon = True
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()

"""A local HTTP server for download tests: Range requests, scripted failures, a request log.

Tests start it on 127.0.0.1 (nothing else is reachable from a test machine) with the bytes it
serves; it behaves like a real file server, resumes included.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ARCHIVE_PATH = "/archive/master.zip"


@dataclass
class Server:
    files: dict[str, bytes]
    base: str = ""
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    cut_after: int | None = None  # first response: send this many body bytes, then hang up
    stall_s: float = 0.0  # first response: send some bytes, then go silent this long
    fail_status: int | None = None  # every response
    honor_range: bool = True

    def url(self, path: str = ARCHIVE_PATH) -> str:
        return self.base + path


def make_handler(state: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            state.requests.append((self.path, self.headers.get("Range")))
            first = len(state.requests) == 1
            if state.fail_status is not None:
                self.send_error(state.fail_status)
                return
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            start = self._start(data)
            if start is None:
                return
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if first and state.cut_after is not None:
                self.wfile.write(body[: state.cut_after])
                self.close_connection = True
            elif first and state.stall_s:
                self.wfile.write(body[:1000])
                self.wfile.flush()
                time.sleep(state.stall_s)
                self.close_connection = True
            else:
                self.wfile.write(body)

        def _start(self, data: bytes) -> int | None:
            """Send the status line; return where the body starts, None when already done."""
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if not (match and state.honor_range):
                self.send_response(200)
                return 0
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            return start

    return Handler


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the client hanging up mid-body is what some tests are about


@contextmanager
def serving(files: dict[str, bytes]) -> Iterator[Server]:
    """A server on a free port of 127.0.0.1 for the length of the block."""
    state = Server(files=files)
    httpd = QuietServer(("127.0.0.1", 0), make_handler(state))
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02})
    thread.daemon = True
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()

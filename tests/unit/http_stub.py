"""A loopback JSON HTTP server for unit tests that stand in for an HTTP API.

`JsonHttpStub` listens on 127.0.0.1 (a free port) in a daemon thread and sends every request,
whatever its method, to `handle(method, path, headers, body)`: `body` is the request's JSON
(None without one), and the answer is `(code, body)` or `(code, body, extra_headers)`, sent as
JSON with Content-Length set. Subclasses override `handle`, or a callable is passed in.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Handle = Callable[[str, str, Any, Any], tuple]


class JsonHttpStub:
    def __init__(self, handle: Handle | None = None, *, start: bool = True):
        if handle is not None:
            self.handle = handle  # type: ignore[method-assign]
        self.calls: list[tuple[str, str, Any]] = []  # (method, path, JSON body) as received
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _dispatch(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                stub.calls.append((self.command, self.path, body))
                code, answer, *extra = stub.handle(self.command, self.path, self.headers, body)
                data = json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (extra[0] if extra else {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _dispatch

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        if start:
            self.thread.start()

    def handle(self, method: str, path: str, headers, body) -> tuple:
        return 404, {"error": path}

    def start(self) -> None:
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

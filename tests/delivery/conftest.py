"""Delivery test helpers: fast backoffs, and fake provider servers on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from requests.structures import CaseInsensitiveDict


@pytest.fixture(autouse=True)
def _fast_backoff(settings: Any) -> None:
    """Real backoff logic, millisecond scale: retries sleep inline instead of seconds."""
    settings.CLARION_DELIVERY = {"BACKOFF_BASE": 0.01, "BACKOFF_MAX": 0.05, "INLINE_WAIT_MAX": 1.0}


@dataclass
class Reply:
    status: int = 200
    body: Any = field(default_factory=lambda: {"id": "ok"})
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to sleep before answering (a timeout, when longer than the client's)
    drop: bool = False  # read the request, then close the connection without answering


@dataclass
class Received:
    path: str
    headers: CaseInsensitiveDict[str]
    body: bytes
    received_at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body)


class FakeServer:
    """An HTTP server on 127.0.0.1 answering each POST with the next scripted reply.

    ``replies`` is consumed in order; the last one repeats. ``handler`` (if given) computes the
    reply from the request instead.
    """

    def __init__(self, replies: list[Reply] | None = None, handler: Callable[[Received], Reply] | None = None) -> None:
        self.replies = list(replies or [Reply()])
        self.handler = handler
        self.requests: list[Received] = []
        self.connections = 0  # TCP connections accepted (one handler per connection, kept alive)
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: without this, a kept-alive connection waits
            # for the client's delayed ACK (40 ms) on every answer.
            disable_nagle_algorithm = True

            def setup(self) -> None:
                super().setup()
                with outer._lock:
                    outer.connections += 1

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received = Received(self.path, CaseInsensitiveDict(self.headers.items()), body)
                with outer._lock:
                    outer.requests.append(received)
                    if outer.handler is not None:
                        reply = outer.handler(received)
                    else:
                        reply = outer.replies.pop(0) if len(outer.replies) > 1 else outer.replies[0]
                if reply.drop:
                    self.close_connection = True
                    return
                if reply.delay:
                    time.sleep(reply.delay)
                data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_server() -> Iterator[Callable[..., FakeServer]]:
    servers: list[FakeServer] = []

    def make(replies: list[Reply] | None = None, handler: Callable[[Received], Reply] | None = None) -> FakeServer:
        server = FakeServer(replies, handler)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()

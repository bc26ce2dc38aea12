"""A fake ESP speaking Postmark's send API on loopback, recording every request to SQLite.

``python -m bench.chaos.fake_esp --name primary --port 8391 --log esp.sqlite3 --max-seconds 1200``

Clarion's ``postmark`` integration (Anymail) posts ``POST /email`` with the message as JSON; the
``X-Clarion-Message-Id`` header rides in the body's ``Headers`` list and the id again in
``Metadata.clarion_message_id``. Each request is written to the ``requests`` table (time, mode,
outcome, HTTP status answered, Clarion message id, idempotency key if the client sent one).

Modes, switched with ``POST /_chaos/mode {"mode": ..., "hang_seconds": 5, "retry_after": 3}``:

* ``ok``: 200 and a Postmark answer (outcome ``accepted``);
* ``hang``: the message is taken (outcome ``accepted_late``: a real ESP would send it) but the
  answer comes only after ``hang_seconds``, past the client's timeout: the in-doubt case;
* ``error``: 500 (outcome ``rejected_500``), nothing sent;
* ``ratelimit``: 429 with ``Retry-After`` (outcome ``rejected_429``), nothing sent.

It binds 127.0.0.1 only and exits by itself after ``--max-seconds`` (or on SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MODES = ("ok", "hang", "error", "ratelimit")
ACCEPTED_OUTCOMES = ("accepted", "accepted_late")

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    server TEXT NOT NULL,
    at REAL NOT NULL,
    path TEXT NOT NULL,
    mode TEXT NOT NULL,
    outcome TEXT NOT NULL,
    status INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    recipient TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS modes (at REAL NOT NULL, mode TEXT NOT NULL, detail TEXT NOT NULL);
"""


class Recorder:
    """One SQLite connection shared by the handler threads behind a lock (writes are tiny)."""

    def __init__(self, path: Path, server: str) -> None:
        self.server = server
        self.lock = threading.Lock()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)

    def request(self, **row: Any) -> None:
        with self.lock:
            self.db.execute(
                "INSERT INTO requests (server, at, path, mode, outcome, status, message_id, idempotency_key, recipient)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self.server,
                    time.time(),
                    row["path"],
                    row["mode"],
                    row["outcome"],
                    row["status"],
                    row["message_id"],
                    row["idempotency_key"],
                    row["recipient"],
                ),
            )

    def mode(self, mode: str, detail: dict[str, Any]) -> None:
        with self.lock:
            self.db.execute("INSERT INTO modes VALUES (?, ?, ?)", (time.time(), mode, json.dumps(detail)))


class State:
    def __init__(self) -> None:
        self.mode = "ok"
        self.hang_seconds = 5.0
        self.retry_after = 3


def _message_id(body: dict[str, Any]) -> str:
    for header in body.get("Headers") or []:
        if isinstance(header, dict) and str(header.get("Name", "")).lower() == "x-clarion-message-id":
            return str(header.get("Value", ""))
    metadata = body.get("Metadata") or {}
    return str(metadata.get("clarion_message_id", "")) if isinstance(metadata, dict) else ""


def _idempotency_key(headers: Any, body: dict[str, Any]) -> str:
    for name in ("Idempotency-Key", "X-Idempotency-Key"):
        if headers.get(name):
            return str(headers[name])
    for header in body.get("Headers") or []:
        if isinstance(header, dict) and str(header.get("Name", "")).lower() in ("idempotency-key", "x-idempotency-key"):
            return str(header.get("Value", ""))
    return ""


def make_handler(state: State, recorder: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body are two writes: on a kept-alive connection (delivery batches reuse one)
        # Nagle would hold the body until the client's delayed ACK, 40 ms per answer.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # the SQLite log is the record
            return

        def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting (the hang mode's point)

        def _body(self) -> dict[str, Any]:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                parsed = json.loads(raw or b"{}")
            except ValueError:
                return {}
            return parsed if isinstance(parsed, dict) else {}

        def do_GET(self) -> None:
            if self.path == "/_chaos/health":
                self._reply(200, {"mode": state.mode})
            else:
                self._reply(404, {"ErrorCode": 404, "Message": "not found"})

        def do_POST(self) -> None:
            body = self._body()
            if self.path == "/_chaos/mode":
                mode = str(body.get("mode", ""))
                if mode not in MODES:
                    self._reply(400, {"error": f"mode must be one of {MODES}"})
                    return
                state.mode = mode
                state.hang_seconds = float(body.get("hang_seconds", state.hang_seconds))
                state.retry_after = int(body.get("retry_after", state.retry_after))
                recorder.mode(mode, {"hang_seconds": state.hang_seconds, "retry_after": state.retry_after})
                self._reply(200, {"mode": mode})
                return
            if self.path.rstrip("/") not in ("/email", "/email/batch"):
                self._reply(404, {"ErrorCode": 404, "Message": f"unknown path {self.path}"})
                return
            mode, hang, retry_after = state.mode, state.hang_seconds, state.retry_after
            to = str(body.get("To", ""))
            row = {
                "path": self.path,
                "mode": mode,
                "message_id": _message_id(body),
                "idempotency_key": _idempotency_key(self.headers, body),
                "recipient": to,
            }
            if mode == "error":
                recorder.request(**row, outcome="rejected_500", status=500)
                self._reply(500, {"ErrorCode": 500, "Message": "Internal server error (chaos)"})
                return
            if mode == "ratelimit":
                recorder.request(**row, outcome="rejected_429", status=429)
                self._reply(
                    429,
                    {"ErrorCode": 429, "Message": "Rate limit exceeded (chaos)"},
                    headers={"Retry-After": str(retry_after)},
                )
                return
            outcome = "accepted_late" if mode == "hang" else "accepted"
            recorder.request(**row, outcome=outcome, status=200)
            if mode == "hang":
                time.sleep(hang)
            self._reply(
                200,
                {
                    "To": to,
                    "SubmittedAt": datetime.now(UTC).isoformat(),
                    "MessageID": str(uuid.uuid4()),
                    "ErrorCode": 0,
                    "Message": "OK",
                },
            )

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos.fake_esp")
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    args = parser.parse_args(argv)

    state = State()
    recorder = Recorder(args.log, args.name)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(state, recorder))
    server.daemon_threads = True

    def stop(*_: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    timer = threading.Timer(args.max_seconds, stop)
    timer.daemon = True
    timer.start()
    print(f"fake ESP {args.name} listening on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

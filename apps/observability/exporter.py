"""The metrics of a worker host that runs no web process: ``clarion_worker`` serves the same text as
``GET /metrics`` on ``CLARION_METRICS_ADDRESS:CLARION_METRICS_PORT`` (same token and allow-list)
from a thread beside the ticker. With ``PROMETHEUS_MULTIPROC_DIR`` set, that includes every
django-q2 worker process of the cluster (they write their values to the directory)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from django.conf import settings
from django.db import close_old_connections
from prometheus_client import CONTENT_TYPE_LATEST

from apps.observability.access import metrics_access
from apps.observability.exposition import render

logger = logging.getLogger(__name__)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # one line per scrape is noise
        return


def metrics_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    refused = metrics_access(environ.get("REMOTE_ADDR", ""), environ.get("HTTP_AUTHORIZATION", ""))
    if refused is not None:
        status = "401 Unauthorized" if refused == 401 else "403 Forbidden"
        start_response(status, [("Content-Type", "text/plain"), ("WWW-Authenticate", 'Bearer realm="metrics"')])
        return [status.encode() + b"\n"]
    try:
        body = render()
    finally:
        close_old_connections()  # this thread's connection goes back (or away) after every scrape
    start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
    return [body]


def exporter_start(port: int | None = None, address: str | None = None) -> WSGIServer | None:
    """Serve the metrics in a daemon thread when ``CLARION_METRICS_PORT`` is set; None otherwise or
    when the port is taken (logged: the worker runs on without its exporter)."""
    port = settings.METRICS_WORKER_PORT if port is None else port
    if not port:
        return None
    address = address or settings.METRICS_WORKER_ADDRESS
    try:
        server = make_server(address, port, metrics_app, handler_class=_QuietHandler)
    except OSError:
        logger.warning("metrics exporter: cannot listen on %s:%s; running without it", address, port, exc_info=True)
        return None
    threading.Thread(target=server.serve_forever, name="clarion-metrics", daemon=True).start()
    logger.info("metrics exporter listening on %s:%s", address, server.server_port)
    return server

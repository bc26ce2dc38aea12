"""HTTP through ``config.asgi.application`` (what uvicorn serves): Django's WSGI handler on a
fixed pool of threads, so what is thread-local (database connections, cache clients) outlives a
request instead of being rebuilt for each one."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import wait
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator
from channels.db import database_sync_to_async
from channels.testing import HttpCommunicator
from django.conf import settings
from django.core.signals import request_started
from django.db import connections

from apps.events.models import Event
from config.asgi import application, http_application
from tests.conftest import Tenant
from tests.workflows.conftest import comment_workflow  # noqa: F401

# Every test may meet a request thread that kept a database connection from an earlier one
# (SQLite's in-memory test database is never closed), so every test may use the database.
pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def request_threads() -> Iterator[list[int]]:
    seen: list[int] = []

    def record(**_: Any) -> None:
        seen.append(threading.get_ident())

    request_started.connect(record, dispatch_uid="test-asgi-threads")
    yield seen
    request_started.disconnect(dispatch_uid="test-asgi-threads")


@pytest.fixture(autouse=True)
def close_request_thread_connections() -> Iterator[None]:
    """The request threads outlive the test: close the database connections they opened in it."""
    yield
    executor = http_application.executor
    workers = executor._max_workers
    barrier = threading.Barrier(workers)

    def close() -> None:
        connections.close_all()
        barrier.wait(timeout=10)  # all tasks at once: one on each thread

    wait([executor.submit(close) for _ in range(workers)], timeout=20)


async def _request(method: str, path: str, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    communicator = HttpCommunicator(application, method, path, body=body, headers=headers or [])
    return await communicator.get_response(timeout=10)


async def test_requests_run_on_a_bounded_set_of_long_lived_threads(request_threads: list[int]) -> None:
    for _ in range(3 * settings.WEB_THREADS):
        response = await _request("GET", "/healthz")
        assert response["status"] == 200
    assert len(request_threads) == 3 * settings.WEB_THREADS
    # Django's own ASGI handler started a new thread for every request (30 distinct here).
    assert len(set(request_threads)) <= settings.WEB_THREADS
    assert threading.get_ident() not in request_threads  # never on the event loop's thread


@pytest.mark.usefixtures("comment_workflow")
async def test_a_trigger_through_the_asgi_entry_point_is_accepted_and_stored(tenant: Tenant) -> None:
    body = json.dumps({"workflow": "comment-created", "to": ["ada"], "payload": {"post_title": "é"}}).encode()
    response = await _request(
        "POST",
        "/api/v1/events/trigger",
        body=body,
        headers=[(b"authorization", f"Bearer {tenant.secret_key}".encode()), (b"content-type", b"application/json")],
    )
    assert response["status"] == 202, response["body"][:500]
    transaction_id = json.loads(response["body"])["transaction_id"]
    stored = await database_sync_to_async(Event.objects.get)(transaction_id=transaction_id)
    assert stored.payload == {"post_title": "é"}
    assert stored.environment_id == tenant.environment.pk


async def test_hostile_bytes_in_the_path_get_a_clear_400_not_a_500() -> None:
    response = await _request("GET", "/api/v1/subscribers/%00%ff")
    assert response["status"] in (400, 401, 404)


@pytest.mark.usefixtures("comment_workflow")
async def test_a_chunked_body_without_content_length_reaches_the_view(tenant: Tenant) -> None:
    body = json.dumps({"workflow": "comment-created", "to": ["ada"], "payload": {"post_title": "chunked"}}).encode()
    communicator = ApplicationCommunicator(
        application,
        {
            "type": "http",
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/api/v1/events/trigger",
            "raw_path": b"/api/v1/events/trigger",
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"testserver"),
                (b"authorization", f"Bearer {tenant.secret_key}".encode()),
                (b"content-type", b"application/json"),
                (b"transfer-encoding", b"chunked"),
            ],
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 80),
        },
    )
    for start in range(0, len(body), 7):
        piece = body[start : start + 7]
        await communicator.send_input({"type": "http.request", "body": piece, "more_body": start + 7 < len(body)})
    start_message = await communicator.receive_output(10)
    assert start_message["status"] == 202
    await communicator.wait(10)
    assert await database_sync_to_async(Event.objects.filter(payload__post_title="chunked").count)() == 1


async def test_an_oversized_chunked_body_is_refused_with_413_in_the_envelope(settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    communicator = ApplicationCommunicator(
        application,
        {
            "type": "http",
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/api/v1/events/bulk",
            "raw_path": b"/api/v1/events/bulk",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"testserver"), (b"transfer-encoding", b"chunked")],
        },
    )
    chunk = b"x" * 16384
    for _ in range(6):
        await communicator.send_input({"type": "http.request", "body": chunk, "more_body": True})
    start_message = await communicator.receive_output(10)
    body_message = await communicator.receive_output(10)
    assert start_message["status"] == 413
    assert json.loads(body_message["body"])["error"]["code"] == "request_too_large", body_message

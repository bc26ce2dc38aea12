"""HTTP through ``config.asgi`` (what uvicorn serves). By default Django's ASGI handler; with
``WEB_HTTP_THREADS`` (API-only web processes) Django's WSGI handler on a fixed pool of threads, so
what is thread-local (database connections, cache clients) outlives a request instead of being
rebuilt for each one."""

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
from django.core.signals import request_started
from django.db import connections

from apps.events.models import Event
from config.asgi import application, django_asgi_app, http_application
from tests.conftest import Tenant
from tests.workflows.conftest import comment_workflow  # noqa: F401

# Every test may meet a request thread that kept a database connection from an earlier one
# (SQLite's in-memory test database is never closed), so every test may use the database.
pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]

THREADS = 4
threaded = http_application(THREADS)


@pytest.fixture(autouse=True)
def close_request_thread_connections() -> Iterator[None]:
    """The request threads outlive the test: close the database connections they opened in it."""
    yield
    executor = threaded.app.executor
    barrier = threading.Barrier(THREADS)

    def close() -> None:
        connections.close_all()
        barrier.wait(timeout=10)  # all tasks at once: one on each thread

    wait([executor.submit(close) for _ in range(THREADS)], timeout=20)


@pytest.fixture
def request_threads() -> Iterator[list[int]]:
    seen: list[int] = []

    def record(**_: Any) -> None:
        seen.append(threading.get_ident())

    request_started.connect(record, dispatch_uid="test-asgi-threads")
    yield seen
    request_started.disconnect(dispatch_uid="test-asgi-threads")


async def _request(
    app: Any, method: str, path: str, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None
) -> Any:
    communicator = HttpCommunicator(app, method, path, body=body, headers=headers or [])
    return await communicator.get_response(timeout=10)


def _scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
    }


async def test_by_default_http_goes_through_djangos_asgi_handler() -> None:
    assert http_application(0) is django_asgi_app
    response = await _request(application, "GET", "/healthz")
    assert response["status"] == 200


async def test_threaded_requests_run_on_a_bounded_set_of_long_lived_threads(request_threads: list[int]) -> None:
    for _ in range(3 * THREADS):
        response = await _request(threaded, "GET", "/healthz")
        assert response["status"] == 200
    assert len(request_threads) == 3 * THREADS
    # Django's own ASGI handler starts a new thread for every request (12 distinct here).
    assert len(set(request_threads)) <= THREADS
    assert threading.get_ident() not in request_threads  # never on the event loop's thread


@pytest.mark.usefixtures("comment_workflow")
async def test_a_trigger_through_the_threaded_mode_is_accepted_and_stored(tenant: Tenant) -> None:
    body = json.dumps({"workflow": "comment-created", "to": ["ada"], "payload": {"post_title": "é"}}).encode()
    response = await _request(
        threaded,
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


@pytest.mark.parametrize("app", [application, threaded], ids=["default", "threaded"])
async def test_hostile_bytes_in_the_path_get_a_clear_4xx_not_a_500(app: Any) -> None:
    response = await _request(app, "GET", "/api/v1/subscribers/%00%ff")
    assert response["status"] in (400, 401, 404)


@pytest.mark.usefixtures("comment_workflow")
async def test_a_chunked_body_without_content_length_reaches_the_view(tenant: Tenant) -> None:
    body = json.dumps({"workflow": "comment-created", "to": ["ada"], "payload": {"post_title": "chunked"}}).encode()
    headers = [
        (b"authorization", f"Bearer {tenant.secret_key}".encode()),
        (b"content-type", b"application/json"),
        (b"transfer-encoding", b"chunked"),
    ]
    communicator = ApplicationCommunicator(threaded, _scope("/api/v1/events/trigger", headers))
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
        threaded, _scope("/api/v1/events/bulk", [(b"transfer-encoding", b"chunked")])
    )
    chunk = b"x" * 16384
    for _ in range(6):
        await communicator.send_input({"type": "http.request", "body": chunk, "more_body": True})
    start_message = await communicator.receive_output(10)
    body_message = await communicator.receive_output(10)
    assert start_message["status"] == 413
    assert json.loads(body_message["body"])["error"]["code"] == "request_too_large"

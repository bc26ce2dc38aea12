"""One slow request does not hold up the others: while a template preview renders until its time
limit, ``GET /api/v1/subscribers`` keeps being answered by the same uvicorn process.

No wall-clock assertion: the test records the order in which requests complete."""

from __future__ import annotations

import threading

import httpx
import pytest

from tests.system.conftest import ClarionSystem

pytestmark = pytest.mark.system

# Renders until the sandbox's 2 s limit stops it (an empty loop body still checks the deadline).
SLOW = "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}"
MAX_QUICK_REQUESTS = 200


def test_a_request_rendering_at_its_limit_does_not_block_other_requests(clarion_system: ClarionSystem) -> None:
    system = clarion_system
    created = system.api("PUT", "/api/v1/templates/slow-preview", {"channel": "in_app", "name": "Slow"})
    assert created.status_code in (200, 201), created.text
    headers = {"Authorization": f"Bearer {system.secret_key}"}

    order: list[str] = []
    slow_done = threading.Event()
    slow_response: list[httpx.Response] = []

    def slow_preview() -> None:
        with httpx.Client(base_url=system.base_url, headers=headers, timeout=30) as client:
            try:
                slow_response.append(
                    client.post(
                        "/api/v1/templates/slow-preview/preview",
                        json={"content": {"en": {"title": "Hi", "body": SLOW}}},
                    )
                )
            finally:
                order.append("slow")
                slow_done.set()

    slow = threading.Thread(target=slow_preview, name="slow-preview")
    slow.start()
    try:
        slow_done.wait(0.3)  # let the preview reach the server and start rendering first
        with httpx.Client(base_url=system.base_url, headers=headers, timeout=30) as client:
            for _ in range(MAX_QUICK_REQUESTS):
                if slow_done.is_set():
                    break
                quick = client.get("/api/v1/subscribers")
                assert quick.status_code == 200, quick.text
                order.append("quick")
    finally:
        slow.join(timeout=60)

    assert not slow.is_alive()
    (response,) = slow_response
    assert response.status_code == 422, response.text
    assert "longer than 2 seconds" in response.json()["error"]["details"]["en.body"]
    answered_meanwhile = order.index("slow")
    assert answered_meanwhile >= 3, f"only {answered_meanwhile} quick request(s) answered while the preview rendered"

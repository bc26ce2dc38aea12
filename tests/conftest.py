from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from apps.tenancy.models import ApiKey, Environment
from apps.tenancy.services import environment_create


@pytest.fixture(autouse=True)
def _eager_tasks(settings: Any, tmp_path: Any) -> None:
    """Run enqueued tasks inline (still only after commit) and keep mail out of var/."""
    settings.CLARION_TASKS_EAGER = True
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


@pytest.fixture(autouse=True)
def _fresh_workflow_cache() -> None:
    """Each test starts with no workflow remembered by single triggers (a flushed database may
    hand out the same primary keys again)."""
    from apps.events.services import published_cache_clear

    published_cache_clear()


@pytest.fixture(autouse=True)
def _no_api_key_cache(settings: Any) -> None:
    """Secret keys are looked up on every request, so that query-count tests count the same
    statements in any order (the cache has its own tests: tests/tenancy/test_api_key_cache.py)."""
    settings.CLARION = {**settings.CLARION, "API_KEY_CACHE_SECONDS": 0}


@pytest.fixture(scope="session", autouse=True)
def _leave_no_task_in_redis() -> Any:
    """Tests that check what a request enqueues turn eager tasks off, and on Redis those tasks
    stay in the real broker's queue after the run: a worker started later on the same Redis
    would run them against a database that no longer exists. Empty it when the run ends."""
    yield
    from django.conf import settings

    if "redis" in settings.Q_CLUSTER:
        from django_q.brokers import get_broker

        get_broker().purge_queue()


@pytest.fixture
def empty_task_queue() -> None:
    """The broker's queue emptied first, for tests that read its depth: a Redis queue outlives the
    test databases (and the run), so tasks another test or an earlier run enqueued may wait there."""
    from django_q.brokers import get_broker

    get_broker().purge_queue()


@dataclass
class Tenant:
    environment: Environment
    secret_key: str
    publishable_key: str
    client: APIClient

    def subscriber_hash(self, subscriber_id: str) -> str:
        return hmac.new(self.environment.inbox_hmac_secret.encode(), subscriber_id.encode(), hashlib.sha256).hexdigest()


def _tenant(name: str) -> Tenant:
    created = environment_create(name=name, project_name=f"{name} project")
    # A key in steady use: its last_used_at was written within the minute, so requests don't write
    # it again and query-count assertions count the view's own work. The once-a-minute write is
    # measured on its own (tests/tenancy/test_api_key_last_used.py).
    ApiKey.objects.filter(environment=created.environment).update(last_used_at=timezone.now())
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {created.secret_key.raw}")
    return Tenant(
        environment=created.environment,
        secret_key=created.secret_key.raw,
        publishable_key=created.publishable_key.raw,
        client=client,
    )


@pytest.fixture
def tenant(db: Any) -> Tenant:
    """An environment with keys and an API client authenticated with its secret key."""
    return _tenant("acme")


@pytest.fixture
def other_tenant(db: Any) -> Tenant:
    """A second, unrelated environment: used to prove isolation."""
    return _tenant("globex")


@pytest.fixture
def api(tenant: Tenant) -> APIClient:
    return tenant.client


@pytest.fixture
def anon_api() -> APIClient:
    return APIClient()


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """Tests marked ``services`` need PostgreSQL + Redis: they run under ``make test-services``."""
    from django.conf import settings

    if settings.USING_POSTGRES and settings.REDIS_URL:
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL and Redis (make test-services)")
    for item in items:
        if "services" in item.keywords:
            item.add_marker(skip)

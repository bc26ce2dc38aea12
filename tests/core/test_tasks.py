from __future__ import annotations

import pytest
from django.db import transaction
from django_q.models import OrmQ

from apps.core.tasks import enqueue_on_commit

pytestmark = pytest.mark.django_db(transaction=True)

TASK = "apps.workflows.tasks.sweep"


@pytest.fixture
def orm_broker(settings):
    if not settings.Q_CLUSTER.get("orm"):
        pytest.skip("the Redis broker is configured; its enqueue happens after commit")
    settings.CLARION_TASKS_EAGER = False


def test_orm_broker_task_commits_with_the_transaction(orm_broker):
    with transaction.atomic():
        enqueue_on_commit(TASK)
        assert OrmQ.objects.count() == 1  # written inside the transaction, not after it
    assert OrmQ.objects.count() == 1


def test_orm_broker_task_is_rolled_back_with_the_transaction(orm_broker):
    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        enqueue_on_commit(TASK)
        raise Abort
    assert OrmQ.objects.count() == 0


def test_eager_tasks_wait_for_commit(settings, monkeypatch):
    settings.CLARION_TASKS_EAGER = True
    calls = []
    monkeypatch.setattr("apps.workflows.tasks.sweep", lambda: calls.append("ran"))
    with transaction.atomic():
        enqueue_on_commit(TASK)
        assert calls == []
    assert calls == ["ran"]

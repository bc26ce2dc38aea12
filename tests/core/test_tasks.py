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


def test_orm_broker_batch_is_one_insert_in_the_transaction(orm_broker, django_assert_num_queries):
    from apps.core.tasks import enqueue_many_on_commit

    with transaction.atomic():
        with django_assert_num_queries(1):
            enqueue_many_on_commit(TASK, [(), (), ()])
        assert OrmQ.objects.count() == 3
    assert OrmQ.objects.count() == 3
    assert {row.func() for row in OrmQ.objects.all()} == {TASK}


def test_orm_broker_batch_is_rolled_back_with_the_transaction(orm_broker):
    from apps.core.tasks import enqueue_many_on_commit

    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        enqueue_many_on_commit(TASK, [(), ()])
        raise Abort
    assert OrmQ.objects.count() == 0


def test_eager_batch_runs_each_after_commit(settings, monkeypatch):
    from apps.core.tasks import enqueue_many_on_commit

    settings.CLARION_TASKS_EAGER = True
    calls: list[list[int]] = []
    monkeypatch.setattr("apps.workflows.tasks.process_events", lambda ids: calls.append(ids))
    with transaction.atomic():
        enqueue_many_on_commit("apps.workflows.tasks.process_events", [([1, 2],), ([3],)])
        assert calls == []
    assert calls == [[1, 2], [3]]


def test_a_batch_the_broker_refuses_is_kept_task_by_task(settings, monkeypatch):
    from apps.core.models import DeferredTask
    from apps.core.tasks import enqueue_many

    settings.CLARION_TASKS_EAGER = False
    settings.Q_CLUSTER = {k: v for k, v in settings.Q_CLUSTER.items() if k != "orm"}  # the Redis broker's path

    def refused(func_path, args_list):
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr("apps.core.tasks._broker_send_many", refused)
    enqueue_many("apps.workflows.tasks.process_events", [([1, 2],), ([3],)])
    kept = list(DeferredTask.objects.order_by("pk").values_list("func", "args"))
    assert kept == [("apps.workflows.tasks.process_events", [[1, 2]]), ("apps.workflows.tasks.process_events", [[3]])]


def test_one_broker_per_process_and_none_inherited_across_a_fork():
    import os

    from apps.core import tasks

    broker = tasks.shared_broker()
    assert tasks.shared_broker() is broker
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own broker, not the parent's
        try:
            inherited = tasks._broker is not None
            os.write(write, b"inherited" if inherited or tasks.shared_broker() is broker else b"own")
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 100) == b"own"
    os.close(read)
    assert tasks.shared_broker() is broker


@pytest.mark.services
def test_redis_batch_is_one_rpush_on_the_shared_connection(settings):
    from django_q.brokers.redis_broker import Redis
    from django_q.signing import SignedPackage

    from apps.core.tasks import enqueue, enqueue_many, shared_broker

    settings.CLARION_TASKS_EAGER = False
    broker = shared_broker()
    assert isinstance(broker, Redis)
    broker.connection.delete(broker.list_key)
    clients_before = broker.connection.client_list()
    enqueue(TASK)
    enqueue_many(TASK, [(), (), ()])
    assert broker.connection.llen(broker.list_key) == 4
    packages = [SignedPackage.loads(p) for p in broker.connection.lrange(broker.list_key, 0, -1)]
    assert [p["func"] for p in packages] == [TASK] * 4
    assert len({p["id"] for p in packages}) == 4
    # no new connection per task: the pool's one connection served them all
    assert len(broker.connection.client_list()) <= len(clients_before) + 1
    broker.connection.delete(broker.list_key)

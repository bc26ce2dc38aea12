"""inbox_messages_create: the inbox writes its own rows, in bulk, and pushes them after commit."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from django.db import connection, transaction

from apps.delivery.services import message_build, messages_create_bulk
from apps.inbox.models import InboxMessage
from apps.inbox.services import InboxItem, inbox_messages_create
from tests.factories import SubscriberFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[list[InboxMessage]]:
    """The messages each push after commit was given (every subscriber taken as online)."""
    calls: list[list[InboxMessage]] = []
    monkeypatch.setattr("apps.inbox.realtime._listening_at", lambda recipients: (list(range(len(recipients))), None))
    monkeypatch.setattr(
        "apps.inbox.realtime._publish_messages", lambda messages, event, **options: calls.append(list(messages))
    )
    return calls


def _items(count: int) -> list[tuple[InboxItem, Any]]:
    subscribers = SubscriberFactory.create_batch(count)
    messages = messages_create_bulk(
        messages=[message_build(environment_id=s.environment_id, channel="in_app", subscriber=s) for s in subscribers]
    )
    return [
        (
            InboxItem(
                environment_id=s.environment_id,
                subscriber_id=s.pk,
                title=f"Hello {s.subscriber_id}",
                category_key="comments",
                data={"n": n},
                actions=[{"id": "open-0", "label": "Open", "completed_at": None}],
            ),
            message,
        )
        for n, (s, message) in enumerate(zip(subscribers, messages, strict=True))
    ]


def test_rows_are_written_in_one_insert_and_pushed_only_after_commit(
    published, django_assert_num_queries, django_capture_on_commit_callbacks
):
    items = _items(3)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        # one INSERT (SQLite), or the keys from the sequence and one COPY (PostgreSQL); + the analytics count
        with django_assert_num_queries(3 if connection.vendor == "postgresql" else 2):
            pks = inbox_messages_create(items=items)
        assert published == []

    for callback in callbacks:
        callback()
    assert [[row.pk for row in rows] for rows in published] == [pks]
    assert [row.title for row in published[0]] == [item.title for item, _ in items]
    stored = list(InboxMessage.objects.order_by("pk").values_list("message_id", "subscriber_id", "title", "data"))
    assert stored == [(m.pk, i.subscriber_id, i.title, i.data) for i, m in items]


def test_nothing_is_pushed_when_the_transaction_rolls_back(published, django_capture_on_commit_callbacks):
    items = _items(1)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with contextlib.suppress(RuntimeError), transaction.atomic():
            inbox_messages_create(items=items)
            raise RuntimeError("the chunk failed")

    assert callbacks == [] and published == []
    assert not InboxMessage.objects.exists()


def test_no_items_is_no_query_and_no_push(published, django_assert_num_queries, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks, django_assert_num_queries(0):
        assert inbox_messages_create(items=[]) == []
    assert callbacks == [] and published == []

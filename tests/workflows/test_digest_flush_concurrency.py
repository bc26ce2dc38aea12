"""The flush of many digests under real concurrency: two tickers (each with its eager worker) and a
duplicate task race over the same due leaders on one PostgreSQL; every digest goes out once."""

from __future__ import annotations

import multiprocessing
import traceback
from typing import Any

import pytest
from django.db import connection, transaction

from apps.events.services import TriggerRequest, event_trigger
from apps.inbox.models import InboxMessage
from apps.workflows import digests, engine
from apps.workflows.models import DigestBucket, Run, StepRun
from tests.factories import SubscriberFactory
from tests.workflows.conftest import make_workflow, published_template
from tests.workflows.test_digest_concurrency import _close_connections

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

DIGESTS = 60
EVENTS = 3
TICKERS = 2


def _race(leaders: list[int], barrier: Any, errors: Any) -> None:
    """A ticker host: tick until caught up (its eager tasks walk what it took), then the same
    leaders again as a duplicate task (the stall re-drive)."""
    try:
        from apps.workflows.ticker import tick_until_caught_up

        barrier.wait(timeout=60)
        tick_until_caught_up()
        engine.advance_runs(leaders)
    except BaseException:
        errors.put(traceback.format_exc())
    finally:
        _close_connections()


def test_tickers_racing_over_a_flush_send_every_digest_once(tenant: Any, settings: Any) -> None:
    assert connection.vendor == "postgresql"
    settings.CLARION = {**settings.CLARION, "FANOUT_CHUNK_SIZE": 7}  # many chunks, taken by both
    env = tenant.environment
    published_template(env, "replies", "in_app", title_en="{{ digest.count }} new replies", body_en="")
    make_workflow(
        env,
        "replies",
        [
            {"id": "batch", "type": "digest", "window": "1h", "key": "payload.thread"},
            {"id": "inbox", "type": "in_app", "template": "replies"},
        ],
    )
    ids = [f"r{index:03d}" for index in range(DIGESTS)]
    for subscriber_id in ids:
        SubscriberFactory(environment=env, subscriber_id=subscriber_id)
    for index in range(EVENTS):
        event_trigger(environment=env, request=TriggerRequest("replies", ids, {"thread": "t", "n": index}))
    with transaction.atomic():
        leaders = digests.digests_flush(environment_id=env.pk)  # due now, for the tickers
    assert len(leaders) == DIGESTS

    context = multiprocessing.get_context("fork")
    barrier, errors = context.Barrier(TICKERS), context.Queue()
    _close_connections()
    processes = [context.Process(target=_race, args=(leaders, barrier, errors)) for _ in range(TICKERS)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(180)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert not failures, "\n".join(failures)
    assert [p.exitcode for p in processes] == [0] * TICKERS

    messages = InboxMessage.objects.filter(environment=env)
    assert sorted(messages.values_list("subscriber__subscriber_id", flat=True)) == ids  # one each
    assert set(messages.values_list("title", flat=True)) == {f"{EVENTS} new replies"}
    runs = Run.objects.filter(environment=env)
    assert set(runs.values_list("status", flat=True)) == {Run.Status.COMPLETED}
    assert StepRun.objects.filter(run__in=runs, reason="digest_sent").count() == DIGESTS
    assert StepRun.objects.filter(run__in=runs, reason="digest_merged").count() == DIGESTS * (EVENTS - 1)
    assert set(DigestBucket.objects.values_list("status", flat=True)) == {DigestBucket.Status.SENT}

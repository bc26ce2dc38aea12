"""The reference workload (apps.analytics.workload) on a small seeded size: what it promises.

The workload commits as it would in production (tasks inline, on commit), so these tests use a
transactional database. Each runs the simulation (60 subscribers, 2 days, 15-minute clock steps).
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.db.models import Count

from apps.analytics.savings import savings_report
from apps.analytics.workload import (
    CRITICAL_WORKFLOW,
    WorkloadSpec,
    critical_delivery,
    people_for,
    schedule_for,
    workload_run,
)
from apps.delivery.models import Integration, Message, Suppression
from apps.inbox.models import InboxMessage
from apps.tenancy.models import Environment
from apps.workflows.models import Run, StepRun

pytestmark = pytest.mark.django_db(transaction=True)

# Seed 3 at this size has every lever the workload is built for, category digests included.
SMALL = WorkloadSpec(subscribers=60, days=2, seed=3, step=timedelta(minutes=15))


def trace_counts(environment: Environment) -> dict[tuple[str, str, str, str], int]:
    rows = (
        StepRun.objects.filter(run__environment=environment)
        .values_list("run__event__workflow__key", "step_id", "decision", "reason")
        .annotate(n=Count("id"))
    )
    return {(w, s, d, r): n for w, s, d, r, n in rows}


def message_counts(environment: Environment) -> dict[tuple[str, str, str], int]:
    rows = (
        Message.objects.filter(environment=environment)
        .values_list("step_id", "channel", "status")
        .annotate(n=Count("id"))
    )
    return {(s, c, st): n for s, c, st, n in rows}


def test_the_schedule_is_a_function_of_the_seed():
    people = people_for(SMALL)
    assert people == people_for(SMALL)
    assert schedule_for(SMALL, people) == schedule_for(SMALL, people)
    other = WorkloadSpec(subscribers=60, days=2, seed=8)
    assert schedule_for(other, people_for(other)) != schedule_for(SMALL, people)
    # Every kind of trigger is there even at this size, and only in the simulated days.
    triggers = schedule_for(SMALL, people)
    assert {t.workflow for t in triggers} == {
        CRITICAL_WORKFLOW,
        "comment-created",
        "task-reminder",
        "order-shipped",
        "weekly-newsletter",
    }
    assert all(SMALL.start <= t.at < SMALL.triggers_end for t in triggers)


def test_the_same_seed_gives_the_same_trace_messages_and_engagement():
    first = workload_run(SMALL)
    second = workload_run(SMALL)

    assert first.environment.pk != second.environment.pk  # a fresh environment each time
    assert first.triggers == second.triggers
    assert first.engagement == second.engagement
    assert trace_counts(first.environment) == trace_counts(second.environment)
    assert message_counts(first.environment) == message_counts(second.environment)
    reports = [savings_report(environment=r.environment, start=SMALL.start, end=SMALL.end) for r in (first, second)]
    assert reports[0] == reports[1]
    assert reports[0]["baseline"]["messages"] > 0


def test_the_week_goes_through_the_engine_and_every_run_finishes():
    result = workload_run(SMALL)
    env = result.environment
    reasons = Counter(reason for (_, _, _, reason), n in trace_counts(env).items() for _ in range(n))

    # Nothing is left waiting when the clock stops, and nothing failed.
    assert set(Run.objects.filter(environment=env).values_list("status", flat=True)) == {Run.Status.COMPLETED}
    assert not Message.objects.filter(environment=env, status__in=["queued", "sending", "in_doubt", "failed"]).exists()
    # The levers the report attributes savings to all happened, each recorded by the engine.
    for reason in ("preference", "digest_merged", "condition_false", "escalation_stopped", "quiet_hours"):
        assert reasons[reason] > 0, reason
    # Paid messages really went through the providers (their ids came back from the fake).
    assert Message.objects.filter(environment=env, channel="email").exclude(provider_message_id="").exists()
    assert Message.objects.filter(environment=env, channel="sms", provider="http").exists()
    # Engagement came back through the services: reads in the inbox, provider callbacks on messages.
    assert (
        InboxMessage.objects.filter(environment=env, read_at__isnull=False).count() == result.engagement["in_app read"]
    )
    assert Message.objects.filter(environment=env, opened_at__isnull=False).count() == result.engagement["email opened"]
    # A live worker never sends through the fake again.
    assert not Integration.objects.filter(environment=env, active=True).exists()


def test_critical_messages_are_all_delivered():
    result = workload_run(SMALL)
    env = result.environment
    critical = critical_delivery(environment=env)

    assert critical["runs"] == result.triggers[CRITICAL_WORKFLOW] > 0
    assert critical["unfinished_runs"] == 0
    assert critical["messages"]["in_app"] == critical["runs"]
    assert critical["delivered"] == critical["messages"]
    # The only critical step that made no message is an email to an address suppressed before the week.
    suppressed = set(Suppression.objects.filter(environment=env).values_list("address", flat=True))
    skipped = StepRun.objects.filter(run__event__workflow__key=CRITICAL_WORKFLOW, run__environment=env).exclude(
        decision="executed"
    )
    assert set(skipped.values_list("reason", flat=True)) <= {"no_address"}
    for step in skipped.select_related("run__subscriber"):
        assert step.run.subscriber.email in suppressed
    assert critical["messages"]["email"] + skipped.count() == critical["runs"]


def test_the_command_prints_the_report_and_its_raw_form(capsys: Any):
    call_command("simulate_workload", subscribers=20, days=1, seed=3, step_minutes=30)
    out = capsys.readouterr()
    assert "workload: day 1 done" in out.err
    assert "baseline (CPaaS only)" in out.out
    assert "critical (" in out.out and "not sent: none" in out.out

    call_command("simulate_workload", subscribers=20, days=1, seed=3, step_minutes=30, json=True)
    report = json.loads(capsys.readouterr().out)
    assert report["currency"] and report["baseline"]["messages"] > report["actual"]["messages"] > 0
    assert {item["lever"] for item in report["avoided"]} >= {"preference", "digest", "escalation"}

"""The savings report of the reference workload, recounted independently from the trace.

The recount reads only what the engine and delivery recorded — each run's StepRun rows (the
decision and reason of every step, in order), the Message rows, the category digests' buckets —
and the workload's own description of its subscribers; none of the report's code. It must find
exactly the report's numbers.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from decimal import Decimal
from typing import Any

import pytest

from apps.analytics.pricing import channel_prices
from apps.analytics.savings import savings_report
from apps.analytics.workload import people_for, workload_run
from apps.delivery.models import Message
from apps.tenancy.models import Environment
from apps.workflows.models import DigestBucket, Run, StepRun
from tests.analytics.test_workload import SMALL

pytestmark = pytest.mark.django_db(transaction=True)

CHANNELS = {"in_app", "email", "sms", "push", "chat", "webhook"}


def _lever(decision: str, reason: str, detail: dict[str, Any]) -> str:
    """The lever of one traced decision on a channel (or escalation stage) that made no message."""
    if decision == "skipped" and reason == "preference":
        return "unsubscribed" if detail.get("rule") == "unsubscribed" else "preference"
    if decision == "skipped" and reason == "condition_false":
        return "condition"
    if decision == "skipped" and reason == "no_address":
        return "no_address"
    if decision == "held":
        return {"frequency_preference": "digest", "frequency_cap": "frequency_cap"}[reason]
    raise AssertionError(f"no lever for {decision} {reason}")


def recount(environment: Environment) -> dict[str, Any]:
    trace: dict[int, list[tuple[str, str, str, dict[str, Any]]]] = defaultdict(list)
    for run_id, step_id, decision, reason, detail in (
        StepRun.objects.filter(run__environment=environment)
        .order_by("id")
        .values_list("run_id", "step_id", "decision", "reason", "detail")
    ):
        trace[run_id].append((step_id, decision, reason, detail or {}))

    baseline: Counter[str] = Counter()
    actual: Counter[str] = Counter()
    avoided: Counter[str] = Counter()  # net: counted - replaced
    counted: Counter[str] = Counter()  # before category digests took some back
    replaced: Counter[str] = Counter()
    by_workflow: dict[str, Counter[str]] = defaultdict(Counter)
    runs = Run.objects.filter(environment=environment).select_related("workflow_version__workflow")
    for run in runs:
        assert run.status == Run.Status.COMPLETED
        entries = trace[run.pk]
        merged = any(reason == "digest_merged" for _, _, reason, _ in entries)
        workflow = run.workflow_version.workflow.key
        for step in run.workflow_version.steps:
            if step["type"] == "escalate":
                stages = [(stage["channel"], True) for stage in step["channels"]]
            elif step["type"] in CHANNELS:
                stages = [(step["type"], False)]
            else:
                continue
            stopped = any(s == step["id"] and r == "escalation_stopped" for s, _, r, _ in entries)
            for channel, staged in stages:
                baseline[channel] += 1
                by_workflow[workflow]["baseline"] += 1
                decided = [
                    (decision, reason, detail)
                    for step_id, decision, reason, detail in entries
                    if step_id == step["id"]
                    and decision != "waiting"
                    and (not staged or detail.get("channel") == channel)
                ]
                if decided and decided[-1][0] == "executed" and decided[-1][1] in ("sent", "queued"):
                    actual[channel] += 1
                    by_workflow[workflow]["actual"] += 1
                    continue
                if decided:
                    lever = _lever(*decided[-1])
                elif staged and stopped:
                    lever = "escalation"
                elif merged:
                    lever = "digest"
                else:
                    raise AssertionError(f"run {run.pk}: no decision for {step['id']} {channel}: {entries}")
                avoided[lever] += 1
                counted[lever] += 1
                by_workflow[workflow]["avoided"] += 1

    # Category digests: one message sent in place of what was held, taken back from its lever.
    people = {p.subscriber_id: p for p in people_for(SMALL)}
    for channel, bucket_pk in Message.objects.filter(environment=environment, run__isnull=True).values_list(
        "channel", "data__digest_bucket"
    ):
        bucket = DigestBucket.objects.select_related("subscriber").get(pk=bucket_pk)
        chose_daily = people[bucket.subscriber.subscriber_id].daily_comment_digest
        lever = "digest" if bucket.category_key == "comments" and chose_daily else "frequency_cap"
        actual[channel] += 1
        avoided[lever] -= 1
        replaced[lever] += 1
        by_workflow[""]["actual"] += 1
        by_workflow[""]["avoided"] -= 1
    return {
        "runs": runs.count(),
        "baseline": baseline,
        "actual": actual,
        "avoided": avoided,
        "counted": counted,
        "replaced": replaced,
        "by_workflow": by_workflow,
    }


def test_the_report_of_the_workload_is_exactly_what_the_trace_says():
    result = workload_run(SMALL)
    env = result.environment
    report = savings_report(environment=env, start=SMALL.start, end=SMALL.end)
    counted = recount(env)
    prices = channel_prices(environment=env)

    def cost(by_channel: Counter[str]) -> Decimal:
        # Every simulated SMS body fits in one segment.
        return sum((n * prices[channel] for channel, n in by_channel.items()), Decimal(0))

    # The trace and the messages agree: each "sent"/"queued" decision made exactly one message.
    rows = Counter(Message.objects.filter(environment=env).values_list("channel", flat=True))
    assert rows == counted["actual"]

    assert report["recipients"] == counted["runs"]
    assert report["baseline"]["messages"] == sum(counted["baseline"].values())
    assert report["actual"]["messages"] == sum(counted["actual"].values())
    assert Decimal(report["baseline"]["cost"]) == cost(counted["baseline"])
    assert Decimal(report["actual"]["cost"]) == cost(counted["actual"])
    assert {item["lever"]: item["messages"] for item in report["avoided"] if item["messages"]} == {
        lever: n for lever, n in counted["avoided"].items() if n
    }
    assert {item["lever"]: item["counted"] for item in report["avoided"] if item["counted"]} == {
        lever: n for lever, n in counted["counted"].items() if n
    }
    assert {
        item["lever"]: item["replaced_by_digests"] for item in report["avoided"] if item["replaced_by_digests"]
    } == {lever: n for lever, n in counted["replaced"].items() if n}
    assert all(item["messages"] == 0 for item in report["other"])
    assert {part["channel"]: part["baseline"]["messages"] for part in report["by_channel"]} == dict(counted["baseline"])
    assert {part["channel"]: part["actual"]["messages"] for part in report["by_channel"]} == dict(counted["actual"])
    assert {
        (part["workflow"] or ""): (
            part["baseline"]["messages"],
            part["actual"]["messages"],
            part["avoided"]["messages"],
        )
        for part in report["by_workflow"]
    } == {
        workflow: (numbers["baseline"], numbers["actual"], numbers["avoided"])
        for workflow, numbers in counted["by_workflow"].items()
    }
    # The levers the workload is built to exercise all avoided something, and category digests
    # (daily comment digests, capped messages) were sent in place of held messages.
    for lever in ("preference", "unsubscribed", "digest", "frequency_cap", "escalation", "no_address", "condition"):
        assert counted["counted"][lever] > 0, lever
    assert counted["replaced"]["digest"] > 0 and counted["replaced"]["frequency_cap"] > 0

"""The Event page: a read-only record with its runs; the one action cancels waiting runs, recorded."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from apps.events.models import Event
from apps.workflows.models import Run, StepRun
from tests.admin_trace import Trace, trace_fixture  # noqa: F401

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/events/event/"


def test_event_page_lists_its_runs_with_links(admin_client: Any, trace: Trace) -> None:
    html = admin_client.get(reverse("admin:events_event_change", args=[trace.event.pk])).content.decode()
    run_url = reverse("admin:workflows_run_change", args=[trace.run.pk])
    assert f'<a href="{run_url}">run {trace.run.pk}</a>' in html
    subscriber_url = reverse("admin:subscribers_subscriber_change", args=[trace.run.subscriber_id])
    assert f'subscriber <a href="{subscriber_url}">u1</a>\n      · waiting' in html


def test_a_long_run_list_is_cut_with_a_link_to_all_runs(admin_client: Any, trace: Trace, monkeypatch: Any) -> None:
    monkeypatch.setattr("apps.events.admin.RUNS_SHOWN", 0)
    html = admin_client.get(reverse("admin:events_event_change", args=[trace.event.pk])).content.decode()
    assert f"/admin/workflows/run/?event__id__exact={trace.event.pk}" in html
    runs = admin_client.get("/admin/workflows/run/", {"event__id__exact": trace.event.pk})
    assert runs.status_code == 200 and runs.context["cl"].result_count == 1


def test_cancel_action_stops_waiting_runs_through_the_service_and_is_recorded(admin_client: Any, trace: Trace) -> None:
    response = admin_client.post(
        CHANGELIST, {"action": "cancel_waiting_runs", ACTION_CHECKBOX_NAME: [trace.event.pk]}, follow=True
    )
    assert response.status_code == 200
    assert "t-admin: cancelled 1 run(s)." in [str(m) for m in response.context["messages"]]
    trace.run.refresh_from_db()
    assert trace.run.status == Run.Status.CANCELLED
    assert StepRun.objects.filter(run=trace.run, decision="cancelled", reason="cancelled_by_api").exists()
    entry = LogEntry.objects.get(object_id=str(trace.event.pk), content_type__model="event")
    assert entry.get_change_message() == "Cancelled 1 waiting run(s) from the admin."


def test_a_failed_event_says_why_it_cannot_be_cancelled(admin_client: Any, trace: Trace) -> None:
    Event.objects.filter(pk=trace.event.pk).update(status=Event.Status.FAILED)
    response = admin_client.post(
        CHANGELIST, {"action": "cancel_waiting_runs", ACTION_CHECKBOX_NAME: [trace.event.pk]}, follow=True
    )
    assert any("nothing left to cancel" in str(m) for m in response.context["messages"])
    assert not LogEntry.objects.exists()
    trace.run.refresh_from_db()
    assert trace.run.status == Run.Status.WAITING


def test_staff_who_may_only_view_events_cannot_cancel(trace: Trace) -> None:
    viewer = User.objects.create_user("viewer", password="pw-viewer-1", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_event", content_type__app_label="events"))
    client = Client()
    client.force_login(viewer)
    page = client.get(CHANGELIST)
    assert page.status_code == 200 and "cancel_waiting_runs" not in page.content.decode()
    client.post(CHANGELIST, {"action": "cancel_waiting_runs", ACTION_CHECKBOX_NAME: [trace.event.pk]})
    trace.run.refresh_from_db()
    assert trace.run.status == Run.Status.WAITING

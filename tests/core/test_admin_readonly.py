"""Trace tables are read-only in the admin: no add, no edit, no delete, inlines without an add row.

Every trace model is checked, registered or not: a registered one refuses the add, change (POST) and
delete views and offers no bulk delete; an unregistered one may only appear as a read-only inline.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.apps import apps
from django.contrib import admin
from django.db.models import Model
from django.test import RequestFactory
from django.urls import reverse

from tests.admin_trace import Trace, trace_fixture  # noqa: F401
from tests.core.test_csp import assert_safe_page
from tests.workflows.conftest import comment_workflow  # noqa: F401

pytestmark = pytest.mark.django_db

TRACE_MODELS = [
    "events.Event",
    "events.IdempotencyRecord",
    "workflows.Run",
    "workflows.StepRun",
    "workflows.DigestBucket",
    "workflows.DigestEntry",
    "workflows.LimitHit",
    "delivery.Message",
    "delivery.DeliveryAttempt",
    "delivery.MessageEvent",
    "preferences.PreferenceChange",
    "inbox.InboxMessage",
    "analytics.Counter",
    "analytics.Rollup",
    "core.DeferredTask",
]


def trace_model_classes() -> list[type[Model]]:
    return [apps.get_model(label) for label in TRACE_MODELS]


def registered_rows(trace: Trace) -> dict[str, Model]:
    """One stored row of each trace model that has its own admin pages."""
    return {
        "events.Event": trace.event,
        "workflows.Run": trace.run,
        "workflows.DigestBucket": trace.bucket,
        "delivery.Message": trace.email,
        "preferences.PreferenceChange": trace.preference_change,
        "inbox.InboxMessage": trace.inbox_message,
        "core.DeferredTask": trace.deferred,
    }


def admin_url(model: type[Model], view: str, *args: Any) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def stored(obj: Model) -> dict[str, Any]:
    return type(obj)._default_manager.filter(pk=obj.pk).values().get()


def assert_no_add_row(html: str) -> None:
    """Each inline on the page allows no new form (the admin's script shows "Add another" only below
    MAX_NUM_FORMS) and carries no blank template row to copy."""
    maxima = re.findall(r'name="[\w-]+-MAX_NUM_FORMS" value="(\d*)"', html)
    assert set(maxima) <= {"0"}, maxima
    assert "empty-form" not in html


def test_every_registered_trace_model_has_a_row_here(trace: Trace) -> None:
    registered = {label for label in TRACE_MODELS if apps.get_model(label) in admin.site._registry}
    assert registered == set(registered_rows(trace))


def test_admin_and_inline_permissions_refuse_every_write(admin_user: Any) -> None:
    request = RequestFactory().get("/admin/")
    request.user = admin_user
    models = trace_model_classes()
    for model, model_admin in admin.site._registry.items():
        if model in models:
            assert not model_admin.has_add_permission(request), model
            assert not model_admin.has_change_permission(request), model
            assert not model_admin.has_delete_permission(request), model
            assert model_admin.has_view_permission(request), model
        for inline in model_admin.get_inline_instances(request):
            if inline.model in models:
                assert not inline.has_add_permission(request, None), (model, inline)
                assert not inline.has_change_permission(request, None), (model, inline)
                assert not inline.has_delete_permission(request, None), (model, inline)


@pytest.mark.parametrize("label", sorted(["events.Event", "workflows.Run", "workflows.DigestBucket",
                                          "delivery.Message", "preferences.PreferenceChange",
                                          "inbox.InboxMessage", "core.DeferredTask"]))  # fmt: skip
def test_pages_offer_no_write_and_refuse_one(admin_client: Any, trace: Trace, label: str) -> None:
    obj = registered_rows(trace)[label]
    model = type(obj)
    before = stored(obj)

    changelist = admin_client.get(admin_url(model, "changelist")).content.decode()
    assert admin_url(model, "add") not in changelist  # neither the page's button nor the sidebar's link
    assert 'value="delete_selected"' not in changelist

    page = admin_client.get(admin_url(model, "change", obj.pk))
    # Under the admin's Content-Security-Policy: no inline script or style (the message page allows
    # inline styles for its email frame, never scripts).
    assert_safe_page(page, inline_styles=label == "delivery.Message")
    html = page.content.decode()
    assert 'name="_save"' not in html and 'name="_continue"' not in html
    assert "<textarea" not in html and "<select" not in html.split('id="changelist-filter"')[0]
    assert_no_add_row(html)

    assert admin_client.get(admin_url(model, "add")).status_code == 403
    forged = {name: "forged" for name in before if name != "id"}
    assert admin_client.post(admin_url(model, "change", obj.pk), forged).status_code == 403
    assert admin_client.post(admin_url(model, "add"), forged).status_code == 403
    assert admin_client.get(admin_url(model, "delete", obj.pk)).status_code == 403
    assert admin_client.post(admin_url(model, "delete", obj.pk), {"post": "yes"}).status_code == 403
    assert stored(obj) == before


def test_a_forged_step_decision_posted_with_the_run_is_refused(admin_client: Any, trace: Trace) -> None:
    run = trace.run
    decisions = list(run.step_runs.values_list("id", "decision"))
    response = admin_client.post(
        admin_url(type(run), "change", run.pk),
        {
            "status": "completed",
            "step_runs-TOTAL_FORMS": str(len(decisions) + 1),
            "step_runs-INITIAL_FORMS": str(len(decisions)),
            "step_runs-0-id": str(decisions[0][0]),
            "step_runs-0-decision": "skipped",
            f"step_runs-{len(decisions)}-step_id": "forged",
            f"step_runs-{len(decisions)}-decision": "executed",
        },
    )
    assert response.status_code == 403
    run.refresh_from_db()
    assert run.status == "waiting"
    assert list(run.step_runs.values_list("id", "decision")) == decisions


def test_json_is_shown_indented_and_escaped(admin_client: Any, trace: Trace) -> None:
    html = admin_client.get(admin_url(type(trace.event), "change", trace.event.pk)).content.decode()
    assert "&lt;script&gt;alert(3)&lt;/script&gt;" in html
    assert "<script>alert(3)" not in html
    assert '<pre class="clarion-json">{\n  &quot;comment&quot;' in html

"""Admin: events are a record of trigger calls, read-only; the one action cancels their waiting runs."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import SafeString

from apps.core.admin import ReadOnlyAdmin, pretty_json, record_action
from apps.core.errors import ApiError
from apps.events.models import Event
from apps.events.services import event_cancel
from apps.workflows.models import Run

# An event may have a million runs (a broadcast): its page shows the first ones and links to the rest.
RUNS_SHOWN = 50


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ["transaction_id", "workflow", "environment", "status", "recipient_count", "created_at"]
    list_filter = ["status", "environment"]
    list_select_related = ["workflow", "environment__project"]
    search_fields = ["transaction_id"]
    show_full_result_count = False
    fields = readonly_fields = (
        "transaction_id",
        "environment",
        "workflow",
        "workflow_version",
        "status",
        "error",
        "recipient_count",
        "cancellation_key",
        "created_at",
        "processed_at",
        "runs_table",
        "payload_display",
        "actor_display",
        "recipients_display",
        "template_versions_display",
    )
    actions = ["cancel_waiting_runs"]

    @admin.display(description="payload")
    def payload_display(self, obj: Event) -> SafeString:
        return pretty_json(obj.payload)

    @admin.display(description="actor")
    def actor_display(self, obj: Event) -> SafeString:
        return pretty_json(obj.actor)

    @admin.display(description="recipients (as given)")
    def recipients_display(self, obj: Event) -> SafeString:
        return pretty_json(obj.recipients)

    @admin.display(description="template versions (pinned)")
    def template_versions_display(self, obj: Event) -> SafeString:
        return pretty_json(obj.template_versions)

    @admin.display(description="runs")
    def runs_table(self, obj: Event) -> SafeString | str:
        runs = list(Run.objects.filter(event=obj).select_related("subscriber").order_by("id")[: RUNS_SHOWN + 1])
        if not runs:
            return "No runs (yet)."
        rows = format_html_join(
            "",
            '<tr><td><a href="{}">run {}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>',
            (
                (
                    reverse("admin:workflows_run_change", args=[run.pk]),
                    run.pk,
                    run.subscriber.subscriber_id,
                    run.status,
                    run.step_index,
                    run.resume_at or "—",
                    run.completed_at or "—",
                )
                for run in runs[:RUNS_SHOWN]
            ),
        )
        more: SafeString | str = ""
        if len(runs) > RUNS_SHOWN:
            url = reverse("admin:workflows_run_changelist") + "?" + urlencode({"event__id__exact": obj.pk})
            more = format_html('<p><a href="{}">All runs of this event</a></p>', url)
        return format_html(
            '<table class="clarion-trace"><thead><tr><th>run</th><th>subscriber</th><th>status</th>'
            "<th>next step</th><th>resumes at</th><th>completed at</th></tr></thead><tbody>{}</tbody></table>{}",
            rows,
            more,
        )

    @admin.action(description="Cancel the waiting runs of the selected events", permissions=["operate"])
    def cancel_waiting_runs(self, request: HttpRequest, queryset: QuerySet[Event]) -> None:
        for event in queryset:
            try:
                cancelled = event_cancel(event=event)
            except ApiError as exc:
                self.message_user(request, f"{event.transaction_id}: {exc.detail}", messages.ERROR)
                continue
            record_action(self, request, [event], f"Cancelled {cancelled} waiting run(s) from the admin.")
            self.message_user(request, f"{event.transaction_id}: cancelled {cancelled} run(s).", messages.SUCCESS)

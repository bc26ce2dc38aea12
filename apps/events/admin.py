"""Admin: Activity — the Event list and each event's timeline, the answer to "why did (or didn't)
this person get this?". Events are a read-only record; the page's buttons cancel waiting runs and
resend a failed message, each through its app's service and recorded. See docs/console.md ("Activity")."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.views.main import PAGE_VAR
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.http import urlencode
from django.utils.safestring import SafeString
from django.views.decorators.http import require_POST

from apps.core.admin import ReadOnlyAdmin, pretty_json, record_action
from apps.core.channels import CHANNEL_CHOICES
from apps.core.errors import ApiError
from apps.delivery.services import message_resend
from apps.events.models import Event
from apps.events.services import event_cancel
from apps.subscribers.models import Subscriber
from apps.tenancy.models import Environment
from apps.workflows.activity import (
    OUTCOMES,
    event_message,
    event_timeline,
    events_with_channel,
    events_with_outcome,
    message_resendable,
)
from apps.workflows.models import Run

# An event may have a million runs (a broadcast): its page shows the first ones and links to the rest.
RUNS_SHOWN = 50
# The list counts matching events only this many pages past the one shown (COUNT over a LIMIT
# subquery), never the whole table: a rare filter then reads a bounded number of rows.
COUNT_PAGES_AHEAD = 10


class CappedCountPaginator(Paginator):
    """Counts at most ``limit`` rows: ``SELECT COUNT(*) FROM (SELECT … LIMIT limit)``, cheap on any
    table size. ``capped``: there may be more (the page says so; later pages count further)."""

    def __init__(self, object_list: Any, per_page: int, *args: Any, limit: int, **kwargs: Any) -> None:
        super().__init__(object_list, per_page, *args, **kwargs)
        self.limit = limit

    @cached_property
    def count(self) -> int:
        return int(self.object_list.order_by()[: self.limit].count())  # type: ignore[attr-defined]  # a QuerySet

    @property
    def capped(self) -> bool:
        return self.count >= self.limit


class CreatedFilter(admin.SimpleListFilter):
    """A recent time range; any other range through the dates above the list (date hierarchy)."""

    title = "created"
    parameter_name = "created"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("today", "Today"), ("7d", "Past 7 days"), ("30d", "Past 30 days")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Event]) -> QuerySet[Event]:
        now = timezone.now()
        if self.value() == "today":
            return queryset.filter(
                created_at__gte=timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
            )
        if self.value() == "7d":
            return queryset.filter(created_at__gte=now - timedelta(days=7))
        if self.value() == "30d":
            return queryset.filter(created_at__gte=now - timedelta(days=30))
        return queryset


class ChannelFilter(admin.SimpleListFilter):
    """Events that produced a message on the channel."""

    title = "channel"
    parameter_name = "channel"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return list(CHANNEL_CHOICES)

    def queryset(self, request: HttpRequest, queryset: QuerySet[Event]) -> QuerySet[Event]:
        channel = self.value()
        if channel in dict(CHANNEL_CHOICES):
            return events_with_channel(queryset, channel)
        return queryset


class OutcomeFilter(admin.SimpleListFilter):
    """What the trace says happened (definitions: docs/console.md, "Activity")."""

    title = "outcome"
    parameter_name = "outcome"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return list(OUTCOMES.items())

    def queryset(self, request: HttpRequest, queryset: QuerySet[Event]) -> QuerySet[Event]:
        outcome = self.value()
        if outcome in OUTCOMES:
            return events_with_outcome(queryset, outcome)
        return queryset


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ["transaction_id", "workflow", "environment", "status", "recipient_count", "created_at"]
    list_filter = ["status", "workflow", CreatedFilter, ChannelFilter, OutcomeFilter, "environment"]
    list_select_related = ["workflow", "environment__project"]
    date_hierarchy = "created_at"
    search_fields = ["transaction_id"]  # the search itself: get_search_results (exact, indexed)
    search_help_text = "An exact transaction id or subscriber id."
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # a count per filter choice would read every matching row
    change_list_template = "admin/events/event/change_list.html"
    change_form_template = "admin/events/event/change_form.html"
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
        "payload_display",
        "actor_display",
        "recipients_display",
        "template_versions_display",
    )
    actions = ["cancel_waiting_runs"]

    class Media:
        css = {"all": ("clarion/admin/admin.css", "clarion/admin/activity.css")}

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Event], search_term: str
    ) -> tuple[QuerySet[Event], bool]:
        """An exact transaction id or subscriber id, each through its unique (environment, …)
        index: the environments' ids lead both lookups, so no LIKE and no scan."""
        term = search_term.strip()
        if not term:
            return queryset, False
        environment_ids = list(Environment.objects.values_list("pk", flat=True))
        by_transaction = list(
            Event.objects.filter(environment_id__in=environment_ids, transaction_id=term).values_list("pk", flat=True)
        )
        subscribers = list(
            Subscriber.objects.filter(environment_id__in=environment_ids, subscriber_id=term).values_list(
                "pk", flat=True
            )
        )
        of_subscribers = Q(pk__in=Run.objects.filter(subscriber_id__in=subscribers).values("event_id"))
        if by_transaction and subscribers:
            return queryset.filter(Q(pk__in=by_transaction) | of_subscribers), False
        if subscribers:
            return queryset.filter(of_subscribers), False
        return queryset.filter(pk__in=by_transaction), False

    def get_paginator(
        self,
        request: HttpRequest,
        queryset: QuerySet[Event],
        per_page: int,
        orphans: int = 0,
        allow_empty_first_page: bool = True,
    ) -> CappedCountPaginator:
        try:
            page = max(int(request.GET.get(PAGE_VAR, 1)), 1)
        except ValueError:
            page = 1
        limit = (page + COUNT_PAGES_AHEAD) * per_page
        return CappedCountPaginator(queryset, per_page, orphans, allow_empty_first_page, limit=limit)

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

    # --- The event page: its timeline and buttons -------------------------------------------------

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Event | None = None,
    ) -> HttpResponse:
        if obj is not None:
            timeline = event_timeline(event=obj, limit=RUNS_SHOWN)
            context.update(
                timeline=timeline,
                runs_shown=RUNS_SHOWN,
                all_runs_url=reverse("admin:workflows_run_changelist") + "?" + urlencode({"event__id__exact": obj.pk}),
                can_cancel=self.has_operate_permission(request),
                can_resend=self.has_resend_permission(request),
                event_environment=obj.environment,
            )
        return super().render_change_form(request, context, add, change, form_url, obj)

    def has_resend_permission(self, request: HttpRequest) -> bool:
        """As on the Messages page: resending is changing delivery's messages."""
        return bool(request.user.has_perm("delivery.change_message"))

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path(
                "<path:object_id>/cancel-runs/",
                wrap(require_POST(self.cancel_runs_view)),
                name="events_event_cancel_runs",
            ),
            path(
                "<path:object_id>/resend/<int:message_id>/",
                wrap(require_POST(self.resend_view)),
                name="events_event_resend_message",
            ),
            *super().get_urls(),
        ]

    def _event_for_post(self, request: HttpRequest, object_id: str) -> Event:
        event = self.get_object(request, object_id)
        if event is None or not self.has_view_permission(request, event):
            raise Http404("No such event.")
        return event

    def _back(self, event: Event) -> HttpResponseRedirect:
        return HttpResponseRedirect(reverse("admin:events_event_change", args=[event.pk]))

    def cancel_runs_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The page's "Cancel waiting runs" button: the same service and history entry as the action."""
        if not self.has_operate_permission(request):
            raise PermissionDenied
        event = self._event_for_post(request, object_id)
        try:
            cancelled = event_cancel(event=event)
        except ApiError as exc:
            self.message_user(request, f"{event.transaction_id}: {exc.detail}", messages.ERROR)
            return self._back(event)
        record_action(self, request, [event], f"Cancelled {cancelled} waiting run(s) from the admin.")
        self.message_user(request, f"{event.transaction_id}: cancelled {cancelled} run(s).", messages.SUCCESS)
        return self._back(event)

    def resend_view(self, request: HttpRequest, object_id: str, message_id: int) -> HttpResponse:
        """A failed message's "Resend" button: delivery's ``message_resend`` (a new message, the
        original kept), recorded on the message (as the Messages page's action does) and on the event."""
        if not self.has_resend_permission(request):
            raise PermissionDenied
        event = self._event_for_post(request, object_id)
        original = event_message(event=event, message_id=message_id)
        if original is None:
            raise Http404("No such message in this event.")
        if not message_resendable(original):
            self.message_user(
                request, f"Message {original.pk} is {original.status}: only failed messages are resent.", messages.ERROR
            )
            return self._back(event)
        copy = message_resend(message=original)
        record_action(self, request, [original], f"Resent from the admin as message {copy.pk}.")
        record_action(self, request, [event], f"Resent message {original.pk} as message {copy.pk}.")
        self.message_user(request, f"Message {original.pk} queued again as message {copy.pk}.", messages.SUCCESS)
        return self._back(event)

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

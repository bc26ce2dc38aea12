"""Inbox REST API, mounted under ``/api/v1/inbox/``."""

from django.urls import path

from apps.inbox import api
from apps.inbox.services import InboxAction

app_name = "inbox"

urlpatterns = [
    path("session", api.InboxSessionView.as_view(), name="session"),
    path("tokens", api.InboxTokenView.as_view(), name="tokens"),
    path("counts", api.InboxCountsView.as_view(), name="counts"),
    path("changes", api.InboxChangesView.as_view(), name="changes"),
    path("preferences", api.InboxPreferencesView.as_view(), name="preferences"),
    path("messages", api.InboxMessageListView.as_view(), name="messages"),
    path("messages/read-all", api.InboxReadAllView.as_view(), name="read-all"),
    path("messages/seen-all", api.InboxSeenAllView.as_view(), name="seen-all"),
    path("messages/archive-all", api.InboxArchiveAllView.as_view(), name="archive-all"),
    path("messages/<int:message_id>", api.InboxMessageDetailView.as_view(), name="message"),
    path("messages/<int:message_id>/snooze", api.InboxMessageSnoozeView.as_view(), name="message-snooze"),
    path(
        "messages/<int:message_id>/actions/<str:action_id>/complete",
        api.InboxMessageActionCompleteView.as_view(),
        name="message-action-complete",
    ),
    *[
        path(
            f"messages/<int:message_id>/{action.value}",
            api.InboxMessageMarkView.as_view(mark_action=action.value),
            name=f"message-{action.value}",
        )
        for action in InboxAction
    ],
]

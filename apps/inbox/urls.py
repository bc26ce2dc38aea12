"""Inbox REST API, mounted under ``/api/v1/inbox/``."""

from django.urls import path

from apps.inbox import api
from apps.inbox.services import InboxAction

app_name = "inbox"

urlpatterns = [
    path("session", api.InboxSessionView.as_view(), name="session"),
    path("counts", api.InboxCountsView.as_view(), name="counts"),
    path("messages", api.InboxMessageListView.as_view(), name="messages"),
    path("messages/read-all", api.InboxReadAllView.as_view(), name="read-all"),
    path("messages/seen-all", api.InboxSeenAllView.as_view(), name="seen-all"),
    *[
        path(
            f"messages/<int:message_id>/{action.value}",
            api.InboxMessageMarkView.as_view(mark_action=action.value),
            name=f"message-{action.value}",
        )
        for action in InboxAction
    ],
]

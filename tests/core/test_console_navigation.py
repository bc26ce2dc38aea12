"""The console's sidebar (apps/core/console_navigation.py, drawn by django-unfold): pages grouped by
what people do, each link shown only to staff who may view its page."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client, RequestFactory

from apps.core.console_navigation import GROUPS, sidebar

pytestmark = pytest.mark.django_db

TITLES = ["Activity", "Workflows", "Content", "Audience", "Delivery", "Settings"]


def _sidebar_links(html: str) -> list[str]:
    """The hrefs of the sidebar's links (unfold draws each as a 38px-high row), in order."""
    apps = html.split('id="nav-sidebar-apps"')[1]
    return re.findall(r'<a href="([^"]+)" class="flex h-\[38px\]', apps)


def _permission(label: str) -> Permission:
    app_label, codename = label.split(".")
    return Permission.objects.get(content_type__app_label=app_label, codename=codename)


def _staff(*permissions: str) -> Any:
    user = get_user_model().objects.create_user("operator", password="x", is_staff=True)
    for label in permissions:
        user.user_permissions.add(_permission(label))
    return user


def test_groups_are_what_people_do_in_order_and_every_link_resolves(admin_user: Any) -> None:
    request = RequestFactory().get("/admin/")
    request.user = admin_user
    groups = sidebar(request)
    assert [str(group["title"]) for group in groups[1:]] == TITLES == [str(title) for title, _ in GROUPS]
    assert [str(item["title"]) for item in groups[0]["items"]] == ["Home", "Savings report"]
    client = Client()
    client.force_login(admin_user)
    for group in groups:
        for item in group["items"]:
            assert item["permission"](request) is True
            assert client.get(item["link"]).status_code == 200, item["link"]


def test_the_sidebar_shows_only_the_pages_a_user_may_view(client: Client) -> None:
    client.force_login(_staff("events.view_event", "subscribers.change_subscriber"))
    html = client.get("/admin/").content.decode()
    links = _sidebar_links(html)
    assert "/admin/events/event/" in links and "/admin/subscribers/subscriber/" in links
    for hidden in (
        "/admin/workflows/workflow/",
        "/admin/delivery/message/",
        "/admin/tenancy/apikey/",
        "/admin/auth/user/",
    ):
        assert hidden not in links
    assert links[:2] == ["/admin/", "/admin/analytics/savings/"]


def test_a_user_who_is_not_staff_sees_no_link(rf: RequestFactory) -> None:
    user = get_user_model().objects.create_user("outsider", password="x")
    user.user_permissions.add(_permission("events.view_event"))
    request = rf.get("/admin/")
    request.user = user
    assert not any(item["permission"](request) for group in sidebar(request) for item in group["items"])


def test_a_page_missing_from_this_installation_is_left_out(admin_user: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """e.g. django-q2's queue page, registered only on its ORM broker (not with REDIS_URL)."""
    from apps.core import console_navigation

    links = [("Integrations", "hub", "delivery.integration"), ("Types", "x", "contenttypes.contenttype")]
    groups = [("Delivery", links)]
    monkeypatch.setattr(console_navigation, "GROUPS", groups)
    request = RequestFactory().get("/admin/")
    request.user = admin_user
    assert [item["link"] for item in sidebar(request)[1]["items"]] == ["/admin/delivery/integration/"]

from __future__ import annotations

import pytest
from django.utils import timezone

URL = "/admin/inbox/inboxmessage/"


@pytest.mark.parametrize("query", ["", "?read=yes", "?read=no", "?seen=no", "?archived=yes", "?q=alice"])
def test_admin_changelist(admin_client, alice, bob, make_message, query):
    make_message(alice, title="unread one")
    make_message(bob, title="read one", read_at=timezone.now(), seen_at=timezone.now())

    response = admin_client.get(URL + query)

    assert response.status_code == 200


def test_admin_read_filter(admin_client, alice, make_message):
    make_message(alice, title="unread one")
    make_message(alice, title="read one", read_at=timezone.now())

    unread = admin_client.get(URL + "?read=no").content.decode()
    read = admin_client.get(URL + "?read=yes").content.decode()

    assert "unread one" in unread and "read one" not in unread.replace("unread one", "")
    assert "read one" in read and "unread one" not in read


def test_admin_change_page(admin_client, alice, make_message):
    message = make_message(alice)
    assert admin_client.get(f"{URL}{message.pk}/change/").status_code == 200

"""The editor's history says "superseded" for versions a newer published one replaced, and its
sample payload field has a label (issue 12)."""

from __future__ import annotations

import re
from typing import Any

from apps.templates.services import template_upsert, template_version_create


def test_history_says_published_superseded_and_draft(admin_client: Any, tenant: Any) -> None:
    template, _ = template_upsert(
        environment=tenant.environment, key="hello", channel="in_app", sample_payload={"name": "Ada"}
    )
    for number, publish in ((1, True), (2, True), (3, False)):
        template_version_create(
            template=template, content={"en": {"title": f"v{number} {{{{ payload.name }}}}"}}, publish=publish
        )

    html = admin_client.get(f"/admin/notification_templates/template/{template.pk}/change/").content.decode()

    statuses = {
        number: status
        for number, status in re.findall(r'\?from_version=(\d+)">v\d+</a></td>\s*<td>(?:<strong>)?(\w+)', html)
    }
    assert statuses == {"1": "superseded", "2": "published", "3": "draft"}
    # The sample payload textarea is named by a <label>.
    assert '<label for="id_sample_payload">Sample payload (JSON)</label>' in html
    assert 'id="id_sample_payload"' in html

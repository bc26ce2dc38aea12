"""Create (once) the demo environment that `make run` shows a newcomer, and write var/demo.json.

Running it again changes nothing and prints the same keys: the raw keys exist only in
var/demo.json (a local development file), the database keeps their hashes.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from apps.preferences.services import category_upsert
from apps.subscribers.services import subscriber_upsert
from apps.templates.services import layout_upsert, template_upsert, template_version_create
from apps.tenancy.models import Environment
from apps.tenancy.services import environment_create
from apps.workflows.services import workflow_upsert

DEMO_SUBSCRIBER = "demo-user"

IN_APP = {
    "en": {"title": "{{ payload.author }} commented on {{ payload.post_title }}", "body": "“{{ payload.comment }}”"},
    "fr": {
        "title": "{{ payload.author }} a commenté {{ payload.post_title }}",
        "body": "« {{ payload.comment }} »",
    },
    "de": {
        "title": "{{ payload.author }} hat {{ payload.post_title }} kommentiert",
        "body": "„{{ payload.comment }}“",
    },
}
EMAIL = {
    "en": {
        "subject": "New comment on {{ payload.post_title }}",
        "body": "<p>Hi {{ subscriber.first_name or 'there' }},</p>"
        "<p>{{ payload.author }} wrote: <em>{{ payload.comment }}</em></p>",
    },
    "fr": {
        "subject": "Nouveau commentaire sur {{ payload.post_title }}",
        "body": "<p>Bonjour {{ subscriber.first_name or '' }},</p>"
        "<p>{{ payload.author }} a écrit : <em>{{ payload.comment }}</em></p>",
    },
    "de": {
        "subject": "Neuer Kommentar zu {{ payload.post_title }}",
        "body": "<p>Hallo {{ subscriber.first_name or '' }},</p>"
        "<p>{{ payload.author }} schrieb: <em>{{ payload.comment }}</em></p>",
    },
}
STEPS = [
    {"id": "inbox", "type": "in_app", "template": "comment-in-app"},
    {"id": "wait", "type": "delay", "for": "1m"},
    {"id": "mail", "type": "email", "template": "comment-email", "if": "not steps.inbox.read"},
]


class Command(BaseCommand):
    help = "Create the demo environment, admin user, templates and workflow; write var/demo.json."

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(settings.VAR_DIR) / "demo.json"
        demo = json.loads(path.read_text()) if path.exists() else {}
        with transaction.atomic():
            environment = Environment.objects.filter(slug=demo.get("environment_slug") or "-").first()
            if environment is None:
                created = environment_create(name="development", project_name="Demo")
                environment = created.environment
                demo = {
                    "environment_slug": environment.slug,
                    "secret_key": created.secret_key.raw,
                    "publishable_key": created.publishable_key.raw,
                    "inbox_hmac_secret": environment.inbox_hmac_secret,
                    "subscriber_id": DEMO_SUBSCRIBER,
                }
            demo.update(self._admin_user(demo))
            self._content(environment)
        path.write_text(json.dumps(demo, indent=2))
        path.chmod(0o600)
        self.stdout.write(f"Demo environment '{environment.slug}' ready; keys in {path}")

    def _admin_user(self, demo: dict[str, Any]) -> dict[str, str]:
        user_model = get_user_model()
        username = demo.get("admin_username", "admin")
        password = demo.get("admin_password") or secrets.token_urlsafe(12)
        user = user_model.objects.filter(username=username).first()
        if user is None:
            user_model.objects.create_superuser(username=username, email="admin@example.com", password=password)
        return {"admin_username": username, "admin_password": password}

    def _content(self, environment: Environment) -> None:
        subscriber_upsert(
            environment=environment,
            subscriber_id=DEMO_SUBSCRIBER,
            email="demo@example.com",
            first_name="Dana",
            last_name="Demo",
            locale="en",
        )
        category_upsert(
            environment=environment,
            key="comments",
            name="Comments",
            description="Replies and comments on your posts",
            default_channels={"in_app": True, "email": True},
        )
        # The environment's default email layout: every email version written from now on is framed
        # by it, with the preference-center and one-click unsubscribe links in its footer.
        layout_upsert(
            environment=environment,
            key="default",
            name="Demo layout",
            header={"en": "<strong>Clarion demo</strong>"},
            footer={
                "en": "You get this because you follow posts on the Clarion demo.",
                "fr": "Vous recevez ceci car vous suivez des publications sur la démo Clarion.",
                "de": "Sie erhalten dies, weil Sie Beiträgen in der Clarion-Demo folgen.",
            },
            brand_color="#4f46e5",
            show_unsubscribe=True,
            is_default=True,
        )
        for key, name, channel, content in [
            ("comment-in-app", "Comment (in-app)", "in_app", IN_APP),
            ("comment-email", "Comment (email)", "email", EMAIL),
        ]:
            template, _ = template_upsert(environment=environment, key=key, name=name, channel=channel)
            template_version_create(template=template, content=content, publish=True, skip_if_unchanged=True)
        workflow, _ = workflow_upsert(
            environment=environment,
            key="comment-created",
            name="New comment",
            description="In-app at once; an email a minute later if the in-app message is still unread.",
            category_key="comments",
            steps=STEPS,
        )
        if workflow.published_version is None or workflow.published_version.steps != STEPS:
            workflow_upsert(environment=environment, key="comment-created", publish=True)

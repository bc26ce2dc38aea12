"""Create the demo environment that `make run` shows a newcomer (what is missing of it), and write
var/demo.json.

Running it again creates nothing that exists and prints the same keys: edits made in the admin or
over the API (a published template, a changed workflow, a subscriber's language) are kept. The
raw keys exist only in var/demo.json (a local development file, mode 0600); the database keeps their
hashes.
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

from django.core.management.base import BaseCommand

from apps.demo import content
from apps.demo.selectors import demo_file_path, demo_file_read
from apps.demo.services import demo_admin_ensure, demo_seed


class Command(BaseCommand):
    help = "Create what is missing of the demo environment, admin user, templates and workflow; write var/demo.json."

    def handle(self, *args: Any, **options: Any) -> None:
        path = demo_file_path()
        demo = demo_file_read()
        seed = demo_seed(environment_slug=demo.get("environment_slug"))
        if seed.keys:
            demo = {**seed.keys, "subscriber_id": content.SUBSCRIBER_ID}
        username = str(demo.get("admin_username") or "admin")
        password = str(demo.get("admin_password") or secrets.token_urlsafe(12))
        if demo_admin_ensure(username=username, password=password):
            seed.created.append(f"admin user {username}")
        elif not demo.get("admin_password"):
            password = ""  # someone else's user: its password is not ours to know
        demo.update({"admin_username": username, "admin_password": password})

        # Written 0600 from the start: it holds the demo's secret key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(demo, indent=2) + "\n")
        path.chmod(0o600)

        if seed.created:
            self.stdout.write(f"Demo environment '{seed.environment.slug}': created {', '.join(seed.created)}.")
        else:
            self.stdout.write(f"Demo environment '{seed.environment.slug}' exists; nothing changed (edits are kept).")
        self.stdout.write(f"Keys in {path}")

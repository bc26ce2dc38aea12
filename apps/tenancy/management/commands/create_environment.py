from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from apps.tenancy.services import environment_create


class Command(BaseCommand):
    help = "Create an environment with a secret and a publishable key. Keys are shown once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Environment name, e.g. 'production'")
        parser.add_argument("--project", help="Project name (defaults to the environment name)")
        parser.add_argument("--json", action="store_true", help="Print machine-readable JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        created = environment_create(name=options["name"], project_name=options.get("project"))
        env = created.environment
        result = {
            "environment": {"id": env.pk, "name": env.name, "slug": env.slug, "project": env.project.name},
            "secret_key": created.secret_key.raw,
            "publishable_key": created.publishable_key.raw,
            "inbox_hmac_secret": env.inbox_hmac_secret,
        }
        if options["json"]:
            self.stdout.write(json.dumps(result, indent=2))
            return
        self.stdout.write(self.style.SUCCESS(f"Created environment {env} ({env.slug})"))
        self.stdout.write(f"  secret key       {result['secret_key']}   (server API; shown once)")
        self.stdout.write(f"  publishable key  {result['publishable_key']}   (inbox widget)")
        self.stdout.write(f"  inbox HMAC secret {result['inbox_hmac_secret']}")

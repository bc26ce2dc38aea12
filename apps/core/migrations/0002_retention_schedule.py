"""Install retention pruning as a django-q2 schedule (every five minutes), like the sweeper."""

from typing import Any

from django.db import migrations

SCHEDULE_NAME = "clarion.prune"


def create_schedule(apps: Any, schema_editor: Any) -> None:
    apps.get_model("django_q", "Schedule").objects.update_or_create(
        name=SCHEDULE_NAME,
        defaults={
            "func": "apps.core.retention.prune_scheduled",
            "schedule_type": "I",
            "minutes": 5,
            "repeats": -1,
        },
    )


def delete_schedule(apps: Any, schema_editor: Any) -> None:
    apps.get_model("django_q", "Schedule").objects.filter(name=SCHEDULE_NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("core", "0001_deferred_task"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(create_schedule, delete_schedule)]

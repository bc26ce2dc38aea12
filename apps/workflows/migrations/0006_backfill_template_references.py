"""Reference rows for every workflow's published version (what ``workflow_publish`` writes from now on)."""

from django.db import migrations

BATCH = 500


def backfill(apps, schema_editor):
    from apps.workflows.definitions import template_keys

    Workflow = apps.get_model("workflows", "Workflow")
    Template = apps.get_model("notification_templates", "Template")
    WorkflowTemplateReference = apps.get_model("workflows", "WorkflowTemplateReference")
    published = Workflow.objects.filter(published_version__isnull=False).order_by("pk")
    last_pk = 0
    while True:
        batch = list(
            published.filter(pk__gt=last_pk).values_list("pk", "environment_id", "published_version__steps")[:BATCH]
        )
        if not batch:
            return
        last_pk = batch[-1][0]
        rows = []
        for workflow_pk, environment_id, steps in batch:
            keys = template_keys(steps if isinstance(steps, list) else [])
            if not keys:
                continue
            for template_pk in Template.objects.filter(environment_id=environment_id, key__in=list(keys)).values_list(
                "pk", flat=True
            ):
                rows.append(WorkflowTemplateReference(workflow_id=workflow_pk, template_id=template_pk))
        WorkflowTemplateReference.objects.bulk_create(rows, ignore_conflicts=True)


class Migration(migrations.Migration):
    dependencies = [
        ("workflows", "0005_workflow_template_references"),
    ]

    operations = [
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]

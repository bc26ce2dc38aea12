"""A django-q2 worker runs task after task in one process: each starts with an empty log context."""

from __future__ import annotations

from typing import Any

from django.dispatch import receiver
from django_q.signals import pre_execute

from apps.observability.logs import clear_log_context


@receiver(pre_execute, dispatch_uid="clarion-observability-task-context")
def _task_started(sender: Any, **kwargs: Any) -> None:
    clear_log_context()

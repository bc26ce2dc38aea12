from __future__ import annotations

from django.db import models


class DeferredTask(models.Model):
    """A wake-up the task broker refused (Redis down, say), kept until the ticker enqueues it again.

    The rows it would wake are already committed: without this a trigger accepted while the broker
    was away would wait for the sweeper's stall timeout, or its client would see an error and retry.
    """

    func = models.CharField(max_length=200)
    args = models.JSONField(default=list)
    attempts = models.PositiveIntegerField(default=0)
    next_try_at = models.DateTimeField()
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["next_try_at"], name="deferredtask_next_try_idx")]

    def __str__(self) -> str:
        return f"{self.func} (attempt {self.attempts})"

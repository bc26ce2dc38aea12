from __future__ import annotations

from django.conf import settings
from django.db import models

from apps.preferences.models import CHANNEL_CHOICES
from apps.tenancy.models import Environment


class Template(models.Model):
    """A message for one channel. Content lives in immutable versions; one is published."""

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="templates")
    key = models.SlugField(max_length=100)
    name = models.CharField(max_length=200)
    channel = models.CharField(max_length=20, choices=CHANNEL_CHOICES)
    description = models.TextField(blank=True)
    published_version = models.ForeignKey(
        "TemplateVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["environment", "key"], name="uniq_template_per_env")]

    def __str__(self) -> str:
        return f"{self.key} ({self.channel})"


class TemplateVersion(models.Model):
    """Immutable content of a template. ``subject``, ``title`` and ``body`` are translated
    (django-modeltranslation adds ``subject_en``, ``subject_fr``…)."""

    template = models.ForeignKey(Template, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    subject = models.CharField(max_length=500, blank=True, help_text="Email subject")
    title = models.CharField(max_length=500, blank=True, help_text="In-app / push title")
    body = models.TextField(blank=True)
    action_url = models.CharField(max_length=2000, blank=True)
    note = models.CharField(max_length=500, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-number"]
        constraints = [models.UniqueConstraint(fields=["template", "number"], name="uniq_template_version")]

    def __str__(self) -> str:
        return f"{self.template.key} v{self.number}"

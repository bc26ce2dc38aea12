from __future__ import annotations

from typing import ClassVar

from django.conf import settings
from django.db import models

from apps.core.channels import CHANNEL_CHOICES
from apps.tenancy.models import Environment


class Template(models.Model):
    """A message for one channel. Content lives in immutable versions; one is published."""

    class Tracking(models.TextChoices):
        INHERIT = "inherit", "as the environment says"
        ON = "on", "on"
        OFF = "off", "off"

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="templates")
    key = models.SlugField(max_length=100)
    name = models.CharField(max_length=200)
    channel = models.CharField(max_length=20, choices=CHANNEL_CHOICES)
    description = models.TextField(blank=True)
    sample_payload = models.JSONField(
        default=dict, blank=True, help_text="Example payload for previews and validation (unknown variables)"
    )
    published_version = models.ForeignKey(
        "TemplateVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    tracking = models.CharField(
        max_length=10,
        choices=Tracking.choices,
        default=Tracking.INHERIT,
        help_text="Email open and click tracking for this template (the environment's switches by default).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["environment", "key"], name="uniq_template_per_env")]

    def __str__(self) -> str:
        return f"{self.key} ({self.channel})"


class EmailLayout(models.Model):
    """The frame an email body is rendered into: header, footer, brand colour, logo, CSS.

    ``header`` and ``footer`` are translated, sandboxed Jinja (HTML allowed); the footer shows
    ``preferences_url`` / ``unsubscribe_url`` links when the context carries them. Versions pick
    their layout when they are written (the environment's default when none is chosen)."""

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="email_layouts")
    key = models.SlugField(max_length=100)
    name = models.CharField(max_length=200)
    header = models.TextField(blank=True, help_text="HTML above the message (after the logo)")
    footer = models.TextField(blank=True, help_text="HTML below the message: address, why you get this email…")
    brand_color = models.CharField(max_length=7, default="#4f46e5", help_text="Hex colour, e.g. #4f46e5")
    logo_url = models.URLField(max_length=2000, blank=True)
    css = models.TextField(blank=True, help_text="Extra CSS; it is inlined into the HTML (css-inline)")
    show_unsubscribe = models.BooleanField(default=True, help_text="Show preference and unsubscribe links")
    is_default = models.BooleanField(default=False, help_text="Used by new email versions that choose none")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # modeltranslation swaps in its MultilingualManager (a Manager, untyped: django-stubs cannot resolve it)
    objects: ClassVar[models.Manager[EmailLayout]]
    _default_manager: ClassVar[models.Manager[EmailLayout]]

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["environment", "key"], name="uniq_layout_per_env"),
            models.UniqueConstraint(
                fields=["environment"], condition=models.Q(is_default=True), name="uniq_default_layout_per_env"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.key})"


class TemplateVersion(models.Model):
    """Immutable content of a template. ``subject``, ``title``, ``body``, ``preheader`` and the
    action labels are translated (django-modeltranslation adds ``subject_en``, ``subject_fr``…)."""

    class BodyFormat(models.TextChoices):
        MARKDOWN = "markdown", "Markdown"
        HTML = "html", "HTML"

    template = models.ForeignKey(Template, on_delete=models.CASCADE, related_name="versions")
    # modeltranslation swaps in its MultilingualManager (a Manager, untyped: django-stubs cannot resolve it)
    objects: ClassVar[models.Manager[TemplateVersion]]
    _default_manager: ClassVar[models.Manager[TemplateVersion]]
    number = models.PositiveIntegerField()
    subject = models.CharField(max_length=500, blank=True, help_text="Email subject")
    preheader = models.CharField(max_length=500, blank=True, help_text="Email preview text shown after the subject")
    title = models.CharField(max_length=500, blank=True, help_text="In-app / push title")
    body = models.TextField(blank=True)
    body_format = models.CharField(
        max_length=10,
        choices=BodyFormat.choices,
        default=BodyFormat.MARKDOWN,
        help_text="Email body: Markdown rendered into the layout, or raw HTML",
    )
    layout = models.ForeignKey(EmailLayout, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    action_url = models.CharField(max_length=2000, blank=True)
    primary_action_label = models.CharField(max_length=100, blank=True)
    primary_action_url = models.CharField(max_length=2000, blank=True)
    secondary_action_label = models.CharField(max_length=100, blank=True)
    secondary_action_url = models.CharField(max_length=2000, blank=True)
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

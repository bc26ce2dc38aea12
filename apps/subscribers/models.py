from __future__ import annotations

from django.db import models

from apps.tenancy.models import Environment


class Subscriber(models.Model):
    """A person the customer notifies, identified by the customer's own id."""

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="subscribers")
    subscriber_id = models.CharField(max_length=200)
    email = models.EmailField(max_length=320, blank=True)
    phone = models.CharField(max_length=32, blank=True)
    first_name = models.CharField(max_length=200, blank=True)
    last_name = models.CharField(max_length=200, blank=True)
    avatar = models.URLField(max_length=1000, blank=True)
    locale = models.CharField(max_length=20, blank=True)
    timezone = models.CharField(max_length=64, blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["environment", "subscriber_id"], name="uniq_subscriber_per_env"),
        ]

    def __str__(self) -> str:
        return self.subscriber_id

    def as_context(self) -> dict:
        """Plain data for templates and conditions (never hand the model to Jinja)."""
        return {
            "subscriber_id": self.subscriber_id,
            "email": self.email,
            "phone": self.phone,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "avatar": self.avatar,
            "locale": self.locale,
            "timezone": self.timezone,
            "data": self.data,
        }


class Topic(models.Model):
    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="topics")
    key = models.CharField(max_length=200)
    name = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["environment", "key"], name="uniq_topic_per_env")]

    def __str__(self) -> str:
        return self.key


class TopicSubscription(models.Model):
    topic = models.ForeignKey(Topic, on_delete=models.CASCADE, related_name="subscriptions")
    subscriber = models.ForeignKey(Subscriber, on_delete=models.CASCADE, related_name="topic_subscriptions")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["topic", "subscriber"], name="uniq_topic_subscription")]

    def __str__(self) -> str:
        return f"{self.subscriber_id} in {self.topic_id}"


class Device(models.Model):
    """Where a subscriber's push or chat messages go: a push token, or a chat incoming webhook.

    ``provider`` names the kind of endpoint: ``fcm`` (an FCM registration token) and ``webpush``
    (a browser PushSubscription: ``token`` is its endpoint URL, ``keys`` its ``p256dh``/``auth``)
    serve the push channel; ``slack``, ``discord`` and ``msteams`` (``token`` is an incoming
    webhook URL) serve the chat channel. A token the push service reports as gone is deleted.
    """

    PUSH_PROVIDERS = ("fcm", "webpush")
    CHAT_PROVIDERS = ("slack", "discord", "msteams")
    PROVIDER_CHOICES = [(p, p) for p in (*PUSH_PROVIDERS, *CHAT_PROVIDERS)]

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="devices")
    subscriber = models.ForeignKey(Subscriber, on_delete=models.CASCADE, related_name="devices")
    provider = models.CharField(max_length=20, choices=PROVIDER_CHOICES)
    token = models.CharField(max_length=2000)
    keys = models.JSONField(default=dict, blank=True, help_text="Web Push subscription keys (p256dh, auth)")
    name = models.CharField(max_length=200, blank=True, help_text="e.g. 'Pixel 8' or 'Firefox on Linux'")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            # One token belongs to one subscriber: registering it again moves it (a shared device
            # whose user changed).
            models.UniqueConstraint(fields=["environment", "provider", "token"], name="uniq_device_token"),
        ]
        indexes = [models.Index(fields=["subscriber", "provider"], name="device_subscriber_idx")]

    def __str__(self) -> str:
        return f"{self.provider} device of {self.subscriber_id}"

    @property
    def channel(self) -> str:
        return "push" if self.provider in self.PUSH_PROVIDERS else "chat"

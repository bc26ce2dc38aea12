"""Reads for delivery: where a subscriber can be reached, integrations and messages of an environment."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from django.db.models import Count, QuerySet, Subquery

from apps.core.errors import NotFound
from apps.delivery.addresses import SUPPRESSIBLE_CHANNELS, address_normalize, channel_address
from apps.delivery.models import Integration, Message, Suppression
from apps.preferences.models import Category
from apps.subscribers.models import Device, Subscriber
from apps.tenancy.models import Environment


def reachable_channels(
    *, subscribers: Sequence[Subscriber], channels: Collection[str] | None = None
) -> dict[int, set[str]]:
    """Subscriber pk → the channels that subscriber has a usable address for.

    The engine calls this once per chunk of runs and skips (with reason ``no_address``) a channel
    step whose channel is missing. In-app and webhook need no address of the subscriber's own.
    Email and SMS need an address that has not been made inactive (hard bounce, complaint,
    invalid number); push needs a registered push device; chat needs a chat webhook of the
    subscriber's or an active chat integration with a channel webhook of its own.
    At most three queries, whatever the number of subscribers.

    ``channels``: only these are looked up (the engine passes the channels a chunk's runs can still
    send on); the answer then holds no other channel but in-app and webhook. An in-app-only chunk
    makes no query.
    """
    if not subscribers:
        return {}
    wanted = set(channels) if channels is not None else None
    suppressible = [c for c in SUPPRESSIBLE_CHANNELS if wanted is None or c in wanted]
    env_ids = {s.environment_id for s in subscribers}
    own: dict[int, dict[str, str]] = {}
    for subscriber in subscribers:
        for channel in suppressible:
            address = channel_address(subscriber=subscriber, channel=channel)
            if address:
                own.setdefault(subscriber.pk, {})[channel] = address_normalize(channel=channel, address=address)
    addresses = {address for by_channel in own.values() for address in by_channel.values()}
    suppressed: set[tuple[int, str, str]] = set()
    if addresses:
        suppressed = set(
            Suppression.objects.filter(
                environment_id__in=env_ids, channel__in=SUPPRESSIBLE_CHANNELS, address__in=addresses
            ).values_list("environment_id", "channel", "address")
        )
    device_channels: dict[int, set[str]] = {}
    if wanted is None or wanted & {"push", "chat"}:
        for subscriber_pk, provider in (
            Device.objects.filter(subscriber_id__in=[s.pk for s in subscribers])
            .values_list("subscriber_id", "provider")
            .distinct()
        ):
            device_channel = "push" if provider in Device.PUSH_PROVIDERS else "chat"
            if wanted is None or device_channel in wanted:
                device_channels.setdefault(subscriber_pk, set()).add(device_channel)
    envs_with_chat_channel: set[int] = set()
    if wanted is None or "chat" in wanted:
        envs_with_chat_channel = {
            env_id
            for env_id, credentials in Integration.objects.filter(
                environment_id__in=env_ids, channel="chat", active=True
            ).values_list("environment_id", "credentials")
            if isinstance(credentials, dict) and credentials.get("webhook_url")
        }

    reachable: dict[int, set[str]] = {}
    for subscriber in subscribers:
        channels = {"in_app", "webhook"} | device_channels.get(subscriber.pk, set())
        env = subscriber.environment_id
        for channel, address in own.get(subscriber.pk, {}).items():
            if (env, channel, address) not in suppressed:
                channels.add(channel)
        if env in envs_with_chat_channel:
            channels.add("chat")
        reachable[subscriber.pk] = channels
    return reachable


def integration_list(*, environment: Environment, channel: str | None = None) -> QuerySet[Integration]:
    queryset = Integration.objects.filter(environment=environment)
    if channel:
        queryset = queryset.filter(channel=channel)
    return queryset


def integration_get(*, environment: Environment, integration_id: int) -> Integration:
    integration = Integration.objects.filter(environment=environment, pk=integration_id).first()
    if integration is None:
        raise NotFound(f"Integration {integration_id} was not found.", details={"integration_id": integration_id})
    return integration


def integration_by_webhook_key(*, key: str, providers: Sequence[str] | None = None) -> Integration | None:
    queryset = Integration.objects.filter(webhook_key=key)
    if providers is not None:
        queryset = queryset.filter(provider__in=list(providers))
    return queryset.first()


def message_list(*, environment: Environment, filters: dict[str, str | None] | None = None) -> QuerySet[Message]:
    """Outbound messages of the environment, newest first. Filters: ``status``, ``channel``,
    ``subscriber_id``, ``transaction_id``, ``workflow``, ``provider``."""
    filters = filters or {}
    queryset = Message.objects.filter(environment=environment).select_related("subscriber")
    for name, lookup in (
        ("status", "status"),
        ("channel", "channel"),
        ("provider", "provider"),
        ("subscriber_id", "subscriber__subscriber_id"),
        ("transaction_id", "data__transaction_id"),
        ("workflow", "data__workflow"),
    ):
        value = filters.get(name)
        if value:
            queryset = queryset.filter(**{lookup: value})
    return queryset


def message_get(*, environment: Environment, message_id: int) -> Message:
    message = (
        Message.objects.filter(environment=environment, pk=message_id)
        .select_related("subscriber")
        .prefetch_related("attempts_log", "events")
        .first()
    )
    if message is None:
        raise NotFound(f"Message {message_id} was not found.", details={"message_id": message_id})
    return message


def message_category(*, message: Message) -> Category | None:
    """The category of a message, in one query: its run's workflow version's; without a run, the one
    named in its data (a category digest) or its workflow's (a resend copy). None for a message
    without one (an admin test send)."""
    from apps.workflows.models import Run, Workflow

    categories = Category.objects.filter(environment_id=message.environment_id)
    if message.run_id is not None:
        key = Run.objects.filter(pk=message.run_id).values("workflow_version__category_key")[:1]
        return categories.filter(key=Subquery(key)).first()
    data = message.data or {}
    if isinstance(data.get("category"), str) and data["category"]:
        return categories.filter(key=data["category"]).first()
    if isinstance(data.get("workflow"), str) and data["workflow"]:
        workflow = Workflow.objects.filter(environment_id=message.environment_id, key=data["workflow"])
        return categories.filter(pk=Subquery(workflow.values("category_id")[:1])).first()
    return None


def message_status_counts(*, environment_id: int) -> dict[str, int]:
    """Messages of the environment by status, every status present (``in_doubt`` included), in one
    query over the (environment, status) index."""
    counts = dict.fromkeys(Message.Status.values, 0)
    rows = Message.objects.filter(environment_id=environment_id).values_list("status").annotate(n=Count("id"))
    for status, n in rows.order_by():
        counts[status] = n
    return counts

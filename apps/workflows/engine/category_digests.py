"""Category digests: messages held back (a frequency cap, a daily or weekly choice) sent as one."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from django.db import transaction
from django.utils import timezone
from django.utils.html import escape, strip_tags

from apps.analytics.counters import Tally
from apps.core.tasks import enqueue_on_commit
from apps.delivery.services import DELIVER_TASK, message_build, messages_create_bulk
from apps.inbox.services import InboxItem, inbox_messages_create
from apps.preferences.models import Category
from apps.templates.rendering import build_render_context, render_version
from apps.templates.selectors import published_versions_for_keys
from apps.workflows import accounting, digests
from apps.workflows.models import DigestBucket


def category_digests_send(*, bucket_pks: Sequence[int]) -> int:
    """Send each due category digest once: one message with everything held in it."""
    sent = 0
    for bucket_pk in bucket_pks:
        with transaction.atomic():
            claimed = DigestBucket.objects.filter(
                pk=bucket_pk, status__in=digests.ACTIVE, workflow__isnull=True
            ).update(status=DigestBucket.Status.SENT, closed_at=timezone.now())
            if not claimed:
                continue
            bucket = DigestBucket.objects.select_related("subscriber").get(pk=bucket_pk)
            events = digests.digest_events(bucket_pks=[bucket_pk]).get(bucket_pk, [])
            if not events:
                DigestBucket.objects.filter(pk=bucket_pk).update(status=DigestBucket.Status.EMPTY)
                continue
            _send_category_digest(bucket, events)
            sent += 1
    return sent


def _send_category_digest(bucket: DigestBucket, events: list[dict[str, Any]]) -> None:
    subscriber = bucket.subscriber
    category = Category.objects.filter(environment_id=bucket.environment_id, key=bucket.category_key).first()
    template_key = (category.digest_templates or {}).get(bucket.channel) if category else None
    digest = {"count": len(events), "key": bucket.category_key, "events": events}
    subject, body, version, locale, action_url = "", "", None, "", ""
    if template_key:
        version = published_versions_for_keys(environment=bucket.environment_id, keys={template_key}).get(template_key)
    if version is not None:
        context = build_render_context(payload={}, subscriber=subscriber.as_context(), actor=None)
        context["digest"] = digest
        rendered = render_version(version=version, locale=subscriber.locale, context=context)
        subject = rendered.subject if bucket.channel == "email" else rendered.title
        body, locale, action_url = rendered.body, rendered.locale, rendered.action_url
    else:
        subject, body = _plain_digest(bucket, events)
    message = message_build(
        environment_id=bucket.environment_id,
        channel=bucket.channel,
        subscriber=subscriber,
        step_id=f"digest:{bucket.category_key or 'general'}",
        template_version=version,
        locale=locale,
        subject=subject,
        body=body,
        data={"digest_bucket": bucket.pk, "category": bucket.category_key, "count": len(events)},
    )
    messages_create_bulk(messages=[message])
    _count_digest_sent(bucket, events, template_key or "", body)
    if bucket.channel == "in_app":
        inbox = InboxItem(
            environment_id=bucket.environment_id,
            subscriber_id=subscriber.pk,
            category_key=bucket.category_key,
            title=subject,
            body=body,
            action_url=action_url,
            data={"digest_bucket": bucket.pk, "count": len(events)},
        )
        inbox_messages_create(items=[(inbox, message)])
    else:
        enqueue_on_commit(DELIVER_TASK, [message.pk])


def _count_digest_sent(bucket: DigestBucket, events: list[dict[str, Any]], template_key: str, body: str) -> None:
    """One message sent in place of the held ones: an actual message, and one of the held messages
    taken back from the lever that held most of them (``replaced:<lever>``: the report nets it)."""
    reasons = Counter(str(event.get("held_for") or "frequency_cap") for event in events)
    lever = accounting.LEVER_OF_REASON.get(reasons.most_common(1)[0][0], "frequency_cap")
    # workflow "": a category digest gathers the messages of any workflow of the category
    dims = accounting.Dims(bucket.environment_id, timezone.now(), "", bucket.category_key, bucket.channel, template_key)
    tally = Tally()
    dims.add(tally, accounting.ACTUAL)
    dims.add(tally, f"{accounting.REPLACED}:{lever}")
    if bucket.channel == "sms":
        accounting.count_sms_body(tally, dims, body)
    tally.write()


def _plain_digest(bucket: DigestBucket, events: list[dict[str, Any]]) -> tuple[str, str]:
    """A digest without a template of its own: a count and the held messages, one after another."""
    subject = f"{len(events)} new notification{'s' if len(events) != 1 else ''}"
    if bucket.channel == "email":
        items = "".join(
            f"<li><strong>{escape(e.get('subject', ''))}</strong><div>{e.get('body', '')}</div></li>" for e in events
        )
        return subject, f"<h1>{escape(subject)}</h1><ul>{items}</ul>"
    lines = [e.get("subject") or strip_tags(e.get("body", ""))[:140] for e in events]
    return subject, "\n".join(f"- {line}" for line in lines)

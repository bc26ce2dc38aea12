"""The reference workload: a realistic simulated week driven through the real engine.

``workload_run`` builds a fresh environment (through the apps' services, like the demo seed),
then moves a clock through the simulated days. At each step it triggers what is due (through
``apps.events.services``: single triggers, bulk triggers for comment bursts, a topic trigger for
the newsletter), runs what the worker would (``engine.sweep``: the ticker's due delays, digest
windows, escalation waits, category digests, retries), and plays the subscribers' and the
providers' side: in-app reads through ``inbox_message_mark``, provider callbacks (delivered,
opened, clicked, spam complaints) through ``message_events_record``.

Outbound messages really go through ``messages_deliver`` and the real provider classes
(Postmark through Anymail for email, the HTTP SMS gateway for SMS), pointed at a loopback fake
that answers like the provider; nothing leaves the machine. Tasks run inline
(``CLARION_TASKS_EAGER``), the inbox's realtime pushes go to an in-memory channel layer (no
browser is connected to simulated subscribers), and the simulation's integrations are switched
off at the end so that a live worker never tries the fake again.

Every random choice comes from ``random.Random`` seeded by the seed and a stable name of what is
decided (a subscriber, a trigger, a message's transaction id), never from the order rows were
created in: the same seed gives the same workload and the same counts. See docs/analytics.md,
"Reference workload".
"""

from __future__ import annotations

import heapq
import itertools
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

import time_machine
from django.db import transaction
from django.test.utils import override_settings

from apps.delivery.models import Integration, Message
from apps.delivery.services import (
    StatusEvent,
    address_suppress,
    integration_create,
    integration_update,
    message_events_record,
)
from apps.events.services import TriggerRequest, event_trigger, event_trigger_bulk
from apps.inbox.models import InboxMessage
from apps.inbox.services import inbox_message_mark
from apps.preferences.models import PreferenceChange
from apps.preferences.services import PreferenceInput, category_upsert, preferences_apply, quiet_hours_set
from apps.subscribers.models import Subscriber
from apps.subscribers.services import subscriber_bulk_upsert, topic_subscribers_add, topic_upsert
from apps.templates.services import template_upsert, template_version_create
from apps.tenancy.models import Environment
from apps.tenancy.services import environment_create
from apps.workflows.engine import sweep
from apps.workflows.models import Run, StepRun
from apps.workflows.services import frequency_cap_upsert, workflow_upsert

# The default first day, a fixed date so that a seed gives the same counts whenever the workload
# is run: a Monday in January, when none of the subscribers' time zones changes to or from
# daylight saving time.
DEFAULT_START = datetime(2026, 1, 5, tzinfo=UTC)
TIMEZONES = ("UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo", "America/Sao_Paulo")
LOCALES = (("en", 0.7), ("fr", 0.15), ("de", 0.15))
FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Margaret", "Linus", "Radia", "Guido")
# How busy the product is at each UTC hour (triggers are spread by these weights).
HOURLY_WEIGHTS = (1, 1, 1, 1, 1, 2, 3, 5, 7, 8, 8, 8, 7, 8, 8, 8, 7, 6, 5, 4, 3, 2, 2, 1)

CRITICAL_WORKFLOW = "password-reset"


# --------------------------------------------------------------------------------------------
# What the workload is made of
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkloadSpec:
    subscribers: int = 10_000
    days: int = 7
    seed: int = 42
    start: datetime = DEFAULT_START
    # The clock moves in steps of this size; each step runs what the ticker would have started.
    step: timedelta = timedelta(minutes=5)
    # After the last trigger the clock goes on this long (no new triggers) so that digests,
    # escalations, quiet hours and daily category digests finish.
    drain: timedelta = timedelta(days=1)

    @property
    def triggers_end(self) -> datetime:
        return self.start + timedelta(days=self.days)

    @property
    def end(self) -> datetime:
        return self.triggers_end + self.drain


@dataclass(frozen=True)
class Person:
    """A simulated subscriber and the choices the setup gives them."""

    index: int
    subscriber_id: str
    email: str
    phone: str
    locale: str
    timezone: str
    first_name: str
    bounced: bool  # the address hard-bounced before the week: suppressed at setup
    unsubscribed: bool  # unsubscribed from everything non-critical
    no_marketing_email: bool
    daily_comment_digest: bool
    no_reminder_sms: bool
    quiet_hours: bool
    newsletter: bool  # a member of the newsletter topic
    activity: float  # how engaged this person is (scales read and open probabilities)
    power: bool  # follows many more posts than most (hits the comment email cap)


# Categories: key -> (name, critical, default channels).
CATEGORIES: dict[str, tuple[str, bool, dict[str, bool]]] = {
    "security": ("Security", True, {"in_app": True, "email": True}),
    "comments": ("Comments", False, {"in_app": True, "email": True}),
    "marketing": ("Newsletter", False, {"email": True}),
    "reminders": ("Reminders", False, {"in_app": True, "email": True, "sms": True}),
    "orders": ("Orders", False, {"in_app": True, "email": True, "sms": True}),
}

# Templates: key -> (channel, English content).
TEMPLATES: dict[str, tuple[str, dict[str, str]]] = {
    "reset-in-app": ("in_app", {"title": "Password reset requested", "body": "Use the link we emailed you."}),
    "reset-email": (
        "email",
        {"subject": "Reset your password", "body": "<p>Hi {{ subscriber.first_name }}, reset it here.</p>"},
    ),
    "comment-in-app": (
        "in_app",
        {"title": "{{ payload.author }} commented on {{ payload.post_title }}", "body": "{{ payload.comment }}"},
    ),
    "comment-digest-email": (
        "email",
        {
            "subject": "{{ digest.count }} new comment(s) on {{ payload.post_title }}",
            "body": "<ul>{% for e in digest.events %}<li>{{ e.payload.comment }}</li>{% endfor %}</ul>",
        },
    ),
    "newsletter-email": (
        "email",
        {"subject": "This week at Clarion", "body": "<p>Hi {{ subscriber.first_name }}, here is the news.</p>"},
    ),
    "reminder-in-app": ("in_app", {"title": "Reminder: {{ payload.task }}", "body": "Due {{ payload.due }}"}),
    "reminder-email": ("email", {"subject": "Reminder: {{ payload.task }}", "body": "<p>Due {{ payload.due }}</p>"}),
    "reminder-sms": ("sms", {"body": "Reminder: {{ payload.task }} is due {{ payload.due }}"}),
    "order-in-app": ("in_app", {"title": "Order {{ payload.order }} shipped", "body": "On its way."}),
    "order-email": ("email", {"subject": "Order {{ payload.order }} shipped", "body": "<p>It is on its way.</p>"}),
    "order-sms": ("sms", {"body": "Express order {{ payload.order }} shipped, arriving tomorrow."}),
}

# Workflows: key -> (name, category, steps).
WORKFLOWS: dict[str, tuple[str, str, list[dict[str, Any]]]] = {
    CRITICAL_WORKFLOW: (
        "Password reset",
        "security",
        [
            {"id": "inbox", "type": "in_app", "template": "reset-in-app"},
            {"id": "mail", "type": "email", "template": "reset-email"},
        ],
    ),
    "comment-created": (
        "New comment",
        "comments",
        [
            {"id": "inbox", "type": "in_app", "template": "comment-in-app"},
            {"id": "batch", "type": "digest", "window": "1h", "key": "payload.post_id"},
            {"id": "mail", "type": "email", "template": "comment-digest-email"},
        ],
    ),
    "weekly-newsletter": (
        "Weekly newsletter",
        "marketing",
        [{"id": "mail", "type": "email", "template": "newsletter-email"}],
    ),
    "task-reminder": (
        "Task reminder",
        "reminders",
        [
            {
                "id": "reach",
                "type": "escalate",
                "stop_on": "read",
                "channels": [
                    {"channel": "in_app", "template": "reminder-in-app"},
                    {"channel": "email", "after": "1h", "template": "reminder-email"},
                    {"channel": "sms", "after": "4h", "template": "reminder-sms"},
                ],
            }
        ],
    ),
    "order-shipped": (
        "Order shipped",
        "orders",
        [
            {"id": "inbox", "type": "in_app", "template": "order-in-app"},
            {"id": "mail", "type": "email", "template": "order-email"},
            {"id": "text", "type": "sms", "template": "order-sms", "if": "payload.express"},
        ],
    ),
}
WORKFLOW_CATEGORY = {key: category for key, (_, category, _) in WORKFLOWS.items()}

# Engagement: workflow (or "digest" for category digests) -> probabilities and typical delays.
READ_IN_APP: dict[str, tuple[float, float]] = {  # probability, median minutes to read
    CRITICAL_WORKFLOW: (0.85, 4),
    "comment-created": (0.5, 120),
    "task-reminder": (0.45, 45),
    "order-shipped": (0.6, 90),
    "digest": (0.5, 180),
}
OPEN_EMAIL: dict[str, tuple[float, float, float]] = {  # open probability, median minutes, click | open
    CRITICAL_WORKFLOW: (0.75, 3, 0.6),
    "comment-created": (0.35, 90, 0.25),
    "weekly-newsletter": (0.22, 240, 0.12),
    "task-reminder": (0.3, 60, 0.2),
    "order-shipped": (0.45, 120, 0.3),
    "digest": (0.3, 240, 0.15),
}
COMPLAINT_RATE = 0.003  # of delivered newsletter emails: a spam complaint (the address is suppressed)

# Triggers per subscriber per day.
RESET_RATE = 0.004
REMINDER_RATE = 0.03
ORDER_RATE = 0.02
EXPRESS_SHARE = 0.2
POSTS_PER_SUBSCRIBER_DAY = 0.01  # comment bursts: posts that get comments that day
POWER_USERS = 0.05  # share of subscribers who follow many posts ...
POWER_WEIGHT = 30  # ... this many times more than the others


def _rng(seed: int, *names: Any) -> random.Random:
    """A generator of its own for one decision, seeded by the seed and what is decided."""
    return random.Random(":".join([str(seed), *map(str, names)]))


def people_for(spec: WorkloadSpec) -> list[Person]:
    people = []
    for index in range(spec.subscribers):
        rng = _rng(spec.seed, "person", index)
        locale = rng.choices([code for code, _ in LOCALES], [weight for _, weight in LOCALES])[0]
        people.append(
            Person(
                index=index,
                subscriber_id=f"sim-{index:06d}",
                email=f"user{index}@example.com",
                phone=f"+1555{index:07d}" if rng.random() >= 0.1 else "",
                locale=locale,
                timezone=rng.choice(TIMEZONES),
                first_name=rng.choice(FIRST_NAMES),
                bounced=rng.random() < 0.005,
                unsubscribed=rng.random() < 0.02,
                no_marketing_email=rng.random() < 0.3,
                daily_comment_digest=rng.random() < 0.1,
                no_reminder_sms=rng.random() < 0.1,
                quiet_hours=rng.random() < 0.2,
                newsletter=rng.random() < 0.95,
                activity=rng.uniform(0.5, 1.5),
                power=rng.random() < POWER_USERS,
            )
        )
    return people


@dataclass(frozen=True)
class Trigger:
    at: datetime
    workflow: str
    transaction_id: str
    to: tuple[str, ...]  # subscriber ids; empty with ``topic``
    payload: dict[str, Any]
    actor: str | None = None
    topic: str | None = None


def _moment(rng: random.Random, day: datetime) -> datetime:
    hour = rng.choices(range(24), HOURLY_WEIGHTS)[0]
    return day + timedelta(hours=hour, seconds=rng.randrange(3600))


def schedule_for(spec: WorkloadSpec, people: list[Person]) -> list[Trigger]:
    """Every trigger of the simulated days, in time order."""
    triggers: list[Trigger] = []
    count = len(people)
    cumulative = list(itertools.accumulate(POWER_WEIGHT if p.power else 1 for p in people))
    for day_index in range(spec.days):
        day = spec.start + timedelta(days=day_index)
        rng = _rng(spec.seed, "day", day_index)
        for name, rate in (("reset", RESET_RATE), ("reminder", REMINDER_RATE), ("order", ORDER_RATE)):
            # At least one a day of each kind, so that a small workload still has every kind.
            for n in range(max(1, _poisson(rng, rate * count))):
                person = people[rng.randrange(count)]
                tid = f"sim-{spec.seed}-{day_index}-{name}-{n}"
                at = _moment(rng, day)
                if name == "reset":
                    triggers.append(Trigger(at, CRITICAL_WORKFLOW, tid, (person.subscriber_id,), {"ip": "192.0.2.1"}))
                elif name == "reminder":
                    due = (at + timedelta(days=1)).strftime("%A")
                    reminder = {"task": f"Task {n}", "due": due}
                    triggers.append(Trigger(at, "task-reminder", tid, (person.subscriber_id,), reminder))
                else:
                    order = {"order": f"{day_index}-{n}", "express": rng.random() < EXPRESS_SHARE}
                    triggers.append(Trigger(at, "order-shipped", tid, (person.subscriber_id,), order))
        # Comment bursts: a post gets a few comments within minutes; its followers hear of each.
        for post in range(max(1, _poisson(rng, POSTS_PER_SUBSCRIBER_DAY * count))):
            followers = _followers(rng, people, cumulative, rng.randint(3, 12))
            at = _moment(rng, day)
            post_id = f"{day_index}-{post}"
            for comment in range(rng.randint(2, 6)):
                author = people[rng.randrange(count)]
                recipients = tuple(p.subscriber_id for p in followers if p is not author)
                payload = {
                    "post_id": post_id,
                    "post_title": f"Post {post_id}",
                    "author": author.first_name,
                    "comment": f"Comment {comment} on post {post_id}",
                }
                tid = f"sim-{spec.seed}-{day_index}-comment-{post}-{comment}"
                triggers.append(Trigger(at, "comment-created", tid, recipients, payload, actor=author.subscriber_id))
                at += timedelta(seconds=int(rng.expovariate(1 / 240)))
        if day.weekday() == 1:  # the newsletter: Tuesdays, 10:00 UTC, to its topic
            tid = f"sim-{spec.seed}-{day_index}-newsletter"
            at = day + timedelta(hours=10)
            triggers.append(Trigger(at, "weekly-newsletter", tid, (), {"issue": day_index}, topic="newsletter"))
    triggers.sort(key=lambda t: (t.at, t.transaction_id))
    return triggers


def _followers(rng: random.Random, people: list[Person], cumulative: list[int], wanted: int) -> list[Person]:
    """``wanted`` distinct followers of a post; power users are ``POWER_WEIGHT`` times as likely."""
    chosen: dict[int, Person] = {}
    while len(chosen) < min(wanted, len(people)):
        person = rng.choices(people, cum_weights=cumulative)[0]
        chosen.setdefault(person.index, person)
    return list(chosen.values())


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method for small means, a rounded normal for large ones (both seeded)."""
    if mean <= 0:
        return 0
    if mean > 50:
        return max(0, round(rng.gauss(mean, mean**0.5)))
    limit, k, p = pow(2.718281828459045, -mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


# --------------------------------------------------------------------------------------------
# The fake providers: a loopback HTTP server answering like Postmark and an SMS gateway
# --------------------------------------------------------------------------------------------


class _FakeProviders:
    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                kind = "email" if self.path.startswith("/email") else "sms"
                with lock:
                    outer.sent[kind] += 1
                    number = outer.sent[kind]
                if kind == "email":
                    to = json.loads(raw or b"{}").get("To", "")
                    body = {"To": to, "MessageID": f"sim-email-{number}", "ErrorCode": 0, "Message": "OK"}
                else:
                    body = {"id": f"sim-sms-{number}", "status": "queued"}
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="workload-fake-providers", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def _simulation_settings() -> Iterator[_FakeProviders]:
    fake = _FakeProviders()
    try:
        with override_settings(
            CLARION_TASKS_EAGER=True,
            CLARION_ALLOWED_PRIVATE_NETWORKS=["127.0.0.0/8"],
            CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}},
        ):
            yield fake
    finally:
        fake.close()


# --------------------------------------------------------------------------------------------
# Setup: a fresh environment built through the apps' services
# --------------------------------------------------------------------------------------------


@dataclass
class World:
    environment: Environment
    people: dict[str, Person]  # by subscriber id
    by_pk: dict[int, Person]
    integrations: dict[int, Integration]  # by pk


@transaction.atomic
def world_build(spec: WorkloadSpec, people: list[Person], fake_url: str) -> World:
    made = environment_create(name=f"workload seed {spec.seed}", project_name="Reference workload")
    environment = made.environment
    for key, (name, critical, channels) in CATEGORIES.items():
        category_upsert(environment=environment, key=key, name=name, critical=critical, default_channels=channels)
    for key, (channel, content) in TEMPLATES.items():
        template, _ = template_upsert(environment=environment, key=key, name=key, channel=channel)
        template_version_create(
            template=template, content={"en": content}, body_format="html" if channel == "email" else "", publish=True
        )
    for key, (name, category, steps) in WORKFLOWS.items():
        workflow_upsert(environment=environment, key=key, name=name, category_key=category, steps=steps, publish=True)
    # Caps on paid channels for everything non-critical, and at most one comment email a day
    # (power users hit it: the rest of their comment emails wait for the daily comments digest).
    frequency_cap_upsert(environment=environment, channel="email", limit=6, window="1d")
    frequency_cap_upsert(environment=environment, channel="email", limit=1, window="1d", category_key="comments")
    frequency_cap_upsert(environment=environment, channel="sms", limit=2, window="1d")
    email = integration_create(
        environment=environment,
        channel="email",
        provider="postmark",
        name="Postmark (simulated)",
        credentials={"server_token": "simulated", "api_url": f"{fake_url}/email/"},
        settings={"from_email": "Clarion <notifications@example.com>"},
    )
    sms = integration_create(
        environment=environment,
        channel="sms",
        provider="http",
        name="SMS gateway (simulated)",
        credentials={"url": f"{fake_url}/sms"},
        settings={"from": "+15550000000"},
    )

    subscribers: list[Subscriber] = []
    for start in range(0, len(people), 1000):
        subscribers += subscriber_bulk_upsert(
            environment=environment,
            items=[
                {
                    "subscriber_id": p.subscriber_id,
                    "email": p.email,
                    "phone": p.phone,
                    "first_name": p.first_name,
                    "locale": p.locale,
                    "timezone": p.timezone,
                }
                for p in people[start : start + 1000]
            ],
        )
    by_id = {s.subscriber_id: s for s in subscribers}
    topic, _ = topic_upsert(environment=environment, key="newsletter", name="Newsletter")
    members = [p.subscriber_id for p in people if p.newsletter]
    for start in range(0, len(members), 1000):
        topic_subscribers_add(topic=topic, subscriber_ids=members[start : start + 1000])

    inputs = []
    for p in people:
        categories: dict[str, dict[str, bool]] = {}
        if p.no_marketing_email:
            categories["marketing"] = {"email": False}
        if p.no_reminder_sms:
            categories["reminders"] = {"sms": False}
        frequencies = {"comments": "daily"} if p.daily_comment_digest else {}
        if categories or frequencies or p.unsubscribed:
            inputs.append(
                PreferenceInput(
                    subscriber=by_id[p.subscriber_id],
                    channels={},
                    categories=categories,
                    frequencies=frequencies,
                    unsubscribed=True if p.unsubscribed else None,
                )
            )
    for start in range(0, len(inputs), 1000):
        preferences_apply(
            environment_id=environment.pk, items=inputs[start : start + 1000], source=PreferenceChange.Source.API
        )
    for p in people:
        if p.quiet_hours:
            quiet_hours_set(subscriber=by_id[p.subscriber_id], start=clock_time(22), end=clock_time(7))
        if p.bounced:
            address_suppress(
                environment_id=environment.pk,
                channel="email",
                address=p.email,
                reason="bounced",
                detail="hard bounce before the simulated week",
            )
    return World(
        environment=environment,
        people={p.subscriber_id: p for p in people},
        by_pk={by_id[p.subscriber_id].pk: p for p in people},
        integrations={email.pk: email, sms.pk: sms},
    )


# --------------------------------------------------------------------------------------------
# The run: a moving clock, triggers, the worker's due work, and engagement
# --------------------------------------------------------------------------------------------


class _Sent(NamedTuple):
    """An outbound message the provider accepted, as its callbacks need it."""

    pk: int
    channel: str
    integration_id: int
    provider_message_id: str
    recipient: str


@dataclass(frozen=True)
class _SubscriberRef:
    pk: int
    environment_id: int


@dataclass
class WorkloadResult:
    environment: Environment
    spec: WorkloadSpec
    triggers: Counter[str] = field(default_factory=Counter)  # events per workflow
    engagement: Counter[str] = field(default_factory=Counter)  # what the simulated people and providers did
    seconds: float = 0.0


class _Simulation:
    def __init__(self, spec: WorkloadSpec, world: World, result: WorkloadResult) -> None:
        self.spec = spec
        self.world = world
        self.result = result
        self.actions: list[tuple[datetime, int, str, tuple[Any, ...]]] = []
        self.sequence = 0
        self.last_message = 0
        self.last_inbox = 0

    def later(self, at: datetime, kind: str, *args: Any) -> None:
        self.sequence += 1
        heapq.heappush(self.actions, (at, self.sequence, kind, args))

    def fire(self, triggers: list[Trigger]) -> None:
        environment = self.world.environment
        comments = [t for t in triggers if t.workflow == "comment-created"]
        if comments:
            results = event_trigger_bulk(environment=environment, requests=[self._request(t) for t in comments])
            refused = [r for r in results if r.status != "accepted"]
            if refused:
                raise RuntimeError(f"bulk trigger refused {len(refused)} item(s): {refused[0]}")
        for trigger in triggers:
            if trigger.workflow != "comment-created":
                event_trigger(environment=environment, request=self._request(trigger))
            self.result.triggers[trigger.workflow] += 1

    @staticmethod
    def _request(trigger: Trigger) -> TriggerRequest:
        to: list[Any] = [{"topic": trigger.topic}] if trigger.topic else list(trigger.to)
        return TriggerRequest(
            workflow=trigger.workflow,
            to=to,
            payload=trigger.payload,
            actor=trigger.actor,
            transaction_id=trigger.transaction_id,
        )

    def observe(self, now: datetime) -> None:
        """Schedule what people and providers will do about the messages created since last time."""
        seed = self.spec.seed
        environment_id = self.world.environment.pk
        inbox_rows = (
            InboxMessage.objects.filter(environment_id=environment_id, pk__gt=self.last_inbox)
            .order_by("pk")
            .values_list("pk", "subscriber_id", "workflow_key", "data")
        )
        for pk, subscriber_pk, workflow_key, data in inbox_rows:
            self.last_inbox = pk
            person = self.world.by_pk[subscriber_pk]
            kind = workflow_key or "digest"
            rng = _rng(
                seed, "read", person.subscriber_id, kind, (data or {}).get("transaction_id", ""), now.isoformat()
            )
            probability, median = READ_IN_APP.get(kind, (0.4, 120))
            if rng.random() < min(0.98, probability * person.activity):
                self.later(now + _delay(rng, median), "read", subscriber_pk, pk)
        message_rows = (
            Message.objects.filter(environment_id=environment_id, pk__gt=self.last_message)
            .exclude(channel="in_app")
            .order_by("pk")
            .values_list(
                "pk",
                "channel",
                "status",
                "subscriber_id",
                "step_id",
                "data",
                "integration_id",
                "provider_message_id",
                "recipient",
            )
        )
        for pk, channel, status, subscriber_pk, step_id, data, integration_id, provider_id, recipient in message_rows:
            self.last_message = pk
            if status != Message.Status.SENT or integration_id is None:
                self.result.engagement[f"{channel} not sent ({status})"] += 1
                continue
            sent = _Sent(pk, channel, integration_id, provider_id, recipient)
            person = self.world.by_pk[subscriber_pk]
            data = data or {}
            kind = data.get("workflow") or "digest"
            name = data.get("transaction_id") or f"{step_id}:{now.isoformat()}"
            rng = _rng(seed, "callbacks", person.subscriber_id, kind, name, step_id, channel)
            delivered_at = now + timedelta(seconds=rng.randint(5, 90))
            self.later(delivered_at, "status", sent, "delivered")
            if channel != "email":
                continue
            probability, median, click = OPEN_EMAIL.get(kind, (0.3, 120, 0.1))
            if rng.random() < min(0.95, probability * person.activity):
                opened_at = delivered_at + _delay(rng, median)
                self.later(opened_at, "status", sent, "opened")
                if rng.random() < click:
                    self.later(opened_at + timedelta(seconds=rng.randint(3, 120)), "status", sent, "clicked")
            if kind == "weekly-newsletter" and rng.random() < COMPLAINT_RATE:
                self.later(delivered_at + _delay(rng, 60), "status", sent, "")

    def act(self, until: datetime, clock: Any) -> None:
        """Play every action due by ``until``, each at its own moment."""
        while self.actions and self.actions[0][0] <= until:
            at, _, kind, args = heapq.heappop(self.actions)
            clock.move_to(at)
            if kind == "read":
                subscriber_pk, inbox_pk = args
                ref = _SubscriberRef(pk=subscriber_pk, environment_id=self.world.environment.pk)
                inbox_message_mark(subscriber=ref, message_id=inbox_pk, action="read")
                self.result.engagement["in_app read"] += 1
            else:
                sent, status = args
                self._callback(sent, status, at)

    def _callback(self, sent: _Sent, status: str, at: datetime) -> None:
        """A provider callback about ``sent``: ``status`` (delivered, opened, clicked), or a spam complaint."""
        integration = self.world.integrations[sent.integration_id]
        complaint = not status
        event = StatusEvent(
            provider=integration.provider,
            provider_message_id=sent.provider_message_id,
            event_type="spam_complaint" if complaint else status,
            status=status,
            dedupe_key=f"sim:{sent.pk}:{status or 'complaint'}",
            payload={"simulated": True},
            recipient=sent.recipient,
            occurred_at=at,
            suppress_reason="complained" if complaint else "",
            clarion_message_id=str(sent.pk),
        )
        message_events_record(integration=integration, events=[event])
        self.result.engagement[f"{sent.channel} {status or 'complaint'}"] += 1


def _delay(rng: random.Random, median_minutes: float) -> timedelta:
    """A log-normal delay around ``median_minutes`` (people read most things soon, some much later)."""
    return timedelta(minutes=max(0.5, rng.lognormvariate(0, 1) * median_minutes))


def workload_run(spec: WorkloadSpec, *, progress: Callable[[str], None] | None = None) -> WorkloadResult:
    """Build a fresh environment and play the simulated days on it through the real engine."""
    say = progress or (lambda line: None)
    began = time.monotonic()
    people = people_for(spec)
    triggers = schedule_for(spec, people)
    say(f"workload: {spec.subscribers} subscribers, {spec.days} day(s), seed {spec.seed}: {len(triggers)} triggers")
    with _simulation_settings() as fake, time_machine.travel(spec.start, tick=False) as clock:
        world = world_build(spec, people, fake.url)
        result = WorkloadResult(environment=world.environment, spec=spec)
        sim = _Simulation(spec, world, result)
        say(f"workload: environment {world.environment.slug} built in {time.monotonic() - began:.0f} s")
        pending = list(reversed(triggers))
        now = spec.start
        day = 0
        while now < spec.end:
            now += spec.step
            sim.act(now, clock)
            clock.move_to(now)
            due: list[Trigger] = []
            while pending and pending[-1].at <= now:
                due.append(pending.pop())
            if due:
                sim.fire(due)
            sweep()
            sim.observe(now)
            if now >= spec.start + timedelta(days=day + 1):
                day += 1
                say(
                    f"workload: day {day} done in {time.monotonic() - began:.0f} s; "
                    f"{sum(result.triggers.values())} triggers, {fake.sent['email']} emails, {fake.sent['sms']} SMS"
                )
        for integration in world.integrations.values():
            integration_update(integration=integration, active=False)
    result.seconds = time.monotonic() - began
    return result


# --------------------------------------------------------------------------------------------
# What the workload promises: critical messages all go out
# --------------------------------------------------------------------------------------------


DELIVERED = {Message.Status.DELIVERED, Message.Status.OPENED, Message.Status.CLICKED, Message.Status.READ}


def critical_delivery(*, environment: Environment) -> dict[str, Any]:
    """The critical workflow's runs and what became of each of their channel steps.

    ``messages``: messages of critical runs by channel; ``delivered``: those delivered (in-app:
    created; email: a delivered callback or beyond); ``not_sent``: the critical channel steps
    that made no message, by reason (only ``no_address`` is acceptable: a suppressed address).
    """
    runs = Run.objects.filter(environment=environment, event__workflow__key=CRITICAL_WORKFLOW)
    messages: Counter[str] = Counter()
    delivered: Counter[str] = Counter()
    for channel, status in Message.objects.filter(run__in=runs).values_list("channel", "status"):
        messages[channel] += 1
        if channel == "in_app" or status in DELIVERED:
            delivered[channel] += 1
    not_sent = Counter(
        StepRun.objects.filter(run__in=runs)
        .exclude(decision=StepRun.Decision.EXECUTED)
        .values_list("reason", flat=True)
    )
    return {
        "runs": runs.count(),
        "unfinished_runs": runs.exclude(status=Run.Status.COMPLETED).count(),
        "messages": dict(messages),
        "delivered": dict(delivered),
        "not_sent": dict(not_sent),
    }


# --------------------------------------------------------------------------------------------
# The printed report
# --------------------------------------------------------------------------------------------


def report_table(report: dict[str, Any]) -> str:
    """The savings report as a readable table (the command's output without ``--json``)."""
    currency = report.get("currency", "")
    baseline = report["baseline"]
    actual = report["actual"]

    def row(label: str, messages: int, cost: str) -> str:
        return f"  {label:<34} {messages:>10,} {cost:>14} {currency}"

    lines = [
        f"  {'':<34} {'messages':>10} {'cost':>14}",
        row("baseline (CPaaS only)", baseline["messages"], baseline["cost"]),
        row("actual (sent by Clarion)", actual["messages"], actual["cost"]),
        "  avoided, by lever:",
    ]
    for item in report["avoided"]:
        if item["messages"]:
            lines.append(row(f"  {item['lever']}", item["messages"], item["cost"]))
    others = [item for item in report.get("other", []) if item["messages"]]
    if others:
        lines.append("  neither sent nor avoided:")
        lines += [row(f"  {item['reason']}", item["messages"], item["cost"]) for item in others]
    lines.append("  by channel (baseline -> actual):")
    for part in report["by_channel"]:
        lines.append(
            f"    {part['channel']:<32} {part['baseline']['messages']:>10,} -> {part['actual']['messages']:>10,}"
            f"   saved {part['avoided']['cost']} {currency}"
        )
    lines.append("  by workflow (baseline -> actual):")
    for part in report["by_workflow"]:
        name = part["workflow"] or "(category digests)"
        lines.append(
            f"    {name:<32} {part['baseline']['messages']:>10,} -> {part['actual']['messages']:>10,}"
            f"   saved {part['avoided']['cost']} {currency}"
        )
    return "\n".join(lines)

"""Every operation of the live OpenAPI schema, fuzzed by schemathesis: no failure of any check.

Schemathesis loads ``/api/schema/`` from the WSGI application in this process (so on whichever
database the run uses: SQLite under ``make test``, PostgreSQL under ``make test-services``) and
calls each operation with generated data, positive and negative, with the environment's secret
key (the inbox operations with an inbox token of one of its subscribers), in an environment with
subscribers, a topic, a category, a template and a workflow. No operation is excluded. Every
response must be documented (status code, content type, headers, body schema), bad input must be
a 4xx, valid input must not be refused for a reason the schema does not state (the exceptions are
listed below, each with its reason), and no call may be a 5xx.

Bounded: at most ``MAX_EXAMPLES`` generated calls per operation, derandomized (the same examples
every run), no deadline (no wall-clock assertion); nothing leaves the process.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.specs.openapi.checks import positive_data_acceptance

from apps.inbox.services import inbox_token_mint
from apps.preferences.services import category_upsert
from apps.subscribers.services import subscriber_upsert, topic_subscribers_add, topic_upsert
from apps.templates.services import template_upsert, template_version_create
from apps.workflows.services import workflow_upsert
from tests.conftest import Tenant, _tenant

MAX_EXAMPLES = 25

# Schema-valid requests the API refuses for a reason OpenAPI 3.0 cannot state, by error code. Any
# other refusal of schema-valid data fails the test.
REFUSALS_THE_SCHEMA_CANNOT_STATE: dict[str, str] = {
    "invalid_cursor": "a cursor is opaque: only the ones the API issued decode",
    "invalid_json": "a NUL or an unpaired surrogate in a JSON string or key: valid JSON that no database "
    "stores (apps.core.parsers); OpenAPI 3.0 cannot exclude one character from every string and key",
    "invalid_characters": "a NUL (%00) in a query parameter, refused for the same reason",
    "layout_not_found": "a reference to an email layout that does not exist",
    "unknown_subscriber": "a reference to subscribers that do not exist",
    "unknown_topic": "a reference to a topic that does not exist",
    "unknown_category": "a reference to a category that does not exist",
    "channel_required": "a new template needs a channel; an existing one keeps its own (PUT upserts)",
    "snooze_in_past": "depends on the clock: a snooze ends in the future",
    "snooze_too_long": "depends on the clock: a snooze ends within a year",
    "test_send_unsupported": "which templates can be test-sent depends on the stored template's channel",
    "empty_workflow": "publishing needs steps, stored or sent (a cross-field rule)",
    "idempotency_key_reused": "depends on earlier calls: the same Idempotency-Key with another body",
    "invalid_workflow": "workflow steps follow the step registry (docs/workflows.md): a grammar, checked whole",
    "template_incomplete": "what a template must hold depends on its channel",
    "invalid_range": "'from' before 'to' (a cross-field rule)",
    "range_too_long": "the span between two parameters (a cross-field rule)",
}
# Validation messages (on any field) for rules of the same kind: values from lists the schema does
# not carry, small grammars and cross-field rules. A refusal passes only if all its messages do.
MESSAGES_THE_SCHEMA_CANNOT_STATE: dict[str, str] = {
    "IANA time": "time zone names: a list of about 600 the schema does not carry",
    "is not a schedule": "digest schedules are a small grammar ('weekdays 09:00', 'daily 22:00-07:00')",
    "Send '": "at least one of several optional fields (a cross-field rule)",
    "not both": "two fields that exclude each other (a cross-field rule)",
    "Enter a valid URL.": "Django's URL validator (http(s)/ftp(s), a host with a dot or an IP) is stricter "
    "than format uri",
    "Enter a valid email address.": "Django's email validator is stricter than format email",
    "provider '": "which providers exist depends on the channel (a cross-field rule)",
    "Does not match the subscriber id in the URL": "the body's id, when given, is the path's (a cross-field rule)",
    "token is a URL": "what a device token looks like depends on its provider (a cross-field rule)",
    "must differ from start": "quiet hours end at another time than they start (a cross-field rule)",
    "longer than any duration": "a duration's upper bound depends on its unit (Python's timedelta)",
    "Not a date or a date-time": "a calendar: a pattern cannot exclude month 13 or February 30",
    "Out of range.": "a date whose day arithmetic leaves years 1-9999",
    "Not on a whole hour.": "the savings report counts whole UTC hours; the pattern also admits dates",
}


def _messages(details: Any) -> list[str]:
    if isinstance(details, dict):
        return [m for value in details.values() for m in _messages(value)]
    if isinstance(details, list):
        return [m for value in details for m in _messages(value)]
    return [str(details)]


def positive_data_acceptance_but_semantics(ctx: Any, response: Any, case: Any) -> bool | None:
    """Schemathesis's positive_data_acceptance, except for the refusals listed above."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except RejectedPositiveData:
        try:
            error = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            raise
        if error["code"] in REFUSALS_THE_SCHEMA_CANNOT_STATE:
            return None
        messages = _messages(error.get("details"))
        if messages and all(any(known in m for known in MESSAGES_THE_SCHEMA_CANNOT_STATE) for m in messages):
            return None
        raise


@pytest.fixture
def _one_connection() -> Iterator[None]:
    """Schemathesis calls the WSGI handler itself, which closes the database connection after each
    request (Django's request signals); inside the test's transaction on PostgreSQL that is an
    error. Django's own test client unhooks the same two receivers while it calls the handler."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def fuzz_tenant(db: Any, _one_connection: None) -> Tenant:
    """An environment whose resources are keyed "0", the value schemathesis tries first for a key,
    so that generated calls reach existing things too, not only 404s."""
    tenant = _tenant("fuzz")
    environment = tenant.environment
    subscriber_upsert(environment=environment, subscriber_id="fuzz-user", email="fuzz@example.com")
    subscriber_upsert(environment=environment, subscriber_id="0", email="zero@example.com", first_name="Zero")
    topic, _ = topic_upsert(environment=environment, key="0", name="Zero")
    topic_subscribers_add(topic=topic, subscriber_ids=["0", "fuzz-user"])
    category_upsert(environment=environment, key="0", name="Zero")
    template, _ = template_upsert(environment=environment, key="0", channel="in_app")
    template_version_create(template=template, content={"en": {"title": "Hi {{ payload.x }}"}}, publish=True)
    workflow_upsert(
        environment=environment,
        key="0",
        steps=[{"id": "inbox", "type": "in_app", "template": "0"}],
        publish=True,
    )
    return tenant


schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", WSGIHandler())


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_api_conforms_to_schema(case: Any, fuzz_tenant: Tenant) -> None:
    if case.path.startswith("/api/v1/inbox/") and case.path != "/api/v1/inbox/session":
        session = inbox_token_mint(environment=fuzz_tenant.environment, subscriber_id="fuzz-user", ttl_seconds=3600)
        token = session.token
    else:
        token = fuzz_tenant.secret_key
    case.call_and_validate(
        headers={"Authorization": f"Bearer {token}"},
        excluded_checks=[positive_data_acceptance],
        additional_checks=[positive_data_acceptance_but_semantics],
    )

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, connection, connections, transaction
from django.db.models.constants import OnConflict
from django.db.models.expressions import RawSQL
from django.db.models.sql import InsertQuery
from django.utils import timezone

from apps.analytics import counters
from apps.analytics.counters import Dims, Tally, counted_all_sql
from apps.core.errors import ApiError, Conflict, NotFound, Unprocessable
from apps.core.tasks import enqueue_is_transactional, enqueue_many_on_commit, enqueue_on_commit
from apps.events.models import Event
from apps.observability.metrics import events_committed
from apps.subscribers.models import Subscriber, Topic
from apps.subscribers.services import subscriber_bulk_upsert
from apps.tenancy.models import Environment
from apps.workflows.models import Workflow
from apps.workflows.payloads import payload_errors

PROCESS_TASK = "apps.workflows.tasks.process_event"
PROCESS_MANY_TASK = "apps.workflows.tasks.process_events"
ENQUEUE_CHUNK = 100  # events per process_events task: a bulk request's fan-out spreads over the workers


@dataclass(frozen=True)
class TriggerRequest:
    workflow: str
    to: list[Any]  # "id" | {"subscriber_id": ..., fields...} | {"topic": key}
    payload: dict[str, Any]
    actor: Any = None  # "id" | {"subscriber_id": ..., fields...} | None
    transaction_id: str | None = None
    cancellation_key: str = ""


def _normalize_recipients(to: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """→ (recipients as stored, inline subscriber objects to upsert, topic keys); deduplicated."""
    recipients: list[dict[str, Any]] = []
    inline: dict[str, dict[str, Any]] = {}
    topics: list[str] = []
    seen: set[tuple[str, str]] = set()
    for entry in to:
        if isinstance(entry, str):
            key = ("subscriber_id", entry)
        elif "topic" in entry:
            key = ("topic", entry["topic"])
        else:
            key = ("subscriber_id", entry["subscriber_id"])
            fields = {k: v for k, v in entry.items() if k != "subscriber_id"}
            if fields:
                inline[entry["subscriber_id"]] = {**inline.get(entry["subscriber_id"], {}), **entry}
        if key in seen:
            continue
        seen.add(key)
        recipients.append({key[0]: key[1]})
        if key[0] == "topic":
            topics.append(key[1])
    return recipients, list(inline.values()), topics


def _resolve_workflow(environment: Environment, key: str) -> Workflow:
    # (environment, key) is unique: no ORDER BY, which ``first()`` would add and compile per request.
    found = Workflow.objects.select_related("published_version").filter(environment=environment, key=key)[:1]
    return _checked_workflow(key, next(iter(found), None))


# The published workflows single triggers resolved in this process, by (environment pk, key):
# read-only instances (with their published version), never handed out on an event. A cached entry
# is only a guess: the trigger's one INSERT statement checks it (``_version_check``), so a publish,
# a rollback, a deactivation or a rename by any process is seen by the very next trigger, and a
# trigger never writes an event against a version that is no longer the published one.
_PUBLISHED_MAX = 1024
_published: dict[tuple[int, str], Workflow] = {}


def published_cache_clear() -> None:
    """Forget every cached workflow (tests; never needed for correctness)."""
    _published.clear()


def _remember(environment: Environment, workflow: Workflow) -> None:
    if len(_published) >= _PUBLISHED_MAX:
        _published.clear()
    _published[(environment.pk, workflow.key)] = workflow


class _StaleWorkflow(Exception):
    """The cached workflow is no longer active and published as cached: nothing was written."""


def _version_check(environment: Environment, workflow: Workflow) -> RawSQL:
    """The event's ``workflow_version_id``, as a subquery that is the cached version's id while the
    workflow is still active, keyed and published as cached, and NULL otherwise: the NOT NULL
    column then refuses the row, and the whole statement (event and count) writes nothing."""
    table = Workflow._meta.db_table
    return RawSQL(
        f'SELECT "published_version_id" FROM "{table}" WHERE "id" = %s AND "environment_id" = %s '
        'AND "key" = %s AND "active" AND "published_version_id" = %s',
        (workflow.pk, environment.pk, workflow.key, workflow.published_version_id),
    )


def _is_stale(exc: IntegrityError) -> bool:
    cause = exc.__cause__
    diag = getattr(cause, "diag", None)
    sqlstate = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)  # psycopg 3 / 2
    return sqlstate == "23502" and getattr(diag, "column_name", None) == "workflow_version_id"


def _checked_workflow(key: str, workflow: Workflow | None) -> Workflow:
    if workflow is None or not workflow.active:
        raise NotFound(f"No active workflow with key '{key}' in this environment.", code="workflow_not_found")
    if workflow.published_version_id is None:
        raise Unprocessable(
            f"Workflow '{key}' has no published version; publish it first.", code="workflow_not_published"
        )
    return workflow


def _resolve_workflows(environment: Environment, keys: Iterable[str]) -> dict[str, Workflow | ApiError]:
    """Each key's workflow or the error naming it, in one query."""
    wanted = set(keys)
    found = {
        w.key: w
        for w in Workflow.objects.select_related("published_version").filter(environment=environment, key__in=wanted)
    }
    resolved: dict[str, Workflow | ApiError] = {}
    for key in wanted:
        try:
            resolved[key] = _checked_workflow(key, found.get(key))
        except ApiError as exc:
            resolved[key] = exc
    return resolved


def _actor_data(actor: Any) -> dict[str, Any] | None:
    if actor is None:
        return None
    if isinstance(actor, str):
        return {"subscriber_id": actor}
    return dict(actor)


def _check_payload(workflow: Workflow, payload: dict[str, Any]) -> None:
    version = workflow.published_version
    schema = version.payload_schema if version is not None else None
    if not schema:
        return
    errors = payload_errors(schema=schema, payload=payload)
    if errors:
        raise Unprocessable(
            f"The payload does not match the schema of workflow '{workflow.key}'.",
            code="invalid_payload",
            details=errors,
        )


def _duplicate(transaction_id: str) -> Conflict:
    return Conflict(
        f"An event with transaction_id '{transaction_id}' was already accepted; it will not run twice.",
        code="duplicate_transaction",
        details={"transaction_id": transaction_id},
    )


@dataclass
class _Candidate:
    """One trigger that passed its checks, on its way to becoming an event row."""

    request: TriggerRequest
    workflow: Workflow
    version_id: int
    transaction_id: str
    recipients: list[dict[str, Any]]
    inline: list[dict[str, Any]]
    actor: dict[str, Any] | None

    @property
    def upserts(self) -> list[dict[str, Any]]:
        """Subscriber objects this trigger writes: inline recipients, then an actor given with fields."""
        if self.actor and len(self.actor) > 1:
            return [*self.inline, self.actor]
        return self.inline

    @property
    def actor_lookup(self) -> str | None:
        """The actor given by id only: stored as the subscriber's context when that subscriber exists."""
        if self.actor and not isinstance(self.request.actor, dict):
            return str(self.actor["subscriber_id"])
        return None


def _candidate(request: TriggerRequest, workflow: Workflow, known_topics: set[str]) -> _Candidate:
    """Checks one trigger against its workflow's payload schema and the known topics (no query)."""
    _check_payload(workflow, request.payload)
    recipients, inline, topics = _normalize_recipients(request.to)
    missing = [t for t in topics if t not in known_topics]
    if missing:
        raise Unprocessable(
            "Some recipients are topics that do not exist.", code="unknown_topic", details={"topics": missing}
        )
    assert workflow.published_version_id is not None  # _checked_workflow refuses unpublished workflows
    return _Candidate(
        request=request,
        workflow=workflow,
        version_id=workflow.published_version_id,
        transaction_id=request.transaction_id or uuid.uuid4().hex,
        recipients=recipients,
        inline=inline,
        actor=_actor_data(request.actor),
    )


def _known_topics(environment: Environment, requests: Iterable[TriggerRequest]) -> set[str]:
    keys = {entry["topic"] for r in requests for entry in r.to if isinstance(entry, dict) and "topic" in entry}
    if not keys:
        return set()
    return set(Topic.objects.filter(environment=environment, key__in=keys).values_list("key", flat=True))


def _actor_contexts(environment: Environment, candidates: list[_Candidate]) -> None:
    """Replace actors given by id with their subscriber's context where that subscriber exists (one query)."""
    ids = {sid for c in candidates if (sid := c.actor_lookup) is not None}
    if not ids:
        return
    contexts = {
        s.subscriber_id: s.as_context()
        for s in Subscriber.objects.filter(environment=environment, subscriber_id__in=ids)
    }
    for c in candidates:
        sid = c.actor_lookup
        if sid is not None and sid in contexts:
            c.actor = contexts[sid]


_EVENT_FIELDS = [f for f in Event._meta.concrete_fields if not f.primary_key]


def _event_of(environment: Environment, c: _Candidate, *, workflow_id: int | None = None) -> Event:
    """The candidate's event row; ``workflow_id``: name the workflow by id only (not its instance)."""
    event = Event(
        environment=environment,
        transaction_id=c.transaction_id,
        workflow_version_id=c.version_id,
        payload=c.request.payload,
        actor=c.actor,
        recipients=c.recipients,
        cancellation_key=c.request.cancellation_key,
    )
    if workflow_id is None:
        event.workflow = c.workflow
    else:
        event.workflow_id = workflow_id
    return event


def _insert_events(environment: Environment, candidates: list[_Candidate]) -> dict[str, Event]:
    """``INSERT … ON CONFLICT DO NOTHING RETURNING id, transaction_id``: the events written, by
    transaction id. A transaction id already taken (by an earlier or a concurrent request) is
    simply absent from the answer: no savepoint per row, no statement per row.

    ``QuerySet._insert`` is what ``bulk_create`` runs; called directly because ``bulk_create``
    does not return which rows an ``ignore_conflicts`` insert skipped."""
    events = [_event_of(environment, c) for c in candidates]
    if not events:
        return {}
    pk_field = Event._meta.pk
    transaction_field = Event._meta.get_field("transaction_id")
    assert pk_field is not None
    ops = connections[Event.objects.db].ops
    batch = max(1, ops.bulk_batch_size([*_EVENT_FIELDS, pk_field], events))
    written: dict[str, Event] = {}
    for start in range(0, len(events), batch):
        part = events[start : start + batch]
        rows = Event.objects._insert(  # type: ignore[attr-defined]
            part, fields=_EVENT_FIELDS, returning_fields=[pk_field, transaction_field], on_conflict=OnConflict.IGNORE
        )
        by_transaction = {e.transaction_id: e for e in part}
        for row in rows:
            if row is None:  # one row, skipped
                continue
            event = by_transaction[row[1]]
            event.pk = row[0]
            event._state.adding = False
            event._state.db = Event.objects.db
            written[event.transaction_id] = event
    return written


def _accept(environment: Environment, candidates: list[_Candidate]) -> dict[str, Event]:
    """Upsert the subscribers the candidates carry, resolve actors, write the events (a fixed
    number of statements for any number of candidates). Runs inside the caller's transaction."""
    upserts = [item for c in candidates for item in c.upserts]
    if upserts:
        subscriber_bulk_upsert(environment=environment, items=upserts)
    _actor_contexts(environment, candidates)
    return _insert_events(environment, candidates)


def event_trigger(*, environment: Environment, request: TriggerRequest) -> Event:
    """Accept one trigger: write the event and wake the fan-out after commit. No per-recipient work
    beyond upserting inline subscriber objects; unknown subscriber ids are created by the fan-out.

    A transaction id already accepted is a 409 and rolls back the subscriber upserts with it. The
    event row and its analytics count are written together, so a crash neither loses nor doubles
    the count: in one statement in autocommit on PostgreSQL when the event row is the only write (no
    subscriber object to upsert, a broker outside the database: no BEGIN and COMMIT round trips,
    and the task is sent right after it), else in one transaction."""
    topics = _known_topics(environment, [request])
    one_statement = connection.vendor == "postgresql" and not enqueue_is_transactional()
    # In autocommit, a workflow resolved earlier in this process is used without a query: the
    # INSERT checks it (``_version_check``). Inside a caller's transaction a refused statement
    # would abort that transaction, so there the workflow is read as before.
    cached = _published.get((environment.pk, request.workflow)) if one_statement else None
    if cached is not None and not connection.in_atomic_block:
        try:
            candidate = _candidate(request, cached, topics)
        except ApiError:
            candidate = None  # answered from the workflow as it is now, below (it may have changed)
        if candidate is not None and not candidate.upserts:
            try:
                return _trigger_one_statement(environment, candidate, checked=True)
            except _StaleWorkflow:
                _published.pop((environment.pk, request.workflow), None)
    workflow = _resolve_workflow(environment, request.workflow)
    if one_statement and not connection.in_atomic_block:  # read in autocommit: committed, worth remembering
        _remember(environment, workflow)
    candidate = _candidate(request, workflow, topics)
    if candidate.upserts or not one_statement:
        with transaction.atomic():  # the event, its analytics count (and the queue row, the upserts)
            return _trigger_one(environment, candidate)
    return _trigger_one_statement(environment, candidate)


# (database alias, with the version check) -> the SQL text of one event's INSERT … ON CONFLICT DO
# NOTHING RETURNING id. One row of the same fields always compiles to the same text; compiling it
# per trigger (InsertQuery, its compiler) was ~5% of the trigger's web CPU under py-spy.
_event_insert_sql: dict[tuple[str, bool], str] = {}


def _event_insert(event: Event, version_check: RawSQL | None) -> tuple[str, list[Any]]:
    """The INSERT of ``event`` (``version_check``: its ``workflow_version_id`` as that subquery), as
    Django's compiler writes it: the text compiled once per process, the parameters prepared per
    event as the compiler prepares them (``pre_save``, then ``get_db_prep_save``)."""
    alias = Event.objects.db
    key = (alias, version_check is not None)
    sql = _event_insert_sql.get(key)
    if sql is None:
        if version_check is not None:
            event.workflow_version_id = version_check
        pk_field = Event._meta.pk
        assert pk_field is not None
        query = InsertQuery(Event, on_conflict=OnConflict.IGNORE)
        query.insert_values(_EVENT_FIELDS, [event])
        compiler = query.get_compiler(using=alias)
        compiler.returning_fields = [pk_field]
        [(sql, compiled_params)] = compiler.as_sql()
        _event_insert_sql[key] = sql
        return sql, list(compiled_params)
    db = connections[alias]
    params: list[Any] = []
    for field in _EVENT_FIELDS:
        if version_check is not None and field.attname == "workflow_version_id":
            params.extend(version_check.params)
        else:
            params.append(field.get_db_prep_save(field.pre_save(event, True), connection=db))
    return sql, params


def _trigger_one_statement(environment: Environment, candidate: _Candidate, *, checked: bool = False) -> Event:
    """PostgreSQL, when the event row is the only write: the event and its analytics count in one
    statement (``WITH e AS (INSERT … ON CONFLICT DO NOTHING RETURNING id) INSERT INTO counter …``),
    in autocommit: no BEGIN and COMMIT round trips, and the task is sent right after it.

    ``checked``: the candidate's workflow came from this process's cache; the statement writes
    nothing unless it is still the active, published one (else ``_StaleWorkflow``), and the event
    names it by id only (the cached instance is shared by the process's threads)."""
    _actor_contexts(environment, [candidate])
    if checked:
        event = _event_of(environment, candidate, workflow_id=candidate.workflow.pk)
        version_check = _version_check(environment, candidate.workflow)
    else:
        event = _event_of(environment, candidate)
        version_check = None
    insert_sql, insert_params = _event_insert(event, version_check)
    version = candidate.workflow.published_version
    counted, counted_params = counted_all_sql(
        source="e",
        metric=counters.TRIGGERED,
        at=timezone.now(),
        dims=Dims(
            environment_id=environment.pk,
            workflow_key=candidate.workflow.key,
            category_key=version.category_key if version is not None else "",
        ),
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                f"WITH e AS ({insert_sql}), counted AS ({counted} RETURNING 1) SELECT id FROM e",
                [*insert_params, *counted_params],
            )
            row = cursor.fetchone()
    except IntegrityError as exc:
        if checked and _is_stale(exc):
            raise _StaleWorkflow from exc
        raise
    event.workflow_version_id = candidate.version_id
    if row is None:
        raise _duplicate(candidate.transaction_id)
    event.pk = row[0]
    event._state.adding = False
    event._state.db = Event.objects.db
    enqueue_on_commit(PROCESS_TASK, event.pk)
    events_committed(environment.pk, [(candidate.workflow.key, event.transaction_id)])  # metrics + log, on commit
    return event


def triggered_count(*, environment_id: int, workflows: Iterable[Workflow]) -> None:
    """Count events accepted (one per workflow given), in the caller's transaction (docs/analytics.md)."""
    tally = Tally()
    now = timezone.now()
    for workflow in workflows:
        version = workflow.published_version
        tally.add(
            environment_id=environment_id,
            at=now,
            metric=counters.TRIGGERED,
            workflow_key=workflow.key,
            category_key=version.category_key if version is not None else "",
        )
    tally.write()


def _trigger_one(environment: Environment, candidate: _Candidate) -> Event:
    event = _accept(environment, [candidate]).get(candidate.transaction_id)
    if event is None:
        raise _duplicate(candidate.transaction_id)
    triggered_count(environment_id=environment.pk, workflows=[candidate.workflow])
    enqueue_on_commit(PROCESS_TASK, event.pk)
    events_committed(environment.pk, [(candidate.workflow.key, event.transaction_id)])  # metrics + log, on commit
    return event


@dataclass(frozen=True)
class BulkItemResult:
    transaction_id: str | None
    status: str  # accepted | duplicate | error
    error: dict[str, Any] | None = None


@transaction.atomic
def event_trigger_bulk(*, environment: Environment, requests: list[TriggerRequest]) -> list[BulkItemResult]:
    """Accept many triggers in one transaction and a fixed number of statements: one query for
    the workflows, one for the topics, one for the transaction ids already taken, the subscriber
    upserts, one for actors given by id, one INSERT of every event (ON CONFLICT DO NOTHING), and
    one enqueue of their fan-out. Items that cannot be accepted (unknown workflow, invalid
    payload, unknown topic, duplicate transaction id…) are reported per item, in order; the
    others are accepted, and only their subscriber objects are written."""
    results: list[BulkItemResult | None] = [None] * len(requests)
    workflows = _resolve_workflows(environment, (r.workflow for r in requests))
    topics = _known_topics(environment, requests)
    given = {r.transaction_id for r in requests if r.transaction_id}
    taken = (
        set(
            Event.objects.filter(environment=environment, transaction_id__in=given).values_list(
                "transaction_id", flat=True
            )
        )
        if given
        else set()
    )
    candidates: list[tuple[int, _Candidate]] = []
    for index, request in enumerate(requests):
        workflow = workflows[request.workflow]
        try:
            if isinstance(workflow, ApiError):
                raise workflow
            candidate = _candidate(request, workflow, topics)
            if candidate.transaction_id in taken:
                raise _duplicate(candidate.transaction_id)
        except Conflict as exc:
            results[index] = BulkItemResult(request.transaction_id, "duplicate", _error_dict(exc))
            continue
        except ApiError as exc:
            results[index] = BulkItemResult(request.transaction_id, "error", _error_dict(exc))
            continue
        taken.add(candidate.transaction_id)  # a repeat later in this request is a duplicate
        candidates.append((index, candidate))
    try:
        written = _accept(environment, [c for _, c in candidates])
    except ApiError:
        written = _accept_one_by_one(environment, candidates, results)
    for index, candidate in candidates:
        if results[index] is not None:
            continue
        if candidate.transaction_id in written:
            results[index] = BulkItemResult(candidate.transaction_id, "accepted")
        else:  # accepted by a concurrent request since the check above
            results[index] = BulkItemResult(
                candidate.request.transaction_id, "duplicate", _error_dict(_duplicate(candidate.transaction_id))
            )
    event_ids = [written[c.transaction_id].pk for _, c in candidates if c.transaction_id in written]
    triggered_count(
        environment_id=environment.pk, workflows=[c.workflow for _, c in candidates if c.transaction_id in written]
    )
    enqueue_many_on_commit(
        PROCESS_MANY_TASK, [(event_ids[i : i + ENQUEUE_CHUNK],) for i in range(0, len(event_ids), ENQUEUE_CHUNK)]
    )
    events_committed(  # metrics + one log line, on commit
        environment.pk, [(c.workflow.key, c.transaction_id) for _, c in candidates if c.transaction_id in written]
    )
    return [r for r in results if r is not None]


def _accept_one_by_one(
    environment: Environment, candidates: list[tuple[int, _Candidate]], results: list[BulkItemResult | None]
) -> dict[str, Event]:
    """The rare path: a subscriber object of some item was refused by the batched upsert (which
    checks every item before writing any). Each candidate alone, reporting its own error."""
    written: dict[str, Event] = {}
    for index, candidate in candidates:
        try:
            with transaction.atomic():
                written.update(_accept(environment, [candidate]))
        except ApiError as exc:
            results[index] = BulkItemResult(candidate.request.transaction_id, "error", _error_dict(exc))
    return written


def _error_dict(exc: Any) -> dict[str, Any]:
    return {"code": exc.error_code, "message": str(exc.detail), "details": exc.details}


def events_mark_cancelled(*, event_ids: Iterable[int], only_pending: bool = False) -> int:
    """Mark events cancelled; returns how many changed. ``only_pending``: only those whose fan-out
    has not finished (it stops at its next chunk); otherwise every one not cancelled yet (some of
    its runs were stopped). Called by the engine's cancellation, in its transaction."""
    events = Event.objects.filter(pk__in=list(event_ids))
    if only_pending:
        return events.filter(status=Event.Status.PENDING).update(status=Event.Status.CANCELLED)
    return events.exclude(status=Event.Status.CANCELLED).update(status=Event.Status.CANCELLED)


def event_cancel(*, event: Event) -> int:
    from apps.workflows.engine import event_cancel_runs  # the engine imports this module

    if event.status == Event.Status.FAILED:
        raise Conflict("This event failed and has nothing left to cancel.", code="event_not_cancellable")
    return event_cancel_runs(event=event)


def events_cancel_by_key(
    *, environment: Environment, cancellation_key: str, workflow_key: str | None = None
) -> tuple[int, int]:
    """Cancel every event given ``cancellation_key`` at trigger time (optionally of one workflow).

    Returns (events matched, runs cancelled). Cancelling twice is harmless: the second call finds
    nothing left to stop.
    """
    from apps.workflows.engine import events_cancel_runs  # the engine imports this module

    events = Event.objects.filter(environment=environment, cancellation_key=cancellation_key).exclude(
        status=Event.Status.FAILED
    )
    if workflow_key:
        events = events.filter(workflow__key=workflow_key)
    matched = list(events.only("pk", "status"))
    cancelled = 0
    for start in range(0, len(matched), 500):
        cancelled += events_cancel_runs(events=matched[start : start + 500], reason="cancelled_by_key")
    return len(matched), cancelled

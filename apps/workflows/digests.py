"""Digests: events collected per (workflow step, subscriber, key) and sent as one message.

Correct by construction, with no lock outside the database:

* at most one bucket per (subscriber, scope) is ``open`` — a partial unique constraint — so two
  workers that both find no open bucket both INSERT … ON CONFLICT DO NOTHING and then read the
  same single bucket;
* joining locks the open buckets (SELECT … FOR UPDATE) in the same transaction that adds the
  entries, and closing is one conditional UPDATE on the same row, so an event is either in the
  bucket before it closes (and in the digest) or finds it closed and opens the next one.

The run that opened a bucket is its *leader*: it waits until the bucket closes, then carries
the digest through the workflow's next steps. Every other run waits in the bucket and is
completed ("merged") when the leader sends.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.db import connection, transaction
from django.db.models import Case, Count, F, JSONField, Max, OuterRef, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from apps.core.bulk import in_array
from apps.workflows.models import DigestBucket, DigestEntry, Run, StepRun

logger = logging.getLogger(__name__)

ROLE_LEADER = "leader"
ROLE_MEMBER = "member"
ROLE_PASSTHROUGH = "passthrough"
ACTIVE = (DigestBucket.Status.OPEN, DigestBucket.Status.CLOSING)


def workflow_scope(*, workflow_id: int, step_id: str, key: str) -> str:
    return f"wf:{workflow_id}:{step_id}:{key}"


def category_scope(*, category_key: str, channel: str) -> str:
    return f"cat:{category_key}:{channel}"


@dataclass
class DigestJoin:
    """A run that reached a digest step and asks to join its bucket."""

    run: Run
    step_id: str
    scope: str
    digest_key: str
    closes_at: datetime
    lookback: timedelta | None = None
    max_events: int | None = None
    reached_at: datetime | None = None  # when the run was due at the step (its trigger time, or a wait's end)


@dataclass
class JoinResult:
    role: str
    bucket_id: int | None
    closes_at: datetime | None
    due_now: bool = False


@dataclass
class _Group:
    subscriber_id: int
    scope: str
    joins: list[DigestJoin] = field(default_factory=list)


def digests_join(*, joins: list[DigestJoin], now: datetime) -> tuple[dict[int, JoinResult], list[int]]:
    """Put each run into the open bucket of its scope, opening buckets as needed.

    Must run inside the caller's transaction (the engine's chunk commit), so that entries and
    the runs' new state commit together. Returns run pk → result, and the pks of leaders (of
    other chunks) whose bucket just filled up and who must be woken now.
    """
    results: dict[int, JoinResult] = {}
    woken: list[int] = []
    pending: dict[tuple[int, str], _Group] = {}
    for join in joins:
        key = (join.run.subscriber_id, join.scope)
        group = pending.get(key)
        if group is None:  # not setdefault: that builds a _Group for every join (a tenth of the join's CPU)
            group = pending[key] = _Group(join.run.subscriber_id, join.scope)
        group.joins.append(join)

    for _round in range(1 + len(joins)):  # each round either places every run or fills a bucket
        if not pending:
            break
        subscriber_ids = {g.subscriber_id for g in pending.values()}
        scopes = {g.scope for g in pending.values()}
        open_buckets = _lock_open(subscriber_ids, scopes, pending)
        # A bucket whose window had passed when these events arrived takes no more of them, even if
        # its leader is late. "Arrived" is when each run was due at the step, not when a
        # backlogged worker got to it.
        arrived = min((j.reached_at or now for g in pending.values() for j in g.joins), default=now)
        stale = {key: bucket for key, bucket in open_buckets.items() if bucket.closes_at <= arrived}
        if stale:
            DigestBucket.objects.filter(pk__in=[b.pk for b in stale.values() if b.leader_run_id]).update(
                status=DigestBucket.Status.CLOSING
            )
            DigestBucket.objects.filter(pk__in=[b.pk for b in stale.values() if not b.leader_run_id]).update(
                status=DigestBucket.Status.EMPTY, closed_at=now
            )
            for key in stale:
                del open_buckets[key]
        # Sorted, so that concurrent chunks insert (and so lock) new buckets in the same order.
        missing = sorted(
            (g for key, g in pending.items() if key not in open_buckets), key=lambda g: (g.subscriber_id, g.scope)
        )
        if missing:
            passthrough = _quiet_groups(missing, now)
            DigestBucket.objects.bulk_create(
                [_new_bucket(g, now, passthrough=(g.subscriber_id, g.scope) in passthrough) for g in missing],
                ignore_conflicts=True,
            )
            for group in missing:
                if (group.subscriber_id, group.scope) in passthrough:
                    first = group.joins.pop(0)
                    results[first.run.pk] = JoinResult(role=ROLE_PASSTHROUGH, bucket_id=None, closes_at=None)
            open_buckets = _lock_open(subscriber_ids, scopes, pending)

        entries: list[tuple[int, int, str]] = []
        full: list[int] = []
        new_leaders: dict[int, int] = {}
        added: dict[int, int] = {}
        for key, group in list(pending.items()):
            bucket = open_buckets.get(key)
            if bucket is None or not group.joins:
                if not group.joins:
                    del pending[key]
                continue  # opened and closed by others in between: next round
            room = bucket.max_events - bucket.entry_count if bucket.max_events else len(group.joins)
            placed, group.joins = group.joins[:room], group.joins[room:]
            added[bucket.pk] = added.get(bucket.pk, 0) + len(placed)
            for join in placed:
                entries.append((bucket.pk, join.run.pk, join.step_id))
                if bucket.leader_run_id is None and bucket.pk not in new_leaders:
                    new_leaders[bucket.pk] = join.run.pk
                leader = bucket.leader_run_id or new_leaders.get(bucket.pk)
                results[join.run.pk] = JoinResult(
                    role=ROLE_LEADER if leader == join.run.pk else ROLE_MEMBER,
                    bucket_id=bucket.pk,
                    closes_at=bucket.closes_at,
                )
            if bucket.max_events and bucket.entry_count + len(placed) >= bucket.max_events:
                full.append(bucket.pk)
                if bucket.leader_run_id and bucket.leader_run_id not in results:
                    woken.append(bucket.leader_run_id)
            if not group.joins:
                del pending[key]
        _insert_entries(entries, now)
        for bucket_pk, run_pk in new_leaders.items():
            DigestBucket.objects.filter(pk=bucket_pk).update(leader_run_id=run_pk)
        _add_counts(added, now)
        if full:
            DigestBucket.objects.filter(pk__in=full).update(status=DigestBucket.Status.CLOSING, closes_at=now)
            for result in results.values():
                if result.bucket_id in full:
                    result.closes_at = now
                    result.due_now = True
    if woken:
        Run.objects.filter(pk__in=woken, status=Run.Status.WAITING).update(resume_at=now)
    return results, woken


@dataclass(frozen=True)
class HeldMessage:
    """A message kept back (frequency cap, daily/weekly choice) for its category's digest."""

    environment_id: int
    subscriber_id: int
    run_id: int
    step_id: str
    category_key: str
    channel: str
    closes_at: datetime
    content: dict[str, Any]


def digests_hold(*, held: list[HeldMessage], now: datetime) -> None:
    """Add held messages to the open category digests (opening those missing), inside the caller's
    transaction: open buckets are created with ON CONFLICT DO NOTHING, then locked, so concurrent
    chunks share one bucket per subscriber, category and channel."""
    if not held:
        return

    def key(item: HeldMessage) -> tuple[int, str]:
        return item.subscriber_id, category_scope(category_key=item.category_key, channel=item.channel)

    first: dict[tuple[int, str], HeldMessage] = {}
    for item in held:
        first.setdefault(key(item), item)
    DigestBucket.objects.bulk_create(
        [
            DigestBucket(
                environment_id=item.environment_id,
                subscriber_id=item.subscriber_id,
                scope=scope,
                step_id=item.step_id,
                category_key=item.category_key,
                channel=item.channel,
                opened_at=now,
                closes_at=item.closes_at,
                last_event_at=now,
            )
            for (_, scope), item in sorted(first.items(), key=lambda pair: pair[0])
        ],
        ignore_conflicts=True,
    )
    buckets = {
        (bucket.subscriber_id, bucket.scope): bucket.pk
        for bucket in DigestBucket.objects.select_for_update()
        .filter(
            status=DigestBucket.Status.OPEN,
            workflow__isnull=True,
            subscriber_id__in={subscriber_id for subscriber_id, _ in first},
            scope__in={scope for _, scope in first},
        )
        .order_by("pk")
    }
    added: dict[int, int] = defaultdict(int)
    entries = []
    for item in held:
        bucket_pk = buckets[key(item)]
        added[bucket_pk] += 1
        entries.append(DigestEntry(bucket_id=bucket_pk, run_id=item.run_id, step_id=item.step_id, content=item.content))
    DigestEntry.objects.bulk_create(entries, batch_size=1000)
    _add_counts(added, now)


@dataclass(frozen=True)
class _OpenBucket:
    pk: int
    leader_run_id: int | None
    max_events: int | None
    entry_count: int
    closes_at: datetime


def _lock_open(
    subscriber_ids: set[int], scopes: set[str], pending: dict[tuple[int, str], _Group]
) -> dict[tuple[int, str], _OpenBucket]:
    """Lock the open buckets of these subscribers and scopes (in pk order, as every chunk does), as
    plain tuples: a chunk of 500 joins reads 500 rows, so no model instances."""
    rows = (
        DigestBucket.objects.select_for_update()
        .filter(in_array("subscriber_id", subscriber_ids), in_array("scope", scopes), status=DigestBucket.Status.OPEN)
        .order_by("pk")
        .values_list("subscriber_id", "scope", "pk", "leader_run_id", "max_events", "entry_count", "closes_at")
    )
    return {
        (subscriber_id, scope): _OpenBucket(pk, leader, max_events, count, closes_at)
        for subscriber_id, scope, pk, leader, max_events, count, closes_at in rows
        if (subscriber_id, scope) in pending
    }


def _insert_entries(entries: list[tuple[int, int, str]], now: datetime) -> None:
    """The chunk's digest entries (bucket, run, step id): on PostgreSQL one INSERT from three arrays,
    with no model instance per row; elsewhere ``bulk_create``."""
    if not entries:
        return
    if connection.vendor != "postgresql":
        DigestEntry.objects.bulk_create(
            [DigestEntry(bucket_id=b, run_id=r, step_id=step) for b, r, step in entries], batch_size=1000
        )
        return
    quote = connection.ops.quote_name
    buckets, runs, steps = (list(column) for column in zip(*entries, strict=True))
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {quote(DigestEntry._meta.db_table)} (bucket_id, run_id, step_id, content, created_at) "
            "SELECT b, r, s, '{}'::jsonb, %s FROM unnest(%s::bigint[], %s::bigint[], %s::text[]) AS t (b, r, s)",
            [now, buckets, runs, steps],
        )


def _quiet_groups(groups: list[_Group], now: datetime) -> set[tuple[int, str]]:
    """Groups with a look-back whose key saw no event within it: their first event goes out at once."""
    with_lookback = [g for g in groups if g.joins and g.joins[0].lookback]
    if not with_lookback:
        return set()
    last = {
        (row["subscriber_id"], row["scope"]): row["last"]
        for row in DigestBucket.objects.filter(
            subscriber_id__in={g.subscriber_id for g in with_lookback}, scope__in={g.scope for g in with_lookback}
        )
        .values("subscriber_id", "scope")
        .annotate(last=Max("last_event_at"))
    }
    quiet: set[tuple[int, str]] = set()
    for group in with_lookback:
        previous = last.get((group.subscriber_id, group.scope))
        lookback = group.joins[0].lookback
        assert lookback is not None
        if previous is None or previous <= now - lookback:
            quiet.add((group.subscriber_id, group.scope))
    return quiet


def _new_bucket(group: _Group, now: datetime, *, passthrough: bool) -> DigestBucket:
    first = group.joins[0]
    run = first.run
    # Under a look-back, the first event passes straight through; the bucket it opens collects
    # what follows within the window, and the next event to join becomes its leader.
    leader = None if passthrough else run.pk
    return DigestBucket(
        environment_id=run.environment_id,
        subscriber_id=run.subscriber_id,
        workflow_id=run.workflow_version.workflow_id,
        scope=group.scope,
        step_id=first.step_id,
        digest_key=first.digest_key[:255],
        leader_run_id=leader,
        max_events=first.max_events,
        opened_at=now,
        closes_at=first.closes_at,
        last_event_at=now,
    )


def _add_counts(added: dict[int, int], now: datetime) -> None:
    """Bump each bucket's count by what was just added: one UPDATE per distinct increment (a
    chunk usually adds one event to each of its buckets). Safe because the rows are locked."""
    by_increment: dict[int, list[int]] = defaultdict(list)
    for bucket_pk, count in added.items():
        if count:
            by_increment[count].append(bucket_pk)
    for count, bucket_pks in by_increment.items():
        DigestBucket.objects.filter(in_array("pk", bucket_pks)).update(
            entry_count=F("entry_count") + count, last_event_at=now
        )


def _refresh_counts(bucket_pks: list[int], now: datetime) -> None:
    if not bucket_pks:
        return
    counted = (
        DigestEntry.objects.filter(bucket=OuterRef("pk"))
        .order_by()
        .values("bucket")
        .annotate(n=Count("id"))
        .values("n")
    )
    DigestBucket.objects.filter(pk__in=bucket_pks).update(entry_count=Coalesce(Subquery(counted), 0), last_event_at=now)


# --------------------------------------------------------------------------------------------
# Closing
# --------------------------------------------------------------------------------------------


STRAGGLER_GRACE = timedelta(seconds=30)


def digests_awaiting_stragglers(
    *, leader_bucket: dict[int, int], now: datetime, grace: timedelta = STRAGGLER_GRACE
) -> set[int]:
    """Buckets whose window is over but that events triggered inside the window have not reached yet.

    Their leaders wait a moment more (at most ``grace`` past the window), so a backlog of workers
    does not split events sent together into two digests. Two queries for the whole chunk.
    """
    if not leader_bucket:
        return set()
    buckets = list(
        DigestBucket.objects.filter(
            pk__in=set(leader_bucket.values()),
            status=DigestBucket.Status.OPEN,
            closes_at__lte=now,
            closes_at__gt=now - grace,
        ).values_list("pk", "subscriber_id", "workflow_id", "closes_at")
    )
    if not buckets:
        return set()
    from apps.events.models import Event

    workflows = {workflow_id for _, _, workflow_id, _ in buckets}
    latest_close = max(closes_at for *_, closes_at in buckets)
    unfanned: dict[int, datetime] = {}  # workflow → its oldest event not fanned out yet
    for workflow_id, created_at in Event.objects.filter(
        status=Event.Status.PENDING, workflow_id__in=workflows, created_at__lt=latest_close
    ).values_list("workflow_id", "created_at"):
        unfanned[workflow_id] = min(created_at, unfanned.get(workflow_id, created_at))
    on_the_way: dict[tuple[int, int], datetime] = {}  # (subscriber, workflow) → oldest trigger time
    for subscriber_id, workflow_id, created_at in (
        Run.objects.filter(
            subscriber_id__in={subscriber_id for _, subscriber_id, _, _ in buckets},
            workflow_version__workflow_id__in=workflows,
            status__in=[Run.Status.PENDING, Run.Status.RUNNING],
            event__created_at__lt=latest_close,
        )
        .exclude(pk__in=set(leader_bucket))
        .values_list("subscriber_id", "workflow_version__workflow_id", "event__created_at")
    ):
        key = (subscriber_id, workflow_id)
        on_the_way[key] = min(created_at, on_the_way.get(key, created_at))
    waiting: set[int] = set()
    for pk, subscriber_id, workflow_id, closes_at in buckets:
        straggler = on_the_way.get((subscriber_id, workflow_id)) or unfanned.get(workflow_id)
        if straggler is not None and straggler < closes_at:
            waiting.add(pk)
    return waiting


def digests_led_by(*, run_pks: set[int]) -> dict[tuple[int, str], int]:
    """(run pk, step id) → the workflow bucket each run leads (or led: sent, or closing), one query."""
    if not run_pks:
        return {}
    led: dict[tuple[int, str], int] = {}
    for run_pk, step_id, bucket_pk in (
        DigestBucket.objects.filter(in_array("leader_run_id", run_pks), workflow__isnull=False)
        .exclude(status=DigestBucket.Status.EMPTY)
        .order_by("pk")
        .values_list("leader_run_id", "step_id", "pk")
    ):
        led[(run_pk, step_id)] = bucket_pk  # the newest, should a run ever have led two
    return led


def digests_close_for_leaders(*, leader_bucket: dict[int, int], now: datetime) -> dict[int, list[dict[str, Any]]]:
    """Close the leaders' buckets (if still open) and return bucket pk → its events, oldest first.

    Commits at once: from here on new events open the next bucket. Idempotent: a leader whose
    bucket already closed (a chunk re-driven after a crash) gets the same events again.
    """
    if not leader_bucket:
        return {}
    bucket_pks = list(leader_bucket.values())
    with transaction.atomic():
        DigestBucket.objects.filter(in_array("pk", bucket_pks), status__in=ACTIVE).update(
            status=DigestBucket.Status.SENT, closed_at=now
        )
    return digest_events(bucket_pks=bucket_pks)


def digest_events(*, bucket_pks: list[int]) -> dict[int, list[dict[str, Any]]]:
    """The events of the given buckets as templates see them (``digest.events``), oldest first.

    Two queries whatever the number of entries: the entries, then each distinct event once (the
    digests of one flush usually share their events: a trigger to a topic joins every subscriber's
    bucket), so a million entries decode a payload per event, not per entry.
    """
    from apps.events.models import Event

    # An entry's own content (a held message) is decoded only where there is one: a workflow
    # digest's entries have none, and a flush of a million entries would otherwise decode a
    # million empty JSON objects.
    held = Case(When(content={}, then=Value(None)), default=F("content"), output_field=JSONField())
    entries = list(
        DigestEntry.objects.filter(in_array("bucket_id", bucket_pks))
        .order_by("pk")
        .values_list("bucket_id", held, "run__event_id")
    )
    items: dict[int, dict[str, Any]] = {
        pk: {
            "transaction_id": transaction_id,
            "payload": payload,
            "actor": actor or {},
            "created_at": created_at.isoformat(),
        }
        for pk, transaction_id, payload, actor, created_at in Event.objects.filter(
            pk__in={event_id for _, _, event_id in entries}
        ).values_list("pk", "transaction_id", "payload", "actor", "created_at")
    }
    events: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for bucket_pk, content, event_id in entries:
        item = items[event_id]
        events[bucket_pk].append({**item, **content} if content else item)
    return events


MEMBERS_BATCH = 400  # buckets per INSERT … SELECT (two parameters each)


class MergedMembers(NamedTuple):
    """Runs completed because their digest was sent by another run of the bucket: ``count`` runs that
    share one environment, version, position and results (usually all the members of a bucket)."""

    environment_id: int
    workflow_version_id: int
    step_index: int
    step_results: dict[str, Any]
    runs: int


def _json(value: Any) -> dict[str, Any]:
    """A JSON column read by a raw cursor: decoded by the driver (PostgreSQL) or text (SQLite)."""
    return json.loads(value) if isinstance(value, str | bytes) else dict(value or {})


def digest_members_complete(*, sent: dict[int, int], now: datetime) -> list[MergedMembers]:
    """The leaders (bucket pk → leader run pk) sent their digests: every other waiting run in those
    buckets is complete, with a ``digest_merged`` decision naming the bucket and the run that sent it.

    Set-based on purpose: a flush completes up to a million runs, so the trace rows are written
    with one INSERT … SELECT per chunk of digests (the bucket and its sender joined from a VALUES
    list) and the runs with one UPDATE, instead of a model instance or a statement per row.
    """
    if not sent:
        return []
    quote = connection.ops.quote_name
    build = "jsonb_build_object" if connection.vendor == "postgresql" else "json_object"
    created_at = connection.ops.adapt_datetimefield_value(now)
    pairs = sorted(sent.items())
    with connection.cursor() as cursor:
        for start in range(0, len(pairs), MEMBERS_BATCH):
            batch = pairs[start : start + MEMBERS_BATCH]
            values = ", ".join(["(%s, %s)"] * len(batch))
            sql = (
                f"WITH sent (bucket_id, leader) AS (VALUES {values}) "
                f"INSERT INTO {quote(StepRun._meta.db_table)} "
                "(run_id, step_id, step_type, decision, reason, detail, created_at) "
                f"SELECT e.run_id, e.step_id, %s, %s, %s, {build}('bucket', s.bucket_id, 'sent_by_run', s.leader), %s "
                f"FROM {quote(DigestEntry._meta.db_table)} e "
                "JOIN sent s ON s.bucket_id = e.bucket_id "
                f"JOIN {quote(Run._meta.db_table)} r ON r.id = e.run_id "
                "WHERE e.run_id <> s.leader AND r.status = %s"
            )
            params: list[Any] = [value for pair in batch for value in pair]
            params += ["digest", StepRun.Decision.EXECUTED, "digest_merged", created_at, Run.Status.WAITING]
            cursor.execute(sql, params)
    # The members' new state in one UPDATE … RETURNING (PostgreSQL, SQLite ≥ 3.35): what the caller
    # counts them by (version, position, results), without reading them again. On PostgreSQL the
    # statement also groups them (a flush may complete a million members sharing a few states).
    buckets = sorted(sent)
    leaders = sorted(sent.values())
    run_table, entry_table = quote(Run._meta.db_table), quote(DigestEntry._meta.db_table)
    id_params: list[Any]
    if connection.vendor == "postgresql":  # two array parameters, not 1,000 placeholders
        in_buckets, not_leaders, id_params = "bucket_id = ANY(%s)", "id <> ALL(%s)", [buckets, leaders]
    else:
        in_buckets = f"bucket_id IN ({', '.join(['%s'] * len(buckets))})"
        not_leaders = f"id NOT IN ({', '.join(['%s'] * len(leaders))})"
        id_params = [*buckets, *leaders]
    update = (
        f"UPDATE {run_table} SET status = %s, resume_at = NULL, completed_at = %s, updated_at = %s "
        f"WHERE status = %s AND id IN (SELECT run_id FROM {entry_table} WHERE {in_buckets}) AND {not_leaders} "
        "RETURNING environment_id, workflow_version_id, step_index, step_results"
    )
    if connection.vendor == "postgresql":
        sql = (
            f"WITH done AS ({update}) SELECT environment_id, workflow_version_id, step_index, step_results, "
            "count(*) FROM done GROUP BY environment_id, workflow_version_id, step_index, step_results"
        )
    else:
        sql = update
    with connection.cursor() as cursor:
        cursor.execute(sql, [Run.Status.COMPLETED, created_at, created_at, Run.Status.WAITING, *id_params])
        rows = cursor.fetchall()
    if connection.vendor == "postgresql":
        return [MergedMembers(e, v, i, _json(results), n) for e, v, i, results, n in rows]
    groups: dict[tuple[int, int, int, str], int] = defaultdict(int)
    for environment_id, version_id, step_index, results in rows:
        text = results if isinstance(results, str) else json.dumps(results, sort_keys=True)
        groups[(environment_id, version_id, step_index, text)] += 1
    return [MergedMembers(e, v, i, _json(text), n) for (e, v, i, text), n in groups.items()]


def digests_flush(
    *, environment_id: int, workflow_id: int | None = None, subscriber_pk: int | None = None, key: str | None = None
) -> list[int]:
    """Close matching open workflow digests now. Returns the leader runs to wake."""
    now = timezone.now()
    buckets = DigestBucket.objects.filter(
        environment_id=environment_id, status=DigestBucket.Status.OPEN, workflow__isnull=False
    )
    if workflow_id is not None:
        buckets = buckets.filter(workflow_id=workflow_id)
    if subscriber_pk is not None:
        buckets = buckets.filter(subscriber_id=subscriber_pk)
    if key is not None:
        buckets = buckets.filter(digest_key=key)
    with transaction.atomic():
        if connection.vendor == "postgresql":
            return _flush_in_one_statement(buckets, now)
        rows = list(buckets.select_for_update().values_list("pk", "leader_run_id"))
        pks = [pk for pk, _ in rows]
        leaders = [leader for _, leader in rows if leader]
        DigestBucket.objects.filter(pk__in=pks, leader_run__isnull=False).update(
            status=DigestBucket.Status.CLOSING, closes_at=now
        )
        DigestBucket.objects.filter(pk__in=pks, leader_run__isnull=True).update(
            status=DigestBucket.Status.EMPTY, closes_at=now, closed_at=now
        )
        Run.objects.filter(pk__in=leaders, status=Run.Status.WAITING).update(resume_at=now)
    return leaders


def _flush_in_one_statement(buckets: Any, now: datetime) -> list[int]:
    """``digests_flush`` on PostgreSQL, in one statement: lock the matching buckets, close them
    (``closing`` with a leader, ``empty`` without) and wake their leaders, returning the leaders.

    The same three steps as elsewhere, without sending every bucket and leader pk back as a
    parameter list three times (a flush of 10,000 digests spent seconds binding them).
    """
    target, params = buckets.select_for_update().values_list("pk", "leader_run_id").query.sql_with_params()
    quote = connection.ops.quote_name
    bucket_table, run_table = quote(DigestBucket._meta.db_table), quote(Run._meta.db_table)
    sql = (
        f"WITH target (id, leader) AS ({target}), "
        f"closed AS (UPDATE {bucket_table} AS b SET "
        "status = CASE WHEN target.leader IS NULL THEN %s ELSE %s END, closes_at = %s, "
        "closed_at = CASE WHEN target.leader IS NULL THEN %s ELSE b.closed_at END "
        "FROM target WHERE b.id = target.id RETURNING target.leader), "
        f"woken AS (UPDATE {run_table} SET resume_at = %s "
        "WHERE id IN (SELECT leader FROM closed) AND status = %s) "
        "SELECT leader FROM closed WHERE leader IS NOT NULL ORDER BY leader"
    )
    statuses = [DigestBucket.Status.EMPTY, DigestBucket.Status.CLOSING]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, *statuses, now, now, now, Run.Status.WAITING])
        return [leader for (leader,) in cursor.fetchall()]


def digests_release_cancelled(*, run_pks: list[int], now: datetime) -> list[int]:
    """Take cancelled runs out of the buckets still collecting; hand a leaderless bucket on.

    Runs inside the caller's transaction. Returns new leaders whose bucket is already due.
    """
    entries = list(
        DigestEntry.objects.filter(run_id__in=run_pks, bucket__status__in=ACTIVE).values_list("pk", "bucket_id")
    )
    if not entries:
        return []
    bucket_pks = sorted({bucket_pk for _, bucket_pk in entries})
    buckets = list(DigestBucket.objects.select_for_update().filter(pk__in=bucket_pks).order_by("pk"))
    DigestEntry.objects.filter(pk__in=[pk for pk, _ in entries]).delete()
    _refresh_counts(bucket_pks, now)
    due: list[int] = []
    cancelled = set(run_pks)
    for bucket in buckets:
        if bucket.leader_run_id not in cancelled:
            continue
        successor = (
            DigestEntry.objects.filter(bucket=bucket, run__status=Run.Status.WAITING)
            .order_by("pk")
            .values_list("run_id", flat=True)
            .first()
        )
        if successor is None:
            DigestBucket.objects.filter(pk=bucket.pk).update(
                status=DigestBucket.Status.EMPTY, leader_run=None, closed_at=now
            )
            continue
        DigestBucket.objects.filter(pk=bucket.pk).update(leader_run_id=successor)
        resume_at = min(bucket.closes_at, now) if bucket.status == DigestBucket.Status.CLOSING else bucket.closes_at
        run = Run.objects.get(pk=successor)
        run.resume_at = resume_at
        result = dict(run.step_results.get(bucket.step_id) or {})
        result.update({"role": ROLE_LEADER, "bucket": bucket.pk})
        run.step_results = {**run.step_results, bucket.step_id: result}
        run.save(update_fields=["resume_at", "step_results", "updated_at"])
        if resume_at <= now:
            due.append(successor)
    return due


def digests_expire_leaderless(*, now: datetime) -> int:
    """Workflow buckets past their window with nobody to send them (look-back pass-through alone)."""
    return DigestBucket.objects.filter(
        status__in=ACTIVE, workflow__isnull=False, leader_run__isnull=True, closes_at__lte=now
    ).update(status=DigestBucket.Status.EMPTY, closed_at=now)

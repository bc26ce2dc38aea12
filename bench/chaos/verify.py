"""Wait for the system to drain (bounded), then count from the database and the fakes' logs.

``python -m bench.chaos.verify --environment-id N --loadgen-db L --esp-db A --esp-db B --timeout 150 --out r.json``

Runs as a subprocess with the same environment as the Clarion processes (Django, the mode's
database), read-only. Polls cheap counts every two seconds until the system is drained:

* no event still ``pending``, no run ``pending`` / ``running`` / ``waiting``, no email message
  ``queued`` / ``sending``; and
* at least one in-app row and one email at the fakes per expected (transaction id, recipient).

Expected = every trigger the client saw accepted (2xx, or a 409 ``duplicate_transaction`` after
a failed try) ∪ every event the database holds, each × its recipients. Then it waits
``--settle`` seconds more (late duplicates) and writes the full analysis as JSON.

In doubt (a send that may or may not have reached the provider: a timeout after the request
went out, a worker killed mid-call): the message's status ``in_doubt``, a non-zero
``in_doubt_count``, or an attempt with status ``in_doubt`` / ``error_kind`` ``timeout``,
``connection_lost`` or ``worker_died``. The category's ``in_doubt_policy`` says what follows:
resend (critical categories under ``auto``, or ``resend``) or hold (at most once).

* lost: expected, and no in-app row or no email at any fake, except an email held ``in_doubt``
  (the at-most-once policy chose not to resend it; counted under "in doubt, not received");
* duplicated: more than one in-app row for one (transaction id, recipient), or more than one
  email taken by the fakes for one Clarion message. Allowed only for an email that was in doubt
  in a category whose policy resends; everything else is a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ACCEPTED_OUTCOMES = ("accepted", "accepted_late")
IN_DOUBT = "in_doubt"
DOUBT_KINDS = ("timeout", "connection_lost", "worker_died", "in_doubt")
EMAIL_STEP_CHANNEL = "email"
SAMPLES = 8


def _loadgen(path: Path) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    triggers = {row["txid"]: dict(row) for row in db.execute("SELECT * FROM triggers")}
    attempts = [dict(row) for row in db.execute("SELECT * FROM attempts")]
    db.close()
    return triggers, attempts


def _esp_rows(paths: list[Path], *, accepted_only: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in paths:
        if not path.exists():
            continue
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        db.row_factory = sqlite3.Row
        sql = "SELECT * FROM requests"
        if accepted_only:
            sql += " WHERE outcome IN ('accepted', 'accepted_late')"
        rows.extend(dict(row) for row in db.execute(sql))
        db.close()
    return rows


def _esp_accepted_count(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        if path.exists():
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            total += db.execute(
                "SELECT COUNT(DISTINCT message_id) FROM requests WHERE outcome IN ('accepted', 'accepted_late')"
            ).fetchone()[0]
            db.close()
    return total


def _expected(environment_id: int, triggers: dict[str, dict[str, Any]]) -> tuple[set[tuple[str, str]], dict[str, Any]]:
    from apps.events.models import Event

    accepted = {txid for txid, t in triggers.items() if t["final"] == "accepted"}
    in_db = dict(Event.objects.filter(environment_id=environment_id).values_list("transaction_id", "recipients"))
    pairs: set[tuple[str, str]] = set()
    for txid in accepted:
        for subscriber_id in json.loads(triggers[txid]["recipients"]):
            pairs.add((txid, subscriber_id))
    for txid, recipients in in_db.items():
        for entry in recipients:
            if "subscriber_id" in entry:
                pairs.add((txid, entry["subscriber_id"]))
    info = {
        "accepted": accepted,
        "in_db": set(in_db),
        "ingest_lost": sorted(accepted - set(in_db)),
        "db_only": sorted(set(in_db) - accepted),
    }
    return pairs, info


def _state(environment_id: int) -> dict[str, int]:
    from apps.delivery.models import Message
    from apps.events.models import Event
    from apps.workflows.models import Run

    runs = Counter(
        Run.objects.filter(environment_id=environment_id, status__in=Run.ACTIVE_STATUSES).values_list(
            "status", flat=True
        )
    )
    emails = Counter(
        Message.objects.filter(environment_id=environment_id, channel=EMAIL_STEP_CHANNEL).values_list(
            "status", flat=True
        )
    )
    return {
        "events_pending": Event.objects.filter(environment_id=environment_id, status=Event.Status.PENDING).count(),
        "runs_pending": runs.get("pending", 0),
        "runs_running": runs.get("running", 0),
        "runs_waiting": runs.get("waiting", 0),
        "emails_queued": emails.get("queued", 0),
        "emails_sending": emails.get("sending", 0),
        "emails_in_doubt": emails.get(IN_DOUBT, 0),
        "emails_failed": emails.get("failed", 0),
    }


def _drained(state: dict[str, int], inbox: int, emails: int, expected: int) -> bool:
    busy = ("events_pending", "runs_pending", "runs_running", "runs_waiting", "emails_queued", "emails_sending")
    # An email held in doubt that never reached a fake will not arrive: the policy chose so.
    return not any(state[k] for k in busy) and inbox >= expected and emails + state["emails_in_doubt"] >= expected


def analyse(
    environment_id: int,
    triggers: dict[str, dict[str, Any]],
    attempts: list[dict[str, Any]],
    esp_paths: list[Path],
) -> dict[str, Any]:
    from django.db.models import Q

    from apps.delivery.models import DeliveryAttempt, Integration, Message
    from apps.inbox.models import InboxMessage
    from apps.workflows.models import Run

    has_policy = "in_doubt_count" in {f.name for f in Message._meta.get_fields()}
    pairs, info = _expected(environment_id, triggers)

    inbox = Counter(
        (str(txid), sub)
        for txid, sub in InboxMessage.objects.filter(environment_id=environment_id).values_list(
            "data__transaction_id", "subscriber__subscriber_id"
        )
    )
    emails = {
        m["pk"]: m
        for m in Message.objects.filter(environment_id=environment_id, channel=EMAIL_STEP_CHANNEL).values(
            "pk",
            "status",
            "run__event__transaction_id",
            "run__subscriber__subscriber_id",
            "run__workflow_version__workflow__category__critical",
            "error",
            *(["in_doubt_count", "run__workflow_version__workflow__category__in_doubt_policy"] if has_policy else []),
        )
    }
    doubted = set(
        DeliveryAttempt.objects.filter(message__environment_id=environment_id)
        .filter(Q(error_kind__in=DOUBT_KINDS) | Q(status=IN_DOUBT))
        .values_list("message_id", flat=True)
    )

    def in_doubt(message: dict[str, Any]) -> bool:
        return message["status"] == IN_DOUBT or bool(message.get("in_doubt_count")) or message["pk"] in doubted

    def resends(message: dict[str, Any]) -> bool:
        policy = message.get("run__workflow_version__workflow__category__in_doubt_policy") or "auto"
        critical = bool(message["run__workflow_version__workflow__category__critical"])
        return policy == "resend" or (policy == "auto" and critical)

    accepted_rows = _esp_rows(esp_paths, accepted_only=True)
    copies: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in accepted_rows:
        copies[row["message_id"]].append(row)
    email_pairs: Counter[tuple[str, str]] = Counter()
    unknown_ids = 0
    for message_id, rows in copies.items():
        message = emails.get(int(message_id)) if message_id.isdigit() else None
        if message is None:
            unknown_ids += len(rows)
            continue
        email_pairs[(message["run__event__transaction_id"], message["run__subscriber__subscriber_id"])] += 1

    by_pair = {(m["run__event__transaction_id"], m["run__subscriber__subscriber_id"]): m for m in emails.values()}
    lost_inapp = sorted(p for p in pairs if inbox[p] == 0)
    missing_email = [p for p in pairs if email_pairs[p] == 0]
    held = sorted(p for p in missing_email if p in by_pair and by_pair[p]["status"] == IN_DOUBT)
    lost_email = sorted(set(missing_email) - set(held))
    lost = sorted(set(lost_inapp) | set(lost_email))
    dup_inapp = sorted(p for p in pairs if inbox[p] > 1)

    dup_allowed: list[str] = []
    dup_violations: list[str] = []
    dup_reasons: Counter[str] = Counter()
    for message_id, rows in copies.items():
        if len(rows) < 2:
            continue
        message = emails.get(int(message_id)) if message_id.isdigit() else None
        if message is None:
            dup_violations.append(message_id)
            continue
        reason = " → ".join(f"{r['server']}:{r['outcome']}" for r in sorted(rows, key=lambda r: r["at"]))
        dup_reasons[reason] += 1
        (dup_allowed if in_doubt(message) and resends(message) else dup_violations).append(message_id)

    # Where the lost ones are stuck: the run's state and the email message's state.
    runs = {
        (r["event__transaction_id"], r["subscriber__subscriber_id"]): r
        for r in Run.objects.filter(environment_id=environment_id).values(
            "pk",
            "status",
            "step_index",
            "lease_until",
            "attempts",
            "event__transaction_id",
            "subscriber__subscriber_id",
        )
    }
    lost_where: Counter[str] = Counter()
    lost_when: dict[str, list[float]] = defaultdict(list)  # trigger times, seconds into the load
    load_start = min((t["scheduled_at"] for t in triggers.values()), default=0.0)
    samples: list[dict[str, Any]] = []
    for pair in lost:
        run = runs.get(pair)
        message = by_pair.get(pair)
        where = (
            f"run {run['status'] if run else 'missing'}"
            f"{' step ' + str(run['step_index']) if run else ''}; "
            f"email {message['status'] if message else 'no message'}"
            f"{'; no in-app row' if pair in lost_inapp else ''}"
        )
        lost_where[where] += 1
        if pair[0] in triggers:
            lost_when[where].append(triggers[pair[0]]["scheduled_at"] - load_start)
        if len(samples) < SAMPLES:
            trigger = triggers.get(pair[0])
            samples.append(
                {
                    "transaction_id": pair[0],
                    "subscriber": pair[1],
                    "scheduled_at": trigger["scheduled_at"] if trigger else None,
                    "client": trigger["final"] if trigger else "not sent by the client",
                    "run": {k: str(v) for k, v in run.items()} if run else None,
                    "email": {k: str(v)[:300] for k, v in message.items()} if message else None,
                }
            )

    integration_names = dict(Integration.objects.filter(environment_id=environment_id).values_list("pk", "name"))
    attempts_by: dict[str, Counter[str]] = defaultdict(Counter)
    for integration_id, status, kind in DeliveryAttempt.objects.filter(
        message__environment_id=environment_id
    ).values_list("integration_id", "status", "error_kind"):
        attempts_by[integration_names.get(integration_id, "default")][kind or status] += 1

    client_5xx = [a for a in attempts if a["status"] >= 500]
    # A 5xx whose try was in fact committed: the event exists, yet no try of it was answered 2xx
    # (a later try that was answered 2xx proves the earlier ones committed nothing; one answered
    # 409 duplicate_transaction proves an earlier one did).
    answered_2xx = {a["txid"] for a in attempts if 200 <= a["status"] < 300}
    client_5xx_accepted = sorted(
        {a["txid"] for a in client_5xx if a["txid"] in info["in_db"] and a["txid"] not in answered_2xx}
    )
    status_histogram = Counter(a["status"] or a["error"].split(":")[0] for a in attempts)
    esp_all = _esp_rows(esp_paths, accepted_only=False)

    return {
        "triggers_sent": len(triggers),
        "sent": len(info["accepted"]),
        "sent_notifications": sum(len(json.loads(triggers[t]["recipients"])) for t in info["accepted"]),
        "db_events": len(info["in_db"]),
        "db_only_events": len(info["db_only"]),
        "ingest_lost": info["ingest_lost"][:SAMPLES],
        "ingest_lost_count": len(info["ingest_lost"]),
        "expected": len(pairs),
        "delivered_in_app": len(pairs) - len(lost_inapp),
        "emails_received": len(accepted_rows),
        "emails_received_by": dict(Counter(r["server"] for r in accepted_rows)),
        "email_pairs_delivered": len(pairs) - len(lost_email),
        "esp_requests_by_outcome": dict(Counter(f"{r['server']}:{r['outcome']}" for r in esp_all)),
        "unknown_message_ids": unknown_ids,
        "lost": len(lost),
        "lost_in_app": len(lost_inapp),
        "lost_email": len(lost_email),
        "lost_where": dict(lost_where.most_common()),
        "lost_samples": samples,
        "lost_triggered_between": {
            where: f"+{min(times):.0f} … +{max(times):.0f} s" for where, times in lost_when.items() if times
        },
        "duplicated_in_app": len(dup_inapp),
        "duplicated_in_app_samples": [list(p) for p in dup_inapp[:SAMPLES]],
        "duplicated_email": len(dup_allowed) + len(dup_violations),
        "duplicated_email_allowed": len(dup_allowed),
        "duplicated_email_violations": len(dup_violations),
        "duplicate_patterns": dict(dup_reasons.most_common(10)),
        "duplicate_samples": dup_violations[:SAMPLES],
        "in_doubt_status_exists": IN_DOUBT in Message.Status.values,
        "in_doubt": sum(1 for m in emails.values() if m["status"] == IN_DOUBT),
        "in_doubt_ever": sum(1 for m in emails.values() if in_doubt(m)),
        "in_doubt_not_received": len(held),
        "in_doubt_by_policy": dict(
            Counter(f"{'resends' if resends(m) else 'holds'}: {m['status']}" for m in emails.values() if in_doubt(m))
        ),
        "email_status": dict(Counter(m["status"] for m in emails.values())),
        "attempts_by_integration": {k: dict(v) for k, v in attempts_by.items()},
        "client_attempts": dict(Counter(str(k) for k in status_histogram.elements())),
        "client_5xx": len(client_5xx),
        "client_5xx_accepted": len(client_5xx_accepted),
        "client_5xx_accepted_samples": client_5xx_accepted[:SAMPLES],
        "client_no_answer": sum(1 for a in attempts if a["status"] == 0),
        "client_failed_triggers": sum(1 for t in triggers.values() if t["final"] != "accepted"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos.verify")
    parser.add_argument("--environment-id", type=int, required=True)
    parser.add_argument("--loadgen-db", type=Path, required=True)
    parser.add_argument("--esp-db", type=Path, action="append", default=[])
    parser.add_argument("--timeout", type=float, default=150.0)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.db import close_old_connections
    from django.db.utils import Error as DatabaseError

    from apps.inbox.models import InboxMessage

    triggers, attempts = _loadgen(args.loadgen_db)
    started = time.monotonic()
    drained = False
    expected: set[tuple[str, str]] = set()
    state: dict[str, int] = {}
    last_print = 0.0
    history: list[tuple[float, int]] = []  # (time, in-app rows + emails taken): still moving at the end?
    while True:
        try:
            expected, _info = _expected(args.environment_id, triggers)
            state = _state(args.environment_id)
            inbox = InboxMessage.objects.filter(environment_id=args.environment_id).count()
        except DatabaseError as exc:  # the database may still be recovering from the last fault
            print(f"[verify] database not ready: {exc}", file=sys.stderr, flush=True)
            close_old_connections()
            time.sleep(2)
            if time.monotonic() - started > args.timeout:
                break
            continue
        emails = _esp_accepted_count(args.esp_db)
        history.append((time.monotonic(), inbox + emails))
        if _drained(state, inbox, emails, len(expected)):
            drained = True
            break
        elapsed = time.monotonic() - started
        if elapsed - last_print >= 10:
            last_print = elapsed
            print(
                f"[verify] {elapsed:4.0f} s: expected {len(expected)}, in-app {inbox}, emails {emails}, {state}",
                file=sys.stderr,
                flush=True,
            )
        if elapsed > args.timeout:
            break
        time.sleep(2)
    drain_seconds = time.monotonic() - started
    if drained and args.settle:
        time.sleep(args.settle)
    report = analyse(args.environment_id, triggers, attempts, args.esp_db)
    recent = [(t, n) for t, n in history if t >= history[-1][0] - 20] if history else []
    moving = (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0]) if len(recent) > 1 else 0.0
    report.update(
        {
            "drained": drained,
            "drain_seconds": round(drain_seconds, 1),
            "state_at_end": _state(args.environment_id),
            "still_moving_per_s": round(moving, 1),
        }
    )
    args.out.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fan-out of django-notifications-hq: ``notify.send(actor, recipient=<N users>, verb=...)``.

Run by ``bench.peers.run_notifications_hq`` with bench/peers/.venv's Python (Django 4.2 + the
package); prints one JSON object on stdout. Steps: migrate the (empty, throwaway) database, create
``--recipients`` users with one ``bulk_create`` (untimed), then ``--repeats`` timed
``notify.send`` calls to all of them (the package's documented way to notify a group: it saves
one ``Notification`` per recipient), each in one transaction, as a view would.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hq_project.settings")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipients", type=int, required=True)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import transaction
    from notifications.models import Notification
    from notifications.signals import notify

    call_command("migrate", verbosity=0, interactive=False)
    actor = User.objects.create(username="peer-actor")
    User.objects.bulk_create(
        [User(username=f"peer-{n:07d}", email=f"peer-{n}@example.test") for n in range(args.recipients)],
        batch_size=5000,
    )
    recipients = User.objects.exclude(pk=actor.pk).order_by("pk")
    runs = []
    for repeat in range(args.repeats):
        cpu0, t0 = time.process_time(), time.perf_counter()
        with transaction.atomic():
            notify.send(actor, recipient=recipients, verb=f"shipped order {repeat}", description="Your order shipped")
        seconds = time.perf_counter() - t0
        runs.append({"seconds": round(seconds, 3), "process_cpu_seconds": round(time.process_time() - cpu0, 3)})
        print(f"[peer] notify.send to {args.recipients}: {seconds:.2f} s", file=sys.stderr, flush=True)
    created = Notification.objects.count()
    expected = args.recipients * args.repeats
    if created != expected:
        raise SystemExit(f"expected {expected} notifications, found {created}")
    seconds = sorted(r["seconds"] for r in runs)[len(runs) // 2]
    print(
        json.dumps(
            {
                "peer": "django-notifications-hq",
                "version": __import__("importlib.metadata").metadata.version("django-notifications-hq"),
                "django": django.get_version(),
                "recipients": args.recipients,
                "runs": runs,
                "seconds": seconds,
                "notifications_per_s": round(args.recipients / seconds, 1) if seconds else 0.0,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

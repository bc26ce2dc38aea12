"""Delivery: messages/s one worker process sends through loopback fakes, against the provider's
library alone on one connection, in the same run.

``python -m bench.delivery [--messages N] [--rounds R] [--batch B] [--channels email,sms,push] [--quick] [--json]``
(``run()`` is what ``python -m bench`` calls; ``rows()`` gives its table rows).

What runs, per channel, in alternating rounds (baseline, then Clarion), each a fresh process:

* **the fake provider**: one process for the whole run (``--serve``), a threaded HTTP/1.1 server on
  127.0.0.1 speaking just enough Postmark (``POST /email``), Twilio (``POST
  /2010-04-01/Accounts/<sid>/Messages.json``) and Web Push (``POST /push/<id>``) to answer 200/201,
  counting requests and TCP connections;
* **Clarion** (``--worker clarion``): one process that sets Django up against the run's database,
  then delivers the round's N queued messages the way a worker's task does,
  ``apps.delivery.tasks.deliver_messages`` on batches of B ids (the engine enqueues a chunk's
  messages as one task): claim, suppressions, integrations, the provider call, attempts, statuses,
  the in-doubt write-ahead, heartbeats. The messages are created (queued) before the process starts;
  the broker is not involved (the pipeline benchmark measures the task hops);
* **the baseline** (``--worker baseline``): the same kind of process, with the provider's library
  alone sending the same N messages on one connection: Anymail's Postmark backend opened once and
  ``send_messages`` per message (email), one Twilio ``Client`` (SMS), ``pywebpush.webpush`` with one
  ``requests.Session`` (push, encryption included). No database.

Twilio's library only talks to api.twilio.com: in both processes alike, its session gets a transport
adapter that sends those requests to the fake instead (plain HTTP on loopback).

CPU: each worker process reports the CPU it used over its timed loop (``time.process_time``), the
CPU of its PostgreSQL backend (``/proc/<pid>/stat`` of ``pg_backend_pid()``) and of the fake's
process over the same interval: "CPU ms/message" is the sum. Throughput is messages over the timed
loop's wall time; the figure kept is the median of the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.report import Row

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TWILIO_SID = "AC00000000000000000000000000000000"
GOALS = {"email": 500.0}  # messages/s from one worker process (issue #15); sms and push are measured


@dataclass
class DeliveryConfig:
    messages: int = 2000  # per round and channel
    rounds: int = 3
    batch: int = 100  # ids per deliver_messages task
    channels: tuple[str, ...] = ("email", "sms", "push")
    send_window: int = 0  # 0: Clarion's default

    @classmethod
    def quick(cls) -> DeliveryConfig:
        return cls(messages=200, rounds=1)


# --- the fake provider -----------------------------------------------------------------------------


class _Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.connections = 0


def serve(port: int) -> None:
    """The fake provider (its own process): Postmark, Twilio and Web Push, 2xx to everything."""
    counters = _Counters()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes (kept-alive connections)

        def setup(self) -> None:
            super().setup()
            with counters.lock:
                counters.connections += 1

        def log_message(self, *args: Any) -> None:
            return

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            with counters.lock:
                stats = {"requests": dict(counters.requests), "connections": counters.connections}
            self._reply(200, stats)

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            kind = "email" if self.path.startswith("/email") else "sms" if "/Messages" in self.path else "push"
            with counters.lock:
                counters.requests[kind] = counters.requests.get(kind, 0) + 1
                n = counters.requests[kind]
            if kind == "email":
                to = json.loads(raw or b"{}").get("To", "")
                self._reply(200, {"To": to, "MessageID": f"pm-{n}", "ErrorCode": 0, "Message": "OK"})
            elif kind == "sms":
                self._reply(201, {"sid": f"SM{n:032d}", "status": "queued", "account_sid": TWILIO_SID})
            else:
                self._reply(201, {})

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


# --- measuring ------------------------------------------------------------------------------------


def _cpu_seconds(pid: int | None) -> float:
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _redirect_twilio(fake_url: str) -> None:
    """Send the Twilio library's requests (api.twilio.com, https) to the fake (same in both modes)."""
    from requests.adapters import HTTPAdapter
    from twilio.http import http_client

    class ToFake(HTTPAdapter):
        def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            request.url = request.url.replace("https://api.twilio.com", fake_url, 1)
            return super().send(request, *args, **kwargs)

    original = http_client.TwilioHttpClient.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if self.session is not None:
            self.session.mount("https://api.twilio.com", ToFake())

    http_client.TwilioHttpClient.__init__ = init


def _worker(mode: str, channel: str, fake_pid: int, fake_url: str, batch: int, spec_path: str) -> dict[str, Any]:
    """One round in this (fresh) process; prints its measurements as JSON."""
    import django

    django.setup()
    from django.db import connection

    spec = json.loads(Path(spec_path).read_text())
    _redirect_twilio(fake_url)
    backend_pid = None
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backend_pid = cursor.fetchone()[0]
    if mode == "clarion":
        from apps.delivery.models import Message
        from apps.delivery.tasks import deliver_messages

        ids: list[int] = spec["ids"]
        profile_path = os.environ.get("BENCH_DELIVERY_PROFILE")
        profiler = None
        if profile_path:
            import cProfile

            profiler = cProfile.Profile(time.process_time)
        before = _measure(fake_pid, backend_pid)
        timers: dict[str, list[float]] = {}
        if os.environ.get("BENCH_DELIVERY_TIMERS"):
            from apps.delivery.services import sending

            for name in ("_send", "_settle_window", "_update_returning", "_suppressions_of", "_integrations_of"):
                owner: Any = sending._Batch if name == "_settle_window" else sending
                original = getattr(owner, name)

                def timed(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
                    started = time.perf_counter()
                    try:
                        return _original(*args, **kwargs)
                    finally:
                        timers.setdefault(_name, [0.0, 0])
                        timers[_name][0] += time.perf_counter() - started
                        timers[_name][1] += 1

                setattr(owner, name, timed)
        if profiler is not None:
            profiler.enable()
        for start in range(0, len(ids), batch):
            deliver_messages(ids[start : start + batch])
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(str(profile_path))
        after = _measure(fake_pid, backend_pid)
        sent = Message.objects.filter(pk__in=ids, status=Message.Status.SENT).count()
        if timers:
            print(json.dumps({k: [round(v[0], 3), v[1]] for k, v in timers.items()}), file=sys.stderr)
    else:
        step = _baseline_sender(channel, spec, fake_url)
        count = len(spec["ids"])
        before = _measure(fake_pid, backend_pid)
        sent = sum(step(index) for index in range(count))
        after = _measure(fake_pid, backend_pid)
    return {
        "mode": mode,
        "channel": channel,
        "messages": len(spec["ids"]),
        "sent": sent,
        "wall_seconds": after["wall"] - before["wall"],
        "cpu_seconds": {k: round(after[k] - before[k], 4) for k in ("worker", "postgres", "fake")},
    }


def _measure(fake_pid: int, backend_pid: int | None) -> dict[str, float]:
    return {
        "wall": time.monotonic(),
        "worker": time.process_time(),
        "postgres": _cpu_seconds(backend_pid),
        "fake": _cpu_seconds(fake_pid),
    }


def _baseline_sender(channel: str, spec: dict[str, Any], fake_url: str) -> Any:
    """The provider's library alone, one connection, the same content as Clarion's messages."""
    if channel == "email":
        from anymail.backends.postmark import EmailBackend
        from django.core.mail import EmailMultiAlternatives

        backend = EmailBackend(server_token="bench-token", api_url=f"{fake_url}/email/", fail_silently=False)
        backend.open()

        def send_email(index: int) -> int:
            email = EmailMultiAlternatives(
                subject=spec["subject"],
                body=spec["text"],
                from_email=spec["from_email"],
                to=[f"user{index}@example.com"],
                headers={"X-Clarion-Message-Id": str(index)},
            )
            email.attach_alternative(spec["html"], "text/html")
            email.metadata = {"clarion_message_id": str(index)}  # type: ignore[attr-defined]
            return backend.send_messages([email])

        return send_email
    if channel == "sms":
        from twilio.http.http_client import TwilioHttpClient
        from twilio.rest import Client

        client = Client(TWILIO_SID, "bench-token", http_client=TwilioHttpClient(timeout=10))

        def send_sms(index: int) -> int:
            client.messages.create(
                to=f"+1555{index:07d}",
                from_="+15550000000",
                body=spec["text"],
                status_callback=f"https://clarion.example.com/cb?clarion_message_id={index}",
            )
            return 1

        return send_sms
    import requests
    from pywebpush import webpush

    session = requests.Session()
    device = spec["device"]

    def send_push(index: int) -> int:
        webpush(
            subscription_info={"endpoint": f"{fake_url}/push/{index}", "keys": device["keys"]},
            data=json.dumps({"title": spec["subject"], "body": spec["text"], "message_id": str(index)}),
            vapid_private_key=device["vapid_private_key"],
            vapid_claims={"sub": "mailto:ops@example.com"},
            timeout=10,
            ttl=86400,
            headers={"Urgency": "normal", "Topic": f"clarion-{index}"},
            requests_session=session,
        )
        return 1

    return send_push


# --- the orchestrator -----------------------------------------------------------------------------


@dataclass
class _Fixture:
    environment_id: int
    subject: str = "Your weekly summary"
    text: str = "Hello Ada, here is what happened this week."
    html: str = "<p>Hello <b>Ada</b>, here is what happened this week.</p>"
    from_email: str = "Clarion Bench <bench@example.com>"
    push_device: dict[str, Any] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _setup(fake_url: str) -> _Fixture:
    """An environment with a Postmark, a Twilio and a Web Push integration pointing at the fake."""
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from apps.delivery.models import Integration
    from apps.tenancy.services import environment_create

    env = environment_create(name=f"bench-delivery-{time.time_ns()}").environment
    Integration.objects.create(
        environment_id=env.pk,
        channel="email",
        provider="postmark",
        credentials={"server_token": "bench-token", "api_url": f"{fake_url}/email/"},
        settings={"from_email": "Clarion Bench <bench@example.com>"},
    )
    Integration.objects.create(
        environment_id=env.pk,
        channel="sms",
        provider="twilio",
        credentials={"account_sid": TWILIO_SID, "auth_token": "bench-token"},
        settings={"from_number": "+15550000000"},
    )
    vapid = ec.generate_private_key(ec.SECP256R1())
    vapid_raw = vapid.private_numbers().private_value.to_bytes(32, "big")
    vapid_key = base64.urlsafe_b64encode(vapid_raw).rstrip(b"=").decode()
    Integration.objects.create(
        environment_id=env.pk,
        channel="push",
        provider="webpush",
        credentials={"vapid_private_key": vapid_key, "vapid_subject": "mailto:ops@example.com"},
        settings={},
    )
    browser = ec.generate_private_key(ec.SECP256R1())
    p256dh = browser.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    keys = {
        "p256dh": base64.urlsafe_b64encode(p256dh).rstrip(b"=").decode(),
        "auth": base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode(),
    }
    return _Fixture(environment_id=env.pk, push_device={"keys": keys, "vapid_private_key": vapid_key})


def _queue(fixture: _Fixture, channel: str, count: int, fake_url: str) -> list[int]:
    """N queued messages of the channel, one subscriber each (push: one browser subscription each)."""
    from apps.delivery.services import message_build, messages_create_bulk
    from apps.subscribers.models import Device, Subscriber

    stamp = time.time_ns()
    subscribers = Subscriber.objects.bulk_create(
        [
            Subscriber(
                environment_id=fixture.environment_id,
                subscriber_id=f"bench-{channel}-{stamp}-{i}",
                email=f"user{i}@example.com",
                phone=f"+1555{i:07d}",
            )
            for i in range(count)
        ],
        batch_size=1000,
    )
    if channel == "push":
        Device.objects.bulk_create(
            [
                Device(
                    environment_id=fixture.environment_id,
                    subscriber=s,
                    provider="webpush",
                    token=f"{fake_url}/push/{s.pk}",
                    keys=fixture.push_device["keys"],
                )
                for s in subscribers
            ],
            batch_size=1000,
        )
    messages = [
        message_build(
            environment_id=fixture.environment_id,
            channel=channel,
            subscriber=s,
            step_id="bench",
            subject=fixture.subject,
            body=fixture.html if channel == "email" else fixture.text,
            data={"text": fixture.text} if channel == "email" else {},
        )
        for s in subscribers
    ]
    return [m.pk for m in messages_create_bulk(messages=messages)]


def _spawn_round(
    installation: Any, mode: str, channel: str, fake_pid: int, fake_url: str, config: DeliveryConfig, spec: dict
) -> dict[str, Any]:
    spec_path = installation.var_dir / f"delivery-{mode}-{channel}.json"
    spec_path.write_text(json.dumps(spec))
    extra = {"CLARION_DELIVERY_SEND_WINDOW": str(config.send_window)} if config.send_window else {}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.delivery",
            "--worker",
            mode,
            "--channel",
            channel,
            "--fake-pid",
            str(fake_pid),
            "--fake-url",
            fake_url,
            "--batch",
            str(config.batch),
            "--spec",
            str(spec_path),
        ],
        cwd=ROOT,
        env=installation.process_env(**extra),
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.stderr.strip() and os.environ.get("BENCH_DELIVERY_TIMERS"):
        print(result.stderr.strip()[-2000:], file=sys.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"delivery {mode} {channel} worker exited {result.returncode}:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["messages"] / r["wall_seconds"] for r in rounds if r["wall_seconds"]]
    cpu = {
        k: statistics.median(r["cpu_seconds"][k] * 1000 / r["messages"] for r in rounds)
        for k in rounds[0]["cpu_seconds"]
    }
    return {
        "messages_per_s": round(statistics.median(rates), 1),
        "rounds_messages_per_s": [round(x, 1) for x in rates],
        "cpu_ms_per_message": {k: round(v, 3) for k, v in cpu.items()} | {"total": round(sum(cpu.values()), 3)},
        "sent": [r["sent"] for r in rounds],
        "messages": rounds[0]["messages"],
    }


def run(installation: Any, config: DeliveryConfig | None = None) -> dict[str, Any]:
    """Every channel's rounds; the result carries ``rows`` (goal | measured | baseline | ratio)."""
    config = config or DeliveryConfig()
    installation.setup_django()
    port = _free_port()
    fake_url = f"http://127.0.0.1:{port}"
    fake = subprocess.Popen(
        [sys.executable, "-m", "bench.delivery", "--serve", str(port)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        fixture = _setup(fake_url)
        results: dict[str, Any] = {"config": asdict(config), "fake": fake_url, "channels": {}}
        for channel in config.channels:
            per_mode: dict[str, list[dict[str, Any]]] = {"baseline": [], "clarion": []}
            for _round in range(config.rounds):
                ids = _queue(fixture, channel, config.messages, fake_url)
                spec = {
                    "ids": ids,
                    "subject": fixture.subject,
                    "text": fixture.text,
                    "html": fixture.html,
                    "from_email": fixture.from_email,
                    "device": fixture.push_device,
                }
                for mode in ("baseline", "clarion"):
                    per_mode[mode].append(_spawn_round(installation, mode, channel, fake.pid, fake_url, config, spec))
            baseline, clarion = _summary(per_mode["baseline"]), _summary(per_mode["clarion"])
            results["channels"][channel] = {
                "baseline": baseline,
                "clarion": clarion,
                "ratio": round(clarion["messages_per_s"] / baseline["messages_per_s"], 3),
            }
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        results["fake_counters"] = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        return results
    finally:
        fake.terminate()
        try:
            fake.wait(timeout=5)
        except subprocess.TimeoutExpired:
            fake.kill()


BASELINE_NAMES = {
    "email": "Anymail Postmark backend alone, one connection",
    "sms": "twilio Client alone, one session",
    "push": "pywebpush alone, one session",
}


def rows(results: dict[str, Any]) -> list[Row]:
    """The table rows (goal | measured | baseline | ratio), one per channel; pure."""
    out = []
    for channel, figures in results["channels"].items():
        clarion, baseline = figures["clarion"], figures["baseline"]
        cpu, base_cpu = clarion["cpu_ms_per_message"], baseline["cpu_ms_per_message"]
        unsent = [n for n in clarion["sent"] if n != clarion["messages"]]
        out.append(
            Row(
                section="delivery",
                name=f"{channel}, one worker process",
                measured=clarion["messages_per_s"],
                unit="msg/s",
                baseline=baseline["messages_per_s"],
                baseline_name=BASELINE_NAMES[channel],
                goal_min=GOALS.get(channel),
                unmet=bool(unsent),
                note=(
                    f"CPU ms/message {cpu['total']:.2f} (worker {cpu['worker']:.2f} + PostgreSQL "
                    f"{cpu['postgres']:.2f} + fake {cpu['fake']:.2f}), baseline {base_cpu['total']:.2f}; "
                    f"rounds {clarion['rounds_messages_per_s']} vs {baseline['rounds_messages_per_s']}"
                    + (f"; NOT ALL SENT: {clarion['sent']}" if unsent else "")
                ),
            )
        )
    return out


def render(results: dict[str, Any]) -> str:
    cfg = results["config"]
    lines = [
        f"delivery: {cfg['messages']:,} messages per round and channel, {cfg['rounds']} alternating round(s), "
        f"batches of {cfg['batch']} ids per task, one worker process, fake provider on loopback",
        f"  {'channel':<8} {'clarion/s':>10} {'baseline/s':>11} {'ratio':>7} {'goal':>9}   "
        f"{'CPU ms/msg clarion (worker+pg+fake)':>36} {'baseline':>9}",
    ]
    for channel, figures in results["channels"].items():
        cpu = figures["clarion"]["cpu_ms_per_message"]
        goal = GOALS.get(channel)
        lines.append(
            f"  {channel:<8} {figures['clarion']['messages_per_s']:>10,.1f} "
            f"{figures['baseline']['messages_per_s']:>11,.1f} {figures['ratio']:>7.3f} "
            f"{(f'>= {goal:.0f}' if goal else '-'):>9}   "
            f"{cpu['total']:>8.3f} ({cpu['worker']:.3f}+{cpu['postgres']:.3f}+{cpu['fake']:.3f})"
            f"{'':>6} {figures['baseline']['cpu_ms_per_message']['total']:>9.3f}"
        )
    lines.append(f"  fake provider: {results.get('fake_counters')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.delivery")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=["clarion", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--channel", help=argparse.SUPPRESS)
    parser.add_argument("--fake-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--fake-url", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--messages", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--send-window", type=int)
    parser.add_argument("--channels")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    if args.worker:
        window = os.environ.get("CLARION_DELIVERY_SEND_WINDOW")
        if window:
            from django.conf import settings

            settings.CLARION_DELIVERY = {"SEND_WINDOW": int(window)}
        print(json.dumps(_worker(args.worker, args.channel, args.fake_pid, args.fake_url, args.batch, args.spec)))
        return 0
    from bench.common import Installation

    config = DeliveryConfig.quick() if args.quick else DeliveryConfig()
    overrides = {
        "messages": args.messages,
        "rounds": args.rounds,
        "batch": args.batch,
        "send_window": args.send_window,
        "channels": tuple(args.channels.split(",")) if args.channels else None,
    }
    config = DeliveryConfig(**{**asdict(config), **{k: v for k, v in overrides.items() if v}})
    installation = Installation.create()
    try:
        results = run(installation, config)
    finally:
        installation.cleanup()
    print(json.dumps(results, indent=2) if args.json else render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

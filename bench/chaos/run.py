"""One mode of the chaos suite: set up, load, inject faults, drain, count.

``ModeRun.execute()`` does, for ``embedded`` (SQLite + ORM broker) or ``services`` (own
PostgreSQL on 5499 + own Redis on 6399):

1. migrate, ``create_environment``, start uvicorn on 127.0.0.1:8399 and the worker command;
2. over the API: two categories (one critical), an in-app and an email template, two workflows
   (in-app step then email step), two Postmark integrations pointing at the fake ESPs (primary
   8391, secondary 8392, client timeout 2 s) and the subscriber pool with emails;
3. the load generator (its own process) sends the triggers at a fixed rate while this process
   runs the fault timeline: worker SIGKILLs (whole group / one child, alternating), the primary
   ESP through hang → 500 → 429 → ok while watching the circuit, Redis killed and restarted,
   PostgreSQL stopped (immediate) and started;
4. ``bench.chaos.verify`` waits for the drain and counts; the result is a dict for the report.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import re
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.chaos.infra import Managed, OwnPostgres, OwnRedis, log, port_free, wait_port
from bench.common import ROOT

WEB_PORT = 8399
ESP_PORTS = {"primary": 8391, "secondary": 8392}
SETTINGS_MODULE = "bench.chaos.settings"
CLIENT_TIMEOUT = 2  # seconds: the integrations' HTTP timeout; the hang mode answers after HANG_SECONDS
HANG_SECONDS = 5.0
RETRY_AFTER = 3
REDIS_DOWN_SECONDS = 5.0
POSTGRES_DOWN_SECONDS = 6.0
SUPERVISOR_RESTART_DELAY = 1.0  # systemd's Restart=always with RestartSec=1
READY_TIMEOUT = 90.0
WORKFLOWS = (("chaos-updates", 3), ("chaos-security", 1))  # (key, weight); security is a critical category
EXCEPTION_LINE = re.compile(
    r"^(?:[\w.]+\.)?[A-Z]\w*(?:Error|Exception|Timeout|Refused|Closed)\b.*|.*\b(?:ERROR|CRITICAL)\b.*"
)


@dataclass(frozen=True)
class ModePlan:
    mode: str  # "embedded" or "services"
    notifications: int
    recipients_per_trigger: int
    rate: float  # triggers per second
    subscribers: int

    @property
    def triggers(self) -> int:
        return self.notifications // self.recipients_per_trigger

    @property
    def load_seconds(self) -> float:
        return self.triggers / self.rate


@dataclass(frozen=True)
class Profile:
    name: str
    plans: tuple[ModePlan, ...]
    kill_every: tuple[float, float]  # seconds between worker kills (uniform)
    drain_timeout: float
    settle: float
    circuit_cooldown: float | None  # None: production's (60 s)
    esp_start: float  # seconds into the load
    esp_hang_seconds: float  # how long the primary hangs before the 500s start
    redis_at: float  # fraction of the load
    postgres_at: float


FULL = Profile(
    name="full",
    plans=(
        # About 60 % of what the control run (--no-faults) sustains on the shared 2-core machine
        # (~25 notifications/s on either mode), so the faults, not an overload, are what is measured.
        ModePlan("services", notifications=5_000, recipients_per_trigger=10, rate=1.5, subscribers=1000),  # 333 s
        ModePlan("embedded", notifications=3_000, recipients_per_trigger=10, rate=1.5, subscribers=300),  # 200 s
    ),
    kill_every=(20.0, 45.0),
    drain_timeout=120.0,
    settle=10.0,
    circuit_cooldown=None,
    esp_start=20.0,
    esp_hang_seconds=20.0,
    redis_at=0.45,
    postgres_at=0.7,
)
SHORT = Profile(
    name="short",
    plans=(
        ModePlan("services", notifications=1_000, recipients_per_trigger=5, rate=3.5, subscribers=200),
        ModePlan("embedded", notifications=300, recipients_per_trigger=5, rate=1.5, subscribers=100),
    ),
    kill_every=(10.0, 15.0),
    # a cluster wedged by a kill near the end of the load comes back within 15 + 5 s (watchdog),
    # and what it held within 20 s more (the ticker's lost wake-ups)
    drain_timeout=75.0,
    settle=3.0,
    circuit_cooldown=10.0,
    esp_start=4.0,
    esp_hang_seconds=8.0,
    redis_at=0.45,
    postgres_at=0.7,
)
PROFILES = {"full": FULL, "short": SHORT}


def worker_argv() -> tuple[list[str], str]:
    """``manage.py clarion_worker`` (cluster + 1-second ticker) once it exists, else ``qcluster``."""
    if list(ROOT.glob("apps/*/management/commands/clarion_worker.py")):
        return [sys.executable, "manage.py", "clarion_worker"], "clarion_worker"
    return [sys.executable, "manage.py", "qcluster"], "qcluster"


class Timeline:
    """What the orchestrator did and saw, relative to the start of the load."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.events: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def add(self, text: str) -> None:
        with self.lock:
            self.events.append((round(self.now(), 1), text))
        log(f"+{self.now():6.1f} s  {text}")


class CircuitWatch(threading.Thread):
    """Polls the primary integration's circuit over the API every 0.5 s and records each change."""

    def __init__(self, base_url: str, secret_key: str, integration_id: int, timeline: Timeline) -> None:
        super().__init__(daemon=True)
        self.url = f"{base_url}/api/v1/integrations/{integration_id}"
        self.headers = {"Authorization": f"Bearer {secret_key}"}
        self.timeline = timeline
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.state: tuple[int, str | None] = (0, None)
        self.opened = 0  # times open_until went from null to a date
        self.moved = 0  # times a non-null open_until moved (a probe, or a failed probe re-opening it)
        self.closed = 0  # times it went back to null after being open
        self.changes: list[tuple[float, int, str | None]] = []

    def open_until(self) -> datetime | None:
        with self.lock:
            value = self.state[1]
        return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None

    def run(self) -> None:
        with httpx.Client(timeout=3) as client:
            while not self.stop_event.wait(0.5):
                try:
                    circuit = client.get(self.url, headers=self.headers).json()["circuit"]
                except (httpx.HTTPError, ValueError, KeyError, TypeError):
                    continue
                new = (int(circuit["failures"]), circuit["open_until"])
                with self.lock:
                    old, self.state = self.state, new
                if new == old:
                    continue
                if old[1] is None and new[1] is not None:
                    self.opened += 1
                    self.timeline.add(f"circuit of the primary OPEN until {new[1]} (failures {new[0]})")
                elif old[1] is not None and new[1] is not None and old[1] != new[1]:
                    self.moved += 1
                    self.timeline.add(f"circuit of the primary probed / re-opened until {new[1]} (failures {new[0]})")
                elif old[1] is not None and new[1] is None:
                    self.closed += 1
                    self.timeline.add(f"circuit of the primary CLOSED (failures {new[0]})")
                self.changes.append((round(self.timeline.now(), 1), new[0], new[1]))

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=5)


class EspSequence:
    """Walks the primary ESP through hang → error (500) → ratelimit (429) → ok.

    ``hang`` lasts ``hang_seconds`` (timeouts: the in-doubt case; the circuit may open). Then
    each of ``error`` and ``ratelimit`` holds until the circuit has (re)opened during it, and
    until a few seconds before that cool-down ends, so the half-open probe meets the next mode:
    the probe fails on 500, fails on 429 (with Retry-After), and succeeds on ``ok``, closing the
    circuit. If the circuit does not (re)open within ``phase_max`` seconds the next mode starts
    anyway, and the report says so.
    """

    MODES = ("hang", "error", "ratelimit", "ok")

    def __init__(
        self, watch: CircuitWatch, timeline: Timeline, *, start_at: float, hang_seconds: float, phase_max: float
    ) -> None:
        self.watch = watch
        self.timeline = timeline
        self.start_at = start_at
        self.hang_seconds = hang_seconds
        self.phase_max = phase_max
        self.index = -1
        self.phase_started = 0.0
        self.baseline: datetime | None = None
        self.switch_at: float | None = None  # wall-clock time of the next switch
        self.notes: list[str] = []

    @property
    def done(self) -> bool:
        return self.index >= len(self.MODES) - 1

    def _set(self, index: int) -> None:
        self.index = index
        mode = self.MODES[index]
        set_esp_mode("primary", mode)
        self.phase_started = self.timeline.now()
        self.baseline = self.watch.open_until()
        self.switch_at = None
        self.timeline.add(f"primary ESP → {mode}")

    def tick(self) -> None:
        now = self.timeline.now()
        if self.index < 0:
            if now >= self.start_at:
                self._set(0)
            return
        if self.done:
            return
        if self.MODES[self.index] == "hang":
            if now - self.phase_started >= self.hang_seconds:
                self._set(self.index + 1)
            return
        open_until = self.watch.open_until()
        if self.switch_at is None and open_until is not None and open_until != self.baseline:
            lead = min(5.0, max(1.0, (open_until.timestamp() - time.time()) / 4))
            self.switch_at = open_until.timestamp() - lead
        if self.switch_at is not None and time.time() >= self.switch_at:
            self._set(self.index + 1)
        elif self.switch_at is None and now - self.phase_started > self.phase_max:
            self.notes.append(f"the circuit did not (re)open during '{self.MODES[self.index]}'")
            self.timeline.add(f"no circuit change during '{self.MODES[self.index]}' in {self.phase_max:.0f} s")
            self._set(self.index + 1)

    def finish(self) -> None:
        if self.index >= 0 and not self.done:
            self.notes.append(f"the sequence was cut at '{self.MODES[self.index]}' (the load ended)")
            self._set(len(self.MODES) - 1)


class Supervisor(threading.Thread):
    """During the drain: restart the web or worker process if it exits, as systemd's Restart=always would."""

    def __init__(self, web: Managed, worker: Managed, timeline: Timeline, counts: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.processes = {"web": web, "worker": worker}
        self.timeline = timeline
        self.counts = counts
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(0.5):
            for name, process in self.processes.items():
                if not process.alive():
                    code = process.proc.returncode if process.proc else None
                    self.counts[f"{name}_died"] = self.counts.get(f"{name}_died", 0) + 1
                    self.timeline.add(f"{name} exited by itself during the drain (status {code}); restarted")
                    time.sleep(SUPERVISOR_RESTART_DELAY)
                    process.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=5)


def set_esp_mode(name: str, mode: str) -> None:
    body = {"mode": mode, "hang_seconds": HANG_SECONDS, "retry_after": RETRY_AFTER}
    httpx.post(f"http://127.0.0.1:{ESP_PORTS[name]}/_chaos/mode", json=body, timeout=5).raise_for_status()


def _scan_log(path: Path, limit: int = 8) -> list[str]:
    """The most frequent exception / error lines of a process log: the evidence for the lead."""
    if not path.exists():
        return []
    counts: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if EXCEPTION_LINE.match(line) and "===== [" not in line:
            counts[re.sub(r"\d{3,}", "N", line)[:220]] += 1
    return [f"{n:>6} × {line}" for line, n in counts.most_common(limit)]


@dataclass
class ModeRun:
    plan: ModePlan
    profile: Profile
    run_dir: Path
    seed: int
    timeline: Timeline = field(default_factory=Timeline)
    processes: list[Managed] = field(default_factory=list)
    postgres: OwnPostgres | None = None
    redis: OwnRedis | None = None
    no_faults: bool = False  # the control run: the same load, no fault at all

    # --- setup -----------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        var_dir = self.run_dir / "var"
        var_dir.mkdir(parents=True, exist_ok=True)
        drop = {"DATABASE_URL", "REDIS_URL", "CLARION_TASKS_EAGER", "DJANGO_SETTINGS_MODULE"}
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
                "PYTHONUNBUFFERED": "1",
                "CLARION_VAR_DIR": str(var_dir),
                "DEBUG": "0",
                "SECRET_KEY": "chaos-" + secrets.token_urlsafe(32),
                "CLARION_ENCRYPTION_KEYS": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
                "ALLOWED_HOSTS": "127.0.0.1,localhost",
                "CLARION_PUBLIC_URL": f"http://127.0.0.1:{WEB_PORT}",
                "CLARION_ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8",
                "CLARION_WORKERS": "2",
                # The suite's tasks finish in seconds; a cluster wedged by a killed worker must come
                # back within the drain bound, not after the production default (task timeout + 60 s).
                "CLARION_WORKER_WEDGE_SECONDS": "15",
                "LOG_LEVEL": "INFO",
            }
        )
        if self.profile.circuit_cooldown:
            env["CHAOS_CIRCUIT_COOLDOWN"] = str(self.profile.circuit_cooldown)
        if self.plan.mode == "services":
            assert self.postgres is not None and self.redis is not None
            env["DATABASE_URL"] = self.postgres.url
            env["REDIS_URL"] = self.redis.url
        else:
            env["DATABASE_URL"] = f"sqlite:///{var_dir / 'clarion.sqlite3'}"
            env["REDIS_URL"] = ""  # shadows a REDIS_URL in a developer's .env
        return env

    def _manage(self, env: dict[str, str], *args: str, timeout: float = 300) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)}: {result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result.stdout

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Managed:
        process = Managed(name, argv, env, self.run_dir / f"{name}.log")
        process.start()
        self.processes.append(process)
        return process

    def _api_setup(self, client: httpx.Client) -> int:
        def call(method: str, path: str, body: Any) -> dict[str, Any]:
            response = client.request(method, path, json=body)
            if response.status_code not in (200, 201, 202):
                raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:500]}")
            return response.json() if response.content else {}

        call("PUT", "/api/v1/categories/chaos-updates", {"name": "Updates"})
        call("PUT", "/api/v1/categories/chaos-security", {"name": "Security", "critical": True})
        call(
            "PUT",
            "/api/v1/templates/chaos-inbox",
            {
                "name": "Chaos in-app",
                "channel": "in_app",
                "publish": True,
                "content": {"en": {"title": "{{ payload.title }}", "body": "Number {{ payload.n }}"}},
            },
        )
        call(
            "PUT",
            "/api/v1/templates/chaos-mail",
            {
                "name": "Chaos email",
                "channel": "email",
                "publish": True,
                "content": {"en": {"subject": "{{ payload.title }}", "body": "<p>Number {{ payload.n }}</p>"}},
            },
        )
        for key, _weight in WORKFLOWS:
            call(
                "PUT",
                f"/api/v1/workflows/{key}",
                {
                    "name": key,
                    "category": key,
                    "publish": True,
                    "steps": [
                        {"id": "inbox", "type": "in_app", "template": "chaos-inbox"},
                        {"id": "mail", "type": "email", "template": "chaos-mail"},
                    ],
                },
            )
        ids = {}
        for priority, (name, port) in enumerate(ESP_PORTS.items()):
            created = call(
                "POST",
                "/api/v1/integrations",
                {
                    "channel": "email",
                    "provider": "postmark",
                    "name": name,
                    "priority": priority,
                    "credentials": {"server_token": f"chaos-{name}", "api_url": f"http://127.0.0.1:{port}/"},
                    "settings": {"from_email": "Clarion chaos <chaos@example.test>", "timeout": CLIENT_TIMEOUT},
                },
            )
            ids[name] = int(created["id"])
        subscribers = self._subscriber_ids()
        for start in range(0, len(subscribers), 500):
            chunk = subscribers[start : start + 500]
            call(
                "POST",
                "/api/v1/subscribers/bulk",
                {"subscribers": [{"subscriber_id": s, "email": f"{s}@example.test"} for s in chunk]},
            )
        return ids["primary"]

    def _subscriber_ids(self) -> list[str]:
        return [f"chaos-{n:05d}" for n in range(self.plan.subscribers)]

    def _wait_ready(self, web: Managed, worker: Managed) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        web_ready = False
        while time.monotonic() < deadline:
            if not web.alive() or not worker.alive():
                raise RuntimeError(f"a process exited during start-up\n{web.tail()}\n{worker.tail()}")
            if not web_ready and wait_port(WEB_PORT, 0.2):
                with contextlib.suppress(httpx.HTTPError):
                    web_ready = httpx.get(f"http://127.0.0.1:{WEB_PORT}/api/schema/", timeout=10).status_code == 200
            if web_ready and "running." in worker.tail(20_000):
                return
            time.sleep(0.3)
        raise RuntimeError(f"not ready after {READY_TIMEOUT:.0f} s\n{web.tail()}\n{worker.tail()}")

    # --- the run -----------------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o755)  # the postgres user must reach its data directory below
        for port in (WEB_PORT, *ESP_PORTS.values()):
            if not port_free(port):
                raise RuntimeError(f"port {port} is taken (another chaos run?)")
        started = time.monotonic()
        if self.plan.mode == "services":
            self.postgres = OwnPostgres(self.run_dir / "pg")
            self.postgres.init()
            self.redis = OwnRedis(self.run_dir / "redis.log")
            self.redis.start()
        env = self._env()
        for name, port in ESP_PORTS.items():
            self._spawn(
                f"esp-{name}",
                [
                    sys.executable,
                    "-m",
                    "bench.chaos.fake_esp",
                    "--name",
                    name,
                    "--port",
                    str(port),
                    "--log",
                    str(self.run_dir / f"esp-{name}.sqlite3"),
                    "--max-seconds",
                    "1500",
                ],
                env,
            )
        log(f"{self.plan.mode}: migrating")
        self._manage(env, "migrate", "--noinput")
        if self.plan.mode == "embedded":
            self._manage(env, "migrate", "--database", "channels", "--noinput")
        created = self._manage(env, "create_environment", "chaos", "--json")
        keys = json.loads(created[created.index("{") :])
        secret_key, environment_id = keys["secret_key"], int(keys["environment"]["id"])

        argv, worker_command = worker_argv()
        web = self._spawn(
            "web",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "config.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(WEB_PORT),
            ],
            env,
        )
        worker = self._spawn("worker", argv, env)
        self._wait_ready(web, worker)
        for port in ESP_PORTS.values():
            if not wait_port(port, 10):
                raise RuntimeError(f"the fake ESP on {port} did not start")
        base_url = f"http://127.0.0.1:{WEB_PORT}"
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {secret_key}"}, timeout=60) as client:
            primary_id = self._api_setup(client)
        setup_seconds = time.monotonic() - started
        log(f"{self.plan.mode}: ready in {setup_seconds:.0f} s; worker command: {worker_command}")

        plan_path = self.run_dir / "plan.json"
        plan_path.write_text(
            json.dumps(
                {
                    "base_url": base_url,
                    "rate": self.plan.rate,
                    "count": self.plan.triggers,
                    "recipients_per_trigger": self.plan.recipients_per_trigger,
                    "subscribers": self._subscriber_ids(),
                    "workflows": list(WORKFLOWS),
                    "prefix": f"chaos-{self.plan.mode}-{self.seed}",
                    "seed": self.seed,
                    "retries": 5,
                    "deadline_seconds": self.plan.load_seconds + 60,
                }
            )
        )
        loadgen_db = self.run_dir / "loadgen.sqlite3"
        self.timeline = Timeline()
        loadgen = self._spawn(
            "loadgen",
            [sys.executable, "-m", "bench.chaos.loadgen", "--plan", str(plan_path), "--out", str(loadgen_db)],
            {**env, "CHAOS_SECRET_KEY": secret_key},
        )
        self.timeline.add(
            f"load: {self.plan.triggers:,} triggers × {self.plan.recipients_per_trigger} recipients "
            f"at {self.plan.rate}/s (~{self.plan.load_seconds:.0f} s)"
        )
        watch = CircuitWatch(base_url, secret_key, primary_id, self.timeline)
        watch.start()
        cooldown = self.profile.circuit_cooldown or 60.0
        esp = EspSequence(
            watch,
            self.timeline,
            start_at=self.profile.esp_start,
            hang_seconds=self.profile.esp_hang_seconds,
            phase_max=cooldown + 30,
        )
        kills = self._fault_loop(loadgen, web, worker, esp)
        esp.finish()
        load_seconds = self.timeline.now()
        self.timeline.add("load finished; faults stop; draining")

        verify_out = self.run_dir / "verify.json"
        supervisor = Supervisor(web, worker, self.timeline, kills)
        supervisor.start()
        verify = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.chaos.verify",
                "--environment-id",
                str(environment_id),
                "--loadgen-db",
                str(loadgen_db),
                "--esp-db",
                str(self.run_dir / "esp-primary.sqlite3"),
                "--esp-db",
                str(self.run_dir / "esp-secondary.sqlite3"),
                "--timeout",
                str(self.profile.drain_timeout),
                "--settle",
                str(self.profile.settle),
                "--out",
                str(verify_out),
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=self.profile.drain_timeout + 300,
        )
        supervisor.stop()
        watch.stop()
        if verify.returncode != 0 or not verify_out.exists():
            raise RuntimeError("bench.chaos.verify failed (see its output above)")
        result: dict[str, Any] = json.loads(verify_out.read_text())
        result.update(
            {
                "mode": self.plan.mode,
                "profile": self.profile.name,
                "worker_command": worker_command,
                "faults": not self.no_faults,
                "setup_seconds": round(setup_seconds, 1),
                "load_seconds": round(load_seconds, 1),
                "kills": kills,
                "circuit": {
                    "opened": watch.opened,
                    "probed": watch.moved,
                    "closed": watch.closed,
                    "changes": watch.changes,
                    "notes": esp.notes,
                },
                "timeline": self.timeline.events,
                "evidence": {p.name: _scan_log(p.log_path) for p in self.processes if p.name in ("web", "worker")},
                "run_dir": str(self.run_dir),
                "plan": {**self.plan.__dict__, "triggers": self.plan.triggers},
            }
        )
        return result

    def _fault_loop(self, loadgen: Managed, web: Managed, worker: Managed, esp: EspSequence) -> dict[str, int]:
        rng = random.Random(self.seed)
        load = self.plan.load_seconds
        faults = not self.no_faults
        next_kill = rng.uniform(*self.profile.kill_every) if faults else float("inf")
        kill_group = True
        restart_worker_at: float | None = None
        kills = {"group": 0, "child": 0, "worker_died": 0, "web_died": 0}
        redis_at = self.profile.redis_at * load if self.plan.mode == "services" and faults else None
        postgres_at = self.profile.postgres_at * load if self.plan.mode == "services" and faults else None
        redis_back_at: float | None = None
        postgres_back_at: float | None = None
        hard_stop = load + 120
        while loadgen.alive() and self.timeline.now() < hard_stop:
            now = self.timeline.now()
            if faults:
                esp.tick()
            if restart_worker_at is not None and now >= restart_worker_at:
                worker.start()
                restart_worker_at = None
                self.timeline.add(f"worker restarted (pid {worker.pid})")
            elif restart_worker_at is None and not worker.alive():
                kills["worker_died"] += 1
                code = worker.proc.returncode if worker.proc else None
                self.timeline.add(f"worker exited by itself (status {code}); the supervisor restarts it")
                restart_worker_at = now + SUPERVISOR_RESTART_DELAY
            if not web.alive():
                kills["web_died"] += 1
                self.timeline.add(
                    f"web exited by itself (status {web.proc.returncode if web.proc else None}); restarted"
                )
                web.start()
            if now >= next_kill and restart_worker_at is None and worker.alive():
                if kill_group:
                    worker.kill_group()
                    kills["group"] += 1
                    self.timeline.add("SIGKILL the worker's whole process group")
                    restart_worker_at = now + SUPERVISOR_RESTART_DELAY
                else:
                    victim = worker.kill_one_child(rng)
                    if victim is None:  # just restarted: no children yet; try again shortly
                        next_kill = now + 2
                        time.sleep(0.2)
                        continue
                    kills["child"] += 1
                    self.timeline.add(f"SIGKILL one worker child (pid {victim})")
                kill_group = not kill_group
                next_kill = now + rng.uniform(*self.profile.kill_every)
            if redis_at is not None and now >= redis_at and self.redis is not None:
                self.redis.kill()
                self.timeline.add(f"Redis SIGKILLed (down for {REDIS_DOWN_SECONDS:.0f} s)")
                redis_at, redis_back_at = None, now + REDIS_DOWN_SECONDS
            if redis_back_at is not None and now >= redis_back_at and self.redis is not None:
                self.redis.start()
                self.timeline.add("Redis restarted (empty: no persistence)")
                redis_back_at = None
            if postgres_at is not None and now >= postgres_at and self.postgres is not None:
                self.postgres.stop("immediate")
                self.timeline.add(f"PostgreSQL stopped, immediate mode (down for {POSTGRES_DOWN_SECONDS:.0f} s)")
                postgres_at, postgres_back_at = None, now + POSTGRES_DOWN_SECONDS
            if postgres_back_at is not None and now >= postgres_back_at and self.postgres is not None:
                self.postgres.start()
                self.timeline.add("PostgreSQL started")
                postgres_back_at = None
            time.sleep(0.2)
        # Whatever is down comes back before the drain.
        if restart_worker_at is not None or not worker.alive():
            worker.start()
            self.timeline.add(f"worker restarted (pid {worker.pid})")
        if redis_back_at is not None and self.redis is not None:
            self.redis.start()
        if postgres_back_at is not None and self.postgres is not None:
            self.postgres.start()
        if loadgen.alive():
            self.timeline.add("the load generator overran its bound; stopped")
            loadgen.kill_group()
        return kills

    def teardown(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(Exception):
                process.stop(timeout=10)
        if self.redis is not None:
            with contextlib.suppress(Exception):
                self.redis.stop()
        if self.postgres is not None:
            with contextlib.suppress(Exception):
                self.postgres.destroy()
        for name in ("clarion.sqlite3", "clarion.sqlite3-wal", "clarion.sqlite3-shm", "channels.sqlite3"):
            with contextlib.suppress(OSError):
                (self.run_dir / "var" / name).unlink()

"""docker-compose.yml, run natively: two web processes, three workers, one killed mid-run.

Docker does not run on the CI machine, so this test reads ``docker-compose.yml`` and starts its
``migrate``, ``web`` and ``worker`` commands with the environment the file gives them, as plain
processes against the local PostgreSQL (a database of its own, created and dropped here) and
Redis (a database of its own, flushed before and after). What differs from the containers, and
nothing else:

* ``DATABASE_URL`` and ``REDIS_URL`` name the local servers instead of the ``postgres`` and
  ``redis`` services;
* each process gets its own ``CLARION_VAR_DIR`` (a container's own ``/var/lib/clarion``), and web
  processes listen on 127.0.0.1 at ports of this test instead of 0.0.0.0:8000;
* the fake email provider runs on loopback, so ``CLARION_ALLOWED_PRIVATE_NETWORKS`` allows it;
* shorter recovery periods (lease 10 s, stall 5 s, wedge 10 s) keep the test under three minutes.

Triggers alternate between the two web processes. A third of the way in, the other two workers
pause (SIGSTOP) for a few triggers so that work lands on the first one; once it holds runs or
is sending (seen in the database), it is killed — SIGKILL to its whole process group, as when a
container or host dies — and the others go on. Then every notification must arrive exactly
once: one in-app row per (trigger, subscriber), and one email per (trigger, subscriber) taken by
the fake provider — an email left in doubt by the kill may be missing but never doubled (the
default category's policy holds it: at most once).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from bench.chaos.infra import port_free
from tests.deploy.compose import load_compose, native_argv
from tests.system.conftest import ManagedProcess, _wait_web_ready, _wait_worker_ready

pytestmark = [pytest.mark.services, pytest.mark.system]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DB_NAME = os.environ.get("CLARION_DEPLOY_DB") or f"clarion_h8_deploy_{os.getpid()}"
REDIS_DB = int(os.environ.get("CLARION_DEPLOY_REDIS_DB", "13"))
PORT_RANGE = range(8800, 8900)
WEB_PROCESSES = 2
WORKER_PROCESSES = 3
TRIGGERS = 36
RECIPIENTS_PER_TRIGGER = 5
SUBSCRIBERS = 30
KILL_AFTER = TRIGGERS // 3
FROZEN_TRIGGERS = 6  # sent while only the worker to be killed runs
DRAIN_SECONDS = 90.0
TEST_OVERRIDES = {
    "CLARION_ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8,::1/128",
    "CLARION_RUN_LEASE_SECONDS": "10",
    "CLARION_STALL_SECONDS": "5",
    "CLARION_WORKER_WEDGE_SECONDS": "10",
}


def _need_services() -> tuple[str, str]:
    database_url, redis_url = os.environ.get("DATABASE_URL", ""), os.environ.get("REDIS_URL", "")
    if not database_url.startswith("postgres") or not redis_url:
        pytest.skip("needs PostgreSQL and Redis (make test-services)")
    return database_url, redis_url


def _with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def _admin_conninfo(database_url: str, dbname: str = "postgres") -> dict[str, Any]:
    parts = urlsplit(database_url)
    info: dict[str, Any] = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 5432,
        "user": parts.username or "postgres",
        "dbname": dbname,
        "autocommit": True,
    }
    if parts.password:
        info["password"] = parts.password
    return info


def _free_ports(count: int) -> list[int]:
    ports = [port for port in PORT_RANGE if port_free(port)][:count]
    if len(ports) < count:
        pytest.skip(f"not {count} free ports in {PORT_RANGE.start}-{PORT_RANGE.stop - 1}")
    return ports


@contextlib.contextmanager
def _database(database_url: str, redis_url: str) -> Iterator[tuple[str, str]]:
    """A fresh PostgreSQL database and an empty Redis database; both gone afterwards."""
    import psycopg
    import redis

    local_db = _with_path(database_url, f"/{DB_NAME}")
    local_redis = _with_path(redis_url, f"/{REDIS_DB}")
    client = redis.Redis.from_url(local_redis)
    with psycopg.connect(**_admin_conninfo(database_url)) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    client.flushdb()
    try:
        yield local_db, local_redis
    finally:
        with psycopg.connect(**_admin_conninfo(database_url)) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        client.flushdb()
        client.close()


def _service_env(environment: dict[str, str], *, var_dir: Path, database: str, redis_url: str) -> dict[str, str]:
    env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "TMPDIR") if key in os.environ}
    env.update(environment)
    # The image's ENV (Dockerfile) that the processes rely on.
    env.update({"PYTHONUNBUFFERED": "1", "DJANGO_SETTINGS_MODULE": "config.settings"})
    env.update(TEST_OVERRIDES)
    env.update({"DATABASE_URL": database, "REDIS_URL": redis_url, "CLARION_VAR_DIR": str(var_dir)})
    var_dir.mkdir(parents=True, exist_ok=True)
    if "PROMETHEUS_MULTIPROC_DIR" in env:  # the container's tmpfs: a fresh directory of this run
        metrics_dir = var_dir / "metrics"
        metrics_dir.mkdir(exist_ok=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    return env


def _run_once(argv: list[str], env: dict[str, str], timeout: float) -> str:
    result = subprocess.run(
        argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{' '.join(argv)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _setup_tenant(client: httpx.Client, esp_port: int) -> None:
    def call(method: str, path: str, body: Any) -> None:
        response = client.request(method, path, json=body)
        assert response.status_code in (200, 201, 202), f"{method} {path}: {response.status_code} {response.text}"

    call(
        "PUT",
        "/api/v1/templates/deploy-inbox",
        {
            "name": "Deploy in-app",
            "channel": "in_app",
            "publish": True,
            "content": {"en": {"title": "n={{ payload.n }}", "body": "Number {{ payload.n }}"}},
        },
    )
    call(
        "PUT",
        "/api/v1/templates/deploy-mail",
        {
            "name": "Deploy email",
            "channel": "email",
            "publish": True,
            "content": {"en": {"subject": "n={{ payload.n }}", "body": "<p>Number {{ payload.n }}</p>"}},
        },
    )
    call(
        "PUT",
        "/api/v1/workflows/deploy",
        {
            "name": "Deploy",
            "publish": True,
            "steps": [
                {"id": "inbox", "type": "in_app", "template": "deploy-inbox"},
                {"id": "mail", "type": "email", "template": "deploy-mail"},
            ],
        },
    )
    call(
        "POST",
        "/api/v1/integrations",
        {
            "channel": "email",
            "provider": "postmark",
            "name": "fake",
            "credentials": {"server_token": "deploy-fake", "api_url": f"http://127.0.0.1:{esp_port}/"},
            "settings": {"from_email": "Clarion deploy <deploy@example.test>", "timeout": 3},
        },
    )
    call(
        "POST",
        "/api/v1/subscribers/bulk",
        {"subscribers": [{"subscriber_id": f"d{i}", "email": f"d{i}@example.test"} for i in range(SUBSCRIBERS)]},
    )


def _signal_group(process: ManagedProcess, sig: int) -> None:
    if process.proc is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.proc.pid, sig)


def _wait_for_work_in_hand(database: str, environment_id: int, timeout: float = 5.0) -> bool:
    """Wait (briefly) until a worker holds runs (``running``) or is sending an email."""
    import psycopg

    until = time.monotonic() + timeout
    with psycopg.connect(database, autocommit=True) as conn:
        while time.monotonic() < until:
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM workflows_run WHERE environment_id = %s AND status = 'running')"
                " OR EXISTS (SELECT 1 FROM delivery_message WHERE environment_id = %s AND status = 'sending')",
                [environment_id, environment_id],
            ).fetchone()
            if row and row[0]:
                return True
            time.sleep(0.005)
    return False


def _observed(database: str, environment_id: int, esp_log: Path) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(database, autocommit=True) as conn:
        messages = conn.execute(
            "SELECT m.id, m.channel, m.status, m.data->>'transaction_id', s.subscriber_id"
            " FROM delivery_message m JOIN subscribers_subscriber s ON s.id = m.subscriber_id"
            " WHERE m.environment_id = %s",
            [environment_id],
        ).fetchall()
        inbox = conn.execute(
            "SELECT s.subscriber_id, i.title FROM inbox_inboxmessage i"
            " JOIN subscribers_subscriber s ON s.id = i.subscriber_id WHERE i.environment_id = %s",
            [environment_id],
        ).fetchall()
        reclaimed = conn.execute(
            "SELECT count(*) FROM workflows_run WHERE environment_id = %s AND attempts > 1", [environment_id]
        ).fetchone()
        busy_row = conn.execute(
            "SELECT (SELECT count(*) FROM events_event WHERE environment_id = %s AND status = 'pending')"
            " + (SELECT count(*) FROM workflows_run WHERE environment_id = %s"
            "    AND status IN ('pending', 'running', 'waiting'))"
            " + (SELECT count(*) FROM delivery_message WHERE environment_id = %s AND status IN ('queued', 'sending'))",
            [environment_id, environment_id, environment_id],
        ).fetchone()
    accepted: Counter[str] = Counter()
    if esp_log.exists():
        with contextlib.closing(sqlite3.connect(esp_log)) as esp:
            for (message_id,) in esp.execute(
                "SELECT message_id FROM requests WHERE outcome IN ('accepted', 'accepted_late')"
            ):
                accepted[message_id] += 1
    return {
        "messages": messages,
        "inbox": inbox,
        "busy": busy_row[0] if busy_row else -1,
        "reclaimed": reclaimed[0] if reclaimed else 0,
        "accepted": accepted,
    }


def test_compose_services_scale_out_natively_and_survive_a_killed_worker(tmp_path: Path) -> None:
    database_url, redis_url = _need_services()
    deadline = time.monotonic() + 170  # the whole test, start to teardown, under three minutes

    values = {
        "POSTGRES_PASSWORD": "not-used-natively",
        "SECRET_KEY": "deploy-test-" + secrets.token_urlsafe(40),
        "CLARION_ENCRYPTION_KEYS": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
    }
    services = load_compose(COMPOSE, values)
    # The file's own shape: migrate once, then web and worker; backing services healthy first.
    assert services["migrate"].depends_on == {"postgres": "service_healthy", "redis": "service_healthy"}
    for name in ("web", "worker"):
        assert services[name].depends_on == {"migrate": "service_completed_successfully"}
        for key in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "CLARION_ENCRYPTION_KEYS"):
            assert services[name].environment[key], f"{name} has no {key}"
    assert services["worker"].raw.get("init") is True and "ports" not in services["worker"].raw

    *web_ports, esp_port = _free_ports(WEB_PROCESSES + 1)
    processes: list[ManagedProcess] = []
    with _database(database_url, redis_url) as (database, local_redis):

        def env_for(service: str, instance: str) -> dict[str, str]:
            return _service_env(
                services[service].environment,
                var_dir=tmp_path / instance,
                database=database,
                redis_url=local_redis,
            )

        try:
            migrate_env = env_for("migrate", "migrate")
            _run_once(native_argv(services["migrate"].command), migrate_env, timeout=150)
            created = _run_once(
                [sys.executable, "manage.py", "create_environment", "deploy", "--json"], migrate_env, timeout=60
            )
            keys = json.loads(created[created.index("{") :])
            environment_id = int(keys["environment"]["id"])

            esp_log = tmp_path / "esp.sqlite3"
            esp = ManagedProcess(
                name="fake-esp",
                argv=[
                    sys.executable,
                    *("-m", "bench.chaos.fake_esp", "--name", "fake", "--port", str(esp_port)),
                    *("--log", str(esp_log), "--max-seconds", "240"),
                ],
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                log_path=tmp_path / "esp.log",
            )
            processes.append(esp)
            esp.start()

            webs = [
                ManagedProcess(
                    name=f"web{i}",
                    argv=native_argv(
                        services["web"].command, replace_options={"--host": "127.0.0.1", "--port": str(port)}
                    ),
                    env=env_for("web", f"web{i}"),
                    log_path=tmp_path / f"web{i}.log",
                )
                for i, port in enumerate(web_ports)
            ]
            workers = [
                ManagedProcess(
                    name=f"worker{i}",
                    argv=native_argv(services["worker"].command),
                    env=env_for("worker", f"worker{i}"),
                    log_path=tmp_path / f"worker{i}.log",
                )
                for i in range(WORKER_PROCESSES)
            ]
            processes.extend(webs + workers)
            for process in webs + workers:
                process.start()
            for web, port in zip(webs, web_ports, strict=True):
                _wait_web_ready(web, f"http://127.0.0.1:{port}")
            for worker in workers:
                _wait_worker_ready(worker)

            headers = {"Authorization": f"Bearer {keys['secret_key']}"}
            clients = [
                httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=15) for port in web_ports
            ]
            try:
                _setup_tenant(clients[0], esp_port)
                expected: set[tuple[str, str]] = set()
                served = Counter[int]()
                caught_mid_run = False
                for n in range(TRIGGERS):
                    if n == KILL_AFTER - FROZEN_TRIGGERS:
                        # The other two pause, so the next triggers' work lands on the worker to kill.
                        for worker in workers[1:]:
                            _signal_group(worker, signal.SIGSTOP)
                    recipients = [
                        f"d{(n * RECIPIENTS_PER_TRIGGER + k) % SUBSCRIBERS}" for k in range(RECIPIENTS_PER_TRIGGER)
                    ]
                    txid = f"deploy-{n}"
                    web_index = n % WEB_PROCESSES
                    response = clients[web_index].post(
                        "/api/v1/events/trigger",
                        json={"workflow": "deploy", "to": recipients, "payload": {"n": n}, "transaction_id": txid},
                    )
                    assert response.status_code in (200, 201, 202), response.text
                    served[web_index] += 1
                    expected.update((txid, subscriber) for subscriber in recipients)
                    if n == KILL_AFTER:
                        caught_mid_run = _wait_for_work_in_hand(database, environment_id)
                        workers[0].kill()  # SIGKILL to its whole process group, as a dying container
                        for worker in workers[1:]:
                            _signal_group(worker, signal.SIGCONT)
            finally:
                for client in clients:
                    client.close()
                for worker in workers[1:]:
                    _signal_group(worker, signal.SIGCONT)
            assert served == {0: TRIGGERS // 2, 1: TRIGGERS // 2}
            assert not workers[0].alive()

            killed_at = time.monotonic()
            drain_until = min(time.monotonic() + DRAIN_SECONDS, deadline - 15)
            while True:
                observed = _observed(database, environment_id, esp_log)
                emails = [m for m in observed["messages"] if m[1] == "email"]
                settled = sum(1 for m in emails if observed["accepted"][str(m[0])] or m[2] == "in_doubt")
                if (
                    observed["busy"] == 0 and len(observed["inbox"]) >= len(expected) and settled >= len(expected)
                ) or time.monotonic() > drain_until:
                    break
                time.sleep(1)

            # In-app: exactly one inbox row per (trigger, subscriber).
            inbox = Counter(observed["inbox"])
            expected_inbox = Counter({(s, f"n={txid.removeprefix('deploy-')}"): 1 for txid, s in expected})
            assert inbox == expected_inbox, (
                f"missing {len(expected_inbox - inbox)}, duplicated {sum((inbox - expected_inbox).values())}"
            )
            # Email: one message row per pair, each taken by the provider exactly once (or, held in
            # doubt after the kill, at most once); nothing else reached the provider.
            email_pairs = Counter((m[3], m[4]) for m in emails)
            assert email_pairs == Counter(dict.fromkeys(expected, 1))
            ids = {str(m[0]) for m in emails}
            in_doubt = {str(m[0]) for m in emails if m[2] == "in_doubt"}
            assert set(observed["accepted"]) <= ids
            doubled = {mid: count for mid, count in observed["accepted"].items() if count > 1}
            assert doubled == {}
            missing = ids - set(observed["accepted"]) - in_doubt
            assert missing == set(), f"{len(missing)} emails never reached the provider"
            assert len(in_doubt) <= 3, f"{len(in_doubt)} emails in doubt after one kill"
            print(
                f"deploy scale-out: {len(expected)} notifications x 2 channels via {WEB_PROCESSES} web / "
                f"{WORKER_PROCESSES} workers (1 killed), drained {time.monotonic() - killed_at:.1f} s after the "
                f"kill (work in hand when killed: {caught_mid_run}), {len(in_doubt)} in doubt, "
                f"{observed['reclaimed']} runs claimed more than once"
            )
        except BaseException:
            for process in processes:
                sys.stderr.write(f"----- {process.name} -----\n{process.output()}\n")
            raise
        finally:
            for process in reversed(processes):
                process.stop(timeout=10)
    assert time.monotonic() < deadline + 10

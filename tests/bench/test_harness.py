"""The benchmark harness's own parts, without Clarion's processes: the table, the CPU meter, the
load generator. No timing assertions: CPU *counted* and requests *answered* are checked, not speed."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bench.procs import CpuMeter, per_unit, postgres_process_is_ours
from bench.report import EXPECTED, SECTION_ORDER, Row, coerce_row, complete, row_from_dict, table

ROOT = Path(__file__).resolve().parents[2]


def test_row_goals_and_ratio() -> None:
    row = Row("ingest", "trigger", 420.0, "req/s", baseline=500.0, goal_min=400, ratio_min=0.8)
    assert row.computed_ratio() == pytest.approx(0.84)
    assert row.met() is True
    assert Row("ingest", "trigger", 420.0, "req/s", baseline=600.0, goal_min=400, ratio_min=0.8).met() is False
    assert Row("ingest", "trigger", 390.0, "req/s", goal_min=400).met() is False
    assert Row("ingest", "trigger", None, "req/s", goal_min=400).met() is None
    assert Row("x", "no goal", 1.0).met() is None
    # a latency: lower is better, the ratio stays "> 1 is better"
    latency = Row("websocket", "p50", 40.0, "ms", baseline=20.0, goal_max=50, lower_is_better=True)
    assert latency.met() is True and latency.computed_ratio() == pytest.approx(0.5)
    # a condition beyond the number (lost messages, growing backlog) fails the row
    assert Row("pipeline", "x", 300.0, "events/s", goal_min=250, unmet=True).met() is False


def test_rows_survive_json_and_render() -> None:
    row = Row(
        "fanout", "vs peer", 12000.0, "notif/s", baseline=1500.0, baseline_name="peer", goal_min=10000, ratio_min=7
    )
    data = json.loads(json.dumps(row.to_dict()))
    assert data["met"] is True and data["ratio"] == 8.0
    again = row_from_dict(data)
    assert again.to_dict() == row.to_dict()
    text = table([again])
    assert "12,000 notif/s" in text and "8.00x" in text and "yes" in text


def test_a_plain_dict_row_is_accepted() -> None:
    row = coerce_row(
        "delivery",
        {"name": "email", "goal": ">= 500/s", "measured": 620.0, "baseline": 900.0, "ratio": 0.69, "cpu_ms": 1.5},
    )
    assert row.section == "delivery" and row.goal_min == 500 and row.met() is True
    assert row.computed_ratio() == 0.69 and "cpu_ms 1.5" in row.note
    assert coerce_row("delivery", {"name": "sms", "measured": 10.0, "met": False}).met() is False


def test_a_keyed_section_keeps_the_placeholders_it_did_not_fill() -> None:
    measured = [Row("websocket", "p50 at 50/s", 30.0, "ms", goal_max=50, key="websocket.p50")]
    names = [r.name for r in complete(measured) if r.section == "websocket"]
    assert names[0] == "p50 at 50/s"
    assert len(names) == 3  # p99 and the storm still show, "(not measured)"


def test_complete_lists_every_figure_of_the_issue_once() -> None:
    measured = [Row("pipeline", "in-app + email, embedded", 120.0, "events/s", goal_min=100)]
    rows = complete(measured, {"websocket": "needs REDIS_URL"})
    sections = [r.section for r in rows]
    assert set(sections) == set(SECTION_ORDER)
    assert sections == sorted(sections, key=SECTION_ORDER.index)
    # the measured section replaces its placeholders; the others stay "(not measured)"
    assert [r.name for r in rows if r.section == "pipeline"] == ["in-app + email, embedded"]
    assert len(rows) == 1 + sum(1 for r in EXPECTED if r.section != "pipeline")
    assert all(r.note == "needs REDIS_URL" for r in rows if r.section == "websocket")
    assert "(not measured)" in table(rows)


BURN = """
import time
t = time.process_time()
while time.process_time() - t < 0.6:
    pass
time.sleep(1.0)
"""


def test_cpu_meter_counts_a_child_born_inside_the_window() -> None:
    roots: dict[str, list[int]] = {"worker": []}
    meter = CpuMeter(roots=roots, interval=0.1)
    with meter:
        proc = subprocess.Popen([sys.executable, "-c", BURN])
        roots["worker"].append(proc.pid)
        assert proc.wait(timeout=60) == 0
    cpu = meter.result()
    # it burnt 0.6 s of CPU and lived a second more: sampled at least once after the burn
    assert cpu["worker"] >= 0.5
    assert cpu["system"] >= cpu["worker"]
    assert cpu["samples"] >= 2
    assert per_unit(cpu, 100)["worker"] == pytest.approx(cpu["worker"] * 10, rel=0.01)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    bodies: list[dict[str, Any]] = []

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.headers["Authorization"] == "Bearer sk_test"
        _Handler.bodies.append(body)
        data = b'{"ok": true}'
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def http_server() -> Iterator[str]:
    _Handler.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _loadgen(tmp_path: Path, url: str, *args: str) -> dict[str, Any]:
    out = tmp_path / "result.json"
    body = '{"to": ["u-__M__"], "n": __I__}'
    argv = [sys.executable, "-m", "bench.loadgen", "--url", url, "--path", "/t", "--body", body, "--mod", "3"]
    subprocess.run(
        [*argv, "--out", str(out), *args],
        cwd=ROOT,
        env={"BENCH_SECRET_KEY": "sk_test", "PATH": "/usr/bin:/bin"},
        check=True,
        timeout=60,
    )
    return dict(json.loads(out.read_text()))


def test_loadgen_open_loop_sends_the_schedule(tmp_path: Path, http_server: str) -> None:
    result = _loadgen(tmp_path, http_server, "--rate", "40", "--duration", "1")
    assert result["mode"] == "open" and result["scheduled"] == 40
    assert result["ok"] == 40 and result["errors"] == 0 and result["statuses"] == {"202": 40}
    assert result["p99_ms"] >= result["p50_ms"] > 0
    assert result["cpu_seconds"] > 0
    numbers = sorted(b["n"] for b in _Handler.bodies)
    assert numbers == list(range(40))
    assert {b["to"][0] for b in _Handler.bodies} == {"u-0", "u-1", "u-2"}


def test_loadgen_closed_loop(tmp_path: Path, http_server: str) -> None:
    result = _loadgen(tmp_path, http_server, "--concurrency", "2", "--duration", "0.5")
    assert result["mode"] == "closed" and result["ok"] > 0 and result["errors"] == 0
    assert result["requests_per_s"] > 0
    assert len(_Handler.bodies) == result["ok"]


@pytest.mark.parametrize(
    ("title", "ours"),
    [
        ("postgres: 15/main: postgres clarion_b_1a2b3c 127.0.0.1(34174) idle", True),
        ("postgres: postgres clarion_b_1a2b3c 127.0.0.1(34174) INSERT", True),
        ("postgres: 15/main: postgres clarion_b_1a2b3c_hq 127.0.0.1(3417) idle in transaction", True),
        ("postgres: 15/main: postgres clarion_h1 127.0.0.1(34174) idle", False),
        ("postgres: postgres test_clarion_h2 [local] SELECT", False),
        ("postgres: 15/main: checkpointer", True),
        ("postgres: 15/main: walwriter", True),
        ("/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main -c config_file=x", True),
        ("postgres: 15/main: autovacuum launcher", True),
        ("postgres: 15/main: autovacuum worker clarion_b_1a2b3c", True),
        ("postgres: 15/main: autovacuum worker clarion_h1", False),
    ],
)
def test_postgres_processes_of_the_run(title: str, ours: bool) -> None:
    assert postgres_process_is_ours(title, "clarion_b_1a2b3c") is ours


def test_in_process_django_stays_on_the_installation_it_was_bound_to(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.common import Installation

    installation = Installation.create(embedded=True)
    try:
        monkeypatch.setenv("CLARION_BENCH_DJANGO_DATABASE", "postgres://elsewhere/other")
        with pytest.raises(RuntimeError, match="already bound to another installation"):
            installation.setup_django()
        assert "CLARION_BENCH_DJANGO_DATABASE" not in installation.process_env()
    finally:
        installation.cleanup()

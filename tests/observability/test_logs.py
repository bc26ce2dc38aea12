"""Structured logs: JSON or readable lines with the bound context; probes and task chatter dropped."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client

from apps.observability.logs import ProbeFilter, TaskChatterFilter, bind_log_context, clear_log_context, formatter
from apps.observability.signals import _task_started


@pytest.fixture
def captured() -> Iterator[Any]:
    """Every record reaching the root logger, formatted as JSON lines and as readable lines."""
    json_stream, text_stream = io.StringIO(), io.StringIO()
    handlers = []
    for stream, as_json in ((json_stream, True), (text_stream, False)):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter(json=as_json))
        handlers.append(handler)
        logging.getLogger().addHandler(handler)
    clear_log_context()

    class Lines:
        def json(self) -> list[dict[str, Any]]:
            return [json.loads(line) for line in json_stream.getvalue().splitlines() if line.startswith("{")]

        def text(self) -> list[str]:
            return text_stream.getvalue().splitlines()

    try:
        yield Lines()
    finally:
        for handler in handlers:
            logging.getLogger().removeHandler(handler)
        clear_log_context()


def test_a_json_line_carries_the_bound_context_time_and_level(captured: Any) -> None:
    bind_log_context(environment=7, transaction_id="tx-42", run_id=None)
    logging.getLogger("apps.delivery.services.sending").warning("message %s deferred", 12)

    [line] = captured.json()
    assert line["message"] == "message 12 deferred"
    assert line["transaction_id"] == "tx-42"
    assert line["environment"] == 7
    assert "run_id" not in line  # None values are not bound
    assert line["level"] == "warning"
    assert line["logger"] == "apps.delivery.services.sending"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", line["timestamp"])


def test_a_readable_line_has_time_level_message_and_context(captured: Any) -> None:
    bind_log_context(transaction_id="tx-42")
    logging.getLogger("apps.x").info("hello")

    [line] = captured.text()
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z \[info\s*\] hello \[apps\.x\] transaction_id=tx-42$", line)


def test_an_exception_is_rendered_into_the_json_line(captured: Any) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("apps.x").exception("failed")

    [line] = captured.json()
    assert line["level"] == "error"
    assert "ValueError: boom" in line["exception"]


def test_every_request_starts_with_an_empty_context(client: Client, captured: Any, db: Any) -> None:
    bind_log_context(transaction_id="from-an-earlier-request")
    client.get("/healthz")
    logging.getLogger("apps.x").info("after")

    [line] = captured.json()
    assert "transaction_id" not in line


def test_every_task_starts_with_an_empty_context(captured: Any) -> None:
    bind_log_context(message_id=5)
    _task_started(sender="django_q", func="x", task={})
    logging.getLogger("apps.x").info("in the next task")

    [line] = captured.json()
    assert "message_id" not in line


def _record(name: str, msg: str, args: Any = (), level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_the_access_log_drops_probes_only() -> None:
    probe_filter = ProbeFilter()
    access = '%s - "%s %s HTTP/%s" %d'
    assert not probe_filter.filter(_record("uvicorn.access", access, ("1.2.3.4:5", "GET", "/healthz", "1.1", 200)))
    assert not probe_filter.filter(_record("uvicorn.access", access, ("1.2.3.4:5", "GET", "/metrics", "1.1", 200)))
    assert not probe_filter.filter(_record("uvicorn.access", access, ("1.2.3.4:5", "GET", "/readyz", "1.1", 503)))
    assert probe_filter.filter(_record("uvicorn.access", access, ("1.2.3.4:5", "POST", "/api/v1/events", "1.1", 202)))


def test_django_q2_per_task_lines_are_dropped_but_not_its_errors_nor_its_start() -> None:
    chatter = TaskChatterFilter()
    assert not chatter.filter(_record("django-q", "Enqueued [clarion] 12"))
    assert not chatter.filter(_record("django-q", "Process-1:2 processing oscar-nine-ten 'apps.workflows.tasks.sweep'"))
    assert not chatter.filter(_record("django-q", "Processed 'apps.workflows.tasks.sweep' (oscar-nine-ten)"))
    assert not chatter.filter(
        _record("django-q", "Process-1 created task oscar-nine-ten from schedule [clarion.sweep]")
    )
    assert chatter.filter(_record("django-q", "Q Cluster clarion starting."))
    assert chatter.filter(_record("django-q", "Failed 'apps.x' (oscar) - boom", level=logging.ERROR))
    assert TaskChatterFilter(keep=True).filter(_record("django-q", "Enqueued [clarion] 12"))


def test_the_settings_route_uvicorn_and_django_q2_through_the_filters() -> None:
    access = logging.getLogger("uvicorn.access")
    assert any(isinstance(f, ProbeFilter) for handler in access.handlers for f in handler.filters)
    assert access.propagate is False
    assert any(isinstance(f, TaskChatterFilter) for f in logging.getLogger("django-q").filters)
    assert any(type(handler.formatter).__name__ == "ProcessorFormatter" for handler in logging.getLogger().handlers)

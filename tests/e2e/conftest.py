"""Browser tests: the system Chromium, driven by Playwright, against a REAL Clarion.

``clarion_demo`` (session scope) starts ``uvicorn`` + ``qcluster`` on a throwaway
``CLARION_VAR_DIR`` with the helpers of the system-test harness (``tests/system/conftest.py``),
always on the embedded default (SQLite + ORM broker + channels-lite, whatever ``DATABASE_URL``
says), runs ``manage.py seed_demo`` and turns the demo page on (``CLARION_DEMO_PAGE=1``).

``CLARION_E2E_PORTS=20200-20299`` keeps its web server in that range (a shared machine's
engineers each have one); otherwise any free port.

``browser`` is Debian's Chromium at ``/usr/bin/chromium`` (``CLARION_CHROMIUM`` overrides it):
Playwright never downloads a browser here. Without it the e2e tests are skipped on a developer's
machine, and FAIL under CI (``CI`` set), where ``.ci/run`` installs it.

Every test under ``tests/e2e/`` is marked ``e2e`` (``make test`` deselects them; nothing here
runs at collection time, so the folder collects fine without Chromium or Playwright).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import sqlite3
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.system.conftest import (
    ClarionSystem,
    _free_port,
    _manage,
    _process_env,
    _wait_web_ready,
    running_system,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright

E2E_DIR = Path(__file__).resolve().parent
CHROMIUM = os.environ.get("CLARION_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # No internet here: without these Chromium keeps dialling Google services.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 860}
DEMO_WORKFLOW = "comment-created"


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def _missing(reason: str) -> None:
    """No browser: skip on a developer's machine, fail under CI."""
    if under_ci():
        pytest.fail(f"{reason} (CI is set: the e2e tests must run; .ci/run installs Debian's chromium)")
    pytest.skip(f"{reason}; install it with `apt-get install chromium` (never `playwright install`)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Whatever a test module says, everything under tests/e2e/ carries the ``e2e`` marker."""
    for item in items:
        if E2E_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


# --- The live installation ---------------------------------------------------------------------


@dataclass
class DemoSystem:
    """A running Clarion seeded by ``seed_demo``; ``system`` is the harness object (web, worker, api())."""

    system: ClarionSystem
    demo: dict[str, str]
    console: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.system.base_url

    @property
    def subscriber_id(self) -> str:
        return self.demo["subscriber_id"]

    def url(self, path: str) -> str:
        return self.system.base_url + path

    def trigger(self, payload: dict[str, Any], *, to: str | None = None) -> str:
        """``POST /api/v1/events/trigger`` with the demo secret key → the transaction id."""
        response = self.system.api(
            "POST",
            "/api/v1/events/trigger",
            {"workflow": DEMO_WORKFLOW, "to": [to or self.subscriber_id], "payload": payload},
        )
        assert response.status_code == 202, response.text
        return str(response.json()["transaction_id"])

    def trigger_offline(self, payload: dict[str, Any]) -> str:
        """Accept a trigger without the web process (``manage.py shell``: the same service the API
        calls); the worker picks it up from the ORM broker."""
        transaction_id = f"e2e-offline-{uuid.uuid4().hex[:12]}"
        code = textwrap.dedent(
            f"""
            from apps.events.services import TriggerRequest, event_trigger
            from apps.tenancy.models import Environment
            environment = Environment.objects.get(slug={self.demo["environment_slug"]!r})
            event_trigger(environment=environment, request=TriggerRequest(
                workflow={DEMO_WORKFLOW!r}, to=[{self.subscriber_id!r}], payload={payload!r},
                transaction_id={transaction_id!r}))
            """
        )
        self.system.manage("shell", "-c", code, timeout=60)
        return transaction_id

    def wait_inbox_row(self, title: str, timeout: float = 20.0) -> None:
        """Wait until the worker has written an inbox message titled ``title``, reading the SQLite
        file directly (works while the web process is down)."""
        database = self.system.var_dir / "clarion.sqlite3"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as conn:
                if conn.execute("SELECT 1 FROM inbox_inboxmessage WHERE title = ?", (title,)).fetchone():
                    return
            time.sleep(0.2)
        raise AssertionError(f"no inbox message {title!r} after {timeout:.0f} s\n{self.system.worker.output()}")

    def log_in(self, page: Page, next_path: str = "/admin/") -> None:
        """Log in to the console as the demo's superuser, landing on ``next_path``. Django's own
        field ids and the button's name: the same whatever the admin's theme."""
        page.goto(self.url(f"/admin/login/?next={next_path}"))
        page.fill("#id_username", self.demo["admin_username"])
        page.fill("#id_password", self.demo["admin_password"])
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(lambda url: "/admin/login/" not in url)

    def sqlite(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of a read-only query on the installation's SQLite file (works while the web is down)."""
        database = self.system.var_dir / "clarion.sqlite3"
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as conn:
            return list(conn.execute(sql, params).fetchall())

    def subscriber_hash(self) -> str:
        secret = self.demo["inbox_hmac_secret"].encode()
        return hmac.new(secret, self.subscriber_id.encode(), hashlib.sha256).hexdigest()

    def inbox_token(self) -> str:
        """A fresh inbox session for the demo subscriber, as the page opens one."""
        response = self.system.api(
            "POST",
            "/api/v1/inbox/session",
            {
                "publishable_key": self.demo["publishable_key"],
                "subscriber_id": self.subscriber_id,
                "subscriber_hash": self.subscriber_hash(),
            },
            auth=False,
        )
        assert response.status_code in (200, 201), response.text
        return str(response.json()["token"])

    def inbox(self, method: str, path: str, token: str | None = None) -> Any:
        """Call ``/api/v1/inbox/<path>`` as the demo subscriber."""
        headers = {"Authorization": f"Bearer {token or self.inbox_token()}"}
        response = self.system.api(method, f"/api/v1/inbox/{path}", auth=False, headers=headers)
        assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text}"
        return response.json() if response.content else None

    def counts(self) -> dict[str, int]:
        return dict(self.inbox("GET", "counts"))

    def archive_all(self) -> None:
        """Empty the demo subscriber's inbox (archive every message) so each test starts from 0."""
        token = self.inbox_token()
        while True:
            page = self.inbox("GET", "messages?limit=100", token)
            if not page["data"]:
                return
            for message in page["data"]:
                self.inbox("POST", f"messages/{message['id']}/archive", token)

    def restart_web(self, *, down: Callable[[], None] | None = None) -> None:
        """Stop the web process (SIGTERM, then SIGKILL), run ``down()`` while it is away, start it again."""
        self.system.web.stop(timeout=5)
        if down is not None:
            down()
        self.system.web.start()
        _wait_web_ready(self.system.web, self.system.base_url)

    def logs(self) -> str:
        parts = [self.system.logs()]
        if self.console:
            parts.append("----- browser console -----\n" + "\n".join(self.console[-200:]))
        return "\n".join(parts)


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    if not Path(CHROMIUM).is_file() or not os.access(CHROMIUM, os.X_OK):
        _missing(f"no Chromium at {CHROMIUM}")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("the playwright package is not installed")
    return CHROMIUM


def e2e_port() -> int:
    """A free port, in ``CLARION_E2E_PORTS`` (``low-high``) when that is set."""
    wanted = os.environ.get("CLARION_E2E_PORTS", "").strip()
    if not wanted:
        return _free_port()
    low, _, high = wanted.partition("-")
    for port in range(int(low), int(high or low) + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail(f"no free port in CLARION_E2E_PORTS={wanted}")


@pytest.fixture(scope="session")
def clarion_demo(chromium_executable: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoSystem]:
    """uvicorn + qcluster on a seeded throwaway installation, demo page on."""
    var_dir = tmp_path_factory.mktemp("clarion-e2e")
    port = e2e_port()
    env = _process_env(var_dir, port)  # drops DATABASE_URL / REDIS_URL: always the embedded default
    env["CLARION_DEMO_PAGE"] = "1"
    _manage(env, "migrate", "--noinput")
    _manage(env, "migrate", "--database", "channels", "--noinput")
    _manage(env, "seed_demo")
    demo = json.loads((var_dir / "demo.json").read_text())

    with running_system(
        mode="embedded",
        env=env,
        var_dir=var_dir,
        port=port,
        environment={"slug": demo["environment_slug"]},
        keys=demo,
    ) as system:
        yield DemoSystem(system=system, demo=demo)


@pytest.fixture
def demo_inbox(clarion_demo: DemoSystem) -> Iterator[DemoSystem]:
    """The live installation with the demo subscriber's inbox emptied (archived) and the web running."""
    if not clarion_demo.system.web.alive():
        clarion_demo.system.web.start()
        _wait_web_ready(clarion_demo.system.web, clarion_demo.base_url)
    clarion_demo.archive_all()
    clarion_demo.console.clear()
    yield clarion_demo


@pytest.fixture(scope="module")
def orm_beside_playwright() -> Iterator[None]:
    """For tests against pytest-django's ``live_server``: Playwright's sync API keeps an event loop in
    this thread, so Django refuses ORM calls here; the set-up and the database flush after a test are
    plain synchronous code. Module scope: set before the database fixtures, undone after them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        yield


# --- The browser -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def playwright_instance(chromium_executable: str) -> Iterator[Playwright]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="session")
def browser(playwright_instance: Playwright, chromium_executable: str) -> Iterator[Browser]:
    browser = playwright_instance.chromium.launch(executable_path=chromium_executable, args=CHROMIUM_ARGS)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh context + page; console messages and page errors go to ``clarion_demo.console``."""
    from playwright.sync_api import expect

    expect.set_options(timeout=10_000)  # slack on a busy 2-core machine; the live checks pass their own
    context = browser.new_context(viewport=VIEWPORT, locale="en-US", timezone_id="UTC")
    context.set_default_timeout(10_000)
    page = context.new_page()
    sink: list[str] = []
    if "clarion_demo" in request.fixturenames:
        sink = request.getfixturevalue("clarion_demo").console
    page.on("console", lambda msg: sink.append(f"[{msg.type}] {msg.text}"))
    page.on("pageerror", lambda exc: sink.append(f"[pageerror] {exc}"))
    try:
        yield page
    finally:
        context.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    """A failing e2e test gets the processes' logs, the browser console and a screenshot path."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    demo = funcargs.get("clarion_demo") or funcargs.get("demo_inbox")
    if not isinstance(demo, DemoSystem):
        return
    page = funcargs.get("page")
    if report.when == "call" and page is not None:
        target = demo.system.var_dir / f"e2e-failure-{item.name}.png"
        try:
            page.screenshot(path=str(target), full_page=True)
            demo.console.append(f"[e2e] failure screenshot: {target}")
        except Exception as exc:
            demo.console.append(f"[e2e] no failure screenshot: {exc}")
    report.sections.append(("clarion processes + browser console", demo.logs()))

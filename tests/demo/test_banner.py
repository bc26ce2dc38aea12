"""`make run`'s banner and public URL (scripts/banner.py, scripts/run.sh): the links in emails follow
the port, and the banner gives everything the README and docs/inbox.md need (issue 12)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = {
    "environment_slug": "demo-development",
    "secret_key": "sk_test123",
    "publishable_key": "pk_test456",
    "inbox_hmac_secret": "hmac-secret-789",
    "subscriber_id": "demo-user",
    "admin_username": "admin",
    "admin_password": "pw",
}


@pytest.fixture
def banner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ModuleType:
    for name in ("HOST", "PORT", "CLARION_PUBLIC_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLARION_VAR_DIR", str(tmp_path))
    spec = importlib.util.spec_from_file_location("clarion_banner", ROOT / "scripts" / "banner.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "ROOT", tmp_path)  # no .env of the developer's
    return module


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        (None, None, "http://127.0.0.1:8000"),
        ("127.0.0.1", "8100", "http://127.0.0.1:8100"),
        ("0.0.0.0", "8100", "http://127.0.0.1:8100"),
        ("::1", "8100", "http://[::1]:8100"),
        ("localhost", "9000", "http://localhost:9000"),
    ],
)
def test_public_url_follows_host_and_port(
    banner: ModuleType, monkeypatch: pytest.MonkeyPatch, host: str | None, port: str | None, expected: str
) -> None:
    if host:
        monkeypatch.setenv("HOST", host)
    if port:
        monkeypatch.setenv("PORT", port)
    assert banner.public_url() == (expected, "from HOST and PORT; set CLARION_PUBLIC_URL to change")


def test_a_given_public_url_wins(banner: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PORT", "8100")
    (tmp_path / ".env").write_text("DEBUG=1\nexport CLARION_PUBLIC_URL='https://notify.example.com/'\n")
    assert banner.public_url() == ("https://notify.example.com", "CLARION_PUBLIC_URL in .env")
    monkeypatch.setenv("CLARION_PUBLIC_URL", "https://other.example.com")
    assert banner.public_url() == ("https://other.example.com", "CLARION_PUBLIC_URL")


def test_banner_gives_what_the_docs_need(banner: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PORT", "8100")
    (tmp_path / "demo.json").write_text(json.dumps(DEMO))

    text = banner.render(DEMO, banner.base_url(), banner.public_url(), banner.var_dir())

    assert "App              http://127.0.0.1:8100/\n" in text
    assert "http://127.0.0.1:8100/demo/inbox/" in text
    assert "Public URL       http://127.0.0.1:8100 " in text
    assert "hmac-secret-789" in text  # docs/inbox.md's quick start signs subscriber ids with it
    assert f"Demo keys        {tmp_path / 'demo.json'}" in text
    # The README's examples read CLARION_URL and CLARION_API_KEY; SECRET_KEY is Django's own key.
    assert "export CLARION_URL=http://127.0.0.1:8100 CLARION_API_KEY=sk_test123" in text
    assert "SECRET_KEY=" not in text
    curl = 'curl -X POST http://127.0.0.1:8100/api/v1/events/trigger \\\n      -H "Authorization: Bearer sk_test123"'
    assert curl in text  # ready to paste


def test_banner_without_a_known_password(banner: ModuleType) -> None:
    text = banner.render({**DEMO, "admin_password": ""}, "http://127.0.0.1:8000", ("x", "y"), Path("/v"))
    assert "(login: admin; `manage.py changepassword` sets a password)" in text


FAKE_PYTHON = """\
#!/usr/bin/env bash
# Stands in for .venv/bin/python in run.sh: the banner runs for real, the "web" process records the
# public URL it was given and exits, the "worker" waits to be stopped.
case "$1 $2" in
  "scripts/banner.py --public-url") exec {python} "$@" ;;
  "-m uvicorn") echo "$CLARION_PUBLIC_URL" > "$RECORD"; exit 0 ;;
  *) exec sleep 30 ;;
esac
"""


def run_sh(tmp_path: Path, **env: str) -> str:
    fake = tmp_path / "python"
    fake.write_text(textwrap.dedent(FAKE_PYTHON).format(python=sys.executable))
    fake.chmod(0o755)
    record = tmp_path / "public_url"
    environment = {k: v for k, v in os.environ.items() if k not in {"HOST", "PORT", "CLARION_PUBLIC_URL"}}
    environment.update(PY=str(fake), RECORD=str(record), BANNER="0", STOP_TIMEOUT="2", **env)
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "run.sh")], env=environment, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1, result.stderr  # the web process "exited": run.sh stops the worker, fails
    return record.read_text().strip()


def test_run_sh_gives_the_processes_the_public_url_of_its_port(tmp_path: Path) -> None:
    dotenv = ROOT / ".env"
    if dotenv.exists() and "CLARION_PUBLIC_URL" in dotenv.read_text():
        pytest.skip("this checkout's .env sets CLARION_PUBLIC_URL")
    assert run_sh(tmp_path, PORT="8517") == "http://127.0.0.1:8517"
    assert run_sh(tmp_path, PORT="8517", CLARION_PUBLIC_URL="https://n.example.com") == "https://n.example.com"

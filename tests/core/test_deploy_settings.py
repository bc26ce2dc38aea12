"""No default secrets, and production settings that pass ``manage.py check --deploy``.

Settings are read once per process from the environment, so each case imports them (or runs
``manage.py``) in a subprocess with an environment of its own.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

ROOT = Path(settings.BASE_DIR)
SECURITY_VARIABLES = {
    "SECRET_KEY",
    "SECRET_KEY_FALLBACKS",
    "DEBUG",
    "ALLOWED_HOSTS",
    "CSRF_TRUSTED_ORIGINS",
    "CLARION_PUBLIC_URL",
    "SECURE_SSL_REDIRECT",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "SECURE_PROXY_SSL_HEADER",
}
PRODUCTION = {
    "SECRET_KEY": secrets.token_urlsafe(50),
    "DEBUG": "0",
    "ALLOWED_HOSTS": "notify.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://notify.example.com",
    "CLARION_PUBLIC_URL": "https://notify.example.com",
    "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto",
}


def _env(tmp_path: Path, **variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SECURITY_VARIABLES}
    env["CLARION_VAR_DIR"] = str(tmp_path / "var")
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(variables)
    return env


def _settings(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    """Import config.settings in a fresh interpreter; print the security settings as JSON."""
    names = sorted(SECURITY_VARIABLES - {"CLARION_PUBLIC_URL"})
    code = f"import json, config.settings as s; print(json.dumps({{n: getattr(s, n) for n in {names!r}}}))"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=_env(tmp_path, **variables),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _values(tmp_path: Path, **variables: str) -> dict[str, Any]:
    result = _settings(tmp_path, **variables)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    ("variables", "complaint"),
    [
        ({}, "SECRET_KEY is not set"),
        ({"SECRET_KEY": ""}, "SECRET_KEY is not set"),
        ({"SECRET_KEY": "clarion-insecure-development-key-change-me-in-production"}, "the public development key"),
        (
            {
                "SECRET_KEY": "a-real-key",
                "SECRET_KEY_FALLBACKS": "clarion-insecure-development-key-change-me-in-production",
            },
            "SECRET_KEY_FALLBACKS holds the public development key",
        ),
    ],
    ids=["unset", "empty", "development key", "development key as a fallback"],
)
def test_settings_refuse_to_load_without_a_real_secret_key(tmp_path, variables, complaint):
    result = _settings(tmp_path, **variables)
    assert result.returncode != 0
    assert "django.core.exceptions.ImproperlyConfigured" in result.stderr
    assert complaint in result.stderr


def test_secret_key_and_fallbacks_come_from_the_environment(tmp_path):
    values = _values(tmp_path, SECRET_KEY="k" * 50, SECRET_KEY_FALLBACKS="old-1,old-2")
    assert values["SECRET_KEY"] == "k" * 50
    assert values["SECRET_KEY_FALLBACKS"] == ["old-1", "old-2"]
    assert _values(tmp_path, SECRET_KEY="k")["SECRET_KEY_FALLBACKS"] == []


def test_https_settings_follow_the_public_url_and_each_variable(tmp_path):
    local = _values(tmp_path, SECRET_KEY="k")
    assert local["SECURE_SSL_REDIRECT"] is local["SESSION_COOKIE_SECURE"] is local["CSRF_COOKIE_SECURE"] is False
    assert (local["SECURE_HSTS_SECONDS"], local["SECURE_PROXY_SSL_HEADER"]) == (0, None)

    production = _values(tmp_path, **PRODUCTION)
    assert production["SECURE_SSL_REDIRECT"] is production["SESSION_COOKIE_SECURE"] is True
    assert production["CSRF_COOKIE_SECURE"] is production["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True
    assert production["SECURE_HSTS_SECONDS"] == 31_536_000
    assert production["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]

    overridden = _values(tmp_path, **PRODUCTION, SECURE_SSL_REDIRECT="0", SECURE_HSTS_SECONDS="3600")
    assert (overridden["SECURE_SSL_REDIRECT"], overridden["SECURE_HSTS_SECONDS"]) == (False, 3600)
    assert overridden["SESSION_COOKIE_SECURE"] is True


def _check_deploy(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=_env(tmp_path, **variables),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_passes_with_production_settings(tmp_path):
    result = _check_deploy(tmp_path, **PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_flags_plain_http(tmp_path):
    """The counter-check: the same run over http:// does warn, so the test above means something."""
    result = _check_deploy(tmp_path, **{**PRODUCTION, "CLARION_PUBLIC_URL": "http://notify.example.com"})
    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in result.stderr + result.stdout


# --- make migrate / seed / run: a key of their own in var/secret_key ---------------------------

PRINT_KEY_RULE = "print-key: ; @$(WITH_KEY) sh -c 'printf %s \"$$SECRET_KEY\"'"


def _make_key(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    """The Makefile's own key handling, as migrate, seed and run use it, without Django: the key
    file's rule, then the environment their commands get."""
    key_file = str(tmp_path / "var" / "secret_key")  # $(SECRET_KEY_FILE) with this CLARION_VAR_DIR
    return subprocess.run(
        ["make", "--no-print-directory", "-s", "--eval", PRINT_KEY_RULE, key_file, "print-key"],
        cwd=ROOT,
        env=_env(tmp_path, **variables),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_generates_one_private_key_and_keeps_it(tmp_path):
    first = _make_key(tmp_path)
    assert first.returncode == 0, first.stderr
    key_file = tmp_path / "var" / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert len(key) >= 50
    assert first.stdout.endswith(key)

    again = _make_key(tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout == key
    assert key_file.read_text().strip() == key

    exported = _make_key(tmp_path, SECRET_KEY="exported-key")
    assert exported.stdout == "exported-key"

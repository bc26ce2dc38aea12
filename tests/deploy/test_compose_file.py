"""The deployment files, read as Docker would (no Docker on this machine): shape and invariants."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.deploy.compose import ComposeError, interpolate, load_compose, native_argv

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = {"POSTGRES_PASSWORD": "pw", "SECRET_KEY": "sk", "CLARION_ENCRYPTION_KEYS": "ek"}


def test_interpolation_follows_compose_rules() -> None:
    values = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET} ${UNSET}", values) == "x "
    assert interpolate("${EMPTY:-d} ${EMPTY-d} ${UNSET-d}", values) == "d  d"
    assert interpolate("$$HOME ${SET:?no}", values) == "$HOME x"
    with pytest.raises(ComposeError, match="SECRET_KEY"):
        interpolate("${SECRET_KEY:?set SECRET_KEY}", values)
    with pytest.raises(ComposeError):
        interpolate("${EMPTY:?empty is missing}", values)


def test_compose_requires_the_secrets() -> None:
    for missing in REQUIRED:
        with pytest.raises(ComposeError, match=missing):
            load_compose(ROOT / "docker-compose.yml", {k: v for k, v in REQUIRED.items() if k != missing})


def test_compose_services_match_the_procfile() -> None:
    services = load_compose(ROOT / "docker-compose.yml", REQUIRED)
    assert set(services) == {"postgres", "redis", "migrate", "web", "worker"}
    procfile = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if ": " in line)
    assert services["migrate"].command == procfile["release"].split()
    assert services["worker"].command == procfile["worker"].split()
    assert services["web"].command[:2] == ["uvicorn", "config.asgi:application"]
    for name in ("migrate", "web", "worker"):
        env = services[name].environment
        assert env["DATABASE_URL"] == "postgres://clarion:pw@postgres:5432/clarion"
        assert env["REDIS_URL"].startswith("redis://redis:6379/")
        assert (env["SECRET_KEY"], env["CLARION_ENCRYPTION_KEYS"]) == ("sk", "ek")
        assert services[name].raw["image"] == "clarion:latest"
    assert services["worker"].raw["stop_grace_period"] == "330s"  # longer than the 300 s task timeout
    assert "clarion_health" in services["worker"].raw["healthcheck"]["test"]
    assert "/healthz" in " ".join(services["web"].raw["healthcheck"]["test"])
    assert native_argv(services["web"].command, replace_options={"--port": "8801"})[-1] == "8801"


def test_dockerfile_is_multistage_non_root_with_static_and_healthcheck() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\w+)", dockerfile, flags=re.MULTILINE)
    assert stages == ["build", "runtime"]
    runtime = dockerfile.split("AS runtime", 1)[1]
    assert "COPY --from=build /opt/venv /opt/venv" in runtime
    assert re.search(r"^USER clarion", runtime, flags=re.MULTILINE)
    assert "collectstatic --noinput" in runtime
    assert "HEALTHCHECK" in runtime and "/healthz" in runtime
    assert "uvicorn config.asgi:application" in runtime
    # Every directory the runtime copies exists, and .dockerignore keeps none of them out.
    ignored = {
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")
    }
    for source in re.findall(r"^COPY (?!--from)(\S+) ", runtime, flags=re.MULTILINE):
        assert (ROOT / source).exists(), source
        assert source not in ignored, source
    assert {".git", ".venv", "var", ".env"} <= ignored


def test_web_and_worker_count_metrics_across_their_processes() -> None:
    """uvicorn --workers and django-q2's task processes each count in their own memory: both
    containers share a per-container directory that is empty at start (a tmpfs)."""
    import yaml

    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = load_compose(ROOT / "docker-compose.yml", REQUIRED)
    for name in ("web", "worker"):
        directory = services[name].environment["PROMETHEUS_MULTIPROC_DIR"]
        assert directory in raw["services"][name]["tmpfs"], name

"""The dependency map (``[tool.importlinter]`` in pyproject.toml) holds, and it would catch an
import against it: one ``forbidden`` contract per app, checked by import-linter as ``make lint`` does."""

from __future__ import annotations

import subprocess
import sys
from copy import deepcopy
from pathlib import Path

import grimp
import pytest
from importlinter.api import read_configuration
from importlinter.contracts.forbidden import ForbiddenContract

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = str(ROOT / "pyproject.toml")
APPS = {
    "core",
    "tenancy",
    "subscribers",
    "preferences",
    "templates",
    "delivery",
    "inbox",
    "events",
    "workflows",
    "demo",
    "observability",
    "analytics",
}


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("apps", cache_dir=None)


@pytest.fixture(scope="module")
def contracts() -> dict[str, ForbiddenContract]:
    options = read_configuration(config_filename=PYPROJECT)
    return {
        contract["id"]: ForbiddenContract(
            name=contract["name"], session_options=options["session_options"], contract_options=contract
        )
        for contract in options["contracts_options"]
    }


def test_the_code_keeps_the_dependency_map() -> None:
    """What ``make lint`` runs (in its own process: the command configures logging)."""
    command = [str(Path(sys.executable).with_name("lint-imports")), "--no-cache", "--config", PYPROJECT]

    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_app_has_its_contract(graph: grimp.ImportGraph, contracts: dict[str, ForbiddenContract]) -> None:
    apps = {module.split(".")[1] for module in graph.modules if module.count(".") == 1}
    assert apps == APPS == set(contracts)


@pytest.mark.parametrize(
    ("importer", "imported", "contract"),
    [
        ("apps.core.throttling", "apps.inbox.auth", "core"),
        ("apps.tenancy.admin", "apps.inbox.origins", "tenancy"),
        ("apps.subscribers.services", "apps.preferences.models", "subscribers"),
        ("apps.preferences.selectors", "apps.workflows.models", "preferences"),
        ("apps.preferences.webhooks", "apps.delivery.webhooks.twilio", "preferences"),
        ("apps.templates.services", "apps.workflows.models", "templates"),
        ("apps.delivery.admin", "apps.workflows.models", "delivery"),
        ("apps.inbox.api", "apps.workflows.selectors", "inbox"),
        ("apps.events.services", "apps.delivery.services", "events"),
        ("apps.workflows.services", "apps.demo.services", "workflows"),
        ("apps.demo.services", "apps.events.services", "demo"),
        ("apps.analytics.counters", "apps.delivery.models", "analytics"),
    ],
)
def test_an_import_against_the_map_breaks_its_contract(
    graph: grimp.ImportGraph, contracts: dict[str, ForbiddenContract], importer: str, imported: str, contract: str
) -> None:
    changed = deepcopy(graph)
    changed.add_import(importer=importer, imported=imported)

    broken = {key for key, check in contracts.items() if not check.check(deepcopy(changed), verbose=False).kept}

    assert broken == {contract}
    assert contracts[contract].check(deepcopy(graph), verbose=False).kept

"""Read docker-compose.yml as Docker Compose would, enough to run its services as plain processes.

``load_compose`` parses the file (PyYAML, merge keys included) and interpolates ``${VAR}``,
``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}`` and ``$$`` from the
values given, as ``docker compose config`` does. ``native_argv`` turns a service's command into
the same command for this checkout's virtualenv.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

_VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")


class ComposeError(ValueError):
    pass


def interpolate(text: str, values: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg") or ""
        value = values.get(name)
        unset_or_empty = value is None or (op is not None and op.startswith(":") and value == "")
        if op in (":-", "-"):
            return arg if unset_or_empty else str(value)
        if op in (":?", "?"):
            if unset_or_empty:
                raise ComposeError(f"required variable {name} is missing: {arg}")
            return str(value)
        return "" if value is None else str(value)

    return _VARIABLE.sub(replace, text)


def _interpolate_tree(node: Any, values: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, values)
    if isinstance(node, list):
        return [_interpolate_tree(item, values) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, values) for key, value in node.items()}
    return node


@dataclass(frozen=True)
class Service:
    name: str
    command: list[str]
    environment: dict[str, str]
    depends_on: dict[str, str]  # service -> condition
    raw: dict[str, Any]


def load_compose(path: Path, values: Mapping[str, str]) -> dict[str, Service]:
    document = yaml.safe_load(path.read_text())
    services: dict[str, Service] = {}
    for name, spec in _interpolate_tree(document["services"], values).items():
        command = spec.get("command") or []
        if isinstance(command, str):
            raise ComposeError(f"service {name}: write the command as a list (exec form)")
        environment = spec.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        depends = spec.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {dep: {"condition": "service_started"} for dep in depends}
        services[name] = Service(
            name=name,
            command=[str(part) for part in command],
            environment={key: "" if value is None else str(value) for key, value in environment.items()},
            depends_on={dep: (cond or {}).get("condition", "service_started") for dep, cond in depends.items()},
            raw=spec,
        )
    return services


def native_argv(command: list[str], *, replace_options: Mapping[str, str] | None = None) -> list[str]:
    """The command for this virtualenv: ``python`` is this interpreter, ``uvicorn`` its module;
    ``replace_options`` changes the values of options (``{"--host": "127.0.0.1"}``)."""
    if not command:
        raise ComposeError("empty command")
    head, *rest = command
    if head == "python":
        argv = [sys.executable, *rest]
    elif head in {"uvicorn", "daphne", "gunicorn"}:
        argv = [sys.executable, "-m", head, *rest]
    else:
        raise ComposeError(f"unexpected executable {head!r}")
    for option, value in (replace_options or {}).items():
        if option not in argv:
            raise ComposeError(f"{option} not in {command}")
        argv[argv.index(option) + 1] = value
    return argv

"""Sandboxed Jinja2 for everything users write: templates and step conditions.

Only plain data (dicts, lists, strings, numbers) is ever passed in; never model instances.
Output size and loop ranges are capped so one template cannot exhaust a worker.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_OUTPUT_CHARS = 256 * 1024
MAX_SOURCE_CHARS = 64 * 1024
MAX_RANGE = 10_000


class SandboxError(Exception):
    """A template or expression could not be compiled or rendered; the message is for people."""


class _ClarionSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(["**", "*"])

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int | float) and abs(right) > 64:
            raise SandboxError("exponent too large")
        if operator == "*" and isinstance(left, str | list) and isinstance(right, int) and right > MAX_RANGE:
            raise SandboxError("repetition too large")
        if operator == "*" and isinstance(right, str | list) and isinstance(left, int) and left > MAX_RANGE:
            raise SandboxError("repetition too large")
        return super().call_binop(context, operator, left, right)


def _safe_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise SandboxError(f"range larger than {MAX_RANGE} items")
    return rng


def _build(*, autoescape: bool, strict: bool) -> _ClarionSandbox:
    environment = _ClarionSandbox(
        autoescape=autoescape,
        undefined=StrictUndefined if strict else Undefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.globals["range"] = _safe_range
    environment.filters["json"] = lambda value: json.dumps(value, default=str)
    return environment


@lru_cache(maxsize=4)
def sandbox(*, autoescape: bool = False, strict: bool = False) -> _ClarionSandbox:
    return _build(autoescape=autoescape, strict=strict)


@lru_cache(maxsize=2048)
def _compile_template(source: str, autoescape: bool, strict: bool) -> Any:
    return sandbox(autoescape=autoescape, strict=strict).from_string(source)


@lru_cache(maxsize=2048)
def _compile_expression(source: str) -> Any:
    return sandbox().compile_expression(source, undefined_to_none=True)


def render_string(source: str, context: dict[str, Any], *, autoescape: bool = False, strict: bool = False) -> str:
    if not source:
        return ""
    if len(source) > MAX_SOURCE_CHARS:
        raise SandboxError(f"template is longer than {MAX_SOURCE_CHARS} characters")
    try:
        template = _compile_template(source, autoescape, strict)
        chunks: list[str] = []
        size = 0
        for chunk in template.generate(context):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise SandboxError(f"rendered output is larger than {MAX_OUTPUT_CHARS} characters")
            chunks.append(chunk)
        return "".join(chunks)
    except SandboxError:
        raise
    except TemplateError as exc:
        raise SandboxError(_describe(exc)) from exc
    except Exception as exc:  # arithmetic errors and the like inside user templates
        raise SandboxError(f"{type(exc).__name__}: {exc}") from exc


def validate_template(source: str) -> None:
    try:
        sandbox().parse(source)
    except TemplateError as exc:
        raise SandboxError(_describe(exc)) from exc


def validate_expression(source: str) -> None:
    try:
        _compile_expression(source)
    except TemplateError as exc:
        raise SandboxError(_describe(exc)) from exc


def evaluate_expression(source: str, context: dict[str, Any]) -> Any:
    try:
        return _compile_expression(source)(**context)
    except SandboxError:
        raise
    except TemplateError as exc:
        raise SandboxError(_describe(exc)) from exc
    except Exception as exc:
        raise SandboxError(f"{type(exc).__name__}: {exc}") from exc


def template_variables(source: str) -> set[str]:
    """Top-level names a template reads (for variable pickers and validation)."""
    from jinja2 import meta

    return set(meta.find_undeclared_variables(sandbox().parse(source)))


def _describe(exc: TemplateError) -> str:
    line = getattr(exc, "lineno", None)
    message = getattr(exc, "message", None) or str(exc)
    return f"line {line}: {message}" if line else message


__all__ = [
    "SandboxError",
    "evaluate_expression",
    "render_string",
    "template_variables",
    "validate_expression",
    "validate_template",
]

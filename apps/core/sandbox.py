"""Sandboxed Jinja2 for everything users write: templates and step conditions.

Only plain data (dicts, lists, strings, numbers) is ever passed in; never model instances.
Jinja's ImmutableSandboxedEnvironment already refuses private attributes (``__class__``,
``__globals__``…), unsafe callables and mutation of lists and dicts. On top of it:

* a **time limit**: every render (or expression evaluation) gets a deadline; it is checked on
  every loop iteration (a hidden call is added to the body of each ``{% for %}``), every call,
  filter and attribute lookup, and every output chunk;
* a **size limit**: the output, and every intermediate string or list (``~``, ``+``, ``*``,
  ``%``, ``str.format``, ``center``, ``replace``, ``join``…) stay under ``MAX_OUTPUT_CHARS``;
  amplifying operations are checked *before* they allocate;
* ``range`` is capped at ``MAX_RANGE`` items and ``lipsum`` is removed.

``lenient()`` marks data whose missing keys render empty even in strict mode (used by the
template validation for free-form data such as ``subscriber.data`` or an empty sample payload).
"""

from __future__ import annotations

import json
import re
import string
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache, wraps
from typing import Any

from jinja2 import ChainableUndefined, StrictUndefined, TemplateError, Undefined, UndefinedError
from jinja2.compiler import CodeGenerator, Frame
from jinja2.ext import Extension
from jinja2.lexer import Token, TokenStream
from jinja2.nodes import Concat
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_OUTPUT_CHARS = 256 * 1024
MAX_SOURCE_CHARS = 64 * 1024
MAX_RANGE = 10_000
MAX_WIDTH = 10_000  # format widths / precisions, center(), ljust()…
MAX_RENDER_SECONDS = 2.0

_TICK = "clarion_loop_tick__"
_deadline: ContextVar[tuple[float, float] | None] = ContextVar("clarion_sandbox_deadline", default=None)


class SandboxError(Exception):
    """A template or expression could not be compiled or rendered; the message is for people."""


# --- time ------------------------------------------------------------------------------------------


@contextmanager
def time_limit(seconds: float = MAX_RENDER_SECONDS) -> Iterator[None]:
    """Run the enclosed renders under one deadline. Nested limits keep the outer (earlier) one."""
    current = _deadline.get()
    deadline = time.monotonic() + seconds
    if current is not None and current[0] <= deadline:
        yield
        return
    token = _deadline.set((deadline, seconds))
    try:
        yield
    finally:
        _deadline.reset(token)


def _check_deadline() -> None:
    current = _deadline.get()
    if current is not None and time.monotonic() > current[0]:
        raise SandboxError(f"rendering took longer than {current[1]:g} seconds")


def _loop_tick() -> str:
    _check_deadline()
    return ""


class _LoopGuard(Extension):
    """Adds ``{{ clarion_loop_tick__() }}`` at the start of every ``{% for %}`` body, so an empty
    nested loop still checks the deadline on each iteration."""

    def filter_stream(self, stream: TokenStream) -> Iterator[Token]:
        after_block_begin = False
        in_for_tag = False
        for token in stream:
            yield token
            if token.type == "block_begin":
                after_block_begin = True
                continue
            if after_block_begin:
                after_block_begin = False
                in_for_tag = token.type == "name" and token.value == "for"
                continue
            if in_for_tag and token.type == "block_end":
                in_for_tag = False
                line = token.lineno
                yield Token(line, "variable_begin", "{{")
                yield Token(line, "name", _TICK)
                yield Token(line, "lparen", "(")
                yield Token(line, "rparen", ")")
                yield Token(line, "variable_end", "}}")


# --- size ------------------------------------------------------------------------------------------


def _too_large(what: str = "value") -> SandboxError:
    return SandboxError(f"the {what} would be larger than {MAX_OUTPUT_CHARS} characters")


def _check_size(value: Any) -> Any:
    if isinstance(value, str | list | tuple | dict) and len(value) > MAX_OUTPUT_CHARS:
        raise _too_large()
    return value


def _check_width(*numbers: Any) -> None:
    for number in numbers:
        if isinstance(number, int) and not isinstance(number, bool) and abs(number) > MAX_WIDTH:
            raise SandboxError(f"width {number} is larger than {MAX_WIDTH}")


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_percent_format(fmt: str) -> None:
    for width, precision in _PERCENT_SPEC.findall(fmt):
        for part in (width, precision):
            if part == "*":
                raise SandboxError("'*' widths are not allowed in % formatting")
            if part and int(part) > MAX_WIDTH:
                raise SandboxError(f"width {part} is larger than {MAX_WIDTH}")


def _check_brace_format(fmt: str) -> None:
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format raises its own error
    for _literal, _field, spec, _conversion in parsed:
        if not spec:
            continue
        if "{" in spec:
            raise SandboxError("nested replacement fields are not allowed in format specs")
        for number in re.findall(r"\d+", spec):
            if int(number) > MAX_WIDTH:
                raise SandboxError(f"width {number} is larger than {MAX_WIDTH}")


def _check_replace(value: Any, old: Any, new: Any, count: Any = -1) -> None:
    if not (isinstance(value, str) and isinstance(old, str) and isinstance(new, str)):
        return
    occurrences = value.count(old) if old else len(value) + 1
    if isinstance(count, int) and count >= 0:
        occurrences = min(occurrences, count)
    if len(value) + occurrences * (len(new) - len(old)) > MAX_OUTPUT_CHARS:
        raise _too_large()


def _check_join(items: Any, separator: Any = "") -> None:
    if isinstance(items, list | tuple):
        total = sum(len(item) if isinstance(item, str) else 20 for item in items)
        total += len(str(separator)) * max(len(items) - 1, 0)
        if total > MAX_OUTPUT_CHARS:
            raise _too_large()


def _precheck_filter(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Checks for filters whose output can be far larger than their input."""
    value = args[0] if args else None
    if name == "center":
        _check_width(*args[1:2], kwargs.get("width"))
    elif name == "indent":
        _check_width(*args[1:2], kwargs.get("width"))
        width = args[1] if len(args) > 1 else kwargs.get("width")
        if isinstance(width, str) and len(width) > MAX_WIDTH:
            raise _too_large()
    elif name == "replace":
        _check_replace(value, *args[1:4], **{k: v for k, v in kwargs.items() if k == "count"})
    elif name == "format" and isinstance(value, str):
        _check_percent_format(value)
    elif name in {"slice", "batch"}:
        count = args[1] if len(args) > 1 else kwargs.get("slices", kwargs.get("linecount"))
        if isinstance(count, int) and count > MAX_RANGE:
            raise SandboxError(f"{name} count larger than {MAX_RANGE}")
    elif name == "join":
        _check_join(value, args[1] if len(args) > 1 else kwargs.get("d", ""))
    elif name == "truncate":
        _check_width(*args[1:2], kwargs.get("length"))


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    pass_arg = getattr(func, "jinja_pass_arg", None)

    @wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check_deadline()
        offset = 1 if pass_arg is not None else 0  # context / environment comes first
        _precheck_filter(name, args[offset:], kwargs)
        return _check_size(func(*args, **kwargs))

    return guarded


_WIDTH_METHODS = {"center", "ljust", "rjust", "zfill", "expandtabs"}


def _precheck_call(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    if isinstance(owner, str):
        if name in _WIDTH_METHODS:
            _check_width(*args, *kwargs.values())
        elif name == "replace":
            _check_replace(owner, *args[:3])
        elif name == "join" and args:
            _check_join(args[0], owner)


# --- lenient data ---------------------------------------------------------------------------------


class LenientDict(dict):
    """A dict whose missing keys render empty (and chain) even in a strict sandbox."""


def lenient(value: Any) -> Any:
    """A deep copy of ``value`` where every dict is a :class:`LenientDict`."""
    if isinstance(value, dict):
        return LenientDict((key, lenient(item)) for key, item in value.items())
    if isinstance(value, list):
        return [lenient(item) for item in value]
    return value


# --- the environment ------------------------------------------------------------------------------


class _GuardedCodeGenerator(CodeGenerator):
    def visit_Concat(self, node: Concat, frame: Frame) -> None:
        self.write("environment.clarion_checked(")
        super().visit_Concat(node, frame)
        self.write(")")


class _ClarionSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(["**", "*", "+", "%"])
    code_generator_class = _GuardedCodeGenerator

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _check_deadline()
        if operator == "**" and isinstance(right, int | float) and abs(right) > 64:
            raise SandboxError("exponent too large")
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if isinstance(sequence, str | list | tuple) and isinstance(times, int):
                    if times > MAX_RANGE:
                        raise SandboxError("repetition too large")
                    if len(sequence) * times > MAX_OUTPUT_CHARS:
                        raise _too_large()
        if operator == "%" and isinstance(left, str):
            _check_percent_format(left)
        return _check_size(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_deadline()
        _precheck_call(__obj, args, kwargs)
        return _check_size(super().call(__context, __obj, *args, **kwargs))

    def getattr(self, obj: Any, attribute: str) -> Any:
        _check_deadline()
        value = super().getattr(obj, attribute)
        if isinstance(value, Undefined) and isinstance(obj, LenientDict) and not hasattr(obj, attribute):
            return ChainableUndefined(obj=obj, name=attribute)
        return value

    def getitem(self, obj: Any, argument: Any) -> Any:
        _check_deadline()
        value = super().getitem(obj, argument)
        known_attribute = isinstance(argument, str) and hasattr(obj, argument)
        if isinstance(value, Undefined) and isinstance(obj, LenientDict) and not known_attribute:
            return ChainableUndefined(obj=obj, name=argument)
        return value

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        owner = value.__self__

        def checked(*args: Any, **kwargs: Any) -> str:
            _check_brace_format(str(owner))
            return _check_size(wrapped(*args, **kwargs))

        return checked

    def clarion_checked(self, value: Any) -> Any:
        _check_deadline()
        return _check_size(value)


def _safe_range(*args: int) -> Iterator[int]:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise SandboxError(f"range larger than {MAX_RANGE} items")
    return rng  # type: ignore[return-value]


def _build(*, autoescape: bool, strict: bool) -> _ClarionSandbox:
    environment = _ClarionSandbox(
        autoescape=autoescape,
        undefined=StrictUndefined if strict else Undefined,
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_LoopGuard],
    )
    environment.globals.pop("lipsum", None)
    environment.globals["range"] = _safe_range
    environment.globals[_TICK] = _loop_tick
    environment.filters["json"] = lambda value: json.dumps(value, default=str)
    environment.filters = {name: _guard_filter(name, func) for name, func in environment.filters.items()}
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


def render_string(
    source: str,
    context: dict[str, Any],
    *,
    autoescape: bool = False,
    strict: bool = False,
    seconds: float = MAX_RENDER_SECONDS,
) -> str:
    """Render ``source`` with plain-data ``context``; raises SandboxError with a readable message.

    Output is capped at ``MAX_OUTPUT_CHARS`` and the render at ``seconds`` (or the deadline of an
    enclosing :func:`time_limit`, whichever comes first)."""
    if not source:
        return ""
    if len(source) > MAX_SOURCE_CHARS:
        raise SandboxError(f"template is longer than {MAX_SOURCE_CHARS} characters")
    try:
        with time_limit(seconds):
            template = _compile_template(source, autoescape, strict)
            chunks: list[str] = []
            size = 0
            for chunk in template.generate(context):
                size += len(chunk)
                if size > MAX_OUTPUT_CHARS:
                    raise SandboxError(f"rendered output is larger than {MAX_OUTPUT_CHARS} characters")
                _check_deadline()
                chunks.append(chunk)
            return "".join(chunks)
    except SandboxError:
        raise
    except TemplateError as exc:
        raise SandboxError(_describe(exc)) from exc
    except RecursionError as exc:
        raise SandboxError("the template recurses too deeply") from exc
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


def evaluate_expression(source: str, context: dict[str, Any], *, seconds: float = MAX_RENDER_SECONDS) -> Any:
    try:
        with time_limit(seconds):
            return _compile_expression(source)(**context)
    except SandboxError:
        raise
    except TemplateError as exc:
        raise SandboxError(_describe(exc)) from exc
    except RecursionError as exc:
        raise SandboxError("the expression recurses too deeply") from exc
    except Exception as exc:
        raise SandboxError(f"{type(exc).__name__}: {exc}") from exc


def template_variables(source: str) -> set[str]:
    """Top-level names a template reads (for variable pickers and validation)."""
    from jinja2 import meta

    return set(meta.find_undeclared_variables(sandbox().parse(source))) - {_TICK}


_NO_ATTRIBUTE = re.compile(r"^'[^']*' has no attribute '([^']*)'$")
_IS_UNDEFINED = re.compile(r"^'([^']*)' is undefined$")


def _template_line(exc: BaseException) -> int | None:
    """The template line a runtime error happened on (Jinja maps its frames to ``<template>``)."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _describe(exc: TemplateError) -> str:
    line = getattr(exc, "lineno", None) or _template_line(exc)
    message = getattr(exc, "message", None) or str(exc)
    if isinstance(exc, UndefinedError):
        if match := _NO_ATTRIBUTE.match(message):
            message = f"unknown variable: nothing called “{match.group(1)}” in the data"
        elif match := _IS_UNDEFINED.match(message):
            message = f"unknown variable “{match.group(1)}”"
    return f"line {line}: {message}" if line else message


__all__ = [
    "MAX_OUTPUT_CHARS",
    "MAX_RENDER_SECONDS",
    "LenientDict",
    "SandboxError",
    "evaluate_expression",
    "lenient",
    "render_string",
    "template_variables",
    "time_limit",
    "validate_expression",
    "validate_template",
]

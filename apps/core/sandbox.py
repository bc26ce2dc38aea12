"""Sandboxed Jinja2 for everything users write: templates and step conditions.

Only plain data (dicts, lists, strings, numbers) is ever passed in; never model instances.
Jinja's ImmutableSandboxedEnvironment already refuses private attributes (``__class__``,
``__globals__``…), unsafe callables and mutation of lists and dicts. On top of it:

* a **time limit**: every render (or expression evaluation) gets a deadline; it is checked on
  every loop iteration (a hidden call is added to the body of each ``{% for %}``), every
  operator, call, filter and attribute lookup, and every output chunk. A deadline can only be
  checked between operations, so every single operation is also bounded (below);
* **arithmetic limits**: every operator goes through ``call_binop`` / ``call_unop``. An integer
  may not grow past ``MAX_INT_BITS`` bits (checked *before* ``*`` and ``**`` compute), so no
  expression can spend seconds inside one big-number operation holding the GIL;
* **size limits**: the output and every string built on the way (``~``, ``+``, ``*``, ``%``,
  ``str.format``, ``join``, ``center``, ``indent``, ``wordwrap``, ``replace``, ``expandtabs``,
  ``tojson``…) stay under ``MAX_OUTPUT_CHARS``; lists and dicts built in a template (literals,
  ``*``, ``+``, filters, calls) under ``MAX_VALUE_SIZE`` characters counted through every nested
  item, so repeating a value by reference cannot make a later ``str()`` or comparison explode.
  Amplifying operations are estimated *before* they allocate;
* a **nesting limit**: brackets and blocks nest at most ``MAX_NESTING`` deep (deeper syntax, and
  anything else that exhausts Python's recursion, is a SandboxError, not a RecursionError);
* ``range`` is capped at ``MAX_RANGE`` items and ``lipsum`` is removed.

``lenient()`` marks data whose missing keys render empty even in strict mode (used by the
template validation for free-form data such as ``subscriber.data`` or an empty sample payload).
"""

from __future__ import annotations

import json
import re
import string
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache, wraps
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from jinja2 import ChainableUndefined, StrictUndefined, TemplateError, Undefined, UndefinedError, pass_eval_context
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import TemplateSyntaxError
from jinja2.ext import Extension
from jinja2.filters import do_join, make_attrgetter
from jinja2.lexer import Token, TokenStream
from jinja2.nodes import Concat, Dict, List, Tuple
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

if TYPE_CHECKING:
    from _collections_abc import dict_items, dict_keys, dict_values

MAX_OUTPUT_CHARS = 256 * 1024
MAX_SOURCE_CHARS = 64 * 1024
MAX_VALUE_SIZE = 16 * MAX_OUTPUT_CHARS  # a list / dict built in a template, counted through nested items
MAX_EMITTED_CHARS = 4 * MAX_OUTPUT_CHARS  # all {{ }} output of one render, macros and {% set %} blocks included
MAX_INT_BITS = 4096  # about 1,233 decimal digits
MAX_RANGE = 10_000
MAX_WIDTH = 10_000  # format widths / precisions, center(), ljust(), round()…
MAX_NESTING = 20  # brackets inside brackets, blocks inside blocks
MAX_TOKENS = 20_000  # compiling is linear in tokens, and Python's compile() holds the GIL
MAX_RENDER_SECONDS = 2.0
MAX_WRAP_WORK = 4_000_000_000  # wordwrap: (longest word)² / width, the bytes textwrap copies

_TICK = "clarion_loop_tick__"

# The clock is a module attribute so tests can count deadline checks with a fake one.
_clock: Callable[[], float] = time.monotonic
_deadline: ContextVar[tuple[float, float] | None] = ContextVar("clarion_sandbox_deadline", default=None)


@dataclass
class _Budget:
    """Per render: sizes of the containers seen so far (by id, the object kept alive so the id
    stays unique; templates cannot mutate lists or dicts) and the characters emitted so far."""

    sizes: dict[int, tuple[Any, int]] = field(default_factory=dict)
    emitted: int = 0


_budget: ContextVar[_Budget | None] = ContextVar("clarion_sandbox_budget", default=None)


class SandboxError(Exception):
    """A template or expression could not be compiled or rendered; the message is for people."""


class RenderTimeout(SandboxError):
    """A render or an evaluation ran past its time limit."""


# --- time ------------------------------------------------------------------------------------------


@contextmanager
def time_limit(seconds: float = MAX_RENDER_SECONDS) -> Iterator[None]:
    """Run the enclosed renders under one deadline. Nested limits keep the outer (earlier) one."""
    current = _deadline.get()
    deadline = _clock() + seconds
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
    if current is not None and _clock() > current[0]:
        raise RenderTimeout(f"rendering took longer than {current[1]:g} seconds")


def check_deadline() -> None:
    """Raise SandboxError when the enclosing :func:`time_limit` has passed (for work done outside
    the sandbox but within a render, such as Markdown conversion)."""
    _check_deadline()


@contextmanager
def _render_budget() -> Iterator[None]:
    token = _budget.set(_Budget())
    try:
        yield
    finally:
        _budget.reset(token)


def _loop_tick() -> str:
    _check_deadline()
    return ""


# --- syntax ----------------------------------------------------------------------------------------

_OPENING = {"lparen", "lbracket", "lbrace"}
_CLOSING = {"rparen", "rbracket", "rbrace"}
_BLOCK_TAGS = {"if", "for", "macro", "call", "filter", "with", "block", "autoescape"}


class _SyntaxGuard(Extension):
    """Refuses nesting deeper than ``MAX_NESTING`` before the parser recurses into it and more than
    ``MAX_TOKENS`` tokens (names, operators, literals, text between tags), and adds
    ``{{ clarion_loop_tick__() }}`` at the start of every ``{% for %}`` body, so an empty nested
    loop still checks the deadline on each iteration."""

    def filter_stream(self, stream: TokenStream) -> Iterator[Token]:
        brackets = blocks = tokens = 0
        after_block_begin = in_for_tag = block_set = False
        for token in stream:
            kind = token.type
            tokens += 1
            if tokens > MAX_TOKENS:
                raise TemplateSyntaxError(f"more than {MAX_TOKENS} tokens: split the template", token.lineno)
            if kind in _OPENING:
                brackets += 1
                if brackets > MAX_NESTING:
                    raise TemplateSyntaxError(f"brackets nest more than {MAX_NESTING} deep", token.lineno)
            elif kind in _CLOSING:
                brackets -= 1
            yield token
            if kind == "block_begin":
                after_block_begin = True
                continue
            if after_block_begin:
                after_block_begin = False
                name = token.value if kind == "name" else ""
                in_for_tag = name == "for"
                block_set = name == "set"  # {% set x %}…{% endset %} is a block, {% set x = … %} is not
                if name in _BLOCK_TAGS:
                    blocks += 1
                elif name.startswith("end"):
                    blocks -= 1
                if blocks > MAX_NESTING:
                    raise TemplateSyntaxError(f"blocks nest more than {MAX_NESTING} deep", token.lineno)
                continue
            if kind == "assign":
                block_set = False
            elif kind == "block_end":
                if block_set:
                    block_set = False
                    blocks += 1
                    if blocks > MAX_NESTING:
                        raise TemplateSyntaxError(f"blocks nest more than {MAX_NESTING} deep", token.lineno)
                if in_for_tag:
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


def _too_many_bits() -> SandboxError:
    return SandboxError(f"the number would be larger than {MAX_INT_BITS} bits")


_TEXT = (str, bytes, bytearray)
_BYTES = (bytes, bytearray)
_CONTAINERS = (list, tuple, dict, set, frozenset)
_DICT_VIEWS: tuple[type[dict_keys[Any, Any]], type[dict_values[Any, Any]], type[dict_items[Any, Any]]] = (
    type({}.keys()),
    type({}.values()),
    type({}.items()),
)


def _size(value: Any) -> int:
    """About how many characters ``str(value)`` takes, nested items counted every time they are
    referenced; counting stops a little past ``MAX_VALUE_SIZE``. A container's size is remembered
    for the rest of the render, so building a list from lists already seen costs one lookup per
    item."""
    if isinstance(value, _TEXT):
        return len(value)
    if isinstance(value, bool) or value is None:
        return 5
    if isinstance(value, int):
        return value.bit_length() // 3 + 2
    if isinstance(value, float | Undefined):
        return 24
    if isinstance(value, Namespace):  # its attributes change: never remembered
        return 12 + _container_size(object.__getattribute__(value, "_Namespace__attrs"), remember=False)
    if isinstance(value, _CONTAINERS):
        return _container_size(value)
    if isinstance(value, _DICT_VIEWS):  # printed with their whole dict
        return 12 + _container_size(value.mapping, remember=False)
    return 64


def _container_size(value: Any, *, remember: bool = True) -> int:
    budget = _budget.get() if remember else None
    key = id(value)
    if budget is not None:
        known = budget.sizes.get(key)
        if known is not None and known[0] is value:
            return known[1]
        budget.sizes[key] = (value, 2)  # a placeholder while counting: reference cycles end here
    total = 2
    pairs = isinstance(value, dict | MappingProxyType)
    items: Iterable[Any] = (part for pair in value.items() for part in pair) if pairs else value
    try:
        for item in items:
            total += _size(item) + 2
            if total > MAX_VALUE_SIZE:
                break
    except RecursionError as exc:
        raise SandboxError("the value is nested too deeply") from exc
    if budget is not None:
        budget.sizes[key] = (value, total)
    return total


def _remember(value: Any, size: int) -> None:
    budget = _budget.get()
    if budget is not None and isinstance(value, _CONTAINERS):
        budget.sizes[id(value)] = (value, size)


def _check_value(value: Any) -> Any:
    """Results of operators, calls and filters: bounded strings, numbers and containers."""
    if isinstance(value, _TEXT):
        if len(value) > MAX_OUTPUT_CHARS:
            raise _too_large()
    elif isinstance(value, int):
        if value.bit_length() > MAX_INT_BITS:
            raise _too_many_bits()
    elif isinstance(value, _CONTAINERS) and _size(value) > MAX_VALUE_SIZE:
        raise SandboxError(f"the list or dict would be larger than {MAX_VALUE_SIZE} characters")
    return value


def _check_text(*values: Any, extra: int = 0) -> None:
    """Refuse before turning ``values`` into one string longer than ``MAX_OUTPUT_CHARS``."""
    total = extra
    for value in values:
        total += _size(value)
        if total > MAX_OUTPUT_CHARS:
            raise _too_large()


def _check_width(*numbers: Any) -> None:
    for number in numbers:
        if isinstance(number, int) and not isinstance(number, bool) and abs(number) > MAX_WIDTH:
            raise SandboxError(f"{number} is out of range for a width, length or precision (at most {MAX_WIDTH})")


# %-format: mapping key, flags, width, precision, length modifier, conversion
_PERCENT_SPEC = re.compile(r"%(?:\(([^)]*)\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?(.?)")


def _check_percent_format(fmt: str, values: Any = None) -> None:
    """``fmt % values``: widths, and the size of the result, before formatting."""
    positional = values if isinstance(values, tuple) else (values,)
    mapping = values if isinstance(values, dict) else None
    total = len(fmt)
    index = 0
    for match in _PERCENT_SPEC.finditer(fmt):
        key, width, precision, conversion = match.groups()
        if conversion == "%":
            continue
        for part in (width, precision):
            if part == "*":
                raise SandboxError("'*' widths are not allowed in % formatting")
            if part and int(part) > MAX_WIDTH:
                raise SandboxError(f"width {part} is larger than {MAX_WIDTH}")
        if key is not None and mapping is not None:
            value = mapping.get(key)
        elif index < len(positional):
            value = positional[index]
            index += 1
        else:
            value = None
        total += max(int(width or 0), int(precision or 0)) + _size(value)
        if total > MAX_OUTPUT_CHARS:
            raise _too_large()


def _check_brace_format(fmt: str, args: tuple[Any, ...] = (), kwargs: Any = None) -> None:
    """``fmt.format(*args, **kwargs)``: widths, and the size of the result, before formatting."""
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format raises its own error
    kwargs = kwargs if isinstance(kwargs, dict) else {}
    total = len(fmt)
    auto = 0
    for _literal, name, spec, _conversion in parsed:
        if name is None:
            continue
        if spec and "{" in spec:
            raise SandboxError("nested replacement fields are not allowed in format specs")
        widths = [int(number) for number in re.findall(r"\d+", spec or "")]
        for number in widths:
            if number > MAX_WIDTH:
                raise SandboxError(f"width {number} is larger than {MAX_WIDTH}")
        first = re.split(r"[.\[]", name, maxsplit=1)[0]
        if first == "":
            value = args[auto] if auto < len(args) else None
            auto += 1
        elif first.isdigit():
            value = args[int(first)] if int(first) < len(args) else None
        else:
            value = kwargs.get(first)
        total += max(widths, default=0) + _size(value)
        if total > MAX_OUTPUT_CHARS:
            raise _too_large()


def _check_replace(value: Any, old: Any, new: Any, count: Any = -1) -> None:
    # Two branches (not one `or`) so the type checker sees that str is never counted in bytes.
    if isinstance(value, str) and isinstance(old, str) and isinstance(new, str):  # noqa: SIM114
        occurrences = value.count(old) if old else len(value) + 1
    elif isinstance(value, _BYTES) and isinstance(old, _BYTES) and isinstance(new, _BYTES):
        occurrences = value.count(old) if old else len(value) + 1
    else:  # not text, or str mixed with bytes (which replace itself refuses)
        return
    if isinstance(count, int) and count >= 0:
        occurrences = min(occurrences, count)
    if len(value) + occurrences * (len(new) - len(old)) > MAX_OUTPUT_CHARS:
        raise _too_large()


def _check_join(items: Any, separator: Any = "") -> None:
    if isinstance(items, list | tuple):
        _check_text(*items, extra=_size(separator) * max(len(items) - 1, 0))


def _check_lines(value: Any, prefix: int) -> None:
    """``prefix`` characters added to every line of ``value``."""
    if isinstance(value, str) and len(value) + (value.count("\n") + 1) * prefix > MAX_OUTPUT_CHARS:
        raise _too_large()


def _check_wordwrap(value: Any, width: Any, wrapstring: Any) -> None:
    if not isinstance(value, str) or not isinstance(width, int) or width < 1:
        return  # textwrap refuses a width below 1 itself
    words = value.split()
    longest = max(map(len, words), default=0)
    if longest * longest // width > MAX_WRAP_WORK:
        raise SandboxError(f"a word of {longest} characters is too long to wrap at width {width}")
    breaks = len(value) // width + len(value) - sum(map(len, words)) + 1  # at most one per space
    if len(value) + breaks * len(wrapstring if isinstance(wrapstring, str) else "\n") > MAX_OUTPUT_CHARS:
        raise _too_large()


# Filters that turn their value into a string first: refuse a value whose text is too long.
_STRINGIFYING_FILTERS = {
    "capitalize",
    "center",
    "e",
    "escape",
    "forceescape",
    "format",
    "indent",
    "lower",
    "pprint",
    "replace",
    "safe",
    "string",
    "striptags",
    "title",
    "tojson",
    "json",
    "trim",
    "truncate",
    "upper",
    "urlencode",
    "urlize",
    "wordcount",
    "wordwrap",
    "xmlattr",
}


def _argument(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, default: Any = None) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def _precheck_filter(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Checks for filters whose output can be far larger, or slower, than their input."""
    value = args[0] if args else None
    if name in _STRINGIFYING_FILTERS and not isinstance(value, str):
        _check_text(value)
    if name == "center":
        _check_width(_argument(args, kwargs, 1, "width"))
    elif name == "indent":
        width = _argument(args, kwargs, 1, "width", 4)
        _check_width(width)
        _check_lines(value, len(width) if isinstance(width, str) else width if isinstance(width, int) else 0)
    elif name == "replace":
        _check_replace(value, *args[1:4], **{k: v for k, v in kwargs.items() if k == "count"})
    elif name == "format" and isinstance(value, str):
        _check_percent_format(value, kwargs or tuple(args[1:]))
    elif name in {"slice", "batch"}:
        count = _argument(args, kwargs, 1, "slices" if name == "slice" else "linecount")
        if isinstance(count, int) and count > MAX_RANGE:
            raise SandboxError(f"{name} count larger than {MAX_RANGE}")
    elif name == "truncate":
        _check_width(_argument(args, kwargs, 1, "length"), _argument(args, kwargs, 4, "leeway"))
    elif name == "wordwrap":
        width = _argument(args, kwargs, 1, "width", 79)
        _check_wordwrap(value, width, _argument(args, kwargs, 3, "wrapstring"))
    elif name == "round":
        _check_width(_argument(args, kwargs, 1, "precision"))
    elif name == "sum":
        start = _argument(args, kwargs, 2, "start", 0)
        if not isinstance(start, int | float):
            raise SandboxError("sum adds numbers only")


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    pass_arg = getattr(func, "jinja_pass_arg", None)

    @wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check_deadline()
        offset = 1 if pass_arg is not None else 0  # context / environment comes first
        _precheck_filter(name, args[offset:], kwargs)
        return _check_value(func(*args, **kwargs))

    return guarded


@pass_eval_context
def _join_filter(eval_ctx: Any, value: Iterable[Any], d: str = "", attribute: str | int | None = None) -> str:
    """``join`` with the size of the result checked before joining (also for generators)."""
    items = list(value)
    if attribute is not None:
        items = list(map(make_attrgetter(eval_ctx.environment, attribute), items))
    _check_join(items, d)
    return do_join(eval_ctx, items, d)


def _bounded_json_dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` that stops at ``MAX_OUTPUT_CHARS`` (indentation can multiply the size)."""
    if kwargs.get("indent") is None:
        _check_text(value)
        return json.dumps(value, **kwargs)
    chunks: list[str] = []
    size = 0
    for chunk in json.JSONEncoder(**kwargs).iterencode(value):
        size += len(chunk)
        if size > MAX_OUTPUT_CHARS:
            raise _too_large()
        chunks.append(chunk)
    return "".join(chunks)


_WIDTH_METHODS = {"center", "ljust", "rjust", "zfill"}


def _precheck_call(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Checks before calling a method that can build a large value; returns the arguments to call
    with (an iterator given to ``str.join`` is read into a list first, to be measured)."""
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    if isinstance(owner, _TEXT):
        if name in _WIDTH_METHODS:
            _check_width(*args, *kwargs.values())
        elif name == "expandtabs":
            tabsize = _argument(args, kwargs, 0, "tabsize", 8)
            if isinstance(tabsize, int):
                tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
                if len(owner) + tabs * tabsize > MAX_OUTPUT_CHARS:
                    raise _too_large()
        elif name == "replace":
            _check_replace(owner, *args[:3])
        elif name == "join" and args:
            items = args[0] if isinstance(args[0], list | tuple) else list(args[0])
            _check_join(items, owner)
            args = (items, *args[1:])
        elif name == "translate" and args and isinstance(args[0], dict):
            longest = max((len(item) for item in args[0].values() if isinstance(item, str)), default=1)
            if len(owner) * longest > MAX_OUTPUT_CHARS:
                raise _too_large()
    elif isinstance(owner, int) and name == "to_bytes":
        _check_width(_argument(args, kwargs, 0, "length"))
    return args


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
    """Every ``~`` checks the size of its parts before joining them, and every list, tuple and
    dict literal is size-checked (``[a, a, a, a]`` nested a few times would otherwise build a
    value whose printed form is exponentially large)."""

    def visit_Concat(self, node: Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            func_name = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            func_name = "markup_join"
        else:
            func_name = "str_join"
        self.write(f"{func_name}(environment.clarion_parts((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write(")))")

    def visit_List(self, node: List, frame: Frame) -> None:
        self.write("environment.clarion_checked(")
        super().visit_List(node, frame)
        self.write(")")

    def visit_Dict(self, node: Dict, frame: Frame) -> None:
        self.write("environment.clarion_checked(")
        super().visit_Dict(node, frame)
        self.write(")")

    def visit_Tuple(self, node: Tuple, frame: Frame) -> None:
        if node.ctx == "store":  # ``{% for a, b in … %}`` and ``{% set a, b = … %}`` targets
            super().visit_Tuple(node, frame)
            return
        self.write("environment.clarion_checked(")
        super().visit_Tuple(node, frame)
        self.write(")")


def _checked_concat(parts: Iterable[str]) -> str:
    """``environment.concat``: joins the output buffers of macros, ``{% set %}`` and
    ``{% filter %}`` blocks and ``caller()``, refusing before the join when too large."""
    buffer = parts if isinstance(parts, list) else list(parts)
    if sum(map(len, buffer)) > MAX_OUTPUT_CHARS:
        raise SandboxError(f"rendered output is larger than {MAX_OUTPUT_CHARS} characters")
    return "".join(buffer)


def _finalize(value: Any) -> Any:
    """Every ``{{ … }}``: bounded before ``str()`` runs, and counted against the render's budget."""
    _check_deadline()
    if isinstance(value, Undefined):
        return value
    size = _size(value)
    if size > MAX_OUTPUT_CHARS:
        raise _too_large("output")
    budget = _budget.get()
    if budget is not None:
        budget.emitted += size
        if budget.emitted > MAX_EMITTED_CHARS:
            raise SandboxError(f"the template produced more than {MAX_EMITTED_CHARS} characters")
    return value


def _precheck_binop(operator: str, left: Any, right: Any) -> int | None:
    """Refuse an operation whose result would be too large; return its size when known."""
    if isinstance(left, int) and isinstance(right, int):
        if operator == "*" and left.bit_length() + right.bit_length() - 1 > MAX_INT_BITS:
            raise _too_many_bits()
        # |left| ** right has at least (bits(left) - 1) * right + 1 bits
        if operator == "**" and right > 0 and (left.bit_length() - 1) * right + 1 > MAX_INT_BITS:
            raise _too_many_bits()
        return None
    if operator == "*":
        for sequence, times in ((left, right), (right, left)):
            if isinstance(sequence, _TEXT + _CONTAINERS) and isinstance(times, int):
                if isinstance(sequence, _TEXT):
                    if len(sequence) * max(times, 0) > MAX_OUTPUT_CHARS:
                        raise _too_large()
                    return None
                size = 2 + (_size(sequence) - 2) * max(times, 0)
                if size > MAX_VALUE_SIZE:
                    raise SandboxError(f"the list would be larger than {MAX_VALUE_SIZE} characters")
                return size
    elif operator == "+":
        if isinstance(left, _TEXT) and isinstance(right, _TEXT):
            if len(left) + len(right) > MAX_OUTPUT_CHARS:
                raise _too_large()
        elif isinstance(left, _CONTAINERS) and isinstance(right, _CONTAINERS):
            size = _size(left) + _size(right)
            if size > MAX_VALUE_SIZE:
                raise SandboxError(f"the list would be larger than {MAX_VALUE_SIZE} characters")
            return size
    elif operator == "%" and isinstance(left, str):
        _check_percent_format(left, right)
    return None


class _ClarionSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(["+", "-", "*", "/", "//", "**", "%"])
    intercepted_unops = frozenset(["+", "-"])
    code_generator_class = _GuardedCodeGenerator
    concat = staticmethod(_checked_concat)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _check_deadline()
        size = _precheck_binop(operator, left, right)
        result = super().call_binop(context, operator, left, right)
        if size is not None:
            _remember(result, size)
        return _check_value(result)

    def call_unop(self, context: Any, operator: str, arg: Any) -> Any:
        _check_deadline()
        return super().call_unop(context, operator, arg)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_deadline()
        args = _precheck_call(__obj, args, kwargs)
        return _check_value(super().call(__context, __obj, *args, **kwargs))

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
        owner = str(value.__self__)
        is_format_map = value.__name__ == "format_map"

        def checked(*args: Any, **kwargs: Any) -> str:
            _check_deadline()
            if is_format_map:
                _check_brace_format(owner, (), args[0] if args else None)
            else:
                _check_brace_format(owner, args, kwargs)
            return _check_value(wrapped(*args, **kwargs))

        return checked

    def clarion_checked(self, value: Any) -> Any:
        _check_deadline()
        return _check_value(value)

    def clarion_parts(self, parts: tuple[Any, ...]) -> tuple[Any, ...]:
        _check_deadline()
        _check_text(*parts)
        return parts


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
        extensions=[_SyntaxGuard],
        finalize=_finalize,
    )
    environment.globals.pop("lipsum", None)
    environment.globals["range"] = _safe_range
    environment.globals[_TICK] = _loop_tick
    environment.policies["json.dumps_function"] = _bounded_json_dumps
    environment.filters["json"] = lambda value: _bounded_json_dumps(value, default=str)
    environment.filters["join"] = _join_filter
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


def _failure(exc: BaseException, what: str) -> SandboxError:
    """A readable SandboxError for anything a user's template or expression can raise."""
    if isinstance(exc, SandboxError):
        return exc
    if isinstance(exc, TemplateError):
        return SandboxError(_describe(exc))
    if isinstance(exc, RecursionError):
        return SandboxError(f"the {what} nests or recurses too deeply")
    if isinstance(exc, MemoryError):
        return SandboxError(f"the {what} needs too much memory")
    if isinstance(exc, SyntaxError):  # Python refused the code Jinja generated (e.g. too deeply nested)
        return SandboxError(f"the {what} is too complex: {exc.msg}")
    return SandboxError(f"{type(exc).__name__}: {exc}")


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
        with time_limit(seconds), _render_budget():
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
    except Exception as exc:  # whatever a user's template raises becomes a readable SandboxError
        raise _failure(exc, "template") from exc


def validate_template(source: str) -> None:
    if len(source) > MAX_SOURCE_CHARS:
        raise SandboxError(f"template is longer than {MAX_SOURCE_CHARS} characters")
    try:
        _compile_template(source, False, False)
    except Exception as exc:
        raise _failure(exc, "template") from exc


def validate_expression(source: str) -> None:
    if len(source) > MAX_SOURCE_CHARS:
        raise SandboxError(f"expression is longer than {MAX_SOURCE_CHARS} characters")
    try:
        _compile_expression(source)
    except Exception as exc:
        raise _failure(exc, "expression") from exc


def evaluate_expression(source: str, context: dict[str, Any], *, seconds: float = MAX_RENDER_SECONDS) -> Any:
    if len(source) > MAX_SOURCE_CHARS:
        raise SandboxError(f"expression is longer than {MAX_SOURCE_CHARS} characters")
    try:
        with time_limit(seconds), _render_budget():
            return _compile_expression(source)(**context)
    except Exception as exc:
        raise _failure(exc, "expression") from exc


def template_variables(source: str) -> set[str]:
    """Top-level names a template reads (for variable pickers and validation)."""
    from jinja2 import meta

    try:
        return set(meta.find_undeclared_variables(sandbox().parse(source))) - {_TICK}
    except Exception as exc:
        raise _failure(exc, "template") from exc


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
    "MAX_INT_BITS",
    "MAX_NESTING",
    "MAX_OUTPUT_CHARS",
    "MAX_RENDER_SECONDS",
    "MAX_TOKENS",
    "MAX_VALUE_SIZE",
    "LenientDict",
    "RenderTimeout",
    "SandboxError",
    "check_deadline",
    "evaluate_expression",
    "lenient",
    "render_string",
    "template_variables",
    "time_limit",
    "validate_expression",
    "validate_template",
]

"""The API's JSON parser: DRF's, minus what no database can store or no code should recurse into.

JSON can spell text that PostgreSQL cannot hold (NUL, ``"\\u0000"``) and text that no UTF-8
database can hold (an unpaired UTF-16 surrogate, ``"\\ud800"``). Either one, anywhere in a body
(a value or a key), is a 400 ``invalid_json`` naming where it is, on every database. A body
nested deeper than ``MAX_DEPTH`` (or too deep for the parser itself) is a 400 ``malformed_json``:
serializers, templates and the engine walk these structures recursively.

A bulk endpoint that accepts good items and reports bad ones names its item list in the view
(``json_items_key = "events"``): the parser leaves those items to the view, which checks each with
``json_problem`` and reports the bad ones alone.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.conf import settings
from rest_framework import parsers
from rest_framework.exceptions import ParseError
from rest_framework.utils.json import strict_constant

from apps.core.schema import request_body_check

if TYPE_CHECKING:
    from apps.core.errors import ApiError

MAX_DEPTH = 64

# After json.loads a surrogate pair is one code point, so any surrogate left is unpaired.
_BAD_CHAR = re.compile("[\x00\ud800-\udfff]")
# In JSON text, NUL and surrogates are spelled as these escapes (a raw control character is invalid
# JSON), or stand raw (an exotic request charset; json.dumps(ensure_ascii=False), which escapes NUL).
# Neither: no string needs a look. Either may be innocent (a surrogate pair, an escaped backslash).
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


def _suspect(text: str) -> bool:
    return ("\\u" in text and _SUSPECT_ESCAPE.search(text) is not None) or _BAD_CHAR.search(text) is not None


@dataclass(frozen=True)
class JsonProblem:
    code: str
    message: str
    path: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_error(self) -> ApiError:
        # Imported late: DRF's settings import this module while apps.core.errors imports DRF.
        from apps.core.errors import ApiError

        return ApiError(self.message, code=self.code, details={"path": self.path, **self.details})

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": {"path": self.path, **self.details}}


def _describe(char: str) -> str:
    if char == "\x00":
        return "a NUL character (\\u0000)"
    return f"an unpaired surrogate (\\u{ord(char):04x})"


def _printable(key: str) -> str:
    return _BAD_CHAR.sub(lambda m: f"\\u{ord(m.group()):04x}", key)


def _join(path: str, step: str | int) -> str:
    if isinstance(step, int):
        return f"{path}[{step}]"
    return f"{path}.{_printable(step)}" if path else _printable(step)


_CONTAINERS = (dict, list)


def _too_deep(value: Any, max_depth: int) -> bool:
    """Level by level, containers only: no recursion, no paths (json.loads makes exact dicts and
    lists)."""
    level = [value] if type(value) in _CONTAINERS else []
    depth = 1
    while level:
        if depth > max_depth:
            return True
        deeper: list[Any] = []
        for node in level:
            deeper += [child for child in (node.values() if type(node) is dict else node) if type(child) in _CONTAINERS]
        level = deeper
        depth += 1
    return False


def _bad_text(value: Any) -> bool:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if _BAD_CHAR.search(node):
                return True
        elif isinstance(node, dict):
            if _BAD_CHAR.search("".join(node)):
                return True
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def _locate(value: Any, path: str, depth: int, max_depth: int, strings: bool) -> JsonProblem | None:
    """The slow pass, only once a fast one found something: depth-first, so the first problem in
    document order is named. Recursion is bounded by ``max_depth``."""
    if isinstance(value, str):
        match = _BAD_CHAR.search(value) if strings else None
        if match:
            where = path or "the top level"
            return JsonProblem(
                "invalid_json",
                f"Text in the request body cannot contain {_describe(match.group())} (at {where}).",
                path,
            )
        return None
    if not isinstance(value, dict | list):
        return None
    if depth > max_depth:
        return JsonProblem(
            "malformed_json",
            f"The request body is nested more than {max_depth} levels deep (at {path or 'the top level'}).",
            path,
            {"max_depth": max_depth},
        )
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, child in items:
        child_path = _join(path, key)
        if isinstance(key, str) and strings and (match := _BAD_CHAR.search(key)):
            return JsonProblem(
                "invalid_json",
                f"A key in the request body cannot contain {_describe(match.group())} (at {child_path}).",
                child_path,
            )
        problem = _locate(child, child_path, depth + 1, max_depth, strings)
        if problem:
            return problem
    return None


def json_problem(value: Any, *, path: str = "", max_depth: int = MAX_DEPTH, strings: bool = True) -> JsonProblem | None:
    """In a value parsed from JSON: the first string or key holding NUL or an unpaired surrogate,
    or the first place nested deeper than ``max_depth`` (the value itself is level 1); None when
    the value is fine."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (RecursionError, TypeError, ValueError):
        return _problem(value, path, max_depth, strings)
    return _problem_in_text(text, value, path, max_depth, strings)


def _problem_in_text(text: str, value: Any, path: str, max_depth: int, strings: bool) -> JsonProblem | None:
    """Quick checks on the value's JSON text first (regex and counts run in C): most values need
    no walk at all."""
    strings = strings and _suspect(text)
    if not strings and text.count("{") + text.count("[") <= max_depth:
        return None
    return _problem(value, path, max_depth, strings)


def _problem(value: Any, path: str, max_depth: int, strings: bool) -> JsonProblem | None:
    if (strings and _bad_text(value)) or _too_deep(value, max_depth):
        return _locate(value, path, 1, max_depth, strings)
    return None


class StrictJSONParser(parsers.JSONParser):
    """DRF's JSONParser, rejecting text databases cannot store and bodies nested too deep."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        parser_context = parser_context or {}
        encoding = parser_context.get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = codecs.getreader(encoding)(stream).read()
            parse_constant = strict_constant if self.strict else None
            data = json.loads(text, parse_constant=parse_constant)
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from exc
        except RecursionError as exc:
            too_deep = JsonProblem(
                "malformed_json", f"The request body is nested more than {MAX_DEPTH} levels deep.", "", {}
            )
            raise too_deep.as_error() from exc

        items_key = getattr(parser_context.get("view"), "json_items_key", None)
        if items_key and isinstance(data, dict) and isinstance(data.get(items_key), list):
            # The view checks each item (json_problem) and reports a bad one alone.
            problem = json_problem({k: v for k, v in data.items() if k != items_key})
        else:
            problem = _problem_in_text(text, data, "", MAX_DEPTH, strings=True)
        if problem:
            raise problem.as_error()
        # And the body must match the operation's OpenAPI request schema.
        request_body_check(data, parser_context)
        return data

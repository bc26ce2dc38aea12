"""The template sandbox: known Jinja escapes are refused, and time and size are limited."""

from __future__ import annotations

import time

import pytest

from apps.core.sandbox import (
    MAX_OUTPUT_CHARS,
    SandboxError,
    evaluate_expression,
    lenient,
    render_string,
    template_variables,
    time_limit,
)

CONTEXT = {"payload": {"name": "Ada", "items": [1, 2, 3]}, "subscriber": {"first_name": "Grace"}}

ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ().__class__.__base__.__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ self.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ range.__globals__ }}",
    "{{ payload.items.__self__ }}",
    "{{ payload.__class__ }}",
    "{{ payload['__class__'] }}",
    "{{ payload|attr('__class__') }}",
    "{{ '{0.__class__.__mro__}'.format(payload) }}",
    "{{ '{0.__init__.__globals__}'.format(cycler) }}",
    "{{ '{0.__class__}'.format_map({'0': payload}) }}",
    "{{ payload.update({'x': 1}) }}",
    "{{ payload['items'].append(4) }}",
    "{{ payload.pop('name') }}",
    "{{ config }}{{ request.application.__globals__ }}",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_known_escapes_are_refused(source: str) -> None:
    with pytest.raises(SandboxError):
        render_string(source, CONTEXT, strict=True)


@pytest.mark.parametrize("source", ESCAPES)
def test_known_escapes_leak_nothing_when_lenient(source: str) -> None:
    """Non-strict rendering may render unknown names empty, but never reaches Python internals."""
    try:
        output = render_string(source, CONTEXT)
    except SandboxError:
        return
    assert "class" not in output and "module" not in output and "function" not in output, output
    assert CONTEXT["payload"] == {"name": "Ada", "items": [1, 2, 3]}


@pytest.mark.parametrize(
    "source",
    [
        "{{ range(10**10) }}",
        "{{ range(10**10)|list }}",
        "{{ 'x' * 10**9 }}",
        "{{ 2 ** 100000 }}",
        "{{ 'x' * 10000 * 10000 }}",
        "{{ ['x'] * 10000 * 10000 }}",
        "{{ '%0*d' % (10**9, 1) }}",
        "{{ '%01000000000d' % 1 }}",
        "{{ '%(a)01000000000d'|format(a=1) }}",
        "{{ '{:>999999999}'.format(1) }}",
        "{{ '{:{w}}'.format(1, w=10**9) }}",
        "{{ 'x'|center(10**9) }}",
        "{{ 'x'|indent(10**9) }}",
        "{{ 'x'.ljust(10**9) }}",
        "{{ 'x'.zfill(10**9) }}",
        "{{ ('x' * 10000)|replace('', 'y' * 10000) }}",
        "{{ ('x' * 10000).replace('x', 'y' * 10000) }}",
        "{{ (['x' * 10000] * 10000)|join }}",
        "{{ ''.join(['x' * 10000] * 10000) }}",
        "{{ range(10)|slice(10**9)|list }}",
        "{% set a = 'x' * 10000 %}{% set a = a ~ a %}{% set a = a ~ a %}{% set a = a ~ a %}"
        "{% set a = a ~ a %}{% set a = a ~ a %}{% set a = a ~ a %}{{ a }}",
        "{% set a = 'x' * 10000 %}{% set a = a + a + a + a %}{% set a = a + a + a + a %}{% set a = a + a %}{{ a }}",
        "{% for i in range(10000) %}{{ 'x' * 1000 }}{% endfor %}",
        "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    ],
)
def test_resource_exhaustion_is_refused_quickly(source: str) -> None:
    started = time.monotonic()
    with pytest.raises(SandboxError):
        render_string(source, CONTEXT)
    assert time.monotonic() - started < 1.0


def test_output_limit_message() -> None:
    with pytest.raises(SandboxError, match=str(MAX_OUTPUT_CHARS)):
        render_string("{% for i in range(10000) %}{{ 'x' * 1000 }}{% endfor %}", {})


@pytest.mark.parametrize(
    "source",
    [
        "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
        "{% for i in range(10000) %}{% for j in range(10000) %}{% for k in range(10) %}{% endfor %}"
        "{% endfor %}{% endfor %}",
        "{% for i in payload.big %}{% for j in payload.big %}{% endfor %}{% endfor %}",
    ],
)
def test_time_limit_stops_endless_loops(source: str) -> None:
    context = {"payload": {"big": list(range(50_000))}}
    started = time.monotonic()
    with pytest.raises(SandboxError, match=r"longer than 0\.3 seconds"):
        render_string(source, context, seconds=0.3)
    assert time.monotonic() - started < 1.5


def test_time_limit_covers_several_renders() -> None:
    slow = "{% for i in range(10000) %}{% for j in range(100) %}{% endfor %}{% endfor %}"
    with pytest.raises(SandboxError, match="longer than"), time_limit(0.2):
        for _ in range(100):
            render_string(slow, {})


def test_time_limit_on_expressions() -> None:
    with pytest.raises(SandboxError, match="longer than"):
        evaluate_expression("range(10000)|map('string')|map('string')|list|length > 0", {}, seconds=0.0)


def test_ordinary_templates_still_work() -> None:
    source = (
        "{% for item in payload['items'] %}{{ loop.index }}:{{ item }} {% else %}none{% endfor %}"
        "|{% for k, v in payload.items() %}{{ k }}{% endfor %}"
        "|{{ '%.2f' % 3.14159 }}|{{ '{:>4}'.format('a') }}|{{ 'a-b'|replace('-', '+') }}"
        "|{{ payload['items']|join(',') }}|{{ 'x'|center(5) }}|{{ subscriber.first_name|upper }}"
    )
    assert render_string(source, CONTEXT) == "1:1 2:2 3:3 |nameitems|3.14|   a|a+b|1,2,3|  x  |GRACE"
    assert render_string("{% for i in [] %}x{% else %}empty{% endfor %}", {}) == "empty"


def test_strict_names_unknown_variables_in_plain_words() -> None:
    with pytest.raises(SandboxError, match=r"line 2: unknown variable: nothing called “titel”"):
        render_string("Hi\n{{ payload.titel }}", CONTEXT, strict=True)
    with pytest.raises(SandboxError, match=r"line 1: unknown variable “usr”"):
        render_string("{{ usr.name }}", CONTEXT, strict=True)


def test_lenient_data_renders_missing_keys_empty_even_when_strict() -> None:
    context = {"payload": lenient({"a": {"b": 1}}), "subscriber": {"first_name": "G"}}
    assert render_string("[{{ payload.x.y.z }}][{{ payload.a.b }}][{{ payload['q'] }}]", context, strict=True) == (
        "[][1][]"
    )
    with pytest.raises(SandboxError):
        render_string("{{ subscriber.last }}", context, strict=True)
    with pytest.raises(SandboxError):
        render_string("{{ payload.__class__ }}", context, strict=True)


def test_template_variables_hide_the_loop_guard() -> None:
    assert template_variables("{% for i in payload.items %}{{ subscriber.x }}{% endfor %}") == {
        "payload",
        "subscriber",
    }

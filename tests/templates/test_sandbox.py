"""The template sandbox: known Jinja escapes are refused, and time and size are limited.

No test here reads the wall clock: time limits run on a fake clock that advances on every deadline
check (``counting_clock``), and "refused before it was built" is measured in traced bytes."""

from __future__ import annotations

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
from tests.templates.limits import MIB, CountingClock, traced_peak

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
def test_resource_exhaustion_is_refused_before_it_is_built(source: str) -> None:
    error, peak = traced_peak(lambda: render_string(source, CONTEXT))
    assert isinstance(error, SandboxError)
    assert peak < 2 * MIB


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
def test_time_limit_stops_endless_loops(source: str, counting_clock: CountingClock) -> None:
    """The clock moves 1 ms per deadline check: 0.3 s is about 300 checks, whatever the machine."""
    context = {"payload": {"big": list(range(50_000))}}
    with pytest.raises(SandboxError, match=r"longer than 0\.3 seconds"):
        render_string(source, context, seconds=0.3)
    assert 300 <= counting_clock.calls <= 310


def test_time_limit_covers_several_renders(counting_clock: CountingClock) -> None:
    slow = "{% for i in range(10) %}{% for j in range(10) %}{% endfor %}{% endfor %}"
    rendered = 0
    with pytest.raises(SandboxError, match="longer than"), time_limit(0.5):
        for _ in range(100):
            render_string(slow, {})
            rendered += 1
    assert rendered < 10  # one shared 0.5 s (500 checks), not 2 s per render
    assert counting_clock.calls <= 510


def test_time_limit_on_expressions(counting_clock: CountingClock) -> None:
    with pytest.raises(SandboxError, match="longer than"):
        evaluate_expression("range(10000)|map('string')|map('string')|list|length > 0", {}, seconds=0.0)
    assert counting_clock.calls <= 3


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

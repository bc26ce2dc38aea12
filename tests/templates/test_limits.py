"""Regression tests for "Safe to put on the internet": no template or condition can build a huge
value or hold the process inside one operation, and deep nesting is a SandboxError.

Nothing here reads the wall clock: memory is measured in traced bytes, time in deadline checks of
a fake clock (``counting_clock``)."""

from __future__ import annotations

import pytest

from apps.core.sandbox import (
    MAX_INT_BITS,
    MAX_NESTING,
    MAX_TOKENS,
    SandboxError,
    evaluate_expression,
    render_string,
    template_variables,
    validate_expression,
    validate_template,
)
from tests.templates.limits import MIB, CountingClock, traced_peak

BIG = "'x' * 10000 * 20"  # 200,000 characters: under the output limit, so only amplification can fail


@pytest.mark.parametrize(
    "source",
    [
        "{{ (((9**64)**64)**64)**64 }}",  # 28 s through the API before the limits
        "{{ ((((9**64)**64)**64)**64) > 0 }}",
        "{{ (((9**64)**64)**64) > 0 }}",
        "{{ 2 ** 5000 > 0 }}",
        "{{ (2 ** 4000) * (2 ** 4000) > 0 }}",
        "{% set ns = namespace(x=3) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}{% endfor %}{{ ns.x > 0 }}",
        "{% set ns = namespace(x=2 ** 4000) %}{% for i in range(10000) %}{% set ns.x = ns.x + ns.x %}{% endfor %}"
        "{{ ns.x > 0 }}",
        "{{ ('1' * 4000)|int * ('1' * 4000)|int > 0 }}",
        "{{ ('f' * 200000)|int(base=16) > 0 }}",
    ],
)
def test_integers_cannot_grow_past_the_bit_limit(source: str) -> None:
    error, peak = traced_peak(lambda: render_string(source, {}))

    assert isinstance(error, SandboxError)
    assert f"larger than {MAX_INT_BITS} bits" in str(error)
    assert peak < 2 * MIB


def test_conditions_have_the_same_arithmetic_limits() -> None:
    error, peak = traced_peak(lambda: evaluate_expression("(((9**64)**64)**64)**64 > 0", {}))

    assert isinstance(error, SandboxError) and "bits" in str(error)
    assert peak < 2 * MIB


def test_numbers_within_the_limit_still_compute() -> None:
    assert render_string("{{ 2 ** 4000 > 2 ** 3999 }} {{ 10 ** 18 }} {{ -(2 ** 64) }} {{ 7 // 2 }}", {}) == (
        "True 1000000000000000000 -18446744073709551616 3"
    )
    assert render_string("{{ 2.5 ** 3 }} {{ 9 ** 0.5 }} {{ 2 ** -1 }} {{ 1 ** (10 ** 9) }}", {}) == "15.625 3.0 0.5 1"
    assert evaluate_expression("payload.n * 3 > 10", {"payload": {"n": 4}}) is True


@pytest.mark.parametrize(
    "source",
    [
        # repetition and concatenation of strings, bytes, lists
        "{{ ('x'.encode() * 10 ** 8)|length }}",
        f"{{% set s = {BIG} %}}{{{{ ({' ~ '.join(['s'] * 20)})|length }}}}",
        f"{{% set s = {BIG} %}}{{{{ ({' + '.join(['s'] * 12)})|length }}}}",
        f"{{% set l = [{BIG}] * 1000 %}}{{{{ l|length }}}}",
        f"{{% set a = {BIG} %}}{{% set b = [a, a, a, a] %}}{{% set c = [b, b, b, b] %}}{{% set d = [c, c, c, c] %}}"
        "{{ d|length }}",
        f"{{% set a = [{BIG}] %}}{{% set b = {{'k': a, 'l': a, 'm': a}} %}}{{% set c = (b, b, b, b, b, b) %}}"
        "{% set d = (c, c, c, c, c, c) %}{{ d|length }}",
        f"{{% set l = [{BIG}] * 20 %}}{{{{ l }}}}",
        f"{{% set l = [{BIG}] * 20 %}}{{{{ l|string|length }}}}",
        f"{{% set l = [{BIG}] * 20 %}}{{{{ l|tojson|length }}}}",
        "{{ range(1000)|list|tojson(indent=10000)|length }}",
        "{{ (range(10000)|list)|sum(start=[])|length }}",
        # widths, tabs, lines, wrapping
        "{{ ('\\t' * 10000 * 20).expandtabs(1000)|length }}",
        "{{ ('a\\n' * 10000 * 10)|indent(1000)|length }}",
        "{{ ('a\\n' * 10000 * 10)|indent('-' * 1000)|length }}",
        "{{ ('a ' * 10000)|wordwrap(1, wrapstring='y' * 10000)|length }}",
        f"{{{{ ({BIG})|wordwrap(1)|length }}}}",
        "{{ 'x'|truncate(10 ** 30) }}",
        "{{ 'x'|center(10 ** 9) }}",
        "{{ 1.5|round(10 ** 9, 'ceil') }}",
        "{{ 5|round(-10 ** 9) }}",
        "{{ ((1).to_bytes(10 ** 8, 'big'))|length }}",
        # formatting
        f"{{{{ ('{{}}' * 1000).format(*([{BIG}] * 10))|length }}}}",
        f"{{{{ ('{{0}}' * 1000).format({BIG})|length }}}}",
        f"{{{{ ('{{a}}' * 1000).format_map({{'a': {BIG}}})|length }}}}",
        f"{{{{ ('%(a)s' * 1000) % {{'a': {BIG}}} }}}}",
        f"{{{{ ('%(a)s' * 1000)|format(a={BIG}) }}}}",
        "{{ ('%(a).9000f' * 1000) % {'a': 1.5} }}",
        f"{{{{ ('x' * 10000 * 20).translate({{120: {BIG}}})|length }}}}",
        # joins, over lists and generators
        f"{{{{ range(1000)|join({BIG})|length }}}}",
        f"{{{{ ([{BIG}] * 10)|join|length }}}}",
        f"{{{{ ''.join([{BIG}] * 10)|length }}}}",
        f"{{% set s = {BIG} %}}{{{{ ''.join(range(10)|map('replace', '', s))|length }}}}",
        f"{{% set s = {BIG} %}}{{{{ range(10)|map('replace', '', s)|join|length }}}}",
        # output buffers of {% set %} blocks, macros and loops
        f"{{% set s = {BIG} %}}{{% set x %}}{{% for i in range(10000) %}}{{{{ s }}}}{{% endfor %}}{{% endset %}}"
        "{{ x|length }}",
        f"{{% set s = {BIG} %}}{{% macro m() %}}{{% for i in range(10000) %}}{{{{ s }}}}{{% endfor %}}{{% endmacro %}}"
        "{{ m()|length }}",
        "{% set x %}{% for i in range(10000) %}" + "y" * 1000 + "{% endfor %}{% endset %}{{ x|length }}",
    ],
)
def test_amplification_is_refused_before_the_value_is_built(source: str) -> None:
    error, peak = traced_peak(lambda: render_string(source, {}))

    assert isinstance(error, SandboxError), error
    assert peak < 2 * MIB, f"{peak / MIB:.0f} MiB allocated before refusing"


def test_ordinary_templates_are_within_every_limit() -> None:
    source = (
        "{{ range(5)|join(',') }}|{{ [1, [2, 3]]|tojson }}|{{ {'b': 1}|tojson(indent=2) }}|"
        "{{ '%s-%05d'|format('a', 3) }}|{{ '{:>5}|{}'.format('a', [1]) }}|{{ ('ab' * 3) ~ ([0] * 2)|string }}|"
        "{{ 'a b c d'|wordwrap(3) }}|{{ 'x\\ny'|indent(2) }}|{{ 'abcdef'|truncate(5, leeway=0) }}|"
        "{{ '\\tx'.expandtabs(2) }}|{{ 3.14159|round(2) }}|{{ [1, 2, 3]|sum }}|{{ ', '.join(['a', 'b']) }}|"
        "{% for k, v in {'k': 'v'}.items() %}{{ k }}={{ v }}{% endfor %}|{% set p, q = 1, 2 %}{{ p + q }}"
    )
    assert render_string(source, {}) == (
        '0,1,2,3,4|[1, [2, 3]]|{\n  "b": 1\n}|a-00003|    a|[1]|ababab[0, 0]|a b\nc d|x\n  y|ab...|  x|3.14|6|a, b|'
        "k=v|3"
    )


def test_a_large_payload_can_still_be_listed_and_printed_within_the_output_limit() -> None:
    payload = {"items": [{"id": i, "title": f"item {i}"} for i in range(2000)]}
    output = render_string(
        "{{ payload['items']|sort(attribute='id', reverse=true)|map(attribute='title')|first }}"
        "|{{ payload['items']|list|length }}|{{ payload['items'][:2] }}",
        {"payload": payload},
    )
    assert output == "item 1999|2000|[{'id': 0, 'title': 'item 0'}, {'id': 1, 'title': 'item 1'}]"


def test_shift_is_not_an_operator() -> None:
    with pytest.raises(SandboxError, match="unexpected"):
        render_string("{{ 1 << 10 ** 9 }}", {})
    with pytest.raises(SandboxError, match="unexpected"):
        evaluate_expression("1 << 10 ** 9", {})


# --- nesting ----------------------------------------------------------------------------------------

NESTED = {
    "500 parentheses": "(" * 500 + "1" + ")" * 500,
    "3,000 brackets": "[" * 3000 + "]" * 3000,
    "2,000 braces": "{'a': " * 2000 + "1" + "}" * 2000,
    "3,000 nots": "not " * 3000 + "1",
    "9,000 additions": "+".join(["1"] * 9000),
    "5,000 filters": "1" + "|abs" * 5000,
}


@pytest.mark.parametrize("expression", NESTED.values(), ids=NESTED.keys())
def test_deep_expressions_are_sandbox_errors_everywhere(expression: str) -> None:
    template = "{{ " + expression + " }}"
    for check in (
        lambda: render_string(template, {}),
        lambda: validate_template(template),
        lambda: template_variables(template),
        lambda: evaluate_expression(expression, {}),
        lambda: validate_expression(expression),
    ):
        with pytest.raises(SandboxError, match="deep"):
            check()


@pytest.mark.parametrize(
    "source",
    [
        "{% if 1 %}" * 2000 + "x" + "{% endif %}" * 2000,
        "{% for i in [1] %}" * 500 + "x" + "{% endfor %}" * 500,
        "{% set x %}" * 300 + "x" + "{% endset %}" * 300,
        "{% filter upper %}" * 300 + "x" + "{% endfilter %}" * 300,
    ],
)
def test_deep_blocks_are_sandbox_errors(source: str) -> None:
    with pytest.raises(SandboxError, match=f"blocks nest more than {MAX_NESTING} deep"):
        validate_template(source)
    with pytest.raises(SandboxError, match=f"blocks nest more than {MAX_NESTING} deep"):
        render_string(source, {})


def test_nesting_up_to_the_limit_renders() -> None:
    depth = MAX_NESTING
    assert render_string("{{ " + "(" * depth + "1" + ")" * depth + " }}", {}) == "1"
    assert render_string("{{ " + "[" * depth + "]" * depth + "|length }}", {}) == "1"
    blocks = "{% if 1 %}" * (depth - 1) + "{% for i in [1] %}x{% endfor %}" + "{% endif %}" * (depth - 1)
    assert render_string(blocks, {}) == "x"
    flat = "{% set a = 1 %}" * 100 + "{% if 1 %}{% endif %}" * 100 + "{% set b %}x{% endset %}" * 100 + "{{ a }}"
    assert render_string(flat, {}) == "1"


def test_compiling_is_bounded_by_a_token_limit() -> None:
    """Python's compile() of the generated code holds the GIL: a 64 KiB chain of comparisons took
    1.7 s there. At most MAX_TOKENS tokens keep every compile well under that."""
    with pytest.raises(SandboxError, match=f"more than {MAX_TOKENS} tokens"):
        validate_template("{{ " + "<".join(["a"] * 15000) + " }}")
    with pytest.raises(SandboxError, match=f"more than {MAX_TOKENS} tokens"):
        evaluate_expression("<".join(["a"] * 15000), {})
    large = "<p>{{ payload.title }}</p>\n" * 2000 + "{% for i in payload['items'] %}{{ i }}{% endfor %}" * 200
    assert len(render_string(large, {"payload": {"title": "t", "items": [1]}})) == 18200


# --- time ------------------------------------------------------------------------------------------

SLOW = "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}"


def test_the_time_limit_is_counted_not_timed(counting_clock: CountingClock) -> None:
    """2 s at 1 ms per check: the render stops after about 2,000 checks."""
    with pytest.raises(SandboxError, match="longer than 2 seconds"):
        render_string(SLOW, {})
    assert 2000 <= counting_clock.calls <= 2010


def test_each_operator_checks_the_deadline(counting_clock: CountingClock) -> None:
    expression = " + ".join(["1"] * 15)
    assert evaluate_expression(expression, {}) == 15
    assert counting_clock.calls >= 15

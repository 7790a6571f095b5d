"""Rendering: lookup order, context, escaping, the sandbox, one-line subjects."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from notifier.audience import Recipient
from notifier.config import load_config
from notifier.errors import ConfigError, Problem
from notifier.rendering import Renderer, format_date
from notifier.timeline import Event, event
from tests.conftest import Project

URL = "https://notify.pcc.example/unsubscribe/t"


def setup(project: Project, name: str = "opened") -> tuple[Renderer, Event, dict[str, Any]]:
    config = load_config(project.config)
    renderer = Renderer(config)
    consultation = config.consultations["soc-strategy-2019"]
    ev = event(consultation, name, config.tz)
    return renderer, ev, renderer.context(consultation, ev)


def test_the_example_email_is_personal_and_has_text_and_html(project: Project) -> None:
    renderer, ev, ctx = setup(project)
    message = renderer.email(
        ev,
        Recipient("zoe@x.example", "Zoë Ólafsdóttir"),
        context=ctx,
        unsubscribe_url=URL,
    )
    assert "Serious and Organised Crime Strategy" in message.subject
    assert "Zoë Ólafsdóttir" in message.text and "15 August 2019" in message.text
    assert message.html and URL in message.html and URL in message.text


def test_consultation_templates_override_the_generic_ones(project: Project) -> None:
    project.write(
        "templates/soc-strategy-2019/opened/email.j2",
        "{% block subject %}Special{% endblock %}{% block text %}Hi{% endblock %}",
    )
    renderer, ev, ctx = setup(project)
    assert renderer.email(ev, Recipient("a@x.example"), context=ctx, unsubscribe_url=URL).subject == "Special"


def test_html_is_escaped_and_text_is_not(project: Project) -> None:
    project.write(
        "templates/opened/email.j2",
        "{% block subject %}{{ recipient.name }}{% endblock %}"
        "{% block text %}{{ recipient.name }}{% endblock %}"
        "{% block html %}<p>{{ recipient.name }}</p>{% endblock %}",
    )
    renderer, ev, ctx = setup(project)
    message = renderer.email(ev, Recipient("a@x.example", "Tom & <Jerry>"), context=ctx, unsubscribe_url=URL)
    assert message.text.strip() == "Tom & <Jerry>"
    assert message.html is not None and "<p>Tom &amp; &lt;Jerry&gt;</p>" in message.html


def test_sandbox_blocks_attribute_escapes(project: Project) -> None:
    project.write("templates/opened/x.j2", "{{ ''.__class__.__mro__ }}")
    renderer, ev, ctx = setup(project)
    with pytest.raises(ConfigError, match="unsafe"):
        renderer.social(ev, "x", context=ctx)


def test_undefined_names_are_errors_with_the_template_line(project: Project) -> None:
    project.write("templates/opened/x.j2", "line one\n{{ consultation.nope }}")
    renderer, ev, ctx = setup(project)
    with pytest.raises(ConfigError) as caught:
        renderer.social(ev, "x", context=ctx)
    assert str(caught.value).startswith(f"{project.templates}/opened/x.j2:2:")


def test_a_subject_with_a_line_break_is_an_error_not_a_header(project: Project) -> None:
    project.write(
        "templates/opened/email.j2",
        "{% block subject %}Hi{{ recipient.name }}{% endblock %}{% block text %}x{% endblock %}",
    )
    renderer, ev, ctx = setup(project)
    with pytest.raises(ConfigError, match="one line"):
        renderer.email(
            ev,
            Recipient("a@x.example", "A\r\nBcc: victim@x.example"),
            context=ctx,
            unsubscribe_url=URL,
        )


def test_the_date_filter_reads_like_a_letter(project: Project) -> None:
    _, _, ctx = setup(project)
    assert format_date(ctx["consultation"]["closes"]) == "15 August 2019"


EMAIL = (
    "{% block subject %}Hello{% endblock %}\n"  # 1
    "{% block text %}\n"  # 2
    "Dear {{ recipient.name }},\n"  # 3
    "{{ TEXT }}\n"  # 4
    "{% endblock %}\n"  # 5
    "{% block html %}\n"  # 6
    "<p>{{ HTML }}</p>\n"  # 7
    "{% endblock %}\n"  # 8
)


def _email_problem(project: Project, text: str = "", html: str = "") -> Problem:
    project.write("templates/opened/email.j2", EMAIL.replace("{{ TEXT }}", text).replace("{{ HTML }}", html))
    renderer, ev, ctx = setup(project)
    with pytest.raises(ConfigError) as caught:
        renderer.email(ev, Recipient("a@x.example", "A"), context=ctx, unsubscribe_url=URL)
    (problem,) = caught.value.problems
    return problem


@pytest.mark.parametrize(
    ("text", "html", "line", "message"),
    [
        ("{{ consultation.closing_date }}", "", 4, "undefined: 'dict object' has no attribute 'closing_date'"),
        ("", "{{ unsubscribe_link }}", 7, "undefined: 'unsubscribe_link' is undefined"),
        ("{{ consultation.data.nothing | date }}", "", 4, "undefined"),
        ("{{ consultation.title | date }}", "", 4, "template error: the date filter needs a date and time, not str"),
        ("{{ consultation.url | time }}", "", 4, "template error: the time filter needs a date and time, not str"),
        ("{{ 1 // 0 }}", "", 4, "template error: integer division or modulo by zero"),
        ('{% include "footer.j2" %}', "", 4, "included template 'footer.j2' is missing"),
    ],
    ids=["attribute", "html-block", "filter-of-undefined", "date-of-text", "time-of-text", "arithmetic", "include"],
)
def test_an_error_in_an_email_block_names_the_template_line(
    project: Project, text: str, html: str, line: int, message: str
) -> None:
    problem = _email_problem(project, text, html)
    assert (problem.path, problem.line) == (str(project.templates / "opened" / "email.j2"), line)
    assert problem.message.startswith(message), problem.message


def test_an_error_in_an_included_template_names_that_template(project: Project) -> None:
    project.write("templates/footer.j2", "--\n{{ organisation }}\n{{ organisaton }}\n")
    problem = _email_problem(project, '{% include "footer.j2" %}')
    assert (problem.path, problem.line) == (str(project.templates / "footer.j2"), 3)


def test_a_filter_error_in_a_post_is_a_template_error(project: Project) -> None:
    project.write("templates/opened/x.j2", "Closes\n{{ consultation.summary | date }}\n")
    renderer, ev, ctx = setup(project)
    with pytest.raises(ConfigError) as caught:
        renderer.social(ev, "x", context=ctx)
    assert str(caught.value) == (
        f"{project.templates}/opened/x.j2:2: template error: the date filter needs a date and time, not str"
    )


def test_an_unknown_filter_is_a_syntax_error_not_a_crash(project: Project) -> None:
    project.write("templates/opened/x.j2", "Closes\n{{ consultation.closes | daet }}\n")
    renderer = Renderer(load_config(project.config))
    assert [str(p) for p in renderer.check_names("opened/x.j2", frozenset({"consultation"}))] == [
        f"{project.templates}/opened/x.j2:2: template syntax error: no filter named 'daet'"
    ]
    assert renderer.unknown_names("opened/x.j2", frozenset({"consultation"})) == frozenset()


def test_unknown_names_are_the_names_outside_the_context(project: Project) -> None:
    project.write("templates/opened/x.j2", "{{ consultaton.title }} {{ recipient.name }} {{ organisation }}")
    renderer = Renderer(load_config(project.config))
    assert renderer.unknown_names("opened/x.j2", frozenset({"organisation"})) == {"consultaton", "recipient"}


# The sandbox's shortcut for ``dict.key`` must answer exactly as Jinja2's own immutable
# sandbox does: values, undefined errors, unsafe attributes, dict methods, dunders.
SANDBOX_EXPRESSIONS = [
    "{{ d.title }}",
    "{{ d.nested.key }}",
    "{{ d.nope }}",
    "{{ d.nope is defined }}",
    "{{ d.items }}",
    "{{ d['items'] }}",
    "{{ d.items() | list }}",
    "{{ d.keys() | list }}",
    "{{ d.get('title') }}",
    "{{ d.pop('title') }}",
    "{{ d.update({}) }}",
    "{{ d.clear() }}",
    "{{ d.setdefault('x', 1) }}",
    "{{ d.__class__ }}",
    "{{ d.__class__.__mro__ }}",
    "{{ d.__init__ }}",
    "{{ d.__dict__ }}",
    "{{ d.__getitem__('title') }}",
    "{{ d.mro }}",
    "{{ d.__name__ }}",
    "{{ d.__subclasses__ }}",
    "{{ d._private }}",
    "{{ d.__dunder__ }}",
    "{{ d.fmt.format }}",
    "{{ d.title.__class__ }}",
    "{{ d.markup }}",
    "{{ d.html }}",
    "{{ d.when | date }}",
    "{{ d.when | date('%d/%m %H:%M %Z') }}",
    "{{ d.when | time }}",
    "{{ d.other_when | date }}",
    "{{ d.title | date }}",
    "{{ d.nope | date }}",
    "{{ d.self.title }}",
    "{{ (d | attr('title')) }}",
    "{{ d | map(attribute='x') | list }}",
    "{{ [d.nested] | map(attribute='key') | join }}",
    "{{ d.proxy.key }}",
    "{{ d.proxy.__class__ }}",
]


def test_the_sandbox_shortcut_answers_as_jinja_sandbox_does(tmp_path: Path) -> None:
    from datetime import UTC, datetime
    from types import MappingProxyType
    from zoneinfo import ZoneInfo

    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from markupsafe import Markup

    from notifier.rendering import _environment, format_date, format_time

    def outcome(env: jinja2.Environment, source: str, variables: dict[str, object]) -> str:
        try:
            answer = "ok: " + env.from_string(source).render(variables)
        except Exception as exc:  # the same error, type and text, is the same answer
            answer = f"error: {type(exc).__name__}: {exc}"
        # The sandbox wraps str.format in a fresh function per lookup: its repr's address is
        # whatever memory was free, so compare answers without addresses.
        return re.sub(r" at 0x[0-9a-f]+", " at 0x…", answer)

    london = datetime(2019, 8, 15, 23, 59, tzinfo=ZoneInfo("Europe/London"))
    d: dict[str, object] = {
        "title": "Tom & <Jerry>",
        "nested": {"key": "v"},
        "items": "an item called items",
        "_private": 1,
        "__dunder__": 2,
        "fmt": "{0.__class__}",
        "markup": Markup("<b>ok</b>"),
        "html": "<i>",
        "when": london,
        "other_when": london.astimezone(UTC),
        "proxy": MappingProxyType({"key": "p"}),
    }
    d["self"] = d
    for autoescape in (False, True):
        ours = _environment(tmp_path, autoescape=autoescape)
        stock = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=autoescape)
        stock.filters["date"], stock.filters["time"] = format_date, format_time
        for source in SANDBOX_EXPRESSIONS:
            for _ in range(2):  # the second time the date filter answers from memory
                assert outcome(ours, source, {"d": d}) == outcome(stock, source, {"d": d}), source
    assert format_date(london) == "15 August 2019" and format_date(d["other_when"]) == "15 August 2019"  # type: ignore[arg-type]
    assert format_date(london, "%H:%M") == "23:59" and format_date(d["other_when"], "%H:%M") == "22:59"  # type: ignore[arg-type]


def test_email_blocks_see_jinja_globals_and_keep_their_own_assignments(project: Project) -> None:
    project.write(
        "templates/opened/email.j2",
        "{% block subject %}{% set n = 3 %}{% for i in range(n) %}{{ i }}{% endfor %}{% endblock %}"
        "{% block text %}{% set ns = namespace(x=1) %}{{ ns.x }}{{ n is defined }}{% endblock %}"
        "{% block html %}{{ lipsum is defined }}{{ n is defined }}{% endblock %}",
    )
    renderer, ev, ctx = setup(project)
    for _ in range(2):  # the second time with the template's globals already copied
        message = renderer.email(ev, Recipient("a@x.example"), context=ctx, unsubscribe_url=URL)
        assert (message.subject, message.text, message.html) == ("012", "1False\n", "TrueFalse\n")


def _refused(project: Project, template: str, *, channel: str = "x") -> tuple[Problem, float, int]:
    """Render ``template`` as the opened post (or e-mail text): the one problem, the seconds
    it took and how much the process's peak memory grew (kB)."""
    import resource
    import time

    if channel == "email":
        body = "{% block subject %}Hi{% endblock %}\n{% block text %}\nDear all,\n" + template + "\n{% endblock %}\n"
        project.write("templates/opened/email.j2", body)
    else:
        project.write("templates/opened/x.j2", "The {{ consultation.title }}\n" + template + "\n")
    renderer, ev, ctx = setup(project)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        if channel == "email":
            renderer.email(ev, Recipient("a@x.example"), context=ctx, unsubscribe_url=URL)
        else:
            renderer.social(ev, "x", context=ctx)
    took = time.monotonic() - started
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
    [problem] = caught.value.problems
    return problem, took, grew


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ 'x' * 10**10 }}", "str * 10,000,000,000 would make 10,000,000,000 characters"),
        ("{{ 'x'|center(10**9) }}", "center(1,000,000,000) would make"),
        ("{{ 'x'.ljust(10**9) }}", "ljust(1,000,000,000) would make"),
        ("{{ '{:>1000000000}'.format('x') }}", "this format would make 1,000,000,000"),
        ("{{ '%1000000000d' % 1 }}", "this format would make 1,000,000,000"),
        ("{{ '%*d' % (1000000000, 1) }}", "this format would make 1,000,000,000"),
        ("{{ ('x' * 5000000)|replace('x', 'xxxxx') }}", "this replace would make 25,000,000"),
        ("{{ ('x' * 9000)|join('y' * 5000) }}", "this join would make"),
        ("{{ [[1] * 9000] * 9000 }}", "list * 9,000 would make"),
        ("{{ [1]|batch(10**9, 'x')|list }}", "batch(1,000,000,000) would make"),
        ("{{ lipsum(10**6) }}", "lipsum would make"),
        (
            "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
            "this step would make",
        ),
        (
            "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s %}{{ ns.s }}{{ ns.s }}{% endset %}"
            "{% endfor %}",
            "this step would make",
        ),
        ("{{ range(100000)|map('center', 100000)|join }}", "center(100,000) would make"),
    ],
)
def test_a_template_cannot_make_a_value_too_big_for_the_machine(project: Project, template: str, message: str) -> None:
    problem, took, grew = _refused(project, template)
    assert problem.path.endswith("templates/opened/x.j2") and problem.line == 2, problem
    assert problem.message.startswith("template over its limits: ") and message in problem.message, problem
    assert grew < 300_000, f"the process grew by {grew:,} kB on the way"  # 'x' * 10**10 took 19.9 GB
    assert took < 30


def test_nested_loops_stop_at_the_time_budget_with_the_line(project: Project) -> None:
    from notifier.sandbox import TIME_BUDGET

    problem, took, _ = _refused(
        project,
        "{% for i in range(100000) %}\n{% for j in range(100000) %}{% endfor %}\n{% endfor %}",
        channel="email",
    )
    assert problem.path.endswith("templates/opened/email.j2") and problem.line in (4, 5), problem
    assert f"the template ran for over {TIME_BUDGET:g} s" in problem.message, problem
    assert took < TIME_BUDGET + 20  # the same loops ran past 60 s before there was a budget


def test_output_too_long_is_stopped_as_it_streams_at_the_line_that_made_it(project: Project) -> None:
    problem, took, grew = _refused(
        project,
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}",
        channel="email",
    )
    assert problem.path.endswith("templates/opened/email.j2") and problem.line == 4, problem
    assert "the output is over 1,000,000 characters" in problem.message, problem
    assert grew < 300_000 and took < 30  # 8.5 GB and over 60 s before


def test_ordinary_templates_render_the_same_within_the_limits(project: Project) -> None:
    project.write(
        "templates/opened/x.j2",
        "{% for w in ['a', 'b'] * 40 %}{{ w ~ loop.index }}{% endfor %} {{ '-' * 10 }} {{ '%05d' % 42 }} "
        "{{ '{:>6}'.format('r') }} {{ 'ab'|center(6) }}|{{ range(3)|join(',') }} {{ 2 ** 10 }}",
    )
    renderer, ev, ctx = setup(project)
    text = renderer.social(ev, "x", context=ctx)
    expected = "".join(f"{w}{i}" for i, w in enumerate(["a", "b"] * 40, 1))
    assert text == f"{expected} ---------- 00042      r   ab  |0,1,2 1024"

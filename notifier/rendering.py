"""Sandboxed Jinja2: (template, event, recipient) -> what is sent.

Templates live in ``templates/<consultation>/<event>/`` or ``templates/<event>/``:

* ``email.j2`` with blocks ``subject`` and ``text`` (required) and ``html`` (optional);
* ``social.j2`` for every social account, overridden by ``<platform>.j2``.

They run in Jinja2's immutable sandbox with ``StrictUndefined``: an unknown name is an
error, never an empty string. The sandbox (:mod:`notifier.sandbox`) also bounds each
render's time, output and the size of the values it makes; for ``validate`` a recording
undefined reports every unknown name in a template at once. The ``html`` block is auto-escaped, ``subject`` and ``text``
are not (they are not HTML). A subject is one line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from jinja2 import meta
from jinja2.runtime import Context

from notifier import sandbox
from notifier.audience import Recipient
from notifier.config import Config, Consultation
from notifier.errors import FilterError, Problem, RenderError, TemplateLimitError
from notifier.memo import ByIdentity
from notifier.moments import normalise
from notifier.sandbox import Sandbox
from notifier.timeline import EXTENDED, Event, days_left

EMAIL_NAMES = frozenset(
    {"consultation", "event", "recipient", "organisation", "unsubscribe_url", "days_left", "previous_closes"}
)
SOCIAL_NAMES = frozenset({"consultation", "event", "organisation", "days_left", "previous_closes"})


@dataclass(frozen=True, slots=True)
class EmailContent:
    """A rendered e-mail, before it becomes MIME."""

    subject: str
    text: str
    html: str | None


def format_date(value: datetime, fmt: str | None = None) -> str:
    """The ``date`` filter: ``15 August 2019`` (or ``strftime`` with ``fmt``)."""
    return _remembered(_format_date, value, fmt)


def format_time(value: datetime) -> str:
    """The ``time`` filter: ``9am``, ``11:59pm``."""
    return _remembered(_format_time, value, None)


def _format_date(value: Any, fmt: str | None) -> str:
    if isinstance(value, jinja2.Undefined):
        return str(value)  # StrictUndefined raises, naming what is undefined; validate's records it
    value = _moment(value, "date")
    return value.strftime(fmt) if fmt else f"{value.day} {value:%B %Y}"


def _format_time(value: Any, _fmt: None) -> str:
    if isinstance(value, jinja2.Undefined):
        return str(value)
    value = _moment(value, "time")
    hour = value.hour % 12 or 12
    minutes = f":{value.minute:02d}" if value.minute else ""
    return f"{hour}{minutes}{'am' if value.hour < 12 else 'pm'}"


# Every e-mail of an occurrence formats the same few datetimes of its context (the same
# objects: the context is built once per occurrence), four times an e-mail in the example.
_FORMATTED: ByIdentity[str] = ByIdentity()


def _remembered(how: Any, value: Any, fmt: str | None) -> str:
    """``how(value, fmt)``, remembered for a plain ``datetime`` and a ``str`` or no format."""
    if type(value) is not datetime or not (fmt is None or type(fmt) is str):
        return str(how(value, fmt))
    text = _FORMATTED.get(value, (how, fmt))
    return text if text is not None else _FORMATTED.put(value, how(value, fmt), (how, fmt))


def _moment(value: Any, filter_name: str) -> datetime:
    """``value``, if it is a datetime; otherwise an error the template's author can act on."""
    if not isinstance(value, datetime):
        raise FilterError(f"the {filter_name} filter needs a date and time, not {type(value).__name__}")
    return value


def _environment(templates: Path, *, autoescape: bool, record_undefined: bool = False) -> Sandbox:
    env = Sandbox(
        loader=jinja2.FileSystemLoader(str(templates)),
        undefined=sandbox.RecordingUndefined if record_undefined else jinja2.StrictUndefined,
        autoescape=autoescape,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        auto_reload=False,
    )
    env.filters["date"] = format_date
    env.filters["time"] = format_time
    return env


class Renderer:
    """Renders the templates of one config. Build once per process; it caches templates."""

    def __init__(self, config: Config, *, record_undefined: bool = False) -> None:
        """``record_undefined`` (for ``validate``): a render goes on past an undefined name
        or attribute and then reports every one it met, rather than stopping at the first."""
        self.config = config
        self.tz: ZoneInfo = config.tz
        self.templates = Path(config.templates)
        self._record = record_undefined
        self._plain = _environment(self.templates, autoescape=False, record_undefined=record_undefined)
        self._html = _environment(self.templates, autoescape=True, record_undefined=record_undefined)
        self._names: dict[tuple[str, str, str], str | None] = {}
        self._globals: ByIdentity[dict[str, Any]] = ByIdentity()

    # -- lookup -------------------------------------------------------------

    def find(self, consultation_id: str, event: str, *filenames: str) -> str | None:
        """The first template that exists, consultation folder first: a loader name or None."""
        key = (consultation_id, event, "|".join(filenames))
        if key not in self._names:
            found = None
            for folder in (f"{consultation_id}/{event}", event):
                for filename in filenames:
                    if (self.templates / folder / filename).is_file():
                        found = f"{folder}/{filename}"
                        break
                if found:
                    break
            self._names[key] = found
        return self._names[key]

    def email_template(self, event: Event) -> str:
        """The loader name of the e-mail template for ``event``; RenderError if none."""
        name = self.find(event.consultation_id, event.name, "email.j2")
        if name is None:
            raise RenderError([self._missing(event, "email.j2")])
        return name

    def social_template(self, event: Event, platform: str) -> str:
        """The loader name of the post template for ``platform``; RenderError if none."""
        name = self.find(event.consultation_id, event.name, f"{platform}.j2", "social.j2")
        if name is None:
            raise RenderError([self._missing(event, f"{platform}.j2 or social.j2")])
        return name

    def _missing(self, event: Event, what: str) -> Problem:
        return Problem.at(
            self.templates,
            None,
            f"no template {what} for {event.key}: add {self.templates}/{event.name}/{what.split()[0]} "
            f"or {self.templates}/{event.consultation_id}/{event.name}/{what.split()[0]}",
        )

    # -- context ------------------------------------------------------------

    def context(self, consultation: Consultation, event: Event, at: datetime | None = None) -> dict[str, Any]:
        """What every template sees, less the recipient."""
        moment = normalise(at or event.at or consultation.opens, self.tz)
        context = {
            "consultation": {
                "id": consultation.id,
                "title": consultation.title,
                "url": consultation.url,
                "summary": consultation.summary,
                "opens": normalise(consultation.opens, self.tz),
                "closes": normalise(consultation.closes, self.tz),
                "contact": consultation.contact,
                "data": consultation.data,
            },
            "event": {"name": event.name, "at": moment},
            "organisation": self.config.organisation,
            "days_left": days_left(consultation, moment, self.tz),
        }
        if event.name == EXTENDED:  # the date it moved from: the occurrence's own when it fires (Runtime.prepare)
            context["previous_closes"] = normalise(consultation.closes, self.tz)
        return context

    # -- rendering ----------------------------------------------------------

    def email(
        self,
        event: Event,
        recipient: Recipient,
        *,
        context: Mapping[str, Any],
        unsubscribe_url: str,
    ) -> EmailContent:
        """Render the e-mail of ``event`` for ``recipient``; RenderError names file and line."""
        name = self.email_template(event)
        variables = {**context, "recipient": recipient.context(), "unsubscribe_url": unsubscribe_url}
        plain = self._template(self._plain, name)
        if "subject" not in plain.blocks or "text" not in plain.blocks:
            raise RenderError([Problem.at(self.templates / name, None, "email.j2 needs blocks 'subject' and 'text'")])
        rich = self._template(self._html, name) if "html" in plain.blocks else None
        limits = sandbox.begin(record_undefined=self._record)
        try:
            # One context for the blocks of one template, as Template.render would use.
            shared = self._context(plain, variables)
            subject = _render_block(plain, "subject", shared).strip()
            text = _render_block(plain, "text", shared).strip() + "\n"
            html = None if rich is None else _render_block(rich, "html", self._context(rich, variables)).strip() + "\n"
        except Exception as exc:  # any error a template causes, a filter's FilterError say, is the template's
            raise RenderError(
                [*self._undefined(sandbox.end(limits), name), template_problem(exc, self.templates, name)]
            ) from None
        recorded = sandbox.end(limits)
        if recorded:
            raise RenderError(self._undefined(recorded, name))
        if "\r" in subject or "\n" in subject:
            raise RenderError(
                [Problem.at(self.templates / name, None, f"the subject must be one line, got {subject!r}")]
            )
        if not subject:
            raise RenderError([Problem.at(self.templates / name, None, "the subject is empty")])
        return EmailContent(subject=subject, text=text, html=html)

    def social(self, event: Event, platform: str, *, context: Mapping[str, Any]) -> str:
        """Render the post of ``event`` for an account on ``platform``."""
        name = self.social_template(event, platform)
        template = self._template(self._plain, name)
        limits = sandbox.begin(record_undefined=self._record)
        try:
            text = _render(template, template.new_context(dict(context)))
        except Exception as exc:  # as in email()
            raise RenderError(
                [*self._undefined(sandbox.end(limits), name), template_problem(exc, self.templates, name)]
            ) from None
        recorded = sandbox.end(limits)
        if recorded:
            raise RenderError(self._undefined(recorded, name))
        return "\n".join(line.rstrip() for line in text.strip().splitlines())

    def _undefined(self, recorded: list[tuple[str | None, int | None, str]], name: str) -> list[Problem]:
        """The undefined names and attributes a recording render met, once each, in order."""
        found = {
            (str(_under(path, self.templates) or self.templates / name), line, f"undefined: {message}"): None
            for path, line, message in recorded
        }
        return [Problem.at(path, line, message) for path, line, message in found]

    def _context(self, template: jinja2.Template, variables: Mapping[str, Any]) -> Context:
        """``template.new_context(variables)``: the same context, made faster.

        Jinja merges the template's globals (a ``ChainMap`` of the environment's, slow to
        iterate) into a new dict on every call. Here they are copied once per template and
        merged with ``variables`` into a new dict, passed as ``shared`` so Jinja uses it as
        it is. Nothing changes an environment's globals after :func:`_environment`.
        """
        found = self._globals.get(template)
        if found is None:
            found = self._globals.put(template, dict(template.globals))
        return template.new_context({**found, **variables}, shared=True)

    def _template(self, env: Sandbox, name: str) -> jinja2.Template:
        """Template ``name`` compiled in ``env``; RenderError if it does not compile."""
        try:
            return env.get_template(name)
        except jinja2.TemplateError as exc:
            raise RenderError([template_problem(exc, self.templates, name)]) from None

    # -- checks -------------------------------------------------------------

    def check_names(self, name: str, allowed: frozenset[str]) -> list[Problem]:
        """Compile template ``name``; report syntax errors and names outside the context."""
        path = self.templates / name
        try:
            source, undeclared = self._undeclared(name)
        except jinja2.TemplateSyntaxError as exc:  # also an unknown filter or test
            return [template_problem(exc, self.templates, name)]
        except (OSError, UnicodeDecodeError) as exc:
            return [Problem.at(path, None, f"cannot read: {exc}")]
        problems = []
        for unknown in sorted(undeclared - allowed):
            line = _first_line(source, unknown)
            hint = " (recipient is only known in e-mails)" if unknown == "recipient" else ""
            problems.append(
                Problem.at(path, line, f"unknown name {unknown!r}{hint}; known: {', '.join(sorted(allowed))}")
            )
        return problems

    def unknown_names(self, name: str, allowed: frozenset[str]) -> frozenset[str]:
        """The names template ``name`` uses that are not in ``allowed`` (none if it does not
        compile or cannot be read: :meth:`check_names` says why)."""
        try:
            return self._undeclared(name)[1] - allowed
        except (jinja2.TemplateSyntaxError, OSError, UnicodeDecodeError):
            return frozenset()

    def _undeclared(self, name: str) -> tuple[str, frozenset[str]]:
        """The source of template ``name`` and the names it uses without defining them."""
        path = self.templates / name
        source = path.read_text(encoding="utf-8")
        ast = self._plain.parse(source, name, str(path))
        return source, frozenset(meta.find_undeclared_variables(ast))  # compiles: may raise too


def _render_block(template: jinja2.Template, block: str, context: Context) -> str:
    """One block of ``template`` in ``context`` (from ``template.new_context``), streamed
    within the render's limits (:func:`sandbox.stream`). Errors are raised as ``render``
    raises them, with the traceback rewritten to point at template lines rather than the
    compiled Python."""
    try:
        return sandbox.stream(template.blocks[block](context))
    except Exception as exc:
        if isinstance(exc, TemplateLimitError) and exc.line is not None:
            raise  # stopped between the template's steps: it knows its line
        template.environment.handle_exception()


def _render(template: jinja2.Template, context: Context) -> str:
    """The whole of ``template`` in ``context``, as :func:`_render_block` renders a block."""
    try:
        return sandbox.stream(template.root_render_func(context))
    except Exception as exc:
        if isinstance(exc, TemplateLimitError) and exc.line is not None:
            raise  # stopped between the template's steps: it knows its line
        template.environment.handle_exception()


def _first_line(source: str, name: str) -> int | None:
    pattern = re.compile(rf"\b{re.escape(name)}\b")
    for number, line in enumerate(source.splitlines(), 1):
        if ("{{" in line or "{%" in line) and pattern.search(line):
            return number
    return None


def template_problem(exc: Exception, templates: Path, name: str) -> Problem:
    """An error raised compiling or rendering template ``name``, as ``PATH:LINE: message``.

    A syntax error knows its file and line. Any other error is placed at the innermost
    template line of its traceback (which Jinja rewrites from the compiled code to the
    templates), so an error inside an included template names that template.
    """
    if isinstance(exc, jinja2.TemplateSyntaxError):  # also TemplateAssertionError: an unknown filter
        path = _under(exc.filename, templates) or templates / name
        return Problem.at(path, exc.lineno, f"template syntax error: {_sentence(exc.message or str(exc))}")
    path, line = _traceback_place(exc.__traceback__, templates) or (templates / name, None)
    if isinstance(exc, TemplateLimitError):
        if exc.line is not None:
            path, line = _under(exc.path, templates) or path, exc.line
        return Problem.at(path, line, f"template over its limits: {exc}")
    if isinstance(exc, jinja2.TemplateNotFound):
        missing = str(exc.name)
        return Problem.at(path, line, f"included template {missing!r} is missing: there is no {templates / missing}")
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return Problem.at(path, line, f"unsafe template: {exc}")
    if isinstance(exc, jinja2.UndefinedError):
        return Problem.at(path, line, f"undefined: {exc.message}")
    return Problem.at(path, line, f"template error: {exc}")


def _sentence(message: str) -> str:
    """Jinja's ``No filter named 'daet'.`` as ``no filter named 'daet'``, to follow a colon."""
    message = message.strip().removesuffix(".")
    return message[:1].lower() + message[1:]


def _under(filename: str | None, templates: Path) -> Path | None:
    """``filename`` as a path under ``templates`` (as the user wrote that), or None if outside."""
    if not filename:
        return None
    relative = os.path.relpath(os.path.normpath(filename), os.path.normpath(templates))
    outside = relative == os.pardir or relative.startswith(os.pardir + os.sep)
    return None if outside else templates / relative


def _traceback_place(tb: TracebackType | None, templates: Path) -> tuple[Path, int] | None:
    """The innermost frame of ``tb`` that runs a template under ``templates``: file and line."""
    place = None
    while tb is not None:
        path = _under(tb.tb_frame.f_code.co_filename, templates)
        if path is not None:
            place = (path, tb.tb_lineno)
        tb = tb.tb_next
    return place

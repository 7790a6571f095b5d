"""One error tree: every ``raise`` under ``notifier/`` names a class of :mod:`notifier.errors`
(or a builtin for a caller's programming error, or a foreign error a library's protocol asks
for, each listed below with its reason), and the tree drawn in that module's docstring is the
classes as they are.

The checks read the source (the AST of every module), so a new ``raise ValueError(...)`` for
bad input fails here before a user meets it as a traceback instead of ``PATH:LINE: message``.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import re
import smtplib
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.exceptions import HTTPException

import notifier
import notifier.errors
from notifier.config import Settings
from notifier.errors import (
    DeliveryError,
    InvalidValueError,
    NotifierError,
    PermanentDeliveryError,
    TransientDeliveryError,
    UsageError,
)
from notifier.service import Service
from tests.conftest import Project, SmtpServer

PACKAGE = Path(notifier.__file__).parent
ZOE = "zoe.olafsdottir@shropshire-csp.example"

#: Builtins any module may raise: neither is a failure of the input.
ALLOWED_ANYWHERE: dict[type[BaseException], str] = {
    NotImplementedError: "a method a subclass must override",
    SystemExit: "ends the process (the SIGTERM handler): an exit, not an error",
    HTTPException: "a web handler's HTTP answer (403, 404): the app's exception handler renders it as a page",
}

_SMTP_LAYER = (
    "the SMTP layer raises what smtplib and sockets raise (transaction() stands in for "
    "conn.sendmail), so the channel's one translate() turns smtplib's failures and these alike "
    "into a DeliveryError at the boundary; none leaves the channel"
)

#: Raise sites of anything else, as ``(function's qualified name, what the raise names)``:
#: keyed by function rather than module so a module split does not invalidate an entry.
ALLOWED_AT: dict[tuple[str, str], str] = {
    # A caller's programming error, said with the builtin for it (no user input reaches these).
    ("UTCDateTime.process_bind_param", "ValueError"): "our code handed the record a naive datetime",
    ("state", "TypeError"): "a Starlette app not made by create_app",
    ("compose", "ValueError"): "a caller's programming error: a per-recipient channel composed with no recipient",
    # A library's protocol: the library expects its own exception there.
    (
        "_Loader._count_alias",
        "yaml.composer.ComposerError",
    ): "raised inside PyYAML's composer, which reports it at its line as its own errors",
    ("declare.deliver", "dramatiq.Retry"): "how an actor asks Dramatiq to run its message again later",
    (
        "Recorder.flush",
        "errors[0]",
    ): "what Redis answered a pipelined command, re-raised once every reply is read, as redis-py raises it",
    ("transaction", "smtplib.SMTPDataError"): _SMTP_LAYER,
    ("transaction", "_refused"): _SMTP_LAYER,
    ("transactions", "smtplib.SMTPDataError"): _SMTP_LAYER,
    ("transactions", "refusal"): _SMTP_LAYER,
    ("SmtpEngine._connection", "TimeoutError"): _SMTP_LAYER,
    ("SmtpEngine._open", "ConnectionError"): _SMTP_LAYER,
    ("SmtpEngine._open", "TimeoutError"): _SMTP_LAYER,
    ("SmtpEngine._open", "smtplib.SMTPNotSupportedError"): _SMTP_LAYER,
}


@dataclass(frozen=True)
class RaiseSite:
    """One ``raise X`` / ``raise X(...)`` in notifier's source."""

    path: Path
    line: int
    function: str  # qualified: Class.method, outer.inner, or "" at module level
    written: str  # X as written
    node: ast.Raise
    scope: ast.AST  # the innermost function (or the module) it is in

    def __str__(self) -> str:
        return f"{self.path.relative_to(PACKAGE.parent)}:{self.line}: raise {self.written} in {self.function}"


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _raise_sites(path: Path) -> Iterator[RaiseSite]:
    """Every ``raise`` that names what it raises (a bare ``raise`` re-raises what was caught)."""

    def walk(node: ast.AST, names: tuple[str, ...], scope: ast.AST) -> Iterator[RaiseSite]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                inner = child if not isinstance(child, ast.ClassDef) else scope
                yield from walk(child, (*names, child.name), inner)
                continue
            if isinstance(child, ast.Raise) and child.exc is not None:
                named = child.exc.func if isinstance(child.exc, ast.Call) else child.exc
                yield RaiseSite(path, child.lineno, ".".join(names), ast.unparse(named), child, scope)
            yield from walk(child, names, scope)

    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    yield from walk(tree, (), tree)


def _lookup(module: types.ModuleType, dotted: str) -> Any:
    """``dotted`` (``name`` or ``module.attr``) in ``module``'s globals, or None."""
    first, *rest = dotted.split(".")
    found: Any = getattr(module, first, getattr(builtins, first, None))
    for part in rest:
        found = getattr(found, part, None)
    return found


def _returned(function: Any) -> list[Any]:
    """The classes a function's return annotation names (each member of a union)."""
    hint = typing.get_type_hints(function).get("return")
    return list(typing.get_args(hint)) if typing.get_origin(hint) in (typing.Union, types.UnionType) else [hint]


def _raised(site: RaiseSite, module: types.ModuleType) -> list[Any]:
    """What ``site`` raises, as classes where they can be told; None for what cannot."""
    exc = site.node.exc
    assert exc is not None
    named = exc.func if isinstance(exc, ast.Call) else exc
    if not isinstance(named, ast.Name | ast.Attribute):
        return [None]
    found = _lookup(module, ast.unparse(named))
    if isinstance(found, type):
        return [found]
    if callable(found) and isinstance(exc, ast.Call):
        return _returned(found)  # raise make_error(...): what the maker says it returns
    if found is None and isinstance(named, ast.Name):
        return _bound(named.id, site.scope, module)  # raise exc: what the name was bound to
    return [None]


def _bound(name: str, scope: ast.AST, module: types.ModuleType) -> list[Any]:
    """What a local name is bound to in ``scope``: by ``name = f(...)``, ``except X as name``
    or ``from M import name``."""
    kinds: list[Any] = []
    for node in ast.walk(scope):
        if isinstance(node, ast.ImportFrom) and node.module and any(a.name == name for a in node.names):
            kinds.append(getattr(importlib.import_module(node.module), name, None))
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            value = node.value
            maker = _lookup(module, ast.unparse(value.func)) if isinstance(value, ast.Call) else None
            kinds += _returned(maker) if callable(maker) and not isinstance(maker, type) else [maker]
        elif isinstance(node, ast.ExceptHandler) and node.name == name and node.type is not None:
            caught = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
            kinds += [_lookup(module, ast.unparse(each)) for each in caught]
    return kinds or [None]


def _ours(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, NotifierError) and kind.__module__ == "notifier.errors"


def _all_sites() -> list[tuple[RaiseSite, list[Any]]]:
    found = []
    for path in _modules():
        sites = list(_raise_sites(path))
        if sites:
            module = importlib.import_module(_module_name(path))
            found += [(site, _raised(site, module)) for site in sites]
    return found


SITES = _all_sites()


def test_every_raise_in_notifier_is_an_error_of_the_tree_or_a_listed_exception() -> None:
    wrong = []
    for site, kinds in SITES:
        if (site.function, site.written) in ALLOWED_AT or all(_ours(k) or k in ALLOWED_ANYWHERE for k in kinds):
            continue
        wrong.append(f"{site} (raises {', '.join(getattr(k, '__name__', '?') for k in kinds)})")
    assert not wrong, "raise a notifier.errors class (or list the site, with why):\n" + "\n".join(wrong)


def test_every_listed_exception_is_still_raised_where_it_is_listed() -> None:
    raised = {(site.function, site.written) for site, _ in SITES}
    assert not sorted(set(ALLOWED_AT) - raised), "stale entries in ALLOWED_AT"


def test_the_check_tells_what_each_raise_raises_however_it_is_written() -> None:
    """A class, a builtin, a function that makes the error, a name bound to one: each is
    resolved to the classes it raises, so the check is not fooled by spelling."""
    by_site = {(site.function, site.written): kinds for site, kinds in SITES}
    assert by_site[("parse_received", "InvalidValueError")] == [InvalidValueError]
    assert by_site[("Config.consultation", "UsageError")] == [UsageError]  # imported in the function
    assert by_site[("SmtpEngine._open", "TimeoutError")] == [TimeoutError]
    made: set[type[BaseException]] = {TransientDeliveryError, PermanentDeliveryError}
    assert set(by_site[("SmtpEngine.send", "translate")]) == made  # what the maker returns
    assert by_site[("FacebookChannel.send", "exc")] == [DeliveryError]  # exc = http.error_for(...)
    assert by_site[("transaction", "_refused")] == [smtplib.SMTPException]
    assert by_site[("Recorder.flush", "errors[0]")] == [None]  # cannot be told: listed by hand


def test_no_exception_class_is_defined_outside_notifier_errors() -> None:
    outside = []
    for path in _modules():
        if path == PACKAGE / "errors.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
        if not classes:
            continue
        module = importlib.import_module(_module_name(path))
        outside += [
            f"{path.name}: {name}"
            for name in classes
            if isinstance(getattr(module, name), type) and issubclass(getattr(module, name), BaseException)
        ]
    assert not outside


def _tree() -> dict[str, str | None]:
    """The docstring's tree as ``{class name: its parent's name}`` (None for the root)."""
    doc = notifier.errors.__doc__ or ""
    block = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]  # the literal block after "::"
    parents: dict[str, str | None] = {}
    stack: list[str] = []
    for line in block.splitlines():
        drawn = re.match(r"    (?P<branches>(?:│   |    )*(?:├── |└── )?)(?P<name>[A-Z]\w+) +\S", line)
        assert drawn, f"not a line of the tree, or no description: {line!r}"
        depth = len(drawn["branches"]) // 4
        del stack[depth:]
        parents[drawn["name"]] = stack[-1] if stack else None
        stack.append(drawn["name"])
    return parents


def _classes() -> dict[str, type[BaseException]]:
    return {
        name: value
        for name, value in vars(notifier.errors).items()
        if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == "notifier.errors"
    }


def test_the_docstring_draws_every_error_class_under_its_parent_and_nothing_else() -> None:
    tree, classes = _tree(), _classes()
    assert sorted(tree) == sorted(classes)
    for name, cls in classes.items():
        ours: list[str | None] = [base.__name__ for base in cls.__bases__ if base.__module__ == "notifier.errors"]
        assert [tree[name]] == (ours or [None]), f"{name} is drawn under {tree[name]}, but derives from {ours}"


def test_a_template_that_fails_for_one_recipient_fails_that_delivery_once_and_the_rest_go_out(
    project: Project, redis_url: str, smtp_server: SmtpServer
) -> None:
    """A render failure at delivery time (a RenderError, here from a FilterError) fails the
    delivery permanently, as ``cannot render: PATH:LINE: message``, and is not retried."""
    template = project.templates / "opened" / "email.j2"
    source = template.read_text(encoding="utf-8")
    template.write_text(
        source.replace(
            "{% block text %}",
            "{% block text %}{% if recipient.email == '" + ZOE + "' %}{{ recipient.name | date }}{% endif %}",
            1,
        ),
        encoding="utf-8",
    )
    project.env.update({"NOTIFIER_REDIS_URL": redis_url, "NOTIFIER_SMTP_URL": smtp_server.url})
    service = Service(Settings.from_env(project.env))
    try:
        occurrence = service.fire("soc-strategy-2019", "opened")
        assert occurrence is not None
        with service.worker(threads=2):
            progress = service.wait(occurrence, timeout=60)
        assert progress.finished, progress
        record = service.ledger.record(occurrence, "email", ZOE)
    finally:
        service.close()
    assert record is not None and (record.status, record.attempts) == ("failed", 1)
    assert record.error == (
        f"cannot render: {template}:9: template error: the date filter needs a date and time, not str"
    )
    assert not smtp_server.handler.to(ZOE) and smtp_server.handler.count() > 1
    assert progress.failed == 1


@pytest.mark.parametrize("name", ["BadToken", "RedisUnavailable"])
def test_errors_once_defined_elsewhere_live_in_notifier_errors(name: str) -> None:
    assert name in _classes()

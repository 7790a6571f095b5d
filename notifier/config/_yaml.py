"""YAML files read with the line of every key and value, so each problem can name its line.

Also where a pydantic validation error of a model read from YAML points: the line of the
key or value it is about.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from notifier.config._models import Lines
from notifier.errors import Problem

# What all the aliases of one YAML file may expand to, in values (each scalar, list and
# mapping counts one). A config that shares a few blocks by alias stays far below it; a
# "billion laughs" file of nested aliases (272 bytes that expand to hundreds of millions
# of values) is refused at the alias that crosses it, before anything is expanded.
MAX_ALIAS_VALUES = 10_000


class _Loader(yaml.SafeLoader):
    """SafeLoader that leaves ``2019-07-09 09:00``-style timestamps as text for our parser,
    and refuses aliases that would expand beyond :data:`MAX_ALIAS_VALUES` or into themselves."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._sizes: dict[int, int] = {}  # id(node) -> values it expands to
        self._expanded = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        """The next node; an alias is counted against the budget at its own line first."""
        if self.check_event(yaml.AliasEvent):
            event: yaml.AliasEvent = self.peek_event()  # type: ignore[no-untyped-call]
            node = self.anchors.get(str(event.anchor))
            if node is not None:
                self._count_alias(node, str(event.anchor), event.start_mark)
        return super().compose_node(parent, index)

    def _count_alias(self, node: yaml.Node, anchor: str, mark: Any) -> None:
        if node.end_mark is None:  # still being composed: the alias is inside what it names
            raise yaml.composer.ComposerError(
                None, None, f"alias *{anchor} is inside the block it names, so it would never end", mark
            )
        self._expanded += _size(node, self._sizes)
        if self._expanded > MAX_ALIAS_VALUES:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"too many aliases: by *{anchor} here they expand to more than "
                f"{MAX_ALIAS_VALUES:,} values (write the values out, or share less)",
                mark,
            )


def _size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values ``node`` expands to (itself and everything in it, aliases expanded);
    remembered in ``sizes`` so a node aliased many times is counted once."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    if isinstance(node, yaml.SequenceNode):
        total = 1 + sum(_size(item, sizes) for item in node.value)
    elif isinstance(node, yaml.MappingNode):
        total = 1 + sum(_size(k, sizes) + _size(v, sizes) for k, v in node.value)
    else:
        total = 1
    sizes[id(node)] = total
    return total


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def read_yaml(path: Path, problems: list[Problem]) -> tuple[Any, Lines]:
    """Parse one YAML file into plain data and the lines of its keys and values.

    Syntax errors, duplicate keys and an empty file are added to ``problems``; returns
    ``(None, Lines())`` then.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem.at(path, None, f"cannot read: {exc}"))
        return None, Lines()
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        lines = Lines()
        before = len(problems)
        data = None if node is None else _build(loader, node, (), lines, path, problems)
        if len(problems) != before:
            return None, lines
        if data is None:
            problems.append(Problem.at(path, None, "empty file"))
        return data, lines
    except yaml.YAMLError as exc:
        problems.append(_yaml_problem(exc, path))
        return None, Lines()
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.YAMLError, path: Path) -> Problem:
    """A YAML syntax error at the line to fix.

    PyYAML notices an unclosed ``[``, ``{`` or quote only where the next thing cannot
    belong to it (the ``problem_mark``); the line where it opened is the ``context_mark``.
    The context of a block (``while parsing a block mapping``) is where that whole block
    starts, which is no help, so it is not used.
    """
    problem = getattr(exc, "problem", None) or str(exc)
    mark = getattr(exc, "problem_mark", None)
    context = getattr(exc, "context", None)
    opened = getattr(exc, "context_mark", None)
    if (
        mark is not None
        and opened is not None
        and context
        and not context.startswith("while parsing a block")
        and opened.line < mark.line
    ):
        at_end = mark.buffer is not None and mark.index >= len(mark.buffer.rstrip("\0"))
        what = "it is never closed (the file ends first)" if at_end else f"{problem} on line {mark.line + 1}"
        message = f"invalid YAML: {context} that starts here: {what}"
        return Problem.at(path, opened.line + 1, message)
    return Problem.at(path, mark.line + 1 if mark else None, f"invalid YAML: {problem}")


def _build(  # noqa: PLR0913 - recursive: the node and its key path change per call, lines and problems collect
    loader: _Loader, node: yaml.Node, key: tuple[Any, ...], lines: Lines, path: Path, problems: list[Problem]
) -> Any:
    """``node`` as plain data; records in ``lines`` where each entry and scalar value is."""
    lines.entries.setdefault(key, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for k_node, v_node in node.value:
            k = loader.construct_object(k_node, deep=True)
            if not isinstance(k, str | int | bool | float):
                problems.append(Problem.at(path, k_node.start_mark.line + 1, "a key must be plain text"))
                continue
            if k in out:
                problems.append(Problem.at(path, k_node.start_mark.line + 1, f"duplicate key {k!r}"))
            lines.entries[(*key, k)] = k_node.start_mark.line + 1
            out[k] = _build(loader, v_node, (*key, k), lines, path, problems)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, (*key, i), lines, path, problems) for i, item in enumerate(node.value)]
    lines.values[key] = node.start_mark.line + 1
    return loader.construct_object(node, deep=True)


def pydantic_problems(
    exc: ValidationError, path: Path, lines: Lines, prefix: tuple[Any, ...] = ()
) -> Iterator[Problem]:
    """The errors of a model read from ``path`` (at ``prefix`` in it), each at the line of the
    key it is about (unknown or missing keys) or of the value (the rest)."""
    for err in exc.errors():
        loc = (*prefix, *err["loc"])
        field = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            yield Problem.at(path, lines.line(loc), f"unknown key {field!r}")
        elif err["type"] == "missing":
            yield Problem.at(path, lines.line(loc), f"missing required key {field!r}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            yield Problem.at(path, lines.value_line(loc), f"{field}: {msg}")

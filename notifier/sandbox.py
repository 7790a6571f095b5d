"""The Jinja2 sandbox templates run in, with limits so that no template can take the machine.

Jinja2's immutable sandbox stops a template reaching Python's internals, but not using
all the memory or time there is: ``{{ 'x' * 10**10 }}`` asked for 10 GB and two nested
``range(100000)`` loops ran for minutes. Within :func:`limits` (every render of
:class:`~notifier.rendering.Renderer` is) a template may:

* produce at most :data:`MAX_OUTPUT` characters (checked as the output streams out);
* make at most :data:`MAX_MADE` characters of values on the way (``*``, ``+``, ``%``, ``~``,
  ``{% set %}`` blocks, macros, calls and the filters that can grow a value), each
  operation checked *before* it allocates where its size can be known in advance
  (``'x' * n``, ``center(n)``, ``replace``, ``join``, a format's width);
* run for at most :data:`TIME_BUDGET` seconds, checked at every call, intercepted
  operator, loop iteration (every few) and chunk of output.

Going over is a :class:`~notifier.errors.TemplateLimitError`, which
:func:`~notifier.rendering.template_problem` reports at the template line it happened on.
The checks sit where Jinja's sandbox already intercepts (``call``, ``call_binop``) plus
a wrapper round each ``for`` loop's iterable and round ``~``: a template with no loops,
calls or operators (most e-mails) pays only for the streamed output's check.

For ``validate``, :class:`RecordingUndefined` lets a render go on past an undefined name
and records each use with its line, so every unknown name and attribute in a template is
reported at once (the names the object does have included), not one per run.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import string
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from itertools import islice
from types import FrameType
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import ImmutableSandboxedEnvironment

from notifier.errors import TemplateLimitError

MAX_OUTPUT = 1_000_000  # characters one render may produce (an e-mail part, a post)
MAX_MADE = 10_000_000  # characters of values one render may make on the way
TIME_BUDGET = 2.0  # seconds one render may take
MAX_POWER_BITS = 4_096  # the largest integer ``**`` may make, in bits
_EVERY = 64  # a loop checks the clock once per this many items


class _Limits(threading.local):
    """What the render running on this thread may still spend (unlimited outside one)."""

    deadline: float = math.inf
    left: float = math.inf
    undefined: list[tuple[str | None, int | None, str]] | None = None  # recorded uses (validate)


_STATE = _Limits()


Spent = tuple[float, float, "list[tuple[str | None, int | None, str]] | None"]


def begin(*, record_undefined: bool = False) -> Spent:
    """Start a render's limits on this thread; pass the result to :func:`end` when it is done.

    A pair of calls rather than a context manager: this runs on every e-mail.
    """
    state = _STATE
    previous = (state.deadline, state.left, state.undefined)
    state.deadline = time.monotonic() + TIME_BUDGET
    state.left = MAX_MADE
    state.undefined = [] if record_undefined else None
    return previous


def end(previous: Spent) -> list[tuple[str | None, int | None, str]]:
    """End the render begun with :func:`begin`: the undefined uses it recorded, if asked to."""
    state = _STATE
    recorded = state.undefined or []
    state.deadline, state.left, state.undefined = previous
    return recorded


def tick() -> None:
    """TemplateLimitError once the render on this thread has run past its time."""
    if time.monotonic() > _STATE.deadline:
        raise TemplateLimitError(f"the template ran for over {TIME_BUDGET:g} s (a loop too long?)")


def _afford(size: float, what: str) -> None:
    """TemplateLimitError if making ``size`` more characters would go over the budget."""
    if size > _STATE.left:
        raise TemplateLimitError(
            f"{what} would make {size:,.0f} characters, taking the render over the {MAX_MADE:,} "
            "characters of values one render may make"
        )


def spend(value: Any) -> Any:
    """Count ``value`` (a string or collection just made) against the budget; return it."""
    if isinstance(value, str | list | tuple | bytes):
        _afford(len(value), "this step")
        _STATE.left -= len(value)
    return value


def _size(value: Any) -> int:
    """Characters ``value`` stands for: its length, and its items' for a list or tuple."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, list | tuple):
        return len(value) + sum(len(v) for v in value if isinstance(v, str | bytes | list | tuple))
    return 0


# -- checks made before an operation allocates ----------------------------------------

_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_widths(numbers: Iterable[str], args: Any, what: str) -> None:
    """A format's widths and precisions (``*`` takes one from ``args``) within the budget."""
    for number in numbers:
        if number == "*":
            values = args if isinstance(args, tuple | list) else (args,)
            widths = [v for v in values if isinstance(v, int)]
            _afford(max(widths, default=0), what)
        elif number:
            _afford(int(number), what)


def _check_percent(template: str, args: Any) -> None:
    _check_widths((n for m in _PERCENT_SPEC.finditer(template) for n in m.groups() if n), args, "this format")


def _check_format(template: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """``str.format``'s widths: written in the spec, or taken from the arguments (``{:{}}``)."""
    for _, _, spec, _ in string.Formatter().parse(template):
        if not spec:
            continue
        if "{" in spec:
            _check_widths(["*"], (*args, *kwargs.values()), "this format")
        else:
            _check_widths(re.findall(r"\d+", spec), (), "this format")


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        for seq, times in ((left, right), (right, left)):
            if isinstance(times, int) and isinstance(seq, str | bytes | list | tuple):
                _afford(_size(seq) * max(times, 0), f"{type(seq).__name__} * {times:,}")
    elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        if right * math.log2(abs(left)) > MAX_POWER_BITS:
            raise TemplateLimitError(f"{left} ** {right} is a number too big to make (over {MAX_POWER_BITS} bits)")
    elif operator == "%" and isinstance(left, str):
        _check_percent(left, right)


def _check_str_method(name: str, text: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """The size of what a string method would make, before it makes it."""
    first = args[0] if args else next(iter(kwargs.values()), None)
    if name in ("center", "ljust", "rjust", "zfill") and isinstance(first, int):
        _afford(first, f"{name}({first:,})")
    elif name == "expandtabs" and isinstance(first, int):
        _afford(text.count("\t") * first + len(text), f"expandtabs({first:,})")
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        _check_replace(text, args[0], args[1])
    elif name == "join" and isinstance(first, Sized):
        _check_join(text, first)


def _check_replace(text: str, old: str, new: str) -> None:
    count = text.count(old) if old else len(text) + 1
    _afford(len(text) + count * (len(new) - len(old)), "this replace")


def _check_join(separator: str, items: Any) -> None:
    _afford(
        len(separator) * len(items) + _size(list(items) if not isinstance(items, list | tuple) else items), "this join"
    )


def _filter_check(name: str, bound: inspect.BoundArguments) -> None:
    """The size of what an amplifying filter would make, before it makes it."""
    a = bound.arguments
    if name == "center" and isinstance(a.get("width", 80), int):
        _afford(a.get("width", 80), f"center({a.get('width', 80):,})")
    elif name == "indent":
        width = a.get("width", 4)
        unit = len(width) if isinstance(width, str) else int(width)
        _afford(len(str(a["s"])) + unit * (str(a["s"]).count("\n") + 1), "this indent")
    elif name == "replace":
        _check_replace(str(a["s"]), str(a["old"]), str(a["new"]))
    elif name in ("batch", "slice"):
        count = a.get("linecount", a.get("slices", 0))
        if isinstance(count, int):
            _afford(count, f"{name}({count:,})")
    elif name == "tojson" and (a.get("indent") or 0) > 40:
        raise TemplateLimitError("tojson: an indent over 40 is not allowed")
    elif name == "format":
        _check_percent(str(a["value"]), a.get("args", ()))


_AMPLIFYING_FILTERS = ("center", "indent", "replace", "batch", "slice", "tojson", "format", "join", "sum")


def _bounded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` (the filter ``name``) checked before it runs and its result counted."""
    signature = inspect.signature(function)

    @functools.wraps(function)  # keeps Jinja's pass_context / pass_eval_context marks
    def checked(*args: Any, **kwargs: Any) -> Any:
        tick()
        bound = signature.bind(*args, **kwargs)
        if name in ("join", "sum"):
            items = list(bound.arguments["value" if name == "join" else "iterable"])
            _afford(_size(items) + len(str(bound.arguments.get("d", ""))) * len(items), f"this {name}")
            bound.arguments["value" if name == "join" else "iterable"] = items
            return spend(function(*bound.args, **bound.kwargs))
        _filter_check(name, bound)
        return spend(function(*args, **kwargs))

    return checked


def _within_budget(iterable: Any) -> Any:
    """A ``for`` loop's iterable, checking the clock every :data:`_EVERY` items."""
    if isinstance(iterable, Sized) and len(iterable) < _EVERY:
        return iterable
    return _ticking(iterable)


def _ticking(iterable: Iterable[Any]) -> Iterator[Any]:
    for n, item in enumerate(iterable):
        if not n % _EVERY:
            tick()
        yield item


class _Compiler(CodeGenerator):
    """Jinja's code generator, with ``a ~ b`` counted against the budget (it has no hook)."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:  # noqa: N802  (Jinja's visitor name)
        self.write("environment.spend(")
        super().visit_Concat(node, frame)
        self.write(")")


def _concat(parts: Iterable[str]) -> str:
    """``"".join(parts)`` counted: what ``{% set %}`` blocks and macros return."""
    return spend("".join(parts))  # type: ignore[no-any-return]


# Every name ``getattr`` finds on a dict instance: those of dict and its bases (dir), and,
# to be safe, of its metaclass. Built-in types cannot be changed, so this is fixed.
_DICT_NAMES = frozenset(dir(dict)) | frozenset(dir(type))


class Sandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox with the limits above, and a shorter way to the same
    answer for ``mapping.key`` on a plain dict (every ``consultation.title``).

    The sandbox's ``getattr`` first tries the attribute, which for a dict key raises and
    catches an ``AttributeError``, then the item. When the object is exactly a ``dict``
    and the name is none of a dict's attributes, the attribute lookup can only fail, so
    this goes straight to the item, or to the same undefined as the sandbox's. Anything
    else (a dict method, a dunder, any other type) takes the sandbox's own path, with its
    safety checks, unchanged.
    """

    code_generator_class = _Compiler
    intercepted_binops = frozenset({"*", "**", "%", "+"})
    concat = staticmethod(_concat)
    spend = staticmethod(spend)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in _AMPLIFYING_FILTERS:
            self.filters[name] = _bounded_filter(name, self.filters[name])
        self.filters["_within_budget"] = _within_budget

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """The template's syntax tree, each ``for`` loop's iterable passed through the clock check."""
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, "_within_budget", [], [], None, None, lineno=loop.lineno)
        return tree

    def getattr(self, obj: Any, attribute: str) -> Any:
        """``obj.attribute`` in a template, as the sandbox resolves it."""
        if type(obj) is dict and type(attribute) is str and attribute not in _DICT_NAMES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """``left operator right`` for ``*``, ``**``, ``%`` and ``+``: sized first, then counted."""
        tick()
        _check_binop(operator, left, right)
        return spend(self.binop_table[operator](left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        """A call from a template: the clock checked, a string method's result sized first."""
        tick()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            _check_str_method(getattr(__obj, "__name__", ""), owner, args, kwargs)
        elif __obj is jinja2.utils.generate_lorem_ipsum:
            paragraphs = args[0] if args else kwargs.get("n", 5)
            _afford(paragraphs * 1_000 if isinstance(paragraphs, int) else 0, "lipsum")  # up to 100 words each
        return spend(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """``str.format`` as the sandbox wraps it, with its widths checked first."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        template = value.__self__

        @functools.wraps(wrapped)  # shows as the sandbox's own wrapper does: str.format
        def checked(*args: Any, **kwargs: Any) -> str:
            _check_format(template, args, kwargs)
            return wrapped(*args, **kwargs)

        return checked


_BATCH = 256  # chunks of output taken at a time between checks


def stream(chunks: Iterator[str]) -> str:
    """The output of a template's render function, stopped at :data:`MAX_OUTPUT` characters
    or when the render runs out of time, with the template line it had reached.

    Checked every :data:`_BATCH` chunks (an e-mail's block is about 30): a Python step per
    chunk cost more than the rest of the checks together. Holding a batch over the limit
    costs nothing, since a chunk is a reference to a string that exists already (one value
    written many times is one string) and each value a template makes is bounded on its
    own (:data:`MAX_MADE`); the batch is measured before it is joined. The clock is read
    only between full batches: a short output is made without loops (each of which checks
    the clock as it goes) and so quickly.
    """
    batch = list(islice(chunks, _BATCH))
    size = sum(map(len, batch))
    if len(batch) < _BATCH and size <= MAX_OUTPUT:
        return "".join(batch)  # the usual case: the whole output in one batch, within the limit
    parts: list[str] = []
    state = _STATE
    while True:
        if size > MAX_OUTPUT or time.monotonic() > state.deadline:
            path, line = _generator_place(chunks)
            if size > MAX_OUTPUT:
                raise TemplateLimitError(f"the output is over {MAX_OUTPUT:,} characters", path, line)
            raise TemplateLimitError(f"the template ran for over {TIME_BUDGET:g} s (a loop too long?)", path, line)
        parts += batch
        if len(batch) < _BATCH:
            return "".join(parts)
        batch = list(islice(chunks, _BATCH))
        size += sum(map(len, batch))


def _generator_place(chunks: Iterator[str]) -> tuple[str | None, int | None]:
    """The template file and line a suspended render generator (or the one it delegates to) is at."""
    place: tuple[str | None, int | None] = (None, None)
    generator: Any = chunks
    while generator is not None and getattr(generator, "gi_frame", None) is not None:
        found = _template_place(generator.gi_frame)
        place = found if found[1] is not None else place
        generator = getattr(generator, "gi_yieldfrom", None)
    return place


def _template_place(frame: FrameType) -> tuple[str | None, int | None]:
    template = frame.f_globals.get("__jinja_template__")
    if template is None:
        return None, None
    return template.filename, template.get_corresponding_lineno(frame.f_lineno)


def _caller_place() -> tuple[str | None, int | None]:
    """The template file and line running on this thread now (innermost), if any."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        path, line = _template_place(frame)
        if line is not None:
            return path, line
        frame = frame.f_back
    return None, None


# -- undefined names ---------------------------------------------------------------------


def _known(undefined: jinja2.Undefined) -> str:
    """`` (known: a, b, c)`` for an attribute missing from a dict, else nothing."""
    obj = undefined._undefined_obj
    if type(obj) is dict and isinstance(undefined._undefined_name, str) and not undefined._undefined_hint:
        return f" (known: {', '.join(sorted(map(str, obj))) or 'none'})"
    return ""


class RecordingUndefined(jinja2.ChainableUndefined):
    """For ``validate``: every use StrictUndefined would refuse is recorded (file, line,
    message) in the render's limits and the render goes on as if the value were empty, so
    one run reports every unknown name and attribute of a template."""

    __slots__ = ()

    def _record(self) -> None:
        recorded = _STATE.undefined
        if recorded is None:
            # Not rendering (Jinja folding constants as it compiles, say): refuse as
            # StrictUndefined does, so the use is left for the render, which records it.
            self._fail_with_undefined_error()
        path, line = _caller_place()
        recorded.append((path, line, self._undefined_message + _known(self)))

    def __str__(self) -> str:
        self._record()
        return ""

    def __iter__(self) -> Iterator[Any]:
        self._record()
        return iter(())

    def __len__(self) -> int:
        self._record()
        return 0

    def __bool__(self) -> bool:
        self._record()
        return False

    def __eq__(self, other: object) -> bool:
        self._record()
        return False

    def __ne__(self, other: object) -> bool:
        self._record()
        return True

    def __hash__(self) -> int:
        self._record()
        return id(self)

    def __contains__(self, item: object) -> bool:
        self._record()
        return False

    def __int__(self) -> int:  # type: ignore[override]
        self._record()
        return 0

    def __float__(self) -> float:  # type: ignore[override]
        self._record()
        return 0.0

    def _use(self, *args: Any, **kwargs: Any) -> RecordingUndefined:
        self._record()
        return self

    def _false(self, other: object) -> bool:
        self._record()
        return False

    # Jinja types these as raising (Never); here they record and go on.
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _use  # type: ignore[assignment]
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = _use  # type: ignore[assignment]
    __pos__ = __neg__ = __call__ = __pow__ = __rpow__ = _use  # type: ignore[assignment]
    __lt__ = __le__ = __gt__ = __ge__ = _false  # type: ignore[assignment]

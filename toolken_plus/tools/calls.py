"""Strict parsing of tool arguments, and formatting of results (docs/design.md, "Tool mode").

In tool mode the model writes ``name(`` ... ``)``; the text in between is
untrusted model output.  It is parsed by a small hand-written recursive-descent
parser that only knows literals -- never ``eval``/``exec``/``ast.literal_eval``
-- checked against the tool's signature, and the tool is run under a time limit
(in a thread here, or in a worker process: toolken_plus/tools/isolation.py), its
result turned into capped text by :func:`format_result` where it ran.  Every
failure becomes a :class:`ToolArgumentError` or an error :class:`ToolOutcome`,
so the agent can treat it like a Reject for that step instead of crashing.

Grammar accepted by :func:`parse_call_arguments` (whitespace around items ignored)::

    arguments := "" | item ("," item)*            at most 64 items
    item      := value | name "=" value           keyword items after all positional ones
    name      := [A-Za-z_][A-Za-z0-9_]*           ASCII; each name at most once
    value     := number | string | list
    list      := "[" [value ("," value)*] "]"     nested at most 8 deep
    string    := '"' ... '"' | "'" ... "'"        \\<quote> and \\\\ are escapes;
                                                  any other backslash is literal
    number    := [sign] ["$"] digits ["%"]        ("$" may also come before the sign)
                 digits = 12 | 1,234,567 | 3.5 | .5 | 5. | 1e5 | 2.5E-3

Numbers: ``$`` is ignored; a trailing ``%`` divides by 100 (``50%`` -> 0.5,
always a float); plain integers stay ``int``, anything with a ``.`` or an
exponent is a ``float``; only ASCII digits; non-finite values are rejected.

Commas are both thousands separators and argument separators.  The rule: a
comma is a *thousands* comma iff it sits inside a number as ``\\d,\\d{3}(?!\\d)``
(no spaces, exactly three digits and then a non-digit); every other comma
separates arguments.  So ``1,000, 2`` -> ``[1000, 2]``, ``1,2`` -> ``[1, 2]``,
``3, 4`` -> ``[3, 4]``, ``1,0000`` -> ``[1, 0]`` and ``12,345.5`` -> ``[12345.5]``.
(ToolkenGPT instead drops every bare comma when the text contains ``", "`` and
otherwise splits on all commas; the rules agree on its demo formats.)

Keyword arguments are written as in Python, ``weather("Paris", days=3)``: a
name is only ever looked up among the tool's parameters by
:func:`bind_arguments` (never evaluated, never an attribute), and the value
after ``=`` is a literal like any other.  Binding follows Python's rules:
positional values fill the parameters in order, a keyword names one that is
not positional-only (or lands in ``**kwargs``), and an unknown name, a
parameter given twice or a required one missing is a :class:`ToolArgumentError`.
"""

from __future__ import annotations

import inspect
import math
import re
import threading
import time
import types
import typing
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable

MAX_CHARS = 2000
MAX_ARGS = 64
MAX_DEPTH = 8


class ToolArgumentError(ValueError):
    """The model's argument text, or the values it denotes, do not fit the tool."""


@dataclass
class CallArguments:
    """The arguments of one call: positional values, then keyword values by name."""

    args: list = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)


# `name =` opening a keyword item (`==` is not one; no value starts with a letter,
# so a name not followed by `=` is reported as the unexpected character it is).
_KEYWORD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*=(?!=)")

# A number literal.  Thousands groups are part of the literal, so once a number
# has been read every comma the parser meets is an argument separator.
_NUMBER = re.compile(
    r"(?P<prefix>[+-]\$?|\$[+-]?)?"
    r"(?P<body>(?:[0-9]+(?:,[0-9]{3}(?![0-9]))*(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)?"
    r"(?P<pct>%)?"
)


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def error(self, reason: str, pos: int | None = None) -> ToolArgumentError:
        pos = self.pos if pos is None else pos
        where = "end of text" if pos >= len(self.text) else f"position {pos}"
        return ToolArgumentError(f"{reason} at {where}")

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def arguments(self) -> CallArguments:
        """The whole text: comma-separated items, each a value or `name=value`."""
        out = CallArguments()
        self.skip_ws()
        if self.at_close(None):
            return out
        while True:
            start = self.pos
            keyword = _KEYWORD.match(self.text, self.pos)
            if keyword:
                name = keyword.group(1)
                if name in out.kwargs:
                    raise self.error(f"keyword argument {name!r} repeated", start)
                self.pos = keyword.end()
                self.skip_ws()
                out.kwargs[name] = self.value(0)
            else:
                value = self.value(0)
                if out.kwargs:  # as in Python: f(a=1, 2) is not a call
                    raise self.error("positional argument after keyword argument", start)
                out.args.append(value)
            if len(out.args) + len(out.kwargs) > MAX_ARGS:
                raise ToolArgumentError(f"too many arguments (more than {MAX_ARGS})")
            if self.separator(None):
                return out

    def items(self, depth: int, opened_at: int) -> list:
        """Comma-separated values up to the ``]`` closing the list opened at `opened_at`."""
        out: list = []
        self.skip_ws()
        if self.at_close(opened_at):
            return out
        while True:
            out.append(self.value(depth))
            if self.separator(opened_at):
                return out

    def separator(self, opened_at: int | None) -> bool:
        """After an item: True where the list (or the text) ends; else past the
        ',' (an item must follow: a trailing comma is an error)."""
        self.skip_ws()
        if self.at_close(opened_at):
            return True
        if self.text[self.pos] != ",":
            raise self.error(f"expected ',' but found {self.text[self.pos]!r}")
        self.pos += 1
        self.skip_ws()
        return False

    def at_close(self, opened_at: int | None) -> bool:
        if opened_at is None:
            return self.pos >= len(self.text)
        if self.pos >= len(self.text):
            raise ToolArgumentError(f"unclosed '[' opened at position {opened_at}")
        return self.text[self.pos] == "]"

    def value(self, depth: int) -> Any:
        if self.pos >= len(self.text):
            raise self.error("expected a value")
        c = self.text[self.pos]
        if c == "[":
            if depth >= MAX_DEPTH:
                raise self.error(f"lists nested deeper than {MAX_DEPTH}")
            start = self.pos
            self.pos += 1
            out = self.items(depth + 1, start)
            self.pos += 1  # the ']' that at_close() saw
            return out
        if c in "\"'":
            return self.string(c)
        m = _NUMBER.match(self.text, self.pos)
        if m.group("body"):
            return self.number(m)
        if m.group("prefix"):
            raise self.error("expected digits after sign or '$'", m.end("prefix"))
        raise self.error(f"unexpected {c!r}")

    def string(self, quote: str) -> str:
        start, text, buf = self.pos, self.text, []
        self.pos += 1
        while self.pos < len(text):
            ch = text[self.pos]
            if ch == "\\" and self.pos + 1 < len(text) and text[self.pos + 1] in (quote, "\\"):
                buf.append(text[self.pos + 1])
                self.pos += 2
            elif ch == quote:
                self.pos += 1
                return "".join(buf)
            else:
                buf.append(ch)
                self.pos += 1
        raise ToolArgumentError(f"unterminated string opened at position {start}")

    def number(self, m: re.Match) -> int | float:
        start = self.pos
        self.pos = m.end()
        negative = "-" in (m.group("prefix") or "")
        body = m.group("body").replace(",", "")
        try:
            if m.group("pct"):
                value: int | float = float(Decimal(body) / 100)  # Decimal: 7% is exactly 0.07
            elif "." in body or "e" in body or "E" in body:
                value = float(body)
            else:
                value = int(body)
        except (ArithmeticError, ValueError):  # decimal overflow, int digit limit
            value = math.inf
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error("number out of range", start)
        return -value if negative else value


def closing_paren(text: str) -> int | None:
    """Index of the `)` closing the call's `(` (brackets and quotes respected)."""
    depth, quote = 0, None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            if depth == 0 and ch == ")":
                return i
            depth -= 1
    return None


_TEXT_CALL_HEAD = re.compile(r"<([A-Za-z_][\w.-]*)>\(")


def find_text_call(text: str, tool_names) -> tuple[str, str, int] | None:
    """A call the model has just finished writing as text: `text` ends with
    `<name>(args)=` for a known tool (the demos' `<add>(3, 4)=7` with the
    result still to come). Returns (name, args_text, where the call starts),
    or None. Text methods (icl, lora) call tools this way; the arguments then
    go through the same parser as a toolken's tool mode. Only the last call
    head counts, and `<tool>(args)` without `=` is not a request for a result."""
    if not text.endswith(")="):
        return None
    for head in reversed(list(_TEXT_CALL_HEAD.finditer(text))):
        if head.group(1) not in tool_names:
            continue
        args = text[head.end():]
        if closing_paren(args) == len(args) - 2:
            return head.group(1), args[:-2], head.start()
        return None
    return None


def parse_call_arguments(text: str) -> CallArguments:
    """Parse the text a model wrote between ``name(`` and ``)``: positional
    values, then keyword values (``"Paris", days=3``).

    See the module docstring for the grammar and the comma rule.  Raises
    :class:`ToolArgumentError` naming the offending character and its position.
    """
    if not isinstance(text, str):
        raise ToolArgumentError(f"arguments must be text, got {type(text).__name__}")
    if len(text) > MAX_CHARS:
        raise ToolArgumentError(f"argument text too long ({len(text)} > {MAX_CHARS} chars)")
    return _Parser(text).arguments()


def parse_arguments(text: str) -> list:
    """The positional values of :func:`parse_call_arguments`, for callers that
    take no keywords; a keyword argument in `text` is a :class:`ToolArgumentError`."""
    call = parse_call_arguments(text)
    if call.kwargs:
        raise ToolArgumentError(f"keyword argument {next(iter(call.kwargs))!r} where only positional values are "
                                f"taken (parse_call_arguments reads both)")
    return call.args


# ---------------------------------------------------------------------------
# Checking values against the tool's signature

_P = inspect.Parameter
_NAMED_TYPES = {"float": float, "int": int, "str": str, "list": list}


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(value: Any, ann: Any, where: str) -> Any:
    if isinstance(ann, str):  # postponed annotations (`from __future__ import annotations`)
        ann = _NAMED_TYPES.get(ann.split("[")[0].strip(), Any)
    if ann is _P.empty or ann is Any or ann is object:
        return value
    origin = typing.get_origin(ann)
    if origin is typing.Union or origin is types.UnionType:
        for alt in typing.get_args(ann):
            try:
                return _check(value, alt, where)
            except ToolArgumentError:
                pass
    elif ann is float:
        if _is_number(value):
            return value  # ints stay ints: exact integer arithmetic where the tool allows it
    elif ann is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif ann is list or origin is list:
        if isinstance(value, list):
            (item_ann,) = typing.get_args(ann) or (Any,)
            return [_check(v, item_ann, f"{where} item {j + 1}") for j, v in enumerate(value)]
    elif isinstance(origin, type):  # other generics (dict[str, int], ...): check the container only
        if isinstance(value, origin):
            return value
    elif isinstance(ann, type):
        if isinstance(value, ann) and not (isinstance(value, bool) and ann is not bool):
            return value
    else:
        return value  # typing constructs we do not model (Literal, TypeVar, ...) are not checked
    name = ann.__name__ if isinstance(ann, type) else str(ann)
    raise ToolArgumentError(f"{where}: expected {name}, got {_describe(value)}")


def _plural(n: int) -> str:
    return f"{n} argument" if n == 1 else f"{n} arguments"


def bind_arguments(call: CallArguments, signature: inspect.Signature | None) -> CallArguments:
    """Check a parsed call against the tool's ``signature``, as Python binds a
    call, and return its values converted, ready for ``fn(*args, **kwargs)``.

    Positional values fill the positional parameters in order (``*args`` takes
    the rest); each keyword names a parameter that is not positional-only, or
    goes to ``**kwargs``. An unknown keyword, a parameter given both by
    position and by keyword, or a required parameter left out raises
    :class:`ToolArgumentError`, as does a value of the wrong type:
    ``float`` accepts int or float (unchanged), ``int`` an int or an integral
    float (converted), ``str`` only str, ``list``/``list[X]`` only lists (items
    checked against ``X``), unions try each member; unannotated parameters
    accept anything. With no signature the values pass unchanged.

    The result is canonical: a keyword value of a positional parameter moves
    into ``args`` when every parameter before it is filled, so
    ``c_to_f(celsius=100)`` and ``c_to_f(100)`` bind alike.
    """
    if signature is None:
        return CallArguments(list(call.args), dict(call.kwargs))
    params = list(signature.parameters.values())
    positional = [p for p in params if p.kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)]
    var = next((p for p in params if p.kind is _P.VAR_POSITIONAL), None)
    var_keyword = next((p for p in params if p.kind is _P.VAR_KEYWORD), None)
    by_keyword = {p.name: p for p in params if p.kind in (_P.POSITIONAL_OR_KEYWORD, _P.KEYWORD_ONLY)}
    n = len(call.args)
    if var is None and n > len(positional):
        raise ToolArgumentError(_count_message(positional, n))
    for name in call.kwargs:
        p = by_keyword.get(name)
        if p is not None and p.kind is _P.POSITIONAL_OR_KEYWORD and positional.index(p) < n:
            raise ToolArgumentError(f"argument {name!r} given twice: as argument {positional.index(p) + 1} and by keyword")
        if p is None and var_keyword is None:
            only = " (it is positional-only)" if any(q.name == name for q in positional) else ""
            raise ToolArgumentError(f"unknown keyword argument {name!r}{only}; "
                                    f"keywords the tool takes: {', '.join(by_keyword) or 'none'}")
    # Required parameters left empty (a keyword cannot fill a positional-only one)
    missing = [p for p in positional[n:] + [q for q in params if q.kind is _P.KEYWORD_ONLY]
               if p.default is _P.empty and (p.kind is _P.POSITIONAL_ONLY or p.name not in call.kwargs)]
    if missing and not call.kwargs and all(p.kind is not _P.KEYWORD_ONLY for p in missing):
        raise ToolArgumentError(_count_message(positional, n, at_least=var is not None))  # a positional call: say how many
    if missing:
        raise ToolArgumentError(f"missing required argument{'s' if len(missing) > 1 else ''} "
                                f"{', '.join(repr(p.name) for p in missing)}")
    args = [_check(value, (positional[i] if i < len(positional) else var).annotation, f"argument {i + 1}")
            for i, value in enumerate(call.args)]
    kwargs = {name: _check(value, (by_keyword.get(name) or var_keyword).annotation, f"argument {name!r}")
              for name, value in call.kwargs.items()}
    # Canonical form: keyword values of the next positional-or-keyword parameters become positional.
    for p in positional[n:]:
        if p.kind is not _P.POSITIONAL_OR_KEYWORD or p.name not in kwargs:
            break
        args.append(kwargs.pop(p.name))
    return CallArguments(args, kwargs)


def _count_message(positional: list[inspect.Parameter], n: int, at_least: bool = False) -> str:
    required = sum(p.default is _P.empty for p in positional)
    if at_least:
        return f"expected at least {_plural(required)}, got {n}"
    span = f"{required}" if required == len(positional) else f"{required} to {len(positional)}"
    return f"expected {span} argument{'' if span == '1' else 's'}, got {n}"


def coerce_arguments(args: list, signature: inspect.Signature | None) -> list:
    """:func:`bind_arguments` for positional values only: the checked, converted list."""
    return bind_arguments(CallArguments(list(args)), signature).args


# ---------------------------------------------------------------------------
# Calling under a time limit


@dataclass
class ToolOutcome:
    """What one tool call produced: ``value`` if ``ok``, else an ``error`` message.
    After :func:`format_result` the value is text, and ``truncated_from`` is the
    length of the full text if it was cut."""

    ok: bool
    value: object = None
    error: str | None = None
    seconds: float = 0.0
    truncated_from: int | None = None


def format_result(value: Any, max_chars: int) -> tuple[str, int | None]:
    """The text a result is written back as (at most ``max_chars`` characters),
    and the full text's length if it was cut (else None).

    May raise: ``str()`` of a result is the tool's code too (a hostile
    ``__str__``; an int of more than 4300 digits raises ValueError), so it runs
    where the tool ran, under the same limits; see :func:`run_and_format`."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("non-finite result")
    text = str(value)
    if type(text) is not str:  # a str subclass may override len() and slicing
        text = str.__str__(text)
    full = len(text)
    text = text[:max_chars]
    # A lone surrogate ('\ud800') makes the tokenizer raise: write '?' instead.
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text, (full if full > max_chars else None)


def run_and_format(fn: Callable[..., Any], args: list, max_chars: int, kwargs: dict | None = None) -> ToolOutcome:
    """``fn(*args, **kwargs)`` formatted by :func:`format_result`; never raises
    (no time limit: the caller runs it in a thread or a worker process)."""
    start = time.perf_counter()
    try:
        value = fn(*args, **(kwargs or {}))
    except BaseException as exc:  # SystemExit etc. from a tool is still just a failed call
        return ToolOutcome(False, error=exception_text(exc), seconds=time.perf_counter() - start)
    try:
        text, cut = format_result(value, max_chars)
    except BaseException as exc:
        return ToolOutcome(False, error=f"result cannot be written as text: {exception_text(exc)}",
                           seconds=time.perf_counter() - start)
    return ToolOutcome(True, text, seconds=time.perf_counter() - start, truncated_from=cut)


def exception_text(exc: BaseException) -> str:
    try:
        detail = str(exc)
    except Exception:  # a hostile __str__ must not escape either
        detail = ""
    text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def run_in_thread(work: Callable[[], None], name: str, timeout: float) -> bool:
    """Start ``work()`` in a daemon thread and wait at most ``timeout`` seconds
    for it; True if it finished. Raises what starting a thread raises."""
    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    worker.join(timeout)
    return not worker.is_alive()


def timeout_text(timeout: float) -> str:
    return f"timed out after {float(timeout)} s"

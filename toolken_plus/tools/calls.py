"""Strict parsing of tool arguments, and formatting of results (docs/design.md, "Tool mode").

In tool mode the model writes ``name(`` ... ``)``; the text in between is
untrusted model output.  It is parsed by a small hand-written recursive-descent
parser that only knows literals -- never ``eval``/``exec``/``ast.literal_eval``
-- checked against the tool's signature, and the tool is run under a time limit
(in a thread here, or in a worker process: toolken_plus/tools/isolation.py), its
result turned into capped text by :func:`format_result` where it ran.  Every
failure becomes a :class:`ToolArgumentError` or an error :class:`ToolOutcome`,
so the agent can treat it like a Reject for that step instead of crashing.

Grammar accepted by :func:`parse_arguments` (whitespace around items ignored)::

    arguments := "" | value ("," value)*          at most 64 values
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
"""

from __future__ import annotations

import inspect
import math
import re
import threading
import time
import types
import typing
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable

MAX_CHARS = 2000
MAX_ARGS = 64
MAX_DEPTH = 8


class ToolArgumentError(ValueError):
    """The model's argument text, or the values it denotes, do not fit the tool."""


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

    def items(self, depth: int, opened_at: int | None) -> list:
        """Comma-separated values up to ``]`` (inside a list) or the end of text."""
        out: list = []
        self.skip_ws()
        if self.at_close(opened_at):
            return out
        while True:
            out.append(self.value(depth))
            if opened_at is None and len(out) > MAX_ARGS:
                raise ToolArgumentError(f"too many arguments (more than {MAX_ARGS})")
            self.skip_ws()
            if self.at_close(opened_at):
                return out
            if self.text[self.pos] != ",":
                raise self.error(f"expected ',' but found {self.text[self.pos]!r}")
            self.pos += 1
            self.skip_ws()

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


def parse_arguments(text: str) -> list:
    """Parse the text a model wrote between ``name(`` and ``)`` into a list of values.

    See the module docstring for the grammar and the comma rule.  Raises
    :class:`ToolArgumentError` naming the offending character and its position.
    """
    if not isinstance(text, str):
        raise ToolArgumentError(f"arguments must be text, got {type(text).__name__}")
    if len(text) > MAX_CHARS:
        raise ToolArgumentError(f"argument text too long ({len(text)} > {MAX_CHARS} chars)")
    return _Parser(text).items(depth=0, opened_at=None)


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


def coerce_arguments(args: list, signature: inspect.Signature | None) -> list:
    """Check parsed ``args`` against the tool's ``signature`` and return them converted.

    With no signature the args pass unchanged.  Annotations: ``float`` accepts
    int or float (unchanged), ``int`` accepts an int or an integral float
    (converted), ``str`` only str, ``list``/``list[X]`` only lists (items checked
    against ``X``), unions try each member; unannotated parameters accept
    anything.  ``*args`` takes the rest, each checked against its annotation.
    Wrong arity or type raises :class:`ToolArgumentError`.
    """
    if signature is None:
        return list(args)
    params = list(signature.parameters.values())
    positional = [p for p in params if p.kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)]
    var = next((p for p in params if p.kind is _P.VAR_POSITIONAL), None)
    needs_keyword = [p.name for p in params if p.kind is _P.KEYWORD_ONLY and p.default is _P.empty]
    if needs_keyword:  # a call site only passes positional values
        raise ToolArgumentError(f"tool needs keyword argument(s) {', '.join(needs_keyword)}")
    required = sum(p.default is _P.empty for p in positional)
    n = len(args)
    if var is not None and n < required:
        raise ToolArgumentError(f"expected at least {_plural(required)}, got {n}")
    if var is None and not required <= n <= len(positional):
        span = f"{required}" if required == len(positional) else f"{required} to {len(positional)}"
        raise ToolArgumentError(f"expected {span} argument{'' if span == '1' else 's'}, got {n}")
    return [
        _check(value, (positional[i] if i < len(positional) else var).annotation, f"argument {i + 1}")
        for i, value in enumerate(args)
    ]


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


def run_and_format(fn: Callable[..., Any], args: list, max_chars: int) -> ToolOutcome:
    """``fn(*args)`` formatted by :func:`format_result`; never raises (no time
    limit: the caller runs it in a thread or a worker process)."""
    start = time.perf_counter()
    try:
        value = fn(*args)
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

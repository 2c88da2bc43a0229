"""Tolerant readers for JSON Lines (and JSON array) data files.

Data files are large and hand-made; one bad line should not cost a training run,
so by default a malformed line is logged (with file and line number), skipped and
counted.  ``strict=True`` turns the same condition into a :class:`DataError`.

Malformed means: not UTF-8, not JSON (or nested too deeply for Python's parser),
not an object, or holding a lone surrogate (``"\\ud800"``, a valid JSON escape
whose string no tokenizer accepts).  Whole-file reads (JSON arrays, CSV text)
cannot skip a line, so their problems are always a :class:`DataError` naming the
file and line.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from toolken_plus.data.examples import DataError

log = logging.getLogger(__name__)


@dataclass
class JsonlStats:
    """Counts filled in by the readers: records yielded and lines skipped."""

    read: int = 0
    skipped: int = 0


def _require_file(path: Path) -> None:
    """Fail early with a message that tells the user which setting to fix."""
    if not path.is_file():
        raise FileNotFoundError(
            f"data file not found: {path} — check `data.root` (or the task's data "
            f"path) in the config; data is never downloaded at run time"
        )


def _reject(path: Path, where: str, what: str, reason: str, strict: bool, stats: JsonlStats | None) -> None:
    """Report one bad record (``what``: "malformed JSON line", "item"): raise
    in strict mode, else warn that it is skipped and count it."""
    if strict:
        raise DataError(f"{path}:{where}: {what} ({reason})")
    log.warning("%s:%s: %s skipped (%s)", path, where, what, reason)
    if stats is not None:
        stats.skipped += 1


def read_jsonl(
    path: str | os.PathLike[str],
    *,
    strict: bool = False,
    stats: JsonlStats | None = None,
) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` for each JSON object line of ``path``.

    Line numbers are 1-based so that messages match what an editor shows.
    Blank lines are skipped silently.  A malformed line (see the module
    docstring: not UTF-8, not JSON, not an object, a lone surrogate) is logged once as
    ``"path:LINE: malformed JSON line skipped (...)"`` and skipped (counted in
    ``stats.skipped``), or raises :class:`DataError` when ``strict``.
    A missing file raises :class:`FileNotFoundError` at the call, not at the
    first iteration, so the error points at the code that named the file.
    """
    path = Path(path)
    _require_file(path)
    return _iter_jsonl(path, strict, stats)


def _iter_jsonl(path: Path, strict: bool, stats: JsonlStats | None) -> Iterator[tuple[int, dict]]:
    # Bytes, decoded line by line: invalid UTF-8 then spoils one line, not the file.
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            record, problem = _parse_line(raw)
            if problem is not None:
                _reject(path, str(line_no), "malformed JSON line", problem, strict, stats)
                continue
            if stats is not None:
                stats.read += 1
            yield line_no, record


def _parse_line(raw: bytes) -> tuple[dict | None, str | None]:
    """The JSON object on one line, or why the line is malformed."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, f"not UTF-8: byte 0x{raw[err.start]:02x} at byte offset {err.start} of the line"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        return None, f"{err.msg}, column {err.colno}"
    except RecursionError:  # e.g. 100000 "[": deeper than Python's parser goes
        return None, "nested too deeply"
    if not isinstance(record, dict):
        return None, f"expected an object, got {type(record).__name__}"
    # A lone surrogate can only come from a \u escape (UTF-8 decoding rejects
    # encoded ones), so lines without one need no walk through the record.
    where = find_lone_surrogate(record) if "\\u" in text else None
    if where is not None:
        return None, lone_surrogate_reason(where)
    return record, None


def find_lone_surrogate(value: object) -> str | None:
    """Where a string in a parsed JSON value holds a lone surrogate, e.g.
    ``"calls[0].tool"`` (``"top level"`` for a bare string), or None.

    JSON allows ``"\\ud800"``; Python decodes it to a str that cannot be encoded
    as UTF-8, and tokenizers reject it with a TypeError far from the data.
    Walked with a stack, not recursion: the value may be legally deep.
    """
    stack: list[tuple[object, str]] = [(value, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str) and not _is_utf8_encodable(item):
            return where or "top level"
        if isinstance(item, dict):
            for key, child in item.items():
                if not _is_utf8_encodable(key):
                    return f"the key {key!r}" + (f" in {where}" if where else "")
                stack.append((child, f"{where}.{key}" if where else key))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(item))
    return None


def lone_surrogate_reason(where: str) -> str:
    return f"lone surrogate in {where}: a \\ud800-\\udfff escape without its pair is not text"


def _is_utf8_encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_utf8(path: Path) -> str:
    """The whole file as text; invalid UTF-8 is a :class:`DataError` naming the
    line and byte offset (Python's own error names neither file nor line)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{path}:{line}: not UTF-8: byte 0x{data[err.start]:02x} at byte offset {err.start} of the file"
        ) from None


def read_json(path: Path) -> object:
    """The JSON value of a whole file; anything unreadable is a :class:`DataError`."""
    text = read_utf8(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        # A broken file cannot be resumed item by item, so this always raises.
        raise DataError(f"{path}:{err.lineno}: malformed JSON ({err.msg}, column {err.colno})") from err
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to read") from None


def _read_json_array(path: Path, strict: bool, stats: JsonlStats | None) -> list[dict]:
    """Read a whole-file JSON array of objects; bad items are rejected by index."""
    records = []
    for index, item in enumerate(read_json(path)):
        if not isinstance(item, dict):
            _reject(path, f"[{index}]", "item", f"expected an object, got {type(item).__name__}", strict, stats)
            continue
        where = find_lone_surrogate(item)
        if where is not None:
            _reject(path, f"[{index}]", "item", lone_surrogate_reason(where), strict, stats)
            continue
        if stats is not None:
            stats.read += 1
        records.append(item)
    return records


def read_json_or_jsonl(
    path: str | os.PathLike[str],
    *,
    strict: bool = False,
    stats: JsonlStats | None = None,
) -> list[dict]:
    """Read a file holding either one JSON array of objects or JSON Lines.

    Released benchmark files use both (``gsm8k-xl/test.json`` is JSON Lines
    despite its name, ``tecton_val.json`` is an array), so the format is decided
    by content: a file whose first non-blank character is ``[`` is an array.
    """
    return [record for _, record in read_records(path, strict=strict, stats=stats)]


def read_records(
    path: str | os.PathLike[str],
    *,
    strict: bool = False,
    stats: JsonlStats | None = None,
) -> list[tuple[int | None, dict]]:
    """:func:`read_json_or_jsonl` with each record's line number, so that later
    checks can name it; None for the items of a JSON array (one parse of the
    whole file does not tell where an item starts)."""
    path = Path(path)
    _require_file(path)
    if _first_byte(path) == b"[":
        return [(None, record) for record in _read_json_array(path, strict, stats)]
    return list(read_jsonl(path, strict=strict, stats=stats))


def _first_byte(path: Path) -> bytes:
    """First non-whitespace byte of the file (b'' if there is none); bytes,
    because a file that is not UTF-8 gets its error from the reader, with a line."""
    with path.open("rb") as handle:
        while chunk := handle.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                return stripped[:1]
    return b""

"""Tolerant readers for JSON Lines (and JSON array) data files.

Data files are large and hand-made; one bad line should not cost a training run,
so by default a malformed line is logged (with file and line number), skipped and
counted.  ``strict=True`` turns the same condition into a :class:`DataError`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from toolken_plus.tasks.base import DataError

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


def _reject(path: Path, where: str, reason: str, strict: bool, stats: JsonlStats | None) -> None:
    """Report one bad record: raise in strict mode, else warn and count it."""
    message = f"{path}:{where}: {reason}"
    if strict:
        raise DataError(message)
    log.warning("%s", message)
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
    Blank lines are skipped silently.  A line that is not valid JSON, or is valid
    JSON but not an object, is logged once as
    ``"path:LINE: malformed JSON line skipped (...)"`` and skipped (counted in
    ``stats.skipped``), or raises :class:`DataError` when ``strict``.
    A missing file raises :class:`FileNotFoundError` at the call, not at the
    first iteration, so the error points at the code that named the file.
    """
    path = Path(path)
    _require_file(path)
    return _iter_jsonl(path, strict, stats)


def _iter_jsonl(path: Path, strict: bool, stats: JsonlStats | None) -> Iterator[tuple[int, dict]]:
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                _reject(path, str(line_no), f"malformed JSON line skipped ({err.msg}, column {err.colno})", strict, stats)
                continue
            if not isinstance(record, dict):
                kind = type(record).__name__
                _reject(path, str(line_no), f"malformed JSON line skipped (expected an object, got {kind})", strict, stats)
                continue
            if stats is not None:
                stats.read += 1
            yield line_no, record


def _read_json_array(path: Path, strict: bool, stats: JsonlStats | None) -> list[dict]:
    """Read a whole-file JSON array of objects; non-object items are rejected."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        # A broken array cannot be resumed item by item, so this always raises.
        raise DataError(f"{path}:{err.lineno}: malformed JSON ({err.msg}, column {err.colno})") from err
    records = []
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            _reject(path, f"[{index}]", f"item skipped (expected an object, got {type(item).__name__})", strict, stats)
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
    path = Path(path)
    _require_file(path)
    if _first_char(path) == "[":
        return _read_json_array(path, strict, stats)
    return [record for _, record in read_jsonl(path, strict=strict, stats=stats)]


def _first_char(path: Path) -> str:
    """First non-whitespace character of the file ('' if there is none)."""
    with path.open(encoding="utf-8") as handle:
        while chunk := handle.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                return stripped[0]
    return ""

"""GSM8K-XL task adapter: calculator toolkens trained on GSM8K's own annotations.

ToolkenGPT's GSM8K-XL training file is not public, so training data is built
from GSM8K train, whose answers mark every calculator use as ``<<48/2=24>>``
followed by the number the text shows (``48/2 = <<48/2=24>>24 clips``).

Training text
    ``Question: {question}\\nAnswer: {answer}``, the answer's lines joined with a
    single space (the one-line answers of ToolkenGPT's ``llama_general.txt``
    prompt), so the final ``#### 72`` line becomes `` #### 72``.  Every
    ``<<...>>`` annotation is removed from the text.

Annotation rules (what becomes a tool call)
    1. The annotation body is stripped and split on its LAST ``=`` into a
       left-hand side (the expression) and the result; spaces in the expression
       are ignored.  No ``=`` or a result that is not a number: *unparseable*.
    2. The expression must be numbers joined by ``+ - * /``.  Numbers may have
       thousands commas (``1,000``) and decimals (``0.5``, ``.5``); only the first
       number may carry a minus sign.  Any other character (``%``, ``x``, ``^``,
       letters, a sign on a later operand): *unparseable*.  Parentheses:
       *parentheses*.
    3. Exactly one kind of operator decides the tool: ``+`` with 2 or more
       operands -> ``add``; ``*`` with 2 or more -> ``multiply``; ``-`` with
       exactly 2 -> ``subtract``; ``/`` with exactly 2 -> ``divide``.
       Several kinds (``80/100*10``): *mixed_operators*.  ``-`` or ``/`` with
       more than 2 operands (``100-50-30-15``): *chained_sub_or_div* — the tools
       take two arguments there, and rewriting the expression would change the
       text the model learns from.  A bare number (``12=12``): *no_operator*.
    4. Arguments are ``int`` when written without a decimal point, else
       ``float``; thousands commas are removed.
    5. The call's result span is the run of characters right after ``>>``
       matching ``-?[\\d,]*\\.?\\d+`` (the number the text shows).  With no such
       run the annotation is dropped as *no_result_span*.

A dropped annotation never raises; if its result span exists, the span goes
into ``Example.ignore_spans`` so that no label is learned where a calculator was
really used but no toolken can express it.
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from toolken_plus.data.examples import DataError, Example, ToolCall
from toolken_plus.data.jsonl import JsonlStats, read_jsonl, read_records

log = logging.getLogger(__name__)

# ToolkenGPT's order (gsm8k-xl/func_dict.json: <add>=0, <subtract>=1, ...): the
# toolken row index of each tool, so checkpoints stay comparable.
TOOLS = ("add", "subtract", "multiply", "divide")
PROMPT_QUESTION = "Question: {question}\nAnswer:"

DROP_REASONS = ("mixed_operators", "chained_sub_or_div", "no_operator", "parentheses", "unparseable", "no_result_span")

_OPERATOR_TOOL = {"+": "add", "-": "subtract", "*": "multiply", "/": "divide"}
_BINARY_ONLY = {"-", "/"}  # subtract/divide take exactly two arguments

_NUMBER = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_EXPRESSION = re.compile(rf"-?(?:{_NUMBER})(?:[-+*/](?:{_NUMBER}))*")
_RESULT_RUN = re.compile(r"-?[\d,]*\.?\d+")
_ANNOTATION = re.compile(r"<<(.*?)>>")
_PLACEHOLDER = re.compile(r"\{v_(\d+)\}")
_TECTON_CALL = re.compile(r"<([^<>]+)>\((.*)\)=(.*)")


def display_name(tool: str) -> str:
    """How a tool is shown to the model and in reports, ToolkenGPT style: ``<add>``."""
    return f"<{tool}>"


# --------------------------------------------------------------------------- text


def format_prompt(question: str) -> str:
    """The reasoning-mode prompt for ``question``; ``format_text`` continues it."""
    return PROMPT_QUESTION.format(question=question.strip())


def format_text(question: str, answer_lines: list[str]) -> str:
    """``Question: {question}\\nAnswer: {answer}``, answer lines joined by one space."""
    return format_prompt(question) + " " + " ".join(answer_lines)


# -------------------------------------------------------------------- annotations


def _to_number(text: str) -> int | float:
    """Parse a number as written: int without a decimal point, else float."""
    plain = text.replace(",", "")
    return float(plain) if "." in plain else int(plain)


def classify_annotation(expr: str) -> tuple[str, tuple] | str:
    """``(tool, args)`` for a usable annotation body, else the drop reason.

    See the module docstring for the rules; the reasons are ``DROP_REASONS``
    except ``no_result_span``, which depends on the text, not the body.
    """
    body = expr.strip()
    if "=" not in body:
        return "unparseable"
    lhs, result = body.rsplit("=", 1)
    lhs = lhs.replace(" ", "")
    if not _RESULT_RUN.fullmatch(result.strip()):
        return "unparseable"
    if "(" in lhs or ")" in lhs:
        return "parentheses"
    if not _EXPRESSION.fullmatch(lhs):
        return "unparseable"

    # The full match guarantees operands and operators alternate, so splitting
    # on operator characters (after a leading sign) recovers both.
    negative = lhs.startswith("-")
    rest = lhs[1:] if negative else lhs
    operands = re.split(r"[-+*/]", rest)
    operators = set(re.findall(r"[-+*/]", rest))
    if not operators:
        return "no_operator"
    if len(operators) > 1:
        return "mixed_operators"
    (operator,) = operators
    if operator in _BINARY_ONLY and len(operands) > 2:
        return "chained_sub_or_div"

    args = [_to_number(operand) for operand in operands]
    if negative:
        args[0] = -args[0]
    return _OPERATOR_TOOL[operator], tuple(args)


def parse_annotation(expr: str) -> tuple[str, tuple] | None:
    """``("divide", (48, 2))`` for the body ``"48/2=24"``; ``None`` if dropped."""
    parsed = classify_annotation(expr)
    return None if isinstance(parsed, str) else parsed


# -------------------------------------------------------------------------- stats


@dataclass
class Gsm8kStats:
    """What :func:`load_gsm8k` kept and dropped; pass one in to collect them."""

    examples: int = 0
    annotations: int = 0
    calls_kept: int = 0
    multi_arg_calls: int = 0  # kept calls with more than 2 args (add/multiply)
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    skipped_rows: int = 0
    per_tool: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOOLS, 0))

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def summary(self) -> str:
        """One human-readable paragraph, e.g. for logs and the README."""
        share = self.calls_kept / self.annotations if self.annotations else 0.0
        tools = ", ".join(f"{display_name(t)} {n}" for t, n in self.per_tool.items())
        reasons = ", ".join(f"{r} {n}" for r, n in self.dropped.items() if n) or "none"
        return (
            f"GSM8K: {self.examples} examples ({self.skipped_rows} rows skipped), "
            f"{self.annotations} calculator annotations; kept {self.calls_kept} "
            f"({share:.1%}) as tool calls ({tools}; {self.multi_arg_calls} with more "
            f"than 2 arguments); dropped {self.dropped_total} ({reasons})."
        )


# ----------------------------------------------------------------------- loading


@dataclass
class _Annotation:
    """One ``<<...>>`` found in a line; ``span`` is its result span in the cleaned line."""

    body: str
    span: tuple[int, int] | None


def _strip_annotations(line: str) -> tuple[str, list[_Annotation]]:
    """Remove ``<<...>>`` from ``line``; return it with each annotation's result span."""
    pieces: list[str] = []
    annotations: list[_Annotation] = []
    pos = out_len = 0
    for match in _ANNOTATION.finditer(line):
        pieces.append(line[pos : match.start()])
        out_len += match.start() - pos
        pos = match.end()
        # The text right after ">>" is copied unchanged, so the result run starts
        # at the current length of the cleaned line.
        run = _RESULT_RUN.match(line, pos)
        span = (out_len, out_len + len(run.group())) if run else None
        annotations.append(_Annotation(match.group(1), span))
    pieces.append(line[pos:])
    return "".join(pieces), annotations


def _clean_answer(answer: str) -> tuple[list[str], list[_Annotation]]:
    """Answer lines without annotations (stripped, blank ones dropped), and the
    annotations with result spans relative to ``" ".join(lines)``."""
    lines: list[str] = []
    annotations: list[_Annotation] = []
    joined_len = 0  # length of " ".join(lines) so far, plus the separator to come
    for raw in answer.split("\n"):
        cleaned, found = _strip_annotations(raw)
        lead = len(cleaned) - len(cleaned.lstrip())
        cleaned = cleaned.strip()
        # Result runs hold no whitespace, so stripping never cuts into a span.
        shift = joined_len - lead
        for ann in found:
            span = None if ann.span is None else (ann.span[0] + shift, ann.span[1] + shift)
            annotations.append(_Annotation(ann.body, span))
        if cleaned:
            lines.append(cleaned)
            joined_len += len(cleaned) + 1
    return lines, annotations


def _final_answer(answer: str) -> str | None:
    """The string after the last ``####`` (GSM8K's gold answer), if any."""
    if "####" not in answer:
        return None
    return answer.rsplit("####", 1)[1].strip()


def _build_example(example_id: str, question: str, answer: str, stats: Gsm8kStats) -> Example:
    """One GSM8K record -> Example with a ToolCall per usable annotation."""
    lines, annotations = _clean_answer(answer)
    text = format_text(question, lines)
    offset = len(format_text(question, []))  # where the joined answer starts
    calls: list[ToolCall] = []
    ignore_spans: list[tuple[int, int]] = []
    for ann in annotations:
        stats.annotations += 1
        parsed = classify_annotation(ann.body) if ann.span is not None else "no_result_span"
        if isinstance(parsed, str):
            stats.dropped[parsed] = stats.dropped.get(parsed, 0) + 1
            if ann.span is not None:
                ignore_spans.append((ann.span[0] + offset, ann.span[1] + offset))
            continue
        tool, args = parsed
        start, end = ann.span[0] + offset, ann.span[1] + offset
        calls.append(ToolCall(tool=tool, args=args, result=text[start:end], start=start, end=end))
        stats.calls_kept += 1
        stats.per_tool[tool] += 1
        stats.multi_arg_calls += len(args) > 2
    stats.examples += 1
    meta = {"question": question.strip(), "answer": _final_answer(answer)}
    return Example(id=example_id, text=text, calls=calls, ignore_spans=ignore_spans, meta=meta)


def load_gsm8k(
    path: str | os.PathLike[str],
    limit: int | None = None,
    offset: int = 0,
    stats: Gsm8kStats | None = None,
) -> list[Example]:
    """Load GSM8K ``{question, answer}`` JSON Lines as toolken training examples.

    ``offset`` skips that many records, ``limit`` caps the number of examples.
    Ids are ``gsm8k-{file stem}-{line number - 1}``, stable under offset/limit.
    Rows without string ``question``/``answer`` are logged (file:line) and
    skipped; malformed JSON lines likewise (see :func:`read_jsonl`).  Counts go
    into ``stats`` if one is given.
    """
    path = Path(path)
    stats = stats if stats is not None else Gsm8kStats()
    read_stats = JsonlStats()
    examples: list[Example] = []
    records = read_jsonl(path, stats=read_stats)
    for index, (line_no, record) in enumerate(records):
        if limit is not None and len(examples) >= limit:
            break
        if index < offset:
            continue
        question, answer = record.get("question"), record.get("answer")
        if not isinstance(question, str) or not isinstance(answer, str):
            log.warning("%s:%d: row skipped (needs string fields 'question' and 'answer')", path, line_no)
            stats.skipped_rows += 1
            continue
        examples.append(_build_example(f"gsm8k-{path.stem}-{line_no - 1}", question, answer, stats))
    stats.skipped_rows += read_stats.skipped
    return examples


def split_train_val(examples: list, n_val: int, seed: int) -> tuple[list, list]:
    """Seeded held-out slice: ``n_val`` examples for validation, the rest for training.

    The project validates on a held-out slice of GSM8K *train* (the test set is
    for final numbers only).  Indices are shuffled with ``random.Random(seed)``
    and the first ``n_val`` form the validation set; both parts keep file order.
    """
    if not 0 <= n_val <= len(examples):
        raise ValueError(f"n_val={n_val} must be between 0 and the number of examples ({len(examples)})")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    train = [ex for i, ex in enumerate(examples) if i not in val_idx]
    val = [ex for i, ex in enumerate(examples) if i in val_idx]
    return train, val


# --------------------------------------------------------- user-supplied call data


def _check_span(path: Path, line_no: int, what: str, span: object, text_len: int) -> tuple[int, int]:
    """A ``[start, end)`` pair of ints inside the text and non-empty, else DataError."""
    start, end = span if isinstance(span, (list, tuple)) and len(span) == 2 else (None, None)
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end))
    if not ints or not 0 <= start < end <= text_len:
        raise DataError(
            f"{path}:{line_no}: {what} span [{start}, {end}) is not a non-empty range "
            f"of character offsets inside the text (length {text_len})"
        )
    return start, end


def _parse_user_call(path: Path, line_no: int, i: int, call: object, text: str, known: list[str]) -> ToolCall:
    """Validate one ``{"tool", "start", "end", "args"?}`` entry of a call-JSONL line."""
    if not isinstance(call, dict):
        raise DataError(f"{path}:{line_no}: calls[{i}] must be an object")
    tool = call.get("tool")
    if tool not in known:
        raise DataError(f"{path}:{line_no}: calls[{i}] has unknown tool {tool!r}; known tools: {', '.join(known)}")
    start, end = _check_span(path, line_no, f"calls[{i}]", (call.get("start"), call.get("end")), len(text))
    args = call.get("args", [])
    if not isinstance(args, (list, tuple)):
        raise DataError(f"{path}:{line_no}: calls[{i}].args must be a list")
    return ToolCall(tool=tool, args=tuple(args), result=text[start:end], start=start, end=end)


def _parse_call_record(path: Path, line_no: int, record: dict, known: list[str]) -> Example:
    text = record.get("text")
    if not isinstance(text, str):
        raise DataError(f"{path}:{line_no}: 'text' must be a string")
    raw_calls = record.get("calls", [])
    if not isinstance(raw_calls, list):
        raise DataError(f"{path}:{line_no}: 'calls' must be a list")
    calls = sorted(
        (_parse_user_call(path, line_no, i, c, text, known) for i, c in enumerate(raw_calls)),
        key=lambda c: c.start,
    )
    # Overlapping result spans would give one token two gold labels.
    for prev, cur in zip(calls, calls[1:]):
        if cur.start < prev.end:
            raise DataError(f"{path}:{line_no}: call spans [{prev.start}, {prev.end}) and [{cur.start}, {cur.end}) overlap")
    raw_ignore, meta = record.get("ignore_spans", []), record.get("meta", {})
    if not isinstance(raw_ignore, list) or not isinstance(meta, dict):
        raise DataError(f"{path}:{line_no}: 'ignore_spans' must be a list and 'meta' an object")
    ignore = [_check_span(path, line_no, "ignore_spans", span, len(text)) for span in raw_ignore]
    example_id = str(record.get("id", f"{path.stem}-{line_no - 1}"))
    return Example(id=example_id, text=text, calls=calls, ignore_spans=ignore, meta=meta)


def load_call_jsonl(path: str | os.PathLike[str], tool_names: Iterable[str], limit: int | None = None) -> list[Example]:
    """Load user-supplied training data, one JSON object per line::

        {"text": "...", "calls": [{"tool": "add", "start": 10, "end": 12, "args": [1, 2]}]}

    ``args``, ``id``, ``ignore_spans`` (list of ``[start, end]``) and ``meta``
    are optional; a call's ``result`` is ``text[start:end]``.  Unknown tool
    names, bad or overlapping spans raise :class:`DataError` naming file and
    line (they mean the file was built for other tools, which should stop a
    run); malformed JSON lines are logged and skipped.
    """
    path = Path(path)
    known = list(tool_names)
    examples: list[Example] = []
    for line_no, record in read_jsonl(path):
        if limit is not None and len(examples) >= limit:
            break
        examples.append(_parse_call_record(path, line_no, record, known))
    return examples


# ------------------------------------------------------------------ evaluation sets
#
# Evaluation files are read strictly: a row skipped or mis-read would change
# the score without a word, so every bad row is a DataError naming the file,
# the line (JSON Lines) and the record index (the N of the item's id), raised
# before any model work.


def _eval_records(path: Path, limit: int | None) -> list[tuple[str, int, dict]]:
    """``(where, index, record)`` for the first ``limit`` records, ``where``
    being ``"path:LINE: record N"`` (or ``"path: record N"`` in a JSON array)."""
    records = read_records(path, strict=True)
    if not records:
        raise DataError(f"no questions in {path}")
    located = []
    for index, (line_no, record) in enumerate(records[:limit]):
        where = f"{path}:{line_no}: record {index}" if line_no is not None else f"{path}: record {index}"
        located.append((where, index, record))
    return located


def _shown(value: object) -> str:
    """A field's value for an error message: its JSON type and value."""
    return "null" if value is None else f"{type(value).__name__} {value!r}"


def _string_field(where: str, record: dict, name: str) -> str:
    value = record[name]
    if not isinstance(value, str):
        raise DataError(f"{where}: {name!r} must be a string, got {_shown(value)}")
    return value


def _number_field(where: str, record: dict, name: str) -> float:
    """A finite JSON number (a label of NaN would match no answer; true is not 1)."""
    value = record[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{where}: {name!r} must be a number, got {_shown(value)}")
    return float(value)


def _list_field(where: str, record: dict, name: str) -> list:
    """An optional list: missing or null is empty."""
    value = record.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise DataError(f"{where}: {name!r} must be a list, got {_shown(value)}")
    return value


def _format_value(value: object) -> str:
    """A placeholder value as ToolkenGPT writes it (``str``), integral floats as ints."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _fill_placeholders(where: str, question: str, enhanced: list, original: list) -> str:
    """Replace ``{v_i}`` in the question by ``enhanced[i-1]`` (``enhanced_v``).

    A few rows have fewer enhanced values than placeholders because their
    values are words, not numbers (e.g. ``v = ["electric", "gas", ...]`` with
    ``enhanced_v = []``); those fall back to the original ``v[i-1]``.
    """

    def value(match: re.Match) -> str:
        i = int(match.group(1)) - 1
        if 0 <= i < len(enhanced):
            return _format_value(enhanced[i])
        if 0 <= i < len(original):
            return _format_value(original[i])
        raise DataError(f"{where}: placeholder {match.group()} has no value in 'enhanced_v' or 'v'")

    return _PLACEHOLDER.sub(value, question)


def _require_fields(where: str, record: dict, names: tuple[str, ...]) -> None:
    missing = [n for n in names if n not in record]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)}")


def load_gsm8k_xl_test(path: str | os.PathLike[str], limit: int | None = None) -> list[dict]:
    """GSM8K-XL test questions: ``{"id", "question", "label"}`` with ``{v_i}`` filled.

    Raises :class:`DataError` for a file without questions and for any bad row
    (see the note above: evaluation data is never skipped)."""
    path = Path(path)
    items = []
    for where, index, record in _eval_records(path, limit):
        _require_fields(where, record, ("question", "enhanced_result"))
        question = _string_field(where, record, "question")
        label = _number_field(where, record, "enhanced_result")
        values = _list_field(where, record, "enhanced_v"), _list_field(where, record, "v")
        process = _list_field(where, record, "enhanced_process") or _list_field(where, record, "reasoning_process")
        items.append({"id": f"gsm8k-xl-test-{index}", "question": _fill_placeholders(where, question, *values),
                      "label": label, "reference_tools": reference_tools(process)})
    return items


def reference_tools(process: list[str]) -> list[str]:
    """Tools the reference solution uses: one entry per operator kind per step
    (`"4096-27-64 = 4005.0"` → `["subtract"]`, `"3*4+2 = 14"` → `["multiply", "add"]`).
    A `-` at the start of an operand is a sign, not a subtraction."""
    tools: list[str] = []
    for step in process:
        lhs = str(step).split("=")[0]
        seen: list[str] = []
        prev = ""
        for ch in lhs.replace(" ", ""):
            if ch in _OPERATOR_TOOL and not (ch == "-" and (prev == "" or prev in "+-*/(")):
                if _OPERATOR_TOOL[ch] not in seen:
                    seen.append(_OPERATOR_TOOL[ch])
            prev = ch
        tools.extend(seen)
    return tools


def _parse_tecton_call(where: str, calc: object) -> tuple[str, tuple, str]:
    """``"<multiply>(3, 3)=9"`` -> ``("multiply", (3, 3), "9")``."""
    match = _TECTON_CALL.fullmatch(calc.strip()) if isinstance(calc, str) else None
    if not match:
        raise DataError(f"{where}: calculation {calc!r} is not of the form <tool>(a, b)=result")
    tool, arg_text, result = match.groups()
    if tool not in TOOLS:
        raise DataError(f"{where}: unknown tool {tool!r}; known tools: {', '.join(TOOLS)}")
    try:
        args = tuple(_to_number(a.strip()) for a in arg_text.split(","))
    except ValueError as err:
        raise DataError(f"{where}: bad argument in {calc!r}") from err
    return tool, args, result.strip()


def _tecton_label(where: str, answer: object) -> float:
    """TECTON writes answers as strings ("11", "1,000"); plain numbers are fine too."""
    if isinstance(answer, str):
        try:
            label = float(answer.replace(",", ""))
        except ValueError:
            label = math.nan
        if math.isfinite(label):
            return label
    elif isinstance(answer, (int, float)) and not isinstance(answer, bool) and math.isfinite(answer):
        return float(answer)
    raise DataError(f"{where}: answer {answer!r} is not a number")


def load_tecton_val(path: str | os.PathLike[str], limit: int | None = None) -> list[dict]:
    """TECTON's GSM8K-XL validation questions with their gold calculator calls.

    Returns ``{"id", "question", "label": float(answer), "calls": [(tool, args,
    result), ...]}``; an unknown tool name, any other bad row, or a file
    without questions raises :class:`DataError`.
    """
    path = Path(path)
    items = []
    for where, index, record in _eval_records(path, limit):
        _require_fields(where, record, ("question", "answer"))
        question = _string_field(where, record, "question")
        label = _tecton_label(where, record["answer"])
        calls = [_parse_tecton_call(where, c) for c in _list_field(where, record, "calculation")]
        items.append({"id": f"tecton-val-{index}", "question": question, "label": label, "calls": calls})
    return items


def calculator_tools(data_root: str | os.PathLike[str] | None) -> dict:
    """The 4 GSM8K-XL tools, found like any tool through the plugin registry
    (the built-in `calculator` pack, toolken_plus_tools), with the tool-mode
    demos of ToolkenGPT that GSM8K-XL needs (gsm8k-xl/template/llama_<tool>.txt)."""
    from toolken_plus.tools.plugins import discover_tools

    tools = discover_tools(data_root).resolve(TOOLS)
    missing = [n for n, t in tools.items() if t.demo_prompt is None]
    if missing:
        folder = Path(data_root or "<data.root>") / "gsm8k-xl" / "template"
        raise FileNotFoundError(f"tool-mode demos of {missing} not found: GSM8K-XL reads them from "
                                + ", ".join(str(folder / f"llama_{n}.txt") for n in missing))
    return tools

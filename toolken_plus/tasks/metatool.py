"""MetaTool (Huang et al., 2024): choose one of 199 tools for a user query,
or know that none is needed.

The tools are doc-only (selection, no execution); their documentation is
`metatool/plugin_des.json`. Every example is a *choice point*: a shared
instruction (computed once, its KV cache reused), then `Query: … \\nTool:`,
where the next token is either a toolken or, when no tool is needed, the
ordinary text " None".

Split (seeded, stratified per tool). `all_clean_data.csv` minus the queries
that also appear in `Task1.json` is split per tool into train/val/test.
The only "no tool needed" queries in the data are Task1's 520 negatives, so
Task1 is split too: its negatives 25% train / 25% validation (they teach and
calibrate "no call") / 50% held out, its positives 50% train / 50% held out;
the awareness test is the held-out 260 positives + 260 negatives.
"""

from __future__ import annotations

import csv
import io
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolken_plus.data.encoding import IGNORE, VOCAB, Encoded
from toolken_plus.data.examples import DataError
from toolken_plus.data.jsonl import find_lone_surrogate, lone_surrogate_reason, read_json, read_json_or_jsonl, read_utf8

PROMPT_PREFIX = (
    "You are an assistant that can call external tools. For each user query, name the one tool "
    "that helps answer it, or None when the query needs no tool.\n\n"
)
NO_TOOL_TEXT = " None"


def query_text(query: str) -> str:
    """The per-example part of the prompt; it ends where the tool choice is made."""
    return f"Query: {' '.join(query.split())}\nTool:"


@dataclass(frozen=True)
class ChoiceExample:
    id: str
    query: str
    tool: str | None  # None: no tool is needed

    @property
    def text(self) -> str:
        return query_text(self.query)


@dataclass
class MetaToolSplit:
    train: list[ChoiceExample]
    val: list[ChoiceExample]
    test: list[ChoiceExample]
    awareness_test: list[ChoiceExample]
    notes: list[str] = field(default_factory=list)


def load_tool_docs(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MetaTool tool docs not found: {path}")
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a JSON object {{tool name: description}}")
    where = find_lone_surrogate(raw)
    if where is not None:  # the docs are tokenized (reranker), so reject them here
        raise DataError(f"{path}: {lone_surrogate_reason(where)}")
    return {str(k): " ".join(str(v).split()) for k, v in raw.items()}


NO_TOOL = "None"  # the only spelling of "no tool needed" in a query CSV


def _tool_or_none(where: str, value: str | None) -> str | None:
    """The Tool cell: a tool name, or None for the literal `None`.

    An empty or missing cell is an error, not "no tool": relabelling a query
    whose tool was lost would teach and score the wrong answer without a word.
    """
    tool = (value or "").strip()
    if not tool:
        raise DataError(f"{where}: {'empty' if value is not None else 'no'} Tool cell "
                        f"(write {NO_TOOL} when the query needs no tool)")
    return None if tool == NO_TOOL else tool


def load_queries_csv(path: str | Path, known_tools, *, prefix: str = "q") -> list[ChoiceExample]:
    """A CSV with columns `Query,Tool` (Tool may be `None`: no tool needed).

    Ids are ``{prefix}-{row number + 1}`` (stable; the header is row 1); error
    messages name the file line the row starts on, which differs once a
    quoted query spans several lines.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"query file not found: {path}")
    known = set(known_tools)
    # Whole-file decode: a bad byte is reported with its line, not as a bare UnicodeDecodeError.
    reader = csv.DictReader(io.StringIO(read_utf8(path), newline=""))
    if not reader.fieldnames or not {"Query", "Tool"} <= set(reader.fieldnames):
        raise DataError(f"{path}: expected a header with columns Query,Tool (got {reader.fieldnames})")
    out = []
    first_line = reader.line_num + 1  # of the next row: csv counts the lines quoted values span
    for row_no, row in enumerate(reader, start=2):
        where = f"{path}:{first_line}"
        first_line = reader.line_num + 1
        query, tool = (row.get("Query") or "").strip(), _tool_or_none(where, row.get("Tool"))
        if not query:
            raise DataError(f"{where}: empty Query")
        if tool is not None and tool not in known:
            raise DataError(f"{where}: unknown tool {tool!r} (not in the tool docs; {NO_TOOL} means no tool)")
        out.append(ChoiceExample(f"{prefix}-{row_no}", query, tool))
    if not out:
        raise DataError(f"no questions in {path}")
    return out


def load_awareness(path: str | Path, known_tools) -> list[ChoiceExample]:
    """Task1.json: label positive (a tool is needed) / negative."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"awareness file not found: {path}")
    known = set(known_tools)
    out = []
    for i, rec in enumerate(read_json_or_jsonl(path, strict=True)):
        label = rec.get("label")
        if label not in ("positive", "negative") or not isinstance(rec.get("query"), str) or not rec["query"]:
            raise DataError(f"{path}: record {i} needs a query and label positive|negative")
        tool = rec.get("tool") if label == "positive" else None
        if label == "positive" and tool not in known:
            raise DataError(f"{path}: record {i} is positive with tool {tool!r}, which is not in the tool docs")
        out.append(ChoiceExample(f"task1-{i}", rec["query"], tool))
    return out


def split_metatool(queries: list[ChoiceExample], awareness: list[ChoiceExample], *,
                   val_frac: float = 0.1, test_frac: float = 0.1, seed: int = 0) -> MetaToolSplit:
    rng = random.Random(seed)
    norm = lambda text: " ".join(text.split())  # noqa: E731
    held = {norm(a.query) for a in awareness}
    # Split by query: a query listed twice goes to one side; one listed with
    # two different tools is ambiguous and dropped.
    tools_of: dict[str, set] = defaultdict(set)
    for q in queries:
        tools_of[norm(q.query)].add(q.tool)
    seen: set[str] = set()
    by_tool: dict[str, list[ChoiceExample]] = defaultdict(list)
    for q in queries:
        key = norm(q.query)
        if key not in held and key not in seen and len(tools_of[key]) == 1:
            seen.add(key)
            by_tool[q.tool].append(q)
    ambiguous = sum(len(t) > 1 for t in tools_of.values())
    train, val, test = [], [], []
    for tool in sorted(by_tool):
        items = by_tool[tool][:]
        rng.shuffle(items)
        n_test = max(1, round(test_frac * len(items))) if len(items) >= 3 else 0
        n_val = max(1, round(val_frac * len(items))) if len(items) >= 3 else 0
        test += items[:n_test]
        val += items[n_test : n_test + n_val]
        train += items[n_test + n_val :]
    pos = [a for a in awareness if a.tool is not None]
    neg = [a for a in awareness if a.tool is None]
    rng.shuffle(pos)
    rng.shuffle(neg)
    q = len(neg) // 4
    aw_test = pos[: len(pos) // 2] + neg[: len(neg) // 2]
    known = set(by_tool)
    train += [p for p in pos[len(pos) // 2 :] if p.tool in known] + neg[len(neg) // 2 : len(neg) // 2 + q]
    val += neg[len(neg) // 2 + q :]
    for part in (train, val, test, aw_test):
        rng.shuffle(part)
    notes = [f"MetaTool split (seed {seed}): {len(train)} train / {len(val)} val / {len(test)} test queries "
             f"over {len(by_tool)} tools ({len(held & set(tools_of))} Task1 queries kept out of the "
             f"selection split, {ambiguous} queries listed with two tools dropped); awareness test {sum(a.tool is not None for a in aw_test)} positive + "
             f"{sum(a.tool is None for a in aw_test)} negative"]
    return MetaToolSplit(train, val, test, aw_test, notes)


def encode_choices(tokenizer, examples: list[ChoiceExample], tool_index: dict[str, int]) -> list[Encoded]:
    """One labelled position per example: the last token of its prompt part.
    Label: the gold toolken, or VOCAB with the first token of " None"."""
    none_id = tokenizer(NO_TOOL_TEXT, add_special_tokens=False)["input_ids"][0]
    out = []
    for ex in examples:
        ids = np.array(tokenizer(ex.text, add_special_tokens=False)["input_ids"], dtype=np.int64)
        next_token = np.full(len(ids), IGNORE, dtype=np.int64)
        label = np.full(len(ids), IGNORE, dtype=np.int64)
        if ex.tool is None:
            label[-1], next_token[-1] = VOCAB, none_id
        else:
            label[-1], next_token[-1] = tool_index[ex.tool], none_id
        out.append(Encoded(ids, next_token, label))
    return out

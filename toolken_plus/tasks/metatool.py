"""MetaTool (Huang et al., 2024): choose one of 199 tools for a user query,
or know that none is needed (`task=metatool`, the `MetaTool` task below).

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
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from toolken_plus.data.encoding import IGNORE, VOCAB, Encoded
from toolken_plus.data.examples import DataError
from toolken_plus.data.jsonl import find_lone_surrogate, lone_surrogate_reason, read_json, read_json_or_jsonl, read_utf8
from toolken_plus.data.locate import task_root
from toolken_plus.data.text_examples import TextExample
from toolken_plus.tasks.base import ChoiceTask, EvalItem, TaskData, limit
from toolken_plus.tools.registry import Tool

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


# ------------------------------------------------------------------ the task

@dataclass
class MetaTool(ChoiceTask):
    name: str = "metatool"
    data_file: str = "metatool/data/all_clean_data.csv"
    docs_file: str = "metatool/plugin_des.json"
    awareness_file: str = "metatool/tmp_dataset/Task1.json"
    val_frac: float = 0.1
    test_frac: float = 0.1
    split_seed: int = 0

    main_metric: ClassVar[str] = "top1_accuracy"
    # The awareness test (Task1's held-out half) has as many queries that need
    # no tool as queries that need one; validation has 130 of the first among ~2,100.
    call_prior: ClassVar[float | None] = 0.5
    eval_conditions: ClassVar[str] = (
        "Every method sees the same held-out queries after the same instruction and `Query: … Tool:` format. "
        "Toolkens decide once, at the query's last token (k = 3 candidates for a reranker); icl and lora write at most "
        "12 tokens greedily and their first word must be a tool's exact name or None. icl lists the 20 tool docs "
        "nearest the query (MiniLM), cut to 200 characters, and 4 demos from the training split.")
    # python -m toolken_plus.cli.compare / toolken-plus report: (metrics key, title, format)
    compare_columns: ClassVar[tuple] = (("n", "queries", "{}"), ("top1_accuracy", "top-1", "{:.3f}"),
                                        ("end_to_end_accuracy", "end-to-end", "{:.3f}"),
                                        ("retrieval_recall", "gold doc retrieved", "{:.3f}"),
                                        ("unparsed_rate", "unparsed answers", "{:.3f}"),
                                        ("awareness_accuracy", "awareness acc.", "{:.3f}"),
                                        ("call_precision", "call precision", "{:.3f}"), ("call_recall", "call recall", "{:.3f}"),
                                        ("false_positive_calls", "false-positive calls", "{}"), ("seconds", "wall s", "{}"))
    # selection: the held-out split; awareness: Task1's held-out half (tool needed or not); val
    eval_sets: ClassVar[tuple[str, ...]] = ("selection", "awareness", "val")
    datasets: ClassVar[tuple[str, ...]] = ("metatool",)

    @property
    def shared_prefix(self) -> str:
        return PROMPT_PREFIX

    def docs(self, root: Path) -> dict[str, str]:
        return load_tool_docs(Path(root) / self.docs_file)

    def split(self, root: Path) -> MetaToolSplit:
        """The seeded split; training and evaluation both call this."""
        docs = self.docs(root)
        queries = load_queries_csv(Path(root) / self.data_file, docs)
        awareness = load_awareness(Path(root) / self.awareness_file, docs)
        return split_metatool(queries, awareness, val_frac=self.val_frac, test_frac=self.test_frac, seed=self.split_seed)

    def load(self, data) -> TaskData:
        root = task_root(data, self)
        split, docs = self.split(root), self.docs(root)
        return TaskData(list(docs), docs, limit(split.train, data.limit_train), limit(split.val, data.limit_eval),
                        notes=split.notes)

    def encode(self, tokenizer, examples, tool_index, max_length):
        return encode_choices(tokenizer, examples, tool_index)

    def build_tools(self, root: Path) -> dict[str, Tool]:
        """Doc-only tools: MetaTool scores the choice, nothing is executed."""
        return {n: Tool(n, None, doc) for n, doc in self.docs(root).items()}

    # ------------------------------------------------- text methods (icl, lora)
    n_icl_demos: ClassVar[int] = 4  # icl: worked queries from the train split (one needs no tool)

    def icl_demos(self, root: Path) -> list[ChoiceExample]:
        """The first train queries of distinct tools, and the first needing none."""
        train, picked, seen = self.split(root).train, [], set()
        for ex in train:
            if ex.tool is not None and ex.tool not in seen and len(picked) < self.n_icl_demos - 1:
                picked.append(ex)
                seen.add(ex.tool)
        return picked + [next(ex for ex in train if ex.tool is None)]

    def text_prompt(self, query: str, method: str, docs: dict[str, str] | None = None,
                    demos: list[ChoiceExample] = ()) -> str:
        """icl: the instruction, the listed tools' docs, worked demos, the
        query; lora: the instruction and the query (what it is trained on)."""
        if method == "lora":
            return PROMPT_PREFIX + query_text(query)
        listed = "".join(f"- {name}: {doc}\n" for name, doc in (docs or {}).items())
        shown = "".join(f"{query_text(d.query)} {d.tool or 'None'}\n\n" for d in demos)
        return f"{PROMPT_PREFIX}Tools:\n{listed}\n{shown}{query_text(query)}"

    @staticmethod
    def parse_text(text: str, tool_names) -> tuple[str | None, bool]:
        """A written answer → (tool or None, parsed): its first word must be a
        tool's exact name or `None`; anything else is no call, unparsed."""
        word = (text.strip().split() or [""])[0].rstrip(".,;:")
        if word == "None":
            return None, True
        return (word, True) if word in tool_names else (None, False)

    def text_examples(self, examples: list[ChoiceExample], root: Path) -> list[TextExample]:
        return [TextExample(ex.id, self.text_prompt(ex.query, "lora"), f" {ex.tool or 'None'}") for ex in examples]

    # ---------------------------------------------------------- evaluation
    def example_text(self, item: EvalItem) -> str:
        """What follows the shared prefix; the model decides at its last token."""
        return query_text(item.question)

    def eval_items(self, data) -> list[EvalItem]:
        root = task_root(data, self)
        if data.eval_file:
            examples = load_queries_csv(data.eval_file, self.docs(root), prefix="eval")
        else:
            which = data.eval or self.eval_sets[0]
            split = self.split(root)
            sets = {"selection": split.test, "awareness": split.awareness_test, "val": split.val}
            if which not in sets:
                raise ValueError(f"data.eval={which!r}: expected one of {list(self.eval_sets)} (or data.eval_file=PATH)")
            examples = sets[which]
        return [EvalItem(ex.id, ex.query, ex.tool) for ex in limit(examples, data.limit_eval)]

    def score(self, item: EvalItem, res) -> dict:
        return {"id": item.id, "query": item.question, "gold": item.label, **res}

    def metrics(self, rows: list[dict]) -> dict:
        k = max((len(r["stage1_topk"]) for r in rows), default=1)
        return choice_metrics(rows, k)

    def report(self, metrics: dict, rows: list[dict], run_dir: Path) -> str:
        title = (f"MetaTool {metrics.get('eval', '')}: method={metrics.get('method', 'toolkens')}, "
                 f"reranker={metrics.get('reranker', 'none')}, "
                 f"k={max((len(r['stage1_topk']) for r in rows), default=1)}")
        used = sorted({r["gold"] for r in rows if r["gold"]} | {r["selected"] for r in rows if r["selected"]})
        png = confusion_png(rows, used + [NO_TOOL_COLUMN],
                            Path(run_dir) / "confusion.png", title)
        lines = [f"# {title}", ""]
        topk = next((key for key in metrics if key.startswith("top") and key != "top1_accuracy" and key.endswith("_accuracy")), None)
        for key in ("n", "top1_accuracy", topk, "end_to_end_accuracy", "triggered_rate", "rejected_rate", "retrieval_recall",
                    "unparsed_rate", "awareness_accuracy", "call_precision", "call_recall", "call_f1", "false_positive_calls", "seconds"):
            if key and key in metrics:
                v = metrics[key]
                lines.append(f"- {key}: {v:.3f}" if isinstance(v, float) else f"- {key}: {v}")
        if "per_tool" in metrics:
            worst = sorted(metrics["per_tool"].items(), key=lambda kv: (kv[1]["accuracy"], -kv[1]["n"]))[:10]
            lines += ["", "Hardest tools (top-1 accuracy, n):", ""]
            lines += [f"- {t}: {v['accuracy']:.2f} ({v['n']})" for t, v in worst]
        wrong = Counter((r["gold"], r["selected"]) for r in rows if r["gold"] is not None and r["selected"] != r["gold"])
        if wrong:
            lines += ["", "Most frequent confusions (gold → selected):", ""]
            lines += [f"- {g} → {s}: {c}" for (g, s), c in wrong.most_common(10)]
        if png:
            lines += ["", f"![confusion]({png.name})"]
        return "\n".join(lines) + "\n"

    def headline(self, m: dict) -> str:
        parts = [f"{k} {m[k]:.3f}" for k in ("top1_accuracy", "end_to_end_accuracy", "awareness_accuracy", "call_f1") if k in m]
        return ", ".join(parts) + f" (n={m['n']})"


def choice_metrics(preds: list[dict], k: int) -> dict:
    m: dict = {"n": len(preds)}
    sel = [p for p in preds if p["gold"] is not None]
    if sel:
        m["selection_n"] = len(sel)
        m["top1_accuracy"] = sum(p["selected"] == p["gold"] for p in sel) / len(sel)
        m[f"top{k}_accuracy"] = sum(p["gold"] in p["stage1_topk"] for p in sel) / len(sel)
        m["end_to_end_accuracy"] = sum(p["called"] == p["gold"] for p in sel) / len(sel)
        m["triggered_rate"] = sum(p["triggered"] for p in sel) / len(sel)
        m["rejected_rate"] = sum(p["triggered"] and p["called"] is None for p in sel) / len(sel)
        per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for p in sel:
            per[p["gold"]][0] += p["selected"] == p["gold"]
            per[p["gold"]][1] += 1
        m["per_tool"] = {t: {"accuracy": c / n, "n": n} for t, (c, n) in sorted(per.items())}
        if any("retrieved" in p for p in sel):  # method=icl with retrieval: how often the gold tool was listed at all
            m["retrieval_recall"] = sum(p["gold"] in p.get("retrieved", ()) for p in sel) / len(sel)
    if any("parsed" in p for p in preds):  # text methods: answers that named neither a tool nor None
        m["unparsed_rate"] = sum(not p.get("parsed", True) for p in preds) / len(preds)
    if any(p["gold"] is None for p in preds):
        need = [p["gold"] is not None for p in preds]
        call = [p["called"] is not None for p in preds]
        tp = sum(a and b for a, b in zip(need, call))
        prec = tp / sum(call) if sum(call) else 0.0
        rec = tp / sum(need) if sum(need) else 0.0
        m["awareness_n"] = len(preds)
        m["awareness_accuracy"] = sum(a == b for a, b in zip(need, call)) / len(preds)
        m["call_precision"], m["call_recall"] = prec, rec
        m["call_f1"] = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        m["false_positive_calls"] = sum(c and not a for a, c in zip(need, call))
    return m


NO_TOOL_COLUMN = "(no tool)"  # the confusion column of rows that called no tool (not triggered, rejected, unparsed)


def confusion_png(preds: list[dict], tool_names: list[str], path: Path, title: str = "") -> Path | None:
    """Gold (rows) vs selected (columns) over the tools that occur; a row
    that selected nothing counts in the NO_TOOL_COLUMN column."""
    if NO_TOOL_COLUMN not in tool_names:
        tool_names = [*tool_names, NO_TOOL_COLUMN]
    sel = [{**p, "selected": p["selected"] or NO_TOOL_COLUMN} for p in preds if p["gold"] is not None and p["gold"] in tool_names]
    if not sel:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    used = sorted({p["gold"] for p in sel} | {p["selected"] for p in sel}, key=tool_names.index)
    index = {t: i for i, t in enumerate(used)}
    mat = np.zeros((len(used), len(used)))
    for p in sel:
        mat[index[p["gold"]], index[p["selected"]]] += 1
    mat /= np.maximum(mat.sum(1, keepdims=True), 1)
    size = max(6.0, min(40.0, 0.12 * len(used)))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(mat, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ticks = range(len(used))
    fs = max(2.0, min(8.0, 600 / max(len(used), 1)))
    ax.set_xticks(ticks, used, rotation=90, fontsize=fs)
    ax.set_yticks(ticks, used, fontsize=fs)
    ax.set_xlabel("selected tool")
    ax.set_ylabel("gold tool")
    ax.set_title(title or "tool selection (row-normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

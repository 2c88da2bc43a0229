"""Your own tools and data (`task=custom`).

Training data: call-span JSONL, one object per line (tasks/gsm8k.py,
`load_call_jsonl`; tools/examples.py writes it by running your tools):

    {"text": "Tom has 3 + 4 = 7 apples.", "calls": [{"tool": "add", "start": 15, "end": 16}]}

    python train.py task=custom task.train_file=train.jsonl [task.val_file=val.jsonl] \\
        'task.tools={add: "adds numbers"}'          # or 'task.tools=[add]' for registered tools

Evaluation (optional): `task.test_file` is JSONL of {"question", "answer"?,
"id"?}; the agent answers under `task.prompt_file` (a template with a
[QUESTION] slot; default `Question: …\\nAnswer:`), stops at a blank line or a
new "Question:", and an answer counts as correct when it equals the given one
(whitespace and case aside). Relative paths are under data.root.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Optional

from toolken_plus.config import data_root
from toolken_plus.data.examples import DataError
from toolken_plus.data.jsonl import read_records
from toolken_plus.data.prompts import FewShotPrompt
from toolken_plus.tasks.base import EvalItem, TaskData, TextTask, limit
from toolken_plus.tasks.gsm8k import load_call_jsonl
from toolken_plus.tools.registry import Tool

DEFAULT_PROMPT = "Question: [QUESTION]\nAnswer:"


@dataclass
class CustomTask(TextTask):
    name: str = "custom"
    train_file: str = "???"  # required
    val_file: Optional[str] = None
    tools: Any = None  # {name: documentation, ...}, or [registered tool names]; a null doc takes the registered one's
    test_file: Optional[str] = None
    prompt_file: Optional[str] = None

    main_metric: ClassVar[str] = "accuracy"

    def _docs(self, root: Path) -> dict[str, str]:
        tools = self.tools or {}
        if not tools:
            raise ValueError("task=custom needs task.tools: a mapping of tool name to its documentation, "
                             "or a list of registered tool names")
        docs = dict.fromkeys(tools) if isinstance(tools, (list, tuple)) else dict(tools)
        undocumented = [n for n, doc in docs.items() if not doc]
        if undocumented:
            from toolken_plus.tools.plugins import discover_tools

            docs.update({n: t.doc for n, t in discover_tools(root).resolve(undocumented).items()})
        return docs

    def _path(self, root: Path, name: str) -> Path:
        return Path(name) if Path(name).is_absolute() else root / name

    def load(self, data) -> TaskData:
        if self.train_file in ("", "???"):
            raise ValueError("task=custom needs task.train_file (call-span JSONL)")
        root = data_root(data)
        docs = self._docs(root)
        train = load_call_jsonl(self._path(root, self.train_file), docs, limit=data.limit_train)
        val = load_call_jsonl(self._path(root, self.val_file), docs, limit=data.limit_eval) if self.val_file else []
        return TaskData(list(docs), docs, train, val,
                        notes=[f"custom task: {len(train)} train / {len(val)} validation examples, tools {list(docs)}"])

    def with_tools(self, names: list[str]) -> "CustomTask":
        # `tools.add=[weather]` with data that calls it: the task's tools are the new ones
        return self if self.tools else replace(self, tools=list(names))

    def build_tools(self, root: Path) -> dict[str, Tool]:
        """Registered tools by name; a tool known only by its doc here is doc-only."""
        from toolken_plus.tools.plugins import discover_tools

        docs = self._docs(root)
        registry = discover_tools(root)
        return {n: registry.get(n) if n in registry else Tool(n, None, doc) for n, doc in docs.items()}

    # ---------------------------------------------------------- evaluation
    def prompt(self, root: Path) -> FewShotPrompt:
        if self.prompt_file:
            return FewShotPrompt.from_file(self._path(root, self.prompt_file))
        return FewShotPrompt.from_text(DEFAULT_PROMPT)

    def stop_at(self, text: str) -> int | None:
        ends = [i for i in (text.find("\n\n"), text.find("Question:")) if i >= 0]
        return min(ends) if ends else None

    def eval_items(self, data) -> list[EvalItem]:
        if not (data.eval_file or self.test_file):
            raise ValueError("task=custom evaluates task.test_file (or data.eval_file): JSONL of {\"question\", \"answer\"}")
        path = Path(data.eval_file) if data.eval_file else self._path(data_root(data), self.test_file)
        items = []
        for line, rec in read_records(path, strict=True):
            where = f"{path}:{line}" if line else str(path)
            if not isinstance(rec.get("question"), str) or not rec["question"].strip():
                raise DataError(f"{where}: 'question' must be non-empty text")
            items.append(EvalItem(str(rec.get("id", f"{path.stem}-{len(items)}")), rec["question"], rec.get("answer")))
        if not items:
            raise DataError(f"no questions in {path}")
        return limit(items, data.limit_eval)

    def score(self, item: EvalItem, res) -> dict:
        row = self.generation_row(item, res)
        if item.label is not None:
            row["correct"] = _norm(res.answer) == _norm(item.label)
        return row

    def metrics(self, rows: list[dict]) -> dict:
        m = self.generation_metrics(rows)
        scored = [r for r in rows if "correct" in r]
        m["scored"] = len(scored)
        m["correct"] = sum(r["correct"] for r in scored)
        m["accuracy"] = m["correct"] / len(scored) if scored else None
        return m

    def report(self, metrics: dict, rows: list[dict], run_dir: Path, examples: int = 3) -> str:
        acc = metrics["accuracy"]
        shown = "n/a (no answers given)" if acc is None else f"{acc:.3f} ({metrics['correct']}/{metrics['scored']})"
        lines = [f"# {self.name} evaluation", "", f"- accuracy: {shown}",
                 f"- tool calls: {metrics['tool_calls']}, errors: {metrics['tool_errors']}",
                 f"- finish reasons: {metrics['finish_reasons']}", "", "## Examples", ""]
        for r in rows[:examples]:
            lines += [f"**Q:** {r['question']}", "", f"**A:** {r['trace'].strip()}", ""]
        return "\n".join(lines) + "\n"

    def headline(self, m: dict) -> str:
        acc = "n/a" if m["accuracy"] is None else f"{m['accuracy']:.3f} ({m['correct']}/{m['scored']})"
        return f"accuracy {acc}, tool calls {m['tool_calls']}, errors {m['tool_errors']}"


def _norm(value: Any) -> str:
    return " ".join(str(value).split()).lower()

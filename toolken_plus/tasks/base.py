"""The Task seam: everything benchmark-specific, behind one class.

A task is a dataclass whose fields are its config (the Hydra group `task`)
and whose methods are all that the recipes, the agent and stage-2 mining
need to know about the benchmark:

    training   load(data) → TaskData (tools + docs, train/val examples, notes)
               encode(tokenizer, examples, tool_index, max_length) → Encoded
               shared_prefix: text every example follows (choice tasks)
    tools      build_tools(data_root) → the Tool objects its toolkens stand for
    evaluation eval_sets, eval_items(data) → EvalItem
               score(item, prediction) → one predictions.jsonl row
               metrics(rows) → metrics.json; report(metrics, rows, run_dir);
               headline(metrics) → one line for the console

Three kinds (`mode`), which decide how infer.py predicts:
  "text"    (TextTask: GSM8K-XL, custom) calls are spans of running text;
            evaluation decodes with the agent loop, so the task also gives
            the reasoning prompt, a stop rule and answer parsing.
  "choice"  (ChoiceTask: MetaTool) one decision per example, right after a
            shared prefix + the example's text: a toolken, or an ordinary
            token ("no tool").
  "plan"    (PlanTask: VirtualHome) every output is a sequence of toolkens,
            decoded step by step under the task's masks (infer/plan.py),
            then executed and judged by the task.

Adding a benchmark = a module here with a Task subclass (found by name, see
tasks/__init__.py) + an experiment file in toolken_plus/conf/experiment/ + tests.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from toolken_plus.data.encoding import Encoded, encode_examples
from toolken_plus.data.examples import Example
from toolken_plus.data.prompts import FewShotPrompt
from toolken_plus.tools.registry import Tool


@dataclass
class TaskData:
    """What training needs from a task."""

    tool_names: list[str]  # toolken order
    tool_docs: dict[str, str]  # what a reranker reads; hashed into checkpoints
    train: list[Any]  # Examples (text tasks) or the task's choice examples
    val: list[Any]
    notes: list[str] = field(default_factory=list)  # data statistics worth printing


@dataclass
class EvalItem:
    """One evaluation question and its gold answer."""

    id: str
    question: str  # what the model is given after the prompt
    label: Any  # the gold answer: a number, a tool name or None ("no tool"), a plan, ...
    meta: dict = field(default_factory=dict)  # task-specific (reference tool calls, ...)


def limit(items: list, n: int | None) -> list:
    return items if n is None else items[:n]


@dataclass
class Task:
    """Base of every benchmark; see the module docstring for the contract."""

    name: str = ""
    mode: ClassVar[str] = "text"
    eval_sets: ClassVar[tuple[str, ...]] = ("test",)  # data.eval choices; the first is the default
    main_metric: ClassVar[str] = ""  # what infer.py returns to Hydra sweepers
    # cli/compare.py's columns for this task's runs: (metrics key, title, format); () = its defaults
    compare_columns: ClassVar[tuple] = ()
    # What every method shares when evaluated on this task (toolken-plus report states it under each table)
    eval_conditions: ClassVar[str] = ""
    # The share of decisions that need a tool in the evaluation the call/no-call
    # decision is tuned for; stage 2 weighs validation no-call positions to it
    # when calibrating Reject (rerank/llm.py). None: as validation has them.
    call_prior: ClassVar[float | None] = None
    # The datasets (data folders, data/manifest.py) it reads through its data root, which is the first
    # folder holding them (data/locate.py); () = data.root as given (task=custom: your own files)
    datasets: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------ training
    def load(self, data) -> TaskData:
        raise NotImplementedError

    @property
    def shared_prefix(self) -> str:
        """Text every example follows (its KV is computed once)."""
        return ""

    def encode(self, tokenizer, examples: list, tool_index: dict[str, int], max_length: int) -> list[Encoded]:
        """Per-position training targets (data/encoding.py): call spans → labels."""
        return encode_examples(tokenizer, examples, tool_index, max_length)

    def with_tools(self, names: list[str]) -> "Task":
        """The task when `names` are added to a checkpoint (train.py tools.add=…);
        most tasks already know which tools their data calls."""
        return self

    # --------------------------------------------------------------- tools
    def build_tools(self, data_root: Path) -> dict[str, Tool]:
        """The tools this task's toolkens stand for, by name."""
        raise NotImplementedError

    # ---------------------------------------------------------- evaluation
    def eval_items(self, data) -> list[EvalItem]:
        raise NotImplementedError

    def score(self, item: EvalItem, prediction) -> dict:
        raise NotImplementedError

    def metrics(self, rows: list[dict]) -> dict:
        raise NotImplementedError

    def report(self, metrics: dict, rows: list[dict], run_dir: Path) -> str:
        """The markdown of report.md (a task may write more files, e.g. plots, into run_dir)."""
        raise NotImplementedError

    def headline(self, metrics: dict) -> str:
        return f"{self.main_metric} {metrics.get(self.main_metric)}"

    def config(self) -> dict:
        """This task's settings, for checkpoints and fingerprints."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass
class TextTask(Task):
    """Calls are spans of running text; evaluated by decoding with the agent loop."""

    mode: ClassVar[str] = "text"

    def prompt(self, data_root: Path) -> FewShotPrompt:
        """The reasoning prompt the agent decodes under."""
        raise NotImplementedError

    def stop_at(self, text: str) -> int | None:
        """Where the answer in `text` ends (the agent stops the row), or None to go on."""
        return None

    def parse_answer(self, text: str) -> Any:
        """The answer a finished generation gives."""
        return text.strip()

    # Rows and metrics every text task shares; tasks add their own fields.
    def generation_row(self, item: EvalItem, res) -> dict:
        return {
            "id": item.id,
            "question": item.question,
            "generation": res.generation,
            "trace": res.trace,
            "calls": [vars(c) for c in res.calls],
            "answer": res.answer,
            "label": item.label,
            "finish_reason": res.finish_reason,
            "notes": res.notes,  # e.g. the question was cut to fit the model's context
            "new_tokens": res.new_tokens,
            "reranks": res.reranks,
        }

    def generation_metrics(self, rows: list[dict]) -> dict:
        per_tool: dict[str, Counter] = {}
        for r in rows:
            for c in r["calls"]:
                per_tool.setdefault(c["tool"], Counter())
                per_tool[c["tool"]]["calls"] += 1
                per_tool[c["tool"]]["errors"] += c["error"] is not None
        n = len(rows)
        calls = sum(len(r["calls"]) for r in rows)
        reranks = [d for r in rows for d in r["reranks"]]
        return {
            "n": n,
            "tool_calls": calls,
            "tool_errors": sum(c["error"] is not None for r in rows for c in r["calls"]),
            "calls_per_question": calls / n if n else 0.0,
            "new_tokens": sum(r["new_tokens"] for r in rows),
            "rerank_decisions": len(reranks),
            "rerank_rejects": sum(d["chosen"] is None for d in reranks),
            # the reranker called another tool than stage 1's top-1
            "rerank_changed_tool": sum(d["chosen"] not in (None, d["candidates"][0]) for d in reranks),
            # "error: TypeError: <message>" counts as "error" (one key per kind, not per message)
            "finish_reasons": dict(Counter(r["finish_reason"].split(":")[0] for r in rows)),
            "per_tool": {t: {"calls": c["calls"], "errors": c["errors"]} for t, c in per_tool.items()},
        }


@dataclass
class ChoiceTask(Task):
    """One decision per example after a shared prefix: a toolken, or an
    ordinary token meaning "no tool"."""

    mode: ClassVar[str] = "choice"


@dataclass
class PlanTask(Task):
    """The output is a plan: steps of an action toolken followed by its
    object toolkens, until an end toolken. The task owns the environment a
    plan runs in; the predictor (infer/plan.py) asks it, at each choice,
    which toolkens may be chosen.

    Its methods beyond Task's:
      prefix_text(root)            the shared few-shot prefix the plans follow
      example_text(item)           what follows it, up to the first step
      arity(action)                objects an action takes (KeyError: not an action)
      action_text(a), object_text(o)  the text a chosen toolken writes (a line
                                   break ends each step), token-exact as in training
      scene_objects(item)          object toolkens that may be chosen for this item
      episode(item)                its environment (grounded decoding)
      can_run(ep, action, objects) / apply(ep, action, objects)
                                   grounded decoding: ask, and advance the environment
      gold_plan(item, with_ids)    the gold plan, for agent.setting=gold / gold_classes
    """

    mode: ClassVar[str] = "plan"
    end_toolken: ClassVar[str] = "END"


def format_trace(row: dict) -> str:
    """A text task's prediction row as a short console trace."""
    calls = "; ".join(f"<{c['tool']}>({c['args_text']}) → {c['result'] if c['error'] is None else 'ERROR ' + c['error']}"
                      for c in row["calls"]) or "no calls"
    verdict = f" | {'correct' if row['correct'] else 'wrong'}" if "correct" in row else ""
    return (f"Q: {row['question']}\nA:{row['trace'].rstrip()}\n   calls: {calls}\n"
            f"   answer {row['answer']} | label {row['label']}{verdict}")


__all__ = ["ChoiceTask", "EvalItem", "Example", "PlanTask", "Task", "TaskData", "TextTask", "format_trace", "limit"]

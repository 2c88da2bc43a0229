"""GSM8K-XL evaluation of the agent: predictions.jsonl, metrics.json, report.md.

False-positive calls. GSM8K-XL's reference solution lists its arithmetic
steps (`enhanced_process`, e.g. `4096-27-64 = 4005.0`); each step needs one
call per operator kind it uses. Per question, the calls of tool k beyond the
number of reference steps that need k are false positives (the multiset
difference agent calls − reference calls). So a question solved with one
extra `add` has one false-positive call, whatever the answer. Calls that
failed (bad arguments, errors) count too: the model asked for a tool.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from toolken_plus.infer.agent import Agent, AgentResult
from toolken_plus.infer.predictions import PredictionLog
from toolken_plus.rundir import atomic_write
from toolken_plus.tasks.answers import is_correct


def false_positive_calls(called: list[str], reference: list[str]) -> int:
    extra = Counter(called) - Counter(reference)
    return sum(extra.values())


def prediction_row(item: dict, res: AgentResult) -> dict:
    """One line of predictions.jsonl: the full generation, every call, the verdict."""
    called = [c.tool for c in res.calls]
    return {
        "id": item.get("id"),
        "question": item["question"],
        "generation": res.generation,
        "trace": res.trace,
        "calls": [vars(c) for c in res.calls],
        "answer": res.answer,
        "label": item["label"],
        "correct": is_correct(res.answer, item["label"]),
        "reference_tools": item.get("reference_tools", []),
        "false_positive_calls": false_positive_calls(called, item.get("reference_tools", [])),
        "finish_reason": res.finish_reason,
        "notes": res.notes,  # e.g. the question was cut to fit the model's context
        "new_tokens": res.new_tokens,
        "reranks": res.reranks,
    }


def metrics_from_rows(rows: list[dict], tool_names: list[str]) -> dict:
    per_tool = {t: Counter() for t in tool_names}
    # "error: TypeError: <message>" counts as "error" (one key per kind, not per message)
    finish = Counter(r["finish_reason"].split(":")[0] for r in rows)
    for r in rows:
        for c in r["calls"]:
            per_tool.setdefault(c["tool"], Counter())
            per_tool[c["tool"]]["calls"] += 1
            per_tool[c["tool"]]["errors"] += c["error"] is not None
        for t in r["reference_tools"]:
            per_tool.setdefault(t, Counter())["reference"] += 1
    n = len(rows)
    correct = sum(r["correct"] for r in rows)
    calls = sum(len(r["calls"]) for r in rows)
    fps = sum(r["false_positive_calls"] for r in rows)
    reranks = [d for r in rows for d in r["reranks"]]
    return {
        "accuracy": correct / n if n else 0.0,
        "n": n,
        "correct": correct,
        "tool_calls": calls,
        "tool_errors": sum(c["error"] is not None for r in rows for c in r["calls"]),
        "false_positive_calls": fps,
        "false_positive_calls_per_question": fps / n if n else 0.0,
        "calls_per_question": calls / n if n else 0.0,
        "rerank_decisions": len(reranks),
        "rerank_rejects": sum(d["chosen"] is None for d in reranks),
        # the reranker called another tool than stage 1's top-1
        "rerank_changed_tool": sum(d["chosen"] not in (None, d["candidates"][0]) for d in reranks),
        "finish_reasons": dict(finish),
        "per_tool": {t: {"calls": c["calls"], "errors": c["errors"], "reference": c["reference"]} for t, c in per_tool.items()},
    }


def evaluate(agent: Agent, items: list[dict], run_dir: str | Path, setting: str = "", *,
             fingerprint: dict | None = None, resume: bool = True) -> dict:
    """Answer `items`, appending each prediction as it finishes; a rerun with
    the same run dir and `fingerprint` answers only what is missing."""
    if not items:
        raise ValueError("no questions to evaluate (empty evaluation file, or data.limit_eval selects none)")
    run_dir = Path(run_dir)
    log_ = PredictionLog(run_dir, fingerprint or {"setting": setting}, resume=resume)
    try:
        todo = log_.todo(items)
        t0 = time.perf_counter()
        agent.run_batch([it["question"] for it in todo],
                        on_result=lambda i, res: log_.append(prediction_row(todo[i], res)))
        seconds = time.perf_counter() - t0
        rows = log_.finish(items)
    finally:
        log_.close()
    tool_names = agent.head.tool_names if agent.head is not None else list(agent.tools)
    metrics = metrics_from_rows(rows, tool_names)
    metrics.update({
        "setting": setting,
        "reranker": agent.reranker.name if agent.reranker is not None else "none",
        "seconds": round(seconds, 1),  # of this invocation: a resumed run answered only the rest
        "answered_now": len(todo),
        "resumed": len(items) - len(todo),
        "questions_per_s": len(todo) / seconds if seconds else 0.0,
        "new_tokens": sum(r["new_tokens"] for r in rows),
        "logit_bias": agent.bias,
        "batch_size": agent.cfg.batch_size,
    })
    atomic_write(run_dir / "metrics.json", lambda p: Path(p).write_text(json.dumps(metrics, indent=2)))
    atomic_write(run_dir / "report.md", lambda p: Path(p).write_text(report(metrics, rows)))
    return metrics


def report(metrics: dict, rows: list[dict], examples: int = 3) -> str:
    lines = [
        f"# GSM8K-XL evaluation ({metrics.get('setting') or 'agent'})",
        "",
        f"- accuracy: **{metrics['accuracy']:.3f}** ({metrics['correct']}/{metrics['n']})",
        f"- tool calls: {metrics['tool_calls']} ({metrics['calls_per_question']:.2f} per question), "
        f"errors: {metrics['tool_errors']}, false-positive calls: {metrics['false_positive_calls']} "
        f"({metrics['false_positive_calls_per_question']:.2f} per question)",
        f"- logit bias: {metrics.get('logit_bias')}, batch size {metrics.get('batch_size')}, "
        f"time {metrics.get('seconds')} s ({metrics.get('questions_per_s', 0):.3f} questions/s)",
        f"- finish reasons: {metrics['finish_reasons']}",
        "",
        "| tool | calls | errors | reference steps |",
        "|---|---|---|---|",
    ]
    for tool, c in metrics["per_tool"].items():
        lines.append(f"| <{tool}> | {c['calls']} | {c['errors']} | {c['reference']} |")
    lines += ["", "## Examples", ""]
    for r in rows[:examples]:
        lines += [f"**Q:** {r['question']}", "", f"**A:** {r['trace'].strip()}", "",
                  f"answer {r['answer']} / label {r['label']} → {'correct' if r['correct'] else 'wrong'}", ""]
    return "\n".join(lines) + "\n"


def format_trace(row: dict) -> str:
    calls = "; ".join(f"<{c['tool']}>({c['args_text']}) → {c['result'] if c['error'] is None else 'ERROR ' + c['error']}"
                      for c in row["calls"]) or "no calls"
    return (f"Q: {row['question']}\nA:{row['trace'].rstrip()}\n   calls: {calls}\n"
            f"   answer {row['answer']} | label {row['label']} | {'correct' if row['correct'] else 'wrong'}")

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

from .agent import Agent, AgentResult
from .answers import is_correct
from .head import atomic_write


def false_positive_calls(called: list[str], reference: list[str]) -> int:
    extra = Counter(called) - Counter(reference)
    return sum(extra.values())


def score(items: list[dict], results: list[AgentResult], tool_names: list[str]) -> tuple[list[dict], dict]:
    rows, per_tool = [], {t: Counter() for t in tool_names}
    correct = calls = errors = fps = reranks = rejects = changed = 0
    finish = Counter()
    for item, res in zip(items, results):
        ok = is_correct(res.answer, item["label"])
        called = [c.tool for c in res.calls]
        fp = false_positive_calls(called, item.get("reference_tools", []))
        correct += ok
        calls += len(res.calls)
        errors += sum(c.error is not None for c in res.calls)
        fps += fp
        reranks += len(res.reranks)
        rejects += sum(r["chosen"] is None for r in res.reranks)
        changed += sum(r["chosen"] not in (None, r["candidates"][0]) for r in res.reranks)
        finish[res.finish_reason] += 1
        for c in res.calls:
            per_tool.setdefault(c.tool, Counter())
            per_tool[c.tool]["calls"] += 1
            per_tool[c.tool]["errors"] += c.error is not None
        for t in item.get("reference_tools", []):
            per_tool.setdefault(t, Counter())["reference"] += 1
        rows.append({
            "id": item.get("id"),
            "question": item["question"],
            "generation": res.generation,
            "trace": res.trace,
            "calls": [vars(c) for c in res.calls],
            "answer": res.answer,
            "label": item["label"],
            "correct": ok,
            "reference_tools": item.get("reference_tools", []),
            "false_positive_calls": fp,
            "finish_reason": res.finish_reason,
            "new_tokens": res.new_tokens,
            "reranks": res.reranks,
        })
    n = len(items)
    metrics = {
        "accuracy": correct / n if n else 0.0,
        "n": n,
        "correct": correct,
        "tool_calls": calls,
        "tool_errors": errors,
        "false_positive_calls": fps,
        "false_positive_calls_per_question": fps / n if n else 0.0,
        "calls_per_question": calls / n if n else 0.0,
        "rerank_decisions": reranks,
        "rerank_rejects": rejects,
        "rerank_changed_tool": changed,  # the reranker called another tool than stage 1's top-1
        "finish_reasons": dict(finish),
        "per_tool": {t: {"calls": c["calls"], "errors": c["errors"], "reference": c["reference"]} for t, c in per_tool.items()},
    }
    return rows, metrics


def evaluate(agent: Agent, items: list[dict], run_dir: str | Path, setting: str = "") -> dict:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = agent.run_batch([it["question"] for it in items])
    seconds = time.perf_counter() - t0
    tool_names = agent.head.tool_names if agent.head is not None else list(agent.tools)
    rows, metrics = score(items, results, tool_names)
    metrics.update({
        "setting": setting,
        "reranker": agent.reranker.name if agent.reranker is not None else "none",
        "seconds": round(seconds, 1),
        "questions_per_s": len(items) / seconds if seconds else 0.0,
        "new_tokens": sum(r["new_tokens"] for r in rows),
        "logit_bias": agent.bias,
        "batch_size": agent.cfg.batch_size,
    })
    atomic_write(run_dir / "predictions.jsonl", lambda p: Path(p).write_text("".join(json.dumps(r) + "\n" for r in rows)))
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

"""Evaluation, the same for every task and predictor: answer the task's
items, appending each scored prediction to predictions.jsonl as it comes
(resumable, see predictions.py), then metrics.json and report.md, both the
task's (Task.score / metrics / report)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from toolken_plus.infer.predictions import PredictionLog
from toolken_plus.rundir import atomic_write


def evaluate(task, predictor, items: list, run_dir: str | Path, *, fingerprint: dict | None = None,
             resume: bool = True, info: dict | None = None) -> tuple[dict, list[dict]]:
    """`predictor.predict(items, on_result)` answers items (the Agent for text
    tasks, the ChoicePredictor for choice tasks); `info` is recorded with the
    metrics (setting, reranker, checkpoint, …). Returns (metrics, rows)."""
    if not items:
        raise ValueError("no questions to evaluate (empty evaluation file, or data.limit_eval selects none)")
    run_dir = Path(run_dir)
    log = PredictionLog(run_dir, fingerprint if fingerprint is not None else {"task": task.name}, resume=resume)
    try:
        todo = log.todo(items)
        t0 = time.perf_counter()
        predictor.predict(todo, on_result=lambda i, res: log.append(task.score(todo[i], res)))
        seconds = time.perf_counter() - t0
        rows = log.finish(items)
    finally:
        log.close()
    metrics = task.metrics(rows)
    metrics.update(info or {})
    metrics.update({
        "seconds": round(seconds, 1),  # of this invocation: a resumed run answered only the rest
        "answered_now": len(todo),
        "resumed": len(items) - len(todo),
        "questions_per_s": len(todo) / seconds if seconds else 0.0,
    })
    atomic_write(run_dir / "metrics.json", lambda p: Path(p).write_text(json.dumps(metrics, indent=2)))
    report = task.report(metrics, rows, run_dir)
    atomic_write(run_dir / "report.md", lambda p: Path(p).write_text(report))
    return metrics, rows

"""Side-by-side table of infer.py runs (same questions, different settings).

    python -m toolken_plus.cli.compare outputs/infer/gsm8k_xl/<run A> <run B> ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from toolken_plus.tasks import known_tasks

COLUMNS = [("label", "setting", "{}"), ("n", "questions", "{}"), ("accuracy", "accuracy", "{:.3f}"),
           ("tool_calls", "tool calls", "{}"), ("tool_errors", "tool errors", "{}"),
           ("false_positive_calls", "false-positive calls", "{}"), ("seconds", "wall s", "{}")]

SETTING_LABELS = {"no_tools": "no tools", "toolkens": "ToolkenGPT", "gold_classes": "gold, classes only"}
# infer.py's method= baselines (config/methods.py); a run without `method` predates them: toolkens
METHOD_LABELS = {"icl": "in-context (ICL)", "lora": "LoRA"}


def label(run: dict) -> str:
    """A run's row label, from its metrics.json (also used by cli/report.py)."""
    setting = run.get("setting", "")
    reranker = run.get("reranker", "none")
    if setting == "toolkens" and run.get("method") in METHOD_LABELS:
        text = METHOD_LABELS[run["method"]]
    elif setting == "toolkens" and reranker != "none":  # ToolkenGPT = toolkens alone; Toolken+ = toolkens + a reranker
        text = f"Toolken+ ({reranker})"
        if "rerank_rejects" in run:
            text += f", {run['rerank_rejects']} rejects"
    else:
        text = SETTING_LABELS.get(setting, setting)
    if run.get("grounded"):
        text += ", grounded"
    return text


def task_columns(task_name: str) -> list[tuple]:
    """The (metrics key, title, format) columns after the label: a task may name its own
    (VirtualHome: executability, success, …); COLUMNS otherwise."""
    task = known_tasks().get(task_name)
    return list(task.compare_columns) if task is not None and task.compare_columns else COLUMNS[1:]


def table(run_dirs: list[Path]) -> str:
    rows = []
    for d in run_dirs:
        path = Path(d) / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: pass run dirs of infer.py")
        row = json.loads(path.read_text())
        row["label"] = label(row)
        rows.append(row)
    columns = [COLUMNS[0], *task_columns(rows[0].get("task", ""))]
    questions = {r["n"] for r in rows}
    if len(questions) > 1:
        raise ValueError(f"runs answered different numbers of questions {sorted(questions)}: not comparable")
    lines = ["| " + " | ".join(title for _, title, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(fmt.format(r[key]) if key in r else "" for key, _, fmt in columns) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dirs", nargs="+", type=Path)
    print(table(ap.parse_args(argv).run_dirs))


if __name__ == "__main__":
    main()

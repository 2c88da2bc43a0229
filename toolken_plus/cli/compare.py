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


def table(run_dirs: list[Path]) -> str:
    rows = []
    for d in run_dirs:
        path = Path(d) / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: pass run dirs of infer.py")
        row = json.loads(path.read_text())
        reranker = row.get("reranker", "none")
        # ToolkenGPT = toolkens alone; Toolken+ = toolkens + a reranker
        row["label"] = {"no_tools": "no tools", "toolkens": "ToolkenGPT", "gold_classes": "gold, classes only"}.get(row.get("setting"), row.get("setting", ""))
        if row.get("setting") == "toolkens" and reranker != "none":
            row["label"] = f"Toolken+ ({reranker})"
            if "rerank_rejects" in row:
                row["label"] += f", {row['rerank_rejects']} rejects"
        if row.get("grounded"):
            row["label"] += ", grounded"
        rows.append(row)
    # A task may name its own columns (VirtualHome: executability, success, …).
    task = known_tasks().get(rows[0].get("task", ""))
    columns = [COLUMNS[0], *task.compare_columns] if task is not None and task.compare_columns else COLUMNS
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

"""One markdown report across benchmarks and methods, from every run dir under some folders.

    toolken-plus report DIR [DIR ...] [--out OUT_DIR]       (default OUT_DIR: reports/)

Every metrics.json under the DIRs (recursively) is a run: with a `setting` it is an
infer.py run, with `epochs` a train.py run; other JSON is ignored, unreadable files are
listed at the end of the report. OUT_DIR gets report.md: a table per benchmark and eval
set (rows labelled as in cli/compare.py), a training-cost table per task, and the PNG
bar charts it links to.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from toolken_plus.cli.compare import label, task_columns
from toolken_plus.tasks import known_tasks

BENCHMARKS = {"gsm8k_xl": "GSM8K-XL", "metatool": "MetaTool", "virtualhome": "VirtualHome"}  # section titles
METHOD_ORDER = ("toolkens", "icl", "lora")
# train.py's cost keys, as (metrics key, title, format) like compare.py's columns
COST_COLUMNS = [("epochs", "epochs", "{}"), ("cost/train_seconds", "train s", "{:.1f}"),
                ("cost/trainable_params", "trainable params", "{:,}"), ("cost/peak_memory_mb", "peak MB", "{:.0f}"),
                ("cost/examples_per_s", "examples/s", "{:.1f}")]
# Toolken runs from before the cost keys recorded their phases only; their wall time is the sum
# (the reranker's phase too: stage 2 is part of what a Toolken+ run costs).
PHASE_KEYS = ("time/train_cache_build_s", "time/train_epochs_s", "time/reranker_s")
COST_PANELS = [("cost/train_seconds", "wall time (s)", False), ("cost/trainable_params", "trainable params", True),
               ("cost/peak_memory_mb", "peak memory (MB)", False), ("cost/examples_per_s", "examples / s", False)]


@dataclass
class Run:
    path: Path  # the run dir
    metrics: dict  # its metrics.json (train runs: plus `reranker` and a derived cost/train_seconds)
    task: str  # "" when the run recorded none
    method: str  # toolkens | icl | lora; runs from before the method group are toolkens
    label: str

    def row(self) -> dict:
        return {**self.metrics, "label": self.label, "run_dir": _shown(self.path)}


def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------ collect
def collect(dirs) -> tuple[list[Run], list[Run], list[str]]:
    """(infer runs, train runs, notes on the metrics.json files that could not be read)."""
    infer, train, skipped = [], [], []
    for file in sorted({f for d in dirs for f in Path(d).rglob("metrics.json")}):
        try:
            metrics = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:  # unreadable, not UTF-8, not JSON
            skipped.append(f"`{_shown(file)}`: {type(err).__name__}: {err}")
            continue
        if not isinstance(metrics, dict):
            continue
        method = metrics.get("method") or "toolkens"
        if "setting" in metrics:
            infer.append(Run(file.parent, metrics, metrics.get("task") or "", method, label(metrics)))
        elif "epochs" in metrics:
            train.append(_train_run(file.parent, metrics, method))
    return infer, train, skipped


def _train_run(path: Path, metrics: dict, method: str) -> Run:
    adapter = _adapter(path)
    reranker = (adapter.reranker.get("name") if adapter else None) or "none"
    task = metrics.get("task") or (adapter.task.get("name") if adapter else None) or ""
    metrics = {**metrics, "reranker": reranker}
    if "cost/train_seconds" not in metrics and any(k in metrics for k in PHASE_KEYS):
        metrics["cost/train_seconds"] = sum(metrics.get(k) or 0 for k in PHASE_KEYS)
    return Run(path, metrics, task, method, label({"setting": "toolkens", "method": method, "reranker": reranker}))


def _adapter(run_dir: Path):
    """The run's toolken_config.json, or None: a LoRA run has none, and a broken one
    costs the report only the task and reranker names."""
    # Imported here: toolken_plus.adapter loads torch, which `toolken-plus tools` does without.
    from toolken_plus.adapter.config import ToolkenConfig

    try:
        return ToolkenConfig.load(run_dir)
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------- render
def render(infer_runs: list[Run], train_runs: list[Run], out_dir, skipped=()) -> str:
    """report.md's markdown; writes its PNGs into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = _sections(infer_runs)
    lines = ["# Toolken+ report", "",
             f"Inference runs: {len(infer_runs)} (a table per benchmark and eval set); training runs: {len(train_runs)}. "
             "They are compared by method: ToolkenGPT (toolkens alone), Toolken+ (toolkens and a reranker), the "
             "in-context (ICL) and LoRA baselines, and the gold and no-tools references where they were run. "
             "Every number is read from the metrics.json of the run dir named in its row.", ""]
    for (task, eval_set), runs in sections.items():
        lines += _benchmark_section(task, eval_set, runs, out_dir)
    if train_runs:
        lines += _cost_section(train_runs, out_dir)
    if skipped:
        lines += ["## Skipped files", "", *(f"- {s}" for s in skipped), ""]
    return "\n".join(lines)


def _sections(runs: list[Run]) -> dict[tuple[str, str], list[Run]]:
    """Runs by (task, eval set) in task order, then the task's own order of eval sets;
    a run without `eval` used its task's default set."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        cls = known_tasks().get(r.task)
        groups.setdefault((r.task, str(r.metrics.get("eval") or (cls.eval_sets[0] if cls else ""))), []).append(r)

    def order(key):
        cls = known_tasks().get(key[0])
        sets = list(cls.eval_sets) if cls else []
        return key[0], sets.index(key[1]) if key[1] in sets else len(sets), key[1]

    return {key: sorted(groups[key], key=_row_order) for key in sorted(groups, key=order)}


def _row_order(r: Run):
    # gold references first (gold, gold_classes), then toolkens, icl, lora
    method = METHOD_ORDER.index(r.method) if r.method in METHOD_ORDER else len(METHOD_ORDER)
    return not str(r.metrics.get("setting")).startswith("gold"), method, r.label.casefold(), str(r.path)


def _title(task: str, eval_set: str) -> str:
    return f"{BENCHMARKS.get(task, task or 'task not recorded')} {eval_set}".strip()


def _benchmark_section(task: str, eval_set: str, runs: list[Run], out_dir: Path) -> list[str]:
    cls = known_tasks().get(task)
    metric = cls.main_metric if cls else ""
    columns = task_columns(task)
    keys = [k for k, _, _ in columns]
    # The main metric, n and wall time in every table, also where the task's columns lack them.
    if metric and metric not in keys:
        columns.insert(keys.index("n") + 1 if "n" in keys else 0, (metric, metric.replace("_", " "), "{:.3f}"))
    if "n" not in keys:
        columns.insert(0, ("n", "n", "{}"))
    if "seconds" not in keys:
        columns.append(("seconds", "wall s", "{}"))
    title = _title(task, eval_set)
    rows = [r.row() for r in runs]
    lines = [f"## {title}", "", *_table([("label", "method", "{}"), *columns, ("run_dir", "run dir", "`{}`")], rows)]
    sizes = sorted({r["n"] for r in rows if r.get("n") is not None})
    if len(sizes) > 1:
        lines += ["", f"Not comparable: these runs answered different numbers of questions (n = {', '.join(map(str, sizes))})."]
    if cls is not None and cls.eval_conditions:
        lines += ["", cls.eval_conditions]
    png = _metric_png(runs, metric, f"{title}: {metric}", out_dir / f"{_slug(title)}.png") if metric else None
    if png:
        lines += ["", f"![{title}: {metric}]({png.name})"]
    return lines + [""]


def _cost_section(runs: list[Run], out_dir: Path) -> list[str]:
    lines = ["## Training cost", ""]
    by_task: dict[str, list[Run]] = {}
    for r in sorted(runs, key=_row_order):
        by_task.setdefault(r.task, []).append(r)
    columns = [("label", "method", "{}"), ("reranker", "reranker", "{}"), *COST_COLUMNS, ("run_dir", "run dir", "`{}`")]
    for task in sorted(by_task):
        lines += [f"### {BENCHMARKS.get(task, task or 'task not recorded')}", "",
                  *_table(columns, [r.row() for r in by_task[task]], keep_empty=True), ""]
    if any("cost/trainable_params" not in r.metrics for r in runs):
        lines += ["Blank cells were not recorded: runs from before train.py's cost keys recorded phase times only "
                  "(their train s is the sum of " + ", ".join(f"`{k}`" for k in PHASE_KEYS) + ").", ""]
    png = _cost_png([r for task in sorted(by_task) for r in by_task[task]], out_dir / "training_cost.png")
    return lines + [f"![training cost]({png.name})", ""]


def _table(columns: list[tuple], rows: list[dict], keep_empty: bool = False) -> list[str]:
    """A markdown table; a column no row has a value for is left out (unless keep_empty)."""
    if not keep_empty:
        columns = [c for c in columns if any(_cell(r.get(c[0]), c[2]) for r in rows)]
    lines = ["| " + " | ".join(title for _, title, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(key), fmt) for key, _, fmt in columns) + " |" for r in rows]
    return lines


def _cell(value, fmt: str) -> str:
    if value is None:
        return ""
    try:
        return fmt.format(value)
    except (TypeError, ValueError):  # a value of another type than the column's (older or hand-edited runs)
        return str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


# -------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display (as tasks/metatool.py)
    import matplotlib.pyplot as plt

    return plt


def _bar_name(r: Run) -> str:
    return f"{r.label}\n{r.path.name}"  # the dir name tells apart runs with one label


def _number(value) -> float:
    """A bar's length; NaN (no bar) where the run did not record the value."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _metric_png(runs: list[Run], metric: str, title: str, path: Path) -> Path | None:
    bars = [(_bar_name(r), _number(r.metrics.get(metric))) for r in runs]
    bars = [(name, v) for name, v in bars if not math.isnan(v)]
    if not bars:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.5 * len(bars)))
    names, values = zip(*bars)
    ax.bar_label(ax.barh(range(len(bars)), values, color="tab:blue"), fmt="%.3f", fontsize=8, padding=2)
    ax.set_yticks(range(len(bars)), names, fontsize=8)
    ax.invert_yaxis()  # the table's order, top to bottom
    ax.set_xlim(0, max(max(values) * 1.15, 1e-9))  # room for the value labels
    ax.set_xlabel(metric)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _cost_png(runs: list[Run], path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(COST_PANELS), figsize=(14, 1.5 + 0.5 * len(runs)), sharey=True)
    ys = range(len(runs))
    for ax, (key, title, log) in zip(axes, COST_PANELS):
        values = [_number(r.metrics.get(key)) for r in runs]
        ax.barh(ys, values, color="tab:orange")
        ax.set_title(title, fontsize=10)
        if all(math.isnan(v) for v in values):
            ax.text(0.5, 0.5, "not recorded", transform=ax.transAxes, ha="center", va="center", color="gray")
            ax.set_xticks([])
        elif log and any(v > 0 for v in values):  # parameter counts span orders of magnitude (toolkens vs LoRA)
            ax.set_xscale("log")
    axes[0].set_yticks(ys, [f"{_bar_name(r)} ({BENCHMARKS.get(r.task, r.task or '?')})" for r in runs], fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle("training cost per run")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------- cli
def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="folders searched recursively for run dirs")
    ap.add_argument("--out", type=Path, default=Path("reports"),
                    help="where report.md and its PNGs are written (default: reports/)")


def run(args) -> int:
    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        print(f"error: not a folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    infer_runs, train_runs, skipped = collect(args.dirs)
    if not infer_runs and not train_runs:
        print(f"error: no metrics.json of an infer.py or train.py run under {', '.join(map(str, args.dirs))}",
              *(f"skipped {s}" for s in skipped), sep="\n", file=sys.stderr)
        return 2
    markdown = render(infer_runs, train_runs, args.out, skipped)
    path = args.out / "report.md"
    path.write_text(markdown, encoding="utf-8")
    print(markdown)
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="toolken-plus report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

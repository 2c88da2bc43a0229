"""Evaluation of choice tasks (MetaTool): at each query's choice point,
does the system call the right tool, and does it know when to call none?

Per query: stage 1 gives toolken scores W_τ h and *triggers* a call when the
best toolken (+ bias) beats every vocabulary token; the reranker (none / llm /
embedding) re-scores the top-k and may Reject. We record
  selected  the tool the system would call if it had to (the reranker's best
            candidate; Reject ignored): selection quality, `top1_accuracy`
  called    what it actually does: triggered, and not rejected → that tool
Metrics: top1_accuracy, top{k}_accuracy (gold among stage 1's top-k),
end_to_end_accuracy (called == gold), per-tool accuracy and a confusion PNG;
with "no tool" queries: awareness_accuracy and call precision/recall/F1.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from toolken_plus.backbone import Backbone
from toolken_plus.config.validation import validate_config
from toolken_plus.infer.predictions import PredictionLog, settings_fingerprint
from toolken_plus.kv.rows import prefill_rows, prefix_row
from toolken_plus.rerank.base import RerankQuery
from toolken_plus.rundir import RunDirLock, atomic_write
from toolken_plus.tasks.metatool import ChoiceExample

log = logging.getLogger(__name__)


@torch.no_grad()
def predict_choices(backbone: Backbone, head, reranker, prefix: str, examples: list[ChoiceExample], *,
                    bias: float | None = None, batch_size: int = 32, progress: bool = True,
                    on_rows=None) -> list[dict]:
    """One prediction row per example; `on_rows(rows)` is called after each batch."""
    tok = backbone.tokenizer
    names = head.tool_names
    b = float(head.logit_bias) if bias is None else float(bias)
    shared = prefix_row(backbone, tok(prefix, add_special_tokens=False)["input_ids"])  # once, for every query
    need_kv = getattr(reranker, "name", "none") == "llm"
    out: list[dict] = []
    for s in tqdm(range(0, len(examples), batch_size), desc="choices", disable=not progress, unit="batch"):
        first = len(out)
        chunk = examples[s : s + batch_size]
        ids = [tok(ex.text, add_special_tokens=False)["input_ids"] for ex in chunk]
        jobs = [(shared[0], shared[1], i) for i in ids]
        rows = prefill_rows(backbone, jobs, keep_rows=need_kv)
        hidden = torch.stack([h for _, _, h in rows])
        vocab_max = (hidden @ backbone.lm_head.weight.T).max(dim=1).values
        scores = head(hidden)
        triggered = (scores + b).max(dim=1).values > vocab_max
        queries = [RerankQuery(scores[j], text=ex.query, layers=rows[j][0], n=rows[j][1]) for j, ex in enumerate(chunk)]
        for j, (ex, dec) in enumerate(zip(chunk, reranker.decide(queries))):
            c = dec.candidates
            selected = c[int(torch.tensor(dec.scores[: len(c)]).argmax())]
            called = dec.chosen if bool(triggered[j]) else None
            out.append({
                "id": ex.id, "query": ex.query, "gold": ex.tool,
                "triggered": bool(triggered[j]),
                "stage1_topk": [names[i] for i in torch.topk(scores[j], min(reranker.k, len(names))).indices.tolist()],
                "rerank": dec.to_dict(names),
                "selected": names[selected],
                "called": None if called is None else names[called],
            })
        if on_rows is not None:
            on_rows(out[first:])
    return out


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


def confusion_png(preds: list[dict], tool_names: list[str], path: Path, title: str = "") -> Path | None:
    """Gold (rows) vs selected (columns) over the tools that occur."""
    sel = [p for p in preds if p["gold"] is not None and p["gold"] in tool_names]
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


def write_choice_report(preds: list[dict], metrics: dict, run_dir: Path, *, title: str, tool_names: list[str]) -> None:
    """metrics.json, report.md and confusion.png (predictions.jsonl is written as they come)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "metrics.json", lambda p: Path(p).write_text(json.dumps(metrics, indent=2)))
    png = confusion_png(preds, tool_names, run_dir / "confusion.png", title)
    lines = [f"# {title}", ""]
    for key in ("n", "top1_accuracy", next((k for k in metrics if k.startswith("top") and k != "top1_accuracy"
                                              and k.endswith("_accuracy")), None),
                "end_to_end_accuracy", "triggered_rate", "rejected_rate", "awareness_accuracy", "call_precision",
                "call_recall", "call_f1", "false_positive_calls", "seconds"):
        if key and key in metrics:
            v = metrics[key]
            lines.append(f"- {key}: {v:.3f}" if isinstance(v, float) else f"- {key}: {v}")
    if "per_tool" in metrics:
        worst = sorted(metrics["per_tool"].items(), key=lambda kv: (kv[1]["accuracy"], -kv[1]["n"]))[:10]
        lines += ["", "Hardest tools (top-1 accuracy, n):", ""]
        lines += [f"- {t}: {v['accuracy']:.2f} ({v['n']})" for t, v in worst]
    wrong = Counter((p["gold"], p["selected"]) for p in preds if p["gold"] is not None and p["selected"] != p["gold"])
    if wrong:
        lines += ["", "Most frequent confusions (gold → selected):", ""]
        lines += [f"- {g} → {s}: {c}" for (g, s), c in wrong.most_common(10)]
    if png:
        lines += ["", f"![confusion]({png.name})"]
    atomic_write(run_dir / "report.md", lambda p: Path(p).write_text("\n".join(lines) + "\n"))


def run_choice_inference(cfg: dict, run_dir: str | Path, backbone: Backbone | None = None, *,
                         fingerprint: dict | None = None) -> tuple[dict, Path]:
    """infer.py for choice tasks: checkpoint + reranker → predictions, metrics, report, confusion.png.
    `fingerprint`: the settings a resumed run must share (default: from the config)."""
    cfg = validate_config(cfg)
    with RunDirLock(run_dir):
        return _run_choice_inference(cfg, Path(run_dir), backbone, fingerprint)


def _run_choice_inference(cfg: dict, run_dir: Path, backbone: Backbone | None, fingerprint: dict | None) -> tuple[dict, Path]:
    from toolken_plus.adapter.head import ToolkenHead
    from toolken_plus.backbone import build_backbone
    from toolken_plus.rerank.base import build_reranker
    from toolken_plus.tasks import metatool
    from toolken_plus.tasks.loading import metatool_split

    fingerprint = fingerprint if fingerprint is not None else settings_fingerprint(cfg)
    data, task = cfg["data"], cfg["task"]
    if not cfg.get("checkpoint"):
        raise ValueError("checkpoint=<run dir of train.py experiment=metatool> is required")
    root = Path(data["root"])
    docs = metatool.load_tool_docs(root / task["docs_file"])
    which = data.get("eval") or "selection"
    if data.get("eval_file"):
        examples, which = metatool.load_queries_csv(data["eval_file"], docs, prefix="eval"), f"file {data['eval_file']}"
    else:
        split = metatool_split(task, data)
        sets = {"selection": split.test, "awareness": split.awareness_test, "val": split.val}
        if which not in sets:
            raise ValueError(f"data.eval={which!r}: expected one of {sorted(sets)} (or data.eval_file=PATH)")
        examples = sets[which]
    if data.get("limit_eval") is not None:
        examples = examples[: int(data["limit_eval"])]
    if not examples:
        raise ValueError(f"no queries to evaluate in {which}")
    if backbone is None:
        backbone = build_backbone(cfg["model"])
    head = ToolkenHead.load(cfg["checkpoint"], backbone=backbone, tool_docs=docs)
    rcfg = dict(cfg.get("reranker") or {"name": "none"})
    reranker = build_reranker(rcfg, backbone, head, docs)
    items = [{"id": ex.id} for ex in examples]
    log_ = PredictionLog(run_dir, fingerprint, resume=bool(cfg.get("resume", True)))
    try:
        todo = {it["id"] for it in log_.todo(items)}
        t0 = time.perf_counter()
        predict_choices(backbone, head, reranker, metatool.PROMPT_PREFIX, [ex for ex in examples if ex.id in todo],
                        bias=cfg.get("agent", {}).get("logit_bias"), progress=bool(cfg.get("agent", {}).get("progress", True)),
                        on_rows=lambda rows: [log_.append(r) for r in rows])
        seconds = time.perf_counter() - t0
        preds = log_.finish(items)
    finally:
        log_.close()
    metrics = choice_metrics(preds, reranker.k)
    metrics.update({"seconds": round(seconds, 1), "answered_now": len(todo), "resumed": len(items) - len(todo),
                    "reranker": reranker.name, "eval": which,
                    "checkpoint": str(cfg["checkpoint"]), "logit_bias": float(head.logit_bias)})
    write_choice_report(preds, metrics, run_dir, tool_names=head.tool_names,
                        title=f"MetaTool {which}: reranker={reranker.name}, k={reranker.k}")
    return metrics, run_dir

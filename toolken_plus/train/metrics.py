"""Teacher-forced tool-call metrics and logit-bias calibration.

At every position of the validation texts the head *triggers* tool k when
the toolken logit s_k + b beats every vocabulary logit and every other
toolken. Against the gold labels this gives, per tool,
  precision = correct triggers of k / triggers of k,
  recall    = correct triggers of k / gold calls of k,
and the micro-averaged figures over all tools (a trigger of the wrong tool
at a gold position counts against both precision and recall).
"""

from __future__ import annotations

import numpy as np
import torch


def predicted_tools(tool_scores: torch.Tensor, max_vocab_logit: torch.Tensor, bias: float) -> torch.Tensor:
    """(P,) predicted tool index, or -1 where a vocabulary token wins."""
    best, idx = (tool_scores + bias).max(dim=1)
    return torch.where(best > max_vocab_logit, idx, torch.full_like(idx, -1))


def _prf(tp: float, n_pred: float, n_gold: float) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def tool_call_metrics(pred: torch.Tensor, gold: torch.Tensor, tool_names: list[str], prefix: str = "val/") -> dict[str, float]:
    pred, gold = pred.cpu().numpy(), gold.cpu().numpy()
    out: dict[str, float] = {}
    tp_all = float(((pred == gold) & (gold >= 0)).sum())
    p, r, f = _prf(tp_all, float((pred >= 0).sum()), float((gold >= 0).sum()))
    out.update({f"{prefix}precision": p, f"{prefix}recall": r, f"{prefix}f1": f})
    # Triggering at all, whatever the tool: separates "when" from "which".
    tp_trig = float(((pred >= 0) & (gold >= 0)).sum())
    _, _, f_trig = _prf(tp_trig, float((pred >= 0).sum()), float((gold >= 0).sum()))
    out[f"{prefix}trigger_f1"] = f_trig
    f1s = []
    for k, name in enumerate(tool_names):
        tp = float(((pred == k) & (gold == k)).sum())
        pk, rk, fk = _prf(tp, float((pred == k).sum()), float((gold == k).sum()))
        out.update({f"{prefix}{name}/precision": pk, f"{prefix}{name}/recall": rk, f"{prefix}{name}/f1": fk,
                    f"{prefix}{name}/support": float((gold == k).sum())})
        f1s.append(fk)
    out[f"{prefix}macro_f1"] = float(np.mean(f1s)) if f1s else 0.0
    out[f"{prefix}positions"] = float(len(gold))
    out[f"{prefix}gold_calls"] = float((gold >= 0).sum())
    out[f"{prefix}false_positive_triggers"] = float(((pred >= 0) & (gold < 0)).sum())
    return out


def calibrate_bias(tool_scores: torch.Tensor, max_vocab_logit: torch.Tensor, gold: torch.Tensor,
                   grid: tuple[float, float, float] = (-10.0, 10.0, 0.25)) -> tuple[float, float]:
    """Choose the logit bias b that maximises micro F1 on validation data.

    ToolkenGPT sets b by hand; we sweep a grid and keep the best (ties go to
    the b closest to 0, so an uninformative sweep leaves b = 0)."""
    lo, hi, step = grid
    candidates = np.arange(lo, hi + step / 2, step)
    candidates = candidates[np.argsort(np.abs(candidates), kind="stable")]
    best_b, best_f = 0.0, -1.0
    for b in candidates:
        pred = predicted_tools(tool_scores, max_vocab_logit, float(b))
        tp = float(((pred == gold) & (gold >= 0)).sum())
        _, _, f = _prf(tp, float((pred >= 0).sum()), float((gold >= 0).sum()))
        if f > best_f + 1e-12:
            best_b, best_f = float(b), f
    return best_b, best_f

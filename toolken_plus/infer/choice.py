"""Prediction for choice tasks (MetaTool): at each example's choice point,
does the system call the right tool, and does it know when to call none?

Per example: stage 1 gives toolken scores W_τ h and *triggers* a call when the
best toolken (+ bias) beats every vocabulary token; the reranker (none / llm /
embedding) ranks stage 1's top-k and Reject. Each result records
  selected  the tool the system would call if it had to (the best-ranked
            candidate; Reject ignored): selection quality
  called    what it actually does: triggered, and not rejected → that tool
The task scores them (tasks/metatool.py).
"""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm

from toolken_plus.backbone import Backbone
from toolken_plus.data.encoding import context_start_ids
from toolken_plus.kv import prefill_rows, prefix_row
from toolken_plus.rerank.base import RerankContext, decision_record, top_candidates
from toolken_plus.tasks.base import ChoiceTask, EvalItem

log = logging.getLogger(__name__)


class ChoicePredictor:
    """Decides the choice point of many examples at once; the shared prefix's
    KV is computed once and every batch extends it."""

    def __init__(self, backbone: Backbone, head, reranker, task: ChoiceTask, *, bias: float | None = None,
                 batch_size: int = 32, progress: bool = True):
        self.backbone, self.head, self.reranker, self.task = backbone, head, reranker, task
        self.bias = float(head.logit_bias) if bias is None else float(bias)
        self.batch_size = batch_size
        self.progress = progress
        tok = backbone.tokenizer
        # the shared prefix begins every context, as in training (recipe.py)
        self._prefix = prefix_row(backbone, context_start_ids(tok, task.shared_prefix) if task.shared_prefix else [])

    @torch.no_grad()
    def predict(self, items: list[EvalItem], on_result=None) -> list[dict]:
        """One result per item; `on_result(index, result)` as each batch finishes."""
        tok, names = self.backbone.tokenizer, self.head.tool_names
        k = self.reranker.k
        out: list[dict] = []
        for s in tqdm(range(0, len(items), self.batch_size), desc="choices", disable=not self.progress, unit="batch"):
            chunk = items[s : s + self.batch_size]
            ids = [tok(self.task.example_text(it), add_special_tokens=False)["input_ids"] for it in chunk]
            layers, n = self._prefix
            rows = prefill_rows(self.backbone, [(layers, n, i) for i in ids], keep_rows=self.reranker.needs_kv)
            hidden = torch.stack([h for _, _, h in rows])
            vocab_max = (hidden @ self.backbone.lm_head.weight.T).max(dim=1).values
            scores = self.head(hidden)
            triggered = (scores + self.bias).max(dim=1).values > vocab_max
            contexts = [RerankContext(scores[j], text=it.question, layers=rows[j][0], n=rows[j][1],
                                      trigger_at=float(vocab_max[j]) - self.bias) for j, it in enumerate(chunk)]
            cands = [top_candidates(c.scores, k) for c in contexts]
            for j, (c, ranked) in enumerate(zip(cands, self.reranker.rank_batch(contexts, cands))):
                selected = next(r for r in ranked if not r.is_reject)
                called = ranked[0].tool if bool(triggered[j]) else None
                result = {
                    "triggered": bool(triggered[j]),
                    "stage1_topk": [names[i] for i in c],
                    "rerank": decision_record(c, ranked, names),
                    "selected": selected.tool,
                    "called": called,
                }
                out.append(result)
                if on_result is not None:
                    on_result(s + j, result)
        return out

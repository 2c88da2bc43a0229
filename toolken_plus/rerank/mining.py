"""Training data for stage 2, mined from the trained stage-1 head.

Over teacher-forced positions of the task's encoded examples:
  gold is a tool                         → candidates top-k ∪ {gold}, label gold
  gold is a vocabulary token, stage 1
  triggers a tool (a false positive)     → candidates top-k, label Reject
A `MinedSet` holds those rows with their labels, stage-1 scores and a
`PositionContexts` that gives each row's context (its text and KV row), so
that every reranker's `fit` reads the same thing whatever the task.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from toolken_plus.data.encoding import IGNORE, Encoded
from toolken_plus.kv import crop_row, prefill_rows, prefix_row
from toolken_plus.rerank.base import RerankContext, stage1_margins


def mine(scores: torch.Tensor, max_logit: torch.Tensor, tool_label: torch.Tensor, bias: float,
         n_tools: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cache rows to train on and their labels (a tool index, or n_tools = Reject)."""
    triggered = (scores + bias).max(dim=1).values > max_logit
    gold = tool_label >= 0
    false_pos = (tool_label < 0) & triggered
    rows = torch.nonzero(gold | false_pos).squeeze(1)
    labels = torch.where(gold[rows], tool_label[rows], torch.full_like(rows, n_tools))
    return rows, labels


def subsample(rows: torch.Tensor, labels: torch.Tensor, limit: int | None, seed: int,
              keep_label: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded subsample of at most `limit` rows, in order. Rows labelled
    `keep_label` (Reject: false positives are rare and are what Reject learns
    from) are all kept when they fit; the rest fill the remaining budget."""
    if limit is None or len(rows) <= limit:
        return rows, labels
    g = torch.Generator().manual_seed(seed)
    if keep_label is None:
        keep = torch.randperm(len(rows), generator=g)[:limit]
    else:
        must = torch.nonzero(labels == keep_label).squeeze(1)[:limit]
        rest = torch.nonzero(labels != keep_label).squeeze(1)
        keep = torch.cat([must, rest[torch.randperm(len(rest), generator=g)[: limit - len(must)]]])
    keep = keep.sort().values
    return rows[keep], labels[keep]


class PositionContexts:
    """The context of every kept (labelled) position of the encoded examples:
    the task's shared prefix, then the example's tokens up to and including
    the position.

    KV: the prefix's is computed once. At an example's last token (a choice
    task's only position) its tokens ride along as `pending` in the rerank
    pass itself, one forward; at earlier positions (text tasks, many per
    example) the example's KV is computed once and cropped per position."""

    def __init__(self, backbone, prefix_ids: list[int], encoded: list[Encoded], with_kv: bool = True):
        self.backbone = backbone
        self.with_kv = with_kv  # the embedding reranker reads only the text
        self.tok = backbone.tokenizer
        self.encoded = encoded
        self.prefix = prefix_row(backbone, prefix_ids) if with_kv else (None, 0)
        keep = [np.flatnonzero(e.tool_label != IGNORE) for e in encoded]
        self.row_example = np.concatenate([np.full(len(k), i) for i, k in enumerate(keep)]) if keep else np.zeros(0, int)
        self.row_token = np.concatenate(keep) if keep else np.zeros(0, int)
        self._row_cache: tuple[int, list] | None = None

    def _example_row(self, i: int):
        """KV of prefix + example i (one example at a time: positions come grouped by example)."""
        if self._row_cache is None or self._row_cache[0] != i:
            ids = self.encoded[i].input_ids.tolist()
            layers, n = self.prefix
            if n:
                (row, _, _), = prefill_rows(self.backbone, [(layers, n, ids)])
            else:
                row = prefix_row(self.backbone, ids)[0]
            self._row_cache = (i, row)
        return self._row_cache[1]

    def pending_tokens(self, row: int) -> int:
        """How many of the row's own tokens its rerank pass runs (`pending`):
        the whole example at its last token, none elsewhere (its KV is reused)."""
        i, t = int(self.row_example[row]), int(self.row_token[row])
        return t + 1 if self.with_kv and t == len(self.encoded[i]) - 1 else 0

    def contexts(self, rows: list[int], scores: torch.Tensor) -> list[RerankContext]:
        out = []
        for r, s in zip(rows, scores):
            i, t = int(self.row_example[r]), int(self.row_token[r])
            ids = self.encoded[i].input_ids[: t + 1].tolist()
            text = self.tok.decode(ids)
            layers, n = self.prefix
            if not self.with_kv:
                out.append(RerankContext(s, text=text))
            elif t == len(self.encoded[i]) - 1:
                out.append(RerankContext(s, text=text, layers=layers, n=n, pending=ids))
            else:
                out.append(RerankContext(s, text=text, layers=crop_row(self._example_row(i), n + t + 1), n=n + t + 1))
        return out


@dataclass
class MinedSet:
    """Mined positions of one split: cache rows, labels (tool index or
    n_tools = Reject), stage-1 scores of every cache row, and their contexts."""

    rows: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    contexts: PositionContexts
    n_tools: int
    # per cache row, the stage-1 score a toolken had to beat (max vocabulary logit − bias); see RerankContext
    trigger_at: torch.Tensor | None = None
    # Positions where no tool is due (triggered or not), and the gold / Reject
    # rows mined before any subsampling: what calibrating the call decision
    # weighs the kept rows by (LLMRerank.fit).
    n_no_call: int = 0
    mined_golds: int | None = None
    mined_rejects: int | None = None

    def __post_init__(self):
        if self.mined_golds is None:
            self.mined_golds, self.mined_rejects = self.n_golds, self.n_rejects

    def subsample(self, limit: int | None, seed: int, keep_rejects: bool = False) -> "MinedSet":
        rows, labels = subsample(self.rows, self.labels, limit, seed, keep_label=self.n_tools if keep_rejects else None)
        return MinedSet(rows, labels, self.scores, self.contexts, self.n_tools, self.trigger_at, self.n_no_call,
                        self.mined_golds, self.mined_rejects)

    def triggered(self, rows: list[int]) -> torch.Tensor:
        """Whether stage 1 calls a tool at these cache rows (the reranker runs
        only there; elsewhere nothing is called whatever stage 2 would say)."""
        if self.trigger_at is None:
            return torch.ones(len(rows), dtype=torch.bool)
        return self.scores[rows].max(dim=1).values > self.trigger_at[rows]

    def row_weights(self, call_prior: float | None = None) -> torch.Tensor:
        """Per kept row, how many positions it stands for in call counts:
        subsampled gold rows count for the gold rows left out, and with
        `call_prior` p the no-call side is reweighted so that positions
        needing a tool make up p of the total (e.g. 0.5 for an awareness test
        with as many no-tool queries as tool queries)."""
        gold = self.labels < self.n_tools
        w = torch.ones(len(self.labels))
        if self.n_golds:
            w[gold] = self.mined_golds / self.n_golds
        if self.n_rejects:
            w[~gold] = self.mined_rejects / self.n_rejects
        if call_prior is not None and self.n_no_call and self.mined_golds:
            w[~gold] *= self.mined_golds * (1 - call_prior) / (call_prior * self.n_no_call)
        return w

    def stage1_margins(self, rows: list[int]) -> torch.Tensor:
        """stage1_margins (rerank/base.py) of these cache rows, stacked."""
        at = self.trigger_at
        return torch.stack([stage1_margins(self.scores[r], None if at is None else float(at[r])) for r in rows])

    @property
    def n_rejects(self) -> int:
        return int((self.labels == self.n_tools).sum())

    @property
    def n_golds(self) -> int:
        return int((self.labels < self.n_tools).sum())


def decision_metrics(pred: torch.Tensor, labels: torch.Tensor, n_tools: int, prefix: str) -> dict[str, float]:
    """How often decisions on mined positions are the label, split into
    gold-tool positions and false-positive (Reject) positions."""
    gold_tool, rej = labels < n_tools, labels == n_tools
    out = {f"{prefix}accuracy": float((pred == labels).float().mean()), f"{prefix}n": float(len(labels))}
    if gold_tool.any():
        out[f"{prefix}tool_accuracy"] = float((pred[gold_tool] == labels[gold_tool]).float().mean())
        out[f"{prefix}wrongly_rejected"] = float((pred[gold_tool] == n_tools).float().mean())
    if rej.any():
        out[f"{prefix}fp_rejected"] = float((pred[rej] == n_tools).float().mean())
    return out


def stage1_baseline(mined: MinedSet) -> dict[str, float]:
    """The same mined positions decided by stage 1 alone (its top-1 is the
    call, never Reject): what stage 2 is compared against."""
    return decision_metrics(mined.scores[mined.rows].argmax(1), mined.labels, mined.n_tools, "val_stage1/")

"""Training stage 2 (DESIGN.md section 2): mine examples from the trained
stage-1 head, cache their rerank hidden states, fit W_r; or, for the
embedding reranker, calibrate its Reject threshold.

Mining, over teacher-forced positions:
  gold is a tool                         → candidates top-k ∪ {gold}, label gold
  gold is a vocabulary token, stage 1
  triggers a tool (a false positive)     → candidates top-k, label Reject
Every mined position needs the KV of its context; `ContextSource`s provide
it: a shared prompt prefix + the example (choice tasks such as MetaTool), or
the example's own tokens up to the position (text tasks such as GSM8K-XL).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from toolken_plus.backbone import Backbone
from toolken_plus.data.encoding import IGNORE, Encoded
from toolken_plus.kv.rows import crop_row, prefix_row
from toolken_plus.rerank.base import EmbeddingReranker, LLMReranker, RerankQuery, candidate_mask, init_rerank_weight
from toolken_plus.train.trainer import CachedFeatures

log = logging.getLogger(__name__)


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


class ChoiceContexts:
    """One position per example, at its end; context = shared prefix + example."""

    def __init__(self, backbone: Backbone, prefix_ids: list[int], encoded: list[Encoded]):
        self.tok = backbone.tokenizer
        self.prefix = prefix_row(backbone, prefix_ids)  # computed once; empty ids give an empty row
        self.encoded = encoded

    def queries(self, rows: list[int], scores: torch.Tensor, force: list[int | None]) -> list[RerankQuery]:
        out = []
        for r, s, f in zip(rows, scores, force):
            ids = self.encoded[r].input_ids.tolist()
            layers, n = self.prefix
            out.append(RerankQuery(s, text=self.tok.decode(ids), layers=layers, n=n, pending=ids, force=f))
        return out


class TokenContexts:
    """Every kept token position of every example; context = the example's
    tokens up to and including the position (one forward per example)."""

    def __init__(self, backbone: Backbone, encoded: list[Encoded], with_kv: bool = True):
        self.backbone = backbone
        self.with_kv = with_kv  # the embedding reranker reads only the text
        self.tok = backbone.tokenizer
        self.encoded = encoded
        keep = [np.flatnonzero(e.tool_label != IGNORE) for e in encoded]
        self.row_example = np.concatenate([np.full(len(k), i) for i, k in enumerate(keep)]) if keep else np.zeros(0, int)
        self.row_token = np.concatenate(keep) if keep else np.zeros(0, int)
        self._row_cache: tuple[int, list] | None = None

    def _example_row(self, i: int):
        if self._row_cache is None or self._row_cache[0] != i:
            self._row_cache = (i, prefix_row(self.backbone, self.encoded[i].input_ids.tolist())[0])
        return self._row_cache[1]

    def queries(self, rows: list[int], scores: torch.Tensor, force: list[int | None]) -> list[RerankQuery]:
        out = []
        for r, s, f in zip(rows, scores, force):
            i, t = int(self.row_example[r]), int(self.row_token[r])
            ids = self.encoded[i].input_ids[: t + 1].tolist()
            layers = crop_row(self._example_row(i), t + 1) if self.with_kv else None
            out.append(RerankQuery(s, text=self.tok.decode(ids), layers=layers, n=t + 1, force=f))
        return out


@dataclass
class RerankSet:
    g: torch.Tensor  # (N, d) rerank hidden states
    masks: torch.Tensor  # (N, n_tools + 1) candidates + Reject
    labels: torch.Tensor  # (N,) tool index or n_tools (Reject)
    seconds: float = 0.0


def build_rerank_set(reranker: LLMReranker, contexts, rows: torch.Tensor, labels: torch.Tensor,
                     scores: torch.Tensor, *, force_gold: bool = True, seed: int = 0, batch_size: int = 16,
                     progress: bool = True, desc: str = "rerank states") -> RerankSet:
    """Run the doc-block pass for every mined row and keep g. Training forces
    the gold tool into the candidates; evaluation does not (a gold missing
    from the top-k is then simply a miss)."""
    n = reranker.n_tools
    t0 = time.perf_counter()
    gs, masks = [], []
    order = rows.tolist()
    slots = torch.randint(0, 1 << 16, (len(order),), generator=torch.Generator().manual_seed(seed)).tolist()
    for s in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, unit="batch"):
        chunk = order[s : s + batch_size]
        lab = labels[s : s + batch_size].tolist()
        force = [None if (lb == n or not force_gold) else lb for lb in lab]
        qs = contexts.queries(chunk, scores[chunk], force)
        for q, slot in zip(qs, slots[s : s + batch_size]):
            q.force_slot = slot
        g, cands = reranker.states(qs)
        gs.append(g.float())
        masks += [candidate_mask(c, n) for c in cands]
    d = reranker.weight.shape[1]
    return RerankSet(torch.cat(gs) if gs else torch.zeros(0, d), torch.stack(masks) if masks else torch.zeros(0, n + 1, dtype=torch.bool),
                     labels.clone(), time.perf_counter() - t0)


def rerank_loss(weight: torch.Tensor, g: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = (g @ weight.T).masked_fill(~masks, float("-inf"))
    return F.cross_entropy(logits, labels)


def train_rerank_weight(init: torch.Tensor, data: RerankSet, *, epochs: int = 20, lr: float = 1e-3,
                        batch_size: int = 32, seed: int = 0, progress: bool = True,
                        frozen: torch.Tensor | None = None) -> tuple[torch.Tensor, list[float]]:
    """Masked cross-entropy over C ∪ {Reject}; returns W_r and the per-epoch
    losses. Rows marked in `frozen` (bool, one per row) keep their values
    exactly (adding tools to a trained checkpoint)."""
    w = torch.nn.Parameter(init.detach().clone().float())
    kept = init.detach().clone().float()
    opt = torch.optim.Adam([w], lr=lr)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in tqdm(range(epochs), desc="rerank epochs", disable=not progress, unit="epoch"):
        order = torch.randperm(len(data.labels), generator=g)
        total, steps = 0.0, 0
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            loss = rerank_loss(w, data.g[idx], data.masks[idx], data.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if frozen is not None:
                with torch.no_grad():
                    w[frozen] = kept[frozen]
            total, steps = total + loss.item(), steps + 1
        losses.append(total / max(steps, 1))
    return w.detach(), losses


def rerank_metrics(weight: torch.Tensor, data: RerankSet, n_tools: int, prefix: str = "val_rerank/") -> dict[str, float]:
    """On mined positions: how often the reranker's argmax is the label,
    split into gold-tool positions and false-positive (Reject) positions."""
    if len(data.labels) == 0:
        return {}
    pred = (data.g @ weight.T).masked_fill(~data.masks, float("-inf")).argmax(1)
    return _decision_metrics(pred, data.labels, n_tools, prefix)


def _decision_metrics(pred: torch.Tensor, labels: torch.Tensor, n_tools: int, prefix: str) -> dict[str, float]:
    gold_tool, rej = labels < n_tools, labels == n_tools
    out = {f"{prefix}accuracy": float((pred == labels).float().mean()), f"{prefix}n": float(len(labels))}
    if gold_tool.any():
        out[f"{prefix}tool_accuracy"] = float((pred[gold_tool] == labels[gold_tool]).float().mean())
        out[f"{prefix}wrongly_rejected"] = float((pred[gold_tool] == n_tools).float().mean())
    if rej.any():
        out[f"{prefix}fp_rejected"] = float((pred[rej] == n_tools).float().mean())
    return out


def stage1_baseline(scores: torch.Tensor, labels: torch.Tensor, n_tools: int) -> dict[str, float]:
    """The same mined positions decided by stage 1 alone (its top-1 is the
    call, never Reject): what stage 2 is compared against."""
    return _decision_metrics(scores.argmax(1), labels, n_tools, "val_stage1/")


def calibrate_threshold(reranker: EmbeddingReranker, contexts, rows: torch.Tensor, labels: torch.Tensor,
                        scores: torch.Tensor, n_tools: int) -> tuple[float, dict[str, float]]:
    """The Reject threshold that makes the most correct decisions (call the
    gold tool / reject a false positive) on these validation positions."""
    qs = contexts.queries(rows.tolist(), scores[rows], [None] * len(rows))
    best, chosen = [], []
    for c, comb in reranker.combined(qs):
        j = int(comb.argmax())
        best.append(float(comb[j]))
        chosen.append(c[j])
    best_t, chosen_t = torch.tensor(best), torch.tensor(chosen)
    grid = sorted(set(best)) + [float("inf")]
    top_thr, top_acc = float("-inf"), -1.0
    for thr in grid:
        pred = torch.where(best_t >= thr, chosen_t, torch.full_like(chosen_t, n_tools))
        acc = float((pred == labels).float().mean())
        if acc > top_acc + 1e-12:
            top_thr, top_acc = thr, acc
    # Put the threshold midway below the deciding value, not on it.
    below = [b for b in grid if b < top_thr]
    thr = (top_thr + below[-1]) / 2 if below and top_thr != float("inf") else top_thr
    pred = torch.where(best_t >= thr, chosen_t, torch.full_like(chosen_t, n_tools))
    return thr, _decision_metrics(pred, labels, n_tools, "val_rerank/")


def stage1_arrays(features: CachedFeatures, head) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return features.scores(head), features.max_logit, features.tool_label


def make_contexts(backbone: Backbone, kind: str, prefix: str, encoded: list[Encoded], with_kv: bool = True):
    if kind == "choice":
        ids = backbone.tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
        return ChoiceContexts(backbone, ids, encoded)
    return TokenContexts(backbone, encoded, with_kv)


def fit_reranker(rcfg: dict, backbone: Backbone, head, *, kind: str, prefix: str, tool_docs: dict[str, str],
                 train_enc: list[Encoded], train_feats: CachedFeatures, val_enc: list[Encoded],
                 val_feats: CachedFeatures | None, seed: int = 0, progress: bool = True, embedder=None,
                 frozen_tools: int = 0) -> dict:
    """Stage 2 for `reranker.name` in {llm, embedding}; sets head.rerank_* and
    returns metrics. The stage-1 head (and its calibrated bias) is fixed.
    `frozen_tools` > 0 (adding tools to a checkpoint): W_r starts from the
    head's grown matrix and only the new tools' rows are trained; the first
    `frozen_tools` rows and Reject stay exactly as they were."""
    name = rcfg.get("name", "none")
    n = head.n_tools
    bias = float(head.logit_bias)
    k = int(rcfg.get("k", 3))
    out: dict = {}
    if name == "llm":
        scores, max_logit, label = stage1_arrays(train_feats, head)
        rows, labels = mine(scores, max_logit, label, bias, n)
        out["rerank/mined_gold"] = int((labels < n).sum())
        out["rerank/mined_false_positives"] = int((labels == n).sum())
        keep = n if rcfg.get("keep_all_rejects", False) else None
        rows, labels = subsample(rows, labels, rcfg.get("max_train"), seed, keep_label=keep)
        frozen = None
        init = init_rerank_weight(head.weight)
        if frozen_tools:
            if head.rerank_weight is None or head.rerank_weight.shape[0] != n + 1:
                raise ValueError("adding tools with reranker=llm needs a base checkpoint trained with reranker=llm")
            init = head.rerank_weight.detach().clone()
            frozen = torch.zeros(n + 1, dtype=torch.bool)
            frozen[:frozen_tools] = True
            frozen[n] = True
        reranker = LLMReranker(backbone, init, head.tool_names, tool_docs, k, int(rcfg.get("max_doc_chars", 200)))
        data = build_rerank_set(reranker, make_contexts(backbone, kind, prefix, train_enc), rows, labels, scores,
                                batch_size=int(rcfg.get("state_batch", 16)), progress=progress, desc="rerank states (train)")
        out["rerank/train_positions"] = len(rows)
        out["rerank/train_rejects"] = int((labels == n).sum())  # false positives left after subsampling
        out["time/rerank_states_s"] = round(data.seconds, 2)
        weight, losses = train_rerank_weight(reranker.weight, data, epochs=int(rcfg.get("epochs", 20)),
                                             lr=float(rcfg.get("lr", 1e-3)), batch_size=int(rcfg.get("batch_size", 32)),
                                             seed=seed, progress=progress, frozen=frozen)
        out["rerank/train_loss"] = losses[-1] if losses else None
        out.update(rerank_metrics(weight, data, n, prefix="train_rerank/"))
        head.rerank_weight = torch.nn.Parameter(weight, requires_grad=False)
        head.rerank_config = {"name": "llm", "k": k, "max_doc_chars": int(rcfg.get("max_doc_chars", 200))}
        if val_feats is not None:
            vs, vm, vl = stage1_arrays(val_feats, head)
            vrows, vlabels = subsample(*mine(vs, vm, vl, bias, n), rcfg.get("max_val"), seed)
            vdata = build_rerank_set(reranker, make_contexts(backbone, kind, prefix, val_enc), vrows, vlabels, vs, force_gold=False,
                                     batch_size=int(rcfg.get("state_batch", 16)), progress=progress, desc="rerank states (val)")
            out.update(rerank_metrics(weight, vdata, n))
            out.update(stage1_baseline(vs[vrows], vlabels, n))
        return out
    if name == "embedding":
        if frozen_tools:
            # No per-tool parameters to train; recalibrating the threshold
            # would change the decisions on the old tools, so it is kept.
            return {"rerank/threshold": head.rerank_config.get("threshold")}
        if val_feats is None:
            raise ValueError("reranker=embedding calibrates its Reject threshold on validation data: none given")
        if embedder is None:
            from toolken_plus.rerank.embedder import SentenceEmbedder

            embedder = SentenceEmbedder()
        alpha, ctx_chars = float(rcfg.get("alpha", 0.5)), int(rcfg.get("context_chars", 300))
        reranker = EmbeddingReranker(embedder, head.tool_names, tool_docs, k, alpha, float("-inf"), ctx_chars)
        vs, vm, vl = stage1_arrays(val_feats, head)
        vrows, vlabels = subsample(*mine(vs, vm, vl, bias, n), rcfg.get("max_val"), seed)
        t0 = time.perf_counter()
        thr, metrics = calibrate_threshold(reranker, make_contexts(backbone, kind, prefix, val_enc, with_kv=False),
                                           vrows, vlabels, vs, n)
        out.update(metrics)
        out.update(stage1_baseline(vs[vrows], vlabels, n))
        out["rerank/threshold"] = thr
        out["time/rerank_calibration_s"] = round(time.perf_counter() - t0, 2)
        head.rerank_config = {"name": "embedding", "k": k, "alpha": alpha, "threshold": thr, "context_chars": ctx_chars}
        return out
    return out

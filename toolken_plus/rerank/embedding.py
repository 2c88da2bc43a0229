"""Our cheaper stage 2: no LM pass. A candidate's score mixes the cosine
similarity between a MiniLM embedding of the recent text and of the tool's
documentation with stage 1's probabilities over the candidates; Reject wins
when the best score is below a threshold calibrated on validation data
(`EmbeddingRerank.fit`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from toolken_plus.rerank.base import Ranked, RankOne, RerankContext, ranking, top_candidates
from toolken_plus.rerank.mining import MinedSet, decision_metrics, stage1_baseline


class EmbeddingReranker(RankOne):
    """combined_j = α·cos(e(text), e(doc_j)) + (1−α)·softmax(stage-1 over C)_j;
    Reject when the best combined score is below `threshold`."""

    name = "embedding"
    reranks = True
    needs_kv = False

    def __init__(self, embedder, tool_names: list[str], tool_docs: dict[str, str], k: int = 3,
                 alpha: float = 0.5, threshold: float = float("-inf"), context_chars: int = 300):
        self.embedder = embedder
        self.tool_names = list(tool_names)
        self.k = k
        self.alpha = alpha
        self.threshold = threshold
        self.context_chars = context_chars
        self.doc_emb = embedder.encode([f"{n}: {tool_docs.get(n, '')}" for n in tool_names])

    def combined(self, contexts: list[RerankContext], candidates: list[list[int]]) -> list[torch.Tensor]:
        """The combined score of each context's candidates."""
        ctx = self.embedder.encode([c.text[-self.context_chars :] for c in contexts])
        out = []
        for c, e, cands in zip(contexts, ctx, candidates):
            cos = self.doc_emb[cands] @ e
            # (the embedder runs on the CPU; stage-1 scores come from the backbone's device)
            prob = torch.softmax(c.scores[cands].float().to(cos.device), dim=0)
            out.append(self.alpha * cos + (1 - self.alpha) * prob)
        return out

    def rank_batch(self, contexts: list[RerankContext], candidates: list[list[int]]) -> list[list[Ranked]]:
        if not contexts:
            return []
        return [ranking(self.tool_names, cands, [float(x) for x in comb], self.threshold)
                for cands, comb in zip(candidates, self.combined(contexts, candidates))]


def calibrate_threshold(reranker: EmbeddingReranker, mined: MinedSet) -> tuple[float, dict[str, float]]:
    """The Reject threshold that makes the most correct decisions (call the
    gold tool / reject a false positive) on these validation positions."""
    rows = mined.rows.tolist()
    contexts = mined.contexts.contexts(rows, mined.scores[rows])
    cands = [top_candidates(c.scores, reranker.k) for c in contexts]
    best, chosen = [], []
    for c, comb in zip(cands, reranker.combined(contexts, cands)):
        j = int(comb.argmax())
        best.append(float(comb[j]))
        chosen.append(c[j])
    n_tools, labels = mined.n_tools, mined.labels
    best_t, chosen_t = torch.tensor(best), torch.tensor(chosen, dtype=torch.long)
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
    return thr, decision_metrics(pred, labels, n_tools, "val_rerank/")


@dataclass
class EmbeddingRerank:
    """reranker=embedding (see the module docstring)."""

    name: str = "embedding"
    k: int = 3
    alpha: float = 0.5  # weight of the cosine similarity (1 - alpha: stage-1 softmax over the candidates)
    context_chars: int = 300  # the end of the current text that is embedded
    max_val: Optional[int] = 2000  # mined validation positions used to calibrate the threshold
    threshold: Optional[float] = None  # None: the one calibrated at training time, stored in the checkpoint

    needs_kv: ClassVar[bool] = False  # fitting reads the mined positions' text only
    trains: ClassVar[bool] = True  # has a stage 2 to fit at training time

    def _embedder(self, embedder):
        if embedder is not None:
            return embedder
        from toolken_plus.rerank.embedder import SentenceEmbedder

        return SentenceEmbedder()

    def build(self, backbone, head, tool_docs: dict[str, str], embedder=None) -> EmbeddingReranker:
        saved = head.rerank_config if head.rerank_config.get("name") == self.name else {}
        thr = self.threshold if self.threshold is not None else saved.get("threshold")
        if thr is None:
            raise ValueError("reranker=embedding needs a threshold: train with reranker=embedding "
                             "(it is calibrated on validation data) or set reranker.threshold")
        return EmbeddingReranker(self._embedder(embedder), head.tool_names, tool_docs, self.k, self.alpha, float(thr),
                                 self.context_chars)

    def fit(self, backbone, head, tool_docs: dict[str, str], train: MinedSet, val: MinedSet | None, *,
            seed: int = 0, progress: bool = True, frozen_tools: int = 0, embedder=None,
            call_prior: float | None = None) -> dict:  # call_prior: not used (its threshold is calibrated as before)
        if frozen_tools:
            # No per-tool parameters to train; recalibrating the threshold
            # would change the decisions on the old tools, so it is kept.
            return {"rerank/threshold": head.rerank_config.get("threshold")}
        if val is None:
            raise ValueError("reranker=embedding calibrates its Reject threshold on validation data: none given")
        reranker = EmbeddingReranker(self._embedder(embedder), head.tool_names, tool_docs, self.k, self.alpha,
                                     float("-inf"), self.context_chars)
        val = val.subsample(self.max_val, seed)
        t0 = time.perf_counter()
        thr, out = calibrate_threshold(reranker, val)
        out.update(stage1_baseline(val))
        out["rerank/threshold"] = thr
        out["time/rerank_calibration_s"] = round(time.perf_counter() - t0, 2)
        head.rerank_config = {"name": self.name, "k": self.k, "alpha": self.alpha, "threshold": thr,
                              "context_chars": self.context_chars}
        return out

"""Stage 2 of Toolken+: re-score the stage-1 candidates against the tools'
documentation, with a Reject option (DESIGN.md section 2).

Three interchangeable rerankers (Hydra group `reranker`):
  none       ToolkenGPT: the stage-1 argmax is called.
  llm        Toolken+: the current text + a documentation block for the
             top-k candidates and a Reject line, run through the frozen LM
             reusing the text's KV cache; its last hidden state g is scored by
             W_r (tool rows initialised from W_τ, Reject row last) under a
             mask that leaves only the candidates and Reject.
  embedding  our cheaper variant: cosine similarity between a MiniLM
             embedding of the recent text and of each candidate's doc, mixed
             with the stage-1 probabilities; Reject below a threshold
             calibrated on validation data.

Every reranker answers a batch of `RerankQuery` with `RerankDecision`s;
`chosen is None` means Reject (the caller emits an ordinary token).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from toolken_plus.backbone import Backbone
from toolken_plus.kv.rows import prefill_rows

REJECT_NAME = "none"
REJECT_DOC = "none of these tools fits here: keep writing text"
BLOCK_HEADER = "\n\n[Tools that could be called here]\n"
BLOCK_CUE = "[Best choice]:"


@dataclass
class RerankQuery:
    scores: torch.Tensor  # stage-1 toolken scores W_τ h (+ b), one per tool
    text: str = ""  # the current text (the embedding reranker reads its end)
    layers: list | None = None  # KV row of the current text (the llm reranker extends it)
    n: int = 0  # its length
    pending: list[int] = field(default_factory=list)  # tokens of the current text not yet in that row
    prefix: object = None  # a kv.Prefix the row (layers, n) follows, shared with other rows
    force: int | None = None  # training only: a tool that must be among the candidates
    force_slot: int = 0  # ... and the line it takes when it was not there


@dataclass
class RerankDecision:
    candidates: list[int]  # tool indices, best stage-1 score first
    chosen: int | None  # a tool index, or None for Reject
    scores: list[float] = field(default_factory=list)  # per candidate, then Reject

    def to_dict(self, tool_names: list[str]) -> dict:
        return {"candidates": [tool_names[c] for c in self.candidates],
                "chosen": None if self.chosen is None else tool_names[self.chosen],
                "scores": [round(s, 4) for s in self.scores]}


def candidates(scores: torch.Tensor, k: int, force: int | None = None, force_slot: int = 0) -> list[int]:
    """Top-k tools by stage-1 score, best first. Training forces the gold tool
    in: if it is not in the top-k it takes the place of the k-th candidate at
    line `force_slot` (drawn at random by the trainer), so neither the number
    of lines nor the gold's line gives it away."""
    top = torch.topk(scores, min(k, scores.numel())).indices.tolist()
    if force is not None and force not in top:
        top = top[:-1]
        top.insert(force_slot % (len(top) + 1), force)
    return top


def candidate_mask(cands: list[int], n_tools: int) -> torch.Tensor:
    """True for the candidates and for Reject (index n_tools)."""
    m = torch.zeros(n_tools + 1, dtype=torch.bool)
    m[cands] = True
    m[n_tools] = True
    return m


def masked_scores(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Rows of W_r·g with every non-candidate, non-Reject entry at −inf, so
    only candidates and Reject can win (and get probability in a softmax)."""
    return logits.masked_fill(~mask, float("-inf"))


def doc_block(cands: list[int], tool_names: list[str], tool_docs: dict[str, str], max_doc_chars: int = 200) -> str:
    """What the llm reranker appends to the current text: one line per
    candidate (name: doc), one for Reject, and a fixed cue."""
    lines = []
    for c in cands:
        doc = " ".join((tool_docs.get(tool_names[c]) or "").split())
        if len(doc) > max_doc_chars:
            doc = doc[: max_doc_chars - 3].rstrip() + "..."
        lines.append(f"- {tool_names[c]}: {doc}")
    lines.append(f"- {REJECT_NAME}: {REJECT_DOC}")
    return BLOCK_HEADER + "\n".join(lines) + "\n" + BLOCK_CUE


class Reranker(Protocol):
    name: str
    k: int

    def decide(self, queries: list[RerankQuery]) -> list[RerankDecision]: ...


class NoReranker:
    """ToolkenGPT: the stage-1 argmax is the call."""

    name = "none"

    def __init__(self, k: int = 1):
        self.k = k

    def decide(self, queries: list[RerankQuery]) -> list[RerankDecision]:
        out = []
        for q in queries:
            c = candidates(q.scores, self.k)
            out.append(RerankDecision(c, c[0], [float(q.scores[i]) for i in c]))
        return out


def init_rerank_weight(toolken_weight: torch.Tensor) -> torch.Tensor:
    """W_r starts as a copy of W_τ plus a zero Reject row (last)."""
    return torch.cat([toolken_weight.detach().clone(), toolken_weight.new_zeros(1, toolken_weight.shape[1])])


class LLMReranker:
    """Toolken+: g = LM(current text + doc block)[-1], reusing the text's KV."""

    name = "llm"

    def __init__(self, backbone: Backbone, rerank_weight: torch.Tensor, tool_names: list[str],
                 tool_docs: dict[str, str], k: int = 3, max_doc_chars: int = 200):
        if rerank_weight.shape[0] != len(tool_names) + 1:
            raise ValueError(f"W_r has {rerank_weight.shape[0]} rows; expected {len(tool_names)} tools + Reject")
        self.backbone = backbone
        self.weight = rerank_weight
        self.tool_names = list(tool_names)
        self.tool_docs = tool_docs
        self.k = k
        self.max_doc_chars = max_doc_chars
        self._block_ids: dict[tuple, list[int]] = {}

    @property
    def n_tools(self) -> int:
        return len(self.tool_names)

    def block_ids(self, cands: list[int]) -> list[int]:
        key = tuple(cands)
        if key not in self._block_ids:
            text = doc_block(cands, self.tool_names, self.tool_docs, self.max_doc_chars)
            self._block_ids[key] = self.backbone.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._block_ids[key]

    @torch.no_grad()
    def states(self, queries: list[RerankQuery]) -> tuple[torch.Tensor, list[list[int]]]:
        """The rerank hidden states g (one per query) and the candidates."""
        cands = [candidates(q.scores, self.k, q.force, q.force_slot) for q in queries]
        jobs = [(q.layers, q.n, list(q.pending) + self.block_ids(c), q.prefix) for q, c in zip(queries, cands)]
        out = prefill_rows(self.backbone, jobs, keep_rows=False)
        return torch.stack([h for _, _, h in out]), cands

    def decide_from_states(self, g: torch.Tensor, cands: list[list[int]]) -> list[RerankDecision]:
        logits = g.float() @ self.weight.float().T
        out = []
        for row, c in zip(logits, cands):
            s = masked_scores(row, candidate_mask(c, self.n_tools))
            best = int(s.argmax())
            out.append(RerankDecision(c, None if best == self.n_tools else best,
                                      [float(s[i]) for i in c] + [float(s[self.n_tools])]))
        return out

    def decide(self, queries: list[RerankQuery]) -> list[RerankDecision]:
        if not queries:
            return []
        g, cands = self.states(queries)
        return self.decide_from_states(g, cands)


class EmbeddingReranker:
    """combined_j = α·cos(e(text), e(doc_j)) + (1−α)·softmax(stage-1 over C)_j;
    Reject when the best combined score is below `threshold`."""

    name = "embedding"

    def __init__(self, embedder, tool_names: list[str], tool_docs: dict[str, str], k: int = 3,
                 alpha: float = 0.5, threshold: float = float("-inf"), context_chars: int = 300):
        self.embedder = embedder
        self.tool_names = list(tool_names)
        self.k = k
        self.alpha = alpha
        self.threshold = threshold
        self.context_chars = context_chars
        self.doc_emb = embedder.encode([f"{n}: {tool_docs.get(n, '')}" for n in tool_names])

    def combined(self, queries: list[RerankQuery]) -> list[tuple[list[int], torch.Tensor]]:
        texts = [q.text[-self.context_chars :] for q in queries]
        ctx = self.embedder.encode(texts)
        out = []
        for q, e in zip(queries, ctx):
            c = candidates(q.scores, self.k, q.force, q.force_slot)
            cos = self.doc_emb[c] @ e
            prob = torch.softmax(q.scores[c].float(), dim=0)
            out.append((c, self.alpha * cos + (1 - self.alpha) * prob))
        return out

    def decide(self, queries: list[RerankQuery]) -> list[RerankDecision]:
        if not queries:
            return []
        out = []
        for c, comb in self.combined(queries):
            best = int(comb.argmax())
            keep = float(comb[best]) >= self.threshold
            out.append(RerankDecision(c, c[best] if keep else None, [float(x) for x in comb] + [self.threshold]))
        return out


def build_reranker(rcfg: dict, backbone: Backbone, head, tool_docs: dict[str, str], embedder=None):
    """The reranker a config + (trained) head describe; W_r / threshold from the head."""
    name = rcfg.get("name", "none")
    k = int(rcfg.get("k", 3))
    if name == "none":
        return NoReranker(k)
    if name == "llm":
        if head.rerank_weight is None:
            raise ValueError("reranker=llm needs a checkpoint trained with reranker=llm (no rerank.weight in it)")
        return LLMReranker(backbone, head.rerank_weight.detach(), head.tool_names, tool_docs, k,
                           int(rcfg.get("max_doc_chars", 200)))
    if name == "embedding":
        if embedder is None:
            from toolken_plus.rerank.embedder import SentenceEmbedder

            embedder = SentenceEmbedder()
        saved = head.rerank_config if head.rerank_config.get("name") == "embedding" else {}
        thr = rcfg.get("threshold", saved.get("threshold"))
        if thr is None:
            raise ValueError("reranker=embedding needs a threshold: train with reranker=embedding "
                             "(it is calibrated on validation data) or set reranker.threshold")
        return EmbeddingReranker(embedder, head.tool_names, tool_docs, k, float(rcfg.get("alpha", saved.get("alpha", 0.5))),
                                 float(thr), int(rcfg.get("context_chars", saved.get("context_chars", 300))))
    raise ValueError(f"unknown reranker {name!r}: expected none, llm or embedding")

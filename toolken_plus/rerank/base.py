"""Stage 2 of Toolken+: re-score stage 1's top-k toolkens against the tools'
documentation, with an explicit Reject option.

The API, in the spirit of sentence-transformers' CrossEncoder.rank:

    ranking = reranker.rank(context, candidates)     # list[Ranked], best first
    ranking[0].tool                                  # a tool name, or None: Reject

`candidates` are tool indices, stage 1's top-k (`top_candidates`); Reject is
always ranked too. `rank_batch` does many at once (how the agent and
evaluation call it). A reranker's capabilities are attributes, not names:
`reranks` (False for ToolkenGPT's none: stage 1's argmax is the call) and
`needs_kv` (reads the KV row of the current text, the llm reranker). Each
reranker is configured by a spec (the Hydra group `reranker`) that builds it
from a trained head and fits it (its `fit`, on mined positions: mining.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import torch

REJECT_NAME = "none"
REJECT_DOC = "none of these tools fits here: keep writing text"
BLOCK_HEADER = "\n\n[Tools that could be called here]\n"
BLOCK_CUE = "[Best choice]:"


@dataclass(frozen=True)
class Ranked:
    """One entry of a ranking: a tool (its name and toolken index), or Reject."""

    tool: str | None  # None: Reject ("no tool here: keep writing text")
    index: int | None  # the toolken index; None for Reject
    score: float

    @property
    def is_reject(self) -> bool:
        return self.tool is None


@dataclass
class RerankContext:
    """What a reranker may read about the place where stage 1 triggered."""

    scores: torch.Tensor  # stage-1 toolken scores W_τ h (without the bias), one per tool
    text: str = ""  # the current text (the embedding reranker reads its end)
    layers: list | None = None  # KV row of the current text (the llm reranker extends it)
    n: int = 0  # its length
    pending: list[int] = field(default_factory=list)  # tokens of the current text not yet in that row
    prefix: object = None  # a kv.Prefix the row (layers, n) follows, shared with other rows
    # The stage-1 score a toolken had to beat to be called here: the largest
    # vocabulary logit minus the bias (None where there is no vocabulary in
    # the choice, e.g. a plan step). Stage 1's margin for tool i is scores[i] − trigger_at.
    trigger_at: float | None = None


def top_candidates(scores: torch.Tensor, k: int, force: int | None = None, force_slot: int = 0) -> list[int]:
    """Top-k tools by stage-1 score, best first. Training forces the gold tool
    in: if it is not in the top-k it takes the place of the k-th candidate at
    line `force_slot` (drawn at random by the trainer), so neither the number
    of lines nor the gold's line gives it away."""
    top = torch.topk(scores, min(k, scores.numel())).indices.tolist()
    if force is not None and force not in top:
        top = top[:-1]
        top.insert(force_slot % (len(top) + 1), force)
    return top


def stage1_margins(scores: torch.Tensor, trigger_at: float | None) -> torch.Tensor:
    """Stage 1's view of a decision on the reranker's scale, one entry per
    tool and one for Reject (last, 0): each tool's margin over calling
    nothing, `scores − trigger_at`. The reranker runs where stage 1 called a
    tool, so the best tool's margin is at least 0 (a mined gold position
    stage 1 missed, or no vocabulary to beat, counts as a tie that the tool
    wins). Mixed with the reranker's scores (LLMReranker.mix), a mix of 0
    decides exactly as stage 1 does: its top-1, never Reject."""
    best = float(scores.max())
    ref = best if trigger_at is None else min(float(trigger_at), best)
    return torch.cat([scores.float() - ref, scores.new_zeros(1, dtype=torch.float)])


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


def ranking(tool_names: list[str], cands: list[int], scores: list[float], reject_score: float) -> list[Ranked]:
    """Candidates and Reject sorted best first (ties: stage-1 order, Reject last)."""
    entries = [Ranked(tool_names[c], c, s) for c, s in zip(cands, scores)] + [Ranked(None, None, reject_score)]
    order = sorted(range(len(entries)), key=lambda i: -entries[i].score)
    return [entries[i] for i in order]


def decision_record(cands: list[int], ranked: list[Ranked], tool_names: list[str]) -> dict:
    """How a rerank decision is written into predictions.jsonl."""
    return {"candidates": [tool_names[c] for c in cands], "chosen": ranked[0].tool,
            "ranking": [[r.tool, round(r.score, 4)] for r in ranked]}


class Reranker(Protocol):
    name: str
    k: int
    reranks: bool  # False: stage 1's top-1 is the call (ToolkenGPT)
    needs_kv: bool  # reads RerankContext.layers/n/pending/prefix

    def rank_batch(self, contexts: list[RerankContext], candidates: list[list[int]]) -> list[list[Ranked]]: ...

    def rank(self, context: RerankContext, candidates: list[int]) -> list[Ranked]: ...


class RankOne:
    """`rank` in terms of `rank_batch`."""

    def rank(self, context: RerankContext, candidates: list[int]) -> list[Ranked]:
        return self.rank_batch([context], [candidates])[0]


class NoReranker(RankOne):
    """ToolkenGPT: the stage-1 order is the ranking; Reject never wins."""

    name = "none"
    reranks = False
    needs_kv = False

    def __init__(self, tool_names: list[str], k: int = 3):
        self.tool_names = list(tool_names)
        self.k = k

    def rank_batch(self, contexts: list[RerankContext], candidates: list[list[int]]) -> list[list[Ranked]]:
        return [[Ranked(self.tool_names[c], c, float(ctx.scores[c])) for c in cands] + [Ranked(None, None, float("-inf"))]
                for ctx, cands in zip(contexts, candidates)]


@dataclass
class NoRerank:
    """reranker=none: plain ToolkenGPT, the stage-1 head decides alone."""

    name: str = "none"
    k: int = 3  # top-k reported (top{k}_accuracy); no reranking

    needs_kv: ClassVar[bool] = False
    trains: ClassVar[bool] = False  # has a stage 2 to fit at training time

    def build(self, backbone, head, tool_docs: dict[str, str]) -> NoReranker:
        return NoReranker(head.tool_names, self.k)

    def fit(self, backbone, head, tool_docs, train, val, **_) -> dict:
        return {}

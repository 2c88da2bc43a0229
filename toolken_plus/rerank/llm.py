"""Toolken+'s reranker: the frozen LM reads the current text followed by a
documentation block for the candidates and a Reject line; its last hidden
state g, reusing the text's KV cache, is scored by W_r (tool rows initialised
from W_τ, a Reject row last) under a mask that leaves only the candidates and
Reject.

Fitting (`LLMRerank.fit`): the doc-block pass is run once for every mined
training position (the gold tool forced among the candidates), g is cached,
and W_r is trained by masked cross-entropy over candidates ∪ {Reject}.

The final score mixes the reranker with stage 1 (`mix`): for a candidate,
mix · W_r g + (1 − mix) · stage 1's margin over calling nothing; for Reject,
mix · (W_r g)_Reject (stage 1's margin for it is 0). mix = 1 is the reranker
alone (Toolken+ as published), mix = 0 is exactly stage 1's decision. The
mix is chosen on validation positions from a grid: the best decision
accuracy (gold tools and Rejects) among the mixes whose tool accuracy is not
below stage 1's, so on validation Toolken+ never selects worse than stage 1
and Reject is an addition to it.

Whether to call at all is a separate decision with its own weight,
`call_mix`: a tool is called iff, on the scores mixed with `call_mix`, the
best candidate beats Reject by at least `reject_bias`; which tool, is the
best candidate on the scores mixed with `mix`. Both are chosen on
validation: for each call_mix of the grid, the shift with the best call
F1 (a call where a tool is due is a hit, a call where none is, a false
positive) among those that keep call recall within `max_recall_drop` of
stage 1's; then the call_mix with the best F1. The task may state the share
of tool-needing decisions its evaluation has (`Task.call_prior`, MetaTool's
awareness test: one half), and the no-call positions are weighted to it.
call_mix 0 with a calibrated shift is stage 1 with a stricter trigger: the
ablation that tells the reranker's part in Reject from the threshold's
(reported as `val_threshold_only/`), and a candidate of the grid, so on
validation the chosen decision is never below it. call_mix = mix with no
shift is the single mixed score of before (old checkpoints).
"""

from __future__ import annotations

import functools
import logging
import time
import weakref
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from toolken_plus.config.device import dtype_name, resolve_state_dtype
from toolken_plus.kv import Prefix, padded_batches, prefill_rows
from toolken_plus.rerank.base import (
    Ranked,
    RankOne,
    RerankContext,
    candidate_mask,
    doc_block,
    masked_scores,
    ranking,
    stage1_margins,
    top_candidates,
)
from toolken_plus.rerank.mining import MinedSet, decision_metrics

log = logging.getLogger(__name__)


class LLMReranker(RankOne):
    """g = LM(current text + doc block)[-1], reusing the text's KV; scores W_r·g.

    `state_dtype`: the precision the doc-block pass runs in (None: the
    backbone's own). The text's KV comes from the backbone as it is and is
    cast into the pass; the tokens the pass runs (text not yet in the KV, then
    the block) run in `state_dtype`, on a copy of the backbone cast to it.
    bfloat16 is ~3x faster than float32 on a CPU with AMX and keeps g at a
    cosine ≥ 0.9998 to float32's (bench/rerank_states.py); training and
    inference use the dtype the checkpoint was fitted with."""

    name = "llm"
    reranks = True
    needs_kv = True

    def __init__(self, backbone, rerank_weight: torch.Tensor, tool_names: list[str],
                 tool_docs: dict[str, str], k: int = 3, max_doc_chars: int = 200, mix: float = 1.0,
                 reject_bias: float = 0.0, call_mix: float | None = None, state_dtype: torch.dtype | None = None):
        if rerank_weight.shape[0] != len(tool_names) + 1:
            raise ValueError(f"W_r has {rerank_weight.shape[0]} rows; expected {len(tool_names)} tools + Reject")
        self.backbone = backbone
        self.weight = rerank_weight
        self.tool_names = list(tool_names)
        self.tool_docs = tool_docs
        self.k = k
        self.max_doc_chars = max_doc_chars
        self.mix = mix  # weight of W_r g against stage 1's margins (module docstring)
        self.reject_bias = reject_bias  # the margin over Reject a call needs (module docstring)
        self.call_mix = mix if call_mix is None else call_mix  # the mix the call decision is made on
        self._block_ids: dict[tuple, list[int]] = {}
        # the backbone itself unless cast
        self.state_backbone = backbone.with_dtype(state_dtype) if state_dtype is not None else backbone
        self._cast_prefixes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @functools.cached_property
    def state_dtype(self) -> torch.dtype:
        return next(self.state_backbone.model.parameters()).dtype

    def _prefix(self, prefix: Prefix | None) -> Prefix | None:
        """A shared prompt prefix in the pass's dtype (its KV is read in place,
        so it must match; cast once per prefix)."""
        if prefix is None or prefix.layers[0][0].dtype == self.state_dtype:
            return prefix
        if prefix not in self._cast_prefixes:
            layers = [(k.to(self.state_dtype), v.to(self.state_dtype)) for k, v in prefix.layers]
            self._cast_prefixes[prefix] = Prefix(layers, prefix.n)
        return self._cast_prefixes[prefix]

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
    def states(self, contexts: list[RerankContext], candidates: list[list[int]]) -> torch.Tensor:
        """The rerank hidden states g, one per context."""
        # (a row's own KV is copied into the pass's padded cache, which casts it)
        jobs = [(c.layers, c.n, list(c.pending) + self.block_ids(cands), self._prefix(c.prefix))
                for c, cands in zip(contexts, candidates)]
        out = prefill_rows(self.state_backbone, jobs, keep_rows=False)
        # where W_r lives and in its dtype (the backbone may run elsewhere, in bfloat16)
        return torch.stack([h for _, _, h in out]).to(self.weight.device, self.weight.dtype)

    def rankings(self, g: torch.Tensor, candidates: list[list[int]], contexts: list[RerankContext]) -> list[list[Ranked]]:
        need_stage1 = min(self.mix, self.call_mix) < 1
        stage1 = torch.stack([stage1_margins(c.scores, c.trigger_at) for c in contexts]) if need_stage1 else None
        select = mixed_logits(g, self.weight, stage1, self.mix)
        call = select if self.call_mix == self.mix else mixed_logits(g, self.weight, stage1, self.call_mix)
        out = []
        for row, call_row, cands in zip(select, call, candidates):
            mask = candidate_mask(cands, self.n_tools)
            s, c = masked_scores(row, mask), masked_scores(call_row, mask)
            # Reject's score puts it above the best tool exactly when the call decision says no call
            margin = float(c[cands].max() - c[self.n_tools]) - self.reject_bias
            out.append(ranking(self.tool_names, cands, [float(s[i]) for i in cands], float(s[cands].max()) - margin))
        return out

    def rank_batch(self, contexts: list[RerankContext], candidates: list[list[int]]) -> list[list[Ranked]]:
        if not contexts:
            return []
        if self.mix <= 0 and self.call_mix <= 0:  # stage 1's margins alone (plus the shift): the states would be multiplied by 0
            return self.rankings(self.weight.new_zeros(len(contexts), self.weight.shape[1]), candidates, contexts)
        return self.rankings(self.states(contexts, candidates), candidates, contexts)


def mixed_logits(g: torch.Tensor, weight: torch.Tensor, stage1: torch.Tensor | None, mix: float) -> torch.Tensor:
    """mix · W_r g + (1 − mix) · stage-1 margins, one row per state (tools + Reject)."""
    logits = g.float() @ weight.float().T
    if mix < 1 and stage1 is not None:
        logits = mix * logits + (1 - mix) * stage1.float()
    return logits


MIX_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def init_rerank_weight(toolken_weight: torch.Tensor) -> torch.Tensor:
    """W_r starts as a copy of W_τ plus a zero Reject row (last)."""
    return torch.cat([toolken_weight.detach().clone(), toolken_weight.new_zeros(1, toolken_weight.shape[1])])


@dataclass
class RerankSet:
    """Cached rerank states of mined positions."""

    g: torch.Tensor  # (N, d) rerank hidden states
    masks: torch.Tensor  # (N, n_tools + 1) candidates + Reject
    labels: torch.Tensor  # (N,) tool index or n_tools (Reject)
    seconds: float = 0.0
    stage1: torch.Tensor | None = None  # (N, n_tools + 1) stage-1 margins (rerank/base.py stage1_margins)
    triggered: torch.Tensor | None = None  # (N,) stage 1 calls a tool here (MinedSet.triggered)


def build_rerank_set(reranker: LLMReranker, mined: MinedSet, *, force_gold: bool = True, seed: int = 0,
                     batch_size: int = 16, max_tokens: int | None = 4096, progress: bool = True,
                     desc: str = "rerank states", sort_by_length: bool = True) -> RerankSet:
    """Run the doc-block pass for every mined row and keep g. Training forces
    the gold tool into the candidates; evaluation does not (a gold missing
    from the top-k is then simply a miss).

    A forward holds at most `batch_size` rows and, padded to its longest,
    at most `max_tokens` new tokens (None: no limit): an overlong example
    (MetaTool has a ~1,350-token query) then runs alone instead of making
    15 short ones pad to its length. With `sort_by_length`, rows whose new
    tokens are the example itself plus the block (a choice task's one
    position per example) are batched in order of that length, so a batch
    pads little; rows inside longer examples (text tasks) keep their order,
    grouped by example, so each example's KV is computed once. The result is
    in the rows' order either way."""
    n = reranker.n_tools
    t0 = time.perf_counter()
    rows = mined.rows.tolist()
    slots = torch.randint(0, 1 << 16, (len(rows),), generator=torch.Generator().manual_seed(seed)).tolist()
    labels = mined.labels.tolist()
    cands = [top_candidates(mined.scores[r], reranker.k, None if (lb == n or not force_gold) else lb, slot)
             for r, lb, slot in zip(rows, labels, slots)]
    pending = [mined.contexts.pending_tokens(r) for r in rows]
    new_tokens = [p + len(reranker.block_ids(c)) for p, c in zip(pending, cands)]
    order = list(range(len(rows)))
    if sort_by_length:
        order.sort(key=lambda j: (1, new_tokens[j]) if pending[j] else (0, j))
    batches = padded_batches([new_tokens[j] for j in order], max_tokens, batch_size)
    gs = []
    for start, end in tqdm(batches, desc=desc, disable=not progress, unit="batch"):
        chunk = order[start:end]
        contexts = mined.contexts.contexts([rows[j] for j in chunk], mined.scores[[rows[j] for j in chunk]])
        gs.append(reranker.states(contexts, [cands[j] for j in chunk]).float())
    d = reranker.weight.shape[1]
    g = torch.zeros(len(rows), d, device=reranker.weight.device)
    if gs:
        g[torch.tensor(order, device=g.device)] = torch.cat(gs)
    return RerankSet(g, torch.stack([candidate_mask(c, n) for c in cands]) if cands else torch.zeros(0, n + 1, dtype=torch.bool),
                     mined.labels.clone(), time.perf_counter() - t0,
                     mined.stage1_margins(rows) if rows else torch.zeros(0, n + 1),
                     mined.triggered(rows) if rows else torch.zeros(0, dtype=torch.bool))


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


def rerank_predictions(weight: torch.Tensor, data: RerankSet, mix: float = 1.0, reject_bias: float = 0.0,
                       call_mix: float | None = None) -> torch.Tensor:
    """The decision (tool index or n_tools = Reject) at each position: Reject
    where the call decision (on `call_mix`, default `mix`) says no call, else
    the best candidate on `mix` (ties: the tool, as in `ranking`)."""
    s = mixed_logits(data.g, weight, data.stage1, mix).masked_fill(~data.masks, float("-inf"))
    margin = reject_margins(weight, data, mix if call_mix is None else call_mix)
    return torch.where(margin >= reject_bias, s[:, :-1].argmax(1), torch.full_like(data.labels, s.shape[1] - 1))


def reject_margins(weight: torch.Tensor, data: RerankSet, mix: float) -> torch.Tensor:
    """Per position: the best candidate's final score minus Reject's (a tool
    is called iff this is ≥ the Reject shift; ties go to the tool, as in
    `ranking`)."""
    s = mixed_logits(data.g, weight, data.stage1, mix).masked_fill(~data.masks, float("-inf"))
    return s[:, :-1].max(1).values - s[:, -1]


def call_counts(margin: torch.Tensor, data: RerankSet, n_tools: int, weights: torch.Tensor,
                shift: float) -> tuple[float, float, float]:
    """(weighted) calls where a tool is due, calls where none is, and positions
    where a tool is due: with the Reject shift `shift`, a position calls iff
    stage 1 triggers there and the reranker does not Reject."""
    called = data.triggered & (margin >= shift)
    due = data.labels < n_tools
    return float(weights[called & due].sum()), float(weights[called & ~due].sum()), float(weights[due].sum())


def call_metrics(margin: torch.Tensor, data: RerankSet, n_tools: int, weights: torch.Tensor, shift: float,
                 prefix: str) -> dict[str, float]:
    """Call recall, precision and F1 as weighted for the calibration (by the
    task's call prior), and the false-positive calls as a plain count of the
    mined no-call positions that still call."""
    hits, false_pos, due = call_counts(margin, data, n_tools, weights, shift)
    recall = hits / due if due else 0.0
    precision = hits / (hits + false_pos) if hits + false_pos else 0.0
    f1 = f1_of(hits, false_pos, due)
    fp_count = call_counts(margin, data, n_tools, torch.ones_like(weights), shift)[1]
    return {f"{prefix}call_recall": recall, f"{prefix}call_precision": precision, f"{prefix}call_f1": f1,
            f"{prefix}false_positive_calls": fp_count}


def f1_of(hits: float, false_pos: float, due: float) -> float:
    """Call F1 from (weighted) hits, false positives and due calls."""
    return 2 * hits / (hits + false_pos + due) if due else 0.0


def call_f1(margin: torch.Tensor, data: RerankSet, n_tools: int, weights: torch.Tensor, shift: float) -> float:
    return f1_of(*call_counts(margin, data, n_tools, weights, shift))


def best_shift(margin: torch.Tensor, data: RerankSet, n_tools: int, weights: torch.Tensor,
               max_recall_drop: float) -> tuple[float, float]:
    """(shift, its call F1): the Reject shift with the best (weighted) call F1
    among those whose call recall is within `max_recall_drop` of stage 1's
    (which never rejects); ties go to the shift closest to 0."""
    due = data.labels < n_tools
    if len(data.labels) == 0 or data.triggered is None or not bool(due.any()):
        return 0.0, 0.0
    floor = float(weights[due & data.triggered].sum()) / float(weights[due].sum()) - max_recall_drop
    # Every distinct decision is reached by a shift at some position's margin; also try no shift.
    shifts = sorted({0.0, *margin[data.triggered & torch.isfinite(margin)].tolist()})
    best, best_f1 = 0.0, -1.0
    for shift in shifts:
        hits, false_pos, n_due = call_counts(margin, data, n_tools, weights, shift)
        if hits / n_due < floor - 1e-12:
            continue
        f1 = f1_of(hits, false_pos, n_due)
        if f1 > best_f1 + 1e-12 or (abs(f1 - best_f1) <= 1e-12 and abs(shift) < abs(best)):
            best, best_f1 = shift, f1
    return best, max(best_f1, 0.0)


def calibrate_reject_bias(weight: torch.Tensor, data: RerankSet, n_tools: int, mix: float, weights: torch.Tensor,
                          max_recall_drop: float = 0.02) -> float:
    """best_shift's shift for the call decision made on scores mixed with `mix`."""
    if len(data.labels) == 0:
        return 0.0
    return best_shift(reject_margins(weight, data, mix), data, n_tools, weights, max_recall_drop)[0]


def calibrate_call(weight: torch.Tensor, data: RerankSet, n_tools: int, weights: torch.Tensor,
                   max_recall_drop: float = 0.02, grid=MIX_GRID) -> tuple[float, float]:
    """(call_mix, reject_bias): for every call_mix of the grid its best shift,
    then the pair with the best call F1 on `data`; ties go to the smaller
    call_mix (closer to stage 1)."""
    if len(data.labels) == 0:
        return 0.0, 0.0
    best, best_f1 = (0.0, 0.0), -1.0
    for call_mix in sorted(grid):
        shift, f1 = best_shift(reject_margins(weight, data, call_mix), data, n_tools, weights, max_recall_drop)
        if f1 > best_f1 + 1e-12:
            best, best_f1 = (call_mix, shift), f1
    return best


def rerank_metrics(weight: torch.Tensor, data: RerankSet, n_tools: int, prefix: str = "val_rerank/",
                   mix: float = 1.0, reject_bias: float = 0.0, weights: torch.Tensor | None = None,
                   call_mix: float | None = None) -> dict[str, float]:
    """On mined positions: how often the (mixed) reranker's decision is the
    label; with `weights` (MinedSet.row_weights), also its calls (recall,
    precision, F1, false positives) where stage 1 triggers."""
    if len(data.labels) == 0:
        return {}
    call_mix = mix if call_mix is None else call_mix
    out = decision_metrics(rerank_predictions(weight, data, mix, reject_bias, call_mix), data.labels, n_tools, prefix)
    if weights is not None and data.triggered is not None:
        out.update(call_metrics(reject_margins(weight, data, call_mix), data, n_tools, weights, reject_bias, prefix))
    return out


def calibrate_mix(weight: torch.Tensor, data: RerankSet, n_tools: int, grid=MIX_GRID) -> float:
    """The mix with the best decision accuracy on `data` (validation) among
    those whose accuracy on gold-tool positions is at least stage 1's (mix 0);
    ties go to the smaller mix (closer to stage 1)."""
    if len(data.labels) == 0:
        return 1.0
    gold = data.labels < n_tools
    def scores(mix):
        pred = rerank_predictions(weight, data, mix)
        tool_acc = float((pred[gold] == data.labels[gold]).float().mean()) if gold.any() else 0.0
        return float((pred == data.labels).float().mean()), tool_acc
    floor = scores(0.0)[1]
    best, best_acc = 0.0, -1.0
    for mix in sorted(grid):
        acc, tool_acc = scores(mix)
        if tool_acc >= floor - 1e-12 and acc > best_acc + 1e-12:
            best, best_acc = mix, acc
    return best


@dataclass
class LLMRerank:
    """reranker=llm: Toolken+ (see the module docstring)."""

    name: str = "llm"
    k: int = 3
    max_doc_chars: int = 200  # each candidate's doc is cut to this in the doc block
    # fitting W_r
    # mined positions (a seeded subsample); None = all of them (docs/performance.md: ~15 min for MetaTool's 16k here)
    max_train: Optional[int] = None
    keep_all_rejects: bool = False  # True: the subsample keeps every false-positive (Reject) position
    # Which stage 1 scores the mined training positions (train/rerank_fit.py):
    # crossfit = heads trained on the other folds, so false positives look like
    # test-time ones; train = the final head on its own training data
    mining: str = "crossfit"
    folds: int = 5  # K of crossfit
    max_val: Optional[int] = 500  # mined validation positions for the stage-2 metrics
    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 32
    state_batch: int = 16  # doc-block passes per forward, at most
    state_tokens: int = 4096  # and at most this many new tokens per forward, padded (an overlong one runs alone)
    # Weight of W_r g against stage 1 (module docstring): None = chosen on
    # validation at training time and stored; 1 = the reranker alone; 0 = stage 1
    mix: Optional[float] = None
    # The call decision (module docstring): a call needs the best candidate to
    # beat Reject by reject_bias on scores mixed with call_mix. None = both
    # calibrated on validation for call F1 and stored; call_mix set alone gets
    # its shift calibrated.
    reject_bias: Optional[float] = None
    call_mix: Optional[float] = None
    max_recall_drop: float = 0.02  # the calibration keeps call recall within this of stage 1's
    # Precision of the doc-block pass (LLMReranker): auto = bfloat16 where it
    # is fast (CUDA, CPUs with AMX/AVX512-BF16), else the backbone's own;
    # float32 | bfloat16 | float16. None: at training auto, at inference the
    # checkpoint's (g must be computed as W_r was trained on).
    state_dtype: Optional[str] = None

    needs_kv: ClassVar[bool] = True  # fitting extends the mined positions' KV rows
    trains: ClassVar[bool] = True  # has a stage 2 to fit at training time

    def build(self, backbone, head, tool_docs: dict[str, str]) -> LLMReranker:
        if head.rerank_weight is None:
            raise ValueError("reranker=llm needs a checkpoint trained with reranker=llm (no rerank.weight in it)")
        saved = head.rerank_config if head.rerank_config.get("name") == self.name else {}
        mix = self.mix if self.mix is not None else saved.get("mix", 1.0)  # checkpoints before the mix: the reranker alone
        shift = self.reject_bias if self.reject_bias is not None else saved.get("reject_bias", 0.0)
        call_mix = self.call_mix if self.call_mix is not None else saved.get("call_mix", mix)  # before call_mix: one mix
        # checkpoints before state_dtype: the backbone's own
        state_dtype = self.state_dtype if self.state_dtype is not None else saved.get("state_dtype")
        return LLMReranker(backbone, head.rerank_weight.detach(), head.tool_names, tool_docs, self.k, self.max_doc_chars,
                           float(mix), float(shift), float(call_mix),
                           resolve_state_dtype(state_dtype, backbone.device) if state_dtype else None)

    def fit(self, backbone, head, tool_docs: dict[str, str], train: MinedSet, val: MinedSet | None, *,
            seed: int = 0, progress: bool = True, frozen_tools: int = 0, call_prior: float | None = None) -> dict:
        """Train W_r on `train` and store it in the head; choose the mix and
        the Reject shift on `val` (`call_prior`: Task.call_prior, how the
        calibration weighs no-call positions). `frozen_tools` > 0
        (adding tools to a checkpoint): W_r starts from the head's grown
        matrix and only the new tools' rows train; the first `frozen_tools`
        rows and Reject stay exactly as they were."""
        n = head.n_tools
        out = {"rerank/mined_gold": train.n_golds, "rerank/mined_false_positives": train.n_rejects}
        train = train.subsample(self.max_train, seed, keep_rejects=self.keep_all_rejects)
        init, frozen = init_rerank_weight(head.weight), None
        if frozen_tools:
            if head.rerank_weight is None or head.rerank_weight.shape[0] != n + 1:
                raise ValueError("adding tools with reranker=llm needs a base checkpoint trained with reranker=llm")
            init = head.rerank_weight.detach().clone()
            frozen = torch.zeros(n + 1, dtype=torch.bool)
            frozen[:frozen_tools] = True
            frozen[n] = True
        state_dtype = resolve_state_dtype(self.state_dtype or "auto", backbone.device)
        if frozen_tools and self.state_dtype is None:  # new tools' rows train on the states the old ones did
            state_dtype = resolve_state_dtype(head.rerank_config.get("state_dtype"), backbone.device)
        reranker = LLMReranker(backbone, init, head.tool_names, tool_docs, self.k, self.max_doc_chars,
                               state_dtype=state_dtype)
        out["rerank/state_dtype"] = dtype_name(reranker.state_dtype)
        data = build_rerank_set(reranker, train, batch_size=self.state_batch, max_tokens=self.state_tokens,
                                progress=progress, desc="rerank states (train)")
        out.update({"rerank/train_positions": len(train.rows), "rerank/train_golds": train.n_golds,
                    "rerank/train_rejects": train.n_rejects,  # false positives left after subsampling
                    "time/rerank_states_s": round(data.seconds, 2)})
        weight, losses = train_rerank_weight(reranker.weight, data, epochs=self.epochs, lr=self.lr,
                                             batch_size=self.batch_size, seed=seed, progress=progress, frozen=frozen)
        out["rerank/train_loss"] = losses[-1] if losses else None
        out.update(rerank_metrics(weight, data, n, prefix="train_rerank/"))
        head.rerank_weight = torch.nn.Parameter(weight, requires_grad=False)
        # Adding tools keeps the checkpoint's mix and shift (recalibrating would change the old tools' decisions).
        saved = head.rerank_config if frozen_tools else {}
        mix = self.mix if self.mix is not None else saved.get("mix", 1.0)
        shift = self.reject_bias if self.reject_bias is not None else saved.get("reject_bias", 0.0)
        call_mix = self.call_mix if self.call_mix is not None else saved.get("call_mix")  # None: calibrated, or follows mix
        if val is not None:
            # Every validation false positive is kept: they are few, and the Reject shift is calibrated on them.
            val = val.subsample(self.max_val, seed, keep_rejects=True)
            vdata = build_rerank_set(reranker, val, force_gold=False, batch_size=self.state_batch,
                                     max_tokens=self.state_tokens, progress=progress,
                                     desc="rerank states (val)")
            w = val.row_weights(call_prior)
            if self.mix is None and not frozen_tools:
                mix = calibrate_mix(weight, vdata, n)
            if not frozen_tools and self.reject_bias is None:
                if call_mix is None:
                    call_mix, shift = calibrate_call(weight, vdata, n, w, self.max_recall_drop)
                else:
                    shift = calibrate_reject_bias(weight, vdata, n, call_mix, w, self.max_recall_drop)
            if not frozen_tools:
                # the ablation: stage 1 alone with its own calibrated shift, i.e. a stricter trigger
                shift0 = calibrate_reject_bias(weight, vdata, n, 0.0, w, self.max_recall_drop)
                out.update(rerank_metrics(weight, vdata, n, "val_threshold_only/", mix=0.0, reject_bias=shift0, weights=w))
                out["rerank/reject_bias@mix0"] = shift0
            out.update(rerank_metrics(weight, vdata, n, mix=mix, reject_bias=shift, weights=w,
                                      call_mix=mix if call_mix is None else call_mix))
            out.update(rerank_metrics(weight, vdata, n, prefix="val_rerank_alone/"))  # mix 1, no shift: as published
            out.update(rerank_metrics(weight, vdata, n, prefix="val_stage1/", mix=0.0, weights=w))
            out["rerank/val_call_prior"] = call_prior
        call_mix = mix if call_mix is None else call_mix
        out["rerank/mix"] = mix
        out["rerank/reject_bias"] = shift
        out["rerank/call_mix"] = call_mix
        head.rerank_config = {"name": self.name, "k": self.k, "max_doc_chars": self.max_doc_chars, "mix": mix,
                              "reject_bias": shift, "call_mix": call_mix, "state_dtype": dtype_name(reranker.state_dtype)}
        return out

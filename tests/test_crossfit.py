"""Toolken+ stage 2 that learns from realistic false positives and never
selects worse than stage 1: cross-fitted mining (train/rerank_fit.py), the
mix of the reranker's score with stage 1's and the Reject shift calibrated
for the call decision (rerank/llm.py)."""

import numpy as np
import pytest
import torch

from toolken_plus.adapter import ToolkenHead
from toolken_plus.config.schema import TrainerConfig
from toolken_plus.kv.rows import prefix_row
from toolken_plus.rerank.base import RerankContext, stage1_margins, top_candidates
from toolken_plus.rerank.llm import (
    LLMRerank,
    LLMReranker,
    RerankSet,
    calibrate_call,
    calibrate_mix,
    calibrate_reject_bias,
    call_counts,
    call_f1,
    reject_margins,
    rerank_metrics,
    rerank_predictions,
)
from toolken_plus.rerank.mining import MinedSet, mine
from toolken_plus.train import rerank_fit
from toolken_plus.train.rerank_fit import crossfit_scores, fold_of_examples
from toolken_plus.train.trainer import CachedFeatures, ToolkenTrainer

TOOLS = ["add", "subtract", "multiply", "divide"]


def features(n_examples: int = 40, per_example: int = 2, d: int = 128, tool_every: int = 3, seed: int = 0) -> CachedFeatures:
    """Random hidden states (more dimensions than positions: a head can fit
    them all), tool 0 at every `tool_every`-th position, vocabulary
    positions whose best vocabulary logit is 0."""
    g = torch.Generator().manual_seed(seed)
    n = n_examples * per_example
    label = torch.full((n,), -1)
    label[::tool_every] = 0
    return CachedFeatures(tensors={"h": torch.randn(n, d, generator=g), "logsumexp": torch.full((n,), 1.0),
                                   "gold_logit": torch.zeros(n), "max_logit": torch.zeros(n), "tool_label": label},
                          example_index=np.repeat(np.arange(n_examples), per_example))


FIT = TrainerConfig(epochs=60, lr=0.05, batch_size=8, progress=False)


def test_folds_partition_the_examples_evenly():
    fold = fold_of_examples(23, 5, seed=3)
    assert sorted(set(fold.tolist())) == [0, 1, 2, 3, 4]
    assert max(np.bincount(fold)) - min(np.bincount(fold)) <= 1
    assert (fold == fold_of_examples(23, 5, seed=3)).all() and not (fold == fold_of_examples(23, 5, seed=4)).all()


def test_crossfit_never_scores_a_position_with_a_head_trained_on_its_example(monkeypatch):
    feats = features(n_examples=12)
    fits = []

    class Recording(ToolkenTrainer):
        def fit(self):
            fits.append((self.head, set(self.examples.tolist())))
            return super().fit()

    monkeypatch.setattr(rerank_fit, "ToolkenTrainer", Recording)
    head = ToolkenHead(["t0"], 128, seed=0)
    scores, info = crossfit_scores(head, feats, TrainerConfig(epochs=2, progress=False), folds=4, seed=0)
    assert info["rerank/crossfit_folds"] == 4 and len(fits) == 4
    held_out = [set(range(12)) - trained for _, trained in fits]
    assert sorted(e for h in held_out for e in h) == list(range(12))  # every example held out exactly once
    for (fold_head, trained), held in zip(fits, held_out):
        assert held and not held & trained
        pos = feats.positions(sorted(held))
        with torch.no_grad():  # these positions were scored by the head that never trained on them
            assert torch.allclose(scores[pos], fold_head(feats.h[pos].float()))
    assert not any(torch.equal(a.weight, b.weight) for i, (a, _) in enumerate(fits) for b, _ in fits[i + 1:])


def test_crossfit_mines_rejects_where_mining_the_training_data_finds_none():
    feats = features()
    head = ToolkenHead(["t0"], 128, seed=0)
    ToolkenTrainer(head, feats, FIT, seed=0).fit()
    _, train_labels = mine(feats.scores(head), feats.max_logit, feats.tool_label, 0.0, 1)
    assert (train_labels == 1).sum() == 0  # the head fits its own training data: no false positive to learn Reject from
    scores, _ = crossfit_scores(head, feats, FIT, folds=4, seed=0)
    _, cross_labels = mine(scores, feats.max_logit, feats.tool_label, 0.0, 1)
    assert (cross_labels == 1).sum() > 0  # held-out heads make the mistakes a test-time head makes
    assert (cross_labels == 0).sum() == (feats.tool_label == 0).sum()  # every gold position is still mined


def test_crossfit_needs_two_examples():
    with pytest.raises(ValueError, match="at least 2 training examples"):
        crossfit_scores(ToolkenHead(["t0"], 128), features(n_examples=1), FIT, folds=5, seed=0)


# ------------------------------------------------------------------ the mix
def test_stage1_margins_put_the_top_tool_at_or_above_reject():
    scores = torch.tensor([1.0, 3.0, 2.0])
    assert stage1_margins(scores, 2.5).tolist() == [-1.5, 0.5, -0.5, 0.0]
    # untriggered (a mined gold position stage 1 missed) or no vocabulary: the top tool ties Reject
    assert stage1_margins(scores, 7.0).tolist() == [-2.0, 0.0, -1.0, 0.0]
    assert stage1_margins(scores, None).tolist() == [-2.0, 0.0, -1.0, 0.0]


def test_mix_zero_decides_as_stage1_and_mix_one_as_the_reranker(tiny_backbone):
    d = tiny_backbone.hidden_size
    w = torch.zeros(len(TOOLS) + 1, d)
    ids = tiny_backbone.tokenizer("She has 100 - 50 =", add_special_tokens=False)["input_ids"]
    layers, n = prefix_row(tiny_backbone, ids)
    q = RerankContext(torch.tensor([0.0, 2.0, 1.0, -1.0]), layers=layers, n=n, trigger_at=1.5)
    cands = top_candidates(q.scores, 3)
    docs = {t: t for t in TOOLS}
    g = LLMReranker(tiny_backbone, w, TOOLS, docs, k=3).states([q], [cands])[0]
    w[0] = g * 50  # the reranker prefers add (stage 1's third) …
    w[-1] = g * 100  # … and Reject above all
    stage1 = LLMReranker(tiny_backbone, w, TOOLS, docs, k=3, mix=0.0).rank(q, cands)
    assert [r.tool for r in stage1] == ["subtract", None, "multiply", "add"]  # stage 1: its top-1; Reject at margin 0
    # with a Reject shift, mix 0 is stage 1 with a stricter trigger: subtract's margin over calling nothing is 0.5
    assert LLMReranker(tiny_backbone, w, TOOLS, docs, k=3, mix=0.0, reject_bias=1.0).rank(q, cands)[0].is_reject
    assert LLMReranker(tiny_backbone, w, TOOLS, docs, k=3, mix=0.0, reject_bias=0.4).rank(q, cands)[0].tool == "subtract"
    # the call decision on its own mix: stage 1 selects (subtract), the reranker says whether to call (no: Reject)
    assert LLMReranker(tiny_backbone, w, TOOLS, docs, k=3, mix=0.0, call_mix=1.0).rank(q, cands)[0].is_reject
    # and the other way round: stage 1 decides to call, the reranker picks the tool (add)
    assert LLMReranker(tiny_backbone, w, TOOLS, docs, k=3, mix=1.0, call_mix=0.0).rank(q, cands)[0].tool == "add"
    alone = LLMReranker(tiny_backbone, w, TOOLS, docs, k=3, mix=1.0).rank(q, cands)
    assert alone[0].is_reject and alone[1].tool == "add"


def _rerank_set(n_tools: int, reranker_right: torch.Tensor, stage1_right: torch.Tensor, labels: torch.Tensor) -> tuple:
    """A RerankSet whose W_r·g puts 1.0 on the label where `reranker_right`
    (else on a wrong candidate), and whose stage-1 margins put the label first
    where `stage1_right` (never Reject: stage 1 always calls)."""
    n = len(labels)
    g = torch.eye(n)
    weight = torch.zeros(n_tools + 1, n)
    stage1 = torch.full((n, n_tools + 1), -1.0)
    stage1[:, n_tools] = 0.0
    for i, (lab, rr, s1) in enumerate(zip(labels.tolist(), reranker_right.tolist(), stage1_right.tolist())):
        wrong = (lab + 1) % n_tools
        weight[lab if rr else wrong, i] = 5.0
        top = lab if (s1 and lab < n_tools) else wrong
        stage1[i, top] = 0.5
    masks = torch.ones(n, n_tools + 1, dtype=torch.bool)
    return weight, RerankSet(g, masks, labels, stage1=stage1)


def test_calibrated_mix_never_selects_worse_than_stage1():
    n_tools = 3
    labels = torch.tensor([0, 1, 2, 0, 1, 3, 3, 3])  # 3 = Reject
    # a reranker that rejects well but picks the wrong tool where stage 1 is right
    weight, data = _rerank_set(n_tools, torch.tensor([0, 0, 1, 0, 1, 1, 1, 1]), torch.tensor([1, 1, 1, 1, 1, 0, 0, 0]), labels)
    mix = calibrate_mix(weight, data, n_tools)
    gold = labels < n_tools

    def tool_acc(m):
        return float((rerank_predictions(weight, data, m)[gold] == labels[gold]).float().mean())

    assert tool_acc(0.0) == 1.0 and tool_acc(1.0) < 1.0  # alone, the reranker would select worse
    assert tool_acc(mix) >= tool_acc(0.0)  # the calibrated mix never does
    # a reranker right everywhere earns weight: the mix rejects what stage 1 calls
    weight, data = _rerank_set(n_tools, torch.ones(8, dtype=torch.bool), torch.tensor([1, 1, 1, 1, 1, 0, 0, 0]), labels)
    mix = calibrate_mix(weight, data, n_tools)
    assert mix > 0 and (rerank_predictions(weight, data, mix) == labels).all()


def _reject_set(margins: list[float], labels: list[int], triggered: list[bool], n_tools: int = 2) -> tuple:
    """A RerankSet whose (mix 1) best-candidate-minus-Reject margin is `margins`."""
    n = len(labels)
    weight = torch.zeros(n_tools + 1, n)
    for i, (m, lab) in enumerate(zip(margins, labels)):
        weight[lab if lab < n_tools else 0, i] = m  # the best candidate's score; Reject's is 0
    data = RerankSet(torch.eye(n), torch.ones(n, n_tools + 1, dtype=torch.bool), torch.tensor(labels),
                     triggered=torch.tensor(triggered))
    return weight, data


def test_reject_shift_cuts_false_positive_calls_within_the_recall_budget():
    # gold positions (label 0/1) with large margins; false positives (2 = Reject) mostly with small ones
    margins = [3.0, 2.5, 2.0, 1.5, 0.8, 0.5, 0.4, 0.1, 1.0]
    labels = [0, 1, 0, 1, 0, 2, 2, 2, 2]
    weight, data = _reject_set(margins, labels, [True] * 9)
    w = torch.tensor([1.0] * 5 + [3.0] * 4)  # each false positive stands for three (MinedSet.row_weights)
    m = reject_margins(weight, data, 1.0)
    assert torch.allclose(m, torch.tensor(margins))
    assert call_counts(m, data, 2, w, 0.0) == (5.0, 12.0, 5.0)  # no shift: every triggered position calls
    shift = calibrate_reject_bias(weight, data, 2, 1.0, w, max_recall_drop=0.0)
    # recall kept exactly: only the false positive above the weakest gold call still calls
    assert call_counts(m, data, 2, w, shift) == (5.0, 3.0, 5.0)
    # allowing one gold call in five to be lost, the calibration trades it for the last false positive
    shift = calibrate_reject_bias(weight, data, 2, 1.0, w, max_recall_drop=0.2)
    assert call_counts(m, data, 2, w, shift) == (4.0, 0.0, 5.0)
    # the decisions follow the shift: Reject where the margin is below it
    pred = rerank_predictions(weight, data, 1.0, reject_bias=shift)
    assert ((pred == 2) == (m < shift)).all()


def test_call_mix_lets_the_reranker_decide_calls_where_stage1_cannot_tell():
    """Stage 1's margins rank false positives among gold calls (a threshold
    cannot cut them without losing calls); the reranker's Reject score
    separates them. The calibrated call decision uses the reranker, and its
    F1 is never below the threshold-only one (call_mix 0 is in the grid)."""
    n_tools, n = 2, 8
    labels = torch.tensor([0, 1, 0, 1, 2, 2, 2, 0])  # 2 = Reject
    g = torch.eye(n)
    weight = torch.zeros(n_tools + 1, n)
    for i, lab in enumerate(labels.tolist()):
        weight[0, i] = 1.0  # the best candidate scores 1 …
        weight[n_tools, i] = 3.0 if lab == n_tools else -3.0  # … and Reject 3 at false positives, −3 at gold calls
    stage1 = torch.zeros(n, n_tools + 1)
    stage1[:, 0] = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.6, 0.2, 0.8, 0.4])  # interleaved: no threshold separates
    data = RerankSet(g, torch.ones(n, n_tools + 1, dtype=torch.bool), labels, stage1=stage1,
                     triggered=torch.ones(n, dtype=torch.bool))
    w = torch.ones(n)
    threshold_only = call_f1(reject_margins(weight, data, 0.0), data, n_tools, w,
                             calibrate_reject_bias(weight, data, n_tools, 0.0, w, max_recall_drop=0.0))
    call_mix, shift = calibrate_call(weight, data, n_tools, w, max_recall_drop=0.0)
    assert call_mix > 0 and call_f1(reject_margins(weight, data, call_mix), data, n_tools, w, shift) == 1.0 > threshold_only
    pred = rerank_predictions(weight, data, mix=0.0, reject_bias=shift, call_mix=call_mix)
    assert ((pred == n_tools) == (labels == n_tools)).all()


def test_reject_shift_counts_only_positions_where_stage1_calls():
    # a gold position stage 1 never triggered is a lost call whatever stage 2 says
    weight, data = _reject_set([2.0, 2.0, 0.5], [0, 1, 2], [True, False, True])
    w = torch.ones(3)
    shift = calibrate_reject_bias(weight, data, 2, 1.0, w, max_recall_drop=0.0)
    assert call_counts(reject_margins(weight, data, 1.0), data, 2, w, shift) == (1.0, 0.0, 2.0)
    metrics = rerank_metrics(weight, data, 2, "v/", reject_bias=shift, weights=w)
    assert metrics["v/call_recall"] == 0.5 and metrics["v/false_positive_calls"] == 0.0


def test_row_weights_restore_subsampled_counts_and_the_call_prior():
    labels = torch.tensor([0, 1, 0, 2, 2])  # 3 gold rows kept of 30 mined; 2 Reject rows of 2
    mined = MinedSet(torch.arange(5), labels, torch.zeros(5, 2), None, 2, n_no_call=100, mined_golds=30, mined_rejects=2)
    w = mined.row_weights()
    assert w[:3].tolist() == [10.0, 10.0, 10.0] and w[3:].tolist() == [1.0, 1.0]
    # call_prior 0.5: the 100 no-call positions weigh as much as the 30 gold ones, so each false positive 0.3
    w = mined.row_weights(call_prior=0.5)
    assert w[3:].tolist() == pytest.approx([0.3, 0.3])


def test_reject_shift_is_stored_and_old_checkpoints_keep_none():
    assert LLMRerank().reject_bias is None  # calibrated at training time by default

    class Head:
        rerank_weight = torch.zeros(3, 4)
        tool_names = ["a", "b"]
        rerank_config = {"name": "llm", "mix": 0.5, "reject_bias": 1.25}

    reranker = LLMRerank().build(None, Head(), {})
    assert (reranker.mix, reranker.reject_bias) == (0.5, 1.25)
    Head.rerank_config = {"name": "llm"}  # a checkpoint from before the mix and the shift
    assert (LLMRerank().build(None, Head(), {}).mix, LLMRerank().build(None, Head(), {}).reject_bias) == (1.0, 0.0)
    assert LLMRerank(reject_bias=-2.0).build(None, Head(), {}).reject_bias == -2.0  # an override wins
    Head.rerank_config = {"name": "llm", "mix": 0.3, "reject_bias": 0.5, "call_mix": 0.9}
    assert LLMRerank().build(None, Head(), {}).call_mix == 0.9
    Head.rerank_config = {"name": "llm", "mix": 0.3, "reject_bias": 0.5}  # before call_mix: the call is made on the mix
    assert LLMRerank().build(None, Head(), {}).call_mix == 0.3

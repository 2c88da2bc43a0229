"""Training stage 2 (Toolken+), after the stage-1 head is trained and its
bias calibrated: mine positions from the head (rerank/mining.py) on the
training and validation features, then hand them to the reranker's `fit`
(llm: cache the doc-block states and train W_r; embedding: calibrate the
Reject threshold). What is mined, and how contexts are built, is the same
for every task: the task's encoded examples after its shared prefix.

Which stage-1 scores the training positions are mined with
(`reranker.mining`):

  train     the final head's, on the data it was trained on. It fits that
            data well, so it rarely fires where no tool belongs: few Reject
            examples, unlike the false positives it makes at test time.
  crossfit  (default) K-fold cross-fitting: the training examples are split
            into K folds; for each fold a fresh head (same init, trainer
            settings and epochs) is trained on the other K−1 folds and its
            bias calibrated on validation, and the fold's positions are
            scored by it. Every training position is thus scored by a head
            that never saw it, as a test position is. The features are
            cached, so the K fits cost K stage-1 trainings on cached features.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import torch

from toolken_plus.adapter import ToolkenHead
from toolken_plus.config.schema import TrainerConfig
from toolken_plus.data.encoding import Encoded, context_start_ids
from toolken_plus.rerank.mining import MinedSet, PositionContexts, mine
from toolken_plus.train.trainer import CachedFeatures, ToolkenTrainer, calibrate_head_bias

log = logging.getLogger(__name__)

MINING_MODES = ("train", "crossfit")


def fold_of_examples(n_examples: int, folds: int, seed: int) -> np.ndarray:
    """The fold (0…folds−1) of each example: a seeded shuffle dealt round robin."""
    order = np.random.default_rng(seed).permutation(n_examples)
    fold = np.empty(n_examples, dtype=np.int64)
    fold[order] = np.arange(n_examples) % folds
    return fold


def crossfit_scores(head: ToolkenHead, feats: CachedFeatures, trainer_cfg: TrainerConfig, *, folds: int, seed: int,
                    val_feats: CachedFeatures | None = None, grid=(-10.0, 10.0, 0.25)) -> tuple[torch.Tensor, dict]:
    """Stage-1 scores of every training position by a head that did not train
    on its example (see the module docstring), shifted so that `mine` with the
    final head's bias makes the decision each fold head makes with its own
    calibrated bias. Returns (scores, info)."""
    n = feats.n_examples
    folds = min(folds, n)
    if folds < 2:
        raise ValueError(f"reranker.mining=crossfit needs at least 2 training examples (got {n})")
    fold = fold_of_examples(n, folds, seed)
    scores = torch.empty(len(feats.h), head.n_tools)
    cfg = dataclasses.replace(trainer_cfg, progress=False)
    biases = []
    t0 = time.perf_counter()
    for f in range(folds):
        fold_head = ToolkenHead(head.tool_names, head.weight.shape[1], seed=seed)
        ToolkenTrainer(fold_head, feats, cfg, seed=seed, examples=np.nonzero(fold != f)[0]).fit()
        bias = calibrate_head_bias(fold_head, val_feats, tuple(grid)) if val_feats is not None else float(head.logit_bias)
        biases.append(bias)
        held_out = feats.positions(np.nonzero(fold == f)[0])
        with torch.no_grad():
            scores[held_out] = fold_head(feats.h[held_out].float()) + (bias - float(head.logit_bias))
    info = {"rerank/crossfit_folds": folds, "time/crossfit_s": round(time.perf_counter() - t0, 2),
            "rerank/crossfit_bias_mean": float(np.mean(biases))}
    log.info("cross-fitted stage 1 on %d folds in %.1f s", folds, info["time/crossfit_s"])
    return scores, info


def mined_set(backbone, head, prefix_ids: list[int], encoded: list[Encoded], feats: CachedFeatures,
              with_kv: bool, scores: torch.Tensor | None = None) -> MinedSet:
    scores = feats.scores(head) if scores is None else scores
    bias = float(head.logit_bias)
    rows, labels = mine(scores, feats.max_logit, feats.tool_label, bias, head.n_tools)
    return MinedSet(rows, labels, scores, PositionContexts(backbone, prefix_ids, encoded, with_kv), head.n_tools,
                    trigger_at=feats.max_logit.float() - bias, n_no_call=int((feats.tool_label < 0).sum()))


def fit_reranker(spec, backbone, head, *, prefix: str, tool_docs: dict[str, str], train_enc: list[Encoded],
                 train_feats: CachedFeatures, val_enc: list[Encoded], val_feats: CachedFeatures | None,
                 seed: int = 0, progress: bool = True, frozen_tools: int = 0, trainer_cfg: TrainerConfig | None = None,
                 grid=(-10.0, 10.0, 0.25), **fit_options) -> dict:
    """Mine and fit `spec` (a reranker spec); it stores its state in the head
    and returns its metrics (with how many gold and Reject positions each
    mining mode yields on the training data)."""
    prefix_ids = context_start_ids(backbone.tokenizer, prefix) if prefix else []
    mode = getattr(spec, "mining", "train")
    if mode not in MINING_MODES:
        raise ValueError(f"reranker.mining={mode!r}: expected one of {list(MINING_MODES)}")
    train = mined_set(backbone, head, prefix_ids, train_enc, train_feats, spec.needs_kv)
    info: dict = {"rerank/train_mined_golds@train": train.n_golds, "rerank/train_mined_rejects@train": train.n_rejects}
    if mode == "crossfit":
        if frozen_tools:
            # Adding tools trains only the new rows of a trained head: there is no
            # fresh stage 1 to cross-fit, so the training positions are mined as trained.
            log.info("tools.add: stage 2 mines its training positions with the trained head (reranker.mining=train)")
            mode = "train"
        else:
            scores, more = crossfit_scores(head, train_feats, trainer_cfg or TrainerConfig(), folds=spec.folds, seed=seed,
                                           val_feats=val_feats, grid=grid)
            info.update(more)
            train = mined_set(backbone, head, prefix_ids, train_enc, train_feats, spec.needs_kv, scores=scores)
            info.update({"rerank/train_mined_golds@crossfit": train.n_golds,
                         "rerank/train_mined_rejects@crossfit": train.n_rejects})
    info["rerank/mining"] = mode
    val = mined_set(backbone, head, prefix_ids, val_enc, val_feats, spec.needs_kv) if val_feats is not None else None
    out = spec.fit(backbone, head, tool_docs, train, val, seed=seed, progress=progress, frozen_tools=frozen_tools,
                   **fit_options)
    return {**info, **out}

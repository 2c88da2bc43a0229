"""Training stage 2 (Toolken+), after the stage-1 head is trained and its
bias calibrated: mine positions from the head (rerank/mining.py) on the
training and validation features, then hand them to the reranker's `fit`
(llm: cache the doc-block states and train W_r; embedding: calibrate the
Reject threshold). What is mined, and how contexts are built, is the same
for every task: the task's encoded examples after its shared prefix."""

from __future__ import annotations

from toolken_plus.data.encoding import Encoded
from toolken_plus.rerank.mining import MinedSet, PositionContexts, mine
from toolken_plus.train.trainer import CachedFeatures


def mined_set(backbone, head, prefix_ids: list[int], encoded: list[Encoded], feats: CachedFeatures,
              with_kv: bool) -> MinedSet:
    scores = feats.scores(head)
    rows, labels = mine(scores, feats.max_logit, feats.tool_label, float(head.logit_bias), head.n_tools)
    return MinedSet(rows, labels, scores, PositionContexts(backbone, prefix_ids, encoded, with_kv), head.n_tools)


def fit_reranker(spec, backbone, head, *, prefix: str, tool_docs: dict[str, str], train_enc: list[Encoded],
                 train_feats: CachedFeatures, val_enc: list[Encoded], val_feats: CachedFeatures | None,
                 seed: int = 0, progress: bool = True, frozen_tools: int = 0, **fit_options) -> dict:
    """Mine and fit `spec` (a reranker spec); it stores its state in the head
    and returns its metrics."""
    prefix_ids = backbone.tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    train = mined_set(backbone, head, prefix_ids, train_enc, train_feats, spec.needs_kv)
    val = mined_set(backbone, head, prefix_ids, val_enc, val_feats, spec.needs_kv) if val_feats is not None else None
    return spec.fit(backbone, head, tool_docs, train, val, seed=seed, progress=progress, frozen_tools=frozen_tools,
                    **fit_options)

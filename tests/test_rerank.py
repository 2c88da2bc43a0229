"""Stage 2 (Toolken+): candidates, the masked softmax, the doc-block pass
with prefix reuse, mining, W_r training and threshold calibration."""

import torch

from toolken_plus.kv.rows import crop_row, prefix_row
from toolken_plus.rerank.base import (
    NoReranker,
    RerankContext,
    candidate_mask,
    doc_block,
    masked_scores,
)
from toolken_plus.rerank.base import top_candidates as candidates
from toolken_plus.rerank.embedder import HashEmbedder
from toolken_plus.rerank.embedding import EmbeddingReranker, calibrate_threshold
from toolken_plus.rerank.llm import LLMReranker, RerankSet, init_rerank_weight, rerank_metrics, train_rerank_weight
from toolken_plus.rerank.mining import MinedSet, mine, subsample

TOOLS = ["add", "subtract", "multiply", "divide"]
DOCS = {"add": "adds two numbers", "subtract": "subtracts the second number from the first",
        "multiply": "multiplies numbers", "divide": "divides the first number by the second"}


def test_candidates_are_topk_best_first_and_forced_gold_joins():
    s = torch.tensor([0.1, 3.0, 2.0, -1.0])
    assert candidates(s, 2) == [1, 2]
    # a forced gold outside the top-k replaces the k-th, at the drawn line
    assert candidates(s, 2, force=3) == [3, 1]
    assert candidates(s, 2, force=0, force_slot=1) == [1, 0]
    assert candidates(s, 3, force=3, force_slot=4) == [1, 3, 2]
    assert candidates(s, 2, force=2, force_slot=0) == [1, 2]


def test_masked_softmax_only_candidates_and_reject_can_win():
    mask = candidate_mask([1, 2], 4)
    assert mask.tolist() == [False, True, True, False, True]
    logits = torch.tensor([100.0, 1.0, 2.0, 50.0, 0.5])  # tools 0 and 3 are not candidates
    s = masked_scores(logits, mask)
    assert int(s.argmax()) == 2
    p = torch.softmax(s, 0)
    assert p[0] == 0 and p[3] == 0 and torch.isclose(p.sum(), torch.tensor(1.0))
    assert int(masked_scores(torch.tensor([9.0, 1.0, 2.0, 9.0, 5.0]), mask).argmax()) == 4  # Reject wins


def test_doc_block_lists_candidates_then_reject_and_ends_with_cue():
    text = doc_block([2, 0], TOOLS, DOCS, max_doc_chars=12)
    lines = text.strip().splitlines()
    assert lines[1] == "- multiply: multiplie..." and lines[2] == "- add: adds two..."
    assert lines[3].startswith("- none:") and text.endswith("[Best choice]:")


def test_rerank_state_with_reused_kv_equals_full_forward(tiny_backbone):
    tok = tiny_backbone.tokenizer
    context = "Question: Natalia sold 48 clips in April and half as many in May. Answer: 48/2 ="
    ids = tok(context, add_special_tokens=False)["input_ids"]
    w = init_rerank_weight(torch.randn(4, tiny_backbone.hidden_size))
    rr = LLMReranker(tiny_backbone, w, TOOLS, DOCS, k=2)
    scores = torch.tensor([0.3, -0.2, 1.5, 0.9])
    layers, n = prefix_row(tiny_backbone, ids)
    # two rows of different lengths batched together: padding must not leak
    short = ids[:7]
    qs = [RerankContext(scores, layers=layers, n=n), RerankContext(scores.flip(0), layers=crop_row(layers, 7), n=7)]
    cands = [candidates(q.scores, 2) for q in qs]
    g = rr.states(qs, cands)
    assert cands == [[2, 3], [1, 0]]
    for row, (c, ctx) in enumerate(zip(cands, [ids, short])):
        full = ctx + rr.block_ids(c)
        with torch.no_grad():
            h, _ = tiny_backbone.final_hidden(torch.tensor([full]))
        assert torch.allclose(g[row], h[0, -1], atol=1e-4)
    # pending tokens (not yet in the row) are the same as having them cached
    half = len(ids) // 2
    pl, pn = prefix_row(tiny_backbone, ids[:half])
    g2 = rr.states([RerankContext(scores, layers=pl, n=pn, pending=ids[half:])], cands[:1])
    assert torch.allclose(g2[0], g[0], atol=1e-4)


def test_llm_reranker_decides_with_w_r_and_rejects(tiny_backbone):
    d = tiny_backbone.hidden_size
    w = torch.zeros(5, d)
    rr = LLMReranker(tiny_backbone, w, TOOLS, DOCS, k=2)
    ids = tiny_backbone.tokenizer("She has 100 - 50 =", add_special_tokens=False)["input_ids"]
    layers, n = prefix_row(tiny_backbone, ids)
    q = RerankContext(torch.tensor([0.0, 2.0, 1.0, -1.0]), layers=layers, n=n)
    cands = candidates(q.scores, 2)
    g = rr.states([q], [cands])
    w[2] = g[0] * 10  # tool 2 scores highest
    w[0] = g[0] * 100  # tool 0 scores even higher, but is not a candidate
    assert rr.rank(q, cands)[0].tool == "multiply"
    w[4] = g[0] * 20  # Reject beats both candidates
    ranked = rr.rank(q, cands)
    assert ranked[0].is_reject and [r.tool for r in ranked] == [None, "multiply", "subtract"]
    assert [r.score for r in ranked] == sorted((r.score for r in ranked), reverse=True)  # best first


def test_no_reranker_is_stage1_argmax():
    q = RerankContext(torch.tensor([0.0, 2.0, 1.0, -1.0]))
    ranked = NoReranker(TOOLS, k=3).rank(q, candidates(q.scores, 3))
    assert [r.tool for r in ranked] == ["subtract", "multiply", "add", None] and not NoReranker(TOOLS).reranks


def test_mine_keeps_gold_positions_and_false_positive_triggers():
    scores = torch.tensor([[5.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 0.0]])
    max_logit = torch.tensor([1.0, 4.0, 1.0, 2.0])
    label = torch.tensor([0, 1, -1, -1])
    rows, labels = mine(scores, max_logit, label, bias=0.0, n_tools=2)
    # row 1: gold tool though untriggered (kept); row 2: false positive → Reject; row 3: nothing
    assert rows.tolist() == [0, 1, 2] and labels.tolist() == [0, 1, 2]
    rows, labels = mine(scores, max_logit, label, bias=-5.0, n_tools=2)
    assert rows.tolist() == [0, 1]
    r, lab = subsample(torch.arange(10), torch.arange(10), 4, seed=0)
    assert len(r) == 4 and r.tolist() == lab.tolist() and r.tolist() == sorted(r.tolist())
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])  # 2 = Reject: rows 2, 5, 8
    r, lab = subsample(torch.arange(10), labels, 5, seed=0, keep_label=2)
    assert len(r) == 5 and {2, 5, 8} <= set(r.tolist()) and (lab == 2).sum() == 3
    r, _ = subsample(torch.arange(10), labels, 5, seed=0)
    assert len(r) == 5


def test_train_rerank_weight_learns_a_separable_task():
    torch.manual_seed(0)
    n, d = 3, 8
    protos = torch.randn(n + 1, d) * 3
    labels = torch.randint(0, n + 1, (400,))
    g = protos[labels] + 0.3 * torch.randn(400, d)
    masks = torch.ones(400, n + 1, dtype=torch.bool)
    masks[:, 0] = labels == 0  # tool 0 is only a candidate where it is gold
    data = RerankSet(g, masks, labels)
    init = init_rerank_weight(torch.zeros(n, d))
    before = rerank_metrics(init, data, n)["val_rerank/accuracy"]
    w, losses = train_rerank_weight(init, data, epochs=15, lr=0.05, progress=False)
    after = rerank_metrics(w, data, n)
    assert losses[-1] < losses[0] and after["val_rerank/accuracy"] > 0.95 > before
    assert after["val_rerank/fp_rejected"] > 0.9


class _TextContexts:
    def __init__(self, texts):
        self.texts = texts

    def contexts(self, rows, scores):
        return [RerankContext(s, text=self.texts[r]) for r, s in zip(rows, scores)]


def test_embedding_reranker_prefers_matching_doc_and_calibrates_reject():
    emb = HashEmbedder(dim=256)
    texts = ["please divide the first number by the second", "multiplies numbers together now",
             "the weather is nice today", "a story about a cat"]
    rr = EmbeddingReranker(emb, TOOLS, DOCS, k=4, alpha=1.0)
    flat = torch.zeros(4)
    all4 = candidates(flat, 4)
    assert rr.rank(RerankContext(flat, text=texts[0]), all4)[0].tool == "divide"
    mined = MinedSet(torch.arange(4), torch.tensor([3, 2, 4, 4]), torch.zeros(4, 4), _TextContexts(texts), n_tools=4)
    thr, metrics = calibrate_threshold(rr, mined)
    rr.threshold = thr
    chosen = [r[0].tool for r in rr.rank_batch([RerankContext(flat, text=t) for t in texts], [all4] * 4)]
    assert chosen == ["divide", "multiply", None, None] and metrics["val_rerank/accuracy"] == 1.0


def test_hash_embedder_is_deterministic_and_unit_norm():
    a = HashEmbedder().encode(["abc def", "xyz"])
    assert torch.allclose(a.norm(dim=1), torch.ones(2)) and torch.equal(a, HashEmbedder().encode(["abc def", "xyz"]))


def test_empty_prefix_row_extends_like_a_fresh_forward(tiny_backbone):
    from toolken_plus.kv.rows import prefill_rows

    layers, n = prefix_row(tiny_backbone, [])
    ids = tiny_backbone.tokenizer("What is 2 plus 3?", add_special_tokens=False)["input_ids"]
    (_, m, h), = prefill_rows(tiny_backbone, [(layers, n, ids)])
    with torch.no_grad():
        full, _ = tiny_backbone.final_hidden(torch.tensor([ids]))
    assert n == 0 and m == len(ids) and torch.allclose(h, full[0, -1], atol=1e-5)


def test_length_sorted_rerank_batches_give_the_same_states_in_row_order(tiny_backbone):
    """build_rerank_set batches choice positions by length; text positions keep
    their example order. Either way row i of the set is mined row i's state."""
    import numpy as np

    from toolken_plus.data.encoding import IGNORE, VOCAB, Encoded
    from toolken_plus.rerank.llm import build_rerank_set
    from toolken_plus.rerank.mining import PositionContexts

    tok = tiny_backbone.tokenizer
    texts = ["Query: a", "Query: what is twelve times thirteen, please, and quickly", "Query: 3 + 4",
             "Question: 5 apples and 7 pears; how many fruits? Answer: 5+7=12 fruits"]
    encoded = []
    for k, text in enumerate(texts):
        ids = np.array(tok(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
        label = np.full(len(ids), IGNORE, dtype=np.int64)
        if k < 3:
            label[-1] = k % len(TOOLS)  # a choice position: the example's last token
        else:
            label[[3, 6, 9]] = [VOCAB, 1, VOCAB]  # positions inside a longer text
        encoded.append(Encoded(ids, np.full(len(ids), IGNORE, dtype=np.int64), label))
    contexts = PositionContexts(tiny_backbone, tok("Tools:", add_special_tokens=False)["input_ids"], encoded)
    n_rows = len(contexts.row_example)
    scores = torch.randn(n_rows, len(TOOLS), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, len(TOOLS), 1, len(TOOLS)])
    mined = MinedSet(torch.arange(n_rows), labels, scores, contexts, len(TOOLS))
    rr = LLMReranker(tiny_backbone, init_rerank_weight(torch.randn(len(TOOLS), tiny_backbone.hidden_size)), TOOLS, DOCS, k=2)
    assert [contexts.pending_tokens(r) for r in range(n_rows)][3:] == [0, 0, 0]
    sorted_set = build_rerank_set(rr, mined, batch_size=2, progress=False)
    plain = build_rerank_set(rr, mined, batch_size=2, progress=False, sort_by_length=False)
    one_by_one = build_rerank_set(rr, mined, batch_size=1, progress=False, sort_by_length=False)
    budget = build_rerank_set(rr, mined, batch_size=4, max_tokens=60, progress=False)  # token-limited forwards
    assert torch.allclose(sorted_set.g, one_by_one.g, atol=1e-4) and torch.allclose(plain.g, one_by_one.g, atol=1e-4)
    assert torch.allclose(budget.g, one_by_one.g, atol=1e-4)
    assert torch.equal(sorted_set.masks, one_by_one.masks) and torch.equal(sorted_set.labels, labels)


def test_bfloat16_doc_block_pass_is_close_to_float32_and_reads_shared_prefixes(tiny_backbone):
    """reranker.state_dtype: the pass runs on a cast copy of the backbone (the
    backbone itself stays float32); the text's KV (a row, or a shared Prefix
    read in place) comes in float32 and is cast, and g stays close."""
    from toolken_plus.kv.rows import make_prefix

    tok = tiny_backbone.tokenizer
    w = init_rerank_weight(torch.randn(4, tiny_backbone.hidden_size))
    exact = LLMReranker(tiny_backbone, w, TOOLS, DOCS, k=2)
    fast = LLMReranker(tiny_backbone, w, TOOLS, DOCS, k=2, state_dtype=torch.bfloat16)
    assert exact.state_backbone is tiny_backbone and fast.state_dtype == torch.bfloat16
    assert next(tiny_backbone.model.parameters()).dtype == torch.float32  # not cast in place
    prefix = make_prefix(tiny_backbone, tok("Tools: add, subtract.", add_special_tokens=False)["input_ids"])
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in ("She has 100 - 50 =", "Twelve times 4 is")]
    layers, n = prefix_row(tiny_backbone, ids[0])
    scores = torch.tensor([0.3, -0.2, 1.5, 0.9])
    qs = [RerankContext(scores, layers=layers, n=n),  # a float32 row
          RerankContext(scores, n=0, pending=ids[0], prefix=prefix),  # two rows on one float32 Prefix
          RerankContext(scores, n=0, pending=ids[1], prefix=prefix)]
    cands = [[2, 3]] * 3
    g32, g16 = exact.states(qs, cands), fast.states(qs, cands)
    assert g16.dtype == torch.float32 and g16.shape == g32.shape  # in W_r's dtype
    cos = torch.nn.functional.cosine_similarity(g16, g32)
    assert float(cos.min()) > 0.99, cos
    assert not torch.equal(g16, g32)  # it did run in bfloat16


def test_padded_batches_respect_rows_and_tokens_and_isolate_overlong_rows():
    from toolken_plus.kv import padded_batches

    widths = [10, 10, 12, 100, 12, 12, 12, 12]
    got = padded_batches(widths, max_tokens=40, max_rows=3)
    assert got == [(0, 3), (3, 4), (4, 7), (7, 8)]  # 100 > 40 alone; 3 rows at most
    for start, end in got:
        assert end - start <= 3 and (end - start == 1 or max(widths[start:end]) * (end - start) <= 40)
    assert padded_batches(widths, max_tokens=10**6) == [(0, 8)] and padded_batches([], 10) == []

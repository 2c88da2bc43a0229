"""Shared-prefix attention: rows on a shared prompt prefix give what their
full rows give, while only their own tokens are held per row."""

import pytest
import torch

from toolken_plus import kv
from toolken_plus.backbone import tiny_random_backbone
from toolken_plus.infer.batch_cache import BatchCache as _BatchCache
from toolken_plus.kv.shared_prefix import _SUPPORTED, supports_shared_prefix

PREFIXES = ["Question: 1 + 2? Answer: 3\n\n", "A longer prompt prefix, with a demo: <add>(3, 4)=7 and more words\n\n"]
# (which prefix, the row's own text); rows on the same prefix are not adjacent
ROWS = [(1, "Question: Tom has 3 apples."), (0, "Q: 5 pens"), (None, "no prefix at all here"), (1, "x"),
        (0, "Sam had 10 cookies and ate 3 of them.")]


@pytest.fixture(scope="module")
def gqa_backbone(smol_tokenizer):
    """Grouped-query attention like SmolLM2's (here 4 query heads on 2 kv heads)."""
    return tiny_random_backbone(smol_tokenizer, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, intermediate_size=64, seed=3)


def _ids(bb, text):
    return bb.tokenizer(text, add_special_tokens=False)["input_ids"]


def _first_prefill(bb):
    prefixes = [kv.make_prefix(bb, _ids(bb, t)) for t in PREFIXES]
    jobs = [(None, 0, _ids(bb, text), None if p is None else prefixes[p]) for p, text in ROWS]
    return jobs, kv.prefill_rows(bb, jobs)


def _full_ids(bb, row: int) -> list[int]:
    p, text = ROWS[row]
    return ([] if p is None else _ids(bb, PREFIXES[p])) + _ids(bb, text)


@pytest.mark.parametrize("shared", [True, False])
def test_rows_on_shared_prefixes_equal_their_full_rows(gqa_backbone, monkeypatch, shared):
    bb = gqa_backbone
    assert supports_shared_prefix(bb)
    if not shared:  # the fallback: each row gets its own copy of the prefix
        monkeypatch.setitem(_SUPPORTED, bb.model, False)
    jobs, first = _first_prefill(bb)
    more = [_ids(bb, " and then 7 more"), _ids(bb, "!")] * 3
    second = kv.prefill_rows(bb, [(layers, n, m, job[3]) for (layers, n, _), m, job in zip(first, more, jobs)])
    for i, ((_, n1, h1), (l2, n2, h2), m) in enumerate(zip(first, second, more)):
        base = _full_ids(bb, i)
        full, _ = bb.final_hidden(torch.tensor([base + m]))
        assert n1 == len(_ids(bb, ROWS[i][1])) and n2 == n1 + len(m)  # a row holds what follows its prefix
        assert l2[0][0].shape[2] == n2
        torch.testing.assert_close(h1, full[0, len(base) - 1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(h2, full[0, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shared", [True, False])
def test_batch_cache_decodes_rows_on_different_prefixes(gqa_backbone, monkeypatch, shared):
    bb = gqa_backbone
    if not shared:
        monkeypatch.setitem(_SUPPORTED, bb.model, False)
    jobs, first = _first_prefill(bb)
    batch = _BatchCache(bb, len(ROWS))
    for i, (job, (layers, n, _)) in enumerate(zip(jobs, first)):
        batch.set_row(i, layers, n, job[3])
    own = max(n for _, n, _ in first)
    # shared: the cache is as wide as the longest row's own tokens; the prefix is not in it
    assert batch.width == (own if shared else max(len(_full_ids(bb, i)) for i in range(len(ROWS))))
    tokens = [torch.tensor([11, 12, 13, 14, 15]), torch.tensor([21, 22, 23, 24, 25])]
    for t, tok in enumerate(tokens):
        hidden = batch.step(tok)
        for i in range(len(ROWS)):
            full, _ = bb.final_hidden(torch.tensor([_full_ids(bb, i) + [int(x[i]) for x in tokens[: t + 1]]]))
            torch.testing.assert_close(hidden[i], full[0, -1], atol=1e-5, rtol=1e-5)
    layers, n = batch.get_row(0)  # the row's own tokens, whatever the mode
    assert n == first[0][1] + 2 and layers[0][0].shape[2] == n
    torch.testing.assert_close(layers[0][0][:, :, : first[0][1]], first[0][0][0][0], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("arch", ["gemma3", "qwen2"])
def test_rows_and_batch_cache_on_other_cache_layouts(smol_tokenizer, arch):
    """prefill_rows (rows with gaps between cached and new tokens, prefixes
    shared or copied) and BatchCache (left-padded decoding) equal a fresh
    forward of each full row on a hybrid sliding-window cache whose window
    (6) is shorter than the rows (Gemma 3) and on grouped-query attention
    with prefix sharing (Qwen2)."""
    from helpers import tiny_backbone_of

    bb = tiny_backbone_of(arch, smol_tokenizer, sliding_window=6)

    def _own_forward(bb, ids):  # the model's own masks and cache, not Backbone's
        return bb.model.get_decoder()(input_ids=torch.tensor([ids])).last_hidden_state

    assert supports_shared_prefix(bb) == (arch == "qwen2")
    jobs, first = _first_prefill(bb)
    more = [_ids(bb, " and then 7 more"), _ids(bb, "!")] * 3
    second = kv.prefill_rows(bb, [(layers, n, m, job[3]) for (layers, n, _), m, job in zip(first, more, jobs)])
    for i, ((_, n1, h1), (l2, n2, h2), m) in enumerate(zip(first, second, more)):
        base = _full_ids(bb, i)
        full = _own_forward(bb, base + m)
        assert l2[0][0].shape[2] == n2 == n1 + len(m)
        torch.testing.assert_close(h1, full[0, len(base) - 1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(h2, full[0, -1], atol=1e-5, rtol=1e-5)
    batch = _BatchCache(bb, len(ROWS))
    for i, (job, (layers, n, _)) in enumerate(zip(jobs, second)):
        batch.set_row(i, layers, n, job[3])
    tokens = [torch.tensor([11, 12, 13, 14, 15]), torch.tensor([21, 22, 23, 24, 25])]
    for t, tok in enumerate(tokens):
        hidden = batch.step(tok)
        for i in range(len(ROWS)):
            ids = _full_ids(bb, i) + more[i] + [int(x[i]) for x in tokens[: t + 1]]
            full = _own_forward(bb, ids)
            torch.testing.assert_close(hidden[i], full[0, -1], atol=1e-5, rtol=1e-5)


def test_training_features_after_a_prefix_on_a_sliding_window_cache(smol_tokenizer):
    """The feature cache's right-padded batch after a shared prefix
    (train/cache.py) equals the model's own forward of each full row."""
    from helpers import tiny_backbone_of

    from toolken_plus.train.cache import _forward_after_prefix

    bb = tiny_backbone_of("gemma3", smol_tokenizer, sliding_window=6)
    prefix_ids = _ids(bb, PREFIXES[1])
    rows = [_ids(bb, text) for _, text in ROWS]
    ids = torch.full((len(rows), max(map(len, rows))), bb.tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, : len(row)], mask[r, : len(row)] = torch.tensor(row), 1
    hidden = _forward_after_prefix(bb, kv.prefix_row(bb, prefix_ids), ids, mask)
    for r, row in enumerate(rows):
        own = bb.model.get_decoder()(input_ids=torch.tensor([prefix_ids + row])).last_hidden_state
        torch.testing.assert_close(hidden[r, : len(row)], own[0, len(prefix_ids):], atol=1e-5, rtol=1e-5)


def test_backbones_it_does_not_fit_copy_the_prefix_instead(smol_tokenizer, monkeypatch):
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from toolken_plus.kv.shared_prefix import ATTENTION_NAME, _register

    windowed = tiny_random_backbone(smol_tokenizer, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, seed=5)
    windowed.model.config.sliding_window = 4  # a window would not see a shared prefix the same way
    assert not supports_shared_prefix(windowed)

    # an attention that ignores the prefix (as a model with its own attention code would) fails the check
    bb = tiny_random_backbone(smol_tokenizer, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, seed=6)
    _register()
    monkeypatch.setitem(AttentionInterface._global_mapping, ATTENTION_NAME,
                        lambda m, q, k, v, mask, shared_prefix=None, **kw: sdpa_attention_forward(m, q, k, v, None, **kw))
    assert not supports_shared_prefix(bb)
    prefix = kv.make_prefix(bb, _ids(bb, PREFIXES[1]))
    (_, n, hidden), _ = kv.prefill_rows(bb, [(None, 0, _ids(bb, "Q: 5 pens"), prefix), (None, 0, _ids(bb, "x"), prefix)])
    full, _ = bb.final_hidden(torch.tensor([_ids(bb, PREFIXES[1]) + _ids(bb, "Q: 5 pens")]))
    assert n == len(_ids(bb, "Q: 5 pens"))
    torch.testing.assert_close(hidden, full[0, -1], atol=1e-5, rtol=1e-5)

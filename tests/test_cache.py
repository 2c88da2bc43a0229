"""Feature cache: correct reductions, keyed reuse, length batching."""

import torch
from helpers import SAMPLES, TOOL_INDEX

from toolken_plus.data.encoding import IGNORE, encode_examples
from toolken_plus.train.cache import build_feature_cache, cache_key, length_batches


def test_reductions_match_a_direct_forward(tiny_backbone, cache_root):
    encoded = encode_examples(tiny_backbone.tokenizer, SAMPLES, TOOL_INDEX)
    cache = build_feature_cache(tiny_backbone, encoded, cache_root, dtype="float32", progress=False)
    e = encoded[1]
    with torch.no_grad():
        out = tiny_backbone.model(torch.from_numpy(e.input_ids)[None], output_hidden_states=True)
    keep = torch.from_numpy(e.tool_label != IGNORE)
    logits = out.logits[0][keep]
    rows = torch.from_numpy(cache.example_index == 1)
    t = cache.tensors()
    assert torch.allclose(t["h"][rows], out.hidden_states[-1][0][keep], atol=1e-5)
    assert torch.allclose(t["logsumexp"][rows], torch.logsumexp(logits, -1), atol=1e-4)
    assert torch.allclose(t["max_logit"][rows], logits.max(-1).values, atol=1e-4)
    gold = torch.from_numpy(e.next_token)[keep]
    assert torch.allclose(t["gold_logit"][rows], logits.gather(1, gold[:, None]).squeeze(1), atol=1e-4)
    assert cache.meta["n_positions"] == len(cache) == int(sum((x.tool_label != IGNORE).sum() for x in encoded))


def test_rerun_hits_the_cache_and_other_data_misses(tiny_backbone, cache_root):
    encoded = encode_examples(tiny_backbone.tokenizer, SAMPLES, TOOL_INDEX)
    first = build_feature_cache(tiny_backbone, encoded, cache_root, progress=False)
    stamp = (first.path / "h.npy").stat().st_mtime_ns
    again = build_feature_cache(tiny_backbone, encoded, cache_root, progress=False)
    assert again.path == first.path and (again.path / "h.npy").stat().st_mtime_ns == stamp
    other = build_feature_cache(tiny_backbone, encoded[:2], cache_root, progress=False)
    assert other.path != first.path
    assert cache_key(tiny_backbone, encoded, "float16") != cache_key(tiny_backbone, encoded, "float32")
    assert not list((cache_root / "features").glob(".tmp-*"))  # temp dirs cleaned up


def test_h_is_memory_mapped(tiny_backbone, cache_root):
    import numpy as np

    encoded = encode_examples(tiny_backbone.tokenizer, SAMPLES, TOOL_INDEX)
    cache = build_feature_cache(tiny_backbone, encoded, cache_root, progress=False)
    assert isinstance(cache.h, np.memmap) and cache.h.dtype == np.float16


def test_length_batches_respect_token_budget():
    lengths = [5, 100, 7, 60, 61, 3, 99]
    batches = length_batches(lengths, max_tokens=200)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert max(lengths[i] for i in b) * len(b) <= 200 or len(b) == 1

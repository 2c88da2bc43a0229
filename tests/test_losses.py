"""The factorised loss on cached features equals ToolkenGPT's full CE."""

import torch
from helpers import SAMPLES, TOOL_INDEX, TOOLS

from toolken_plus.adapter.head import ToolkenHead
from toolken_plus.data.encoding import IGNORE, encode_examples
from toolken_plus.train.cache import build_feature_cache
from toolken_plus.train.losses import factorized_toolken_loss, full_toolken_loss


def _full_loss(backbone, encoded, head):
    """CE over [W_V h ; W_τ h] from a plain full forward of each example."""
    vocab_logits, scores, next_tok, labels = [], [], [], []
    for e in encoded:
        with torch.no_grad():
            out = backbone.model(torch.from_numpy(e.input_ids)[None], output_hidden_states=True)
        keep = torch.from_numpy(e.tool_label != IGNORE)
        vocab_logits.append(out.logits[0][keep])
        scores.append(head(out.hidden_states[-1][0][keep]))
        next_tok.append(torch.from_numpy(e.next_token)[keep])
        labels.append(torch.from_numpy(e.tool_label)[keep])
    return full_toolken_loss(torch.cat(vocab_logits), torch.cat(scores), torch.cat(next_tok), torch.cat(labels))


def test_factorized_loss_equals_full_cross_entropy(tiny_backbone, cache_root):
    encoded = encode_examples(tiny_backbone.tokenizer, SAMPLES, TOOL_INDEX)
    head = ToolkenHead(TOOLS, tiny_backbone.hidden_size, init_std=1.0, seed=3)  # large scores: toolkens matter
    cache = build_feature_cache(tiny_backbone, encoded, cache_root, dtype="float32", progress=False)
    t = cache.tensors()
    fact = factorized_toolken_loss(head(t["h"]), t["logsumexp"], t["gold_logit"], t["tool_label"].long())
    full = _full_loss(tiny_backbone, encoded, head)
    assert (t["tool_label"] >= 0).sum() == 5
    assert torch.allclose(fact, full, atol=1e-4), (fact.item(), full.item())
    # and the gradients w.r.t. W_τ agree too
    g_fact = torch.autograd.grad(factorized_toolken_loss(head(t["h"]), t["logsumexp"], t["gold_logit"], t["tool_label"].long()), head.weight)[0]
    g_full = torch.autograd.grad(_full_loss(tiny_backbone, encoded, head), head.weight)[0]
    assert torch.allclose(g_fact, g_full, atol=1e-4)


def test_fp16_cache_stays_close(tiny_backbone, cache_root):
    encoded = encode_examples(tiny_backbone.tokenizer, SAMPLES, TOOL_INDEX)
    head = ToolkenHead(TOOLS, tiny_backbone.hidden_size, seed=1)
    c16 = build_feature_cache(tiny_backbone, encoded, cache_root, dtype="float16", progress=False).tensors()
    full = _full_loss(tiny_backbone, encoded, head)
    fact = factorized_toolken_loss(head(c16["h"].float()), c16["logsumexp"], c16["gold_logit"], c16["tool_label"].long())
    assert torch.allclose(fact, full, atol=1e-2)


def test_loss_rewards_the_gold_toolken():
    a = torch.tensor([0.0, 0.0])
    g = torch.tensor([0.0, 0.0])
    label = torch.tensor([1, -1])
    low = factorized_toolken_loss(torch.tensor([[0.0, 5.0], [-5.0, -5.0]]), a, g, label)
    high = factorized_toolken_loss(torch.tensor([[5.0, 0.0], [5.0, 5.0]]), a, g, label)
    assert low < high

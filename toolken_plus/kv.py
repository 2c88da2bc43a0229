"""KV-cache plumbing shared by the agent, the reranker and their trainers.

A "row" is one sequence's KV cache as per-layer (keys, values) tensors of
batch 1, plus its length n. `prefill_rows` extends many rows by different new
token sequences in ONE padded forward, which is how every piece of this
project reuses a prefix instead of recomputing it: the agent's few-shot
prompt, the reranker's current text, MetaTool's shared instruction.
"""

from __future__ import annotations

import torch

from .backbone import Backbone, cache_layers


@torch.no_grad()
def prefix_row(backbone: Backbone, ids: list[int]) -> tuple[list[tuple], int]:
    """The KV row of a token sequence, computed from scratch (an empty
    sequence gives an empty row, e.g. a prompt without few-shot demos)."""
    if not ids:
        c = backbone.model.config
        kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        dtype = next(backbone.model.parameters()).dtype
        empty = torch.zeros(1, kv_heads, 0, head_dim, dtype=dtype)
        return [(empty, empty.clone()) for _ in range(c.num_hidden_layers)], 0
    _, cache = backbone.final_hidden(torch.tensor([ids]), use_cache=True)
    return [(k.clone(), v.clone()) for k, v in cache_layers(cache)], len(ids)


def crop_row(layers: list[tuple], n: int) -> list[tuple]:
    """The first n positions of a row (views, no copy)."""
    return [(k[:, :, :n], v[:, :, :n]) for k, v in layers]


@torch.no_grad()
def prefill_rows(backbone: Backbone, jobs: list[tuple], *, keep_rows: bool = True) -> list[tuple]:
    """Extend several batch-1 KV rows at once: jobs of (layers, n, new_ids) →
    (layers, n + len(new_ids), last hidden) each, from one padded forward.

    Row i is laid out as [pad | its n cached | pad | its new ids], so every
    row's last position is its last new token; padding is masked and
    positions are given explicitly, so the result equals a separate forward
    per row (and a fresh forward of the whole sequence). With
    keep_rows=False the extended rows are not assembled (layers is None):
    callers that need only the last hidden state skip that copy."""
    pad_id = backbone.tokenizer.pad_token_id
    P = max(n for _, n, _ in jobs)
    S = max(len(ids) for _, _, ids in jobs)
    R = len(jobs)
    ref = jobs[0][0]
    layers = [(k.new_zeros((R, k.shape[1], P, k.shape[3])), v.new_zeros((R, v.shape[1], P, v.shape[3]))) for k, v in ref]
    mask = torch.zeros(R, P + S, dtype=torch.long)
    ids = torch.full((R, S), pad_id, dtype=torch.long)
    pos = torch.zeros(R, S, dtype=torch.long)
    for i, (base, n, new) in enumerate(jobs):
        if not new:
            raise ValueError("prefill_rows: every job needs at least one new token")
        for (k, v), (bk, bv) in zip(layers, base):
            k[i, :, P - n :] = bk[0, :, :n]
            v[i, :, P - n :] = bv[0, :, :n]
        mask[i, P - n : P] = 1
        mask[i, P + S - len(new) :] = 1
        ids[i, S - len(new) :] = torch.tensor(new)
        pos[i, S - len(new) :] = torch.arange(n, n + len(new))
    hidden, cache = backbone.step(ids, mask, pos, backbone.make_cache(layers))
    out = []
    grown = cache_layers(cache) if keep_rows else None
    for i, (_, n, new) in enumerate(jobs):
        row_layers = None
        if keep_rows:
            row_layers = [(torch.cat([k[i : i + 1, :, P - n : P], k[i : i + 1, :, P + S - len(new) :]], 2),
                           torch.cat([v[i : i + 1, :, P - n : P], v[i : i + 1, :, P + S - len(new) :]], 2))
                          for k, v in grown]
        out.append((row_layers, n + len(new), hidden[i, -1]))
    return out


def prefill_in_batches(backbone: Backbone, jobs: list[tuple], max_tokens: int = 2048, *, keep_rows: bool = False) -> list[tuple]:
    """`prefill_rows` over many jobs, in batches of about `max_tokens` padded
    (cached + new) positions, preserving order."""
    out, start = [], 0
    while start < len(jobs):
        end, widest = start, 0
        while end < len(jobs):
            n, new = jobs[end][1], len(jobs[end][2])
            w = max(widest, n + new)
            if end > start and w * (end - start + 1) > max_tokens:
                break
            widest, end = w, end + 1
        out += prefill_rows(backbone, jobs[start:end], keep_rows=keep_rows)
        start = end
    return out


def prefill_by_length(backbone: Backbone, jobs: list[tuple], slack: float = 1.3) -> list[tuple]:
    """`prefill_rows` in groups of similar new-token length, preserving order:
    one forward pads every job to its longest, so a 3-token job batched with
    a 150-token one would cost 150. A job joins the current group while its
    length is at most `slack` × the group's shortest (+ 8)."""
    order = sorted(range(len(jobs)), key=lambda i: len(jobs[i][2]))
    out: list[tuple | None] = [None] * len(jobs)
    groups: list[list[int]] = []
    for i in order:
        if groups and len(jobs[i][2]) <= slack * len(jobs[groups[-1][0]][2]) + 8:
            groups[-1].append(i)
        else:
            groups.append([i])
    for group in groups:
        for i, res in zip(group, prefill_rows(backbone, [jobs[i] for i in group])):
            out[i] = res
    return out

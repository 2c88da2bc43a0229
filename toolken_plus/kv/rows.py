"""KV-cache plumbing shared by the agent, the reranker and their trainers.

A "row" is one sequence's KV cache as per-layer (keys, values) tensors of
batch 1, plus its length n. `prefill_rows` extends many rows by different new
token sequences in ONE padded forward, which is how every piece of this
project reuses a prefix instead of recomputing it: the agent's few-shot
prompt, the reranker's current text, MetaTool's shared instruction. A job
may also name a `Prefix` its row sits on: that prefix's KV is then shared by
all rows on it instead of copied into each (shared_prefix.py).
"""

from __future__ import annotations

import torch

from toolken_plus.backbone import Backbone, cache_layers
from toolken_plus.kv.shared_prefix import Prefix, SharedPrefix, share_prefixes, step


def empty_row(backbone: Backbone) -> list[tuple]:
    """Per-layer (keys, values) of length 0, shaped like the backbone's KV."""
    c = backbone.model.config
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    dtype = next(backbone.model.parameters()).dtype
    empty = torch.zeros(1, kv_heads, 0, head_dim, dtype=dtype, device=backbone.device)
    return [(empty, empty.clone()) for _ in range(c.num_hidden_layers)]


@torch.no_grad()
def prefix_row(backbone: Backbone, ids: list[int]) -> tuple[list[tuple], int]:
    """The KV row of a token sequence, computed from scratch (an empty
    sequence gives an empty row, e.g. a prompt without few-shot demos)."""
    if not ids:
        return empty_row(backbone), 0
    _, cache = backbone.final_hidden(torch.tensor([ids]), use_cache=True)
    return [(k.clone(), v.clone()) for k, v in cache_layers(cache)], len(ids)


def make_prefix(backbone: Backbone, ids: list[int]) -> Prefix | None:
    """A prompt prefix's KV, to be shared by the rows that start with it
    (None for an empty prompt: there is nothing to share)."""
    return Prefix(*prefix_row(backbone, ids)) if ids else None


def row_segments(layers, n: int, prefix: Prefix | None, shared: bool) -> list[tuple]:
    """What a row's slot in a padded KV tensor holds, as (layers, length)
    pieces: its own n positions, after a copy of its prefix when the prefix
    is not shared (`share_prefixes` said no)."""
    segments = [(layers, n)] if n else []
    if prefix is not None and not shared:
        segments.insert(0, (prefix.layers, prefix.n))
    return segments


def write_segments(padded: list[tuple], i: int, end: int, segments: list[tuple]) -> None:
    """Copy a row's segments into slot i of per-layer [rows, heads, T, dim]
    tensors, so that they end at position `end` (right-aligned)."""
    at = end - sum(m for _, m in segments)
    for base, m in segments:
        for (k, v), (bk, bv) in zip(padded, base):
            k[i, :, at : at + m] = bk[0, :, :m]
            v[i, :, at : at + m] = bv[0, :, :m]
        at += m


def crop_row(layers: list[tuple], n: int) -> list[tuple]:
    """The first n positions of a row (views, no copy)."""
    return [(k[:, :, :n], v[:, :, :n]) for k, v in layers]


@torch.no_grad()
def prefill_rows(backbone: Backbone, jobs: list[tuple], *, keep_rows: bool = True) -> list[tuple]:
    """Extend several batch-1 KV rows at once: jobs of (layers, n, new_ids)
    or (layers, n, new_ids, prefix) → (layers, n + len(new_ids), last hidden)
    each, from one padded forward.

    With a `Prefix`, the job's row (layers, n) is what follows that shared
    prefix (layers may be None when n is 0), and so is the returned row: the
    prefix's KV is read in place, never copied per row (shared_prefix.py).
    Row i is laid out as [pad | its n cached | pad | its new ids], so every
    row's last position is its last new token; padding is masked and
    positions are given explicitly, so the result equals a separate forward
    per row (and a fresh forward of the whole sequence). With
    keep_rows=False the extended rows are not assembled (layers is None):
    callers that need only the last hidden state skip that copy."""
    pad_id = backbone.tokenizer.pad_token_id
    prefixes = [job[3] if len(job) > 3 else None for job in jobs]
    shared = any(prefixes) and share_prefixes(backbone, len(jobs))
    segments = [row_segments(layers, n, prefix, shared) for (layers, n, *_), prefix in zip(jobs, prefixes)]
    P = max(sum(m for _, m in seg) for seg in segments)
    S = max(len(job[2]) for job in jobs)
    R = len(jobs)
    padded = [(k.new_zeros((R, k.shape[1], P, k.shape[3])), v.new_zeros((R, v.shape[1], P, v.shape[3])))
              for k, v in empty_row(backbone)]
    mask = torch.zeros(R, P + S, dtype=torch.long)
    ids = torch.full((R, S), pad_id, dtype=torch.long)
    pos = torch.zeros(R, S, dtype=torch.long)
    for i, ((_, _, new, *_), seg, prefix) in enumerate(zip(jobs, segments, prefixes)):
        if not new:
            raise ValueError("prefill_rows: every job needs at least one new token")
        write_segments(padded, i, P, seg)
        cached = sum(m for _, m in seg)
        start = cached + (prefix.n if shared and prefix is not None else 0)  # the first new token's position
        mask[i, P - cached : P] = 1
        mask[i, P + S - len(new) :] = 1
        ids[i, S - len(new) :] = torch.tensor(new)
        pos[i, S - len(new) :] = torch.arange(start, start + len(new))
    sp = SharedPrefix(prefixes, mask) if shared else None
    hidden, cache = step(backbone, ids, mask, pos, backbone.make_cache(padded), shared_prefix=sp)
    out = []
    grown = cache_layers(cache) if keep_rows else None
    for i, (_, n, new, *_) in enumerate(jobs):
        row_layers = None
        if keep_rows:  # the row after its prefix: its cached suffix and the new tokens
            row_layers = [(torch.cat([k[i : i + 1, :, P - n : P], k[i : i + 1, :, P + S - len(new) :]], 2),
                           torch.cat([v[i : i + 1, :, P - n : P], v[i : i + 1, :, P + S - len(new) :]], 2))
                          for k, v in grown]
        out.append((row_layers, n + len(new), hidden[i, -1]))
    return out


def prefill_in_batches(backbone: Backbone, jobs: list[tuple], max_tokens: int = 2048, *, keep_rows: bool = False) -> list[tuple]:
    """`prefill_rows` over many jobs, in batches of about `max_tokens` padded
    (cached + new) positions, preserving order."""
    out = []
    for start, end in padded_batches([job[1] + len(job[2]) for job in jobs], max_tokens):
        out += prefill_rows(backbone, jobs[start:end], keep_rows=keep_rows)
    return out


def padded_batches(widths: list[int], max_tokens: int | None, max_rows: int | None = None) -> list[tuple[int, int]]:
    """Consecutive (start, end) slices of rows of these widths such that a
    slice padded to its widest row holds at most `max_tokens` positions
    (None: no limit) and at most `max_rows` rows; a row wider than
    `max_tokens` is a slice of its own. (In width order, one overlong row then costs its own length, not
    its length times the batch.)"""
    out, start = [], 0
    while start < len(widths):
        end, widest = start, 0
        while end < len(widths) and (max_rows is None or end - start < max_rows):
            w = max(widest, widths[end])
            if end > start and max_tokens is not None and w * (end - start + 1) > max_tokens:
                break
            widest, end = w, end + 1
        out.append((start, end))
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

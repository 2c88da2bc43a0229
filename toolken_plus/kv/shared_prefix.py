"""Attention over a prompt prefix that many rows of a batch share.

The agent's rows all start with one of a few few-shot prompts (the reasoning
prompt, or a tool's demos: ~500-700 tokens each), followed by their own
question and text (~100-300 tokens). Holding every row's full KV cache makes
each decode step read the same prefix keys once per row, and every context
switch copied a prefix into the row. Here the batch cache holds only each
row's *suffix*; every attention layer attends the queries of all rows on one
prefix to that prefix's keys in one call, each row to its own suffix keys,
and merges the two by their log-sum-exp. The result equals attention over
the concatenated row (tests/test_shared_prefix.py).

Plumbing: transformers passes extra keyword arguments of the decoder's
forward down to the attention function, so `step(backbone, ...,
shared_prefix=SharedPrefix(...))` below reaches `_attention`, which is
switched in for that call only (`attention_switched_to_shared`). Position ids are
the caller's: a suffix token at suffix index j of a row on a prefix of length
P sits at position P + j, exactly where it would in the full row.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import weakref
from dataclasses import dataclass, field

import torch

from toolken_plus.backbone import cache_layers

log = logging.getLogger(__name__)

ATTENTION_NAME = "toolken_shared_prefix"


@dataclass(eq=False)
class Prefix:
    """The KV row of a shared prompt prefix: per-layer (keys, values)
    [1, kv_heads, n, head_dim] and its length n. Rows are grouped by object
    identity, so make one per distinct text and reuse it."""

    layers: list[tuple]
    n: int


@dataclass(eq=False)
class SharedPrefix:
    """One forward's view of the prefixes its rows sit on.

    prefixes[i] is row i's Prefix (None: the row has no shared prefix; its
    whole context is in the suffix cache). suffix_mask [rows, cached + new]
    marks which suffix keys are real (1) or padding (0), over the cached
    suffix and the new tokens of this forward, left to right."""

    prefixes: list[Prefix | None]
    suffix_mask: torch.Tensor
    _groups: list | None = field(default=None, repr=False)
    _bias: torch.Tensor | None = field(default=None, repr=False)

    def groups(self) -> list[tuple[Prefix | None, slice | torch.Tensor]]:
        """(prefix, rows on it) pairs; rows as a slice when contiguous (no gather)."""
        if self._groups is None:
            by_id: dict[int, tuple[Prefix | None, list[int]]] = {}
            for i, p in enumerate(self.prefixes):
                p = p if p is not None and p.n else None
                by_id.setdefault(id(p), (p, []))[1].append(i)
            self._groups = []
            for p, rows in by_id.values():
                contiguous = rows == list(range(rows[0], rows[0] + len(rows)))
                self._groups.append((p, slice(rows[0], rows[-1] + 1) if contiguous else torch.tensor(rows)))
        return self._groups

    def bias(self, q_len: int, heads_per_kv: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask [rows, 1, heads_per_kv * q_len, keys] over the suffix
        keys (query rows ordered as in `_attention`): padding hidden, and new
        token i sees the cached suffix and new tokens ≤ i. Built once per
        forward (every layer uses the same). A large finite negative instead
        of -inf, so a padding query that sees nothing gives finite garbage
        rather than NaN."""
        if self._bias is None or self._bias.shape[2] != heads_per_kv * q_len:
            keys = self.suffix_mask.shape[1]
            cached = keys - q_len
            device = self.suffix_mask.device
            causal = torch.ones(q_len, keys, dtype=torch.bool, device=device).tril(cached)
            visible = self.suffix_mask.bool()[:, None, None, :] & causal
            bias = torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill_(~visible, torch.finfo(dtype).min)
            self._bias = bias.repeat(1, 1, heads_per_kv, 1) if q_len > 1 else bias
        return self._bias


def _attention(module, query, key, value, attention_mask, *, shared_prefix: SharedPrefix, dropout: float = 0.0,
               scaling: float | None = None, **kwargs):
    """transformers attention function for forwards that carry a
    SharedPrefix (`attention_mask` is None there: SharedPrefix has the mask).

    query [B, heads, q, d]; key/value [B, kv_heads, suffix keys, d] (the
    cache's suffix plus this forward's new tokens). Returns [B, q, heads, d]."""
    B, H, q, d = query.shape
    kvh = key.shape[1]
    g = H // kvh
    scale = scaling if scaling is not None else d**-0.5
    # Query head h reads kv head h // g: the g heads of a kv head (and their
    # q positions) become rows of one query matrix, so no key is repeated.
    qp = query.reshape(B, kvh, g * q, d)
    bias = shared_prefix.bias(q, g, query.dtype)
    # Two softmax attentions, each with its log-sum-exp, merged exactly:
    # every row over its own keys (one call for the batch), and each
    # prefix's rows together over that prefix's keys (one call per prefix).
    out, lse = _flash_attention(qp, key, value, attn_mask=bias, scale=scale)  # [B, kvh, g*q, d], [B, kvh, g*q]
    for prefix, rows in shared_prefix.groups():
        if prefix is None:
            continue
        pk, pv = prefix.layers[module.layer_idx]
        qg = qp[rows]
        b = qg.shape[0]
        o_pre, lse_pre = _flash_attention(qg.transpose(0, 1).reshape(1, kvh, b * g * q, d), pk, pv, scale=scale)
        o_pre = o_pre.view(kvh, b, g * q, d).transpose(0, 1)
        lse_pre = lse_pre.view(kvh, b, g * q).transpose(0, 1)
        lse_own = lse[rows]
        top = torch.maximum(lse_own, lse_pre)
        w_own = (lse_own - top).exp_().unsqueeze(-1)
        w_pre = (lse_pre - top).exp_().unsqueeze(-1)
        out[rows] = (out[rows] * w_own + o_pre * w_pre) / (w_own + w_pre)
    return out.view(B, H, q, d).transpose(1, 2).contiguous(), None


def _flash_attention(query, key, value, attn_mask=None, scale=None):
    """Softmax attention and its log-sum-exp per query: PyTorch's fused CPU
    kernel (the one F.scaled_dot_product_attention runs), called directly
    because the public function does not return the log-sum-exp."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, attn_mask=attn_mask, scale=scale)


@functools.cache
def _register() -> str:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, _attention)
    return ATTENTION_NAME


@contextlib.contextmanager
def attention_switched_to_shared(model):
    """Run `model` with the shared-prefix attention function, then restore its
    own. (No attention-mask function is registered under our name, so
    transformers skips building a 4D mask: SharedPrefix carries the mask.)"""
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = _register()
    try:
        yield
    finally:
        config._attn_implementation = before


def step(backbone, input_ids, attention_mask, position_ids, cache, shared_prefix: SharedPrefix | None = None):
    """`Backbone.step`, with the rows' suffixes attending to their shared
    prefixes when `shared_prefix` is given (it then carries the mask, and
    attention_mask is ignored)."""
    if shared_prefix is None:
        return backbone.step(input_ids, attention_mask, position_ids, cache)
    with attention_switched_to_shared(backbone.model):
        return backbone.step(input_ids, None, position_ids, cache, shared_prefix=shared_prefix)


_SUPPORTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def share_prefixes(backbone, rows: int) -> bool:
    """Whether a forward over `rows` rows should share their prefixes rather
    than copy each into its row: only with more than one row (a single row has
    no one to share with, and plain attention was 7-12% faster at batch 1) and
    where the attention fits."""
    return rows > 1 and supports_shared_prefix(backbone)


def supports_shared_prefix(backbone) -> bool:
    """Whether the backbone's attention can be run as shared-prefix attention:
    its layers attend to the whole context (no sliding window, soft-capping
    or sinks) through transformers' attention interface, checked once per
    model by comparing a tiny shared-prefix forward with a plain one. When
    not, callers copy the prefix into every row, as before."""
    model = backbone.model
    if model not in _SUPPORTED:
        _SUPPORTED[model] = _check(backbone)
    return _SUPPORTED[model]


def _check(backbone) -> bool:
    c = backbone.model.config
    if backbone.device.type != "cpu":  # _flash_attention is PyTorch's CPU kernel
        log.info("shared-prefix attention off for %s: it runs on the CPU only", backbone.name)
        return False
    layer_types = getattr(c, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types) or getattr(c, "attn_logit_softcapping", None) \
            or backbone.sliding_window is not None:
        log.info("shared-prefix attention off for %s: not every layer attends to the full context", backbone.name)
        return False
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, min(backbone.vocab_size, 1000), (1, 8), generator=g)
    try:
        with torch.no_grad():
            full, _ = backbone.final_hidden(ids)
            _, cache = backbone.final_hidden(ids[:, :5], use_cache=True)
            prefix = Prefix([(k.clone(), v.clone()) for k, v in cache_layers(cache)], 5)
            empty = [(k[:, :, :0].clone(), v[:, :, :0].clone()) for k, v in prefix.layers]
            mask = torch.ones(1, 3, dtype=torch.long)
            hidden, _ = step(backbone, ids[:, 5:], None, torch.arange(5, 8)[None], backbone.make_cache(empty),
                             shared_prefix=SharedPrefix([prefix], mask))
    except Exception as err:  # an architecture this attention function does not fit
        log.info("shared-prefix attention off for %s: %s", backbone.name, err)
        return False
    tol = 1e-3 if full.dtype == torch.float32 else 5e-2
    ok = bool(((hidden - full[:, 5:]).abs().max() <= tol * (1 + full.abs().max())).item())
    if not ok:
        log.info("shared-prefix attention off for %s: it does not reproduce the plain forward", backbone.name)
    return ok

"""The frozen causal LM as the toolken method sees it: final hidden states
(exactly the input of lm_head), the vocabulary head, the tokenizer, KV-cache
objects, and linear layers tuned for the few-row products of batched decoding.
How a Backbone is loaded is `loading.py`."""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Backbone:
    """A frozen causal LM plus its tokenizer.

    `name` and `revision` identify the weights; they are written into every
    checkpoint and into feature-cache keys, so a cache built with one backbone
    is never read with another.
    """

    model: nn.Module
    tokenizer: object
    name: str
    revision: str

    def with_dtype(self, dtype: torch.dtype | None) -> "Backbone":
        """This backbone with its weights in `dtype`: itself when that is
        already their dtype (or dtype is None), else a copy of the model cast
        to it (the same tokenizer; the copy costs the model's size in that
        dtype). For passes that must be cheap more than exact, such as the
        llm reranker's doc-block pass."""
        if dtype is None or dtype == next(self.model.parameters()).dtype:
            return self
        return dataclasses.replace(self, model=copy.deepcopy(self.model).to(dtype))

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the input embeddings (with a
        device_map, the first layer's; otherwise the whole model's)."""
        return self.model.get_input_embeddings().weight.device

    @property
    def output_device(self) -> torch.device:
        """Where the final hidden states come out, and the lm_head (and so the
        toolken head) lives: the same as `device` unless a device_map spreads the model."""
        return self.lm_head.weight.device

    @property
    def lm_head(self) -> nn.Linear:
        return self.model.get_output_embeddings()

    @property
    def vocab_size(self) -> int:
        return self.lm_head.weight.shape[0]

    def final_hidden(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False):
        """Hidden states after the final norm (exactly the input of lm_head).

        Runs the decoder body only: the |V|-wide head is left to the caller,
        which usually needs just a few reductions of it (see `cache.py`).
        """
        return self._body(input_ids, attention_mask, None, past_key_values, use_cache)

    def step(self, input_ids, attention_mask, position_ids, cache, **attention_kwargs):
        """Extend a (left-padded) batch by `input_ids` with explicit positions:
        hidden states and the grown cache. `attention_kwargs` reach the
        attention function (kv.shared_prefix passes its SharedPrefix so)."""
        return self._body(input_ids, attention_mask, position_ids, cache, True, **attention_kwargs)

    @functools.cached_property
    def sliding_window(self) -> int | None:
        """The attention window of the model's sliding-window layers (Gemma 2/3,
        Mistral, ...), None when every layer attends to the whole context."""
        return sliding_window_of(self.model.config)

    def _body(self, input_ids, attention_mask, position_ids, cache, use_cache, **attention_kwargs):
        body = self.model.get_decoder()
        # Ids, masks and positions made by our code (on the CPU) follow the model.
        device = self.device
        input_ids = input_ids.to(device)
        if isinstance(attention_mask, torch.Tensor):
            attention_mask = attention_mask.to(device)
        if position_ids is not None:
            position_ids = position_ids.to(device)
        kwargs = dict(attention_kwargs)
        window = self.sliding_window
        if window is not None and "shared_prefix" not in kwargs and not isinstance(attention_mask, dict):
            # Sliding-window layers: our caches keep every position in every
            # layer (see `make_cache`), and the window is enforced by masks
            # built here from the rows' own positions (padding and gaps in a
            # row's columns would fool a mask built from column indices).
            if use_cache and cache is None:
                cache = _full_length_cache()
            past = cache.get_seq_length() if cache is not None else 0
            attention_mask = window_masks(self.model.config, window, attention_mask, position_ids, past,
                                          input_ids.shape[1], self.model.dtype)
        if cache is not None:
            # transformers 5 renamed the KV-cache argument `past_key_values` → `cache`.
            kwargs[_kv_cache_arg(body)] = cache
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        out = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache, **kwargs)
        # where lm_head (and the toolken head) lives: a no-op unless a device_map put the final norm elsewhere
        hidden = out.last_hidden_state.to(self.output_device)
        return hidden, (_output_cache(out) if use_cache else None)

    def make_cache(self, layers: list[tuple], headroom: int = 0):
        """A KV cache object from per-layer (keys, values) tensors [B, heads, T, dim].

        headroom > 0: the layers are copied into buffers with that many free
        positions, and each step writes its new keys there instead of
        concatenating (a decode step then copies one column, not the whole
        cache). Without it the tensors are adopted as they are."""
        from transformers.cache_utils import DynamicCache

        if self.sliding_window is not None:
            # Every layer keeps every position, sliding-window layers too: rows
            # are cut, padded and stitched by position (kv/rows.py), which a
            # layer holding only its last `window` keys cannot be; `_body`
            # masks what the window hides. Costs memory, not results.
            cache = _full_length_cache(len(layers))
        else:
            cache = DynamicCache(config=self.model.config)
        cache_layers_ = getattr(cache, "layers", None)
        if cache_layers_ is None or len(cache_layers_) != len(layers) or not hasattr(cache_layers_[0], "lazy_initialization"):
            config = None if self.sliding_window is not None else self.model.config
            return DynamicCache(ddp_cache_data=layers, config=config)
        appending = _appending_layer_class()
        if headroom > 0 and all(type(layer) is appending.__base__ for layer in cache_layers_):
            # (sliding-window layers, e.g. Gemma 3's, keep their own update)
            cache.layers = [appending(k, v, headroom) for k, v in layers]
            return cache
        # Adopt the tensors as they are: DynamicCache(ddp_cache_data=…) would
        # copy every layer once more (a cat onto an empty tensor).
        for layer, (k, v) in zip(cache_layers_, layers):
            layer.lazy_initialization(k, v)
            layer.keys, layer.values = k, v
        return cache


def _full_length_cache(n_layers: int = 0):
    """A DynamicCache whose layers all keep every position (no sliding-window
    layers, whatever the model's config says)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    cache = DynamicCache()
    if n_layers:
        cache.layers = [DynamicLayer() for _ in range(n_layers)]
    return cache


def sliding_window_of(config) -> int | None:
    """The window of a model's sliding-window attention layers, None when it
    has none: from `layer_types` where the config lists them (Gemma 3's
    hybrid pattern, Qwen2's `use_sliding_window`), else every layer slides
    when `sliding_window` is set (Mistral)."""
    config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    window = getattr(config, "sliding_window", None)
    if not window:
        return None
    types = getattr(config, "layer_types", None)
    if types is not None:
        return int(window) if "sliding_attention" in types else None
    return int(window) if getattr(config, "use_sliding_window", True) else None


def window_masks(config, window: int, attention_mask, position_ids, past: int, new: int, dtype):
    """The 4D additive attention masks [B, 1, new, past + new] of a forward
    over a model with sliding-window layers: {layer type: mask} for configs
    with `layer_types` (transformers then uses them as given), else the
    sliding mask alone.

    Key j is visible to query i when it is real (attention_mask), not after
    it, and, in a sliding layer, less than `window` positions before it (as
    transformers' sliding_window_overlay: kv > q - window). Positions are
    the rows' own: a row's real keys hold consecutive positions, counted back
    from the last column's `position_ids` (only their differences matter, so
    this holds when that column is right padding too); position_ids None:
    column indices, as the model itself assumes. A query always sees itself,
    so a padding query gets finite garbage, not NaN."""
    B, K = (position_ids.shape[0] if position_ids is not None else 1), past + new
    given = attention_mask if attention_mask is not None else position_ids
    device = given.device if given is not None else None
    if attention_mask is not None:
        B = attention_mask.shape[0]
        real = attention_mask.bool()
    else:
        real = torch.ones(B, K, dtype=torch.bool, device=device)
    col = torch.arange(K, device=device)
    if position_ids is None:
        kpos = col.expand(B, K)
    else:
        seen = real.long().cumsum(1)
        kpos = position_ids[:, -1:].expand(B, 1) - (seen[:, -1:] - seen)
    qpos = kpos[:, past:, None]
    itself = (col[None, :] == col[past:, None])[None]
    causal = real[:, None, :] & (kpos[:, None, :] <= qpos) & (col[None, :] <= col[past:, None])[None]
    sliding = (causal & (qpos - kpos[:, None, :] < window)) | itself
    full = causal | itself
    lowest = torch.finfo(dtype).min

    def additive(visible):
        return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(~visible, lowest)[:, None]

    types = getattr(config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config, "layer_types", None)
    if types is None:
        return additive(sliding)
    return {t: additive(sliding if t == "sliding_attention" else full) for t in set(types) | {"full_attention", "sliding_attention"}}


@functools.cache
def _appending_layer_class():
    """transformers' DynamicLayer with an `update` that appends into
    preallocated room (one copy into a new buffer every `headroom` steps).
    `keys`/`values` stay views of the filled part, so whatever reads or writes
    them in place works unchanged. Built on first use: transformers is
    imported lazily."""
    from transformers.cache_utils import DynamicLayer

    class AppendingLayer(DynamicLayer):
        def __init__(self, keys, values, headroom: int):
            super().__init__()
            self.headroom = headroom
            self._adopt(keys, values, headroom)

        def _adopt(self, keys, values, room: int) -> None:
            b, h, n, d = keys.shape
            self._k = keys.new_empty((b, h, n + room, d))
            self._v = values.new_empty((b, h, n + room, d))
            self._k[:, :, :n] = keys
            self._v[:, :, :n] = values
            self.device, self.is_initialized = keys.device, True
            self._fill(n)

        def _fill(self, n: int) -> None:
            self.n = n
            self.keys, self.values = self._k[:, :, :n], self._v[:, :, :n]

        def update(self, key_states, value_states, *args, **kwargs):
            q = key_states.shape[-2]
            if self.n + q > self._k.shape[-2]:
                self._adopt(self.keys, self.values, max(self.headroom, q))
            self._k[:, :, self.n : self.n + q] = key_states
            self._v[:, :, self.n : self.n + q] = value_states
            self._fill(self.n + q)
            return self.keys, self.values

    return AppendingLayer


def cache_layers(cache) -> list[tuple]:
    """Per-layer (keys, values) tensors of a KV cache (transformers 4.5x and 5.x)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return [(cache.key_cache[i], cache.value_cache[i]) for i in range(len(cache.key_cache))]


def _output_cache(out):
    # transformers 5 calls the returned KV cache `cache`; 4.x `past_key_values`.
    return out["cache"] if "cache" in out else out["past_key_values"]


def _kv_cache_arg(module: nn.Module) -> str:
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def freeze(model: nn.Module) -> nn.Module:
    """The backbone is never trained: no grads, eval mode (no dropout), and
    its linear layers switched to the matmul that is faster for a few rows."""
    for p in model.parameters():
        p.requires_grad_(False)
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = FewRowsLinear  # same parameters and state dict
    return model.eval()


def times_transposed(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T for a few rows of x, computed as (weight @ x.T).T.

    Same product; on this CPU (AVX2, 2 threads) PyTorch runs the second form
    1.5-2.8x faster for 4-16 rows against the vocabulary head, and as fast for one
    row (bench/agent_profile.py, part 3)."""
    return (weight @ x.T).T


class FewRowsLinear(nn.Linear):
    """nn.Linear that multiplies 2-64 rows (a batched decode step) by
    `times_transposed`; one row and many rows (prefill, feature caching) keep
    F.linear, which is as fast there."""

    MAX_ROWS = 64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if not 2 <= rows <= self.MAX_ROWS:
            return super().forward(x)
        # contiguous: the transposed view slows every op that reads it next
        out = times_transposed(x.reshape(rows, x.shape[-1]), self.weight).contiguous()
        if self.bias is not None:
            out += self.bias
        return out.view(*x.shape[:-1], out.shape[-1])

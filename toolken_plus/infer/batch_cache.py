"""The KV cache of a batch of rows decoding different contexts: what lets one
forward step decode a token for every row, whatever its mode."""

from __future__ import annotations

import torch

from toolken_plus.backbone import Backbone, cache_layers
from toolken_plus.kv import Prefix, SharedPrefix, empty_row, row_segments, share_prefixes, step, write_segments


class BatchCache:
    """Left-padded KV cache of a batch of rows with different contexts.

    Row i's context is a shared prompt prefix `prefixes[i]` (a kv.Prefix or
    None) followed by its own tokens. The cache holds only the latter: row
    i's are the last `lengths[i]` positions, `mask` marks them, and its
    positions start at `offsets[i]` (the prefix's length); attention reads
    each prefix's KV in place for all rows on it. On a backbone where that
    attention does not apply (`shared` False) the prefix is copied into the
    row instead (`skip[i]` of its positions); so it is at batch 1 too, where
    there is nothing to share and plain attention is faster. Replacing a
    row's context writes into its slot; the cache grows to the left only when
    a new context is longer than the current width."""

    HEADROOM = 64

    def __init__(self, backbone: Backbone, batch: int, max_batch: int | None = None):
        """`max_batch`: the most rows it will hold (it may `grow` to it); it
        decides whether prefixes are shared. Default: `batch`."""
        self.backbone = backbone
        self.batch = batch
        self.shared = share_prefixes(backbone, max(batch, max_batch or 0))
        self._set_layers([(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in empty_row(backbone)])
        self.mask = torch.zeros(batch, 0, dtype=torch.long)
        self.lengths = torch.zeros(batch, dtype=torch.long)
        self.prefixes: list[Prefix | None] = [None] * batch
        self.offsets = torch.zeros(batch, dtype=torch.long)
        self.skip = torch.zeros(batch, dtype=torch.long)

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    def _layers(self):
        return cache_layers(self.cache)

    def _set_layers(self, layers) -> None:
        # Room to append: a decode step writes its column in place instead of
        # concatenating the whole batch cache (a copy of every row, per step).
        self.cache = self.backbone.make_cache(layers, headroom=self.HEADROOM)

    def set_row(self, i: int, layers, n: int, prefix: Prefix | None = None) -> None:
        """Row i's context becomes `prefix` followed by (layers, n)."""
        segments = row_segments(layers, n, prefix, self.shared)
        self.prefixes[i] = prefix
        prefix_n = prefix.n if prefix is not None else 0
        self.offsets[i], self.skip[i] = (prefix_n, 0) if self.shared else (0, prefix_n)
        total = sum(m for _, m in segments)
        if total > self.width:
            grow = total - self.width
            padded = [(torch.cat([k.new_zeros((*k.shape[:2], grow, k.shape[3])), k], 2),
                       torch.cat([v.new_zeros((*v.shape[:2], grow, v.shape[3])), v], 2)) for k, v in self._layers()]
            self._set_layers(padded)
            self.mask = torch.cat([torch.zeros(self.batch, grow, dtype=torch.long), self.mask], 1)
        write_segments(self._layers(), i, self.width, segments)
        self.mask[i] = 0
        self.mask[i, self.width - total :] = 1
        self.lengths[i] = total

    def get_row(self, i: int):
        """A copy of row i's KV after its prefix, and its length."""
        n, skip = int(self.lengths[i]), int(self.skip[i])
        start = self.width - n + skip
        return [(k[i : i + 1, :, start:].clone(), v[i : i + 1, :, start:].clone()) for k, v in self._layers()], n - skip

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = torch.cat([self.mask, torch.ones(self.batch, 1, dtype=torch.long)], 1)
        shared = SharedPrefix(self.prefixes, mask) if self.shared and any(self.prefixes) else None
        positions = (self.offsets + self.lengths)[:, None]
        hidden, self.cache = step(self.backbone, tokens[:, None], mask, positions, self.cache, shared_prefix=shared)
        self.mask = mask
        self.lengths += 1
        return hidden[:, -1]

    def release(self, i: int) -> None:
        """Row i holds nothing any more (its question finished, none is left)."""
        self.mask[i] = 0
        self.lengths[i] = self.offsets[i] = self.skip[i] = 0
        self.prefixes[i] = None

    def grow(self, n: int) -> None:
        """Add n empty rows at the end (questions arriving during a run)."""
        self._set_layers([(torch.cat([k, k.new_zeros((n, *k.shape[1:]))]), torch.cat([v, v.new_zeros((n, *v.shape[1:]))]))
                          for k, v in self._layers()])
        self.mask = torch.cat([self.mask, self.mask.new_zeros((n, self.width))])
        self.lengths, self.offsets, self.skip = (torch.cat([t, t.new_zeros(n)]) for t in (self.lengths, self.offsets, self.skip))
        self.prefixes += [None] * n
        self.batch += n

    def trim(self, slack: int = 64) -> None:
        """Drop leading columns no row uses any more. Every step adds a
        column for all rows, while a row that switches context is rewritten
        right-aligned; without trimming the width would grow with the run."""
        first = int((self.width - self.lengths).min())
        if first >= slack:
            self._set_layers([(k[:, :, first:], v[:, :, first:]) for k, v in self._layers()])
            self.mask = self.mask[:, first:]

    def keep(self, rows: list[int]) -> None:
        """Drop the other rows (at the tail of a run, to stop computing them)."""
        idx = torch.tensor(rows, dtype=torch.long)
        # (the KV layers live on the backbone's device, the bookkeeping below on the CPU)
        self._set_layers([(k.index_select(0, idx.to(k.device)), v.index_select(0, idx.to(v.device)))
                          for k, v in self._layers()])
        self.mask = self.mask.index_select(0, idx)
        self.lengths = self.lengths.index_select(0, idx)
        self.offsets = self.offsets.index_select(0, idx)
        self.skip = self.skip.index_select(0, idx)
        self.prefixes = [self.prefixes[r] for r in rows]
        self.batch = len(rows)
        self.trim(slack=1)  # columns only the dropped rows used

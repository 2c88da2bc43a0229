"""The feature cache: one no-grad pass of the frozen backbone over the data.

Because the LM is frozen, the ToolkenGPT loss needs only, per position,
  h  the final hidden state (input of lm_head),
  a  logsumexp of the vocabulary logits,
  g  the vocabulary logit of the gold next token,
  m  the largest vocabulary logit (for "does a toolken win the argmax"),
and the position's label. We store exactly that (h in fp16, memory-mapped),
so training epochs never touch the backbone or the |V|-wide head.

The cache lives in a folder named by a hash of the backbone identity and the
encoded data (token ids + labels, so prompt format and tokenizer are covered
too); a rerun finds it and skips the pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import toolken_plus.distributed as distributed
from toolken_plus.backbone import Backbone
from toolken_plus.data.encoding import IGNORE, Encoded, encodings_digest
from toolken_plus.kv.rows import prefix_row
from toolken_plus.rundir import make_temp_dir, remove_stale_temps

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
_ARRAYS = ("h", "logsumexp", "gold_logit", "max_logit", "tool_label", "example_index")


@dataclass
class FeatureCache:
    path: Path
    h: np.ndarray  # (N, d) fp16 or fp32, memory-mapped
    logsumexp: np.ndarray  # (N,) fp32
    gold_logit: np.ndarray  # (N,) fp32
    max_logit: np.ndarray  # (N,) fp32
    tool_label: np.ndarray  # (N,) int16: -1 vocabulary target, k >= 0 toolken k
    example_index: np.ndarray  # (N,) int32, which example each position comes from
    meta: dict

    def __len__(self) -> int:
        return len(self.tool_label)

    @property
    def n_examples(self) -> int:
        return int(self.meta["n_examples"])

    @classmethod
    def open(cls, path: Path) -> "FeatureCache":
        arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
        meta = json.loads((path / "meta.json").read_text())
        return cls(path=path, meta=meta, **arrays)

    def tensors(self, device="cpu") -> dict[str, torch.Tensor]:
        """Everything in RAM as tensors (h stays in its storage dtype)."""
        return {name: torch.from_numpy(np.array(getattr(self, name))).to(device) for name in _ARRAYS}


class _RowWriter:
    """Writes rows of a 2-D .npy file at given offsets without mapping it."""

    def __init__(self, path: Path, dtype, shape: tuple[int, int]):
        header = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)  # header + sized file
        self.offset = header.offset
        del header
        self.row_bytes = shape[1] * np.dtype(dtype).itemsize
        self.f = open(path, "r+b")

    def write_rows(self, first_row: int, rows: np.ndarray) -> None:
        os.pwrite(self.f.fileno(), np.ascontiguousarray(rows).tobytes(), self.offset + first_row * self.row_bytes)

    def close(self) -> None:
        self.f.close()


def cache_key(backbone: Backbone, encoded: list[Encoded], dtype: str, data_digest: str | None = None) -> str:
    h = hashlib.sha256()
    parts = [CACHE_FORMAT, backbone.name, backbone.revision, dtype]
    model_dtype = getattr(getattr(backbone, "model", None), "dtype", torch.float32)
    if model_dtype != torch.float32:  # features of a bfloat16/float16 backbone (dtype=…) are other features
        parts.append(str(model_dtype))
    h.update(json.dumps(parts).encode())
    h.update((data_digest or encodings_digest(encoded)).encode())
    return h.hexdigest()[:20]


def length_batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Group example indices, sorted by length, into batches of at most
    `max_tokens` padded tokens: sorting keeps padding (wasted compute) small."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, cur, cur_max = [], [], 0
    for i in order:
        new_max = max(cur_max, lengths[i])
        if cur and new_max * (len(cur) + 1) > max_tokens:
            batches.append(cur)
            cur, new_max = [], lengths[i]
        cur.append(i)
        cur_max = new_max
    if cur:
        batches.append(cur)
    return batches


@torch.no_grad()
def head_reductions(hidden: torch.Tensor, lm_head_weight: torch.Tensor, gold: torch.Tensor, chunk: int = 512):
    """(logsumexp, gold logit, max logit) of `hidden @ W_V.T`, in chunks of
    positions so the |V|-wide logits never exist for a whole batch at once."""
    out_a, out_g, out_m = [], [], []
    for s in range(0, hidden.shape[0], chunk):
        logits = hidden[s : s + chunk] @ lm_head_weight.T
        out_a.append(torch.logsumexp(logits, dim=-1))
        out_m.append(logits.max(dim=-1).values)
        out_g.append(logits.gather(1, gold[s : s + chunk, None].clamp_min(0)).squeeze(1))
    return torch.cat(out_a), torch.cat(out_g), torch.cat(out_m)


@torch.no_grad()
def _forward_after_prefix(backbone: Backbone, prefix, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hidden states of right-padded `ids` continuing a shared prefix row."""
    layers, n = prefix
    B, L = ids.shape
    shared = [(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in layers]
    full_mask = torch.cat([torch.ones(B, n, dtype=mask.dtype), mask], 1)
    pos = torch.arange(n, n + L).expand(B, L)
    hidden, _ = backbone.step(ids, full_mask, pos, backbone.make_cache(shared))
    return hidden


def build_feature_cache(
    backbone: Backbone,
    encoded: list[Encoded],
    cache_root: str | Path,
    *,
    dtype: str = "float16",
    max_tokens_per_batch: int = 1024,
    progress: bool = True,
    desc: str = "feature cache",
    prefix_ids: list[int] | None = None,
) -> FeatureCache:
    """Build (or find) the cache for these encoded examples.

    With `prefix_ids`, every example is read as the continuation of that
    shared prompt prefix: its KV cache is computed once and reused by every
    batch, so only the examples' own tokens are new compute (MetaTool's
    ~20k queries share one instruction)."""
    data_digest = encodings_digest(encoded)
    if prefix_ids:
        data_digest = hashlib.sha256((data_digest + "|prefix|" + ",".join(map(str, prefix_ids))).encode()).hexdigest()
    key = cache_key(backbone, encoded, dtype, data_digest)
    final = Path(cache_root) / "features" / key
    rank, world_size = distributed.world()
    # Under torchrun every rank takes the same branch: rank 0's view decides.
    if distributed.broadcast((final / "meta.json").is_file()):
        log.info("feature cache hit: %s", final)
        return FeatureCache.open(final)

    keep = [np.flatnonzero(e.tool_label != IGNORE) for e in encoded]
    starts = np.concatenate([[0], np.cumsum([len(k) for k in keep])])
    n, d = int(starts[-1]), backbone.hidden_size
    np_dtype = np.float16 if dtype == "float16" else np.float32
    batches = length_batches([len(e) for e in encoded], max_tokens_per_batch)
    prefix = prefix_row(backbone, list(prefix_ids)) if prefix_ids else None
    t0 = time.perf_counter()

    tmp = None
    if rank == 0:
        remove_stale_temps(final.parent)  # half-built caches of runs that were killed
        tmp = make_temp_dir(final.parent)
    tmp = Path(distributed.broadcast(str(tmp) if tmp else None))
    try:
        if world_size > 1:
            # Each rank forwards every world_size-th batch (the same batches a
            # single process forms, so every row's numbers are the same bits)
            # into shard files in rank 0's temp dir, which rank 0 then merges.
            shard = tmp / "shards" / f"rank{rank}"
            shard.mkdir(parents=True, exist_ok=True)
            with open(shard / "h.bin", "wb") as fh:
                done, n_tokens = [], 0
                for i, h, a, g, m, nt in _batch_features(backbone, encoded, keep, batches[rank::world_size], prefix,
                                                         np_dtype, progress and rank == 0, desc):
                    if i is None:
                        n_tokens += nt
                        continue
                    fh.write(np.ascontiguousarray(h).tobytes())
                    done.append((i, a, g, m))
            np.save(shard / "examples.npy", np.array([i for i, *_ in done], dtype=np.int64))
            for j, name in enumerate(("logsumexp", "gold_logit", "max_logit")):
                vals = [x[j + 1] for x in done]
                np.save(shard / f"{name}.npy", np.concatenate(vals) if vals else np.zeros(0, np.float32))
            (shard / "n_tokens.json").write_text(json.dumps(n_tokens))
            distributed.barrier()  # every shard written
        if rank == 0:
            meta = _write_cache(tmp, encoded, keep, starts, n, d, np_dtype, world_size, backbone, batches, prefix,
                                progress, desc, t0, meta_fields=dict(
                                    key=key, data_digest=data_digest, dtype=dtype, prefix_ids=prefix_ids))
            try:
                tmp.rename(final)
            except OSError:  # built concurrently by another process: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
            log.info("feature cache built: %d positions, %.1f tok/s, %s", n, meta["tokens_per_second"], final)
    except BaseException:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    distributed.barrier()  # the cache is in place: the other ranks read it
    return FeatureCache.open(final)


def _batch_features(backbone: Backbone, encoded: list[Encoded], keep: list[np.ndarray], batches: list[list[int]],
                    prefix, np_dtype, progress: bool, desc: str):
    """The backbone's pass over `batches`: per example with kept positions,
    (example index, h rows in np_dtype, logsumexp, gold logit, max logit, 0);
    after each batch, (None, …, its non-pad token count)."""
    w_vocab = backbone.lm_head.weight.float()  # the reductions run in float32 (a no-op for float32 backbones)
    pad_id = backbone.tokenizer.pad_token_id
    for batch in tqdm(batches, desc=desc, disable=not progress, unit="batch"):
        L = max(len(encoded[i]) for i in batch)
        ids = torch.full((len(batch), L), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), L), dtype=torch.long)
        for r, i in enumerate(batch):
            ids[r, : len(encoded[i])] = torch.from_numpy(encoded[i].input_ids)
            mask[r, : len(encoded[i])] = 1
        with torch.no_grad():
            if prefix is None:
                hidden, _ = backbone.final_hidden(ids, attention_mask=mask)
            else:
                hidden = _forward_after_prefix(backbone, prefix, ids, mask)
        rows = [(r, i) for r, i in enumerate(batch) if len(keep[i])]
        if rows:
            sel_h = torch.cat([hidden[r, torch.from_numpy(keep[i]).to(hidden.device)] for r, i in rows]).float()
            gold = torch.cat([torch.from_numpy(encoded[i].next_token[keep[i]]) for _, i in rows]).to(sel_h.device)
            # (on the backbone's device; what is written goes back to the CPU)
            a, g, m = (t.cpu() for t in head_reductions(sel_h, w_vocab, gold))
            sel_h = sel_h.cpu()
            pos = 0
            for _, i in rows:
                cnt = len(keep[i])
                sl = slice(pos, pos + cnt)
                yield i, sel_h[sl].numpy().astype(np_dtype), a[sl].numpy(), g[sl].numpy(), m[sl].numpy(), 0
                pos += cnt
        yield None, None, None, None, None, int(mask.sum())


def _write_cache(tmp: Path, encoded, keep, starts, n: int, d: int, np_dtype, world_size: int, backbone: Backbone,
                 batches, prefix, progress: bool, desc: str, t0: float, meta_fields: dict) -> dict:
    """Fill `tmp` with the cache's files: from this process's own pass
    (world_size 1) or from the ranks' shards in tmp/shards (then removed)."""
    # h goes straight to disk with positioned writes (not a writable
    # memmap, whose dirty pages would count against the process's RSS);
    # the per-position scalars are small and stay in RAM until the end.
    h_writer = _RowWriter(tmp / "h.npy", np_dtype, (n, d))
    scalars = {name: np.zeros(n, dtype=np.float32) for name in ("logsumexp", "gold_logit", "max_logit")}
    tool_label = np.concatenate([e.tool_label[k] for e, k in zip(encoded, keep)]).astype(np.int16)
    example_index = np.concatenate([np.full(len(k), i, dtype=np.int32) for i, k in enumerate(keep)])
    n_tokens = 0
    if world_size == 1:
        for i, h, a, g, m, nt in _batch_features(backbone, encoded, keep, batches, prefix, np_dtype, progress, desc):
            if i is None:
                n_tokens += nt
                continue
            s, e = starts[i], starts[i + 1]
            h_writer.write_rows(s, h)
            scalars["logsumexp"][s:e], scalars["gold_logit"][s:e], scalars["max_logit"][s:e] = a, g, m
    else:
        for r in range(world_size):
            shard = tmp / "shards" / f"rank{r}"
            examples = np.load(shard / "examples.npy")
            counts = np.array([len(keep[i]) for i in examples], dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum(counts)])
            h_all = np.memmap(shard / "h.bin", dtype=np_dtype, mode="r", shape=(int(offsets[-1]), d)) \
                if offsets[-1] else np.zeros((0, d), np_dtype)
            vals = {name: np.load(shard / f"{name}.npy") for name in scalars}
            for j, i in enumerate(examples):
                s, e, o, p = starts[i], starts[i + 1], offsets[j], offsets[j + 1]
                h_writer.write_rows(s, h_all[o:p])
                for name in scalars:
                    scalars[name][s:e] = vals[name][o:p]
            n_tokens += json.loads((shard / "n_tokens.json").read_text())
            del h_all
        shutil.rmtree(tmp / "shards")
    seconds = time.perf_counter() - t0
    h_writer.close()
    for name, arr in scalars.items():
        np.save(tmp / f"{name}.npy", arr)
    np.save(tmp / "tool_label.npy", tool_label)
    np.save(tmp / "example_index.npy", example_index)
    meta = {
        "format": CACHE_FORMAT,
        "key": meta_fields["key"],
        "backbone": backbone.name,
        "revision": backbone.revision,
        "data_digest": meta_fields["data_digest"],
        "dtype": meta_fields["dtype"],
        "n_examples": len(encoded),
        "n_positions": n,
        "n_tool_positions": int((tool_label >= 0).sum()),
        "hidden_size": d,
        "n_tokens": n_tokens,
        "prefix_tokens": len(meta_fields["prefix_ids"] or []),
        "build_seconds": round(seconds, 3),
        "tokens_per_second": round(n_tokens / max(seconds, 1e-9), 1),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta

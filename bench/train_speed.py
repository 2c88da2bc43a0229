"""Stage-1 training speed: ToolkenGPT's recipe vs ours, side by side.

Both train the same toolkens on the same N GSM8K examples for the same number
of epochs, with the same init, optimiser (Adam), learning rate, one example
per step and the same example order:

  baseline  ToolkenGPT's way: every step runs the full backbone forward
            (vocabulary logits included) on one example, then CE over
            [vocabulary ; toolkens];
  ours      one batched no-grad pass builds the feature cache (fresh, in a
            temp dir, timed), then every epoch runs the factorised loss on it.

Both heads are then scored on the same validation examples (bias calibrated
on them the same way). Also printed: cache-building throughput next to the
backbone's raw batched forward throughput (16 x 256 tokens, logits included).

    python bench/train_speed.py [--n-train 40] [--n-val 100] [--epochs 10] [--model smollm2_135m|tiny_random]

The last line is `speedup=<baseline seconds / ours seconds>`.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from toolken_plus.adapter.head import ToolkenHead  # noqa: E402
from toolken_plus.backbone import DEFAULT_BACKBONE, TinyRandomBackbone  # noqa: E402
from toolken_plus.config import default_data_root  # noqa: E402
from toolken_plus.config.schema import DataConfig, TrainerConfig  # noqa: E402
from toolken_plus.data.encoding import IGNORE, encode_examples  # noqa: E402
from toolken_plus.tasks.gsm8k_xl import Gsm8kXL  # noqa: E402
from toolken_plus.train.cache import build_feature_cache  # noqa: E402
from toolken_plus.train.losses import full_toolken_loss  # noqa: E402
from toolken_plus.train.trainer import CachedFeatures, ToolkenTrainer, calibrate_head_bias, evaluate_head  # noqa: E402

MODELS = {"smollm2_135m": DEFAULT_BACKBONE, "tiny_random": TinyRandomBackbone()}


def raw_forward_throughput(backbone, batch: int = 16, length: int = 256, reps: int = 2) -> float:
    """tokens/s of a plain batched no-grad forward with logits: the machine's
    ceiling for any pass over the data with this backbone."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, backbone.vocab_size, (batch, length), generator=g)
    best = float("inf")
    with torch.no_grad():
        backbone.model(ids[:2, :32])  # warm-up
        for _ in range(reps):
            t0 = time.perf_counter()
            backbone.model(ids)
            best = min(best, time.perf_counter() - t0)
    return batch * length / best


def train_toolkengpt_way(backbone, encoded, tool_names, epochs, lr, seed) -> tuple[ToolkenHead, float]:
    """ToolkenGPT's recipe: a full forward per example per epoch, batch 1."""
    head = ToolkenHead(tool_names, backbone.hidden_size, seed=seed)
    opt = torch.optim.Adam([head.weight], lr=lr)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        order = np.random.default_rng(seed + epoch).permutation(len(encoded))  # same order as ours
        for i in tqdm(order, desc=f"baseline epoch {epoch + 1}/{epochs}", leave=False):
            e = encoded[i]
            keep = torch.from_numpy(e.tool_label != IGNORE)
            if not keep.any():
                continue
            with torch.no_grad():
                out = backbone.model(torch.from_numpy(e.input_ids)[None], output_hidden_states=True)
            hidden = out.hidden_states[-1][0][keep]
            loss = full_toolken_loss(out.logits[0][keep], head(hidden), torch.from_numpy(e.next_token)[keep],
                                     torch.from_numpy(e.tool_label)[keep])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return head, time.perf_counter() - t0


def train_our_way(backbone, encoded, tool_names, epochs, lr, seed, cache_root, max_tokens) -> tuple[ToolkenHead, float, dict]:
    t0 = time.perf_counter()
    cache = build_feature_cache(backbone, encoded, cache_root, desc="ours: feature cache", max_tokens_per_batch=max_tokens)
    t_cache = time.perf_counter() - t0
    head = ToolkenHead(tool_names, backbone.hidden_size, seed=seed)
    ToolkenTrainer(head, cache, TrainerConfig(epochs=epochs, lr=lr, batch_size=1), seed=seed).fit()
    total = time.perf_counter() - t0
    return head, total, {"cache_s": t_cache, "epochs_s": total - t_cache, "cache_tok_s": cache.meta["tokens_per_second"]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2_135m", choices=sorted(MODELS))
    ap.add_argument("--n-train", type=int, default=40, help="GSM8K training examples (default 40: ~5 min on 2 cores)")
    ap.add_argument("--n-val", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-tokens-per-batch", type=int, default=1024, help="padded tokens per cache-building forward")
    ap.add_argument("--data-root", default=str(default_data_root()))
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)

    t0 = time.perf_counter()
    backbone = MODELS[args.model].load()
    first_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    backbone = MODELS[args.model].load()  # again: the conversion cache and imports are warm now
    print(f"backbone {backbone.name}: first load {first_load:.2f} s (incl. imports / one-time GGUF conversion), "
          f"reload {time.perf_counter() - t0:.2f} s; {torch.get_num_threads()} threads")
    task = Gsm8kXL().load(DataConfig(root=args.data_root, limit_train=args.n_train, limit_eval=args.n_val))
    index = {t: i for i, t in enumerate(task.tool_names)}
    train_enc = encode_examples(backbone.tokenizer, task.train, index, 512)
    val_enc = encode_examples(backbone.tokenizer, task.val, index, 512)
    n_tok = sum(len(e) for e in train_enc)
    print(f"data: {len(train_enc)} train examples ({n_tok} tokens), {len(val_enc)} validation examples, {args.epochs} epochs")

    raw = raw_forward_throughput(backbone)
    print(f"raw batched forward (16x256, logits included): {raw:.0f} tok/s")

    with tempfile.TemporaryDirectory() as tmp:
        ours_head, ours_s, parts = train_our_way(backbone, train_enc, task.tool_names, args.epochs, args.lr, args.seed,
                                                  Path(tmp) / "train", args.max_tokens_per_batch)
        base_head, base_s = train_toolkengpt_way(backbone, train_enc, task.tool_names, args.epochs, args.lr, args.seed)
        val = CachedFeatures(build_feature_cache(backbone, val_enc, Path(tmp) / "val", desc="validation features"))
        results = {}
        for name, head in (("baseline", base_head), ("ours", ours_head)):
            f1_b0 = evaluate_head(head, val, bias=0.0)["val/f1"]
            calibrate_head_bias(head, val)
            results[name] = (f1_b0, evaluate_head(head, val)["val/f1"])
        drift = float((ours_head.weight - base_head.weight).detach().abs().max())

    print()
    print(f"{'recipe':<34}{'wall s':>9}{'s/example/epoch':>17}{'val F1 (b=0)':>14}{'val F1 (calib.)':>17}")
    per = lambda s: s / (len(train_enc) * args.epochs)  # noqa: E731
    print(f"{'ToolkenGPT (forward per step)':<34}{base_s:>9.1f}{per(base_s):>17.4f}{results['baseline'][0]:>14.3f}{results['baseline'][1]:>17.3f}")
    print(f"{'toolken_plus (cached features)':<34}{ours_s:>9.1f}{per(ours_s):>17.4f}{results['ours'][0]:>14.3f}{results['ours'][1]:>17.3f}")
    print(f"  ours = cache build {parts['cache_s']:.1f} s + {args.epochs} epochs {parts['epochs_s']:.2f} s; "
          f"max |W_ours - W_baseline| = {drift:.2e} (fp16 cache)")
    print(f"cache build throughput: {parts['cache_tok_s']:.0f} tok/s vs raw forward {raw:.0f} tok/s "
          f"(ratio {parts['cache_tok_s'] / raw:.2f})")
    print(f"F1 difference ours - baseline: {results['ours'][1] - results['baseline'][1]:+.3f}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print(f"speedup={base_s / ours_s:.2f}")


if __name__ == "__main__":
    main()

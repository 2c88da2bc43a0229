"""Peak memory and throughput of building the feature cache for ALL of GSM8K
train (6973 examples after the validation split) on the default backbone.

    python bench/cache_rss.py [--limit N] [--model smollm2_135m]

Builds into a fresh temporary folder (the cache is not kept) and prints the
process's peak RSS; target < 4 GB. On 2 CPU cores the full build takes ~45 min.
Last line: `peak_rss_gb=<x>`.
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

from train_speed import MODELS  # noqa: E402

from toolken_plus.config import default_data_root  # noqa: E402
from toolken_plus.config.schema import DataConfig  # noqa: E402
from toolken_plus.data.encoding import encode_examples  # noqa: E402
from toolken_plus.tasks.gsm8k_xl import Gsm8kXL  # noqa: E402
from toolken_plus.train.cache import build_feature_cache  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2_135m", choices=sorted(MODELS))
    ap.add_argument("--limit", type=int, default=None, help="first N training examples (default: all)")
    ap.add_argument("--data-root", default=str(default_data_root()))
    args = ap.parse_args(argv)

    backbone = MODELS[args.model].load()
    task = Gsm8kXL().load(DataConfig(root=args.data_root, limit_train=args.limit))
    encoded = encode_examples(backbone.tokenizer, task.train, {t: i for i, t in enumerate(task.tool_names)}, 512)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cache = build_feature_cache(backbone, encoded, tmp)
        seconds = time.perf_counter() - t0
        size_gb = sum(f.stat().st_size for f in cache.path.iterdir()) / 2**30
        meta = cache.meta
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"examples {len(encoded)}, tokens {meta['n_tokens']}, cached positions {meta['n_positions']}, on disk {size_gb:.2f} GB")
    print(f"build {seconds:.0f} s, {meta['tokens_per_second']:.0f} tok/s")
    print(f"peak RSS before the build {rss_before:.2f} GB, overall {peak:.2f} GB (target < 4 GB)")
    print(f"peak_rss_gb={peak:.2f}")


if __name__ == "__main__":
    main()

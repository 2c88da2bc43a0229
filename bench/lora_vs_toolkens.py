"""Training cost: toolkens (cached features) vs the LoRA baseline, same data.

Both are trained by train.py, as a user runs them, on the same N GSM8K-XL
training examples for the same number of epochs at the same batch size, each
in its own process (so each peak memory is its own) with a fresh feature
cache (so the toolken run pays for building it):

  toolkens  method=toolkens: one no-grad pass caches the backbone's features,
            then the epochs train the toolken embeddings on them
  lora      method=lora: every step runs the backbone forward and backward
            through the LoRA-adapted attention (peft), r and targets as configured

Printed per method: wall time of the whole process, the recipe's own
training time (cost/train_seconds), trainable parameters, peak memory,
examples/s; then the ratio of the training times.

    python bench/lora_vs_toolkens.py [--n-train 100] [--epochs 2] [--batch-size 8] [--model smollm2_135m|tiny_random]

The last line is `ratio=<lora train seconds / toolkens train seconds>`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def train(method: str, args, work: Path) -> dict:
    """Run train.py for one method in a fresh process; its metrics.json plus wall time."""
    run_dir = work / method
    overrides = ["experiment=gsm8k_xl", f"method={method}", f"model={args.model}", f"data.limit_train={args.n_train}",
                 f"data.limit_eval={args.n_val}", f"trainer.epochs={args.epochs}", f"trainer.batch_size={args.batch_size}",
                 "trainer.progress=false", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "TOOLKEN_PLUS_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
           "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], cwd=work, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"train.py method={method} failed:\n{proc.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {**metrics, "wall_seconds": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=100, help="GSM8K-XL training examples (both methods)")
    ap.add_argument("--n-val", type=int, default=20, help="validation examples (both methods)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--model", default="smollm2_135m", choices=["smollm2_135m", "tiny_random"])
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="lora_vs_toolkens_") as tmp:
        results = {m: train(m, args, Path(tmp)) for m in ("toolkens", "lora")}

    print(f"GSM8K-XL, {args.n_train} training examples, {args.epochs} epochs, batch {args.batch_size}, model {args.model}")
    print(f"{'method':<10} {'process s':>10} {'train s':>9} {'trainable params':>17} {'peak MB':>8} {'examples/s':>11}")
    for method, m in results.items():
        print(f"{method:<10} {m['wall_seconds']:>10.1f} {m['cost/train_seconds']:>9.1f} {m['cost/trainable_params']:>17,} "
              f"{m['cost/peak_memory_mb']:>8.0f} {m['cost/examples_per_s']:>11.2f}")
    toolkens, lora = results["toolkens"], results["lora"]
    print(f"LoRA trains {lora['cost/trainable_params'] / toolkens['cost/trainable_params']:.0f}x the parameters; "
          f"process wall time ratio {lora['wall_seconds'] / toolkens['wall_seconds']:.2f}")
    print(f"ratio={lora['cost/train_seconds'] / toolkens['cost/train_seconds']:.2f}")


if __name__ == "__main__":
    main()

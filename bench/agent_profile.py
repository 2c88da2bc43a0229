"""Where the batched agent loop spends its time, and how one decode step
scales with the batch.

Part 1: cProfile of `agent.run_batch` on N GSM8K-XL test questions at one
batch size; prints total seconds, decoded tokens, calls, and the cumulative
seconds of decoding steps (`BatchCache.step`) vs context switches
(`Scheduler.switch`, of which batched prefills `prefill_many`).
Part 2: one decode step of the backbone on a synthetic KV cache of the given
width (with the agent's room to append) at batch 1 and at the batch size
(median of 5), and the tokens/s ratio.
Part 3: the matmul of a few rows by a wide weight, as `x @ W.T` and as
`(W @ x.T).T` (backbone.times_transposed, which the agent and the backbone's
FewRowsLinear layers use): the vocabulary head at 1, 4 and the batch size
rows, and a whole decode step with the backbone's linear layers as plain
nn.Linear vs FewRowsLinear at batch 2, 4 and the batch size (best of 3, interleaved).

    python bench/agent_profile.py --checkpoint outputs/demo/<run> [--n 16] [--batch-size 16] [--width 800]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from toolken_plus.backbone import FewRowsLinear, times_transposed  # noqa: E402
from toolken_plus.config import default_data_root  # noqa: E402
from toolken_plus.infer.recipe import load_agent  # noqa: E402
from toolken_plus.tasks.gsm8k import load_gsm8k_xl_test  # noqa: E402


def cumulative(stats: pstats.Stats, func_name: str, file_end: str = "agent.py") -> float:
    """Cumulative seconds of `func_name` defined in a file ending in `file_end`."""
    return sum(v[3] for (path, _, name), v in stats.stats.items() if name == func_name and path.endswith(file_end))


def step_ms(backbone, batch: int, width: int, steps: int = 6) -> float:
    """Median ms of one decode step at this batch and KV width (the first step is warm-up)."""
    c = backbone.model.config
    kvh, hd = c.num_key_value_heads, c.hidden_size // c.num_attention_heads
    layers = [(torch.randn(batch, kvh, width, hd), torch.randn(batch, kvh, width, hd)) for _ in range(c.num_hidden_layers)]
    cache = backbone.make_cache(layers, headroom=64)
    tok = torch.zeros(batch, 1, dtype=torch.long)
    times = []
    with torch.no_grad():
        for i in range(steps):
            mask = torch.ones(batch, width + i + 1, dtype=torch.long)
            t0 = time.perf_counter()
            backbone.step(tok, mask, torch.full((batch, 1), width + i), cache)
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times[1:])


def linear_step_ms(backbone, batch: int, width: int) -> tuple[float, float]:
    """Best-of-3 decode-step ms with the backbone's linears as nn.Linear and as FewRowsLinear."""
    layers = [m for m in backbone.model.modules() if isinstance(m, nn.Linear)]
    best = {nn.Linear: float("inf"), FewRowsLinear: float("inf")}
    for _ in range(3):
        for cls in best:
            for m in layers:
                m.__class__ = cls
            best[cls] = min(best[cls], step_ms(backbone, batch, width))
    for m in layers:
        m.__class__ = FewRowsLinear
    return best[nn.Linear], best[FewRowsLinear]


def head_ms(weight: torch.Tensor, rows: int) -> tuple[float, float]:
    """Median ms of h @ W.T and of (W @ h.T).T for `rows` hidden states."""
    h = torch.randn(rows, weight.shape[1])
    out = []
    for f in (lambda: h @ weight.T, lambda: times_transposed(h, weight)):
        times = []
        for _ in range(11):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        out.append(1000 * statistics.median(times))
    return out[0], out[1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="run dir of train.py")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=120)
    ap.add_argument("--width", type=int, default=800, help="KV width for part 2")
    ap.add_argument("--data-root", default=str(default_data_root()))
    args = ap.parse_args(argv)

    agent = load_agent(args.checkpoint, data_root=args.data_root, batch_size=args.batch_size,
                       max_new_tokens=args.max_new_tokens)
    questions = [it["question"] for it in load_gsm8k_xl_test(Path(args.data_root) / "gsm8k-xl" / "test.json", limit=args.n)]
    agent.run(questions[0])  # warm: every prompt prefix's KV is computed once
    print(f"backbone {agent.backbone.name}, {torch.get_num_threads()} threads")
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    results = agent.run_batch(questions)
    prof.disable()
    total = time.perf_counter() - t0
    st = pstats.Stats(prof)
    print(f"part 1: {len(questions)} questions at batch {args.batch_size}: {total:.1f} s, "
          f"{sum(r.new_tokens for r in results)} reasoning tokens, {sum(len(r.calls) for r in results)} calls")
    print(f"  decode steps      {cumulative(st, 'step'):7.1f} s")
    print(f"  context switches  {cumulative(st, 'switch'):7.1f} s (batched prefills {cumulative(st, 'prefill_many'):.1f} s)")
    one, many = step_ms(agent.backbone, 1, args.width), step_ms(agent.backbone, args.batch_size, args.width)
    print(f"part 2: one decode step at KV width {args.width}: {one:.0f} ms at batch 1, {many:.0f} ms at batch "
          f"{args.batch_size}: {args.batch_size * one / many:.2f}x the tokens/s")
    for rows in sorted({1, 4, args.batch_size}):
        plain, flipped = head_ms(agent.backbone.lm_head.weight, rows)
        print(f"part 3: head projection of {rows:>2} rows: h @ W.T {plain:5.1f} ms, (W @ h.T).T {flipped:5.1f} ms "
              f"({plain / flipped:.2f}x)")
    for batch in sorted({2, 4, args.batch_size}):
        plain, few = linear_step_ms(agent.backbone, batch, args.width)
        print(f"part 3: decode step at batch {batch:>2}: nn.Linear {plain:5.1f} ms, FewRowsLinear {few:5.1f} ms "
              f"({plain / few:.2f}x)")


if __name__ == "__main__":
    main()

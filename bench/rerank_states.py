"""What fitting the llm reranker costs: the doc-block pass over mined positions.

Fitting stage 2 runs the frozen LM once per mined position (the query, then
the doc block of its top-k candidates and Reject) and keeps the last hidden
state. This times that pass over MetaTool validation queries, in one process
on the same backbone and positions:
  mined order        batches of `--batch` positions in the order they were
                     mined, in the backbone's float32 (the baseline: how
                     fitting ran before)
  length-sorted      the same positions batched in order of their token
                     count, so a batch pads little, with at most
                     `--tokens` padded new tokens per forward (so an
                     overlong query runs alone), still float32
  + bfloat16         length-sorted, and the pass in reranker.state_dtype=auto's
                     choice here (bfloat16 where the CPU/GPU has it natively:
                     the default); skipped where auto keeps float32
checks that the float32 orders give the same states (to 1e-3) and how close
the bfloat16 states are (cosine), and prints positions per second, the
tokens a position runs, and what every mined training position of a
MetaTool split would cost at that rate.

    python bench/rerank_states.py [--n 256] [--batch 16] [--k 3] [--model tiny_random]

Candidates are drawn at random per position (the cost does not depend on
which tools they are, only on the length of their docs). Last line:
`ratio=<mined order / the default (fastest row)>`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from toolken_plus.backbone import DEFAULT_BACKBONE, TinyRandomBackbone, build_backbone  # noqa: E402
from toolken_plus.config import default_cache_dir, default_data_root  # noqa: E402
from toolken_plus.config.device import resolve_state_dtype  # noqa: E402
from toolken_plus.config.schema import DataConfig  # noqa: E402
from toolken_plus.rerank.llm import LLMReranker, build_rerank_set, init_rerank_weight  # noqa: E402
from toolken_plus.rerank.mining import MinedSet, PositionContexts  # noqa: E402
from toolken_plus.tasks.metatool import MetaTool  # noqa: E402

MODELS = {"smollm2_135m": DEFAULT_BACKBONE, "tiny_random": TinyRandomBackbone()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256, help="validation positions timed")
    ap.add_argument("--batch", type=int, default=16, help="positions per forward (reranker.state_batch)")
    ap.add_argument("--tokens", type=int, default=4096, help="padded new tokens per forward (reranker.state_tokens)")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2_135m")
    ap.add_argument("--data-root", default=str(default_data_root()))
    args = ap.parse_args(argv)

    task = MetaTool()
    data = task.load(DataConfig(root=args.data_root))
    backbone = build_backbone(MODELS[args.model], default_cache_dir())
    tool_index = {n: i for i, n in enumerate(data.tool_names)}
    encoded = task.encode(backbone.tokenizer, data.val[: args.n], tool_index, 512)
    prefix = backbone.tokenizer(task.shared_prefix, add_special_tokens=False)["input_ids"]
    contexts = PositionContexts(backbone, prefix, encoded)
    n, n_tools = len(contexts.row_example), len(data.tool_names)
    g = torch.Generator().manual_seed(0)
    mined = MinedSet(torch.arange(n), torch.randint(0, n_tools, (n,), generator=g), torch.randn(n, n_tools, generator=g),
                     contexts, n_tools)
    reranker = LLMReranker(backbone, init_rerank_weight(torch.randn(n_tools, backbone.hidden_size)), data.tool_names,
                           data.tool_docs, k=args.k)
    tokens = sum(contexts.pending_tokens(r) for r in range(n))
    print(f"backbone {backbone.name}, {torch.get_num_threads()} threads, {n} MetaTool validation positions, "
          f"batch {args.batch} (≤ {args.tokens} tokens), k={args.k}")
    fast_dtype = resolve_state_dtype("auto", backbone.device)
    fast = LLMReranker(backbone, reranker.weight, data.tool_names, data.tool_docs, k=args.k, state_dtype=fast_dtype) \
        if fast_dtype is not None else None
    for rr in (reranker, fast) if fast is not None else (reranker,):  # warm-up
        build_rerank_set(rr, mined.subsample(args.batch, 0), batch_size=args.batch, progress=False)
    plain = build_rerank_set(reranker, mined, batch_size=args.batch, max_tokens=None, progress=False, sort_by_length=False)
    tight = build_rerank_set(reranker, mined, batch_size=args.batch, max_tokens=args.tokens, progress=False)
    rows = [("mined order", plain), ("length-sorted", tight)]
    if fast is not None:
        rows.append((f"+ {str(fast_dtype).removeprefix('torch.')}",
                     build_rerank_set(fast, mined, batch_size=args.batch, max_tokens=args.tokens, progress=False)))
    else:
        print("  (reranker.state_dtype=auto keeps float32 here: no native bfloat16)")
    worst = float((plain.g - tight.g).abs().max())
    block = sum(len(reranker.block_ids(c)) for c in reranker._block_ids) / max(len(reranker._block_ids), 1)
    print(f"query {tokens / n:.0f} tokens, doc block {block:.0f} tokens per position (means)")
    for name, res in rows:
        print(f"  {name:<14} {res.seconds:7.1f} s  {n / res.seconds:6.1f} positions/s")
    best = rows[-1][1]
    full = len(data.train)  # a choice task mines one position per training query
    print(f"  all {full} training positions of this split at the default's rate ({rows[-1][0]}): "
          f"{full * best.seconds / n / 60:.1f} min")
    print(f"  max |g_sorted - g_mined_order| = {worst:.2e}")
    if worst > 1e-3:
        raise SystemExit("the two orders disagree")
    if fast is not None:
        cos = torch.nn.functional.cosine_similarity(best.g, tight.g)
        print(f"  cosine(g_{rows[-1][0][2:]}, g_float32): min {float(cos.min()):.5f}, mean {float(cos.mean()):.5f}")
    print(f"ratio={plain.seconds / best.seconds:.2f}")


if __name__ == "__main__":
    main()

"""What fitting the llm reranker costs: the doc-block pass over mined positions.

Fitting stage 2 runs the frozen LM once per mined position (the query, then
the doc block of its top-k candidates and Reject) and keeps the last hidden
state. This times that pass over MetaTool validation queries, in one process
on the same backbone and positions:
  mined order      batches of `--batch` positions in the order they were mined
                   (the baseline: how fitting ran before)
  length-sorted    the same positions batched in order of their token count,
                   so a batch pads little (build_rerank_set's default)
checks that both give the same states (to 1e-4), and prints positions per
second, the tokens a position runs, and what every mined training position
of a MetaTool split would cost at that rate.

    python bench/rerank_states.py [--n 256] [--batch 16] [--k 3] [--model tiny_random]

Candidates are drawn at random per position (the cost does not depend on
which tools they are, only on the length of their docs). Last line:
`ratio=<mined order / length-sorted>`.
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
from toolken_plus.config.schema import DataConfig  # noqa: E402
from toolken_plus.rerank.llm import LLMReranker, build_rerank_set, init_rerank_weight  # noqa: E402
from toolken_plus.rerank.mining import MinedSet, PositionContexts  # noqa: E402
from toolken_plus.tasks.metatool import MetaTool  # noqa: E402

MODELS = {"smollm2_135m": DEFAULT_BACKBONE, "tiny_random": TinyRandomBackbone()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256, help="validation positions timed")
    ap.add_argument("--batch", type=int, default=16, help="positions per forward (reranker.state_batch)")
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
          f"batch {args.batch}, k={args.k}")
    build_rerank_set(reranker, mined.subsample(args.batch, 0), batch_size=args.batch, progress=False)  # warm-up
    plain = build_rerank_set(reranker, mined, batch_size=args.batch, progress=False, sort_by_length=False)
    tight = build_rerank_set(reranker, mined, batch_size=args.batch, progress=False)
    worst = float((plain.g - tight.g).abs().max())
    block = sum(len(reranker.block_ids(c)) for c in reranker._block_ids) / max(len(reranker._block_ids), 1)
    print(f"query {tokens / n:.0f} tokens, doc block {block:.0f} tokens per position (means)")
    for name, res in (("mined order", plain), ("length-sorted", tight)):
        print(f"  {name:<14} {res.seconds:7.1f} s  {n / res.seconds:6.1f} positions/s")
    full = len(data.train)  # a choice task mines one position per training query
    print(f"  all {full} training positions of this split at the length-sorted rate: "
          f"{full * tight.seconds / n / 60:.1f} min")
    print(f"  max |g_sorted - g_mined_order| = {worst:.2e}")
    if worst > 1e-3:
        raise SystemExit("the two orders disagree")
    print(f"ratio={plain.seconds / tight.seconds:.2f}")


if __name__ == "__main__":
    main()

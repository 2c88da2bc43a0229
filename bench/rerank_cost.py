"""What stage 2 costs per tool call, on GSM8K-XL contexts.

At a trigger, the agent's context is the few-shot prompt + the question +
the reasoning so far (~700 tokens with SmolLM2's tokenizer). Per context we
time, in one process on the same backbone:
  none       stage-1 argmax (the baseline: no extra work)
  embedding  MiniLM embedding of the recent text + cosine with the docs
  llm        the doc block run through the LM reusing the context's KV cache
  llm naive  the same hidden state from a full forward of context + doc block
and print the extra latency of llm and embedding over none, and the ratio of
the naive pass to the prefix-reusing one (they must agree to 1e-4).

    python bench/rerank_cost.py [--checkpoint outputs/demo/<run>] [--n 8] [--k 3] [--model tiny_random]

Last line: `ratio=<naive / reused>`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from toolken_plus.adapter import ToolkenHead  # noqa: E402
from toolken_plus.backbone import DEFAULT_BACKBONE, TinyRandomBackbone  # noqa: E402
from toolken_plus.config import default_data_root  # noqa: E402
from toolken_plus.data.prompts import FewShotPrompt  # noqa: E402
from toolken_plus.kv.rows import prefix_row  # noqa: E402
from toolken_plus.rerank import EmbeddingReranker, LLMReranker, NoReranker, RerankContext, top_candidates  # noqa: E402
from toolken_plus.rerank.llm import init_rerank_weight  # noqa: E402
from toolken_plus.tasks.gsm8k import (
    calculator_tools,  # noqa: E402
    load_gsm8k,  # noqa: E402
)

MODELS = {"smollm2_135m": DEFAULT_BACKBONE, "tiny_random": TinyRandomBackbone()}


def gsm8k_contexts(data_root: Path, prompt: FewShotPrompt, n: int) -> list[str]:
    """Few-shot prompt + a GSM8K question + its solution up to its first call's
    result: exactly where a toolken fires."""
    out = []
    for ex in load_gsm8k(data_root / "gsm8k" / "train.jsonl", limit=4 * n):
        if not ex.calls:
            continue
        q, _, rest = ex.text.partition("\nAnswer:")
        head = ex.text[: ex.calls[0].start]
        out.append(prompt.prefix + prompt.question_part(q.removeprefix("Question: ")) + head[len(q) + len("\nAnswer:"):])
        if len(out) == n:
            break
    return out


def timed(fn, reps: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="run dir of train.py (its W_τ ranks the candidates; random otherwise)")
    ap.add_argument("--n", type=int, default=8, help="contexts")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3, help="timings per context (best is kept)")
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2_135m")
    ap.add_argument("--data-root", default=str(default_data_root()))
    args = ap.parse_args(argv)

    root = Path(args.data_root)
    backbone = MODELS[args.model].load()
    tools = calculator_tools(root)
    names = list(tools)
    docs = {n: t.doc for n, t in tools.items()}
    head = ToolkenHead.from_pretrained(args.checkpoint) if args.checkpoint else ToolkenHead(names, backbone.hidden_size)
    prompt = FewShotPrompt.from_file(root / "gsm8k-xl" / "template" / "llama_general.txt")
    contexts = gsm8k_contexts(root, prompt, args.n)
    tok = backbone.tokenizer
    llm = LLMReranker(backbone, init_rerank_weight(head.weight), names, docs, k=args.k)
    none = NoReranker(names, k=args.k)
    try:
        from toolken_plus.rerank.embedder import SentenceEmbedder

        emb = EmbeddingReranker(SentenceEmbedder(), names, docs, k=args.k, threshold=0.0)
    except ModuleNotFoundError as err:
        print(f"embedding reranker skipped: {err}")
        emb = None
    print(f"backbone {backbone.name}, {torch.get_num_threads()} threads, {len(contexts)} GSM8K-XL contexts, k={args.k}")

    t = {"none": 0.0, "embedding": 0.0, "llm": 0.0, "naive": 0.0}
    ctx_tokens = block_tokens = 0
    worst = 0.0
    with torch.no_grad():
        for text in contexts:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            layers, n = prefix_row(backbone, ids)  # the agent already holds this KV cache
            h, _ = backbone.final_hidden(torch.tensor([ids]))
            scores = head(h[0, -1])
            q = RerankContext(scores, text=text[-300:], layers=layers, n=n)
            cands = top_candidates(scores, args.k)
            dt, _ = timed(lambda: none.rank(q, cands), args.reps)
            t["none"] += dt
            if emb is not None:
                emb.embedder._memo.clear()  # no credit for having seen this text before
                dt, _ = timed(lambda: (emb.embedder._memo.clear(), emb.rank(q, cands))[1], args.reps)
                t["embedding"] += dt
            dt, g = timed(lambda: llm.states([q], [cands]), args.reps)
            t["llm"] += dt
            block = llm.block_ids(cands)
            dt, (full, _) = timed(lambda: backbone.final_hidden(torch.tensor([ids + block])), args.reps)
            t["naive"] += dt
            worst = max(worst, float((full[0, -1] - g[0]).abs().max()))
            ctx_tokens += len(ids)
            block_tokens += len(block)
    m = len(contexts)
    ms = {k: 1000 * v / m for k, v in t.items()}
    print(f"context {ctx_tokens / m:.0f} tokens, doc block {block_tokens / m:.0f} tokens (means)")
    print(f"  none (stage-1 argmax)       {ms['none']:8.2f} ms per call")
    if emb is not None:
        print(f"  embedding                   {ms['embedding']:8.2f} ms per call (+{ms['embedding'] - ms['none']:.2f} ms over none)")
    print(f"  llm, prefix KV reused       {ms['llm']:8.2f} ms per call (+{ms['llm'] - ms['none']:.2f} ms over none)")
    print(f"  llm, naive full re-forward  {ms['naive']:8.2f} ms per call")
    print(f"  max |g_reused - g_naive| = {worst:.2e}")
    print(f"ratio={t['naive'] / t['llm']:.2f}")


if __name__ == "__main__":
    main()

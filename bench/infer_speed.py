"""Inference speed of the agent loop, against plain `model.generate`.

Part 1 (what the toolken head costs): the same GSM8K-XL prompts, batch 1,
greedy. `model.generate` with its KV cache vs our agent loop with tools
disabled (logit bias −inf, so it decodes exactly the same tokens), each
prompt generating the same number of new tokens. Our loop is timed twice: with
its few-shot prefix cache cleared before every question (the same work as
generate: the ratio printed last) and warm (steady state, the prefix KV is
reused across questions).

Part 2 (what batching buys): the agent with tools on (a trained checkpoint)
answers the same questions at batch 1 and at `--batch-size`; questions/s ratio.

    python bench/infer_speed.py --checkpoint outputs/demo/<run> [--n1 4] [--n2 32] [--batch-size 16]

Last line: `ratio=<agent tok/s / generate tok/s>` (part 1, cold prefix).
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

from toolken_plus.adapter.head import ToolkenHead  # noqa: E402
from toolken_plus.config import default_data_root  # noqa: E402
from toolken_plus.infer.recipe import load_agent  # noqa: E402
from toolken_plus.tasks.gsm8k import load_gsm8k_xl_test  # noqa: E402
from toolken_plus.tasks.gsm8k_xl import Gsm8kXL  # noqa: E402


def part1(agent, questions) -> float:
    tok, model = agent.backbone.tokenizer, agent.backbone.model
    agent.cfg.setting = "no_tools"
    agent.run(questions[0])  # warm-up (imports, allocator)
    lengths, t_cold = [], 0.0
    for q in questions:
        agent.scheduler._prefix_cache.clear()
        t0 = time.perf_counter()
        res = agent.run(q)
        t_cold += time.perf_counter() - t0
        lengths.append(res.new_tokens)
    t_warm = 0.0
    for q in questions:
        t0 = time.perf_counter()
        agent.run(q)
        t_warm += time.perf_counter() - t0
    t_gen = 0.0
    for q, n in zip(questions, lengths):
        ids = tok(agent.prompt.prefix, add_special_tokens=False)["input_ids"] + \
            tok(agent.prompt.question_part(q), add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ids])
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=tok.pad_token_id)
        t_gen += time.perf_counter() - t0
    total = sum(lengths)
    gen, cold, warm = total / t_gen, total / t_cold, total / t_warm
    print(f"part 1: {len(questions)} prompts, batch 1, {total} new tokens "
          f"(~{len(tok(agent.prompt.prefix)['input_ids'])}-token few-shot prefix)")
    print(f"  model.generate (KV cache)              {gen:7.2f} tok/s")
    print(f"  agent loop, tools off, prefix cold     {cold:7.2f} tok/s  ({cold / gen:.2f}x)")
    print(f"  agent loop, tools off, prefix reused   {warm:7.2f} tok/s  ({warm / gen:.2f}x)")
    agent.cfg.setting = "toolkens"
    return cold / gen


def part2(agent, questions, batch_size: int) -> None:
    agent.cfg.setting = "toolkens"
    timings = {}
    for bs in (1, batch_size):
        agent.cfg.batch_size = bs
        t0 = time.perf_counter()
        results = agent.run_batch(questions)
        timings[bs] = time.perf_counter() - t0
        calls = sum(len(r.calls) for r in results)
        print(f"  batch {bs:>3}: {len(questions) / timings[bs]:.3f} questions/s ({timings[bs]:.0f} s, {calls} tool calls, "
              f"{sum(r.new_tokens for r in results)} reasoning tokens)")
    print(f"part 2: batched / batch-1 questions per second = {timings[1] / timings[batch_size]:.2f}x")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="run dir of train.py (part 2 needs trained toolkens)")
    ap.add_argument("--n1", type=int, default=4, help="prompts for part 1")
    ap.add_argument("--n2", type=int, default=32, help="questions for part 2 (0 skips it)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--data-root", default=str(default_data_root()))
    args = ap.parse_args(argv)

    items = load_gsm8k_xl_test(Path(args.data_root) / "gsm8k-xl" / "test.json", limit=max(args.n1, args.n2))
    questions = [it["question"] for it in items]
    agent = load_agent(args.checkpoint, task=Gsm8kXL(), data_root=args.data_root,
                       setting="toolkens" if args.checkpoint else "no_tools", max_new_tokens=args.max_new_tokens)
    if agent.head is None:  # part 1 only needs a head to exist; its bias is −inf there
        agent.policy.head = ToolkenHead(list(agent.tools), agent.backbone.hidden_size)
    print(f"backbone {agent.backbone.name}, {torch.get_num_threads()} threads")
    ratio = part1(agent, questions[: args.n1])
    if args.n2 and args.checkpoint:
        part2(agent, questions[: args.n2], args.batch_size)
    print(f"ratio={ratio:.2f}")


if __name__ == "__main__":
    main()

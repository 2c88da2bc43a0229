"""The real default backbone end to end (slow: `make test-slow`)."""

import pytest
from test_train_entrypoint import _compose

from toolken_plus.infer.recipe import load_agent
from toolken_plus.train.recipe import TrainToolkensRecipe

pytestmark = pytest.mark.slow


def test_smollm2_trains_toolkens_and_calls_real_tools(tmp_path, full_data_root):
    # the f1 bound was measured on the real GSM8K train subset: this one needs the full data
    cfg = _compose(["experiment=gsm8k_xl", "data.limit_train=40", "data.limit_eval=40", "trainer.progress=false",
                    f"data.root={full_data_root}", f"cache_dir={tmp_path / 'cache'}"])
    recipe = TrainToolkensRecipe(cfg, tmp_path / "run")
    metrics = recipe.run()
    assert metrics["val/f1"] > 0.5  # measured ~0.78 on this subset
    agent = load_agent(tmp_path / "run", backbone=recipe.backbone, data_root=full_data_root, batch_size=3, max_new_tokens=80)
    results = agent.run_batch([
        "A robe takes 8 bolts of blue fiber and half that much white fiber. How many bolts in total does it take?",
        "Tom has 4096 apples and gives away 27. How many apples does he have left?",
        "A shop sells 125 pens at $8 each. How much money does it make?",
    ])
    calls = [c for r in results for c in r.calls]
    assert calls and any(c.result is not None for c in calls)
    for r in results:
        for c in r.calls:
            if c.result is not None:
                assert r.generation[c.at_char:].startswith(c.result)
                assert f"<{c.tool}>(" in r.trace


def test_smollm2_rerank_state_with_reused_kv_equals_full_forward(data_root):
    """The Toolken+ doc-block pass on the real backbone, on a GSM8K-XL context."""
    import torch

    from toolken_plus.backbone import DEFAULT_BACKBONE
    from toolken_plus.data.prompts import FewShotPrompt
    from toolken_plus.kv.rows import prefix_row
    from toolken_plus.rerank import RerankContext, top_candidates
    from toolken_plus.rerank.llm import LLMReranker, init_rerank_weight
    from toolken_plus.tasks.gsm8k import calculator_tools

    backbone = DEFAULT_BACKBONE.load()
    tools = calculator_tools(data_root)
    prompt = FewShotPrompt.from_file(data_root / "gsm8k-xl" / "template" / "llama_general.txt")
    text = prompt.prefix + prompt.question_part("Natalia sold 48 clips in April and half as many in May.") + " She sold 48/2 ="
    ids = backbone.tokenizer(text, add_special_tokens=False)["input_ids"]
    w = init_rerank_weight(torch.randn(4, backbone.hidden_size))
    rr = LLMReranker(backbone, w, list(tools), {n: t.doc for n, t in tools.items()}, k=3)
    layers, n = prefix_row(backbone, ids)
    context = RerankContext(torch.tensor([0.1, 0.2, 0.3, 0.4]), layers=layers, n=n)
    cands = top_candidates(context.scores, 3)
    g = rr.states([context], [cands])
    with torch.no_grad():
        full, _ = backbone.final_hidden(torch.tensor([ids + rr.block_ids(cands)]))
    assert torch.allclose(g[0], full[0, -1], atol=1e-4)


def test_smollm2_rows_share_the_few_shot_prefix(data_root):
    """SmolLM2 (9 query heads on 3 key/value heads) runs shared-prefix attention,
    and two rows on the GSM8K-XL prompt give their full rows' hidden states."""
    import torch

    from toolken_plus.backbone import DEFAULT_BACKBONE
    from toolken_plus.data.prompts import FewShotPrompt
    from toolken_plus.kv.rows import make_prefix, prefill_rows
    from toolken_plus.kv.shared_prefix import supports_shared_prefix

    backbone = DEFAULT_BACKBONE.load()
    assert supports_shared_prefix(backbone)  # else every batched row would carry a copy of the prompt
    tok = backbone.tokenizer
    prompt = FewShotPrompt.from_file(data_root / "gsm8k-xl" / "template" / "llama_general.txt")
    prefix_ids = tok(prompt.prefix, add_special_tokens=False)["input_ids"]
    prefix = make_prefix(backbone, prefix_ids)
    parts = [tok(prompt.question_part(q), add_special_tokens=False)["input_ids"]
             for q in ("Natalia sold 48 clips in April and half as many in May.", "What is 5 times 6?")]
    out = prefill_rows(backbone, [(None, 0, ids, prefix) for ids in parts])
    for ids, (_, n, hidden) in zip(parts, out):
        with torch.no_grad():
            full, _ = backbone.final_hidden(torch.tensor([prefix_ids + ids]))
        assert n == len(ids)
        assert torch.allclose(hidden, full[0, -1], atol=1e-3)

"""Stage-1 training: only W_τ moves, checkpoints resume exactly."""

import torch
from helpers import SAMPLES, TOOL_INDEX, TOOLS

from toolken_plus.adapter.head import ToolkenHead
from toolken_plus.data.encoding import encode_examples
from toolken_plus.train.cache import build_feature_cache
from toolken_plus.train.trainer import CachedFeatures, ToolkenTrainer, TrainerConfig, calibrate_head_bias, evaluate_head


def _cache(backbone, root):
    return build_feature_cache(backbone, encode_examples(backbone.tokenizer, SAMPLES, TOOL_INDEX), root, progress=False)


def test_training_changes_toolkens_and_nothing_else(tiny_backbone, cache_root, tmp_path):
    backbone_before = {k: v.clone() for k, v in tiny_backbone.model.state_dict().items()}
    assert not any(p.requires_grad for p in tiny_backbone.model.parameters())
    assert not tiny_backbone.model.training

    head = ToolkenHead(TOOLS, tiny_backbone.hidden_size, seed=0)
    w0 = head.weight.detach().clone()
    cache = _cache(tiny_backbone, cache_root)
    trainer = ToolkenTrainer(head, cache, TrainerConfig(epochs=20, lr=1e-2, batch_size=2, progress=False), run_dir=tmp_path)
    history = trainer.fit()

    assert not torch.equal(head.weight, w0)
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    for k, v in tiny_backbone.model.state_dict().items():
        assert torch.equal(v, backbone_before[k]), k
    # only the toolken rows are optimised
    assert [p for g in trainer.optimizer.param_groups for p in g["params"]] == [head.weight]


def test_training_learns_the_tool_positions(tiny_backbone, cache_root):
    """On its own training data, a trained head recalls the calls it saw."""
    cache = _cache(tiny_backbone, cache_root)
    head = ToolkenHead(TOOLS, tiny_backbone.hidden_size, seed=0)
    feats = CachedFeatures(cache)
    before = evaluate_head(head, feats, bias=0.0)["val/f1"]
    ToolkenTrainer(head, cache, TrainerConfig(epochs=300, lr=5e-2, batch_size=4, progress=False)).fit()
    calibrate_head_bias(head, feats)
    after = evaluate_head(head, feats)
    assert after["val/recall"] > 0.5 and after["val/f1"] > before


def test_resume_continues_exactly(tiny_backbone, cache_root, tmp_path):
    cache = _cache(tiny_backbone, cache_root)
    straight = ToolkenHead(TOOLS, tiny_backbone.hidden_size, seed=0)
    ToolkenTrainer(straight, cache, TrainerConfig(epochs=4, lr=1e-2, batch_size=1, progress=False), run_dir=tmp_path / "a").fit()

    first = ToolkenHead(TOOLS, tiny_backbone.hidden_size, seed=0)
    ToolkenTrainer(first, cache, TrainerConfig(epochs=2, lr=1e-2, batch_size=1, progress=False), run_dir=tmp_path / "b").fit()
    resumed = ToolkenHead(TOOLS, tiny_backbone.hidden_size, seed=0)  # fresh weights: must come from the checkpoint
    trainer = ToolkenTrainer(resumed, cache, TrainerConfig(epochs=4, lr=1e-2, batch_size=1, progress=False), run_dir=tmp_path / "b")
    trainer.fit()
    assert [h["epoch"] for h in trainer.history] == [1, 2, 3, 4]
    assert torch.allclose(resumed.weight, straight.weight, atol=1e-6)


def test_resume_refuses_a_checkpoint_for_other_tools(tiny_backbone, cache_root, tmp_path):
    import pytest

    cache = _cache(tiny_backbone, cache_root)
    ToolkenTrainer(ToolkenHead(TOOLS, tiny_backbone.hidden_size), cache, TrainerConfig(epochs=1, progress=False), run_dir=tmp_path).fit()
    other = ToolkenHead(["add", "subtract"], tiny_backbone.hidden_size)
    with pytest.raises(ValueError, match="other settings:\n  tools: "):
        ToolkenTrainer(other, cache, TrainerConfig(epochs=2, progress=False), run_dir=tmp_path).fit()


def test_head_save_load_roundtrip(tiny_backbone, tmp_path):
    import pytest

    head = ToolkenHead(TOOLS, tiny_backbone.hidden_size, seed=5)
    head.logit_bias.fill_(-1.25)
    docs = {t: f"{t} two numbers" for t in TOOLS}
    head.save_pretrained(tmp_path, backbone=tiny_backbone, model_spec={"kind": "tiny_random", "hidden_size": 16},
                         tool_docs=docs, task={"name": "gsm8k_xl"}, provenance={"data_hash": "abc"})
    loaded = ToolkenHead.from_pretrained(tmp_path, backbone=tiny_backbone, tool_docs=docs)
    assert torch.equal(loaded.weight, head.weight) and float(loaded.logit_bias) == -1.25
    assert loaded.tool_names == TOOLS and loaded.config.provenance["data_hash"] == "abc"
    assert loaded.config.base_model.revision == tiny_backbone.revision
    assert loaded.config.base_model.spec["kind"] == "tiny_random" and loaded.config.task == {"name": "gsm8k_xl"}
    with pytest.warns(UserWarning, match="documentation of tool 'add' changed"):
        ToolkenHead.from_pretrained(tmp_path, tool_docs={**docs, "add": "new doc"})
    with pytest.raises(FileNotFoundError, match="not a toolken checkpoint"):
        ToolkenHead.from_pretrained(tmp_path / "nowhere")


def test_a_format_1_checkpoint_still_loads(tmp_path):
    """toolken_config.json as toolken_plus 0.1 wrote it."""
    import json

    from safetensors.torch import save_file

    from toolken_plus.adapter import ToolkenConfig

    save_file({"toolken.weight": torch.ones(2, 8)}, str(tmp_path / "toolkens.safetensors"))
    (tmp_path / "toolken_config.json").write_text(json.dumps({
        "format_version": 1, "tools": [{"name": "add", "doc_hash": "x"}, {"name": "divide", "doc_hash": "y"}],
        "hidden_size": 8, "logit_bias": 1.5, "backbone": {"name": "m", "revision": "r", "hidden_size": 8, "vocab_size": 9},
        "task": "gsm8k_xl", "data_hash": "abc", "epochs": 3}))
    config = ToolkenConfig.load(tmp_path)
    assert config.tool_names == ["add", "divide"] and config.base_model.name == "m" and config.base_model.spec is None
    assert config.task == {"name": "gsm8k_xl"} and config.provenance == {"data_hash": "abc", "epochs": 3}
    assert float(ToolkenHead.from_pretrained(tmp_path).logit_bias) == 1.5

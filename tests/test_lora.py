"""The LoRA baseline (method=lora): training moves only the LoRA weights, the
saved adapter reloads (PEFT, apply_lora) to the same logits, the loss is on
the completion only, resume continues exactly without unpickling, and the
cost of training is reported.

Every test that trains builds fresh tiny backbones: PEFT adapts the model in
place, so the session's `tiny_backbone` must not be handed to LoraTrainer."""

import math
from dataclasses import replace

import pytest
import torch
from peft import PeftModel

from toolken_plus.adapter import apply_lora, has_lora_adapter
from toolken_plus.backbone import tiny_random_backbone
from toolken_plus.config.methods import LoraMethod
from toolken_plus.config.schema import TrainerConfig
from toolken_plus.data.text_examples import TextExample
from toolken_plus.train.lora import IGNORE, LoraTrainer, encode_text_example

TRAIN = [TextExample(f"t{i}", f"Question: what is {i} plus {i + 1}?", f" <add>({i}, {i + 1})={2 * i + 1}. The answer is {2 * i + 1}.")
         for i in range(6)]
VAL = [TextExample("v0", "Question: what is 7 plus 8?", " <add>(7, 8)=15. The answer is 15.")]
# A large lr so that a few steps move the logits measurably; dropout on, so resume must replay its masks.
METHOD = LoraMethod(r=4, alpha=8, dropout=0.1, target_modules=["q_proj", "v_proj"], lr=1e-2, max_length=64)


def fresh(tokenizer):
    """The same random weights every time (seeded): a fresh copy of the base model."""
    return tiny_random_backbone(tokenizer, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)


def trainer_cfg(epochs: int) -> TrainerConfig:
    return TrainerConfig(epochs=epochs, batch_size=2, progress=False)


def lora_weights(trainer: LoraTrainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.params}


def logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer("Question: what is 2 plus 3? <add>(2, 3)=", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_training_changes_only_lora_weights(smol_tokenizer, tmp_path):
    backbone = fresh(smol_tokenizer)
    base = [(p, p.detach().clone()) for p in backbone.model.parameters()]
    trainer = LoraTrainer(backbone, METHOD, trainer_cfg(1), tmp_path)
    assert trainer.params and all("lora_" in name for name, _ in trainer.params)
    before = lora_weights(trainer)
    trainer.fit(TRAIN)
    assert all(torch.equal(p, saved) for p, saved in base)
    after = lora_weights(trainer)
    assert any(not torch.equal(before[name], after[name]) for name in before)


def test_saved_adapter_reloads_to_the_same_logits(smol_tokenizer, tmp_path):
    run = tmp_path / "run"
    trainer = LoraTrainer(fresh(smol_tokenizer), METHOD, trainer_cfg(2), run)
    trainer.fit(TRAIN)
    trainer.save(run)
    assert has_lora_adapter(run) and (run / "adapter_model.safetensors").is_file()
    assert not (run / "README.md").exists()  # PEFT's model card is not copied
    tuned = logits(trainer.model, smol_tokenizer)
    assert not torch.allclose(tuned, logits(fresh(smol_tokenizer).model, smol_tokenizer), atol=1e-4)

    reloaded = PeftModel.from_pretrained(fresh(smol_tokenizer).model, run).eval()
    torch.testing.assert_close(logits(reloaded, smol_tokenizer), tuned)

    base = fresh(smol_tokenizer)
    merged = apply_lora(base, run)
    torch.testing.assert_close(logits(merged.model, smol_tokenizer), tuned, atol=1e-5, rtol=1e-4)
    assert merged.name == base.name + "+lora" and merged.revision.startswith(base.revision + "+lora-")
    assert not merged.model.training and not any(p.requires_grad for p in merged.model.parameters())
    assert not any("lora_" in name for name, _ in merged.model.named_parameters())  # a plain transformers model


def test_apply_lora_refuses_a_missing_or_foreign_adapter(smol_tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        apply_lora(fresh(smol_tokenizer), tmp_path)
    trainer = LoraTrainer(fresh(smol_tokenizer), METHOD, trainer_cfg(1), tmp_path)
    trainer.fit(TRAIN[:2])
    trainer.save(tmp_path)
    other = tiny_random_backbone(smol_tokenizer, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    with pytest.raises(ValueError, match="trained on backbone"):
        apply_lora(other, tmp_path)


def test_loss_is_masked_on_the_prompt(smol_tokenizer):
    ex = TextExample("a", "What is 2 plus 3?", " <add>(2, 3)=5")
    prompt = smol_tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
    completion = smol_tokenizer(ex.completion, add_special_tokens=False)["input_ids"] + [smol_tokenizer.eos_token_id]
    enc = encode_text_example(smol_tokenizer, ex, 512)
    assert enc.input_ids == prompt + completion
    assert enc.labels == [IGNORE] * len(prompt) + completion
    assert not enc.completion_cut


def test_long_prompts_lose_their_left_end_and_keep_the_completion(smol_tokenizer):
    ex = TextExample("b", "filler words " * 100 + "so what is 2 plus 3?", " <add>(2, 3)=5")
    prompt = smol_tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
    completion = smol_tokenizer(ex.completion, add_special_tokens=False)["input_ids"] + [smol_tokenizer.eos_token_id]
    enc = encode_text_example(smol_tokenizer, ex, 32)
    kept = 32 - len(completion)
    assert enc.input_ids == prompt[-kept:] + completion
    assert enc.labels == [IGNORE] * kept + completion and not enc.completion_cut

    # A completion longer than max_length on its own: no prompt left, its end cut, and reported.
    enc = encode_text_example(smol_tokenizer, TextExample("c", "Why?", " because" * 40), 16)
    assert len(enc.input_ids) == 16 and IGNORE not in enc.labels and enc.completion_cut


def test_resume_continues_exactly_and_refuses_other_settings(smol_tokenizer, tmp_path, monkeypatch):
    straight = LoraTrainer(fresh(smol_tokenizer), METHOD, trainer_cfg(2), tmp_path / "straight")
    straight.fit(TRAIN, VAL)

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load (unpickling) called")

    monkeypatch.setattr(torch, "load", no_pickle)
    run = tmp_path / "resumed"
    LoraTrainer(fresh(smol_tokenizer), METHOD, trainer_cfg(1), run).fit(TRAIN, VAL)
    resumed = LoraTrainer(fresh(smol_tokenizer), METHOD, trainer_cfg(2), run)
    metrics = resumed.fit(TRAIN, VAL)
    assert metrics["epochs"] == 2 and [h["epoch"] for h in resumed.history] == [1, 2]
    expected = lora_weights(straight)
    for name, weight in lora_weights(resumed).items():
        torch.testing.assert_close(weight, expected[name])
    assert metrics["val/loss"] == pytest.approx(straight.history[-1]["val/loss"], rel=1e-5)

    # A finished run reloads its adapter and returns.
    again = LoraTrainer(fresh(smol_tokenizer), METHOD, trainer_cfg(2), run)
    assert again.fit(TRAIN, VAL)["train/loss"] == metrics["train/loss"]
    for name, weight in lora_weights(again).items():
        torch.testing.assert_close(weight, expected[name])

    with pytest.raises(ValueError, match=r"method\.lr") as err:
        LoraTrainer(fresh(smol_tokenizer), replace(METHOD, lr=1e-3), trainer_cfg(2), run).fit(TRAIN, VAL)
    assert "resume=false" in str(err.value)
    restarted = LoraTrainer(fresh(smol_tokenizer), replace(METHOD, lr=1e-3), trainer_cfg(1), run, resume=False)
    assert restarted.fit(TRAIN, VAL)["epochs"] == 1


def test_cost_metrics(smol_tokenizer, tmp_path):
    logged = []

    class Logger:
        def log(self, metrics, step=None):
            logged.append((step, metrics))

    method = replace(METHOD, max_length=24)
    long_answer = TextExample("long", "Why?", " because" * 40)
    trainer = LoraTrainer(fresh(smol_tokenizer), method, trainer_cfg(1), tmp_path, logger=Logger())
    metrics = trainer.fit([*TRAIN, long_answer], VAL)
    # r=4 on q_proj and v_proj (16 → 16) in 2 layers: 2 × 2 × (4·16 + 16·4)
    assert metrics["cost/trainable_params"] == 512 < metrics["cost/total_params"]
    assert metrics["cost/train_seconds"] > 0 and metrics["cost/examples_per_s"] > 0
    assert metrics["cost/peak_memory_mb"] > 10
    assert metrics["train/examples"] == 7 and metrics["train/completions_cut"] == 1 and metrics["epochs"] == 1
    assert metrics["train/tokens"] <= 7 * 24
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["val/loss"])
    assert logged[0][0] == 1 and "train/loss" in logged[0][1]
    assert logged[-1] == (1, metrics)


def test_batched_loss_equals_the_sum_of_single_example_losses(smol_tokenizer, tmp_path):
    """Left padding, position ids and logits for the last columns only change
    nothing: a batch's summed loss is its examples' losses one at a time, as a
    full forward computes them."""
    import torch.nn.functional as F

    backbone = fresh(smol_tokenizer)
    trainer = LoraTrainer(backbone, METHOD, trainer_cfg(1), tmp_path)
    trainer.model.eval()
    examples = [TRAIN[0], TextExample("long", "Question: a much longer question about " + "apples, " * 12 + "then what?",
                                      " <add>(1, 2)=3."), VAL[0]]
    enc = [encode_text_example(smol_tokenizer, ex, 64) for ex in examples]
    with torch.no_grad():
        batched, n = trainer._loss(enc)
        single = [trainer._loss([e]) for e in enc]
        full = []
        for e in enc:  # the plain way: every logit, no padding
            logits = trainer.model(input_ids=torch.tensor([e.input_ids])).logits[0, :-1]
            full.append(F.cross_entropy(logits, torch.tensor(e.labels[1:]), ignore_index=IGNORE, reduction="sum"))
    assert n == sum(k for _, k in single) == sum(sum(lab != IGNORE for lab in e.labels[1:]) for e in enc)
    assert torch.allclose(batched, sum(s for s, _ in single), atol=1e-4)
    assert torch.allclose(batched, sum(full), atol=1e-4)


def test_micro_batches_bound_the_padded_tokens_and_give_the_same_update(smol_tokenizer, tmp_path):
    from toolken_plus.train.lora import micro_batches

    enc = [encode_text_example(smol_tokenizer, ex, 64) for ex in TRAIN]
    pieces = micro_batches(enc, 40)
    assert [e for p in pieces for e in p] == enc and len(pieces) > 1
    assert all(len(p) == 1 or len(p) * max(len(e.input_ids) for e in p) <= 40 for p in pieces)
    # one step over the whole batch at once, or in micro-batches: the same LoRA weights (no dropout)
    method = replace(METHOD, dropout=0.0)
    weights = []
    for max_tokens in (10_000, 40):
        trainer = LoraTrainer(fresh(smol_tokenizer), replace(method, max_tokens_per_micro_batch=max_tokens),
                              TrainerConfig(epochs=1, batch_size=len(TRAIN), progress=False), tmp_path / str(max_tokens))
        trainer.fit(TRAIN)
        weights.append(lora_weights(trainer))
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-6) for k in weights[0])

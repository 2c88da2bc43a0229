"""The LoRA fine-tuning baseline (method=lora): supervised fine-tuning of the
backbone with a PEFT LoRA adapter on prompt → completion texts.

The loss is the mean token loss on the completion (and its EOS) only; the
prompt is context. After every epoch a checkpoint is written to
`<run_dir>/checkpoints/last/`: the adapter in PEFT's format, the AdamW state
as safetensors and `trainer_state.json` (epoch, history, the settings a
resumed run must share). `fit` resumes from it; nothing is ever unpickled.
The finished adapter goes into the run dir itself (`save`), where
`toolken_plus.adapter.apply_lora` merges it into a backbone for inference.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from tqdm.auto import tqdm

from toolken_plus.adapter.config import CheckpointError
from toolken_plus.adapter.lora import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, file_sha256
from toolken_plus.backbone.model import Backbone
from toolken_plus.config.methods import LoraMethod
from toolken_plus.config.schema import TrainerConfig
from toolken_plus.data.text_examples import TextExample
from toolken_plus.rundir import atomic_write, make_temp_dir
from toolken_plus.train.trainer import ResumeMismatch

log = logging.getLogger(__name__)

STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
STATE_FORMAT = "toolken_plus.lora_state/1"
IGNORE = -100  # label of tokens without loss (prompt, padding), as in transformers
# Settings a resumed run must share with its checkpoint (option name → key in
# the state); `epochs` may differ (that is how a finished run is extended).
RESUME_MUST_MATCH = {"method.r": "r", "method.alpha": "alpha", "method.dropout": "dropout",
                     "method.target_modules": "target_modules", "method.lr": "lr", "method.max_length": "max_length",
                     "trainer.batch_size": "batch_size", "trainer.weight_decay": "weight_decay", "seed": "seed",
                     "backbone": "backbone", "training examples (count)": "n_train",
                     "training texts (digest)": "train_digest"}


@dataclass(frozen=True)
class EncodedText:
    input_ids: list[int]
    labels: list[int]  # IGNORE on the prompt: the loss is on the completion + EOS
    completion_cut: bool  # the completion alone was longer than max_length: its end is lost


def encode_text_example(tokenizer, example: TextExample, max_length: int) -> EncodedText:
    """Prompt tokens, then completion tokens + EOS, at most `max_length`.

    Too long: the prompt loses tokens from its left (its end, next to the
    completion, matters most); only a completion longer than max_length on
    its own is cut, at its end, which `completion_cut` reports."""
    prompt = tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
    completion = tokenizer(example.completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    cut = len(completion) > max_length
    completion = completion[:max_length]
    prompt = prompt[max(0, len(prompt) - (max_length - len(completion))):]
    return EncodedText(prompt + completion, [IGNORE] * len(prompt) + completion, cut)


def collate(batch: list[EncodedText], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded input_ids, attention_mask, position_ids (each row counts
    from 0 at its first real token, as generation does) and labels (IGNORE
    on padding). Left padding lines the completions up at the end, so the
    loss needs the vocabulary logits of the last columns only (`keep`)."""
    width = max(len(e.input_ids) for e in batch)
    pad = [width - len(e.input_ids) for e in batch]
    labelled = [next((j for j, lab in enumerate(e.labels) if lab != IGNORE), len(e.labels)) for e in batch]
    return {"input_ids": torch.tensor([[pad_id] * n + e.input_ids for e, n in zip(batch, pad)]),
            "attention_mask": torch.tensor([[0] * n + [1] * len(e.input_ids) for e, n in zip(batch, pad)]),
            "position_ids": torch.tensor([[0] * n + list(range(len(e.input_ids))) for e, n in zip(batch, pad)]),
            "labels": torch.tensor([[IGNORE] * n + e.labels for e, n in zip(batch, pad)]),
            # columns whose logits the loss reads: from the one predicting each row's first label
            "keep": max(min(width, len(e.input_ids) - first + 1) for e, first in zip(batch, labelled))}


def count_targets(e: EncodedText) -> int:
    """Tokens the loss predicts in an example (labelled, after the first position)."""
    return sum(lab != IGNORE for lab in e.labels[1:])


def micro_batches(batch: list[EncodedText], max_tokens: int) -> list[list[EncodedText]]:
    """Consecutive pieces of `batch` whose padded size (rows × longest row)
    is at most max_tokens (a longer example alone is its own piece)."""
    out, cur, width = [], [], 0
    for e in batch:
        w = max(width, len(e.input_ids))
        if cur and w * (len(cur) + 1) > max_tokens:
            out.append(cur)
            cur, w = [], len(e.input_ids)
        cur.append(e)
        width = w
    return out + [cur] if cur else out


class LoraTrainer:
    """Fine-tunes `backbone.model` with a LoRA adapter.

    PEFT injects the LoRA layers into `backbone.model` in place, so after
    construction the caller's Backbone holds the adapted model: do not reuse
    it for toolken work (or as a base model). For inference, `save` the
    adapter and merge it into a freshly loaded backbone with `apply_lora`.
    """

    def __init__(self, backbone: Backbone, method: LoraMethod, trainer: TrainerConfig, run_dir: str | Path, *,
                 seed: int = 0, resume: bool = True, logger=None):
        self.backbone = backbone
        self.method = method
        self.cfg = trainer
        self.run_dir = Path(run_dir)
        self.seed = seed
        self.resume = resume
        self.logger = logger
        config = LoraConfig(r=method.r, lora_alpha=method.alpha, lora_dropout=method.dropout,
                            target_modules=list(method.target_modules), task_type="CAUSAL_LM")
        # LoRA's A matrices start random: the seed fixes them without touching the caller's RNG.
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.model = get_peft_model(backbone.model, config)
        # Written into adapter_config.json, where apply_lora checks them
        # (PEFT would record the model's name_or_path, empty for models built in code).
        peft_config = self.model.peft_config["default"]
        peft_config.base_model_name_or_path, peft_config.revision = backbone.name, backbone.revision
        # Only the LoRA matrices require grad (the backbone is frozen, PEFT adds trainable layers).
        self.params = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW([p for _, p in self.params], lr=method.lr, weight_decay=trainer.weight_decay)
        self.epoch = 0  # epochs completed
        self.history: list[dict] = []

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints" / "last"

    # ------------------------------------------------------------ training
    def fit(self, train: list[TextExample], val: list[TextExample] = ()) -> dict:
        """Train for trainer.epochs epochs (resuming from the checkpoint when
        there is one) and return the metrics, which also go to the logger."""
        if not train:
            raise ValueError("LoRA training needs at least one training example")
        tokenizer = self.backbone.tokenizer
        train_enc = [encode_text_example(tokenizer, ex, self.method.max_length) for ex in train]
        val_enc = [encode_text_example(tokenizer, ex, self.method.max_length) for ex in val]
        settings = self._settings(train)
        self._try_resume(settings)
        while self.epoch < self.cfg.epochs:
            start = time.perf_counter()
            loss = self._train_epoch(train_enc)
            record = {"epoch": self.epoch + 1, "train/loss": loss, "epoch_seconds": time.perf_counter() - start}
            self.epoch += 1
            if not math.isfinite(loss):
                raise FloatingPointError(f"LoRA training diverged in epoch {self.epoch}: non-finite loss "
                                         f"(method.lr={self.method.lr}); the last checkpoint is kept")
            if val_enc:
                record["val/loss"] = self.evaluate(val_enc)
            self.history.append(record)
            log.info("epoch %d/%d  %s", self.epoch, self.cfg.epochs,
                     "  ".join(f"{k} {v:.5f}" for k, v in record.items() if "/" in k))
            if self.logger is not None:
                self.logger.log(record, step=self.epoch)
            self._save_checkpoint(settings)
        self.model.eval()
        metrics = self._metrics(train_enc)
        if self.logger is not None:
            self.logger.log(metrics, step=self.epoch)
        return metrics

    def _train_epoch(self, data: list[EncodedText]) -> float:
        """One pass in a seeded order; the mean completion-token loss."""
        # Order and dropout masks depend on (seed, epoch) only, so a resumed
        # run trains exactly as one that never stopped.
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        bs = max(1, self.cfg.batch_size)
        total, tokens = 0.0, 0
        self.model.train()  # LoRA dropout on
        with torch.random.fork_rng():
            torch.manual_seed(self.seed + self.epoch)
            bar = tqdm(range(0, len(order), bs), desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}",
                       disable=not self.cfg.progress, leave=False, unit="step")
            for s in bar:
                batch = [data[i] for i in order[s : s + bs]]
                n = sum(count_targets(e) for e in batch)
                if n == 0:  # only possible with a tiny max_length: nothing left to predict
                    continue
                self.optimizer.zero_grad(set_to_none=True)
                for micro in micro_batches(batch, self.method.max_tokens_per_micro_batch):
                    loss_sum, _ = self._loss(micro)
                    (loss_sum / n).backward()  # the batch's mean token loss, accumulated
                    total += loss_sum.item()
                self.optimizer.step()
                tokens += n
        return total / max(tokens, 1)

    @torch.no_grad()
    def evaluate(self, data: list[EncodedText]) -> float:
        """Mean token loss on the completions (dropout off)."""
        self.model.eval()
        total, tokens = 0.0, 0
        for micro in micro_batches(data, self.method.max_tokens_per_micro_batch):
            loss_sum, n = self._loss(micro)
            total += loss_sum.item()
            tokens += n
        return total / max(tokens, 1)

    def _loss(self, batch: list[EncodedText]) -> tuple[torch.Tensor, int]:
        """Summed next-token loss over the labelled tokens, and their count
        (summed, so epochs and batches average over tokens, not batches)."""
        t = collate(batch, self.backbone.tokenizer.pad_token_id)
        device = self.params[0][1].device
        # Only the last `keep` columns' vocabulary logits: a 49k-wide row per
        # prompt token would dominate memory (batch × length × vocabulary).
        logits = self.model(input_ids=t["input_ids"].to(device), attention_mask=t["attention_mask"].to(device),
                            position_ids=t["position_ids"].to(device), logits_to_keep=t["keep"]).logits
        targets = t["labels"][:, -t["keep"] + 1:].to(device) if t["keep"] > 1 else t["labels"][:, :0].to(device)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum")
        return loss, int((targets != IGNORE).sum())

    def _metrics(self, train_enc: list[EncodedText]) -> dict:
        last = self.history[-1] if self.history else {}
        seconds = sum(h["epoch_seconds"] for h in self.history)  # every epoch of the run, resumed ones included
        # ru_maxrss: KiB on Linux, bytes on macOS. The process's peak, so it includes the loaded model.
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1024)
        return {**{k: last[k] for k in ("train/loss", "val/loss") if k in last},
                "epochs": self.epoch,
                "train/examples": len(train_enc),
                "train/tokens": sum(len(e.input_ids) for e in train_enc),
                "train/completions_cut": sum(e.completion_cut for e in train_enc),
                "cost/train_seconds": seconds,
                "cost/trainable_params": sum(p.numel() for _, p in self.params),
                "cost/total_params": sum(p.numel() for p in self.model.parameters()),
                "cost/peak_memory_mb": peak_mb,
                "cost/examples_per_s": len(train_enc) * len(self.history) / seconds if seconds > 0 else 0.0}

    # ----------------------------------------------------------- saving
    def save(self, run_dir: str | Path) -> None:
        """The adapter in PEFT's format in `run_dir` (adapter_config.json,
        adapter_model.safetensors): `PeftModel.from_pretrained(base, run_dir)`
        or `apply_lora` load it."""
        self._write_adapter(Path(run_dir), Path(run_dir))

    def _write_adapter(self, target: Path, temp_parent: Path, extra: dict[str, bytes] | None = None) -> dict[str, str]:
        """save_pretrained into a temp dir (it writes a README.md model card
        too, which is dropped), then each file renamed into `target`, weights
        before config. Returns the sha256 of each file written."""
        target.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(temp_parent)  # `.tmp-<pid>-…`: a crashed writer's leftovers are removed by RunDirLock
        try:
            # save_embedding_layers=False: the embeddings are never trained or
            # resized here, and "auto" would look base_model_name_or_path (our
            # backbone's name) up on the HF Hub to find out.
            self.model.save_pretrained(tmp, save_embedding_layers=False)
            for name, data in (extra or {}).items():
                (tmp / name).write_bytes(data)
            digests = {}
            for name in [*(extra or {}), ADAPTER_WEIGHTS_NAME, ADAPTER_CONFIG_NAME]:
                digests[name] = file_sha256(tmp / name)
                os.replace(tmp / name, target / name)
            return digests
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _save_checkpoint(self, settings: dict) -> None:
        """Adapter + optimizer files first, trainer_state.json last: the state
        is the commit record and holds the digests of the others, so a save
        torn by a crash is detected on resume instead of mixing two epochs."""
        tensors, steps = {}, {}
        for i, (_, p) in enumerate(self.params):
            for key, value in self.optimizer.state.get(p, {}).items():
                if key == "step":
                    steps[str(i)] = float(value)
                else:
                    tensors[f"state.{i}.{key}"] = value.detach().contiguous()
        digests = self._write_adapter(self.checkpoint_dir, self.checkpoint_dir.parent, {OPTIMIZER_NAME: safetensors_bytes(tensors)})
        state = {"format": STATE_FORMAT, "epoch": self.epoch, "history": self.history, "settings": settings,
                 "optimizer": {"params": [name for name, _ in self.params], "step": steps}, "files": digests}
        atomic_write(self.checkpoint_dir / STATE_NAME, lambda p: Path(p).write_text(json.dumps(state, indent=1)))

    def _try_resume(self, settings: dict) -> None:
        path = self.checkpoint_dir / STATE_NAME
        if not path.is_file():
            return
        if not self.resume:
            # Without its commit record the old files are inert; the first epoch replaces them.
            log.info("resume=false: training starts over; the checkpoint in %s is replaced", path.parent)
            path.unlink()
            return
        state = _read_state(path)
        diffs = [f"{option}: {state['settings'].get(key)!r} in the checkpoint, {settings[key]!r} now"
                 for option, key in RESUME_MUST_MATCH.items() if state["settings"].get(key) != settings[key]]
        if diffs:
            raise ResumeMismatch(f"{path} was written by a run with other settings:\n  " + "\n  ".join(diffs)
                                 + "\nuse a fresh hydra.run.dir, rerun with the checkpoint's settings, "
                                   "or pass resume=false to start over")
        for name, digest in state["files"].items():
            if not (path.parent / name).is_file() or file_sha256(path.parent / name) != digest:
                raise CheckpointError(f"{path.parent / name} does not match {STATE_NAME} (a save interrupted by a crash?); "
                                      f"rerun with resume=false to start over")
        self._load_adapter(load_file(str(path.parent / ADAPTER_WEIGHTS_NAME)), path.parent)
        self._load_optimizer(load_file(str(path.parent / OPTIMIZER_NAME)), state["optimizer"], path.parent)
        self.epoch, self.history = state["epoch"], list(state["history"])
        log.info("resumed from %s after epoch %d", path.parent, self.epoch)

    def _load_adapter(self, weights: dict[str, torch.Tensor], where: Path) -> None:
        result = set_peft_model_state_dict(self.model, weights)
        missing = [k for k in result.missing_keys if "lora_" in k]  # the backbone's own weights are "missing" too
        if result.unexpected_keys or missing:
            raise CheckpointError(f"{where / ADAPTER_WEIGHTS_NAME} does not fit this adapter (unexpected "
                                  f"{result.unexpected_keys[:3]}, missing {missing[:3]}); rerun with resume=false")

    def _load_optimizer(self, tensors: dict[str, torch.Tensor], saved: dict, where: Path) -> None:
        names = [name for name, _ in self.params]
        if saved.get("params") != names:
            raise CheckpointError(f"{where / OPTIMIZER_NAME}: saved for other parameters; rerun with resume=false")
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            _, i, name = key.split(".", 2)  # state.<param index>.<exp_avg | exp_avg_sq>
            if value.shape != self.params[int(i)][1].shape:
                raise CheckpointError(f"{where / OPTIMIZER_NAME}: {key} has shape {tuple(value.shape)}, "
                                      f"its parameter {tuple(self.params[int(i)][1].shape)}; rerun with resume=false")
            state.setdefault(int(i), {})[name] = value
        for i, step in saved.get("step", {}).items():
            state.setdefault(int(i), {})["step"] = torch.tensor(step, dtype=torch.float32)  # AdamW keeps it as a tensor
        self.optimizer.load_state_dict({"state": state, "param_groups": self.optimizer.state_dict()["param_groups"]})

    def _settings(self, train: list[TextExample]) -> dict:
        m = self.method
        texts = hashlib.sha256(json.dumps([[ex.id, ex.prompt, ex.completion] for ex in train]).encode()).hexdigest()
        return {"r": m.r, "alpha": m.alpha, "dropout": m.dropout, "target_modules": sorted(m.target_modules),
                "lr": m.lr, "max_length": m.max_length, "batch_size": self.cfg.batch_size,
                "weight_decay": self.cfg.weight_decay, "seed": self.seed,
                "backbone": f"{self.backbone.name}@{self.backbone.revision}", "n_train": len(train),
                "train_digest": texts}


def _read_state(path: Path) -> dict:
    """trainer_state.json, refused with a message naming it unless it is what _save_checkpoint writes."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        state = {"error": f"{type(err).__name__}: {err}"}
    ok = (isinstance(state, dict) and state.get("format") == STATE_FORMAT and isinstance(state.get("epoch"), int)
          and isinstance(state.get("history"), list) and isinstance(state.get("settings"), dict)
          and isinstance(state.get("optimizer"), dict) and isinstance(state.get("files"), dict))
    if not ok:
        raise CheckpointError(f"{path}: not a toolken_plus LoRA training state; delete it, or rerun with resume=false")
    return state

"""The training recipe of the LoRA baseline (train.py method=lora): the
task's training data written as text with its calls (Task.text_examples) →
PEFT LoRA fine-tuning (lora.py) → the adapter in PEFT's format, plus
method_config.json (method, base model, task) and metrics.json in the run dir.

    recipe = TrainLoraRecipe(TrainConfig(task=Gsm8kXL(), method=LoraMethod()), "runs/lora")
    metrics = recipe.run()

Same task data, split and validation set as the toolken recipe; a rerun in
the same run dir resumes from the last epoch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from pathlib import Path

from toolken_plus.adapter.text_run import TextRunRecord
from toolken_plus.backbone import DEFAULT_BACKBONE, backbone_spec, build_backbone
from toolken_plus.config import cache_dir, to_plain
from toolken_plus.config.device import resolve_placement
from toolken_plus.config.validation import validate_config
from toolken_plus.data.locate import task_root
from toolken_plus.loggers import build_logger
from toolken_plus.tasks import Task
from toolken_plus.train.lora import LoraTrainer
from toolken_plus.train.recipe import Recipe, seed_everything

log = logging.getLogger(__name__)


class TrainLoraRecipe(Recipe):
    def setup(self) -> None:
        cfg = validate_config(self.cfg)
        self.placement = resolve_placement(cfg)  # device=cuda without a GPU stops here
        if not isinstance(cfg.task, Task):
            raise ValueError("task=… is required (e.g. experiment=gsm8k_xl)")
        if not hasattr(cfg.task, "text_examples"):
            raise ValueError(f"task {cfg.task.name!r} has no text form of its training data: method=lora does not apply")
        if cfg.reranker is not None and getattr(cfg.reranker, "trains", False):
            raise ValueError("method=lora has no toolkens to rerank: drop reranker=…")
        if cfg.tools.add:
            raise ValueError("tools.add extends a toolken checkpoint: it does not apply to method=lora")
        seed_everything(cfg.seed)
        self.lock.acquire()
        self.task: Task = cfg.task
        self.data = self.task.load(cfg.data)
        for note in self.data.notes:
            log.info(note)
        if not self.data.train:
            raise ValueError("no training examples (check data.limit_train and the data files)")
        root = task_root(cfg.data, self.task)
        self.train_text = self.task.text_examples(self.data.train, root)
        self.val_text = self.task.text_examples(self.data.val, root)
        self.model_spec = cfg.model or DEFAULT_BACKBONE
        if self.backbone is None:
            t0 = time.perf_counter()
            self.backbone = build_backbone(self.model_spec, cache_dir(cfg), self.placement)
            log.info("backbone %s loaded in %.1f s", self.backbone.name, time.perf_counter() - t0)
        self.base_name, self.base_revision = self.backbone.name, self.backbone.revision  # before PEFT wraps the model
        self.logger = build_logger(cfg.logger, self.run_dir, to_plain(cfg))
        self.trainer = LoraTrainer(self.backbone, cfg.method, cfg.trainer, self.run_dir, seed=cfg.seed,
                                   resume=cfg.resume, logger=self.logger)

    def train(self) -> dict:
        metrics = self.trainer.fit(self.train_text, self.val_text)
        metrics.update({"task": self.task.name, "method": "lora", "val/examples": len(self.val_text)})
        self.metrics = metrics
        return metrics

    def save(self) -> Path:
        self.trainer.save(self.run_dir)
        digest = hashlib.sha256("\n".join(e.prompt + e.completion for e in self.train_text).encode()).hexdigest()
        TextRunRecord(
            method=dataclasses.asdict(self.cfg.method),
            base_model={"name": self.base_name, "revision": self.base_revision, "spec": backbone_spec(self.model_spec)},
            task=self.task.config(),
            provenance={"data_hash": digest[:16], "train_examples": len(self.train_text), "epochs": self.trainer.epoch},
        ).save(self.run_dir)
        self.write_metrics()
        return self.run_dir

    def summary(self) -> str:
        m = self.metrics
        val = f", validation loss {m['val/loss']:.4f}" if "val/loss" in m else ""
        return (f"LoRA r={self.cfg.method.r}: {m['cost/trainable_params']:,} trainable parameters, {m['epochs']} epochs "
                f"on {m['train/examples']} examples in {m['cost/train_seconds']:.1f} s; train loss {m['train/loss']:.4f}"
                f"{val}; run dir: {self.run_dir}")

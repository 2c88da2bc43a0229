"""The training recipe behind train.py: task data → encodings → feature
caches → toolken head → calibrated bias → stage 2 (reranker) → adapter +
metrics in the run dir.

    recipe = TrainToolkensRecipe(TrainConfig(task=Gsm8kXL(), model=TinyRandomBackbone()), "runs/x")
    metrics = recipe.run()          # setup() → train() → save()

It speaks to the task only through the Task seam (tasks/base.py), to the
reranker only through its spec (`fit`), and takes a TrainConfig object or a
Hydra config composed on it.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch

import toolken_plus.distributed as distributed
from toolken_plus.adapter import ToolkenHead
from toolken_plus.backbone import DEFAULT_BACKBONE, Backbone, backbone_spec, build_backbone
from toolken_plus.config import as_config, cache_dir, to_plain
from toolken_plus.config.device import resolve_placement
from toolken_plus.config.schema import TrainConfig
from toolken_plus.config.validation import validate_config
from toolken_plus.data.encoding import context_start_ids
from toolken_plus.data.locate import task_root
from toolken_plus.loggers import build_logger
from toolken_plus.rerank import NoRerank
from toolken_plus.rundir import RunDirLock, atomic_write
from toolken_plus.tasks import Task
from toolken_plus.train.add_tools import ToolAddition
from toolken_plus.train.cache import build_feature_cache
from toolken_plus.train.rerank_fit import fit_reranker
from toolken_plus.train.trainer import CachedFeatures, ToolkenTrainer, calibrate_head_bias, evaluate_head

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Recipe:
    """The life of a training run: setup() → train() → save(), under the run
    dir's lock (self.lock), which run() releases whatever happens."""

    def __init__(self, cfg: TrainConfig, run_dir: str | Path, backbone: Backbone | None = None):
        self.cfg = as_config(cfg, TrainConfig)
        self.run_dir = Path(run_dir)
        self.backbone = backbone  # None: built from cfg.model in setup()
        self.lock = RunDirLock(self.run_dir)

    def close(self) -> None:
        self.lock.release()

    def run(self) -> dict:
        if distributed.rank() > 0:
            return self.run_helper()
        try:
            self.setup()
            metrics = self.train()
            self.save()
        finally:
            self.close()
        return metrics

    def run_helper(self) -> dict:
        """A torchrun rank > 0 (toolken_plus/distributed.py): help build what
        is built together, then stop; rank 0 trains and writes the run dir.
        Here: nothing (this recipe trains on rank 0 alone)."""
        log.info("rank %d of a torchrun launch: %s trains on rank 0 alone", distributed.rank(), type(self).__name__)
        return {}

    def write_metrics(self) -> None:
        atomic_write(self.run_dir / "metrics.json", lambda p: Path(p).write_text(json.dumps(self.metrics, indent=2)))
        self.logger.finish()


class TrainToolkensRecipe(Recipe):
    def run_helper(self) -> dict:
        """A torchrun rank > 0: build the feature caches with the other ranks
        (each forwards its share of the batches), then stop."""
        self.setup(caches_only=True)
        return {}

    # ---------------------------------------------------------------- setup
    def setup(self, caches_only: bool = False) -> None:
        cfg = validate_config(self.cfg)
        # device=cuda without a GPU stops here, before any data or model is loaded
        self.placement = resolve_placement(cfg)
        if not isinstance(cfg.task, Task):
            raise ValueError("task=… is required (e.g. experiment=gsm8k_xl, or task=custom …)")
        seed_everything(cfg.seed)
        if not caches_only:
            self.lock.acquire()  # released by close(); a second training here fails now, naming this pid
        # checkpoint=… tools.add=[…]: enlarge a trained head instead of starting one
        self.addition = ToolAddition.from_config(cfg)
        self.task: Task = self.addition.task_for(cfg.task) if self.addition else cfg.task
        self.data = self.task.load(cfg.data)
        for note in self.data.notes:
            log.info(note)
        if not self.data.train:
            raise ValueError("no training examples (check data.limit_train and the data files)")
        self.model_spec = cfg.model or DEFAULT_BACKBONE
        if self.backbone is None:
            t0 = time.perf_counter()
            self.backbone = build_backbone(self.model_spec, cache_dir(cfg), self.placement)
            log.info("backbone %s loaded in %.1f s on %s (%s)", self.backbone.name, time.perf_counter() - t0,
                     self.backbone.device, self.backbone.model.dtype)
        if self.addition:
            self.addition.check(self.data, self.task.name, self.backbone, task_root(cfg.data, self.task))
        tool_names = self.addition.tool_names if self.addition else self.data.tool_names
        tool_index = {n: i for i, n in enumerate(tool_names)}
        max_len = cfg.data.max_length
        tok = self.backbone.tokenizer
        self.train_enc = self.task.encode(tok, self.data.train, tool_index, max_len)
        self.val_enc = self.task.encode(tok, self.data.val, tool_index, max_len)
        self.call_counts = {"train": call_counts(self.train_enc, tool_names), "val": call_counts(self.val_enc, tool_names)}
        check_calls_survive(self.call_counts, max_len, self.addition.new_names if self.addition else [])
        # Every example follows the task's shared prefix (if any): its KV is computed once.
        # ... and begins their context: after the tokenizer's BOS, if it adds one (context_start_ids).
        prefix_ids = context_start_ids(tok, self.task.shared_prefix) if self.task.shared_prefix else None
        common = dict(dtype=cfg.cache.dtype, max_tokens_per_batch=cfg.cache.max_tokens_per_batch,
                      progress=cfg.trainer.progress, prefix_ids=prefix_ids)
        cache_root = cache_dir(cfg)
        self.train_cache = build_feature_cache(self.backbone, self.train_enc, cache_root, desc="train features", **common)
        self.val_cache = (build_feature_cache(self.backbone, self.val_enc, cache_root, desc="val features", **common)
                          if self.val_enc else None)
        if self.val_cache is None:
            log.warning("no validation examples: the logit bias stays 0 and no validation metrics are computed")
        if caches_only:
            return
        self.head = (self.addition.build_head(seed=cfg.seed) if self.addition
                     else ToolkenHead(tool_names, self.backbone.hidden_size, seed=cfg.seed))
        self.logger = build_logger(cfg.logger, self.run_dir, to_plain(cfg))
        self.trainer = ToolkenTrainer(
            self.head, self.train_cache, cfg.trainer, run_dir=self.run_dir, logger=self.logger,
            seed=cfg.seed, frozen_rows=self.addition.n_old if self.addition else 0, resume=cfg.resume,
            # A checkpoint is resumed only by a run on the same task and data selection.
            run_identity={"task": self.task.name, "limit_train": cfg.data.limit_train, "max_length": max_len},
            val=CachedFeatures(self.val_cache) if self.val_cache is not None else None,
        )

    # ---------------------------------------------------------------- train
    def train(self) -> dict:
        t0 = time.perf_counter()
        self.trainer.fit()
        if self.addition:  # grow the per-tool tensors (rerank rows) from the trained new rows
            self.addition.finish(self.head)
        train_seconds = time.perf_counter() - t0
        metrics: dict = {}
        bias = float(self.head.logit_bias)  # 0, or the base checkpoint's when adding tools
        if self.val_cache is not None:
            val = self.trainer.val
            metrics = {"val_bias0/" + k[4:]: v for k, v in evaluate_head(self.head, val, bias=0.0).items()}
            if self.addition is None or self.addition.recalibrate_bias:
                bias = calibrate_head_bias(self.head, val, tuple(self.cfg.calibration.grid))
            metrics.update(evaluate_head(self.head, val))
        metrics.update({
            "logit_bias": bias,
            "epochs": self.trainer.epoch,
            "train/loss": self.trainer.history[-1]["train/loss"] if self.trainer.history else None,
            "train/examples": len(self.data.train),
            "train/positions": len(self.train_cache),
            "train/gold_calls": int(self.train_cache.meta["n_tool_positions"]),
            "train/calls_lost": self.call_counts["train"]["lost"],
            "val/calls_lost": self.call_counts["val"]["lost"],
            "val/examples": len(self.data.val),
            "time/train_epochs_s": round(train_seconds, 2),
            "time/train_cache_build_s": self.train_cache.meta["build_seconds"],
            "cache/train_tokens_per_s": self.train_cache.meta["tokens_per_second"],
        })
        metrics.update(self.train_reranker())
        metrics.update(self.cost(metrics))
        self.logger.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=self.trainer.epoch)
        self.metrics = metrics
        return metrics

    def train_reranker(self) -> dict:
        """Stage 2 (Toolken+), on top of the trained and calibrated stage-1 head."""
        spec = self.cfg.reranker or NoRerank()
        if not spec.trains:
            return {}
        t0 = time.perf_counter()
        out = fit_reranker(spec, self.backbone, self.head, prefix=self.task.shared_prefix, tool_docs=self.data.tool_docs,
                           train_enc=self.train_enc, train_feats=self.trainer.data, val_enc=self.val_enc,
                           val_feats=self.trainer.val,
                           seed=self.cfg.seed, progress=self.cfg.trainer.progress,
                           frozen_tools=self.addition.n_old if self.addition else 0,
                           trainer_cfg=self.cfg.trainer, grid=tuple(self.cfg.calibration.grid),
                           call_prior=self.task.call_prior)
        out["time/reranker_s"] = round(time.perf_counter() - t0, 2)
        log.info("reranker %s: %s", spec.name, {k: v for k, v in out.items() if "rerank" in k})
        return out

    def cost(self, metrics: dict) -> dict:
        """What training cost, in the keys the LoRA baseline reports too
        (cli/report.py compares them): wall time of the feature cache (as
        first built, also when this run found it built), the epochs and the
        reranker; trained parameters; the process's peak memory."""
        seconds = (metrics["time/train_cache_build_s"] + metrics["time/train_epochs_s"]
                   + metrics.get("time/reranker_s", 0.0))
        trainable = sum(p.numel() for p in self.head.parameters() if p.requires_grad)
        return {"task": self.task.name, "method": "toolkens",
                "cost/train_seconds": round(seconds, 2),
                "cost/trainable_params": trainable,
                "cost/total_params": trainable + sum(p.numel() for p in self.backbone.model.parameters()),
                "cost/peak_memory_mb": peak_memory_mb(),
                "cost/examples_per_s": len(self.data.train) * self.trainer.epoch / seconds if seconds > 0 else 0.0}

    # ----------------------------------------------------------------- save
    def save(self) -> Path:
        provenance = {
            "data_hash": self.train_cache.meta["data_digest"][:16],
            "train_examples": len(self.data.train),
            "epochs": self.trainer.epoch,
        }
        tool_docs = self.data.tool_docs
        if self.addition:
            self.addition.verify(self.head)
            provenance.update(self.addition.provenance())
            tool_docs = self.addition.new_docs  # the old tools keep the doc hashes they were trained with
        self.head.save_pretrained(self.run_dir, backbone=self.backbone, model_spec=backbone_spec(self.model_spec),
                                  tool_docs=tool_docs, task=self.task.config(), provenance=provenance)
        self.write_metrics()
        return self.run_dir

    def summary(self) -> str:
        return summary(self)


def peak_memory_mb() -> float:
    """The process's peak resident memory so far (the loaded model included)."""
    import resource
    import sys

    # ru_maxrss: KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1024)


def call_counts(encoded, tool_names: list[str]) -> dict:
    """Gold calls that survived encoding, per tool, and calls lost to truncation."""
    per_tool = dict.fromkeys(tool_names, 0)
    for e in encoded:
        for k in e.tool_label[e.tool_label >= 0]:
            per_tool[tool_names[int(k)]] += 1
    return {"kept": sum(per_tool.values()), "lost": sum(e.n_calls_lost for e in encoded), "per_tool": per_tool}


def check_calls_survive(counts: dict, max_length: int, must_have: list[str] = ()) -> None:
    """Say how many calls truncation cost; stop when the training data keeps
    none (a head trained on zero gold calls learns only "never call"), or none
    of a tool being added."""
    for split, c in counts.items():
        if c["lost"]:
            log.warning("%s: %d tool call(s) lost to truncation at data.max_length=%d (%d kept)",
                        split, c["lost"], max_length, c["kept"])
    train = counts["train"]
    hint = (f"{train['lost']} were lost to truncation at data.max_length={max_length}: raise it"
            if train["lost"] else "check the data files and the task's tools")
    if train["kept"] == 0:
        raise ValueError(f"no gold tool call survives in the training data ({hint})")
    silent = [n for n in must_have if train["per_tool"].get(n, 0) == 0]
    if silent:
        raise ValueError(f"no gold call of {silent} survives in the training data ({hint})")


def format_metrics_table(metrics: dict, tool_names: list[str], prefix: str = "val/") -> str:
    """Per-tool precision/recall/F1 as a small text table."""
    rows = [f"{'tool':<12}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for name in tool_names:
        rows.append(f"{'<' + name + '>':<12}{metrics[f'{prefix}{name}/precision']:>10.3f}"
                    f"{metrics[f'{prefix}{name}/recall']:>10.3f}{metrics[f'{prefix}{name}/f1']:>10.3f}"
                    f"{int(metrics[f'{prefix}{name}/support']):>10d}")
    rows.append(f"{'all (micro)':<12}{metrics[f'{prefix}precision']:>10.3f}{metrics[f'{prefix}recall']:>10.3f}"
                f"{metrics[f'{prefix}f1']:>10.3f}{int(metrics[f'{prefix}gold_calls']):>10d}")
    return "\n".join(rows)


def summary(recipe: TrainToolkensRecipe) -> str:
    """What train.py prints at the end."""
    m, names = recipe.metrics, recipe.head.tool_names
    if "val/f1" not in m:
        return f"trained {len(names)} toolkens without validation data; run dir: {recipe.run_dir}"
    kept = recipe.addition is not None and not recipe.addition.recalibrate_bias
    how = "kept from the base checkpoint" if kept else "calibrated on validation"
    table = format_metrics_table(m, names) if len(names) <= 20 else f"micro F1 {m['val/f1']:.3f} over {len(names)} tools"
    return f"{table}\nlogit bias {m['logit_bias']:+.2f} ({how}); run dir: {recipe.run_dir}"

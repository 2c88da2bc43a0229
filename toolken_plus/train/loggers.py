"""Metric loggers. The run dir always gets `train_log.jsonl`; wandb is
optional and offline unless the user sets WANDB_MODE otherwise."""

from __future__ import annotations

import json
import os
from pathlib import Path


class JsonlLogger:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, metrics: dict, step: int | None = None) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")

    def finish(self) -> None:
        pass


class WandbLogger:
    def __init__(self, run_dir: Path, config: dict, project: str = "toolken_plus", entity=None, mode: str = "offline", tags=()):
        import wandb

        os.environ.setdefault("WANDB_MODE", mode)
        self.run = wandb.init(project=project, entity=entity, mode=mode, dir=str(run_dir), config=config, tags=list(tags))

    def log(self, metrics: dict, step: int | None = None) -> None:
        self.run.log(metrics, step=step)

    def finish(self) -> None:
        self.run.finish()


class MultiLogger:
    def __init__(self, *loggers):
        self.loggers = [lg for lg in loggers if lg is not None]

    def log(self, metrics: dict, step: int | None = None) -> None:
        for lg in self.loggers:
            lg.log(metrics, step=step)

    def finish(self) -> None:
        for lg in self.loggers:
            lg.finish()


def build_logger(cfg: dict, run_dir: Path, full_config: dict) -> MultiLogger:
    kind = (cfg or {}).get("kind", "none")
    jsonl = JsonlLogger(Path(run_dir) / "train_log.jsonl")
    if kind == "none":
        return MultiLogger(jsonl)
    if kind == "wandb":
        return MultiLogger(jsonl, WandbLogger(run_dir, full_config, cfg.get("project", "toolken_plus"),
                                              cfg.get("entity"), cfg.get("mode", "offline"), cfg.get("tags", ())))
    raise ValueError(f"unknown logger.kind {kind!r}: expected 'none' or 'wandb'")

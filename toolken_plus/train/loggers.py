"""Metric loggers. The run dir always gets `train_log.jsonl`; wandb is
optional and offline unless the user sets WANDB_MODE otherwise."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


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


@dataclass
class NoLogger:
    """logger=none: metrics go to the run dir only (train_log.jsonl, metrics.json)."""

    name: str = "none"

    def build(self, run_dir: Path, config: dict) -> MultiLogger:
        return MultiLogger(JsonlLogger(Path(run_dir) / "train_log.jsonl"))


@dataclass
class Wandb:
    """logger=wandb: Weights & Biases, offline unless WANDB_MODE says otherwise (`wandb sync` later)."""

    name: str = "wandb"
    project: str = "toolken_plus"
    entity: Optional[str] = None
    mode: Optional[str] = None  # None: $WANDB_MODE, else offline
    tags: list[str] = field(default_factory=list)

    def build(self, run_dir: Path, config: dict) -> MultiLogger:
        mode = self.mode or os.environ.get("WANDB_MODE") or "offline"
        return MultiLogger(JsonlLogger(Path(run_dir) / "train_log.jsonl"),
                           WandbLogger(Path(run_dir), config, self.project, self.entity, mode, self.tags))


def build_logger(spec, run_dir: Path, config: dict) -> MultiLogger:
    return (spec or NoLogger()).build(run_dir, config)

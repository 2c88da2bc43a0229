"""Metric loggers. A training run dir always gets `train_log.jsonl`; wandb is
optional and offline unless the user sets WANDB_MODE otherwise.

logger=wandb names its runs: in a Hydra multirun (sweep) the group is the
sweep dir's name and the run name the job's overrides (`seed=1,trainer.lr=0.01`;
its number when it has none); `logger.run_name` / `logger.group` set them."""

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

    def log_table(self, key: str, columns: list[str], rows: list[list]) -> None:
        pass  # the run dir has the rows already (predictions.jsonl)

    def finish(self) -> None:
        pass


class WandbLogger:
    def __init__(self, run_dir: Path, config: dict, project: str = "toolken_plus", entity=None, mode: str = "offline",
                 tags=(), *, name: str | None = None, group: str | None = None, job_type: str | None = None):
        import wandb

        self.wandb = wandb
        os.environ.setdefault("WANDB_MODE", mode)
        self.run = wandb.init(project=project, entity=entity, mode=mode, dir=str(run_dir), config=config, tags=list(tags),
                              name=name, group=group, job_type=job_type)

    def log(self, metrics: dict, step: int | None = None) -> None:
        self.run.log(metrics, step=step)

    def log_table(self, key: str, columns: list[str], rows: list[list]) -> None:
        self.run.log({key: self.wandb.Table(columns=columns, data=rows)})

    def finish(self) -> None:
        self.run.finish()


class MultiLogger:
    def __init__(self, *loggers):
        self.loggers = [lg for lg in loggers if lg is not None]

    def log(self, metrics: dict, step: int | None = None) -> None:
        for lg in self.loggers:
            lg.log(metrics, step=step)

    def log_table(self, key: str, columns: list[str], rows: list[list]) -> None:
        for lg in self.loggers:
            lg.log_table(key, columns, rows)

    def finish(self) -> None:
        for lg in self.loggers:
            lg.finish()


def sweep_naming(hydra_cfg=None) -> tuple[str | None, str | None]:
    """(run name, group) of a Hydra multirun job: the job's override string
    (its number when it has none) and the sweep dir's name; (None, None)
    outside a multirun. `hydra_cfg`: the `hydra` node (default: the running
    job's, HydraConfig)."""
    if hydra_cfg is None:
        try:
            from hydra.core.hydra_config import HydraConfig
        except ImportError:
            return None, None
        if not HydraConfig.initialized():
            return None, None
        hydra_cfg = HydraConfig.get()
    mode = hydra_cfg.get("mode") if hasattr(hydra_cfg, "get") else getattr(hydra_cfg, "mode", None)
    if str(mode).rsplit(".", 1)[-1] != "MULTIRUN":
        return None, None
    job = hydra_cfg["job"]
    name = job.get("override_dirname") or (str(job.get("num")) if job.get("num") is not None else None)
    sweep_dir = hydra_cfg["sweep"]["dir"]
    return name, (Path(str(sweep_dir)).name if sweep_dir else None)


@dataclass
class NoLogger:
    """logger=none: metrics go to the run dir only (train_log.jsonl, metrics.json)."""

    name: str = "none"

    def build(self, run_dir: Path, config: dict, *, log_file: str = "train_log.jsonl", job_type: str = "train") -> MultiLogger:
        return MultiLogger(JsonlLogger(Path(run_dir) / log_file))


@dataclass
class Wandb:
    """logger=wandb: Weights & Biases, offline unless WANDB_MODE says otherwise (`wandb sync` later)."""

    name: str = "wandb"
    project: str = "toolken_plus"
    entity: Optional[str] = None
    mode: Optional[str] = None  # None: $WANDB_MODE, else offline
    tags: list[str] = field(default_factory=list)
    run_name: Optional[str] = None  # the run's name; None: the sweep job's overrides in a multirun, else wandb's
    group: Optional[str] = None  # None: the sweep dir's name in a multirun

    def build(self, run_dir: Path, config: dict, *, log_file: str = "train_log.jsonl", job_type: str = "train") -> MultiLogger:
        mode = self.mode or os.environ.get("WANDB_MODE") or "offline"
        swept_name, swept_group = sweep_naming()
        return MultiLogger(JsonlLogger(Path(run_dir) / log_file),
                           WandbLogger(Path(run_dir), config, self.project, self.entity, mode, self.tags,
                                       name=self.run_name or swept_name, group=self.group or swept_group,
                                       job_type=job_type))


def build_logger(spec, run_dir: Path, config: dict, *, log_file: str = "train_log.jsonl",
                 job_type: str = "train") -> MultiLogger:
    return (spec or NoLogger()).build(run_dir, config, log_file=log_file, job_type=job_type)

"""Stage-1 training of the toolken head on cached features.

One optimisation step sees the positions of `batch_size` examples (ToolkenGPT
uses one example per step); the loss is the factorised ToolkenGPT loss, so no
step runs the backbone. A checkpoint (head + optimiser + epoch) is written
atomically after every epoch; `fit` resumes from it when it exists.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .cache import FeatureCache
from .head import ToolkenHead, atomic_write
from .losses import factorized_toolken_loss
from .metrics import calibrate_bias, predicted_tools, tool_call_metrics

log = logging.getLogger(__name__)


@dataclass
class TrainerConfig:
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 1  # examples per optimiser step (ToolkenGPT uses 1)
    weight_decay: float = 0.0
    seed: int = 0
    progress: bool = True
    # The first `frozen_rows` toolkens stay as they are: adding tools to a
    # trained head trains only the new rows (they still compete with the old
    # ones in the loss's softmax).
    frozen_rows: int = 0


class CachedFeatures:
    """A FeatureCache loaded into RAM as tensors, with per-example ranges."""

    def __init__(self, cache: FeatureCache):
        t = cache.tensors()
        self.h = t["h"]
        self.logsumexp = t["logsumexp"]
        self.gold_logit = t["gold_logit"]
        self.max_logit = t["max_logit"]
        self.tool_label = t["tool_label"].long()
        ex = cache.example_index
        # Positions of one example are contiguous in the cache.
        self.starts = np.searchsorted(ex, np.arange(cache.n_examples), side="left")
        self.ends = np.searchsorted(ex, np.arange(cache.n_examples), side="right")

    @property
    def n_examples(self) -> int:
        return len(self.starts)

    def positions(self, examples) -> torch.Tensor:
        idx = [np.arange(self.starts[i], self.ends[i]) for i in examples]
        return torch.from_numpy(np.concatenate(idx)) if idx else torch.empty(0, dtype=torch.long)

    @torch.no_grad()
    def scores(self, head: ToolkenHead, chunk: int = 65536) -> torch.Tensor:
        return torch.cat([head(self.h[s : s + chunk].float()) for s in range(0, len(self.h), chunk)])


class ToolkenTrainer:
    def __init__(self, head: ToolkenHead, train: FeatureCache, cfg: TrainerConfig, run_dir: str | Path | None = None, logger=None):
        self.head = head
        self.cfg = cfg
        self.data = CachedFeatures(train)
        self.cache_key = train.meta.get("key")
        self.run_dir = Path(run_dir) if run_dir else None
        self.logger = logger
        self.optimizer = torch.optim.Adam([head.weight], lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.frozen = head.weight.detach()[: cfg.frozen_rows].clone()
        self.epoch = 0  # epochs completed
        self.history: list[dict] = []

    # --------------------------------------------------------- checkpoints
    @property
    def checkpoint_path(self) -> Path | None:
        return self.run_dir / "checkpoints" / "last.pt" if self.run_dir else None

    def save_checkpoint(self) -> None:
        if self.checkpoint_path is None:
            return
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "epoch": self.epoch,
            "head": self.head.state_dict(),
            "tool_names": self.head.tool_names,
            "optimizer": self.optimizer.state_dict(),
            "cache_key": self.cache_key,
            "trainer": asdict(self.cfg),
            "history": self.history,
        }
        atomic_write(self.checkpoint_path, lambda p: torch.save(state, p))

    def try_resume(self) -> bool:
        path = self.checkpoint_path
        if path is None or not path.is_file():
            return False
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("tool_names") != self.head.tool_names or state.get("cache_key") != self.cache_key:
            raise RuntimeError(
                f"{path} was written for other tools or data (tools {state.get('tool_names')}, "
                f"cache {state.get('cache_key')}); use a fresh run dir or delete the checkpoint"
            )
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.history = list(state.get("history", []))
        log.info("resumed from %s after epoch %d", path, self.epoch)
        return True

    # ------------------------------------------------------------ training
    def train_epoch(self) -> float:
        rng = np.random.default_rng(self.cfg.seed + self.epoch)
        order = rng.permutation(self.data.n_examples)
        bs = max(1, self.cfg.batch_size)
        total, steps = 0.0, 0
        d = self.data
        bar = tqdm(range(0, len(order), bs), desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}",
                   disable=not self.cfg.progress, leave=False, unit="step")
        for s in bar:
            pos = d.positions(order[s : s + bs])
            if len(pos) == 0:
                continue
            scores = self.head(d.h[pos].float())
            loss = factorized_toolken_loss(scores, d.logsumexp[pos], d.gold_logit[pos], d.tool_label[pos])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self._step()
            total += loss.item()
            steps += 1
        return total / max(steps, 1)

    def _step(self) -> None:
        k = self.cfg.frozen_rows
        if k:
            self.head.weight.grad[:k] = 0  # keeps Adam's moments of the frozen rows at zero
        self.optimizer.step()
        if k:
            # Weight decay would still move rows with zero gradient; restoring
            # them makes "old rows bit-identical" hold for every optimiser setting.
            with torch.no_grad():
                self.head.weight[:k] = self.frozen

    def fit(self) -> list[dict]:
        self.try_resume()
        while self.epoch < self.cfg.epochs:
            loss = self.train_epoch()
            self.epoch += 1
            record = {"epoch": self.epoch, "train/loss": loss}
            self.history.append(record)
            log.info("epoch %d/%d  train/loss %.5f", self.epoch, self.cfg.epochs, loss)
            if self.logger is not None:
                self.logger.log(record, step=self.epoch)
            self.save_checkpoint()
        return self.history


def evaluate_head(head: ToolkenHead, features: CachedFeatures, *, bias: float | None = None, prefix: str = "val/") -> dict[str, float]:
    b = float(head.logit_bias) if bias is None else bias
    pred = predicted_tools(features.scores(head), features.max_logit, b)
    return tool_call_metrics(pred, features.tool_label, head.tool_names, prefix=prefix)


def calibrate_head_bias(head: ToolkenHead, features: CachedFeatures, grid=(-10.0, 10.0, 0.25)) -> float:
    """Set head.logit_bias to the F1-best value on these (validation) features."""
    b, _ = calibrate_bias(features.scores(head), features.max_logit, features.tool_label, grid)
    head.logit_bias.fill_(b)
    return b

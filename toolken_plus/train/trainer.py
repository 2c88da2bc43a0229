"""Stage-1 training of the toolken head on cached features.

One optimisation step sees the positions of `batch_size` examples (ToolkenGPT
uses one example per step); the loss is the factorised ToolkenGPT loss, so no
step runs the backbone. A checkpoint (head + optimiser + epoch) is written
atomically after every epoch; `fit` resumes from it when it exists.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from toolken_plus.adapter.head import CheckpointError, ToolkenHead, check_finite
from toolken_plus.config.schema import TrainerConfig
from toolken_plus.rundir import atomic_write
from toolken_plus.train.cache import FeatureCache
from toolken_plus.train.losses import factorized_toolken_loss
from toolken_plus.train.metrics import calibrate_bias, predicted_tools, tool_call_metrics

log = logging.getLogger(__name__)


class CachedFeatures:
    """A FeatureCache loaded into RAM as tensors, with per-example ranges."""

    def __init__(self, cache: FeatureCache | None = None, *, tensors: dict[str, torch.Tensor] | None = None,
                 example_index: np.ndarray | None = None):
        """From a FeatureCache, or (tests, benchmarks) from its `tensors` and
        `example_index` given directly."""
        t = cache.tensors() if cache is not None else tensors
        self.h = t["h"]
        self.logsumexp = t["logsumexp"]
        self.gold_logit = t["gold_logit"]
        self.max_logit = t["max_logit"]
        self.tool_label = t["tool_label"].long()
        ex = cache.example_index if cache is not None else np.asarray(example_index)
        n_examples = cache.n_examples if cache is not None else (int(ex.max()) + 1 if len(ex) else 0)
        # Positions of one example are contiguous in the cache.
        self.starts = np.searchsorted(ex, np.arange(n_examples), side="left")
        self.ends = np.searchsorted(ex, np.arange(n_examples), side="right")

    @property
    def n_examples(self) -> int:
        return len(self.starts)

    def positions(self, examples) -> torch.Tensor:
        idx = [np.arange(self.starts[i], self.ends[i]) for i in examples]
        return torch.from_numpy(np.concatenate(idx)) if idx else torch.empty(0, dtype=torch.long)

    @torch.no_grad()
    def scores(self, head: ToolkenHead, chunk: int = 65536) -> torch.Tensor:
        return torch.cat([head(self.h[s : s + chunk].float()) for s in range(0, len(self.h), chunk)])


STATE_NAME = "last.safetensors"
LEGACY_STATE_NAME = "last.pt"  # pickled by versions before 0.2: never loaded (unpickling can run code)
STATE_FORMAT = "toolken_plus.train_state/1"
# Settings a resumed run must share with its checkpoint: continuing with other
# ones would silently mix two experiments. `epochs` may differ (that is how a
# finished run is extended); `progress` does not change the result.
RESUME_MUST_MATCH = ("lr", "batch_size", "weight_decay", "seed", "frozen_rows")


class ResumeMismatch(ValueError):
    """The run dir holds a checkpoint of a differently configured run."""


class ToolkenTrainer:
    """Trains `head` on a feature cache. `frozen_rows`: the first toolkens stay
    as they are (adding tools to a trained head trains only the new rows;
    they still compete with the old ones in the loss's softmax)."""

    def __init__(self, head: ToolkenHead, train: FeatureCache | CachedFeatures, cfg: TrainerConfig,
                 run_dir: str | Path | None = None, logger=None, *, seed: int = 0, frozen_rows: int = 0,
                 resume: bool = True, run_identity: dict | None = None, examples=None,
                 val: CachedFeatures | None = None):
        """`val`: validation features, evaluated after every epoch (val/loss and
        val_epoch/{precision,recall,f1} at the bias in force while training,
        before calibration) into the history and the logger."""
        self.head = head
        self.val = val
        self.cfg = cfg
        self.seed = seed
        self.frozen_rows = frozen_rows
        # Features already in RAM are shared, not loaded again (cross-fitting trains K heads on one cache).
        self.data = train if isinstance(train, CachedFeatures) else CachedFeatures(train)
        self.cache_key = train.meta.get("key") if isinstance(train, FeatureCache) else None
        # The examples trained on (a fold's complement when cross-fitting); None = all.
        self.examples = np.arange(self.data.n_examples) if examples is None else np.asarray(examples, dtype=np.int64)
        self.run_dir = Path(run_dir) if run_dir else None
        self.logger = logger
        self.resume = resume
        # What else must agree for a checkpoint to be resumed: tools, data
        # (the feature-cache key covers backbone + encoded data) and anything
        # the caller adds (task, data limits).
        self.identity = {"tools": list(head.tool_names), "cache_key": self.cache_key, **(run_identity or {})}
        self.optimizer = torch.optim.Adam([head.weight], lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.frozen = head.weight.detach()[:frozen_rows].clone()
        self.epoch = 0  # epochs completed
        self.history: list[dict] = []

    # --------------------------------------------------------- checkpoints
    @property
    def checkpoint_path(self) -> Path | None:
        return self.run_dir / "checkpoints" / STATE_NAME if self.run_dir else None

    def save_checkpoint(self) -> None:
        """Head + Adam moments as safetensors, everything else as JSON in its
        header: one file, written atomically, that loads without unpickling."""
        if self.checkpoint_path is None:
            return
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"head.weight": self.head.weight.detach().contiguous()}
        for key, value in self.optimizer.state.get(self.head.weight, {}).items():
            tensors[f"optimizer.{key}"] = torch.as_tensor(value).detach().contiguous()
        check_finite(tensors, str(self.checkpoint_path))
        state = {"format": STATE_FORMAT, "epoch": self.epoch, "history": self.history,
                 "trainer": self._settings(), "run": self.identity}
        atomic_write(self.checkpoint_path,
                     lambda p: save_file(tensors, str(p), metadata={"toolken_plus": json.dumps(state)}))

    def try_resume(self) -> bool:
        path = self.checkpoint_path
        if path is None:
            return False
        legacy = path.parent / LEGACY_STATE_NAME
        if not self.resume:
            if path.is_file() or legacy.is_file():
                log.info("resume=false: training starts over; the checkpoint in %s is replaced", path.parent)
                legacy.unlink(missing_ok=True)
            return False
        if legacy.is_file() and not path.is_file():
            raise CheckpointError(
                f"{legacy}: a pickled checkpoint (from an older toolken_plus, or not written by it); loading a pickle "
                f"can run code, so it is not read. Delete it, or rerun with resume=false to start over")
        if not path.is_file():
            return False
        state, tensors = read_train_state(path)
        diffs = self._differences(state)
        if diffs:
            raise ResumeMismatch(
                f"{path} was written by a run with other settings:\n  " + "\n  ".join(diffs)
                + "\nuse a fresh hydra.run.dir, rerun with the checkpoint's settings, or pass resume=false to start over")
        if tensors["head.weight"].shape != self.head.weight.shape:
            raise CheckpointError(f"{path}: head.weight has shape {tuple(tensors['head.weight'].shape)}, this run's "
                                  f"head {tuple(self.head.weight.shape)}; delete it, or rerun with resume=false")
        with torch.no_grad():
            self.head.weight.copy_(tensors["head.weight"])
        moments = {k[len("optimizer."):]: v for k, v in tensors.items() if k.startswith("optimizer.")}
        if moments:
            self.optimizer.state[self.head.weight] = moments
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        log.info("resumed from %s after epoch %d", path, self.epoch)
        return True

    def _settings(self) -> dict:
        return {**asdict(self.cfg), "seed": self.seed, "frozen_rows": self.frozen_rows}

    def _differences(self, state: dict) -> list[str]:
        saved_cfg, now_cfg = state.get("trainer", {}), self._settings()
        option = {"seed": "seed", "frozen_rows": "tools.add (frozen rows)"}
        diffs = [f"{option.get(k, 'trainer.' + k)}: {saved_cfg.get(k)!r} in the checkpoint, {now_cfg[k]!r} now"
                 for k in RESUME_MUST_MATCH if saved_cfg.get(k) != now_cfg[k]]
        saved_run = state.get("run", {})
        for k in sorted(set(saved_run) | set(self.identity)):
            if saved_run.get(k) != self.identity.get(k):
                what = {"cache_key": "training data / backbone (feature-cache key)"}.get(k, k)
                diffs.append(f"{what}: {saved_run.get(k)!r} in the checkpoint, {self.identity.get(k)!r} now")
        return diffs

    # ------------------------------------------------------------ training
    def train_epoch(self) -> float:
        rng = np.random.default_rng(self.seed + self.epoch)
        order = rng.permutation(self.examples)
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
        k = self.frozen_rows
        if k:
            self.head.weight.grad[:k] = 0  # keeps Adam's moments of the frozen rows at zero
        self.optimizer.step()
        if k:
            # Weight decay would still move rows with zero gradient; restoring
            # them makes "old rows bit-identical" hold for every optimiser setting.
            with torch.no_grad():
                self.head.weight[:k] = self.frozen

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """The per-epoch validation metrics ({} without validation features)."""
        if self.val is None or len(self.val.tool_label) == 0:
            return {}
        v = self.val
        scores = v.scores(self.head)
        out = {"val/loss": float(factorized_toolken_loss(scores, v.logsumexp, v.gold_logit, v.tool_label))}
        m = evaluate_head(self.head, v, prefix="val_epoch/", scores=scores)
        out.update({k: m[k] for k in ("val_epoch/precision", "val_epoch/recall", "val_epoch/f1")})
        return out

    def fit(self) -> list[dict]:
        self.try_resume()
        while self.epoch < self.cfg.epochs:
            loss = self.train_epoch()
            self.epoch += 1
            if not bool(torch.isfinite(self.head.weight).all()) or not math.isfinite(loss):
                raise FloatingPointError(
                    f"training diverged in epoch {self.epoch}: non-finite loss or toolken weights "
                    f"(trainer.lr={self.cfg.lr}); the last checkpoint is kept, nothing new is saved")
            record = {"epoch": self.epoch, "train/loss": loss, **self.validate()}
            self.history.append(record)
            log.info("epoch %d/%d  %s", self.epoch, self.cfg.epochs,
                     "  ".join(f"{k} {v:.5f}" for k, v in record.items() if "/" in k))
            if self.logger is not None:
                self.logger.log(record, step=self.epoch)
            self.save_checkpoint()
        return self.history


def read_train_state(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The JSON state and tensors of a trainer checkpoint, refused with a
    message naming the file unless they are exactly what save_checkpoint writes."""
    def refuse(reason: str) -> CheckpointError:
        return CheckpointError(f"{path}: not a toolken_plus training checkpoint ({reason}); "
                               f"delete it, or rerun with resume=false to start over")

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # truncated file, bad header, not safetensors at all
        raise refuse(f"{type(err).__name__}: {err}") from None
    try:
        state = json.loads(meta["toolken_plus"])
    except (KeyError, ValueError):
        raise refuse("no toolken_plus state in its header") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise refuse(f"format {state.get('format') if isinstance(state, dict) else None!r}, expected {STATE_FORMAT!r}")
    epoch, history = state.get("epoch"), state.get("history")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0 or not isinstance(history, list):
        raise refuse("bad epoch or history")
    allowed = {"head.weight", "optimizer.step", "optimizer.exp_avg", "optimizer.exp_avg_sq"}
    if "head.weight" not in tensors or not set(tensors) <= allowed:
        raise refuse(f"tensors {sorted(tensors)}")
    weight_shape = tuple(tensors["head.weight"].shape)
    for name, t in tensors.items():
        expected = () if name == "optimizer.step" else weight_shape
        if tuple(t.shape) != tuple(expected) or not t.is_floating_point():
            raise refuse(f"{name} has shape {tuple(t.shape)} and dtype {t.dtype}, expected {tuple(expected)} float")
    return state, tensors


def evaluate_head(head: ToolkenHead, features: CachedFeatures, *, bias: float | None = None, prefix: str = "val/",
                  scores: torch.Tensor | None = None) -> dict[str, float]:
    """Tool-call metrics of the head at `bias` (default: its own); `scores`:
    features.scores(head), when the caller has them already."""
    b = float(head.logit_bias) if bias is None else bias
    pred = predicted_tools(features.scores(head) if scores is None else scores, features.max_logit, b)
    return tool_call_metrics(pred, features.tool_label, head.tool_names, prefix=prefix)


def calibrate_head_bias(head: ToolkenHead, features: CachedFeatures, grid=(-10.0, 10.0, 0.25)) -> float:
    """Set head.logit_bias to the F1-best value on these (validation) features."""
    b, _ = calibrate_bias(features.scores(head), features.max_logit, features.tool_label, grid)
    head.logit_bias.fill_(b)
    return b

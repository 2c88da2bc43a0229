"""Add toolkens to a trained checkpoint without retraining the old ones.

    python train.py task=custom task.train_file=weather.jsonl \\
        checkpoint=<run dir of the trained model> 'tools.add=[weather]'

The new head is the old one with rows appended: the old toolken rows stay
bit-identical (the trainer's `frozen_rows`), only the new rows train (still
competing with the old ones in the loss's softmax, so they learn where they
and not an old tool fit), the logit bias stays the calibrated one unless
`tools.recalibrate_bias=true` (the new data says nothing about the old tools),
and the doc hashes of the old tools stay those they were trained with.

A Toolken+ checkpoint also holds the reranker matrix `rerank.weight`
(n_tools + 1 rows, Reject last): the new tools' rows go in before the Reject
row, initialised from their trained toolken rows (how W_r starts: docs/design.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from toolken_plus.adapter import CONFIG_NAME, RERANK_KEY, TOOLKEN_KEY, ToolkenHead
from toolken_plus.tasks.base import Task, TaskData

log = logging.getLogger(__name__)

def grow_state_dict(old: Mapping[str, torch.Tensor], new_rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint enlarged by `new_rows` (m × d) new toolkens.

    `toolken.weight` (n × d) becomes old rows then new rows; `rerank.weight`
    ((n+1) × d, Reject last) becomes old tool rows, the new rows (copies of the
    new toolken rows), then Reject. Old rows and Reject are copied unchanged;
    any other tensor is passed through."""
    toolkens = old[TOOLKEN_KEY]
    n, d = toolkens.shape
    if new_rows.ndim != 2 or new_rows.shape[1] != d:
        raise ValueError(f"new rows must be m × {d} (the toolken width), got {tuple(new_rows.shape)}")
    new_rows = new_rows.detach().to(toolkens.dtype)
    out = dict(old)
    out[TOOLKEN_KEY] = torch.cat([toolkens, new_rows])
    if RERANK_KEY in old:
        rerank = old[RERANK_KEY]
        if rerank.shape != (n + 1, d):
            raise ValueError(f"{RERANK_KEY} has shape {tuple(rerank.shape)}; expected ({n + 1}, {d}): "
                             f"one row per tool ({n}) and the Reject row last")
        out[RERANK_KEY] = torch.cat([rerank[:n], new_rows.to(rerank.dtype), rerank[n:]])
    return out


@dataclass
class ToolAddition:
    """What `checkpoint=… tools.add=[…]` asks for, checked against the checkpoint."""

    checkpoint: Path
    base: ToolkenHead  # the trained head, as loaded
    new_names: list[str]
    recalibrate_bias: bool = False
    new_docs: dict[str, str] = field(default_factory=dict)  # filled from the task (or the registry)

    @classmethod
    def from_config(cls, cfg) -> "ToolAddition | None":
        """From a TrainConfig: `checkpoint` and `tools.add`, `tools.recalibrate_bias`."""
        add = list(cfg.tools.add or [])
        ckpt = cfg.checkpoint
        if not add and not ckpt:
            return None
        if not ckpt:
            raise ValueError(f"tools.add={add} needs checkpoint=<run dir of the trained model to add them to>")
        if not add:
            raise ValueError(f"checkpoint={ckpt} is given but tools.add is empty: name the tools to add, "
                             "e.g. 'tools.add=[weather]' (to resume an interrupted run, rerun with its hydra.run.dir)")
        ckpt = Path(ckpt)
        if not (ckpt / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"checkpoint={ckpt}: no {CONFIG_NAME} there (expected the run dir of train.py)")
        base = ToolkenHead.from_pretrained(ckpt)
        dup = sorted({n for n in add if add.count(n) > 1})
        if dup:
            raise ValueError(f"tools.add names {dup} more than once")
        already = [n for n in add if n in base.tool_names]
        if already:
            raise ValueError(f"tools.add: {already} are already in {ckpt} (its tools: {base.tool_names})")
        reranker = getattr(cfg.reranker, "name", "none")
        trained_with = base.rerank_config.get("name", "none")
        if reranker != "none" and reranker != trained_with:
            raise ValueError(f"adding tools with reranker={reranker} to {ckpt}, which was trained with "
                             f"reranker={trained_with}: use the same reranker (or reranker=none to keep stage 2 as it is)")
        return cls(ckpt, base, add, bool(cfg.tools.recalibrate_bias))

    @property
    def old_names(self) -> list[str]:
        return list(self.base.tool_names)

    @property
    def tool_names(self) -> list[str]:
        return self.old_names + self.new_names

    @property
    def n_old(self) -> int:
        return len(self.base.tool_names)

    def task_for(self, task: Task) -> Task:
        """The task as it trains the new tools (task=custom without task.tools: its data calls them)."""
        return task.with_tools(self.new_names)

    def check(self, task: TaskData, task_name: str, backbone, data_root: str | Path | None = None) -> None:
        """The task's data may call old and new tools; every new tool needs
        documentation and at least one training call; the backbone must be the
        one the old rows were trained on."""
        unknown = [n for n in task.tool_names if n not in self.tool_names]
        if unknown:
            raise ValueError(f"task tools {unknown} are neither in {self.checkpoint} ({self.old_names}) nor in "
                             f"tools.add ({self.new_names})")
        docs = {n: task.tool_docs[n] for n in self.new_names if task.tool_docs.get(n)}
        missing = [n for n in self.new_names if n not in docs]
        if missing:
            from toolken_plus.tools.plugins import discover_tools

            docs.update({n: t.doc for n, t in discover_tools(data_root).resolve(missing).items()})
        self.new_docs = docs
        calls = {n: 0 for n in self.new_names}
        for ex in task.train:
            for c in ex.calls:
                if c.tool in calls:
                    calls[c.tool] += 1
        silent = [n for n, k in calls.items() if k == 0]
        if silent:
            raise ValueError(f"no training example calls {silent}: a new toolken needs examples of its calls "
                             f"(task {task_name!r}, {len(task.train)} training examples)")
        saved = self.base.config.base_model
        if saved and (saved.name, saved.revision) != (backbone.name, backbone.revision):
            raise ValueError(f"{self.checkpoint} was trained on {saved.name}@{saved.revision}, this run "
                             f"uses {backbone.name}@{backbone.revision}: add tools with the same model=…")
        log.info("adding %s to %s (%d old toolkens kept frozen; %s)", self.new_names, self.checkpoint, self.n_old,
                 ", ".join(f"{n}: {k} training calls" for n, k in calls.items()))

    def build_head(self, seed: int = 0) -> ToolkenHead:
        """The enlarged head before training: old rows, bias and doc hashes
        copied, new rows freshly initialised."""
        head = ToolkenHead(self.tool_names, self.base.weight.shape[1], seed=seed)
        with torch.no_grad():
            head.weight[: self.n_old] = self.base.weight
            head.logit_bias.fill_(float(self.base.logit_bias))
        head.doc_hashes = dict(self.base.doc_hashes)
        if getattr(self.base, "rerank_config", None):
            head.rerank_config = dict(self.base.rerank_config)
        return head

    def finish(self, head: ToolkenHead) -> None:
        """After stage-1 training: grow the other per-tool tensors (the rerank
        rows) with the trained new toolken rows."""
        self._check_old_toolkens(head)
        old = self.base.weight.detach()
        grown = grow_state_dict({TOOLKEN_KEY: old, **self.base.extra_tensors}, head.weight.detach()[self.n_old :])
        head.extra_tensors = {k: v for k, v in grown.items() if k != TOOLKEN_KEY}
        if RERANK_KEY in grown and hasattr(head, "rerank_weight"):
            # A head that owns the reranker matrix saves it itself: hand it the grown one.
            head.rerank_weight = nn.Parameter(grown[RERANK_KEY].clone(), requires_grad=False)

    def verify(self, head: ToolkenHead) -> None:
        """The promise of adding tools: the old toolken rows, and the old
        rerank rows with Reject, are exactly the base checkpoint's."""
        self._check_old_toolkens(head)
        old_rerank = self.base.extra_tensors.get(RERANK_KEY)
        if old_rerank is None:
            return
        new_rerank = getattr(head, "rerank_weight", None)
        new_rerank = head.extra_tensors.get(RERANK_KEY) if new_rerank is None else new_rerank.detach()
        n = self.n_old
        if new_rerank is None or not (torch.equal(new_rerank[:n], old_rerank[:n]) and torch.equal(new_rerank[-1], old_rerank[-1])):
            raise RuntimeError("the old rerank rows or the Reject row changed (a bug: they should be kept as they are)")

    def _check_old_toolkens(self, head: ToolkenHead) -> None:
        if not torch.equal(head.weight.detach()[: self.n_old], self.base.weight.detach()):
            raise RuntimeError("the old toolken rows changed during training (a bug: they should be frozen)")

    def provenance(self) -> dict:
        return {"added_tools": {"base_checkpoint": str(self.checkpoint), "base_tools": self.old_names,
                                "new_tools": self.new_names,
                                "bias": "recalibrated" if self.recalibrate_bias else "kept from the base checkpoint"}}

"""ToolkenHead: the only trainable part. One embedding row per tool (W_τ)
beside the frozen vocabulary head, the calibrated logit bias, and for
Toolken+ the rerank rows W_r (one per tool, Reject last).

`save_pretrained` / `from_pretrained` write and read the adapter folder
described in config.py (toolkens.safetensors + toolken_config.json).
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
import warnings
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from toolken_plus.adapter.config import (
    CONFIG_NAME,
    RERANK_KEY,
    TOOLKEN_KEY,
    WEIGHTS_NAME,
    BaseModel,
    CheckpointError,
    ToolEntry,
    ToolkenConfig,
)
from toolken_plus.rundir import atomic_write
from toolken_plus.tools.plugins import discover_tools
from toolken_plus.tools.registry import Tool, doc_hash

log = logging.getLogger(__name__)


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Refuse to write NaN/inf weights: a diverged run must fail loudly, not
    leave a checkpoint that silently predicts garbage."""
    bad = [name for name, t in tensors.items() if not bool(torch.isfinite(t).all())]
    if bad:
        raise FloatingPointError(f"{where}: non-finite values in {', '.join(bad)}; nothing was saved "
                                 f"(training diverged: lower trainer.lr)")


class ToolkenHead(nn.Module):
    def __init__(self, tool_names: list[str], hidden_size: int, *, init_std: float | None = None, seed: int = 0):
        super().__init__()
        if len(set(tool_names)) != len(tool_names):
            raise ValueError(f"duplicate tool names: {tool_names}")
        self.tool_names = list(tool_names)
        self.weight = nn.Parameter(torch.empty(len(tool_names), hidden_size))
        # The logit bias b is not trained (0 in training); it is calibrated on
        # validation data afterwards and stored with the weights.
        self.register_buffer("logit_bias", torch.zeros(()))
        # Carried through load → save untouched: tensors this class does not
        # interpret itself, and the doc hashes the rows were trained with
        # (kept for tools whose docs a re-save is not given).
        self.extra_tensors: dict[str, torch.Tensor] = {}
        self.doc_hashes: dict[str, str] = {}
        # Toolken+ stage 2 (optional): W_r, one row per tool plus Reject LAST,
        # and the reranker's settings ({"name", "k", ...}). Set by the
        # reranker trainer; None for a plain ToolkenGPT head.
        self.rerank_weight: nn.Parameter | None = None
        self.rerank_config: dict = {}
        self.config: ToolkenConfig | None = None  # as read from / written to disk
        self.reset_parameters(init_std, seed)

    def reset_parameters(self, init_std: float | None = None, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            if init_std is None:
                # nn.Linear's default (what ToolkenGPT's func_embed uses).
                bound = 1.0 / self.weight.shape[1] ** 0.5
                self.weight.uniform_(-bound, bound, generator=g)
            else:
                self.weight.normal_(0.0, init_std, generator=g)

    @property
    def n_tools(self) -> int:
        return self.weight.shape[0]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Raw toolken scores W_τ h (without the bias), on the head's device and
        in its dtype (hidden states of a bfloat16 backbone are cast up; on the
        head's own device and dtype this is a no-op)."""
        return hidden.to(self.weight.device, self.weight.dtype) @ self.weight.T

    # ------------------------------------------------------------------ io
    def save_pretrained(self, out_dir: str | Path, *, backbone=None, model_spec: dict | None = None,
                        tool_docs: dict[str, str] | None = None, task: dict | None = None,
                        provenance: dict | None = None) -> ToolkenConfig:
        """Write the adapter folder. `backbone` + `model_spec` (backbone/loading.py
        `backbone_spec`) record which base model it needs and how to rebuild it;
        `tool_docs` the docs its tools are trained with (hashed); `task` the
        task's settings."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {**self.extra_tensors, TOOLKEN_KEY: self.weight.detach().float().contiguous()}
        if self.rerank_weight is not None:
            tensors[RERANK_KEY] = self.rerank_weight.detach().float().contiguous()
        base = None
        if backbone is not None:
            base = BaseModel(backbone.name, backbone.revision, backbone.hidden_size, backbone.vocab_size, model_spec)
        elif self.config is not None:
            base = self.config.base_model
        config = ToolkenConfig(
            tools=[ToolEntry(n, self._doc_hash(n, tool_docs or {})) for n in self.tool_names],
            hidden_size=self.weight.shape[1],
            logit_bias=float(self.logit_bias),
            base_model=base,
            reranker=dict(self.rerank_config),
            task=dict(task if task is not None else (self.config.task if self.config else {})),
            provenance={"toolken_plus": _version(), "saved": time.strftime("%Y-%m-%dT%H:%M:%S"), **(provenance or {})},
        )
        check_finite({**tensors, "logit_bias": self.logit_bias.detach()}, str(out / WEIGHTS_NAME))
        atomic_write(out / WEIGHTS_NAME, lambda p: save_file(tensors, str(p)))
        config.save(out)
        self.config = config
        return config

    def _doc_hash(self, name: str, tool_docs: dict[str, str]) -> str:
        if name in tool_docs:
            return doc_hash(tool_docs[name])
        return self.doc_hashes.get(name, doc_hash(""))

    @classmethod
    def from_pretrained(cls, path: str | Path, *, backbone=None, tool_docs: dict[str, str] | None = None) -> "ToolkenHead":
        """Read an adapter folder; with `backbone`, check it is the one the
        toolkens were trained on (another revision warns, another width fails);
        with `tool_docs`, warn about docs that changed since training."""
        path = Path(path)
        config = ToolkenConfig.load(path)
        names = config.tool_names
        head = cls(names, config.hidden_size)
        tensors = read_tensors(path / WEIGHTS_NAME)
        weight = tensors.get(TOOLKEN_KEY)
        if weight is None or tuple(weight.shape) != tuple(head.weight.shape):
            got = f"no {TOOLKEN_KEY}" if weight is None else f"{TOOLKEN_KEY} of shape {tuple(weight.shape)}"
            raise CheckpointError(f"{path / WEIGHTS_NAME}: {got}; {CONFIG_NAME} describes {len(names)} tools "
                                  f"of width {config.hidden_size}")
        with torch.no_grad():
            head.weight.copy_(weight)
            head.logit_bias.fill_(config.logit_bias)
        head.extra_tensors = {k: v for k, v in tensors.items() if k != TOOLKEN_KEY}
        head.doc_hashes = config.doc_hashes
        if RERANK_KEY in tensors:
            if tuple(tensors[RERANK_KEY].shape) != (len(names) + 1, head.weight.shape[1]):
                raise CheckpointError(f"{path / WEIGHTS_NAME}: {RERANK_KEY} has shape {tuple(tensors[RERANK_KEY].shape)}; "
                                      f"expected one row per tool plus Reject ({len(names) + 1}, {head.weight.shape[1]})")
            head.rerank_weight = nn.Parameter(tensors[RERANK_KEY], requires_grad=False)
        head.rerank_config = dict(config.reranker)
        head.config = config
        if backbone is not None:
            saved = config.base_model
            if saved and (saved.name, saved.revision) != (backbone.name, backbone.revision):
                warnings.warn(f"{path}: toolkens were trained on {saved.name}@{saved.revision}, "
                              f"loaded on {backbone.name}@{backbone.revision}", stacklevel=2)
            if config.hidden_size != backbone.hidden_size:
                raise ValueError(f"{path}: hidden size {config.hidden_size} != backbone's {backbone.hidden_size} "
                                 f"({backbone.name}); the toolkens were trained on "
                                 f"{saved.name if saved else 'another backbone'}")
        if tool_docs is not None:
            for name, h in config.doc_hashes.items():
                if name in tool_docs and h != doc_hash(tool_docs[name]):
                    warnings.warn(f"{path}: the documentation of tool {name!r} changed since training", stacklevel=2)
        return head


def _version() -> str:
    try:
        return importlib.metadata.version("toolken_plus")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def read_tensors(file: Path) -> dict[str, torch.Tensor]:
    """A safetensors file (never a pickle: loading one can run code), with its path in every error."""
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: the checkpoint is incomplete")
    try:
        return load_file(str(file))
    except Exception as err:  # safetensors reports truncation and bad headers without the path
        raise CheckpointError(f"{file}: cannot read it ({type(err).__name__}: {err}); "
                              f"the file is truncated or not a safetensors file") from None


def checkpoint_tools(checkpoint: str | Path, data_root: str | Path | None = None,
                     given: Iterable[Tool] | dict[str, Tool] = ()) -> dict[str, Tool]:
    """The tools a checkpoint's toolkens stand for, in its order: tools handed
    over in code (`given`) first, installed ones from the registry for the rest.
    An error names every tool that is not available."""
    names = ToolkenConfig.load(checkpoint).tool_names
    given = dict(given) if isinstance(given, dict) else {t.name: t for t in given}
    missing = [n for n in names if n not in given]
    found = discover_tools(data_root).resolve(missing) if missing else {}
    return {n: given[n] if n in given else found[n] for n in names}

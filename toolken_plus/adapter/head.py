"""ToolkenHead: the only trainable part. One embedding row per tool (W_τ)
beside the frozen vocabulary head, plus the calibrated logit bias.

On disk it is a tiny self-describing adapter (PEFT-style):
  toolkens.safetensors   tensors ("toolken.weight", later "rerank.weight")
  toolken_config.json    backbone identity, tool names + doc hashes, bias, data hash
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from toolken_plus.rundir import atomic_write
from toolken_plus.tools.plugins import discover_tools
from toolken_plus.tools.registry import Tool, doc_hash

log = logging.getLogger(__name__)

WEIGHTS_NAME = "toolkens.safetensors"
CONFIG_NAME = "toolken_config.json"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable, or not what we wrote;
    the message names the file."""


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
        """Raw toolken scores W_τ h (without the bias)."""
        return hidden @ self.weight.T

    # ------------------------------------------------------------------ io
    def save(self, out_dir: str | Path, *, backbone=None, tool_docs: dict[str, str] | None = None, extra: dict | None = None) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {**self.extra_tensors, "toolken.weight": self.weight.detach().float().contiguous()}
        if self.rerank_weight is not None:
            tensors["rerank.weight"] = self.rerank_weight.detach().float().contiguous()
        config = {
            "format_version": FORMAT_VERSION,
            "tools": [{"name": n, "doc_hash": self._doc_hash(n, tool_docs or {})} for n in self.tool_names],
            "hidden_size": self.weight.shape[1],
            "logit_bias": float(self.logit_bias),
        }
        if self.rerank_config:
            config["reranker"] = dict(self.rerank_config)
        if backbone is not None:
            config["backbone"] = {
                "name": backbone.name,
                "revision": backbone.revision,
                "hidden_size": backbone.hidden_size,
                "vocab_size": backbone.vocab_size,
            }
        config.update(extra or {})
        check_finite({**tensors, "logit_bias": self.logit_bias.detach()}, str(out / WEIGHTS_NAME))
        atomic_write(out / WEIGHTS_NAME, lambda p: save_file(tensors, str(p)))
        atomic_write(out / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(config, indent=2)))

    def _doc_hash(self, name: str, tool_docs: dict[str, str]) -> str:
        if name in tool_docs:
            return doc_hash(tool_docs[name])
        return self.doc_hashes.get(name, doc_hash(""))

    @classmethod
    def load(cls, path: str | Path, *, backbone=None, tool_docs: dict[str, str] | None = None) -> "ToolkenHead":
        path = Path(path)
        config = read_config(path)
        names = [t["name"] for t in config["tools"]]
        head = cls(names, config["hidden_size"])
        tensors = read_tensors(path / WEIGHTS_NAME)
        weight = tensors.get("toolken.weight")
        if weight is None or tuple(weight.shape) != tuple(head.weight.shape):
            got = "no toolken.weight" if weight is None else f"toolken.weight of shape {tuple(weight.shape)}"
            raise CheckpointError(f"{path / WEIGHTS_NAME}: {got}; {CONFIG_NAME} describes {len(names)} tools "
                                  f"of width {config['hidden_size']}")
        with torch.no_grad():
            head.weight.copy_(weight)
            head.logit_bias.fill_(config.get("logit_bias", 0.0))
        head.extra_tensors = {k: v for k, v in tensors.items() if k != "toolken.weight"}
        head.doc_hashes = {t["name"]: t.get("doc_hash", "") for t in config["tools"]}
        if "rerank.weight" in tensors:
            if tuple(tensors["rerank.weight"].shape) != (len(names) + 1, head.weight.shape[1]):
                raise CheckpointError(f"{path / WEIGHTS_NAME}: rerank.weight has shape {tuple(tensors['rerank.weight'].shape)}; "
                                      f"expected one row per tool plus Reject ({len(names) + 1}, {head.weight.shape[1]})")
            head.rerank_weight = nn.Parameter(tensors["rerank.weight"], requires_grad=False)
        head.rerank_config = dict(config.get("reranker", {}))
        head.config = config
        if backbone is not None:
            saved = config.get("backbone", {})
            if saved and (saved.get("name"), saved.get("revision")) != (backbone.name, backbone.revision):
                warnings.warn(
                    f"{path}: toolkens were trained on {saved.get('name')}@{saved.get('revision')}, "
                    f"loaded on {backbone.name}@{backbone.revision}",
                    stacklevel=2,
                )
            if saved.get("hidden_size", head.weight.shape[1]) != backbone.hidden_size:
                raise ValueError(f"{path}: hidden size {saved['hidden_size']} != backbone's {backbone.hidden_size}")
        if tool_docs is not None:
            for t in config["tools"]:
                if t["name"] in tool_docs and t.get("doc_hash") != doc_hash(tool_docs[t["name"]]):
                    warnings.warn(f"{path}: the documentation of tool {t['name']!r} changed since training", stacklevel=2)
        return head


def read_config(path: Path) -> dict:
    """toolken_config.json of a checkpoint folder, checked for the fields every reader needs."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {path}: not a toolken checkpoint (the run dir of train.py)")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
        names = [t["name"] for t in config["tools"]]
        width = int(config["hidden_size"])
    except (ValueError, KeyError, TypeError) as err:  # JSON, UTF-8 and shape errors alike
        raise CheckpointError(f"{file}: not a valid toolken config ({type(err).__name__}: {err})") from None
    if not names or width <= 0 or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{file}: not a valid toolken config (tools {names!r}, hidden_size {width})")
    bias = config.get("logit_bias", 0.0)
    if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias):
        raise CheckpointError(f"{file}: logit_bias {bias!r} is not a finite number")
    return config


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
    names = [t["name"] for t in read_config(Path(checkpoint))["tools"]]
    given = dict(given) if isinstance(given, dict) else {t.name: t for t in given}
    missing = [n for n in names if n not in given]
    found = discover_tools(data_root).resolve(missing) if missing else {}
    return {n: given[n] if n in given else found[n] for n in names}

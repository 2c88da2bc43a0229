"""The adapter's description on disk: toolken_config.json, typed and versioned.

A checkpoint folder (the run dir of train.py) is a small PEFT-style adapter:

    toolkens.safetensors   TOOLKEN_KEY (n × d), and RERANK_KEY ((n+1) × d, Reject last) for Toolken+
    toolken_config.json    a ToolkenConfig: format version, the base model (identity, and the spec
                           that rebuilds it), tools with the hashes of the docs they were trained
                           with, the calibrated logit bias, the trained reranker's settings, the
                           task's settings and provenance (data hash, examples, epochs, version)

It says which backbone and task it needs, so `load_agent(run_dir)` and
`infer.py checkpoint=<run>` need nothing else. Format 1 (toolken_plus 0.1)
is read too: it recorded the backbone's identity but not how to rebuild it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from toolken_plus.rundir import atomic_write

WEIGHTS_NAME = "toolkens.safetensors"
CONFIG_NAME = "toolken_config.json"
TOOLKEN_KEY = "toolken.weight"
RERANK_KEY = "rerank.weight"
FORMAT_VERSION = 2


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable, or not what we wrote;
    the message names the file."""


@dataclass
class ToolEntry:
    name: str
    doc_hash: str = ""  # of the documentation the toolken (and its rerank row) was trained with


@dataclass
class BaseModel:
    name: str
    revision: str
    hidden_size: int
    vocab_size: int
    spec: Optional[dict] = None  # {"kind": …, fields…} (backbone/loading.py); None: not recorded


@dataclass
class ToolkenConfig:
    tools: list[ToolEntry]
    hidden_size: int
    logit_bias: float = 0.0
    base_model: Optional[BaseModel] = None
    reranker: dict = field(default_factory=dict)  # the trained stage 2's settings ({"name", "k", …}); {}: none
    task: dict = field(default_factory=dict)  # the task's settings ({"name", …}), see tasks/__init__.py
    provenance: dict = field(default_factory=dict)  # data_hash, train_examples, epochs, added_tools, version
    format_version: int = FORMAT_VERSION

    @property
    def tool_names(self) -> list[str]:
        return [t.name for t in self.tools]

    @property
    def doc_hashes(self) -> dict[str, str]:
        return {t.name: t.doc_hash for t in self.tools}

    # ------------------------------------------------------------------ io
    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / CONFIG_NAME, lambda p: Path(p).write_text(self.to_json()))

    @classmethod
    def load(cls, folder: str | Path) -> "ToolkenConfig":
        file = Path(folder) / CONFIG_NAME
        if not file.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {folder}: not a toolken checkpoint (the run dir of train.py)")
        try:
            raw = json.loads(file.read_text(encoding="utf-8"))
            config = cls.from_dict(raw)
        except (ValueError, KeyError, TypeError) as err:  # JSON, UTF-8 and shape errors alike
            raise CheckpointError(f"{file}: not a valid toolken config ({type(err).__name__}: {err})") from None
        problem = config.problem()
        if problem:
            raise CheckpointError(f"{file}: not a valid toolken config ({problem})")
        return config

    @classmethod
    def from_dict(cls, raw: dict) -> "ToolkenConfig":
        version = raw.get("format_version", 1)
        if version not in (1, FORMAT_VERSION):
            raise ValueError(f"format_version {version} (this toolken_plus reads 1 and {FORMAT_VERSION})")
        tools = [ToolEntry(t["name"], t.get("doc_hash", "")) for t in raw["tools"]]
        if version == 1:  # backbone identity only; task name and provenance at the top level
            bb = raw.get("backbone")
            base = BaseModel(bb["name"], bb["revision"], bb["hidden_size"], bb["vocab_size"]) if bb else None
            provenance = {k: raw[k] for k in ("data_hash", "train_examples", "epochs", "added_tools") if k in raw}
            return cls(tools, int(raw["hidden_size"]), raw.get("logit_bias", 0.0), base, dict(raw.get("reranker", {})),
                       {"name": raw["task"]} if raw.get("task") else {}, provenance, 1)
        bm = raw.get("base_model")
        return cls(tools, int(raw["hidden_size"]), raw.get("logit_bias", 0.0), BaseModel(**bm) if bm else None,
                   dict(raw.get("reranker") or {}), dict(raw.get("task") or {}), dict(raw.get("provenance") or {}), version)

    def problem(self) -> str | None:
        names = self.tool_names
        if not names or not all(isinstance(n, str) and n for n in names):
            return f"tools {names!r}"
        if len(set(names)) != len(names):
            return f"duplicate tool names {names!r}"
        if self.hidden_size <= 0:
            return f"hidden_size {self.hidden_size}"
        bias = self.logit_bias
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias):
            return f"logit_bias {bias!r} is not a finite number"
        return None

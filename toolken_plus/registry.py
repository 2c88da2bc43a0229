"""Tools as the agent sees them: a name, a callable (or none, for doc-only
tools), documentation, and the few-shot prompt of its tool mode."""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .prompts import FewShotPrompt


@dataclass
class Tool:
    name: str
    fn: Callable | None
    doc: str
    demo_prompt: FewShotPrompt | None = None
    source: str = ""

    @property
    def display(self) -> str:
        """How the tool is written in prompts and traces (ToolkenGPT: `<add>`)."""
        return f"<{self.name}>"

    @property
    def signature(self) -> inspect.Signature | None:
        return inspect.signature(self.fn) if self.fn is not None else None


def calculator_tools(data_root: str | Path) -> dict[str, Tool]:
    """The 4 GSM8K-XL tools with their ToolkenGPT tool-mode demos.

    Their documentation (what a reranker reads, hashed into checkpoints) is
    the data's `gsm8k-xl/tecton_doc_dict.json` (overview + high-level use),
    falling back to the function's docstring."""
    from toolken_plus_tools import calculator

    root = Path(data_root) / "gsm8k-xl"
    docs = _tecton_docs(root / "tecton_doc_dict.json")
    return {
        name: Tool(name, fn, docs.get(name) or inspect.getdoc(fn) or "",
                   FewShotPrompt.from_file(root / "template" / calculator.DEMO_FILES[name]),
                   source="toolken_plus_tools.calculator")
        for name, fn in calculator.TOOLS.items()
    }


def _tecton_docs(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    raw = json.loads(path.read_text())
    return {name.strip("<>"): " ".join(d[k] for k in ("overview", "highlevel") if k in d) for name, d in raw.items()}

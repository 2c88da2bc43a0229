"""Tools as the agent sees them, and how users define them.

A `Tool` is a name, a callable (or none, for doc-only tools that are chosen but
never run, as in MetaTool), documentation (what a reranker reads; its hash is
stored in checkpoints) and the few-shot prompt of its tool mode.

    from toolken_plus import tool

    @tool(demos=["Question: Water boils at 100 C. In F?\\nAnswer: It is <c_to_f>(100)=212 F."])
    def c_to_f(celsius: float) -> str:
        \"\"\"Convert a temperature from degrees Celsius to degrees Fahrenheit.\"\"\"
        return f"{celsius * 9 / 5 + 32:g}"

    planner = tool.doc_only("TripPlanner", "Plans trips: flights, hotels, itineraries.")

A `ToolPack` groups tools under one name; its tools may depend on the data
folder (the calculator's demos and docs live there). Installed packages publish
tools or packs through the entry-point group `toolken_plus.tools`
(`toolken_plus.tools.plugins` discovers them).
"""

from __future__ import annotations

import hashlib
import inspect
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from toolken_plus.data.prompts import SLOT, FewShotPrompt

# Names are written into prompts as `<name>(`: no spaces, brackets or quotes
# ('&' because MetaTool has a `PDF&URLTool`).
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-&]*")


def doc_hash(doc: str) -> str:
    """What checkpoints record of a tool's documentation (the text a reranker
    reads): a changed doc gives a different hash, and loading warns."""
    return hashlib.sha256((doc or "").encode()).hexdigest()[:16]


class ToolDefinitionError(ValueError):
    """A tool that cannot be registered (no documentation, not callable, bad name)."""


@dataclass
class Tool:
    name: str
    fn: Callable | None
    doc: str
    demo_prompt: FewShotPrompt | None = None
    source: str = ""  # where it was defined: a module, or "<distribution> (entry point <name>)"

    def __post_init__(self):
        """Checked here, so that every way a tool is made (@tool, a direct
        `Tool(...)`, a ToolPack's loader, `dataclasses.replace`) is checked:
        the name is written into prompts as `<name>(`, the documentation is
        what a reranker reads and checkpoints hash."""
        where = _origin_text(self.fn, self.source)
        check_name(self.name, f" (from {where})")
        if self.fn is not None and not callable(self.fn):
            raise ToolDefinitionError(f"tool {self.name!r} ({where}): fn must be callable, or None for a "
                                      f"documentation-only tool; got {type(self.fn).__name__}")
        if not isinstance(self.doc, str) or not self.doc.strip():
            raise ToolDefinitionError(f"tool {self.name!r} ({where}) has no documentation: add a docstring or pass doc=…")

    def __call__(self, *args, **kwargs):
        """A decorated function stays callable as before."""
        if self.fn is None:
            raise TypeError(f"tool {self.name!r} is documentation-only: it has nothing to execute")
        return self.fn(*args, **kwargs)

    @property
    def display(self) -> str:
        """How the tool is written in prompts and traces (ToolkenGPT: `<add>`)."""
        return f"<{self.name}>"

    @property
    def signature(self) -> inspect.Signature | None:
        return inspect.signature(self.fn) if self.fn is not None else None

    @property
    def doc_only(self) -> bool:
        return self.fn is None

    @property
    def summary(self) -> str:
        """The first line of the documentation."""
        return self.doc.strip().splitlines()[0] if self.doc.strip() else ""

    def schema(self) -> dict:
        """The argument schema read from the signature (JSON-schema style), for
        listings and machines; the agent checks arguments with `signature`."""
        out: dict[str, Any] = {"name": self.name, "description": self.doc, "doc_only": self.doc_only}
        if self.fn is None:
            return out
        try:
            hints = typing.get_type_hints(self.fn)
        except Exception:  # unresolvable forward references: fall back to the raw annotations
            hints = {}
        props, required, other_keywords = {}, [], None
        for p in self.signature.parameters.values():
            ann = hints.get(p.name, p.annotation)
            if p.kind is p.VAR_POSITIONAL:
                props[p.name] = {"type": "array", "items": _json_type(ann), "variadic": True}
            elif p.kind is p.VAR_KEYWORD:
                other_keywords = _json_type(ann) or True  # **kwargs: keywords of any other name
            else:
                props[p.name] = _json_type(ann)
                if p.default is p.empty:
                    required.append(p.name)
        out["parameters"] = {"type": "object", "properties": props, "required": required}
        if other_keywords is not None:
            out["parameters"]["additionalProperties"] = other_keywords
        return out


def _json_type(ann: Any) -> dict:
    if ann is inspect.Parameter.empty or ann is Any:
        return {}
    simple = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    if ann in simple:
        return {"type": simple[ann]}
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin in (list, tuple):
        return {"type": "array", **({"items": _json_type(args[0])} if args else {})}
    if origin is typing.Union or (origin is not None and getattr(origin, "__name__", "") == "UnionType"):
        return {"anyOf": [_json_type(a) for a in args]}
    return {"type": getattr(ann, "__name__", str(ann))}


def check_name(name: str, where: str = "") -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ToolDefinitionError(
            f"bad tool name {name!r}{where}: use letters, digits, '_', '.', '-', '&' (it is written into prompts as <name>(…)")
    return name


def demo_prompt(demos, name: str) -> FewShotPrompt | None:
    """Tool-mode demos as a FewShotPrompt.

    Accepts a FewShotPrompt, a path to a template file (with a [QUESTION]
    slot, ToolkenGPT's format), a template string with the slot, or a list of
    demo strings ("Question: …\\nAnswer: … <name>(args)=result …")."""
    if demos is None or isinstance(demos, FewShotPrompt):
        return demos
    if isinstance(demos, Path):
        return FewShotPrompt.from_file(demos)
    if isinstance(demos, str):
        if SLOT in demos:
            return FewShotPrompt.from_text(demos)
        demos = [demos]
    demos = [d.strip() for d in demos]
    if not demos or not all(isinstance(d, str) and d for d in demos):
        raise ToolDefinitionError(f"tool {name!r}: demos must be non-empty strings")
    header = f"Answer the following questions with <{name}>\n\n"
    return FewShotPrompt(prefix=header + "\n\n".join(demos) + "\n\n", question_format=f"Question: {SLOT}\nAnswer:")


def tool(fn: Callable | None = None, *, name: str | None = None, doc: str | None = None, demos=None):
    """Make a typed function a tool: `@tool` or `@tool(name=…, doc=…, demos=…)`.

    The name defaults to the function's name, the documentation to its
    docstring (one of the two is required: it is what a reranker reads), the
    argument schema comes from its signature. Returns a callable `Tool`."""

    def make(f: Callable) -> Tool:
        if not callable(f):
            raise ToolDefinitionError(f"@tool needs a callable, got {type(f).__name__} {f!r}")
        tool_name = check_name(name or getattr(f, "__name__", ""), f" (from {_where(f)})")
        text = doc if doc is not None else inspect.getdoc(f)
        text = text.strip() if isinstance(text, str) else text  # Tool checks that it is non-empty text
        return Tool(tool_name, f, text, demo_prompt(demos, tool_name), source=getattr(f, "__module__", "") or "")

    return make(fn) if fn is not None else make


def doc_only_tool(name: str, doc: str) -> Tool:
    """A tool that is selected but never executed (MetaTool-style evaluation)."""
    return Tool(name, None, doc.strip() if isinstance(doc, str) else doc)  # Tool checks name and doc


tool.doc_only = doc_only_tool


def _where(f) -> str:
    return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', getattr(f, '__name__', '?'))}"


def _origin_text(fn, source: str) -> str:
    """Where a tool comes from, for error messages: its function and, if it
    says more, its source (a plugin's distribution and entry point)."""
    parts = [_where(fn)] if fn is not None else ["documentation-only tool"]
    if source and source != getattr(fn, "__module__", None):
        parts.append(source)
    return ", ".join(parts)


@dataclass
class ToolPack:
    """Several tools under one name. `tools` is a list, or a function of the
    data folder (`Path | None`) for tools whose demos or docs live there."""

    name: str
    tools: Iterable[Tool] | Callable[[Path | None], Iterable[Tool]] = field(default_factory=list)
    doc: str = ""

    def load(self, data_root: str | Path | None = None) -> list[Tool]:
        made = self.tools(Path(data_root) if data_root else None) if callable(self.tools) else self.tools
        return list(made)

"""The four GSM8K-XL calculator tools, behaving like ToolkenGPT's ``funchub/math.py``.

Each tool folds its arguments left to right (``subtract(10, 3, 2)`` is
``10 - 3 - 2``) and returns the result as *text*, because that text is written
back into the generation: ``<add>(1340, 635)=1975``.  The text follows
ToolkenGPT's ``normalize``: round with :func:`toolkengpt_round`, drop trailing
zeros and a trailing dot, never scientific notation.  Two deliberate departures
from its code: ``-0`` prints as ``0``, and large floats are expanded exactly
(ToolkenGPT strips zeros from ``"2.5e+20"`` before expanding it and prints 250).

The tools want at least two numbers; ToolkenGPT would also accept one.  Errors
(division by zero, overflow, too few numbers) raise; the caller runs tools
through a runner (``toolken_plus.tools.isolation``), which records them.
"""

import inspect
import json
import operator
from decimal import Decimal
from functools import reduce
from pathlib import Path

from toolken_plus.data.prompts import FewShotPrompt
from toolken_plus.tasks.answers import toolkengpt_round
from toolken_plus.tools.registry import Tool, ToolPack


def format_number(x: float) -> str:
    """The text ToolkenGPT writes back for a result: 2 decimals (see
    :func:`toolkengpt_round`), no trailing zeros, integral values without a dot,
    no exponent.  ``format_number(10.0) == "10"``, ``format_number(1/3) == "0.33"``."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"expected a number, got {type(x).__name__}")
    x = toolkengpt_round(x)
    if isinstance(x, int):
        return str(x)
    # repr gives the shortest digits that round-trip; Decimal prints them without an exponent
    text = format(Decimal(repr(x)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _numbers(name: str, args: tuple) -> tuple:
    if len(args) < 2:
        raise TypeError(f"{name} takes at least 2 numbers, got {len(args)}")
    for a in args:
        if isinstance(a, bool) or not isinstance(a, (int, float)):
            raise TypeError(f"{name} takes numbers, got {type(a).__name__}")
    return args


def add(*args: float) -> str:
    """Add two or more numbers X, Y, ... and return their sum X+Y+...
    Example: add(251, 117) = 368. The result is rounded to 2 decimals."""
    return format_number(reduce(operator.add, _numbers("add", args)))


def subtract(*args: float) -> str:
    """Subtract the later numbers from the first and return the difference X-Y-...
    Example: subtract(311, 226) = 85. The result is rounded to 2 decimals."""
    return format_number(reduce(operator.sub, _numbers("subtract", args)))


def multiply(*args: float) -> str:
    """Multiply two or more numbers X, Y, ... and return their product X*Y*...
    Example: multiply(280, 457) = 127960. The result is rounded to 2 decimals."""
    return format_number(reduce(operator.mul, _numbers("multiply", args)))


def divide(*args: float) -> str:
    """Divide the first number by the later ones and return the ratio X/Y/...
    Example: divide(2356, 4) = 589. The result is rounded to 2 decimals."""
    return format_number(reduce(operator.truediv, _numbers("divide", args)))


# ToolkenGPT's order: toolken ids 0..3 in its gsm8k-xl func_dict.json
TOOLS = {"add": add, "subtract": subtract, "multiply": multiply, "divide": divide}

# Few-shot demos for tool mode, in the data's gsm8k-xl/template/ folder (not copied here)
DEMO_FILES = {name: f"llama_{name}.txt" for name in TOOLS}


def tools(data_root: Path | None = None, *, require_demos: bool = False) -> list[Tool]:
    """The calculator tools, documented and demonstrated from the data folder.

    The docs come from `gsm8k-xl/tecton_doc_dict.json` (what GSM8K-XL
    checkpoints were trained with, so their doc hashes match), else from the
    docstrings; the tool-mode demos from `gsm8k-xl/template/llama_<tool>.txt`.
    Without the data (or the file) a tool has no demos, unless `require_demos`,
    which makes a missing template an error naming the path."""
    root = Path(data_root) / "gsm8k-xl" if data_root else None
    docs = tecton_docs(root / "tecton_doc_dict.json") if root else {}
    out = []
    for name, fn in TOOLS.items():
        template = root / "template" / DEMO_FILES[name] if root else None
        demos = None
        if template is not None and (require_demos or template.is_file()):
            demos = FewShotPrompt.from_file(template)
        elif require_demos:
            raise FileNotFoundError(f"tool-mode demos of <{name}> need data_root (gsm8k-xl/template/{DEMO_FILES[name]})")
        out.append(Tool(name, fn, docs.get(name) or inspect.getdoc(fn) or "", demos, source=__name__))
    return out


def tecton_docs(path: Path) -> dict[str, str]:
    """Tool docs from ToolkenGPT's `tecton_doc_dict.json` ({"<add>": {"overview", "highlevel", …}})."""
    if not path.is_file():
        return {}
    raw = json.loads(path.read_text())
    return {name.strip("<>"): " ".join(d[k] for k in ("overview", "highlevel") if k in d) for name, d in raw.items()}


# What the entry point `calculator` of the group `toolken_plus.tools` names (pyproject.toml).
PACK = ToolPack("calculator", tools, doc="add, subtract, multiply, divide: ToolkenGPT's GSM8K-XL calculator")

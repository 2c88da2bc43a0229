"""toolken_plus: teach a frozen language model to use tools.

Each tool is a *toolken*, a trainable embedding beside the frozen LM head
(ToolkenGPT); Toolken+ adds a documentation reranker with a Reject option.

    from toolken_plus import tool, load_agent

    @tool
    def c_to_f(celsius: float) -> str:
        "Convert degrees Celsius to degrees Fahrenheit."
        return f"{celsius * 9 / 5 + 32:g}"

    with load_agent("outputs/train/gsm8k_xl/<run>") as agent:
        print(agent.run("A robe takes 8 bolts of blue fiber ...").trace)
"""

import importlib

from toolken_plus.tools.registry import Tool, ToolPack, tool

# Heavier parts of the API load on first use: a tool worker process imports
# this package and must not pay for torch.
_LAZY = {
    "load_agent": "toolken_plus.infer.recipe",
    "TrainToolkensRecipe": "toolken_plus.train.recipe",
    "TrainConfig": "toolken_plus.config.schema",
    "InferConfig": "toolken_plus.config.schema",
    "ToolkenHead": "toolken_plus.adapter",
}

__all__ = ["Tool", "ToolPack", "tool", *_LAZY]
__version__ = "0.2.0"


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'toolken_plus' has no attribute {name!r}")

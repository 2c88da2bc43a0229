"""toolken_plus: teach a frozen language model to use tools.

Each tool is a *toolken*, a trainable embedding beside the frozen LM head
(ToolkenGPT); Toolken+ adds a documentation reranker with a Reject option.

    from toolken_plus import tool

    @tool
    def c_to_f(celsius: float) -> str:
        "Convert degrees Celsius to degrees Fahrenheit."
        return f"{celsius * 9 / 5 + 32:g}"
"""

from toolken_plus.tools.registry import Tool, ToolPack, tool

__all__ = ["Tool", "ToolPack", "tool"]
__version__ = "0.1.0"

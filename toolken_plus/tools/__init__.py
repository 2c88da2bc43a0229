"""Tools: how they are defined (`registry.py`: Tool, ToolPack, @tool), found
(`plugins.py`: entry points), called (`calls.py`: strict argument parsing,
result formatting) and isolated (`isolation.py`: threads or worker processes).
Light on purpose: a tool worker process imports this package, never torch."""

from toolken_plus.tools.registry import Tool, ToolDefinitionError, ToolPack, doc_hash, tool

__all__ = ["Tool", "ToolDefinitionError", "ToolPack", "doc_hash", "tool"]

"""toolken_plus: teach a frozen language model to use tools.

Each tool is a *toolken*, a trainable embedding beside the frozen LM head
(ToolkenGPT); Toolken+ adds a documentation reranker with a Reject option.
"""

__version__ = "0.1.0"

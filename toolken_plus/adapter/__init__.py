"""The trained adapter: toolken rows W_τ, the calibrated logit bias and the
Toolken+ rerank rows W_r, saved as a small self-describing folder."""

from toolken_plus.adapter.head import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, ToolkenHead

__all__ = ["CONFIG_NAME", "CheckpointError", "ToolkenHead", "WEIGHTS_NAME"]

"""The trained adapter: toolken rows W_τ, the calibrated logit bias and the
Toolken+ rerank rows W_r (head.py), saved as a small self-describing folder
(config.py); and the LoRA baseline's PEFT adapter, merged into the backbone
(lora.py)."""

from toolken_plus.adapter.config import (
    CONFIG_NAME,
    RERANK_KEY,
    TOOLKEN_KEY,
    WEIGHTS_NAME,
    BaseModel,
    CheckpointError,
    ToolEntry,
    ToolkenConfig,
)
from toolken_plus.adapter.head import ToolkenHead, checkpoint_tools
from toolken_plus.adapter.lora import apply_lora, has_lora_adapter

__all__ = ["BaseModel", "CONFIG_NAME", "CheckpointError", "RERANK_KEY", "TOOLKEN_KEY", "ToolEntry", "ToolkenConfig",
           "ToolkenHead", "WEIGHTS_NAME", "apply_lora", "checkpoint_tools", "has_lora_adapter"]

"""The frozen backbone: what it exposes (`model.py`) and how it is loaded (`loading.py`)."""

from toolken_plus.backbone.loading import (
    DEFAULT_BACKBONE,
    SMOLLM2_135M,
    HFBackbone,
    TinyRandomBackbone,
    backbone_spec,
    build_backbone,
    load_backbone,
    load_tokenizer,
    resolve_gguf_path,
    tiny_random_backbone,
)
from toolken_plus.backbone.model import Backbone, FewRowsLinear, cache_layers, freeze, times_transposed

__all__ = ["Backbone", "DEFAULT_BACKBONE", "FewRowsLinear", "HFBackbone", "SMOLLM2_135M", "TinyRandomBackbone",
           "backbone_spec", "build_backbone", "cache_layers", "freeze",
           "load_backbone", "load_tokenizer", "resolve_gguf_path", "times_transposed", "tiny_random_backbone"]

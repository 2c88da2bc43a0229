"""Which training recipe a config asks for (`method=`, config/methods.py)."""

from __future__ import annotations

from pathlib import Path

from toolken_plus.backbone import Backbone
from toolken_plus.config.methods import method_name
from toolken_plus.train.lora_recipe import TrainLoraRecipe
from toolken_plus.train.recipe import TrainToolkensRecipe


def train_recipe(cfg, run_dir: str | Path, backbone: Backbone | None = None):
    """TrainToolkensRecipe (method=toolkens, the default) or TrainLoraRecipe
    (method=lora); method=icl trains nothing."""
    method = method_name(cfg.method)
    if method == "icl":
        raise ValueError("method=icl trains nothing: run `python infer.py method=icl experiment=…` directly")
    if method == "lora":
        return TrainLoraRecipe(cfg, run_dir, backbone)
    return TrainToolkensRecipe(cfg, run_dir, backbone)

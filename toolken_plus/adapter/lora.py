"""The LoRA baseline's trained adapter (method=lora): a folder in PEFT's own
format, and the backbone with it merged in.

Merging (rather than keeping PEFT's wrapper layers) gives back a plain
transformers model, so KV caches, batched decoding and `Backbone.step` work
on it unchanged. peft is imported only when an adapter is applied: importing
this package must not pay for it.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

from toolken_plus.backbone.model import Backbone, freeze
from toolken_plus.rundir import file_sha256  # also imported from here by train/lora.py

# PEFT's file names (peft.utils.constants CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME).
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"


def has_lora_adapter(run_dir: str | Path) -> bool:
    """Whether `run_dir` holds a PEFT LoRA adapter (its adapter_config.json says peft_type LORA)."""
    try:
        config = json.loads((Path(run_dir) / ADAPTER_CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("peft_type") == "LORA"


def apply_lora(backbone: Backbone, adapter_dir: str | Path) -> Backbone:
    """The backbone with the LoRA adapter in `adapter_dir` merged into its weights.

    The merge happens in place: `backbone.model` becomes the merged model
    (copying it first would double the memory of the largest object in the
    process), so the Backbone passed in must not be used as the base model
    afterwards. The returned Backbone's revision names the adapter's weights,
    so feature caches and checkpoints never mix the base and the tuned model.
    """
    from peft import PeftModel, get_peft_model_state_dict

    adapter_dir = Path(adapter_dir)
    weights = adapter_dir / ADAPTER_WEIGHTS_NAME
    if not has_lora_adapter(adapter_dir) or not weights.is_file():
        raise FileNotFoundError(f"{adapter_dir}: no LoRA adapter there ({ADAPTER_CONFIG_NAME} with peft_type LORA and "
                                f"{ADAPTER_WEIGHTS_NAME}); train one with method=lora")
    config = json.loads((adapter_dir / ADAPTER_CONFIG_NAME).read_text())
    # LoraTrainer records the backbone it trained on; adapters from elsewhere may not.
    trained_on = (config.get("base_model_name_or_path"), config.get("revision"))
    if trained_on[1] is not None and trained_on != (backbone.name, backbone.revision):
        raise ValueError(f"{adapter_dir}: the LoRA adapter was trained on backbone {trained_on[0]} (revision {trained_on[1]}), "
                         f"not on {backbone.name} (revision {backbone.revision})")
    try:
        model = PeftModel.from_pretrained(backbone.model, adapter_dir)
    except (ValueError, RuntimeError) as err:  # target modules not in the model; weight shapes of another model
        raise ValueError(f"{adapter_dir}: the LoRA adapter does not fit backbone {backbone.name}: {err}") from err
    # PEFT only warns when the file lacks weights of some adapted layer (they
    # would keep their random init): refuse instead. (save_embedding_layers=False:
    # "auto" would look the base model's name up on the HF Hub.)
    with safe_open(str(weights), framework="pt") as f:
        missing = set(get_peft_model_state_dict(model, save_embedding_layers=False)) - set(f.keys())
    if missing:
        raise ValueError(f"{adapter_dir}: {ADAPTER_WEIGHTS_NAME} lacks weights of {len(missing)} adapted layer(s), "
                         f"e.g. {sorted(missing)[0]}")
    merged = freeze(model.merge_and_unload())
    return Backbone(model=merged, tokenizer=backbone.tokenizer, name=backbone.name + "+lora",
                    revision=f"{backbone.revision}+lora-{file_sha256(weights)[:12]}")

"""Hydra's view of the configuration: the schemas of toolken_plus/conf/config.yaml
(TrainConfig), infer.yaml (InferConfig) and serve.yaml
(ServeRunConfig), and the options of the five
groups, registered from the classes that define them (one source of truth:
each option's fields and defaults live in its dataclass).

    model     smollm2_135m (default) | hf | tiny_random          backbone/loading.py
    task      every Task in toolken_plus/tasks/ by its name      tasks/
    reranker  none (default) | llm | embedding                   rerank/
    method    toolkens (default) | icl | lora                    config/methods.py
    logger    none (default) | wandb                             loggers.py

A group option of your own can also be a YAML file in <folder>/<group>/ with a
`_target_` naming its class, the folder on Hydra's search path
(`hydra.searchpath=[file://<folder>]`; docs/configuration.md).
"""

from __future__ import annotations

import functools

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from toolken_plus.backbone import DEFAULT_BACKBONE, HFBackbone, TinyRandomBackbone
from toolken_plus.config.methods import METHODS
from toolken_plus.config.schema import InferConfig, ServeRunConfig, TrainConfig
from toolken_plus.loggers import NoLogger, Wandb
from toolken_plus.rerank import EmbeddingRerank, LLMRerank, NoRerank
from toolken_plus.tasks import known_tasks


def group_options() -> dict[str, dict[str, object]]:
    """Every option of every group: name → its config node."""
    hf = OmegaConf.structured(HFBackbone)
    hf.name_or_path = "???"  # model=hf needs model.name_or_path=<hub id | local dir | file.gguf>
    return {
        "model": {"smollm2_135m": DEFAULT_BACKBONE, "hf": hf, "tiny_random": TinyRandomBackbone()},
        "task": {name: cls() for name, cls in known_tasks().items()},
        "reranker": {"none": NoRerank(), "llm": LLMRerank(), "embedding": EmbeddingRerank()},
        "logger": {"none": NoLogger(), "wandb": Wandb()},
        "method": {name: cls() for name, cls in METHODS.items()},
    }


@functools.cache
def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="infer_schema", node=InferConfig)
    cs.store(name="serve_schema", node=ServeRunConfig)
    for group, options in group_options().items():
        for name, node in options.items():
            cs.store(group=group, name=name, node=node)

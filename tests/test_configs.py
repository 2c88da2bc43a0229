"""Every option of every config group composes, for training and for
inference, into the typed objects the library takes; the defaults live in one
place (the dataclasses), so the composed config equals them."""

import dataclasses

import pytest
from conftest import compose
from omegaconf import OmegaConf

from toolken_plus.cli.configs import group_options
from toolken_plus.config import CONFIG_DIR, as_config
from toolken_plus.config.schema import InferConfig, ServeRunConfig, TrainConfig
from toolken_plus.config.validation import config_problems

# what an option needs set before it can be used (model=hf has no default model)
REQUIRED = {("model", "hf"): ["model.name_or_path=/some/model"], ("task", "custom"): ["task.train_file=train.jsonl"]}


def _all_options():
    for group, options in group_options().items():
        for name in options:
            yield group, name
    for path in sorted((CONFIG_DIR / "experiment").glob("*.yaml")):
        yield "experiment", path.stem


@pytest.mark.parametrize("config_name, cls", [("config", TrainConfig), ("infer", InferConfig), ("serve", ServeRunConfig)])
@pytest.mark.parametrize("group, option", list(_all_options()))
def test_every_option_composes_into_valid_typed_config(group, option, config_name, cls):
    cfg = as_config(compose([f"{group}={option}", *REQUIRED.get((group, option), [])], config_name), cls)
    assert config_problems(cfg) == []
    if group != "experiment":
        assert type(getattr(cfg, group)) is OmegaConf.get_type(group_options()[group][option])
    else:
        assert cfg.task is not None  # an experiment picks its task


def test_defaults_come_from_the_dataclasses_only():
    train = as_config(compose([], "config"), TrainConfig)
    for section in ("data", "trainer", "cache", "calibration", "tools", "agent"):
        assert getattr(train, section) == getattr(TrainConfig(), section), section
    assert train.model == group_options()["model"]["smollm2_135m"]
    infer = as_config(compose(["checkpoint=/some/run"], "infer"), InferConfig)
    assert infer.model is None and infer.task is None  # the checkpoint's own
    assert infer.agent == InferConfig().agent


def test_each_group_option_is_a_dataclass_with_a_name_or_a_kind():
    for group, options in group_options().items():
        for name, node in options.items():
            obj = node if dataclasses.is_dataclass(node) else None
            if obj is not None and group in ("task", "reranker", "logger"):
                assert obj.name == name, (group, name)

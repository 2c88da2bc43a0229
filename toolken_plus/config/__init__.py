"""Configuration: the schema of every option (`schema.py`), range checks
(`validation.py`), default paths, and turning a Hydra config into the typed
objects the library takes."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TypeVar

from omegaconf import DictConfig, OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The Hydra configs ship inside the package (package data), so an installed
# wheel trains and infers without a source checkout.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"

T = TypeVar("T")


def default_data_root() -> Path:
    """$TOOLKEN_PLUS_DATA, else ../shared/data beside the project: the data
    folder for files outside the known datasets (task=custom) when `data.root`
    is unset. Datasets are looked up in several folders: data/locate.py."""
    return Path(os.environ.get("TOOLKEN_PLUS_DATA") or PROJECT_ROOT.parent / "shared" / "data")


def default_cache_dir() -> Path:
    """Backbone conversions and feature caches, shared by all runs."""
    return Path(os.environ.get("TOOLKEN_PLUS_CACHE") or Path.home() / ".cache" / "toolken_plus")


def data_root(data) -> Path:
    """data.root, else default_data_root(): where files outside the known
    datasets are read (a task's datasets: data/locate.py, task_root)."""
    return Path(data.root) if data.root else default_data_root()


def cache_dir(cfg) -> Path:
    return Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()


def as_config(cfg, cls: type[T]) -> T:
    """A typed config object from what a caller has: the object itself, or a
    Hydra/OmegaConf config composed on the `cls` schema. Group options that
    are not our dataclasses but nodes with `_target_` (a user's own task or
    backbone in a YAML file) are instantiated by Hydra."""
    if isinstance(cfg, cls):
        obj = cfg
    elif isinstance(cfg, DictConfig):
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), cfg))
    else:
        raise TypeError(f"expected a {cls.__name__} or a DictConfig composed on it, got {type(cfg).__name__}")
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, dict) and "_target_" in value:
            from hydra.utils import instantiate

            setattr(obj, f.name, instantiate(value))
    return obj


def to_plain(obj):
    """Plain JSON-able data (dicts, lists, scalars) of a config object, for
    logs, checkpoints and fingerprints; a group option records its class."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
        return out
    if isinstance(obj, DictConfig):
        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj

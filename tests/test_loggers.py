import json

import pytest

from toolken_plus.train.loggers import build_logger


def test_run_dir_log_is_always_written(tmp_path):
    logger = build_logger({"kind": "none"}, tmp_path, {})
    logger.log({"train/loss": 1.5}, step=1)
    logger.finish()
    assert json.loads((tmp_path / "train_log.jsonl").read_text()) == {"step": 1, "train/loss": 1.5}


def test_wandb_logger_stays_off_the_network(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = build_logger({"kind": "wandb", "project": "t", "mode": "disabled"}, tmp_path, {"a": 1})
    logger.log({"x": 1.0}, step=1)
    logger.finish()
    assert (tmp_path / "train_log.jsonl").is_file()


def test_unknown_logger_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown logger.kind 'tensorboard'"):
        build_logger({"kind": "tensorboard"}, tmp_path, {})

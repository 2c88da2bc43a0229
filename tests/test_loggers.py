import json

import pytest

from toolken_plus.loggers import NoLogger, Wandb, build_logger


def test_run_dir_log_is_always_written(tmp_path):
    logger = build_logger(NoLogger(), tmp_path, {})
    logger.log({"train/loss": 1.5}, step=1)
    logger.finish()
    assert json.loads((tmp_path / "train_log.jsonl").read_text()) == {"step": 1, "train/loss": 1.5}


def test_wandb_logger_stays_off_the_network(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = build_logger(Wandb(project="t", mode="disabled"), tmp_path, {"a": 1})
    logger.log({"x": 1.0}, step=1)
    logger.finish()
    assert (tmp_path / "train_log.jsonl").is_file()


def test_no_logger_given_still_writes_the_run_dir_log(tmp_path):
    build_logger(None, tmp_path, {}).log({"x": 1.0}, step=2)
    assert json.loads((tmp_path / "train_log.jsonl").read_text()) == {"step": 2, "x": 1.0}

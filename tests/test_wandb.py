"""logger=wandb, against a fake `wandb` module that records the calls (no
network, no wandb files): per-epoch validation metrics of training, run names
and groups of sweep jobs, and infer.py's metrics and predictions table."""

import sys
import types

import pytest
from conftest import GSM8K_XL_TASK, PROJECT_ROOT
from omegaconf import OmegaConf

from toolken_plus.backbone import TinyRandomBackbone
from toolken_plus.config.schema import AgentConfig, DataConfig, InferConfig, TrainConfig, TrainerConfig
from toolken_plus.infer.recipe import run_inference
from toolken_plus.loggers import Wandb, build_logger, sweep_naming
from toolken_plus.tasks.gsm8k_xl import Gsm8kXL
from toolken_plus.train.recipe import TrainToolkensRecipe


class FakeRun:
    def __init__(self, calls, **init):
        self.calls, self.init, self.logged, self.finished = calls, init, [], False

    def log(self, data, step=None):
        self.logged.append((step, data))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    mod = types.ModuleType("wandb")
    mod.runs = []

    def init(**kwargs):
        run = FakeRun(mod.runs, **kwargs)
        mod.runs.append(run)
        return run

    class Table:
        def __init__(self, columns, data):
            self.columns, self.data = columns, data

    mod.init, mod.Table = init, Table
    monkeypatch.setitem(sys.modules, "wandb", mod)
    return mod


def test_training_logs_validation_metrics_every_epoch(tmp_path, tiny_backbone, data_root, fake_wandb):
    cfg = TrainConfig(task=Gsm8kXL(**GSM8K_XL_TASK), model=TinyRandomBackbone(hidden_size=16), cache_dir=str(tmp_path / "cache"),
                      data=DataConfig(root=str(data_root), limit_train=16, limit_eval=8),
                      trainer=TrainerConfig(epochs=3, progress=False), logger=Wandb(project="t", mode="disabled"))
    recipe = TrainToolkensRecipe(cfg, tmp_path / "run", backbone=tiny_backbone)
    recipe.run()
    (run,) = fake_wandb.runs
    assert run.init["project"] == "t" and run.init["mode"] == "disabled" and run.init["job_type"] == "train"
    assert run.init["name"] is None and run.init["group"] is None  # not a sweep: wandb names it
    per_epoch = [(step, d) for step, d in run.logged if "epoch" in d]
    assert [s for s, _ in per_epoch] == [1, 2, 3]
    for _, d in per_epoch:
        assert {"train/loss", "val/loss", "val_epoch/precision", "val_epoch/recall", "val_epoch/f1"} <= d.keys()
    assert "val/f1" in run.logged[-1][1] and run.finished  # the calibrated final metrics
    assert "val/loss" in recipe.trainer.history[0]


def test_sweep_jobs_are_named_by_their_overrides_and_grouped_by_sweep():
    hydra = OmegaConf.create({"mode": "MULTIRUN", "sweep": {"dir": "multirun/train/gsm8k_xl/2026-12-05_07-00-00"},
                              "job": {"num": 3, "override_dirname": "seed=1,trainer.lr=0.01"}})
    assert sweep_naming(hydra) == ("seed=1,trainer.lr=0.01", "2026-12-05_07-00-00")
    hydra.job.override_dirname = ""
    assert sweep_naming(hydra) == ("3", "2026-12-05_07-00-00")
    hydra.mode = "RUN"
    assert sweep_naming(hydra) == (None, None)
    assert sweep_naming() == (None, None)  # no Hydra job running


def test_sweep_naming_reaches_wandb_init_and_explicit_names_win(tmp_path, monkeypatch, fake_wandb):
    import toolken_plus.loggers as loggers

    monkeypatch.setattr(loggers, "sweep_naming", lambda: ("seed=2", "sweep-dir"))
    build_logger(Wandb(mode="disabled"), tmp_path, {}).finish()
    build_logger(Wandb(mode="disabled", run_name="mine", group="g"), tmp_path, {}).finish()
    assert [(r.init["name"], r.init["group"]) for r in fake_wandb.runs] == [("seed=2", "sweep-dir"), ("mine", "g")]


def test_sweep_naming_from_a_real_hydra_multirun(tmp_path):
    """A Hydra multirun (`-m`) as train.py/infer.py run one: each job sees its own overrides and the sweep dir."""
    import os
    import subprocess

    sweep = tmp_path / "sweep" / "my-sweep"
    script = tmp_path / "probe.py"
    script.write_text(
        "import hydra\nfrom toolken_plus.loggers import sweep_naming\n"
        "@hydra.main(version_base='1.3', config_path=None)\n"
        "def main(cfg):\n    print('NAMING', sweep_naming())\n"
        "main()\n")
    proc = subprocess.run([sys.executable, str(script), "-m", "+seed=1,2", f"hydra.sweep.dir={sweep}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "NAMING ('+seed=1', 'my-sweep')" in proc.stdout and "NAMING ('+seed=2', 'my-sweep')" in proc.stdout


def test_infer_logs_metrics_and_a_predictions_table(tmp_path, tiny_backbone, data_root, fake_wandb):
    train_cfg = TrainConfig(task=Gsm8kXL(**GSM8K_XL_TASK), model=TinyRandomBackbone(hidden_size=16),
                            cache_dir=str(tmp_path / "cache"), data=DataConfig(root=str(data_root), limit_train=16, limit_eval=8),
                            trainer=TrainerConfig(epochs=1, progress=False))
    TrainToolkensRecipe(train_cfg, tmp_path / "run", backbone=tiny_backbone).run()
    cfg = InferConfig(checkpoint=str(tmp_path / "run"), logger=Wandb(project="t", mode="disabled"),
                      data=DataConfig(root=str(data_root), limit_eval=3),
                      agent=AgentConfig(batch_size=2, max_new_tokens=6, max_arg_tokens=3, progress=False, logit_bias=2.0))
    metrics, rows, _ = run_inference(cfg, tmp_path / "inf", backbone=tiny_backbone)
    (run,) = fake_wandb.runs
    assert run.init["job_type"] == "infer" and run.finished
    logged = {k: v for _, d in run.logged for k, v in d.items()}
    assert logged["accuracy"] == metrics["accuracy"] and logged["n"] == 3
    assert any(k.startswith("per_tool/") for k in logged) or not metrics.get("per_tool")
    table = logged["predictions"]
    assert len(table.data) == 3 and {"question", "generation", "correct"} <= set(table.columns)
    assert all(isinstance(c, (str, int, float, bool, type(None))) for row in table.data for c in row)
    assert (tmp_path / "inf" / "infer_log.jsonl").is_file()


def test_infer_without_a_logger_writes_no_log(tmp_path, tiny_backbone, data_root, fake_wandb):
    cfg = InferConfig(task=Gsm8kXL(**GSM8K_XL_TASK), data=DataConfig(root=str(data_root), limit_eval=2),
                      agent=AgentConfig(setting="no_tools", batch_size=2, max_new_tokens=4, progress=False))
    run_inference(cfg, tmp_path / "inf", backbone=tiny_backbone)
    assert fake_wandb.runs == [] and not (tmp_path / "inf" / "infer_log.jsonl").exists()


def test_real_wandb_offline_accepts_names_groups_and_the_table(tmp_path, monkeypatch):
    """The real wandb, offline into tmp_path: our init arguments and Table are ones it takes."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = build_logger(Wandb(project="t", run_name="seed=1", group="sweep"), tmp_path / "run", {"seed": 1},
                          log_file="infer_log.jsonl", job_type="infer")
    logger.log({"accuracy": 0.5})
    logger.log_table("predictions", ["question", "correct", "calls"], [["1+1?", True, "[]"], ["2+2?", None, "[]"]])
    logger.finish()
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))

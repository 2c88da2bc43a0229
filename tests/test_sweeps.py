"""Sweeps: the SLURM launcher (hydra-submitit-launcher) composes without a
cluster, and a multirun ends with a summary table of its jobs
(toolken_plus/cli/sweep_summary.py)."""

import csv
import json

import pytest
import yaml
from conftest import GSM8K_XL, PROJECT_ROOT, run_entry_point

from toolken_plus.cli.sweep_summary import write_summary


def test_submitit_slurm_launcher_composes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[slurm]'")
    proc = run_entry_point("train.py", ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                                        "hydra.launcher.timeout_min=120", "experiment=metatool", "--cfg", "hydra"],
                           tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    hydra_cfg = yaml.safe_load(proc.stdout)["hydra"]
    assert "SlurmLauncher" in hydra_cfg["launcher"]["_target_"]
    assert hydra_cfg["launcher"]["partition"] == "gpu" and hydra_cfg["launcher"]["timeout_min"] == 120
    assert hydra_cfg["callbacks"]["sweep_summary"]["_target_"].endswith("SweepSummary")


def _job(sweep, num, overrides, metrics=None):
    d = sweep / str(num)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))


def test_summary_lists_every_job_and_a_failed_one(tmp_path):
    sweep = tmp_path / "sweep"
    for num in (0, 1, 10):  # sorted by job number, not by name
        _job(sweep, num, ["experiment=metatool", f"trainer.lr={num}"], {"val/f1": 0.5 + num / 100, "epochs": 3,
                                                                         "task": "metatool"})
    _job(sweep, 2, ["experiment=metatool", "trainer.lr=2"])  # failed: no metrics.json
    md = write_summary(sweep)
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert [r["job"] for r in rows] == ["0", "1", "2", "10"]
    assert [r["overrides"] for r in rows] == ["trainer.lr=0", "trainer.lr=1", "trainer.lr=2", "trainer.lr=10"]
    assert rows[2]["status"] == "no metrics.json" and rows[2]["val/f1"] == ""
    assert rows[3]["val/f1"] == "0.6" and "task" not in rows[0]  # numbers only
    text = md.read_text()
    assert "common overrides: `experiment=metatool`" in text and "| 10 | `trainer.lr=10` | ok | 0.6 | 3 |" in text
    assert write_summary(tmp_path / "empty") is None


def test_local_multirun_writes_the_summary(tmp_path):
    args = ["-m", *GSM8K_XL, "model=tiny_random", "data.limit_train=16", "data.limit_eval=8", "trainer.epochs=1,2",
            "trainer.progress=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = run_entry_point("train.py", args, tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "sweep" / "sweep_summary.csv").open()))
    assert [(r["job"], r["overrides"], r["status"], r["epochs"]) for r in rows] == [
        ("0", "trainer.epochs=1", "ok", "1"), ("1", "trainer.epochs=2", "ok", "2")]
    for r in rows:
        assert r["val/f1"] == str(json.loads((tmp_path / "sweep" / r["job"] / "metrics.json").read_text())["val/f1"])
    assert "trainer.epochs=2" in (tmp_path / "sweep" / "sweep_summary.md").read_text()


@pytest.mark.slow
def test_submitit_local_sweep_writes_the_summary(tmp_path, monkeypatch):
    """The submitit launcher (its local executor: the same code path as SLURM
    without a cluster) runs the jobs, then the summary is written (~45 s)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[slurm]'")
    # the jobs are new interpreters started by submitit: they import this checkout
    monkeypatch.setenv("PYTHONPATH", str(PROJECT_ROOT))
    args = ["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", *GSM8K_XL, "model=tiny_random",
            "data.limit_train=16", "data.limit_eval=8", "trainer.epochs=1,2", "trainer.progress=false",
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = run_entry_point("train.py", args, tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "sweep" / "sweep_summary.csv").open()))
    assert [(r["overrides"], r["status"]) for r in rows] == [("trainer.epochs=1", "ok"), ("trainer.epochs=2", "ok")]

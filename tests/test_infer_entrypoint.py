"""infer.py end to end on a tiny random backbone, and the embeddable API."""

import json

import pytest
from conftest import run_entry_point
from test_train_entrypoint import TINY, _compose

from toolken_plus.backbone import TinyRandomBackbone
from toolken_plus.infer.recipe import load_agent
from toolken_plus.train.recipe import TrainToolkensRecipe


@pytest.fixture(scope="module")
def model_tiny_random(data_root):
    """The backbone of `model=tiny_random`, as the subprocesses build it."""
    return TinyRandomBackbone().load()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, data_root, model_tiny_random):
    tmp = tmp_path_factory.mktemp("ckpt")
    cfg = _compose(TINY + [f"cache_dir={tmp / 'cache'}", f"data.root={data_root}"])
    TrainToolkensRecipe(cfg, tmp / "run", backbone=model_tiny_random).run()
    return tmp / "run"


def _run_infer(args, tmp_path):
    return run_entry_point("infer.py", args, tmp_path)


def test_infer_py_writes_predictions_metrics_report(tmp_path, tiny_checkpoint, data_root):
    run_dir = tmp_path / "inf"
    # The checkpoint says which backbone and task it needs: no model= or experiment=.
    proc = _run_infer([f"checkpoint={tiny_checkpoint}", "data.limit_eval=3", "agent.batch_size=2", "agent.max_new_tokens=12", "agent.logit_bias=2.0",
                       "agent.max_arg_tokens=4", "agent.progress=false", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("accuracy", "n", "tool_calls", "tool_errors", "false_positive_calls", "per_tool"):
        assert key in metrics
    assert metrics["n"] == 3 and metrics["logit_bias"] == 2.0
    rows = [json.loads(x) for x in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and {"question", "generation", "calls", "label", "correct"} <= rows[0].keys()
    first = json.loads((data_root / "gsm8k-xl" / "test.json").read_text().splitlines()[0])
    assert str(first["enhanced_v"][0]) in rows[0]["question"] and "{v_" not in rows[0]["question"]  # {v_i} filled with enhanced_v
    assert (run_dir / "report.md").read_text().startswith("# GSM8K-XL evaluation")
    assert "accuracy" in proc.stdout


def test_infer_takes_any_eval_file(tmp_path, data_root):
    src = (data_root / "gsm8k-xl" / "test.json").read_text().splitlines()[5:7]
    (tmp_path / "mine.jsonl").write_text("\n".join(src) + "\n")
    proc = _run_infer(["experiment=gsm8k_xl", "model=tiny_random", "agent.setting=no_tools", f"data.eval_file={tmp_path / 'mine.jsonl'}",
                       "agent.max_new_tokens=5", "agent.progress=false", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["n"] == 2


def test_load_agent_api(tiny_checkpoint, model_tiny_random, data_root):
    agent = load_agent(tiny_checkpoint, backbone=model_tiny_random, data_root=data_root, max_new_tokens=5)
    result = agent.run("Tom has 3 apples and buys 4 more. How many?")
    assert result.new_tokens <= 5 and isinstance(result.calls, list)
    assert agent.bias == pytest.approx(json.loads((tiny_checkpoint / "toolken_config.json").read_text())["logit_bias"])
    # Without a backbone: the checkpoint's spec rebuilds the very model it was trained on.
    rebuilt = load_agent(tiny_checkpoint, data_root=data_root, max_new_tokens=5)
    assert (rebuilt.backbone.name, rebuilt.backbone.revision) == (model_tiny_random.name, model_tiny_random.revision)
    assert rebuilt.run("Tom has 3 apples and buys 4 more. How many?").trace == result.trace
    assert type(rebuilt.task).__name__ == "Gsm8kXL"


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    proc = _run_infer(["experiment=gsm8k_xl", "model=tiny_random", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    assert proc.returncode != 0 and "checkpoint=" in proc.stderr

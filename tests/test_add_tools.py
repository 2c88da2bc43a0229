"""Adding toolkens to a trained head: tensor growth, frozen rows, config
errors, and an installed plugin's tool added to a checkpoint end to end
(trained on a few examples, loaded, called by the agent)."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import DATA_ROOT, GSM8K_XL, PROJECT_ROOT, compose
from fake_plugins import install, weather_distribution, weather_examples  # noqa: F401 (fixture)
from safetensors.torch import load_file, save_file

from toolken_plus.adapter import ToolkenHead
from toolken_plus.config.schema import ToolsConfig, TrainConfig, TrainerConfig
from toolken_plus.rerank import LLMRerank
from toolken_plus.tools.plugins import discover_tools
from toolken_plus.tools.registry import doc_hash
from toolken_plus.train.add_tools import ToolAddition, grow_state_dict
from toolken_plus.train.recipe import TrainToolkensRecipe
from toolken_plus.train.trainer import ToolkenTrainer

CALCULATOR = ["add", "subtract", "multiply", "divide"]
PROMPT = "Answer the question.\n\nQuestion: [QUESTION]\nAnswer:"


def test_grow_inserts_new_rerank_rows_before_reject():
    g = torch.Generator().manual_seed(0)
    n, d = 3, 8
    old = {"toolken.weight": torch.randn(n, d, generator=g), "rerank.weight": torch.randn(n + 1, d, generator=g),
           "something.else": torch.arange(5.0)}
    new_rows = torch.randn(2, d, generator=g)
    out = grow_state_dict(old, new_rows)
    assert out["toolken.weight"].shape == (5, d) and out["rerank.weight"].shape == (6, d)
    assert torch.equal(out["toolken.weight"][:n], old["toolken.weight"])
    assert torch.equal(out["toolken.weight"][n:], new_rows)
    assert torch.equal(out["rerank.weight"][:n], old["rerank.weight"][:n])
    assert torch.equal(out["rerank.weight"][n:n + 2], new_rows)
    assert torch.equal(out["rerank.weight"][-1], old["rerank.weight"][-1])  # Reject stays last
    assert out["something.else"] is old["something.else"]
    assert torch.equal(old["rerank.weight"], old["rerank.weight"].clone())  # input untouched
    assert "rerank.weight" not in grow_state_dict({"toolken.weight": old["toolken.weight"]}, new_rows)


def test_grow_rejects_inconsistent_shapes():
    old = {"toolken.weight": torch.zeros(3, 4), "rerank.weight": torch.zeros(3, 4)}  # Reject row missing
    with pytest.raises(ValueError, match=r"expected \(4, 4\).*Reject row last"):
        grow_state_dict(old, torch.zeros(1, 4))
    with pytest.raises(ValueError, match="m × 4"):
        grow_state_dict({"toolken.weight": torch.zeros(3, 4)}, torch.zeros(1, 5))


class _FakeCache:
    """Cached features of 6 examples × 5 positions, some labelled with tools."""

    def __init__(self, d=8, n_tools=3):
        g = torch.Generator().manual_seed(0)
        n = 30
        labels = torch.full((n,), -1)
        labels[::4] = torch.arange(n)[::4] % n_tools
        self._t = {"h": torch.randn(n, d, generator=g).half(), "logsumexp": torch.randn(n, generator=g) + 3,
                   "gold_logit": torch.randn(n, generator=g), "max_logit": torch.randn(n, generator=g),
                   "tool_label": labels}
        import numpy as np

        self.example_index = np.repeat(np.arange(6), 5)
        self.n_examples = 6
        self.meta = {"key": "fake"}

    def tensors(self):
        return self._t


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_frozen_rows_stay_bit_identical_and_the_rest_trains(weight_decay):
    head = ToolkenHead(["a", "b", "c"], 8, seed=0)
    before = head.weight.detach().clone()
    trainer = ToolkenTrainer(head, _FakeCache(), TrainerConfig(epochs=3, lr=0.05, weight_decay=weight_decay, progress=False),
                             frozen_rows=2)
    trainer.fit()
    assert torch.equal(head.weight[:2], before[:2])
    assert not torch.allclose(head.weight[2], before[2])


def _plan(checkpoint=None, add=(), reranker=None):
    return ToolAddition.from_config(TrainConfig(checkpoint=str(checkpoint) if checkpoint else None,
                                                tools=ToolsConfig(add=list(add)), reranker=reranker))


def test_addition_config_errors(tmp_path):
    from toolken_plus.tasks.custom import CustomTask

    ToolkenHead(["add", "subtract"], 8).save_pretrained(tmp_path)
    assert _plan() is None
    with pytest.raises(ValueError, match="needs checkpoint="):
        _plan(add=["weather"])
    with pytest.raises(ValueError, match="tools.add is empty"):
        _plan(tmp_path)
    with pytest.raises(ValueError, match=r"\['add'\] are already in"):
        _plan(tmp_path, ["add", "weather"])
    with pytest.raises(FileNotFoundError, match="toolken_config.json"):
        _plan(tmp_path / "nope", ["weather"])
    plan = _plan(tmp_path, ["weather"])
    assert plan.tool_names == ["add", "subtract", "weather"] and plan.n_old == 2
    assert plan.task_for(CustomTask(train_file="x.jsonl")).tools == ["weather"]  # its data calls the new tool


def test_addition_needs_training_calls_of_every_new_tool(tmp_path, tiny_backbone):
    from toolken_plus.data.examples import Example
    from toolken_plus.tasks.base import TaskData

    ToolkenHead(["add"], tiny_backbone.hidden_size).save_pretrained(tmp_path, backbone=tiny_backbone)
    plan = _plan(tmp_path, ["weather"])
    task = TaskData(["weather"], {"weather": "Weather of a city."}, [Example("e", "no calls here", [])], [])
    with pytest.raises(ValueError, match=r"no training example calls \['weather'\]"):
        plan.check(task, "custom", tiny_backbone)
    task = TaskData(["teleport"], {"teleport": "x"}, [], [])
    with pytest.raises(ValueError, match="teleport.*neither in"):
        plan.check(task, "custom", tiny_backbone)


def test_adding_tools_needs_the_reranker_the_checkpoint_was_trained_with(tmp_path):
    ToolkenHead(["add"], 8).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="trained with reranker=none"):
        _plan(tmp_path, ["weather"], reranker=LLMRerank())


# ------------------------- an external plugin's tool: added, trained, loaded, called
def _compose(overrides):
    return compose(overrides, "config")


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def base_run(tmp_path, tiny_backbone, data_root):
    """A tiny GSM8K-XL checkpoint, made to look like a Toolken+ one by a
    synthetic reranker matrix (4 tool rows + Reject)."""
    cfg = _compose([*GSM8K_XL, "model=tiny_random", "data.limit_train=12", "data.limit_eval=6",
                    "trainer.epochs=1", "trainer.progress=false", f"cache_dir={tmp_path / 'cache'}",
                    f"data.root={data_root}"])
    run = tmp_path / "base"
    TrainToolkensRecipe(cfg, run, backbone=tiny_backbone).run()
    tensors = load_file(str(run / "toolkens.safetensors"))
    tensors["rerank.weight"] = torch.randn(5, tiny_backbone.hidden_size, generator=torch.Generator().manual_seed(1))
    save_file(tensors, str(run / "toolkens.safetensors"))
    return run


def test_external_plugin_tool_is_added_trained_and_called(install, tmp_path, tiny_backbone, data_root, base_run):
    from toolken_plus.infer.recipe import load_agent

    install(weather_distribution)
    train = _write_jsonl(tmp_path / "weather.jsonl", weather_examples(8))
    val = _write_jsonl(tmp_path / "weather_val.jsonl", weather_examples(4))
    cfg = _compose(["task=custom", "model=tiny_random", f"task.train_file={train}", f"task.val_file={val}",
                    f"checkpoint={base_run}", "tools.add=[weather]", "trainer.epochs=3", "trainer.lr=0.05",
                    "trainer.progress=false", f"cache_dir={tmp_path / 'cache'}", f"data.root={data_root}"])
    recipe = TrainToolkensRecipe(cfg, tmp_path / "added", backbone=tiny_backbone)
    metrics = recipe.run()
    assert "val/weather/f1" in metrics

    base = ToolkenHead.from_pretrained(base_run)
    new = ToolkenHead.from_pretrained(tmp_path / "added")
    assert new.tool_names == CALCULATOR + ["weather"]
    assert torch.equal(new.weight[:4], base.weight)  # old rows bit-identical
    init = recipe.addition.build_head(seed=0).weight[4]
    assert not torch.allclose(new.weight[4], init)  # the new row trained
    assert float(new.logit_bias) == float(base.logit_bias)  # calibrated bias kept

    old_t, new_t = load_file(str(base_run / "toolkens.safetensors")), load_file(str(tmp_path / "added" / "toolkens.safetensors"))
    assert new_t["rerank.weight"].shape == (6, tiny_backbone.hidden_size)
    assert torch.equal(new_t["rerank.weight"][:4], old_t["rerank.weight"][:4])
    assert torch.equal(new_t["rerank.weight"][5], old_t["rerank.weight"][4])  # Reject stays last
    assert torch.equal(new_t["rerank.weight"][4], new_t["toolken.weight"][4])  # initialised from the new toolken
    # the Toolken+ reranker accepts the enlarged W_r
    reranker = LLMRerank(k=2).build(tiny_backbone, new, {n: f"doc of {n}" for n in new.tool_names})
    assert torch.equal(reranker.weight, new_t["rerank.weight"])

    saved = json.loads((tmp_path / "added" / "toolken_config.json").read_text())
    hashes = {t["name"]: t["doc_hash"] for t in saved["tools"]}
    assert hashes["weather"] == doc_hash(discover_tools().get("weather").doc) != doc_hash("")
    assert all(hashes[n] == base.doc_hashes[n] for n in CALCULATOR)  # old tools keep their trained docs
    assert saved["provenance"]["added_tools"]["new_tools"] == ["weather"]

    # The enlarged checkpoint loads with the plugin's tool resolved by name and the agent calls it.
    agent = load_agent(tmp_path / "added", backbone=tiny_backbone, data_root=data_root,
                       prompt=PROMPT, max_new_tokens=4, max_calls=1, batch_size=1)
    assert agent.tools["weather"].source.startswith("weather-tools") and agent.tools["add"].demo_prompt is not None
    weather_col = agent.head.tool_names.index("weather")

    def only_weather_wins(hidden):  # stand-in for a model that learnt when to ask for the weather
        scores = torch.full((*hidden.shape[:-1], agent.head.n_tools), -1e4)
        scores[..., weather_col] = 1e4
        return scores

    script = tiny_backbone.tokenizer('"Paris")', add_special_tokens=False)["input_ids"]
    agent.head.forward = only_weather_wins
    agent.policy.tool_mode_token = lambda row, vocab: script[len(row.arg_ids)]
    result = agent.run("What is the weather in Paris?")
    (call,) = result.calls
    assert (call.tool, call.args, call.result, call.error) == ("weather", ["Paris"], "sunny, 21 C", None)
    assert '<weather>("Paris")=sunny, 21 C' in result.trace

    # Changing a tool's documentation changes its hash: loading warns.
    changed = replace(discover_tools().get("weather"), doc="Weather forecasts for the next week.")
    with pytest.warns(UserWarning, match="documentation of tool 'weather' changed"):
        load_agent(tmp_path / "added", backbone=tiny_backbone, data_root=data_root, tools=[changed],
                   prompt=PROMPT)


def test_train_py_adds_a_plugin_tool_from_the_command_line(tmp_path, data_root):
    """The documented spelling, as a user runs it: train.py … checkpoint=… tools.add=[…]."""
    site = weather_distribution(tmp_path / "site")
    env = {**os.environ, "TOOLKEN_PLUS_CACHE": str(tmp_path / "cache"), "TOOLKEN_PLUS_DATA": str(DATA_ROOT), "HF_HUB_OFFLINE": "1",
           "WANDB_MODE": "disabled", "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}

    def train(*args):
        proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "train.py"), "model=tiny_random",
                               "trainer.progress=false", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    train(*GSM8K_XL, "data.limit_train=8", "data.limit_eval=4", "trainer.epochs=1",
          f"hydra.run.dir={tmp_path / 'base'}")
    data = _write_jsonl(tmp_path / "weather.jsonl", weather_examples(6))
    proc = train("task=custom", f"task.train_file={data}", f"checkpoint={tmp_path / 'base'}", "tools.add=[weather]",
                 "trainer.epochs=2", f"hydra.run.dir={tmp_path / 'added'}")
    assert "adding ['weather']" in proc.stdout + proc.stderr
    old = load_file(str(tmp_path / "base" / "toolkens.safetensors"))["toolken.weight"]
    new = load_file(str(tmp_path / "added" / "toolkens.safetensors"))["toolken.weight"]
    assert new.shape[0] == 5 and torch.equal(new[:4], old)
    names = [t["name"] for t in json.loads((tmp_path / "added" / "toolken_config.json").read_text())["tools"]]
    assert names == CALCULATOR + ["weather"]


def test_adding_tools_with_the_llm_reranker_trains_only_the_new_rerank_row(install, tmp_path, tiny_backbone, data_root, base_run):
    cfg_file = base_run / "toolken_config.json"
    saved = json.loads(cfg_file.read_text())
    saved["reranker"] = {"name": "llm", "k": 2, "max_doc_chars": 200}
    cfg_file.write_text(json.dumps(saved))
    install(weather_distribution)
    train = _write_jsonl(tmp_path / "weather.jsonl", weather_examples(8))
    val = _write_jsonl(tmp_path / "weather_val.jsonl", weather_examples(4))
    cfg = _compose(["task=custom", "model=tiny_random", "reranker=llm", "reranker.k=2", "reranker.epochs=3",
                    "reranker.lr=0.05", f"task.train_file={train}", f"task.val_file={val}", f"checkpoint={base_run}",
                    "tools.add=[weather]", "trainer.epochs=2", "trainer.lr=0.05", "trainer.progress=false",
                    f"cache_dir={tmp_path / 'cache'}", f"data.root={data_root}"])
    metrics = TrainToolkensRecipe(cfg, tmp_path / "added", backbone=tiny_backbone).run()
    assert metrics["rerank/train_positions"] > 0
    old_t = load_file(str(base_run / "toolkens.safetensors"))
    new_t = load_file(str(tmp_path / "added" / "toolkens.safetensors"))
    assert torch.equal(new_t["rerank.weight"][:4], old_t["rerank.weight"][:4])  # old rows kept
    assert torch.equal(new_t["rerank.weight"][5], old_t["rerank.weight"][4])  # Reject kept, last
    assert not torch.allclose(new_t["rerank.weight"][4], new_t["toolken.weight"][4])  # the new row trained

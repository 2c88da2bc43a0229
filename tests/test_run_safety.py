"""Run dirs a hostile or unlucky user cannot break: checkpoints that do not
unpickle, resume only with the same settings, one run per dir, temp files of
killed runs cleaned, non-finite weights never saved, configs checked at start."""

import json
import os
import pickle
import subprocess
import sys
import time

import pytest
import torch
from conftest import run_entry_point
from helpers import SAMPLES, TOOL_INDEX, TOOLS
from test_train_entrypoint import TINY, _compose

from toolken_plus.adapter.head import WEIGHTS_NAME, CheckpointError, ToolkenHead
from toolken_plus.config import as_config
from toolken_plus.config.schema import TrainConfig, TrainerConfig
from toolken_plus.config.validation import ConfigError, config_problems, validate_config
from toolken_plus.data.encoding import encode_examples
from toolken_plus.rundir import RunDirBusy, RunDirLock, atomic_write, remove_stale_temps
from toolken_plus.train.cache import build_feature_cache
from toolken_plus.train.recipe import TrainToolkensRecipe
from toolken_plus.train.trainer import STATE_NAME, ResumeMismatch, ToolkenTrainer


def _cache(backbone, root):
    return build_feature_cache(backbone, encode_examples(backbone.tokenizer, SAMPLES, TOOL_INDEX), root, progress=False)


def _trainer(backbone, cache, run_dir, seed=0, **cfg):
    head = ToolkenHead(TOOLS, backbone.hidden_size, seed=0)
    return ToolkenTrainer(head, cache, TrainerConfig(**{"epochs": 1, "progress": False, **cfg}), run_dir=run_dir, seed=seed)


# ----------------------------------------------------------------- checkpoints

class _Payload:
    """Unpickling this runs code: it writes a file (the audit's `__reduce__`)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_pickle_in_the_run_dir_is_never_loaded(tiny_backbone, cache_root, tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with open(tmp_path / "run" / "checkpoints" / "last.pt", "wb") as f:
        pickle.dump({"epoch": 1, "x": _Payload(marker)}, f)
    with pytest.raises(CheckpointError, match=r"last\.pt: a pickled checkpoint"):
        _trainer(tiny_backbone, _cache(tiny_backbone, cache_root), tmp_path / "run").fit()
    assert not marker.exists()


def test_checkpoints_are_safetensors_and_foreign_ones_are_refused(tiny_backbone, cache_root, tmp_path):
    from safetensors.torch import save_file

    cache = _cache(tiny_backbone, cache_root)
    _trainer(tiny_backbone, cache, tmp_path).fit()
    path = tmp_path / "checkpoints" / STATE_NAME
    state = json.loads(__import__("safetensors").safe_open(str(path), "pt").metadata()["toolken_plus"])
    assert state["epoch"] == 1 and state["run"]["tools"] == TOOLS

    w = torch.zeros(len(TOOLS), tiny_backbone.hidden_size)
    foreign = {
        "no toolken_plus state in its header": ({"head.weight": w}, None),
        "format 'other'": ({"head.weight": w}, {"toolken_plus": json.dumps({"format": "other"})}),
        "tensors": ({"head.weight": w, "evil": w.clone()}, {"toolken_plus": json.dumps({**state})}),
    }
    for reason, (tensors, meta) in foreign.items():
        save_file(tensors, str(path), metadata=meta)
        with pytest.raises(CheckpointError, match=reason) as err:
            _trainer(tiny_backbone, cache, tmp_path, epochs=2).fit()
        assert str(path) in str(err.value)
    path.write_bytes(b"\x00" * 7)  # truncated
    with pytest.raises(CheckpointError, match=str(path)):
        _trainer(tiny_backbone, cache, tmp_path, epochs=2).fit()


@pytest.mark.parametrize("change", [{"lr": 0.5}, {"batch_size": 3}, {"seed": 7}, {"weight_decay": 0.1}])
def test_resuming_with_other_hyperparameters_is_refused_unless_asked(tiny_backbone, cache_root, tmp_path, change):
    cache = _cache(tiny_backbone, cache_root)
    _trainer(tiny_backbone, cache, tmp_path, epochs=2).fit()
    (key, value), = change.items()
    option = "seed" if key == "seed" else f"trainer\\.{key}"
    with pytest.raises(ResumeMismatch, match=rf"\n  {option}: .* in the checkpoint, {value!r} now"):
        _trainer(tiny_backbone, cache, tmp_path, epochs=3, **change).fit()
    fresh = _trainer(tiny_backbone, cache, tmp_path, epochs=3, **change)
    fresh.resume = False
    assert [h["epoch"] for h in fresh.fit()] == [1, 2, 3]  # started over


def test_more_epochs_resume_but_other_data_does_not(tiny_backbone, cache_root, tmp_path):
    cache = _cache(tiny_backbone, cache_root)
    _trainer(tiny_backbone, cache, tmp_path, epochs=1).fit()
    assert [h["epoch"] for h in _trainer(tiny_backbone, cache, tmp_path, epochs=2).fit()] == [1, 2]
    other = build_feature_cache(tiny_backbone, encode_examples(tiny_backbone.tokenizer, SAMPLES[:2], TOOL_INDEX),
                                cache_root, progress=False)
    with pytest.raises(ResumeMismatch, match="feature-cache key"):
        _trainer(tiny_backbone, other, tmp_path, epochs=3).fit()


def test_non_finite_weights_are_never_saved(tiny_backbone, cache_root, tmp_path):
    cache = _cache(tiny_backbone, cache_root)
    with pytest.raises(FloatingPointError, match="diverged"):
        _trainer(tiny_backbone, cache, tmp_path, lr=float("inf")).fit()
    assert not (tmp_path / "checkpoints" / STATE_NAME).exists()
    head = ToolkenHead(TOOLS, tiny_backbone.hidden_size)
    with torch.no_grad():
        head.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="toolken.weight"):
        head.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out" / WEIGHTS_NAME).exists()


def test_a_truncated_or_mismatched_toolkens_file_names_its_path(tiny_backbone, tmp_path):
    head = ToolkenHead(TOOLS, tiny_backbone.hidden_size)
    head.save_pretrained(tmp_path)
    weights = tmp_path / WEIGHTS_NAME
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{weights}.*truncated"):
        ToolkenHead.from_pretrained(tmp_path)
    ToolkenHead(TOOLS[:2], tiny_backbone.hidden_size).save_pretrained(tmp_path / "two")
    os.replace(tmp_path / "two" / WEIGHTS_NAME, weights)
    with pytest.raises(CheckpointError, match="describes 4 tools"):
        ToolkenHead.from_pretrained(tmp_path)
    (tmp_path / "toolken_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="toolken_config.json: not a valid toolken config"):
        ToolkenHead.from_pretrained(tmp_path)


# ------------------------------------------------------------------- run dirs

def _hold_lock(run_dir):
    """A child process that takes the lock and sleeps; returns it once it holds it."""
    code = ("import sys, time; from toolken_plus.rundir import RunDirLock; "
            f"lock = RunDirLock({str(run_dir)!r}).acquire(); print('held', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_second_run_in_the_same_dir_fails_at_once_naming_the_holder(tmp_path):
    child = _hold_lock(tmp_path / "run")
    try:
        with pytest.raises(RunDirBusy, match=f"in use by another run \\(pid {child.pid}\\)"):
            RunDirLock(tmp_path / "run").acquire()
        t0 = time.perf_counter()
        proc = run_entry_point("train.py", TINY + [f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
        assert proc.returncode != 0 and f"pid {child.pid}" in proc.stderr
        assert time.perf_counter() - t0 < 60  # failed before any training
    finally:
        child.kill()
        child.wait()
    with RunDirLock(tmp_path / "run"):  # the kernel released the dead holder's lock
        pass


def test_temp_files_of_killed_runs_are_removed_and_live_ones_kept(tiny_backbone, cache_root, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    features = cache_root / "features"
    stale, live = features / f".tmp-{dead.pid}-abc", features / f".tmp-{os.getpid()}-def"
    for d in (stale, live):
        d.mkdir(parents=True)
        (d / "h.npy").write_bytes(b"x")
    _cache(tiny_backbone, cache_root)
    assert not stale.exists() and live.exists()

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torn = run_dir / f".{WEIGHTS_NAME}.{dead.pid}.x1y2"
    torn.write_bytes(b"half")
    with RunDirLock(run_dir):
        assert not torn.exists()
    atomic_write(run_dir / "a.txt", lambda p: open(p, "w").write("ok"))
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(".a.txt")] == []
    assert remove_stale_temps(tmp_path / "nothing_here") == []


def test_temp_dirs_of_another_machine_are_kept_for_a_day(tmp_path):
    """A folder shared by machines (SLURM jobs, multi-node torchrun): a pid
    that is dead here may be alive there, so only this machine's temps are
    judged by pid; the other machine's wait until they are a day old."""
    from toolken_plus.rundir import host_tag, make_temp_dir

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    other = "0" * 8 if host_tag() != "0" * 8 else "1" * 8
    mine_dead = tmp_path / f".tmp-{dead.pid}-h{host_tag()}-abcdefgh"
    theirs, theirs_old = tmp_path / f".tmp-{dead.pid}-h{other}-abcdefgh", tmp_path / f".tmp-{dead.pid}-h{other}-zz"
    for d in (mine_dead, theirs, theirs_old):
        d.mkdir()
    os.utime(theirs_old, (time.time() - 2 * 86400,) * 2)
    live = make_temp_dir(tmp_path)
    assert live.name.startswith(f".tmp-{os.getpid()}-h{host_tag()}-")
    assert sorted(remove_stale_temps(tmp_path)) == sorted([mine_dead, theirs_old])
    assert theirs.exists() and live.exists()


# --------------------------------------------------------------------- config

@pytest.mark.parametrize("override, option", [
    ("trainer.epochs=-3", "trainer.epochs"), ("trainer.lr=inf", "trainer.lr"), ("trainer.lr=0", "trainer.lr"),
    ("data.limit_train=-5", "data.limit_train"), ("data.limit_eval=-1", "data.limit_eval"),
    ("trainer.batch_size=0", "trainer.batch_size"), ("data.max_length=0", "data.max_length"),
    ("calibration.grid=[1,0,0]", "calibration.grid"), ("calibration.grid=[0,1,1e-9]", "calibration.grid"),
    ("cache.dtype=int8", "cache.dtype"), ("agent.tool_timeout=-1", "agent.tool_timeout"),
    ("reranker=llm", None), ("reranker=embedding", None), ("model=tiny_random", None),
    ("method=lora", None), ("method=icl", None),
])
def test_bad_values_are_named_with_their_range(override, option):
    problems = config_problems(as_config(_compose(TINY + [override]), TrainConfig))
    if option is None:
        assert problems == []  # every shipped option is valid
    else:
        assert len(problems) == 1 and problems[0].startswith(f"{option}=") and "must be" in problems[0]


@pytest.mark.parametrize("overrides, option", [
    (["method=lora", "method.r=0"], "method.r"), (["method=lora", "method.dropout=1.5"], "method.dropout"),
    (["method=lora", "method.lr=0"], "method.lr"), (["method=icl", "method.retrieve=-1"], "method.retrieve"),
])
def test_bad_method_values_are_named_with_their_range(overrides, option):
    problems = config_problems(as_config(_compose(TINY + overrides), TrainConfig))
    assert len(problems) == 1 and problems[0].startswith(f"{option}=") and "must be" in problems[0]


@pytest.mark.parametrize("override", ["trainer.epochs=2.7", "seed=1.5", "trainer.lr=fast", "agent.batch_size=[1]"])
def test_values_of_the_wrong_type_are_refused_when_composed(override):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match=override.split("=")[0]):
        _compose(TINY + [override])


def test_bad_inference_values_are_named():
    ok = as_config(_compose(["experiment=gsm8k_xl"], ), TrainConfig)
    assert config_problems(ok) == []
    ok.agent.tool_timeout, ok.agent.batch_size = -1, 0
    with pytest.raises(ConfigError, match=r"agent\.batch_size=0: must be an integer >= 1\n  agent\.tool_timeout=-1"):
        validate_config(ok)


def test_train_py_refuses_bad_values_before_loading_anything(tmp_path):
    proc = run_entry_point("train.py", TINY + ["trainer.epochs=-3", "trainer.lr=inf", f"hydra.run.dir={tmp_path / 'r'}"],
                           tmp_path)
    assert proc.returncode != 0
    assert "trainer.epochs=-3: must be an integer >= 1" in proc.stderr
    assert "trainer.lr=inf: must be a finite number > 0" in proc.stderr
    assert not (tmp_path / "r" / WEIGHTS_NAME).exists()


# ------------------------------------------------------------ lost gold calls

def test_training_data_whose_only_call_is_truncated_away_is_an_error(tiny_backbone, tmp_path):
    text = "Tom has " + "many " * 80 + "apples and 3 + 4 = 7 pears."
    s = text.rindex("7")
    (tmp_path / "train.jsonl").write_text(json.dumps({"text": text, "calls": [{"tool": "add", "start": s, "end": s + 1}]}) + "\n")
    cfg = _compose(["task=custom", "model=tiny_random", f"task.train_file={tmp_path / 'train.jsonl'}",
                    "task.tools={add: 'adds numbers'}", "trainer.progress=false", "data.max_length=32",
                    f"cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(ValueError, match="no gold tool call survives.*1 were lost to truncation at data.max_length=32"):
        TrainToolkensRecipe(cfg, tmp_path / "run", backbone=tiny_backbone).run()
    cfg.data.max_length = 512
    metrics = TrainToolkensRecipe(cfg, tmp_path / "run2", backbone=tiny_backbone).run()
    assert metrics["train/calls_lost"] == 0 and metrics["train/gold_calls"] == 1


# ------------------------------------------------------- predictions on disk

def test_predictions_are_appended_as_they_come_and_resumed(tmp_path):
    from toolken_plus.infer.predictions import PredictionLog, PredictionsMismatch

    items = [{"id": f"q{i}"} for i in range(4)]
    log = PredictionLog(tmp_path, {"setting": "a"})
    assert log.todo(items) == items
    log.append({"id": "q1", "answer": 1})
    assert json.loads((tmp_path / "predictions.jsonl").read_text())["id"] == "q1"  # on disk at once
    log.close()
    with open(tmp_path / "predictions.jsonl", "a") as f:
        f.write('{"id": "q2", "ans')  # a kill mid-write tears the last line

    again = PredictionLog(tmp_path, {"setting": "a"})
    assert [it["id"] for it in again.todo(items)] == ["q0", "q2", "q3"]
    for i in (3, 0, 2):
        again.append({"id": f"q{i}", "answer": i})
    rows = again.finish(items)
    assert [r["id"] for r in rows] == ["q0", "q1", "q2", "q3"]
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["q0", "q1", "q2", "q3"]

    with pytest.raises(PredictionsMismatch, match=r"setting: 'a' before, 'b' now"):
        PredictionLog(tmp_path, {"setting": "b"})
    PredictionLog(tmp_path, {"setting": "b"}, resume=False).close()
    assert (tmp_path / "predictions.jsonl").read_text() == ""


def test_fingerprint_ignores_what_does_not_change_answers(tmp_path):
    from toolken_plus.infer.predictions import settings_fingerprint

    cfg = {"agent": {"batch_size": 16, "show": 3, "logit_bias": 1.0}, "data": {"limit_eval": 5, "eval_file": "x"}}
    same = {"agent": {"batch_size": 4, "show": 0, "logit_bias": 1.0}, "data": {"limit_eval": 50, "eval_file": "x"}}
    other = {"agent": {"batch_size": 16, "show": 3, "logit_bias": 2.0}, "data": {"limit_eval": 5, "eval_file": "x"}}
    assert settings_fingerprint(cfg) == settings_fingerprint(same) != settings_fingerprint(other)


def test_an_interrupted_evaluation_resumes_where_it_stopped(tiny_backbone, data_root, tmp_path):
    from toolken_plus.infer.agent import Agent, AgentConfig
    from toolken_plus.infer.evaluate import evaluate
    from toolken_plus.tasks.base import EvalItem
    from toolken_plus.tasks.gsm8k_xl import Gsm8kXL

    task = Gsm8kXL()
    tools = task.build_tools(data_root)
    head = ToolkenHead(list(tools), tiny_backbone.hidden_size, seed=0)
    agent = Agent(tiny_backbone, head, tools, task.prompt(data_root), task=task,
                  config=AgentConfig(progress=False, max_new_tokens=8, batch_size=2, logit_bias=4.0, max_arg_tokens=4))
    items = [EvalItem(f"q{i}", f"Tom has {i} apples and buys {i + 2} more.", 2.0 * i + 2) for i in range(5)]
    straight, _ = evaluate(task, agent, items, tmp_path / "straight", fingerprint={"x": 1})

    run_batch = agent.run_batch

    def crash_after_two(questions, progress=None, on_result=None):
        seen = []

        def note(i, res):
            on_result(i, res)
            seen.append(i)
            if len(seen) == 2:
                raise KeyboardInterrupt  # the user (or the kernel) stops the run here

        return run_batch(questions, progress, on_result=note)

    agent.run_batch = crash_after_two
    with pytest.raises(KeyboardInterrupt):
        evaluate(task, agent, items, tmp_path / "run", fingerprint={"x": 1})
    assert len((tmp_path / "run" / "predictions.jsonl").read_text().splitlines()) == 2  # kept on disk
    agent.run_batch = run_batch
    resumed, _ = evaluate(task, agent, items, tmp_path / "run", fingerprint={"x": 1})
    assert (resumed["resumed"], resumed["answered_now"]) == (2, 3)
    read = lambda d: [json.loads(x) for x in (tmp_path / d / "predictions.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["trace"] for r in read("run")] == [r["trace"] for r in read("straight")]
    assert {k: resumed[k] for k in ("accuracy", "tool_calls", "n")} == {k: straight[k] for k in ("accuracy", "tool_calls", "n")}
    with pytest.raises(ValueError, match="no questions to evaluate"):
        evaluate(task, agent, [], tmp_path / "empty")

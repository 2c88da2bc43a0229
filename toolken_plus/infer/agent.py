"""The agent: a frozen backbone, its toolkens and real tools answering
questions, many at once.

    with load_agent("outputs/train/gsm8k_xl/<run>") as agent:
        result = agent.run("Janet has 4096 eggs ...")
    result.answer, [(c.tool, c.args, c.result) for c in result.calls]

Two parts: the decision policy (policy.py: stage 1, the reranker, tool mode,
the task's stop rule) and the scheduler (scheduler.py: batching, KV rows,
context switches). Tools run where `agent.isolation` says (tools/isolation.py).
"""

from __future__ import annotations

from toolken_plus.adapter import ToolkenHead
from toolken_plus.backbone import Backbone
from toolken_plus.config.schema import AgentConfig
from toolken_plus.data.prompts import FewShotPrompt
from toolken_plus.infer.policy import DecisionPolicy
from toolken_plus.infer.records import AgentResult, ToolCallRecord
from toolken_plus.infer.scheduler import Scheduler
from toolken_plus.tools.isolation import make_runners
from toolken_plus.tools.registry import Tool

__all__ = ["Agent", "AgentConfig", "AgentResult", "ToolCallRecord"]


class Agent:
    """Answers questions with a frozen backbone, its toolkens and real tools.

    `task` gives the stop rule and answer parsing (a TextTask); `reranker`
    is Toolken+'s stage 2 (None: ToolkenGPT). `text_calls` (method=icl/lora,
    head None): the model writes its calls as text, `<tool>(args)=`. Closing the agent ends its tool
    worker processes (an exit handler does it for agents never closed);
    `data_root` is handed to a plugin's tool pack when a worker loads it.
    """

    def __init__(self, backbone: Backbone, head: ToolkenHead | None, tools: dict[str, Tool], prompt: FewShotPrompt,
                 config: AgentConfig | None = None, reranker=None, *, task=None, data_root=None, text_calls: bool = False):
        if head is not None:
            missing = [n for n in head.tool_names if n not in tools]
            if missing:
                raise ValueError(f"toolkens without a tool implementation: {missing}; available tools: {sorted(tools)}")
        self.cfg = config or AgentConfig()
        runners = make_runners(tools, self.cfg.isolation, timeout=self.cfg.tool_timeout,
                               max_chars=self.cfg.max_result_chars, memory_mb=self.cfg.tool_memory_mb, data_root=data_root)
        self.policy = DecisionPolicy(backbone, head, tools, prompt, self.cfg, reranker, task, runners, text_calls)
        self.scheduler = Scheduler(self.policy)

    # what the agent is made of (read-only views of the policy's parts)
    backbone = property(lambda self: self.policy.backbone)
    head = property(lambda self: self.policy.head)
    tools = property(lambda self: self.policy.tools)
    prompt = property(lambda self: self.policy.prompt)
    reranker = property(lambda self: self.policy.reranker)
    task = property(lambda self: self.policy.task)

    @property
    def bias(self) -> float:
        """The logit bias in use: the calibrated one, agent.logit_bias, or −inf without tools."""
        return self.policy.bias

    def run(self, question: str) -> AgentResult:
        return self.run_batch([question])[0]

    def run_batch(self, questions: list[str], progress: bool | None = None, on_result=None, *, more=None,
                  batch_size: int | None = None) -> list[AgentResult]:
        """Answer `questions`; the results are in their order. `on_result(index,
        result)` is called as soon as each question finishes (in finishing
        order), e.g. to write it out before the run ends. `more()` (a server's
        queue) returns questions that arrived meanwhile: they join the run as
        rows free up, indexed after the others. `batch_size`: rows decoded
        together (default agent.batch_size)."""
        show = self.cfg.progress if progress is None else progress
        return self.scheduler.run(questions, batch_size or self.cfg.batch_size, show, on_result, more)

    def predict(self, items: list, on_result=None) -> list[AgentResult]:
        """Answer evaluation items (anything with a `question`); see run_batch."""
        return self.run_batch([it.question for it in items], on_result=on_result)

    def close(self) -> None:
        """End the tool worker processes (started again if the agent runs on)."""
        for runner in self.policy.runners.values():
            runner.close()

    def __enter__(self) -> "Agent":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""What the agent loop records and passes around, by name.

Public: `ToolCallRecord` (one call: arguments, result or error, where its
result sits) and `AgentResult` (one answered question). Internal to the loop:
`Row` (a question's decoding state) and the small records the scheduler and
the policy exchange (`Switch`, `PrefillJob`, `SavedContext`, `CallDone`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple

import torch

from toolken_plus.tools.registry import Tool


@dataclass
class ToolCallRecord:
    tool: str
    args_text: str
    args: list | None = None
    result: str | None = None
    error: str | None = None
    at_char: int = 0  # where the result sits in AgentResult.generation
    seconds: float = 0.0
    truncated_from: int | None = None  # the result's full length in characters, if it was cut to max_result_chars
    kwargs: dict | None = None  # keyword values the tool was called with, if any (after binding: see tools/calls.py)


@dataclass
class AgentResult:
    question: str
    generation: str  # the reasoning text, calls shown as their results
    trace: str  # the same text with calls shown as <tool>(args)=result
    calls: list[ToolCallRecord] = field(default_factory=list)
    answer: Any = None  # the task's parse of the generation
    finish_reason: str = ""  # answer | eos | length | context | skipped: … | error: …
    new_tokens: int = 0
    reranks: list[dict] = field(default_factory=list)  # stage-2 decisions (empty with reranker=none)
    notes: list[str] = field(default_factory=list)  # what was changed to run it (e.g. the question was cut)


class Mode(str, Enum):
    REASON = "reason"  # decoding over vocabulary ∪ toolkens
    TOOL = "tool"  # decoding a call's arguments, vocabulary only


class SwitchKind(Enum):
    START = "start"  # a new question: its reasoning prompt
    ENTER = "enter"  # into a tool's tool mode
    LEAVE = "leave"  # back to reasoning, with the call's result


@dataclass(frozen=True)
class Switch:
    """A context switch of the row in `slot`."""

    slot: int
    kind: SwitchKind
    tool: Tool | None = None  # ENTER: the tool to call
    result: str | None = None  # LEAVE: the result text to write back (None after a failed call)


class PrefillJob(NamedTuple):
    """Extend a KV row (layers, n) that follows `prefix` by `ids` (kv.prefill_rows)."""

    layers: list | None
    n: int
    ids: list[int]
    prefix: Any = None


class SavedContext(NamedTuple):
    """The reasoning context a row returns to after tool mode."""

    layers: list
    n: int
    prefix: Any
    hidden: torch.Tensor


class KeptToolContext(NamedTuple):
    """A tool's tool-mode KV after its call's `)`, and how much of the trace it covers."""

    layers: list
    n: int
    covered: int


@dataclass(frozen=True)
class CallDone:
    """A tool-mode row finished its call: the result text, or None if it failed."""

    result: str | None


class Row:
    """Decoding state of one question."""

    def __init__(self, index: int, question: str):
        self.index = index
        self.question = question  # as given: what the result reports
        self.prompt_question = question  # as written into prompts: cut if the context cannot hold it
        self.start_ids: list[int] = []  # the tokens of the question part of the reasoning prompt
        self.notes: list[str] = []
        self.question_cut = False
        self.mode = Mode.REASON
        self.reason_text = ""  # committed reasoning text (calls as results)
        self.trace_text = ""  # committed text with calls as <tool>(args)=result
        self.pending: list[int] = []  # reasoning tokens since the last commit
        self.pending_text = ""
        self.calls: list[ToolCallRecord] = []
        self.tool: Tool | None = None
        self.arg_ids: list[int] = []
        self.saved: SavedContext | None = None  # the reasoning context, during tool mode
        # Per tool already called: its tool-mode KV after the call's `)`
        # (without the shared demo prefix), so calling it again prefills only the new text.
        self.tool_kv: dict[str, KeptToolContext] = {}
        self.keep_tool_kv = False  # the call just made ended exactly at `)`: its KV can be kept
        self.forced: list[int] = []  # tokens to feed before the next decision (a call's result)
        self.hidden: torch.Tensor | None = None  # hidden state at the row's last position
        self.new_tokens = 0
        self.finish_reason = ""
        self.reject_next = False  # after a failed call: one vocabulary token before any new call
        self.reranks: list[dict] = []  # every rerank decision: candidates, chosen (None = Reject), ranking

    def generation(self) -> str:
        return self.reason_text + self.pending_text

    def commit(self) -> None:
        self.reason_text += self.pending_text
        self.trace_text += self.pending_text
        self.pending, self.pending_text = [], ""

    def result(self, answer) -> AgentResult:
        self.commit()
        return AgentResult(self.question, self.reason_text, self.trace_text, self.calls, answer, self.finish_reason,
                           self.new_tokens, self.reranks, self.notes)

"""The agent loop: reasoning mode ⇄ tool mode, many questions at once.

Reasoning mode decodes greedily over [vocabulary ; toolkens + b]. When a
toolken wins, the row switches to *tool mode*: its context becomes the tool's
few-shot demos + the question + the text so far + `<tool>(`, and it decodes
the arguments with toolkens disabled until the closing `)`. The arguments are
parsed strictly, the tool runs under a time limit, its result is written into
the reasoning text (just the result, as in the training text; the tool-mode
context shows `<tool>(args)=result`, as in the demos) and the row returns to
reasoning mode. A parse or call failure is recorded and handled like a Reject
for that step: the row continues with the best vocabulary token.

Speed: every row keeps its own KV cache inside one left-padded batch cache
with room to append, so one forward decodes a token for all rows whatever
their mode; the few-shot prefix of every prompt is computed once and its KV
shared by all rows on it (read in place by attention, never copied per row:
shared_prefix.py), so a switch only prefills the question and the text so far;
calling a tool again in the same question extends that tool's kept context by
the new text only; a short tool result is fed through the next batched decode
steps instead of a prefill of its own; when a question finishes its row is
refilled with the next question (continuous batching).

Robustness: a tool runs in a thread, or for third-party plugins in a worker
process that can be killed (isolation.py); its result is cut to
`max_result_chars` where it ran, before it reaches the tokenizer. A question
that does not fit the model's context is cut (or skipped) and that is noted in
its result; a row whose context fills up while decoding stops ("context"); an
exception while starting or handling one row finishes that row only
("error: ...").
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from toolken_plus.adapter.head import ToolkenHead
from toolken_plus.backbone import Backbone, cache_layers, times_transposed
from toolken_plus.config.schema import AgentConfig
from toolken_plus.data.prompts import FewShotPrompt
from toolken_plus.kv.rows import empty_row, make_prefix, prefill_by_length, row_segments, write_segments
from toolken_plus.kv.shared_prefix import Prefix, SharedPrefix, share_prefixes, step
from toolken_plus.rerank.base import RerankContext, decision_record, top_candidates
from toolken_plus.tools.calls import ToolArgumentError, coerce_arguments, exception_text, parse_arguments
from toolken_plus.tools.isolation import make_runners
from toolken_plus.tools.registry import Tool

log = logging.getLogger(__name__)


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


@dataclass
class AgentResult:
    question: str
    generation: str  # the reasoning text, calls shown as their results
    trace: str  # the same text with calls shown as <tool>(args)=result
    calls: list[ToolCallRecord] = field(default_factory=list)
    answer: float | None = None
    finish_reason: str = ""
    new_tokens: int = 0
    reranks: list[dict] = field(default_factory=list)  # stage-2 decisions (empty with reranker=none)
    notes: list[str] = field(default_factory=list)  # what was changed to run it (e.g. the question was cut)


class _Row:
    """Decoding state of one question."""

    def __init__(self, index: int, question: str):
        self.index = index
        self.question = question  # as given: what the result reports
        self.prompt_question = question  # as written into prompts: cut if the context cannot hold it
        self.start_ids: list[int] = []  # the tokens of the question part of the reasoning prompt
        self.notes: list[str] = []
        self.question_cut = False
        self.mode = "reason"
        self.reason_text = ""  # committed reasoning text (calls as results)
        self.trace_text = ""  # committed text with calls as <tool>(args)=result
        self.pending: list[int] = []  # reasoning tokens since the last commit
        self.pending_text = ""
        self.calls: list[ToolCallRecord] = []
        self.tool: Tool | None = None
        self.arg_ids: list[int] = []
        self.saved = None  # (kv layers, length, prefix, hidden) of the reasoning context during tool mode
        # Per tool already called: its tool-mode KV after the call's `)`
        # (without the shared demo prefix) and how much of trace_text that
        # covers, so calling the same tool again prefills only the new text.
        self.tool_kv: dict[str, tuple[list, int, int]] = {}
        self.keep_tool_kv = False  # the call just made ended exactly at `)`: its KV can be kept
        self.forced: list[int] = []  # tokens to feed before the next decision (a call's result)
        self.hidden: torch.Tensor | None = None  # hidden state at the row's last position
        self.new_tokens = 0
        self.finish_reason = ""
        self.reject_next = False  # after a failed call: one vocabulary token before any new call
        self.reranks: list[dict] = []  # every rerank decision: candidates, chosen (None = Reject), scores

    def generation(self) -> str:
        return self.reason_text + self.pending_text

    def commit(self) -> None:
        self.reason_text += self.pending_text
        self.trace_text += self.pending_text
        self.pending, self.pending_text = [], ""


class _BatchCache:
    """Left-padded KV cache of a batch of rows with different contexts.

    Row i's context is a shared prompt prefix `prefixes[i]` (a kv.Prefix or
    None) followed by its own tokens. The cache holds only the latter: row
    i's are the last `lengths[i]` positions, `mask` marks them, and its
    positions start at `offsets[i]` (the prefix's length); attention reads
    each prefix's KV in place for all rows on it. On a backbone where that
    attention does not apply (`shared` False) the prefix is copied into the
    row instead (`skip[i]` of its positions); so it is at batch 1 too, where
    there is nothing to share and plain attention is faster. Replacing a
    row's context writes into its slot; the cache grows to the left only when
    a new context is longer than the current width."""

    HEADROOM = 64

    def __init__(self, backbone: Backbone, batch: int):
        self.backbone = backbone
        self.batch = batch
        self.shared = share_prefixes(backbone, batch)
        self._set_layers([(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in empty_row(backbone)])
        self.mask = torch.zeros(batch, 0, dtype=torch.long)
        self.lengths = torch.zeros(batch, dtype=torch.long)
        self.prefixes: list[Prefix | None] = [None] * batch
        self.offsets = torch.zeros(batch, dtype=torch.long)
        self.skip = torch.zeros(batch, dtype=torch.long)

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    def _layers(self):
        return cache_layers(self.cache)

    def _set_layers(self, layers) -> None:
        # Room to append: a decode step writes its column in place instead of
        # concatenating the whole batch cache (a copy of every row, per step).
        self.cache = self.backbone.make_cache(layers, headroom=self.HEADROOM)

    def set_row(self, i: int, layers, n: int, prefix: Prefix | None = None) -> None:
        """Row i's context becomes `prefix` followed by (layers, n)."""
        segments = row_segments(layers, n, prefix, self.shared)
        self.prefixes[i] = prefix
        prefix_n = prefix.n if prefix is not None else 0
        self.offsets[i], self.skip[i] = (prefix_n, 0) if self.shared else (0, prefix_n)
        total = sum(m for _, m in segments)
        if total > self.width:
            grow = total - self.width
            padded = [(torch.cat([k.new_zeros((*k.shape[:2], grow, k.shape[3])), k], 2),
                       torch.cat([v.new_zeros((*v.shape[:2], grow, v.shape[3])), v], 2)) for k, v in self._layers()]
            self._set_layers(padded)
            self.mask = torch.cat([torch.zeros(self.batch, grow, dtype=torch.long), self.mask], 1)
        write_segments(self._layers(), i, self.width, segments)
        self.mask[i] = 0
        self.mask[i, self.width - total :] = 1
        self.lengths[i] = total

    def get_row(self, i: int):
        """A copy of row i's KV after its prefix, and its length."""
        n, skip = int(self.lengths[i]), int(self.skip[i])
        start = self.width - n + skip
        return [(k[i : i + 1, :, start:].clone(), v[i : i + 1, :, start:].clone()) for k, v in self._layers()], n - skip

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = torch.cat([self.mask, torch.ones(self.batch, 1, dtype=torch.long)], 1)
        shared = SharedPrefix(self.prefixes, mask) if self.shared and any(self.prefixes) else None
        positions = (self.offsets + self.lengths)[:, None]
        hidden, self.cache = step(self.backbone, tokens[:, None], mask, positions, self.cache, shared_prefix=shared)
        self.mask = mask
        self.lengths += 1
        return hidden[:, -1]

    def release(self, i: int) -> None:
        """Row i holds nothing any more (its question finished, none is left)."""
        self.mask[i] = 0
        self.lengths[i] = self.offsets[i] = self.skip[i] = 0
        self.prefixes[i] = None

    def trim(self, slack: int = 64) -> None:
        """Drop leading columns no row uses any more. Every step adds a
        column for all rows, while a row that switches context is rewritten
        right-aligned; without trimming the width would grow with the run."""
        first = int((self.width - self.lengths).min())
        if first >= slack:
            self._set_layers([(k[:, :, first:], v[:, :, first:]) for k, v in self._layers()])
            self.mask = self.mask[:, first:]

    def keep(self, rows: list[int]) -> None:
        """Drop the other rows (at the tail of a run, to stop computing them)."""
        idx = torch.tensor(rows, dtype=torch.long)
        self._set_layers([(k.index_select(0, idx), v.index_select(0, idx)) for k, v in self._layers()])
        self.mask = self.mask.index_select(0, idx)
        self.lengths = self.lengths.index_select(0, idx)
        self.offsets = self.offsets.index_select(0, idx)
        self.skip = self.skip.index_select(0, idx)
        self.prefixes = [self.prefixes[r] for r in rows]
        self.batch = len(rows)
        self.trim(slack=1)  # columns only the dropped rows used


class Agent:
    """Answers questions with a frozen backbone, its toolkens and real tools.

    >>> with Agent(backbone, head, tools, prompt) as agent:
    ...     result = agent.run("Janet has 4096 eggs ...")
    >>> result.answer, [(c.tool, c.args, c.result) for c in result.calls]

    Closing the agent ends its tool worker processes (an exit handler does it
    for agents never closed). `data_root` is handed to a plugin's tool pack
    when a worker process loads it.
    """

    # A tool result of at most this many tokens is fed through the batched
    # decode steps rather than prefilled (batch > 1 only: at batch 1 a step
    # per token costs more than one small prefill).
    MAX_FORCED = 8
    # Tokens a question's budget keeps free for tool results written into
    # the reasoning beyond max_new_tokens (results are counted there, not in
    # new_tokens); a row that still runs out stops with "context".
    RESULT_ROOM = 64

    def __init__(self, backbone: Backbone, head: ToolkenHead | None, tools: dict[str, Tool], prompt: FewShotPrompt,
                 config: AgentConfig | None = None, reranker=None, *, task=None, data_root=None):
        self.backbone = backbone
        # The task's rules for a generation (a TextTask: stop_at, parse_answer);
        # without one, a row stops at EOS or its token budget.
        self.task = task
        self.head = head
        self.cfg = config or AgentConfig()
        if head is not None:
            missing = [n for n in head.tool_names if n not in tools]
            if missing:
                raise ValueError(f"toolkens without a tool implementation: {missing}; available tools: {sorted(tools)}")
        self.tools = tools
        self.prompt = prompt
        # Toolken+ stage 2 (rerank.LLMReranker / EmbeddingReranker); None or
        # one that does not rerank (NoReranker): the stage-1 argmax is called (ToolkenGPT).
        self.reranker = reranker if getattr(reranker, "reranks", False) else None
        self.tok = backbone.tokenizer
        self.eos = self.tok.eos_token_id
        self._prefix_cache: dict[str, Prefix | None] = {}
        # Positions the model was trained for (None: no known limit); every
        # context a row decodes in stays below it.
        self.max_context: int | None = getattr(backbone.model.config, "max_position_embeddings", None)
        self._runners = make_runners(tools, self.cfg.isolation, timeout=self.cfg.tool_timeout,
                                     max_chars=self.cfg.max_result_chars, memory_mb=self.cfg.tool_memory_mb,
                                     data_root=data_root)

    def close(self) -> None:
        """End the tool worker processes (started again if the agent runs on)."""
        for runner in self._runners.values():
            runner.close()

    def __enter__(self) -> "Agent":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ helpers
    @property
    def bias(self) -> float:
        if not self.cfg.use_tools or self.head is None:
            return float("-inf")
        return float(self.head.logit_bias) if self.cfg.logit_bias is None else float(self.cfg.logit_bias)

    def _encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _prefix(self, key: str, text: str) -> Prefix | None:
        """KV cache of a constant prompt prefix, computed once and shared by every row on it."""
        if key not in self._prefix_cache:
            self._prefix_cache[key] = make_prefix(self.backbone, self._encode(text))
        return self._prefix_cache[key]

    def _tool_prefix(self, tool: Tool) -> Prefix | None:
        """KV of the tool's few-shot demos (the reasoning prompt's if it has none)."""
        return self._prefix(f"tool:{tool.name}", (tool.demo_prompt or self.prompt).prefix)

    def _prefill_many(self, jobs: list[tuple]) -> list[tuple]:
        return prefill_by_length(self.backbone, jobs)

    def _answer(self, text: str):
        return self.task.parse_answer(text) if self.task is not None else text.strip()

    def _fits(self, n: int) -> bool:
        """Whether a context of n tokens fits the model (with the limit, n == limit does not)."""
        return self.max_context is None or n <= self.max_context

    def _reserved(self) -> int:
        """Tokens a row may need besides its question: the longest prompt
        prefix it can decode under (the reasoning prompt's, or a tool's demos
        with room for the call's arguments), max_new_tokens and RESULT_ROOM.
        An estimate: a row that still runs out of context fails that call
        ("no room for tool mode") or stops ("context")."""
        longest = len(self._encode(self.prompt.prefix))
        if self.head is not None and self.cfg.use_tools:
            for t in (self.tools[n] for n in self.head.tool_names):
                demos = (t.demo_prompt or self.prompt).prefix + f"{t.display}("
                longest = max(longest, len(self._encode(demos)) + self.cfg.max_arg_tokens)
        return longest + self.cfg.max_new_tokens + self.RESULT_ROOM

    def _prepare(self, row: _Row, reserved: int) -> None:
        """Tokenize the row's question part of the reasoning prompt. A question
        that leaves less than `reserved` tokens of the model's context is cut,
        keeping its end: a word problem asks its question last, and without
        it there is nothing to answer, while a lost beginning costs at most
        some of the numbers. If no question fits at all the row is skipped
        (its finish_reason says why)."""
        if not isinstance(row.question, str):
            raise TypeError(f"a question must be text, not {type(row.question).__name__}")
        row.question.encode("utf-8")  # a lone surrogate ('\ud800') raises here, with a clear message
        row.start_ids = self._encode(self.prompt.question_part(row.question))
        if self._fits(reserved + len(row.start_ids)):
            return
        room = self.max_context - reserved - len(self._encode(self.prompt.question_part("")))
        ids = self._encode(row.question.strip())
        kept = ids[-room:] if room > 0 else []
        while kept:
            row.prompt_question = self.tok.decode(kept)
            row.start_ids = self._encode(self.prompt.question_part(row.prompt_question))
            excess = reserved + len(row.start_ids) - self.max_context
            if excess <= 0:
                row.question_cut = True
                row.notes.append(f"question cut to its last {len(kept)} of {len(ids)} tokens: with the prompt, "
                                 f"max_new_tokens={self.cfg.max_new_tokens} and room for tool calls it must fit "
                                 f"the model's context of {self.max_context} tokens")
                return
            kept = kept[excess:]  # decoding and re-encoding may merge or split tokens at the cut
        row.finish_reason = (f"skipped: the prompts and max_new_tokens={self.cfg.max_new_tokens} leave no room for "
                             f"the question in the model's context of {self.max_context} tokens")

    def _switch(self, requests: list[tuple], rows: list, batch: _BatchCache) -> tuple[list[int], list[int]]:
        """Carry out context switches, prefilling them together (grouped by length).

        requests: (slot, "start" | "enter" | "leave", tool or result text).
        Returns the slots whose rows now need a decision on their new state,
        and the slots whose rows had to stop (their finish_reason says why:
        an error, or no room in the context for the result)."""
        jobs, owners, stopped = [], [], []
        for slot, kind, what in requests:
            row, job = rows[slot], None
            try:
                job = self._switch_job(row, slot, kind, what, batch)
            except Exception as exc:  # this row's text or result: the other rows go on
                row.finish_reason = f"error: {exception_text(exc)}"
            if row.finish_reason:
                stopped.append(slot)
            elif job is not None:
                jobs.append(job)
                owners.append(slot)
        if jobs:
            for slot, job, (layers, n, hidden) in zip(owners, jobs, self._prefill_many(jobs)):
                batch.set_row(slot, layers, n, job[3])
                rows[slot].hidden = hidden
        return [slot for slot, _, _ in requests], stopped

    def _switch_job(self, row: _Row, slot: int, kind: str, what, batch: _BatchCache) -> tuple | None:
        """The prefill job of one switch, or None when it needs none."""
        if kind == "start":
            return None, 0, row.start_ids, self._prefix("reason", self.prompt.prefix)
        if kind == "enter":
            return self._enter_job(row, slot, what, batch)
        # leave tool mode, with the result text (or None after a failure)
        if row.keep_tool_kv:
            # trace_text now ends with `name(args)=result`; the KV ends at `)`
            row.tool_kv[row.tool.name] = (*batch.get_row(slot), len(row.trace_text) - len(what) - 1)
            row.keep_tool_kv = False
        layers, n, prefix, hidden = row.saved
        row.saved, row.mode, row.tool = None, "reason", None
        ids = self._encode(what) if what else []
        if not self._fits((prefix.n if prefix is not None else 0) + n + len(ids) + 1):
            row.finish_reason = "context"  # no room for the result and a token after it
            return None
        if not ids or (batch.batch > 1 and len(ids) <= self.MAX_FORCED):
            # A short result rides along in the next decode steps, one
            # token each, instead of a prefill forward of its own.
            batch.set_row(slot, layers, n, prefix)
            row.hidden, row.forced = hidden, ids
            return None
        return layers, n, ids, prefix

    def _enter_job(self, row: _Row, slot: int, tool: Tool, batch: _BatchCache) -> tuple | None:
        """Switch the row to `tool`'s tool mode; if that context would not fit
        the model with room for the arguments, the call fails instead (the
        row goes on reasoning, as after any failed call)."""
        row.commit()
        if tool.name in row.tool_kv:  # called before: extend that context by the text since
            layers, n, covered = row.tool_kv[tool.name]
            text = row.trace_text[covered:]
        else:
            layers, n = None, 0
            text = (tool.demo_prompt or self.prompt).question_part(row.prompt_question) + row.trace_text
        ids = self._encode(text + f"{tool.display}(")
        prefix = self._tool_prefix(tool)
        if not self._fits((prefix.n if prefix is not None else 0) + n + len(ids) + self.cfg.max_arg_tokens):
            row.calls.append(ToolCallRecord(tool.name, "", at_char=len(row.reason_text),
                                            error=f"no room for tool mode in the model's context of {self.max_context} tokens"))
            row.reject_next = True
            return None
        row.saved = (*batch.get_row(slot), batch.prefixes[slot], row.hidden)
        row.mode, row.tool, row.arg_ids = "tool", tool, []
        return layers, n, ids, prefix

    def _run_tool(self, row: _Row, args_text: str) -> ToolCallRecord:
        rec = ToolCallRecord(tool=row.tool.name, args_text=args_text, at_char=len(row.reason_text))
        try:
            args = coerce_arguments(parse_arguments(args_text), row.tool.signature)
        except ToolArgumentError as err:
            rec.error = f"bad arguments: {err}"
            return rec
        rec.args = args
        if row.tool.fn is None:
            rec.error = "documentation-only tool: nothing to execute"
            return rec
        # The runner formats and caps the result where the tool ran, and
        # turns every failure (also of str(result)) into an error outcome.
        outcome = self._runners[row.tool.name].call(args)
        rec.seconds = outcome.seconds
        if outcome.ok:
            rec.result, rec.truncated_from = outcome.value, outcome.truncated_from
        else:
            rec.error = outcome.error
        return rec

    # ----------------------------------------------------------- decisions
    def _logits(self, hidden: torch.Tensor):
        vocab = times_transposed(hidden, self.backbone.lm_head.weight)
        tools = self.head(hidden) + self.bias if self.head is not None else None
        return vocab, tools

    def choose_tool(self, row: _Row, vocab_logits: torch.Tensor, tool_scores: torch.Tensor | None) -> Tool | None:
        """The stage-1 decision: a toolken wins the argmax. (The reranker hooks in here.)"""
        if row.reject_next:
            row.reject_next = False
            return None
        if tool_scores is None or not self.cfg.use_tools or len(row.calls) >= self.cfg.max_calls:
            return None
        best = int(tool_scores.argmax())
        if tool_scores[best] > vocab_logits.max():
            return self.tools[self.head.tool_names[best]]
        return None

    def _rerank(self, triggered: list[tuple[int, int]], tools: torch.Tensor, rows: list, batch: _BatchCache) -> list[Tool | None]:
        """Stage 2 for the rows whose toolken won: one batched doc-block pass
        (llm, reusing each row's KV cache) or embedding lookup; None = Reject."""
        if not triggered:
            return []
        contexts, candidates = [], []
        for j, slot in triggered:
            row = rows[slot]
            layers, n = batch.get_row(slot) if self.reranker.needs_kv else (None, 0)
            scores = tools[j] - self.bias
            contexts.append(RerankContext(scores, text=row.prompt_question + "\n" + row.generation(), layers=layers, n=n,
                                          prefix=batch.prefixes[slot]))
            candidates.append(top_candidates(scores, self.reranker.k))
        out = []
        for (_, slot), cands, ranked in zip(triggered, candidates, self.reranker.rank_batch(contexts, candidates)):
            row = rows[slot]
            row.reranks.append({"at_char": len(row.generation()), **decision_record(cands, ranked, self.head.tool_names)})
            out.append(None if ranked[0].is_reject else self.tools[ranked[0].tool])
        return out

    def tool_mode_token(self, row: _Row, vocab_logits: torch.Tensor) -> int:
        """Tool mode decodes arguments over the vocabulary only."""
        return int(vocab_logits.argmax())

    def _after_tool_token(self, row: _Row, token: int) -> str | None | bool:
        """Append a tool-mode token. On `)` (or giving up) run the call and
        return the result text to write back (None after a failure); False
        while the arguments are still being written."""
        row.arg_ids.append(token)
        text = self.tok.decode(row.arg_ids)
        close = _closing_paren(text)
        too_long = len(row.arg_ids) >= self.cfg.max_arg_tokens or token == self.eos
        if close is None and not too_long:
            return False
        if close is None:
            rec = ToolCallRecord(tool=row.tool.name, args_text=text, at_char=len(row.reason_text),
                                 error=f"arguments not closed within {self.cfg.max_arg_tokens} tokens")
        else:
            rec = self._run_tool(row, text[:close])
        row.calls.append(rec)
        # The tool-mode KV can be extended next time only if the arguments'
        # tokens end exactly at `)` (then it matches the trace text).
        row.keep_tool_kv = rec.result is not None and close == len(text) - 1
        if rec.result is not None:
            row.reason_text += rec.result
            row.trace_text += f"{row.tool.display}({rec.args_text})={rec.result}"
        else:
            row.reject_next = True  # a failed call is handled like a Reject for this step
        return rec.result

    def _append_reason_token(self, row: _Row, token: int) -> bool:
        """Append a reasoning token; True when the answer is complete."""
        row.new_tokens += 1
        if token == self.eos:
            row.finish_reason = "eos"
            return True
        row.pending.append(token)
        row.pending_text = self.tok.decode(row.pending)
        text = row.generation()
        stop = self.task.stop_at(text) if self.task is not None else None
        if stop is not None:
            # keep the text up to the stop, drop what the model started after it
            cut = stop - len(row.reason_text)
            if cut >= 0:
                row.pending_text = row.pending_text[:cut]
            row.finish_reason = "answer"
            return True
        if row.new_tokens >= self.cfg.max_new_tokens:
            row.finish_reason = "length"
            return True
        return False

    # ---------------------------------------------------------------- run
    def predict(self, items: list, on_result=None) -> list[AgentResult]:
        """Answer evaluation items (anything with a `question`); see run_batch."""
        return self.run_batch([it.question for it in items], on_result=on_result)

    def run(self, question: str) -> AgentResult:
        return self.run_batch([question])[0]

    @torch.no_grad()
    def run_batch(self, questions: list[str], progress: bool | None = None, on_result=None) -> list[AgentResult]:
        """Answer `questions`; the results are in their order. `on_result(index,
        result)` is called as soon as each question finishes (in finishing
        order), e.g. to write it out before the run ends."""
        results: list[AgentResult | None] = [None] * len(questions)
        queue = list(range(len(questions)))[::-1]
        width = max(1, min(self.cfg.batch_size, len(questions)))
        batch = _BatchCache(self.backbone, width)
        rows: list[_Row | None] = [None] * width
        show = self.cfg.progress if progress is None else progress
        bar = tqdm(total=len(questions), desc="agent", unit="q", disable=not show)
        issues: Counter = Counter()  # rows cut, skipped, stopped by the context, failed
        reserved = self._reserved() if self.max_context is not None else 0

        def next_question(slot: int) -> list[tuple]:
            """Put the next question that can start into `slot` (its start
            request); one that cannot (skipped, an error) is finished at once."""
            rows[slot] = None
            while queue:
                i = queue.pop()
                row = _Row(i, questions[i])
                try:
                    self._prepare(row, reserved)
                except Exception as exc:  # e.g. not text: this question fails, the others go on
                    row.finish_reason = f"error: {exception_text(exc)}"
                if not row.finish_reason:
                    rows[slot] = row
                    return [(slot, "start", None)]
                finish(row)
            batch.release(slot)
            return []

        def finish(row: _Row) -> None:
            row.commit()
            result = AgentResult(row.question, row.reason_text, row.trace_text, row.calls,
                                 self._answer(row.reason_text), row.finish_reason, row.new_tokens,
                                 row.reranks, row.notes)
            results[row.index] = result
            issues[row.finish_reason.split(":")[0]] += 1
            issues["cut"] += row.question_cut
            if row.finish_reason.startswith("error"):
                log.warning("question %d failed: %s", row.index, row.finish_reason)
            bar.update(1)
            if on_result is not None:
                on_result(row.index, result)

        def end(slot: int, reason: str) -> list[tuple]:
            """Finish the row in `slot` now and start the next question there."""
            rows[slot].finish_reason = reason
            finish(rows[slot])
            return next_question(slot)

        def guarded(slot: int, action) -> list[tuple]:
            """The requests `action()` makes for the row in `slot`. An
            exception ends that row only; a row that finished is replaced."""
            try:
                requests = action()
            except Exception as exc:
                return end(slot, f"error: {exception_text(exc)}")
            return end(slot, rows[slot].finish_reason) if rows[slot].finish_reason else requests

        def switch(requests: list[tuple]) -> list[int]:
            """Carry out the switches; rows they had to stop are finished and
            their slots refilled. Returns the slots that need a decision."""
            undecided = []
            while requests:
                switched, stopped = self._switch(requests, rows, batch)
                undecided += [s for s in switched if s not in stopped]
                requests = [r for slot in stopped for r in end(slot, rows[slot].finish_reason)]
            return undecided

        undecided = switch([r for slot in range(width) for r in next_question(slot)])
        tokens = torch.full((width,), self.tok.pad_token_id, dtype=torch.long)
        while any(r is not None for r in rows):
            # 1. Every row picks its next token; rows that switch context are
            #    prefilled together and then decide again on their new state.
            for _ in range(8):
                if not undecided:
                    break
                live = [s for s in undecided if rows[s] is not None]
                fed = {s for s in live if rows[s].forced}
                for slot in fed:
                    tokens[slot] = rows[slot].forced.pop(0)
                live = [s for s in live if s not in fed]
                if not live:
                    break
                vocab, tools = self._logits(torch.stack([rows[s].hidden for s in live]))
                requests, triggered = [], []
                for j, slot in enumerate(live):
                    scores = None if tools is None else tools[j]
                    requests += guarded(slot, lambda: self._decide(rows[slot], slot, vocab[j], scores, tokens, triggered, j))
                for (j, slot), tool in zip(triggered, self._rerank(triggered, tools, rows, batch)):
                    if tool is not None:
                        requests.append((slot, "enter", tool))
                        continue
                    # Reject: the next token is the vocabulary's argmax (toolkens masked)
                    requests += guarded(slot, lambda: self._reason_token(rows[slot], slot, vocab[j], tokens))
                undecided = switch(requests)
            active = [s for s, r in enumerate(rows) if r is not None]
            if not active:
                break
            if len(active) < len(rows) and not queue:
                # The tail: stop computing empty rows, as soon as they empty.
                # Dropping rows copies the cache once; a row costs a few ms
                # in every step of a tail that runs for many steps (in a
                # one-off A/B run on 32 questions at batch 16, ~7% faster
                # than waiting until half the rows were empty).
                batch.keep(active)
                rows = [rows[s] for s in active]
                tokens = tokens[active]
            # 2. One forward step appends the chosen token to every row.
            hidden = batch.step(tokens)
            batch.trim()
            requests = []
            for slot, row in enumerate(rows):
                if row is None:
                    continue
                row.hidden = hidden[slot]
                if row.mode == "tool":
                    requests += guarded(slot, lambda: self._tool_token(row, slot, int(tokens[slot])))
            # 3. A row whose context reached the model's limit takes no more tokens.
            for slot in self._full(batch, {slot for slot, _, _ in requests}):
                requests += end(slot, "context")
            switch(requests)
            undecided = [s for s, r in enumerate(rows) if r is not None]
        bar.close()
        self._warn(issues, len(questions))
        return results

    def _decide(self, row: _Row, slot: int, vocab: torch.Tensor, tool_scores: torch.Tensor | None,
                tokens: torch.Tensor, triggered: list, j: int) -> list[tuple]:
        """One row's decision on its current state: its next token goes into
        `tokens`, a toolken that wins gives an "enter" request or, with a
        reranker, joins `triggered` (as (j, slot))."""
        if row.mode == "tool":
            tokens[slot] = self.tool_mode_token(row, vocab)
            return []
        tool = self.choose_tool(row, vocab, tool_scores)
        if tool is not None and self.reranker is None:
            return [(slot, "enter", tool)]
        if tool is not None:  # stage 2 decides, for all triggered rows at once
            triggered.append((j, slot))
            return []
        return self._reason_token(row, slot, vocab, tokens)

    def _reason_token(self, row: _Row, slot: int, vocab: torch.Tensor, tokens: torch.Tensor) -> list[tuple]:
        """The vocabulary's argmax is the row's next reasoning token (a row it
        completes gets its finish_reason)."""
        tokens[slot] = int(vocab.argmax())
        self._append_reason_token(row, int(tokens[slot]))
        return []

    def _tool_token(self, row: _Row, slot: int, token: int) -> list[tuple]:
        """A tool-mode token was fed; once the call has run, back to reasoning with its result."""
        result = self._after_tool_token(row, token)
        return [] if result is False else [(slot, "leave", result)]

    def _full(self, batch: _BatchCache, switching: set[int]) -> list[int]:
        """Rows (not about to switch context) with no position left for another token."""
        if self.max_context is None:
            return []
        full = ((batch.offsets + batch.lengths) >= self.max_context).nonzero().flatten().tolist()
        return [slot for slot in full if slot not in switching]

    def _warn(self, issues: Counter, n: int) -> None:
        parts = [f"{issues[k]} {what}" for k, what in (
            ("cut", "cut to fit the model's context"), ("skipped", "skipped (no room in the context)"),
            ("context", "stopped when their context was full"), ("error", "failed with an error")) if issues[k]]
        if parts:
            log.warning("of %d questions: %s (see each result's finish_reason and notes)", n, ", ".join(parts))


def _closing_paren(text: str) -> int | None:
    """Index of the `)` closing the call's `(` (brackets and quotes respected)."""
    depth, quote = 0, None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            if depth == 0 and ch == ")":
                return i
            depth -= 1
    return None

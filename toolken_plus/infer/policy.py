"""The agent's decisions, one row at a time (the scheduler batches them).

Reasoning mode decodes greedily over [vocabulary ; toolkens + b]. When a
toolken wins (stage 1) — and the reranker, if any, does not Reject it
(stage 2, Toolken+) — the row enters *tool mode*: it decodes the arguments
over the vocabulary until the closing `)`, they are parsed strictly, the tool
runs under its limits (tools/isolation.py) and its result is written into the
reasoning text (just the result, as in the training text; the trace shows
`<tool>(args)=result`, as in the demos). A parse or call failure is recorded
and handled like a Reject for that step: the row continues with the best
vocabulary token. The task decides when an answer is complete (stop_at) and
what it is (parse_answer).
"""

from __future__ import annotations

import torch

from toolken_plus.backbone import times_transposed
from toolken_plus.config.schema import AgentConfig
from toolken_plus.data.encoding import context_start_ids
from toolken_plus.data.prompts import FewShotPrompt
from toolken_plus.infer.records import CallDone, Row, ToolCallRecord
from toolken_plus.rerank.base import RerankContext, decision_record, top_candidates
from toolken_plus.tools.calls import ToolArgumentError, bind_arguments, closing_paren, find_text_call, parse_call_arguments
from toolken_plus.tools.registry import Tool


class DecisionPolicy:
    # Tokens a question's budget keeps free for tool results written into
    # the reasoning beyond max_new_tokens (results are counted there, not in
    # new_tokens); a row that still runs out stops with "context".
    RESULT_ROOM = 64

    def __init__(self, backbone, head, tools: dict[str, Tool], prompt: FewShotPrompt, cfg: AgentConfig,
                 reranker, task, runners: dict, text_calls: bool = False):
        self.backbone = backbone
        # Text methods (icl, lora): calls are written as text, `<tool>(args)=`,
        # and run when the model writes the `=` (run_text_call).
        self.text_calls = text_calls
        self.head = head
        self.tools = tools
        self.prompt = prompt
        self.cfg = cfg
        # Toolken+ stage 2; None (or one that does not rerank): the stage-1 argmax is called (ToolkenGPT).
        self.reranker = reranker if getattr(reranker, "reranks", False) else None
        # The task's rules for a generation (a TextTask: stop_at, parse_answer);
        # without one, a row stops at EOS or its token budget.
        self.task = task
        self.runners = runners
        self.tok = backbone.tokenizer
        self.eos = self.tok.eos_token_id
        # Positions the model was trained for (None: no known limit); every
        # context a row decodes in stays below it.
        self.max_context: int | None = getattr(backbone.model.config, "max_position_embeddings", None)

    @property
    def bias(self) -> float:
        if not self.cfg.use_tools or self.head is None:
            return float("-inf")
        return float(self.head.logit_bias) if self.cfg.logit_bias is None else float(self.cfg.logit_bias)

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def encode_start(self, text: str) -> list[int]:
        """Ids of a prompt prefix, which begins the row's context: after the
        tokenizer's BOS, if it adds one (as training's examples begin)."""
        return context_start_ids(self.tok, text)

    def answer(self, text: str):
        return self.task.parse_answer(text) if self.task is not None else text.strip()

    def demos(self, tool: Tool) -> FewShotPrompt:
        """The prompt of a tool's tool mode: its few-shot demos (the reasoning prompt's if it has none)."""
        return tool.demo_prompt or self.prompt

    # ------------------------------------------------------- context budget
    def fits(self, n: int) -> bool:
        """Whether a context of n tokens fits the model (with the limit, n == limit does not)."""
        return self.max_context is None or n <= self.max_context

    def reserved(self) -> int:
        """Tokens a row may need besides its question: the longest prompt
        prefix it can decode under (the reasoning prompt's, or a tool's demos
        with room for the call's arguments), max_new_tokens and RESULT_ROOM.
        An estimate: a row that still runs out of context fails that call
        ("no room for tool mode") or stops ("context")."""
        longest = len(self.encode_start(self.prompt.prefix))
        if self.head is not None and self.cfg.use_tools:
            for t in (self.tools[n] for n in self.head.tool_names):
                demos = self.demos(t).prefix + f"{t.display}("
                longest = max(longest, len(self.encode_start(demos)) + self.cfg.max_arg_tokens)
        return longest + self.cfg.max_new_tokens + self.RESULT_ROOM

    def question_room(self, reserved: int) -> int:
        """Tokens of the model's context left for a question (may be <= 0)
        beside `reserved` (see reserved()) and the reasoning prompt's question
        part around it. Only with a context limit (max_context not None)."""
        return self.max_context - reserved - len(self.encode(self.prompt.question_part("")))

    def prepare(self, row: Row, reserved: int) -> None:
        """Tokenize the row's question part of the reasoning prompt. A question
        that leaves less than `reserved` tokens of the model's context is cut,
        keeping its end: a word problem asks its question last, and without
        it there is nothing to answer, while a lost beginning costs at most
        some of the numbers. If no question fits at all the row is skipped
        (its finish_reason says why)."""
        if not isinstance(row.question, str):
            raise TypeError(f"a question must be text, not {type(row.question).__name__}")
        row.question.encode("utf-8")  # a lone surrogate ('\ud800') raises here, with a clear message
        row.start_ids = self.encode(self.prompt.question_part(row.question))
        if self.fits(reserved + len(row.start_ids)):
            return
        room = self.question_room(reserved)
        ids = self.encode(row.question.strip())
        kept = ids[-room:] if room > 0 else []
        while kept:
            row.prompt_question = self.tok.decode(kept)
            row.start_ids = self.encode(self.prompt.question_part(row.prompt_question))
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

    def no_room_for_tool_mode(self, row: Row, tool: Tool) -> None:
        """Tool mode would not fit the model: the call fails (the row goes on reasoning, as after any failed call)."""
        row.calls.append(ToolCallRecord(tool.name, "", at_char=len(row.reason_text),
                                        error=f"no room for tool mode in the model's context of {self.max_context} tokens"))
        row.reject_next = True

    # ------------------------------------------------------------ stage 1
    def logits(self, hidden: torch.Tensor):
        """Vocabulary logits and toolken scores (+ bias) of rows' hidden states."""
        vocab = times_transposed(hidden, self.backbone.lm_head.weight)
        tools = self.head(hidden) + self.bias if self.head is not None else None
        return vocab, tools

    def choose_tool(self, row: Row, vocab_logits: torch.Tensor, tool_scores: torch.Tensor | None) -> Tool | None:
        """The stage-1 decision: a toolken wins the argmax."""
        if row.reject_next:
            row.reject_next = False
            return None
        if tool_scores is None or not self.cfg.use_tools or len(row.calls) >= self.cfg.max_calls:
            return None
        best = int(tool_scores.argmax())
        if tool_scores[best] > vocab_logits.max():
            return self.tools[self.head.tool_names[best]]
        return None

    # ------------------------------------------------------------ stage 2
    def rerank(self, rows: list[Row], tool_scores: list[torch.Tensor], kv: list[tuple],
               vocab_max: list[float] | None = None) -> list[Tool | None]:
        """Stage 2 for rows whose toolken won, all at once: one batched
        doc-block pass (llm, extending each row's KV `kv[i]` = (layers, n,
        prefix)) or embedding lookup; `vocab_max[i]` is the largest vocabulary
        logit of row i (what its toolken beat). Returns the tool to call, None = Reject."""
        contexts, candidates = [], []
        vocab_max = vocab_max or [None] * len(rows)
        for row, scores, (layers, n, prefix), vmax in zip(rows, tool_scores, kv, vocab_max):
            stage1 = scores - self.bias
            contexts.append(RerankContext(stage1, text=row.prompt_question + "\n" + row.generation(), layers=layers, n=n,
                                          prefix=prefix, trigger_at=None if vmax is None else float(vmax) - self.bias))
            candidates.append(top_candidates(stage1, self.reranker.k))
        out = []
        for row, cands, ranked in zip(rows, candidates, self.reranker.rank_batch(contexts, candidates)):
            row.reranks.append({"at_char": len(row.generation()), **decision_record(cands, ranked, self.head.tool_names)})
            out.append(None if ranked[0].is_reject else self.tools[ranked[0].tool])
        return out

    # ---------------------------------------------------------- tool mode
    def tool_mode_token(self, row: Row, vocab_logits: torch.Tensor) -> int:
        """Tool mode decodes arguments over the vocabulary only."""
        return int(vocab_logits.argmax())

    def after_tool_token(self, row: Row, token: int) -> CallDone | None:
        """Append a tool-mode token. On `)` (or giving up) run the call and
        return its outcome; None while the arguments are still being written."""
        row.arg_ids.append(token)
        text = self.tok.decode(row.arg_ids)
        close = closing_paren(text)
        too_long = len(row.arg_ids) >= self.cfg.max_arg_tokens or token == self.eos
        if close is None and not too_long:
            return None
        if close is None:
            rec = ToolCallRecord(tool=row.tool.name, args_text=text, at_char=len(row.reason_text),
                                 error=f"arguments not closed within {self.cfg.max_arg_tokens} tokens")
        else:
            rec = self.run_tool(row, text[:close])
        row.calls.append(rec)
        # The tool-mode KV can be extended next time only if the arguments'
        # tokens end exactly at `)` (then it matches the trace text).
        row.keep_tool_kv = rec.result is not None and close == len(text) - 1
        if rec.result is not None:
            row.reason_text += rec.result
            row.trace_text += f"{row.tool.display}({rec.args_text})={rec.result}"
        else:
            row.reject_next = True  # a failed call is handled like a Reject for this step
        return CallDone(rec.result)

    def run_tool(self, row: Row, args_text: str) -> ToolCallRecord:
        rec = ToolCallRecord(tool=row.tool.name, args_text=args_text, at_char=len(row.reason_text))
        try:
            call = bind_arguments(parse_call_arguments(args_text), row.tool.signature)
        except ToolArgumentError as err:
            rec.error = f"bad arguments: {err}"
            return rec
        rec.args, rec.kwargs = call.args, call.kwargs or None
        if row.tool.fn is None:
            rec.error = "documentation-only tool: nothing to execute"
            return rec
        # The runner formats and caps the result where the tool ran, and
        # turns every failure (also of str(result)) into an error outcome.
        outcome = self.runners[row.tool.name].call(call.args, call.kwargs)
        rec.seconds = outcome.seconds
        if outcome.ok:
            rec.result, rec.truncated_from = outcome.value, outcome.truncated_from
        else:
            rec.error = outcome.error
        return rec

    def run_text_call(self, row: Row) -> bool:
        """Text methods: the model has just written `<tool>(args)=`. The call
        goes through the same parser and runner as a toolken's; its result is
        written after the `=` and fed to the model (row.forced), as after a
        toolken call. A failed call leaves the text as it is (the model goes
        on and writes a number of its own). True when a call was made."""
        if len(row.calls) >= self.cfg.max_calls:
            return False
        found = find_text_call(row.generation(), self.tools)
        if found is None:
            return False
        name, args_text, _ = found
        row.commit()
        row.tool = self.tools[name]
        rec = self.run_tool(row, args_text)
        row.tool = None
        row.calls.append(rec)
        if rec.result:
            row.reason_text += rec.result
            row.trace_text += rec.result
            row.forced = self.encode(rec.result)
        return True

    # ----------------------------------------------------- reasoning mode
    def reason_token(self, row: Row, vocab_logits: torch.Tensor) -> int:
        """The vocabulary's argmax is the row's next reasoning token (a row it
        completes gets its finish_reason)."""
        token = int(vocab_logits.argmax())
        self.append_reason_token(row, token)
        return token

    def append_reason_token(self, row: Row, token: int) -> bool:
        """Append a reasoning token; True when the answer is complete."""
        row.new_tokens += 1
        if token == self.eos:
            row.finish_reason = "eos"
            return True
        row.pending.append(token)
        row.pending_text = self.tok.decode(row.pending)
        stop = self.task.stop_at(row.generation()) if self.task is not None else None
        if self.text_calls and self.run_text_call(row):
            return False
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

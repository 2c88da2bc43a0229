"""Many questions at once: the batching side of the agent loop.

Every row keeps its own KV inside one left-padded batch cache with room to
append (batch_cache.py), so one forward decodes a token for all rows whatever
their mode; the few-shot prefix of every prompt is computed once and its KV
shared by all rows on it (read in place by attention, never copied per row:
kv/shared_prefix.py), so a context switch only prefills the question and the
text so far; calling a tool again in the same question extends that tool's
kept context by the new text only; a short tool result is fed through the
next batched decode steps instead of a prefill of its own; when a question
finishes its row is refilled with the next one (continuous batching), and at
the tail finished rows are dropped from the batch. Questions may also arrive
during a run (`more`, a server's queue): they take free rows, and the batch
grows back to `batch_size` rows for them.

What each row does next is the policy's call (policy.py). Robustness: an
exception while starting or handling one row finishes that row only
("error: ..."), and a row whose context fills up stops ("context").
"""

from __future__ import annotations

import logging
from collections import Counter

import torch
from tqdm.auto import tqdm

from toolken_plus.infer.batch_cache import BatchCache
from toolken_plus.infer.policy import DecisionPolicy
from toolken_plus.infer.records import (
    AgentResult,
    KeptToolContext,
    Mode,
    PrefillJob,
    Row,
    SavedContext,
    Switch,
    SwitchKind,
)
from toolken_plus.kv import Prefix, make_prefix, prefill_by_length
from toolken_plus.tools.calls import exception_text
from toolken_plus.tools.registry import Tool

log = logging.getLogger(__name__)


class Scheduler:
    # A tool result of at most this many tokens is fed through the batched
    # decode steps rather than prefilled (batch > 1 only: at batch 1 a step
    # per token costs more than one small prefill).
    MAX_FORCED = 8
    # Decide–switch rounds per step: a row that switches context decides
    # again on its new state within the same step.
    MAX_ROUNDS = 8

    def __init__(self, policy: DecisionPolicy):
        self.policy = policy
        self.backbone = policy.backbone
        self._prefix_cache: dict[str, Prefix | None] = {}

    # ------------------------------------------------------ prompt prefixes
    def prefix(self, key: str, text: str) -> Prefix | None:
        """KV cache of a constant prompt prefix, computed once and shared by every row on it."""
        if key not in self._prefix_cache:
            self._prefix_cache[key] = make_prefix(self.backbone, self.policy.encode_start(text))
        return self._prefix_cache[key]

    def tool_prefix(self, tool: Tool) -> Prefix | None:
        """KV of the tool's few-shot demos."""
        return self.prefix(f"tool:{tool.name}", self.policy.demos(tool).prefix)

    def prefill_many(self, jobs: list[PrefillJob]) -> list[tuple]:
        return prefill_by_length(self.backbone, jobs)

    # ------------------------------------------------------ context switches
    def switch(self, switches: list[Switch], rows: list, batch: BatchCache) -> tuple[list[int], list[int]]:
        """Carry out context switches, prefilling them together (grouped by length).

        Returns the slots whose rows now need a decision on their new state,
        and the slots whose rows had to stop (their finish_reason says why:
        an error, or no room in the context for the result)."""
        jobs, owners, stopped = [], [], []
        for sw in switches:
            row, job = rows[sw.slot], None
            try:
                job = self._switch_job(row, sw, batch)
            except Exception as exc:  # this row's text or result: the other rows go on
                row.finish_reason = f"error: {exception_text(exc)}"
            if row.finish_reason:
                stopped.append(sw.slot)
            elif job is not None:
                jobs.append(job)
                owners.append(sw.slot)
        if jobs:
            for slot, job, (layers, n, hidden) in zip(owners, jobs, self.prefill_many(jobs)):
                batch.set_row(slot, layers, n, job.prefix)
                rows[slot].hidden = hidden
        return [sw.slot for sw in switches], stopped

    def _switch_job(self, row: Row, sw: Switch, batch: BatchCache) -> PrefillJob | None:
        """The prefill job of one switch, or None when it needs none."""
        if sw.kind is SwitchKind.START:
            return PrefillJob(None, 0, row.start_ids, self.prefix("reason", self.policy.prompt.prefix))
        if sw.kind is SwitchKind.ENTER:
            return self._enter_job(row, sw.slot, sw.tool, batch)
        return self._leave_job(row, sw.slot, sw.result, batch)

    def _enter_job(self, row: Row, slot: int, tool: Tool, batch: BatchCache) -> PrefillJob | None:
        """Switch the row to `tool`'s tool mode (or fail the call if it would not fit the model)."""
        row.commit()
        if tool.name in row.tool_kv:  # called before: extend that context by the text since
            layers, n, covered = row.tool_kv[tool.name]
            text = row.trace_text[covered:]
        else:
            layers, n = None, 0
            text = self.policy.demos(tool).question_part(row.prompt_question) + row.trace_text
        ids = self.policy.encode(text + f"{tool.display}(")
        prefix = self.tool_prefix(tool)
        if not self.policy.fits((prefix.n if prefix is not None else 0) + n + len(ids) + self.policy.cfg.max_arg_tokens):
            self.policy.no_room_for_tool_mode(row, tool)
            return None
        row.saved = SavedContext(*batch.get_row(slot), batch.prefixes[slot], row.hidden)
        row.mode, row.tool, row.arg_ids = Mode.TOOL, tool, []
        return PrefillJob(layers, n, ids, prefix)

    def _leave_job(self, row: Row, slot: int, result: str | None, batch: BatchCache) -> PrefillJob | None:
        """Back to the saved reasoning context, followed by the call's result."""
        if row.keep_tool_kv:
            # trace_text now ends with `name(args)=result`; the KV ends at `)`
            row.tool_kv[row.tool.name] = KeptToolContext(*batch.get_row(slot), len(row.trace_text) - len(result) - 1)
            row.keep_tool_kv = False
        layers, n, prefix, hidden = row.saved
        row.saved, row.mode, row.tool = None, Mode.REASON, None
        ids = self.policy.encode(result) if result else []
        if not self.policy.fits((prefix.n if prefix is not None else 0) + n + len(ids) + 1):
            row.finish_reason = "context"  # no room for the result and a token after it
            return None
        if not ids or (batch.batch > 1 and len(ids) <= self.MAX_FORCED):
            # A short result rides along in the next decode steps, one
            # token each, instead of a prefill forward of its own.
            batch.set_row(slot, layers, n, prefix)
            row.hidden, row.forced = hidden, ids
            return None
        return PrefillJob(layers, n, ids, prefix)

    # ----------------------------------------------------------------- run
    @torch.no_grad()
    def run(self, questions: list[str], batch_size: int, progress: bool, on_result=None, more=None) -> list[AgentResult]:
        """Answer `questions` (results in their order); `on_result(index,
        result)` as soon as each finishes. `more()`, if given, is asked before
        every decode step for questions that arrived since (a list, maybe
        empty): they join this run, numbered after those before them, and the
        run ends when no row is left and `more()` has none."""
        policy = self.policy
        questions = list(questions)
        results: list[AgentResult | None] = [None] * len(questions)
        queue = list(range(len(questions)))[::-1]
        width = max(1, min(batch_size, len(questions)))
        batch = BatchCache(self.backbone, width, max_batch=batch_size if more is not None else None)
        rows: list[Row | None] = [None] * width
        bar = tqdm(total=len(questions), desc="agent", unit="q", disable=not progress)
        issues: Counter = Counter()  # rows cut, skipped, stopped by the context, failed
        reserved = policy.reserved() if policy.max_context is not None else 0

        def next_question(slot: int) -> list[Switch]:
            """Put the next question that can start into `slot`; one that
            cannot (skipped, an error) is finished at once."""
            rows[slot] = None
            while queue:
                i = queue.pop()
                row = Row(i, questions[i])
                try:
                    policy.prepare(row, reserved)
                except Exception as exc:  # e.g. not text: this question fails, the others go on
                    row.finish_reason = f"error: {exception_text(exc)}"
                if not row.finish_reason:
                    rows[slot] = row
                    return [Switch(slot, SwitchKind.START)]
                finish(row)
            batch.release(slot)
            return []

        def finish(row: Row) -> None:
            result = row.result(policy.answer(row.reason_text + row.pending_text))
            results[row.index] = result
            issues[row.finish_reason.split(":")[0]] += 1
            issues["cut"] += row.question_cut
            if row.finish_reason.startswith("error"):
                log.warning("question %d failed: %s", row.index, row.finish_reason)
            bar.update(1)
            if on_result is not None:
                on_result(row.index, result)

        def end(slot: int, reason: str) -> list[Switch]:
            """Finish the row in `slot` now and start the next question there."""
            rows[slot].finish_reason = reason
            finish(rows[slot])
            return next_question(slot)

        def guarded(slot: int, action) -> list[Switch]:
            """The switches `action()` asks for the row in `slot`. An
            exception ends that row only; a row that finished is replaced."""
            try:
                switches = action()
            except Exception as exc:
                return end(slot, f"error: {exception_text(exc)}")
            return end(slot, rows[slot].finish_reason) if rows[slot].finish_reason else switches

        def switch(switches: list[Switch]) -> list[int]:
            """Carry out the switches; rows they had to stop are finished and
            their slots refilled. Returns the slots that need a decision."""
            undecided = []
            while switches:
                switched, stopped = self.switch(switches, rows, batch)
                undecided += [s for s in switched if s not in stopped]
                switches = [sw for slot in stopped for sw in end(slot, rows[slot].finish_reason)]
            return undecided

        def decide(slot: int, vocab, tool_scores, triggered: list, j: int) -> list[Switch]:
            """The row's next token goes into `tokens`; a toolken that wins is
            an ENTER switch or, with a reranker, joins `triggered`."""
            row = rows[slot]
            if row.mode is Mode.TOOL:
                tokens[slot] = policy.tool_mode_token(row, vocab)
                return []
            tool = policy.choose_tool(row, vocab, tool_scores)
            if tool is not None and policy.reranker is None:
                return [Switch(slot, SwitchKind.ENTER, tool=tool)]
            if tool is not None:  # stage 2 decides, for all triggered rows at once
                triggered.append((j, slot))
                return []
            return reason(slot, vocab)

        def reason(slot: int, vocab) -> list[Switch]:
            tokens[slot] = policy.reason_token(rows[slot], vocab)
            return []

        def rerank(triggered: list, vocab, tool_scores) -> list[Tool | None]:
            if not triggered:
                return []
            kv = [(*batch.get_row(slot), batch.prefixes[slot]) if policy.reranker.needs_kv else (None, 0, None)
                  for _, slot in triggered]
            return policy.rerank([rows[slot] for _, slot in triggered], [tool_scores[j] for j, _ in triggered], kv,
                                 [float(vocab[j].max()) for j, _ in triggered])

        def tool_token(slot: int) -> list[Switch]:
            done = policy.after_tool_token(rows[slot], int(tokens[slot]))
            return [] if done is None else [Switch(slot, SwitchKind.LEAVE, result=done.result)]

        def admit() -> list[int]:
            """Questions that arrived join the queue and start in free rows,
            the batch growing up to `batch_size` rows for them. Returns the
            slots that need a decision."""
            nonlocal rows, tokens
            arrived = list(more())
            if arrived:
                first = len(questions)
                questions.extend(arrived)
                results.extend([None] * len(arrived))
                queue[:0] = range(len(questions) - 1, first - 1, -1)  # after those waiting (the queue pops from its end)
                bar.total += len(arrived)
                bar.refresh()
            free = [s for s, r in enumerate(rows) if r is None]
            add = min(len(queue) - len(free), batch_size - len(rows))
            if add > 0:
                batch.grow(add)
                rows = rows + [None] * add
                tokens = torch.cat([tokens, tokens.new_full((add,), self.backbone.tokenizer.pad_token_id)])
                free += range(len(rows) - add, len(rows))
            return switch([sw for slot in free[: len(queue)] for sw in next_question(slot)]) if queue else []

        undecided = switch([sw for slot in range(width) for sw in next_question(slot)])
        tokens = torch.full((width,), self.backbone.tokenizer.pad_token_id, dtype=torch.long)
        while True:
            if more is not None:
                undecided += admit()
            if all(r is None for r in rows):
                break
            # 1. Every row picks its next token; rows that switch context are
            #    prefilled together and then decide again on their new state.
            for _ in range(self.MAX_ROUNDS):
                if not undecided:
                    break
                live = [s for s in undecided if rows[s] is not None]
                fed = {s for s in live if rows[s].forced}
                for slot in fed:
                    tokens[slot] = rows[slot].forced.pop(0)
                live = [s for s in live if s not in fed]
                if not live:
                    break
                vocab, tool_scores = policy.logits(torch.stack([rows[s].hidden for s in live]))
                switches, triggered = [], []
                for j, slot in enumerate(live):
                    scores = None if tool_scores is None else tool_scores[j]
                    switches += guarded(slot, lambda: decide(slot, vocab[j], scores, triggered, j))
                for (j, slot), tool in zip(triggered, rerank(triggered, vocab, tool_scores)):
                    if tool is not None:
                        switches.append(Switch(slot, SwitchKind.ENTER, tool=tool))
                        continue
                    # Reject: the next token is the vocabulary's argmax (toolkens masked)
                    switches += guarded(slot, lambda: reason(slot, vocab[j]))
                undecided = switch(switches)
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
            switches = []
            for slot, row in enumerate(rows):
                if row is None:
                    continue
                row.hidden = hidden[slot]
                if row.mode is Mode.TOOL:
                    switches += guarded(slot, lambda: tool_token(slot))
            # 3. A row whose context reached the model's limit takes no more tokens.
            for slot in self._full(batch, {sw.slot for sw in switches}):
                switches += end(slot, "context")
            switch(switches)
            undecided = [s for s, r in enumerate(rows) if r is not None]
        bar.close()
        self._warn(issues, len(questions))
        return results

    def _full(self, batch: BatchCache, switching: set[int]) -> list[int]:
        """Rows (not about to switch context) with no position left for another token."""
        if self.policy.max_context is None:
            return []
        full = ((batch.offsets + batch.lengths) >= self.policy.max_context).nonzero().flatten().tolist()
        return [slot for slot in full if slot not in switching]

    @staticmethod
    def _warn(issues: Counter, n: int) -> None:
        parts = [f"{issues[k]} {what}" for k, what in (
            ("cut", "cut to fit the model's context"), ("skipped", "skipped (no room in the context)"),
            ("context", "stopped when their context was full"), ("error", "failed with an error")) if issues[k]]
        if parts:
            log.warning("of %d questions: %s (see each result's finish_reason and notes)", n, ", ".join(parts))

"""One thread owns the agent and answers every request through its batched loop.

Requests are queued (`submit` returns a concurrent.futures.Future; an asyncio
handler awaits it with `asyncio.wrap_future`). The worker takes the first
request, waits up to `max_wait_ms` for others (up to `max_batch`), and hands
them to one `agent.run_batch` call; requests that arrive while that run
decodes join it as rows free up (the run's `more` hook), so concurrent
requests share the agent's continuous batching instead of running one after
another. Each future gets its result the moment its row finishes. A run
admits at most `max_run` requests (RUN_BATCHES × max_batch): under steady
traffic it would otherwise never end, and its lists of questions and results
would grow without bound; later requests stay queued, in order, for the next
run.

Every request is checked here, in the worker (the only thread that touches
the tokenizer and the model): a user message longer than the prompt limit
fails its future with PromptTooLong instead of joining a run. An exception
that ends a whole run fails the futures of that run only; the worker goes on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from toolken_plus.infer.records import AgentResult

log = logging.getLogger(__name__)

_STOP = object()


class PromptTooLong(ValueError):
    """The user message does not fit: `tokens` > `limit`."""

    def __init__(self, tokens: int, limit: int, why: str):
        super().__init__(f"the prompt is {tokens} tokens; this server takes at most {limit} ({why})")
        self.tokens, self.limit = tokens, limit


class WorkerStopped(RuntimeError):
    """The server is shutting down: the request was not answered."""


@dataclass
class Reply:
    """A request's answer: the agent's result and the user message's length in tokens."""

    result: AgentResult
    prompt_tokens: int


@dataclass
class _Request:
    question: str
    future: Future = field(default_factory=Future)
    prompt_tokens: int = 0


class BatchWorker:
    """Answers questions submitted from any thread with `agent`, batched.

    `max_prompt_tokens`: longest question accepted (tokens); None, or a number
    above it, means what the model's context leaves for a question beside the
    prompts, agent.max_new_tokens and tool calls (so no question is cut)."""

    RUN_BATCHES = 8  # a run admits at most this many max_batch's worth of requests, then ends

    def __init__(self, agent, *, max_batch: int = 16, max_wait_ms: float = 10.0, max_prompt_tokens: int | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.agent = agent
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.max_run = self.RUN_BATCHES * max_batch  # requests one agent.run_batch call admits at most
        self.max_prompt_tokens = max_prompt_tokens
        self.prompt_limit: int | None = None  # the limit in force, set when the worker starts
        self._limit_why = ""
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = False
        # What /health reports. runs: agent.run_batch calls; requests: questions
        # that went into them (joined: of those, the ones that entered a run
        # already decoding); largest_run: the most questions one run answered.
        self.counts = {"runs": 0, "requests": 0, "joined": 0, "largest_run": 0, "answered": 0, "failed": 0,
                       "rejected": 0, "in_flight": 0}

    # ------------------------------------------------------------ any thread
    def start(self) -> "BatchWorker":
        """Start the worker thread (once; `submit` starts it too)."""
        with self._lock:
            self._start()
        return self

    def _start(self) -> None:  # under self._lock
        if self._stopping:
            raise WorkerStopped("the server is shutting down")
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name="toolken-plus-serve", daemon=True)
            self._thread.start()

    def submit(self, question: str) -> Future:
        """Queue a question; the future's result is a Reply (or PromptTooLong,
        WorkerStopped, or the exception that ended its run)."""
        req = _Request(question)
        with self._lock:  # nothing is queued after stop(): every future gets an outcome
            self._start()
            self._queue.put(req)
        return req.future

    def stop(self, timeout: float | None = 30.0) -> None:
        """Finish the run in progress, fail what is still queued, end the thread."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._queue.put(_STOP)
        if thread is not None:
            thread.join(timeout)
        self._fail_queued()

    @property
    def healthy(self) -> bool:
        """Taking requests: not stopping, and the thread (if started yet) running."""
        return not self._stopping and (self._thread is None or self._thread.is_alive())

    def stats(self) -> dict:
        return {**self.counts, "queued": self._queue.qsize(), "max_batch": self.max_batch,
                "max_wait_ms": self.max_wait * 1000, "max_prompt_tokens": self.prompt_limit}

    # -------------------------------------------------------- worker thread
    def _main(self) -> None:
        try:
            self._set_prompt_limit()
        except Exception:  # the limit is a courtesy: the agent still cuts or skips what does not fit
            log.exception("could not work out the prompt limit")
        while not self._stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is _STOP:
                    self._stopping = True
                    break
                batch.append(item)
            self._run(batch)
        self._fail_queued()

    def _set_prompt_limit(self) -> None:
        policy = self.agent.policy
        room = None
        if policy.max_context is not None:
            room = policy.question_room(policy.reserved())
        limits = [(room, f"what the model's context of {policy.max_context} tokens leaves beside the prompts, "
                         f"agent.max_new_tokens={policy.cfg.max_new_tokens} and tool calls"),
                  (self.max_prompt_tokens, "serve.max_prompt_tokens")]
        limits = [(n, why) for n, why in limits if n is not None]
        if limits:
            self.prompt_limit, self._limit_why = min(limits, key=lambda x: x[0])
            self.prompt_limit = max(self.prompt_limit, 0)

    def _accept(self, requests: list[_Request], pending: list[_Request]) -> list[str]:
        """The questions of `requests` that go into the run (appended to
        `pending` in run order); the others' futures fail here."""
        out = []
        for req in requests:
            if not req.future.set_running_or_notify_cancel():
                continue  # the client gave up while it was queued
            try:
                req.prompt_tokens = len(self.agent.policy.encode(req.question))
            except Exception as exc:  # not text after all: its own error, the others go on
                self.counts["failed"] += 1
                req.future.set_exception(exc)
                continue
            if self.prompt_limit is not None and req.prompt_tokens > self.prompt_limit:
                self.counts["rejected"] += 1
                req.future.set_exception(PromptTooLong(req.prompt_tokens, self.prompt_limit, self._limit_why))
                continue
            pending.append(req)
            out.append(req.question)
        self.counts["requests"] += len(out)
        self.counts["in_flight"] += len(out)
        return out

    def _run(self, batch: list[_Request]) -> None:
        pending: list[_Request] = []
        questions = self._accept(batch, pending)
        if not questions:
            return

        def more() -> list[str]:
            if self._stopping:
                return []
            arrived = []
            while len(pending) + len(arrived) < self.max_run:  # the rest wait, queued, for the next run
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    self._stopping = True
                    break
                arrived.append(item)
            joined = self._accept(arrived, pending)
            self.counts["joined"] += len(joined)
            return joined

        def on_result(index: int, result: AgentResult) -> None:
            req = pending[index]
            # counted before the reply is released: a client that reads /health after its reply sees this run
            self.counts["largest_run"] = max(self.counts["largest_run"], len(pending))
            self.counts["in_flight"] -= 1
            if result.finish_reason.startswith("error"):
                self.counts["failed"] += 1
            else:
                self.counts["answered"] += 1
            req.future.set_result(Reply(result, req.prompt_tokens))

        self.counts["runs"] += 1
        try:
            self.agent.run_batch(questions, progress=False, on_result=on_result, more=more, batch_size=self.max_batch)
        except Exception as exc:  # the whole run failed: its requests get the error, the worker goes on
            log.exception("an agent run failed")
            self.counts["largest_run"] = max(self.counts["largest_run"], len(pending))
            for req in pending:
                if not req.future.done():
                    self.counts["in_flight"] -= 1
                    self.counts["failed"] += 1
                    req.future.set_exception(exc)

    def _fail_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP and item.future.set_running_or_notify_cancel():
                item.future.set_exception(WorkerStopped("the server shut down before answering"))

"""Where tool calls run: in a thread of this process, or in a worker process.

Thread mode (`ThreadRunner`; built-in tools and tools handed over in code) is
cheap, but Python cannot stop a thread. A call past its time limit is reported
as timed out and keeps running in the background; code that holds the GIL (one
long C-level operation such as ``7 ** (10 ** 7)``) is not even interrupted at
the limit, the agent waits until it ends; memory is not limited. So that a
tool that keeps timing out cannot pile up threads, a tool with
`ThreadRunner.MAX_RUNNING` timed-out calls still running is refused (a recorded
call error) until they end.

Process mode (`ProcessRunner`; the default for tools of third-party plugins)
runs the tools of one pack (a plugin's entry point, or a module) in one worker
process, started at its first call and kept warm. The agent waits for the
answer on a pipe for the time limit and then kills the worker (SIGKILL: GIL or
not); the worker's address space is limited (RLIMIT_AS), so a tool that
allocates without end gets a MemoryError; the result is turned into capped text
in the worker, so a hostile ``__str__`` or a huge result runs under the same
limits. A worker that dies (killed, crashed, ``os._exit``) fails that call and
is started afresh at the next one. This bounds time and memory; it is not a
security sandbox (a worker runs as the same user, with the same environment,
files and network). A worker serves one call at a time, as the agent makes them.

Workers are fresh interpreters (``python -m toolken_plus.tools.isolation``), never
forks of this process, which holds torch and its OpenMP threads. Nor does this
use multiprocessing's "spawn"/"forkserver": both re-import the parent's
``__main__`` script in the worker (infer.py: torch, seconds and hundreds of MB
of address space before a tool runs). A worker imports toolken_plus's light
modules (registry, prompts, toolcall; no torch) and re-creates its tools from
what the agent sends: a plugin's entry point (group, name, value), loaded in the
worker, so even the plugin's import-time misbehaviour stays there; or the
module and qualified name of a function defined at a module's top level.
Messages are JSON, not pickle: the agent never unpickles what an untrusted
worker could have written.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import weakref
from importlib.metadata import EntryPoint
from multiprocessing.connection import Connection
from pathlib import Path

from toolken_plus.tools.calls import ToolOutcome, exception_text, run_and_format, run_in_thread, timeout_text
from toolken_plus.tools.registry import Tool, ToolDefinitionError

MODES = ("auto", "thread", "process")
# Seconds for a worker to start and load its tools (a plugin's imports can be
# slow); not part of any call's time limit.
START_TIMEOUT = 60.0
# A reply is a capped result or an error message; anything longer is not one.
MAX_REPLY_BYTES = 1 << 20


class ThreadRunner:
    """Runs one tool in a daemon thread per call, under a time limit (see the
    module docstring for what a thread cannot do)."""

    MAX_RUNNING = 4  # timed-out calls of one tool still running before it is refused

    def __init__(self, tool: Tool, timeout: float, max_chars: int):
        self.tool, self.timeout, self.max_chars = tool, timeout, max_chars
        self._lock = threading.Lock()
        self._running = 0  # calls whose thread has not ended; between calls, timed-out ones

    def call(self, args: list, kwargs: dict | None = None) -> ToolOutcome:
        with self._lock:
            if self._running >= self.MAX_RUNNING:
                return ToolOutcome(False, error=f"tool disabled: {self._running} earlier calls still running")
            self._running += 1
        box: dict[str, ToolOutcome] = {}

        def work() -> None:
            try:
                box["outcome"] = run_and_format(self.tool.fn, args, self.max_chars, kwargs)
            finally:
                with self._lock:
                    self._running -= 1

        start = time.perf_counter()
        try:
            finished = run_in_thread(work, f"tool-{self.tool.name}", self.timeout)
        except Exception as exc:  # no thread could be started: work() never runs
            with self._lock:
                self._running -= 1
            return ToolOutcome(False, error=exception_text(exc), seconds=time.perf_counter() - start)
        seconds = time.perf_counter() - start
        if not finished:
            return ToolOutcome(False, error=timeout_text(self.timeout), seconds=seconds)
        outcome = box["outcome"]
        outcome.seconds = seconds
        return outcome

    def close(self) -> None:
        """Nothing to release: threads cannot be stopped, and daemons never block exit."""


class ProcessRunner:
    """Runs one tool in its pack's worker process (shared with the pack's other tools)."""

    def __init__(self, tool: Tool, worker: "Worker", timeout: float, max_chars: int):
        self.tool, self.worker, self.timeout, self.max_chars = tool, worker, timeout, max_chars

    def call(self, args: list, kwargs: dict | None = None) -> ToolOutcome:
        return self.worker.call(self.tool.name, args, self.timeout, self.max_chars, kwargs)

    def close(self) -> None:
        self.worker.close()


# ----------------------------------------------------------------- choosing
def make_runners(tools: dict[str, Tool], mode: str = "auto", *, timeout: float, max_chars: int,
                 memory_mb: int | None, data_root: str | Path | None = None) -> dict[str, ThreadRunner | ProcessRunner]:
    """A runner per executable tool. `mode`: "thread", "process", or "auto" =
    process for tools of third-party plugins (entry points not declared by
    toolken_plus itself), thread for the rest. `data_root` is handed to a
    plugin's ToolPack when a worker loads it. Raises ToolDefinitionError for a
    tool that must run in a worker but cannot be re-created there."""
    if mode not in MODES:
        raise ValueError(f"unknown tool isolation {mode!r}; expected one of {MODES}")
    entry_points = _plugin_entry_points() if mode != "thread" else {}
    workers: dict[str, Worker] = {}
    runners: dict[str, ThreadRunner | ProcessRunner] = {}
    for name, t in tools.items():
        if t.fn is None:
            continue  # documentation-only: nothing ever runs
        ep = entry_points.get(t.source)
        if mode == "thread" or (mode == "auto" and (ep is None or _is_builtin(ep))):
            runners[name] = ThreadRunner(t, timeout, max_chars)
            continue
        key, load, function = _recipe(t, ep, data_root)
        worker = workers.setdefault(key, Worker(key, load, memory_mb))
        worker.functions[t.name] = function
        runners[name] = ProcessRunner(t, worker, timeout, max_chars)
    return runners


def _plugin_entry_points() -> dict[str, EntryPoint]:
    """Installed tool entry points by the `source` the registry gives their tools."""
    from toolken_plus.tools.plugins import GROUP, Origin, _entry_points, _package

    return {str(Origin(_package(ep), ep.name, ep.value)): ep for ep in _entry_points(GROUP)}


def _is_builtin(ep: EntryPoint) -> bool:
    from toolken_plus.tools.plugins import BUILTIN_PACKAGE, _package

    return _package(ep) == BUILTIN_PACKAGE


def _recipe(t: Tool, ep: EntryPoint | None, data_root) -> tuple[str, dict, str | None]:
    """(worker key, how the worker loads the pack, the tool's qualified name
    in its module or None for an entry point's tool, found by name)."""
    if ep is not None:
        load = {"entry_point": [ep.group, ep.name, ep.value], "data_root": str(data_root) if data_root else None}
        return t.source, load, None
    module, qualname = getattr(t.fn, "__module__", None), getattr(t.fn, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname or not _is_the_function(_resolve(module, qualname), t.fn):
        raise ToolDefinitionError(
            f"tool {t.name!r} ({t.source or module}) cannot run in a worker process: a worker re-creates a tool "
            f"from its plugin's entry point, or from the module and name of a function defined at the top level "
            f"of an importable module (not a lambda, closure or method, nor in __main__). Move it into a module "
            f"or publish it as a plugin, or run it in a thread (agent.isolation=thread)")
    return f"module {module}", {"module": module}, qualname


def _resolve(module: str, qualname: str):
    try:
        obj = sys.modules.get(module) or importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj
    except (ImportError, AttributeError):
        return None


def _is_the_function(obj, fn) -> bool:
    """A module attribute is the tool's function itself, or the @tool-made Tool wrapping it."""
    return obj is fn or (isinstance(obj, Tool) and obj.fn is fn)


# ------------------------------------------------------------- the workers
_LIVE: "weakref.WeakSet[Worker]" = weakref.WeakSet()


class Worker:
    """One worker process for the tools of one pack, started at its first call.

    `load` says how the worker gets the pack: {"entry_point": [group, name,
    value], "data_root": …} or {"module": name}; `functions` maps tool names
    to their qualified names in that module (None: look the name up among the
    entry point's tools)."""

    def __init__(self, label: str, load: dict, memory_mb: int | None):
        self.label = label
        self.load = load
        self.memory_mb = memory_mb
        self.functions: dict[str, str | None] = {}
        self.proc: subprocess.Popen | None = None
        self._rx: Connection | None = None
        self._tx: Connection | None = None
        self.broken: str | None = None  # why the pack cannot load: every call fails at once, no restart loop

    def call(self, tool: str, args: list, timeout: float, max_chars: int, kwargs: dict | None = None) -> ToolOutcome:
        if self.proc is not None and self.proc.poll() is not None:
            self._reap()  # died between calls (killed from outside): start afresh
        if self.broken is None and self.proc is None:
            self._start()
        if self.broken is not None:
            return ToolOutcome(False, error=self.broken)
        start = time.perf_counter()
        try:
            request = {"tool": tool, "args": args, "kwargs": kwargs or {}, "max_chars": max_chars}
            self._tx.send_bytes(json.dumps(request).encode())
            answered = self._rx.poll(timeout)
        except OSError as exc:  # the pipe broke: the worker is gone
            return ToolOutcome(False, error=self._fail(f"worker process failed: {exception_text(exc)}"),
                               seconds=time.perf_counter() - start)
        if not answered:
            self._kill()
            return ToolOutcome(False, error=timeout_text(timeout) + " (worker process killed)",
                               seconds=time.perf_counter() - start)
        try:
            reply = self._receive()
            outcome = _outcome(reply, max_chars)
        except _WorkerGone as gone:
            return ToolOutcome(False, error=str(gone), seconds=time.perf_counter() - start)
        except (ValueError, KeyError, TypeError) as exc:  # not the protocol: do not trust this worker further
            return ToolOutcome(False, error=self._fail(f"worker process sent a malformed reply ({exception_text(exc)})"),
                               seconds=time.perf_counter() - start)
        outcome.seconds = time.perf_counter() - start
        return outcome

    def close(self) -> None:
        """End the worker: it exits when its pipe closes; killed if it does not within a second."""
        if self.proc is None:
            return
        self._tx.close()
        try:
            self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._reap()

    # ---------------------------------------------------------------- inner
    def _start(self) -> None:
        """Start the process and have it load the pack; on failure `broken` says why."""
        child_rx, parent_tx = os.pipe()
        parent_rx, child_tx = os.pipe()
        # The worker sees this process's import path (plugins put on sys.path,
        # a source checkout), not the directory it is started in.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if isinstance(p, str) and p),
               "PYTHONSAFEPATH": "1"}
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", __name__, str(child_rx), str(child_tx)],
                                         pass_fds=(child_rx, child_tx), env=env, stdin=subprocess.DEVNULL)
        except OSError as exc:
            os.close(parent_rx)
            os.close(parent_tx)
            self.broken = f"cannot start a worker process for {self.label}: {exception_text(exc)}"
            return
        finally:
            os.close(child_rx)
            os.close(child_tx)
        _LIVE.add(self)
        self._rx, self._tx = Connection(parent_rx, writable=False), Connection(parent_tx, readable=False)
        setup = {"load": self.load, "functions": self.functions, "memory_mb": self.memory_mb}
        what = f"the tools of {self.label} cannot be loaded in a worker process"
        try:
            self._tx.send_bytes(json.dumps(setup).encode())
            if not self._rx.poll(START_TIMEOUT):
                raise _WorkerGone(f"no answer within {START_TIMEOUT:.0f} s")
            reply = self._receive()
        except (OSError, _WorkerGone) as exc:
            self.broken = f"{what}: {exc}"
        else:
            if not (isinstance(reply, dict) and reply.get("ok") is True):
                error = reply.get("error") if isinstance(reply, dict) else None
                self.broken = f"{what}: {str(error)[:300] if error else 'malformed reply'}"
        if self.broken is not None:
            self._kill()

    def _receive(self):
        try:
            data = self._rx.recv_bytes(MAX_REPLY_BYTES)
        except EOFError:
            code = self.proc.wait()
            self._reap()
            raise _WorkerGone(f"worker process died ({_exit_text(code)})") from None
        except OSError as exc:  # longer than any reply: the stream is out of step
            raise _WorkerGone(self._fail(f"worker process sent a malformed reply ({exception_text(exc)})")) from None
        return json.loads(data)

    def _fail(self, message: str) -> str:
        self._kill()
        return message

    def _kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # SIGKILL: whatever the tool is doing, GIL held or not
        self._reap()

    def _reap(self) -> None:
        """Wait for the ended process (no zombie) and drop the pipes; a next call starts a new one."""
        if self.proc is not None:
            self.proc.wait()
        for conn in (self._rx, self._tx):
            if conn is not None and not conn.closed:
                conn.close()
        self.proc = self._rx = self._tx = None
        _LIVE.discard(self)


class _WorkerGone(Exception):
    """The worker died or broke the protocol; it has been reaped."""


def _outcome(reply, max_chars: int) -> ToolOutcome:
    """A worker's reply, checked: it is untrusted input."""
    if reply["ok"] is True:
        text, cut = reply["text"], reply["cut"]
        if not isinstance(text, str) or not (cut is None or isinstance(cut, int)):
            raise TypeError("result is not text")
        return ToolOutcome(True, text[:max_chars], truncated_from=cut)
    error = reply["error"]
    if not isinstance(error, str):
        raise TypeError("error is not text")
    return ToolOutcome(False, error=error[:300])


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@atexit.register
def _close_all() -> None:
    """Backstop for agents that were never closed: no worker outlives the program."""
    for worker in list(_LIVE):
        worker.close()


# ---------------------------------------------------------- worker process
def _worker_main(rx_fd: int, tx_fd: int) -> None:
    # Ctrl-C in a terminal reaches the whole process group: it is for the
    # agent, which then closes its workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    rx, tx = Connection(rx_fd, writable=False), Connection(tx_fd, readable=False)
    setup = json.loads(rx.recv_bytes())
    _limit_memory(setup["memory_mb"])
    try:
        functions = _load_functions(setup["load"], setup["functions"])
    except BaseException as exc:  # a plugin's import may raise anything, SystemExit included
        tx.send_bytes(json.dumps({"ok": False, "error": exception_text(exc)}).encode())
        return
    tx.send_bytes(json.dumps({"ok": True}).encode())
    while True:
        try:
            request = json.loads(rx.recv_bytes())
        except EOFError:  # the agent closed the pipe: the run is over
            return
        outcome = run_and_format(functions[request["tool"]], request["args"], request["max_chars"], request["kwargs"])
        tx.send_bytes(json.dumps({"ok": outcome.ok, "text": outcome.value, "error": outcome.error,
                                  "cut": outcome.truncated_from}).encode())


def _limit_memory(memory_mb: int | None) -> None:
    """Cap the address space (not just resident memory: reserving counts too)."""
    if not memory_mb:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = int(memory_mb) << 20
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _load_functions(load: dict, functions: dict[str, str | None]) -> dict:
    """The pack's functions by tool name, re-created as `Worker` describes."""
    if "entry_point" in load:
        from toolken_plus.tools.plugins import tools_of

        group, name, value = load["entry_point"]
        obj = EntryPoint(name=name, value=value, group=group).load()
        root = Path(load["data_root"]) if load["data_root"] else None
        found = {t.name: t.fn for t in tools_of(obj, root, value)}
    else:
        found = {}
        for n, qualname in functions.items():
            obj = _resolve(load["module"], qualname)
            found[n] = obj.fn if isinstance(obj, Tool) else obj
    missing = [n for n in functions if not callable(found.get(n))]
    if missing:
        raise LookupError(f"no tool {missing} here (the installed code changed?)")
    return {n: found[n] for n in functions}


if __name__ == "__main__":
    _worker_main(int(sys.argv[1]), int(sys.argv[2]))

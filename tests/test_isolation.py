"""Tool calls in worker processes (and the thread path's limits): hostile
tools from an installed-looking plugin are killed, limited, contained."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fake_plugins import make_distribution

from toolken_plus import tool
from toolken_plus.tools.isolation import ProcessRunner, ThreadRunner, make_runners
from toolken_plus.tools.plugins import discover_tools
from toolken_plus.tools.registry import ToolDefinitionError

HOSTILE_MODULE = '''
import os
import sys

from toolken_plus import tool


@tool
def echo(x: float) -> str:
    """Returns its argument as text."""
    return f"{x:g}"


@tool
def worker_pid() -> int:
    """The process the call runs in."""
    return os.getpid()


@tool
def hold_gil(n: int) -> str:
    """One C-level power that holds the GIL for minutes at n=8."""
    return str(len(bin(7 ** (10 ** n))))


@tool
def hog(mb: int) -> str:
    """Allocates mb megabytes at once."""
    return str(len(bytearray(mb << 20)))


@tool
def leave(code: int) -> str:
    """sys.exit(code) for code >= 0, os._exit(-code) below."""
    if code >= 0:
        sys.exit(code)
    os._exit(-code)


@tool
def crash() -> str:
    """Reads address 0: a segmentation fault."""
    import ctypes
    return ctypes.string_at(0)


class Hostile:
    def __str__(self):
        raise RuntimeError("no text for you")


@tool
def hostile() -> object:
    """A result whose __str__ raises."""
    return Hostile()


@tool
def huge_int() -> int:
    """An int with 5001 digits (str() of it raises)."""
    return 10 ** 5000


@tool
def big(n: int) -> str:
    """A text of n characters."""
    return "7" * n


@tool
def scaled(x: float, *, times: int = 1) -> str:
    """x times `times` (a keyword-only argument)."""
    return f"{x * times:g}"
'''


@pytest.fixture
def hostile_tools(tmp_path, monkeypatch):
    root = make_distribution(tmp_path / "site", "hostile-tools", {"hostile": "hostile_tools"},
                             {"hostile_tools": HOSTILE_MODULE})
    monkeypatch.syspath_prepend(str(root))
    reg = discover_tools()
    yield {t.name: t for t in reg}
    sys.modules.pop("hostile_tools", None)


@pytest.fixture
def runners(hostile_tools):
    made = make_runners(hostile_tools, "auto", timeout=1.0, max_chars=300, memory_mb=256)
    yield made
    for r in made.values():
        r.close()


def _gone(pid: int) -> bool:
    """No process, not even a zombie, has this pid."""
    return not Path(f"/proc/{pid}").exists()


def test_plugin_tools_run_in_a_worker_process_by_default(runners):
    assert isinstance(runners["echo"], ProcessRunner)
    assert isinstance(runners["add"], ThreadRunner)  # the built-in calculator stays in this process
    out = runners["worker_pid"].call([])
    assert out.ok and int(out.value) != os.getpid()
    assert runners["echo"].call([2.5]).value == "2.5" and runners["add"].call([2, 3]).value == "5"
    assert runners["hog"].worker is runners["echo"].worker  # one worker per plugin


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_keyword_arguments_reach_the_tool_in_both_modes(hostile_tools, mode):
    made = make_runners({"scaled": hostile_tools["scaled"]}, mode, timeout=5.0, max_chars=300, memory_mb=256)
    try:
        assert made["scaled"].call([2.5], {"times": 3}).value == "7.5"
        assert made["scaled"].call([2.5]).value == "2.5"
    finally:
        made["scaled"].close()


def test_gil_holding_call_is_killed_at_the_limit(runners):
    first = int(runners["worker_pid"].call([]).value)
    start = time.perf_counter()
    out = runners["hold_gil"].call([8])  # minutes of C code holding the GIL
    assert time.perf_counter() - start < 10  # limit 1 s; generous bound
    assert not out.ok and out.error == "timed out after 1.0 s (worker process killed)"
    assert _gone(first)  # killed and reaped
    second = int(runners["worker_pid"].call([]).value)  # a fresh worker
    assert second != first


def test_memory_limit_is_an_error_and_the_worker_goes_on(runners):
    assert runners["hog"].call([16]).value == str(16 << 20)  # within the limit (256 MB)
    out = runners["hog"].call([4096])
    assert not out.ok and out.error.startswith("MemoryError")
    assert runners["echo"].call([1]).value == "1"


@pytest.mark.parametrize("args, error", [
    ([3], "SystemExit: 3"),  # caught in the worker
    ([-7], "worker process died (exit code 7)"),  # os._exit: the worker is gone
])
def test_a_tool_ending_its_process_is_an_error_and_the_next_call_works(runners, args, error):
    out = runners["leave"].call(args)
    assert not out.ok and out.error == error
    assert runners["echo"].call([1]).value == "1"


def test_a_crashing_tool_is_an_error_and_the_worker_restarts(runners):
    out = runners["crash"].call([])
    assert not out.ok and out.error == "worker process died (killed by SIGSEGV)"
    assert runners["echo"].call([1]).value == "1"


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_results_are_formatted_and_capped_where_the_tool_ran(hostile_tools, mode):
    made = make_runners(hostile_tools, mode, timeout=2.0, max_chars=300, memory_mb=256)
    try:
        out = made["hostile"].call([])
        assert not out.ok and out.error == "result cannot be written as text: RuntimeError: no text for you"
        out = made["huge_int"].call([])
        assert not out.ok and out.error.startswith("result cannot be written as text: ValueError: Exceeds the limit")
        out = made["big"].call([100_000])
        assert out.ok and out.value == "7" * 300 and out.truncated_from == 100_000
        assert made["big"].call([300]).truncated_from is None
    finally:
        for r in made.values():
            r.close()


def test_thread_mode_refuses_a_tool_whose_timed_out_calls_pile_up():
    release = threading.Event()

    @tool
    def stuck() -> str:
        """Waits until the test lets it go."""
        release.wait(30)
        return "done"

    runner = make_runners({"stuck": stuck}, "auto", timeout=0.05, max_chars=300, memory_mb=None)["stuck"]
    assert isinstance(runner, ThreadRunner)
    before = threading.active_count()
    errors = [runner.call([]).error for _ in range(7)]
    assert errors[:4] == ["timed out after 0.05 s"] * 4
    assert errors[4:] == ["tool disabled: 4 earlier calls still running"] * 3
    assert threading.active_count() - before == 4  # no more threads than that
    release.set()
    deadline = time.monotonic() + 10
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert runner.call([]).value == "done"  # the threads ended: the tool runs again


def test_a_tool_that_cannot_be_recreated_in_a_worker_is_a_clear_error():
    scale = 3
    closure = tool(lambda x: x * scale, name="scaled", doc="Multiplies by a captured number.")
    with pytest.raises(ToolDefinitionError, match="tool 'scaled' .* cannot run in a worker process"):
        make_runners({"scaled": closure}, "process", timeout=1.0, max_chars=300, memory_mb=None)
    # the same tool runs in a thread under auto
    assert make_runners({"scaled": closure}, "auto", timeout=1.0, max_chars=300, memory_mb=None)["scaled"].call([2]).value == "6"


def test_module_level_tools_run_in_process_mode(data_root):
    from toolken_plus.tasks.gsm8k import calculator_tools

    made = make_runners(calculator_tools(data_root), "process", timeout=2.0, max_chars=300, memory_mb=256)
    try:
        assert isinstance(made["add"], ProcessRunner) and made["add"].worker is made["divide"].worker
        assert made["add"].call([2, 3]).value == "5"
        assert made["divide"].call([1, 0]).error == "ZeroDivisionError: division by zero"
    finally:
        made["add"].close()


def test_a_pack_that_no_longer_loads_fails_each_call_at_once(hostile_tools, tmp_path):
    (tmp_path / "site" / "hostile_tools.py").unlink()  # uninstalled after discovery
    runner = make_runners(hostile_tools, "auto", timeout=1.0, max_chars=300, memory_mb=256)["echo"]
    out = runner.call([1])
    assert not out.ok and "cannot be loaded in a worker process" in out.error and "hostile_tools" in out.error
    assert runner.worker.proc is None  # no worker left running
    start = time.perf_counter()
    assert runner.call([1]).error == out.error and time.perf_counter() - start < 0.5  # no restart loop


def test_close_leaves_no_worker_behind(runners):
    pid = int(runners["worker_pid"].call([]).value)
    runners["echo"].close()
    assert _gone(pid)
    assert runners["echo"].call([4]).value == "4"  # a closed runner starts a new worker if used again


def test_the_exit_handler_ends_a_busy_worker_of_a_runner_never_closed(tmp_path):
    """The program ends while a call still runs: its worker must not run on."""
    script = (f"import sys, threading, time; sys.path.insert(0, {str(tmp_path / 'site')!r})\n"
              "from toolken_plus.tools.plugins import discover_tools\n"
              "from toolken_plus.tools.isolation import make_runners\n"
              "r = make_runners({t.name: t for t in discover_tools()}, 'auto', timeout=600, max_chars=50, memory_mb=256)\n"
              "print(r['worker_pid'].call([]).value, flush=True)\n"
              "threading.Thread(target=r['hold_gil'].call, args=([8],), daemon=True).start()\n"
              "time.sleep(0.5)\n")
    make_distribution(tmp_path / "site", "hostile-tools", {"hostile": "hostile_tools"}, {"hostile_tools": HOSTILE_MODULE})
    out, err = tmp_path / "pid.txt", tmp_path / "stderr.txt"  # files, not pipes a worker left running would hold open
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.run([sys.executable, "-c", script], stdout=stdout, stderr=stderr, timeout=60)
    pid = int(out.read_text())
    try:
        assert proc.returncode == 0, err.read_text()
        assert _gone(pid)
    finally:
        if not _gone(pid):
            os.kill(pid, 9)


def test_the_worker_imports_no_torch():
    """A worker stays light: what it imports is toolken_plus's registry side, not the model stack."""
    code = ("import sys, toolken_plus.tools.isolation, toolken_plus.tools.plugins; "
            "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr

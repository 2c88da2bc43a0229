"""What running a tool in a worker process costs per call, against a thread.

The agent runs built-in tools in a thread of its own process and tools of
third-party plugins in a worker process (toolken_plus/tools/isolation.py). Per call,
in one process and on warm runners (the worker already started, the first
calls not timed), we time N calls of:
  add    the calculator's <add> (parsing nothing: the values as the agent passes them)
  trivial  the builtin `abs`, a tool that does no work at all
in both modes, and print the mean latency of each, the ratio process / thread,
and what the first call cost (in process mode: starting the worker).

    python bench/tool_isolation.py [--calls 500] [--warmup 20]

Last line: `ratio=<process / thread, mean over both tools>`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolken_plus.tools.isolation import make_runners  # noqa: E402
from toolken_plus.tools.registry import Tool  # noqa: E402
from toolken_plus_tools import calculator  # noqa: E402

TOOLS = {
    "add": (Tool("add", calculator.add, "Adds numbers."), [1340, 635]),
    "trivial": (Tool("trivial", abs, "The absolute value of a number."), [-3]),
}


def timed_calls(runner, args: list, calls: int, warmup: int) -> tuple[float, float]:
    """Seconds of the first call (it starts a worker), and the mean per call
    after `warmup` untimed ones."""
    t0 = time.perf_counter()
    assert runner.call(args).ok
    first = time.perf_counter() - t0
    for _ in range(warmup):
        assert runner.call(args).ok
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        out = runner.call(args)
        times.append(time.perf_counter() - t0)
        if not out.ok:
            raise RuntimeError(out.error)
    return first, statistics.fmean(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=500, help="timed calls per tool and mode")
    ap.add_argument("--warmup", type=int, default=20, help="untimed calls after the first")
    ap.add_argument("--timeout", type=float, default=5.0, help="the calls' time limit (s)")
    args = ap.parse_args(argv)

    tools = {name: t for name, (t, _) in TOOLS.items()}
    ms, first = {}, {}
    for mode in ("thread", "process"):
        runners = make_runners(tools, mode, timeout=args.timeout, max_chars=300, memory_mb=1024)
        try:
            for name, (_, call_args) in TOOLS.items():
                f, mean = timed_calls(runners[name], call_args, args.calls, args.warmup)
                first[mode, name], ms[mode, name] = 1000 * f, 1000 * mean
        finally:
            for r in runners.values():
                r.close()
    print(f"{args.calls} warm calls per tool and mode (mean latency per call)")
    for name in TOOLS:
        thread, process = ms["thread", name], ms["process", name]
        print(f"  {name:8s} thread {thread:7.3f} ms   process {process:7.3f} ms   "
              f"({process - thread:+.3f} ms, x{process / thread:.2f})")
    print(f"first call (process mode: starts the worker): add {first['process', 'add']:.1f} ms, "
          f"thread mode {first['thread', 'add']:.2f} ms")
    ratios = [ms["process", n] / ms["thread", n] for n in TOOLS]
    print(f"ratio={statistics.fmean(ratios):.2f}")


if __name__ == "__main__":
    main()

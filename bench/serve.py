"""Requests per second of `toolken-plus serve` at 1 and at 16 concurrent clients.

Starts the server in a subprocess (a real socket, uvicorn, the Hydra command
line) on a checkpoint — the given one, or a tiny one trained here on
`model=tiny_random` (seconds; its answers are noise, the timings are the
loop's) — then sends the same GSM8K-XL test questions twice: one client
after another (the baseline, measured in the same run), then from
`--clients` threads at once, which the server decodes together in its
batched loop. Every concurrent reply is checked against the one-by-one reply
of the same question (greedy decoding: batching must not change them).

    python bench/serve.py [--checkpoint outputs/demo/<run>] [--requests 32] [--clients 16] [--max-new-tokens 64]

Last line: `ratio=<requests/s at --clients / requests/s at 1>`.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from toolken_plus.config import default_data_root  # noqa: E402
from toolken_plus.tasks.gsm8k import load_gsm8k_xl_test  # noqa: E402


def tiny_checkpoint(folder: Path, data_root: str) -> Path:
    """A tiny_random GSM8K-XL checkpoint (as tests/test_serve.py trains one)."""
    from toolken_plus.backbone import TinyRandomBackbone
    from toolken_plus.config.schema import DataConfig, TrainConfig, TrainerConfig
    from toolken_plus.tasks.gsm8k_xl import Gsm8kXL
    from toolken_plus.train.recipe import TrainToolkensRecipe

    cfg = TrainConfig(task=Gsm8kXL(n_val=8), model=TinyRandomBackbone(), cache_dir=str(folder / "cache"),
                      data=DataConfig(root=data_root, limit_train=24, limit_eval=8), trainer=TrainerConfig(epochs=1, progress=False))
    TrainToolkensRecipe(cfg, folder / "run").run()
    return folder / "run"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, port: int, run_dir: Path, args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOOLKEN_PLUS_DATA": args.data_root}
    cmd = [sys.executable, "-c", "import sys; from toolken_plus.cli import main; sys.exit(main())", "serve",
           f"checkpoint={checkpoint}", f"serve.port={port}", f"serve.max_batch={args.clients}",
           f"agent.max_new_tokens={args.max_new_tokens}", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(run_dir.parent / "server.err", "w"))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}): see {run_dir.parent / 'server.err'}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not come up within 600 s")


def ask(client: httpx.Client, question: str) -> str:
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": question}]})
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"]


def phase(base: str, questions: list[str], clients: int) -> tuple[float, list[str], dict]:
    """Seconds to answer `questions` from `clients` threads, the replies in order, and /health after."""
    with httpx.Client(base_url=base, timeout=3600, limits=httpx.Limits(max_connections=clients)) as client:
        before = client.get("/health").json()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            replies = list(pool.map(lambda q: ask(client, q), questions))
        seconds = time.perf_counter() - t0
        after = client.get("/health").json()
    runs = after["runs"] - before["runs"]
    return seconds, replies, {"runs": runs, "joined": after["joined"] - before["joined"], "largest_run": after["largest_run"]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="run dir of train.py (default: a tiny_random one trained here)")
    ap.add_argument("--requests", type=int, default=32, help="questions sent in each phase")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients of the second phase (and serve.max_batch)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--data-root", default=str(default_data_root()))
    args = ap.parse_args(argv)

    questions = [it["question"] for it in load_gsm8k_xl_test(Path(args.data_root) / "gsm8k-xl" / "test.json",
                                                             limit=args.requests + 1)]
    warmup, questions = questions[0], questions[1:]
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        tmp = Path(tmp)
        checkpoint = Path(args.checkpoint) if args.checkpoint else tiny_checkpoint(tmp, args.data_root)
        port = free_port()
        proc = start_server(checkpoint, port, tmp / "serve", args)
        base = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=base, timeout=3600) as client:
                ask(client, warmup)  # first-request costs (the prompt prefix's KV, allocator)
                health = client.get("/health").json()
            print(f"server: {health['backbone']}, task {health['task']}, checkpoint {checkpoint}, "
                  f"agent.max_new_tokens={args.max_new_tokens}, serve.max_batch={args.clients}, "
                  f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
            t1, replies1, s1 = phase(base, questions, 1)
            tn, repliesn, sn = phase(base, questions, args.clients)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    n = len(questions)
    r1, rn = n / t1, n / tn
    same = sum(a == b for a, b in zip(replies1, repliesn))
    print(f"  1 client:   {r1:7.3f} requests/s ({t1:.1f} s for {n}; {s1['runs']} agent runs)")
    print(f"  {args.clients} clients: {rn:7.3f} requests/s ({tn:.1f} s for {n}; {sn['runs']} agent runs, "
          f"{sn['joined']} requests joined a running batch, at most {sn['largest_run']} in one run)")
    print(f"  replies identical to the one-by-one replies: {same}/{n}")
    print(f"ratio={rn / r1:.2f}")


if __name__ == "__main__":
    main()

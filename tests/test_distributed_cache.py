"""The feature cache built by 2 torchrun processes (gloo, CPU) is the cache
one process builds: same folder name (key), same files, same arrays bit for
bit; the other rank opens the same folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from distributed_worker import build_all, setup

from toolken_plus.train.cache import _ARRAYS

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def test_two_processes_build_the_one_process_cache(tmp_path):
    shared_root, out = tmp_path / "shared", tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(PROJECT_ROOT / "tests" / "distributed_worker.py"), str(shared_root), str(out)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["world"] == 2 and ranks[0]["paths"] == ranks[1]["paths"]

    import torch
    torch.set_num_threads(1)  # as the ranks ran
    single = build_all(*setup(), tmp_path / "single")
    assert [c.meta["key"] for c in single] == ranks[0]["keys"]
    for one, path in zip(single, ranks[0]["paths"]):
        two = Path(path)
        assert two.name == one.path.name
        assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.path.iterdir())
        for name in _ARRAYS:
            a, b = np.load(one.path / f"{name}.npy"), np.load(two / f"{name}.npy")
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), name
        meta1, meta2 = json.loads((one.path / "meta.json").read_text()), json.loads((two / "meta.json").read_text())
        timing = {"build_seconds", "tokens_per_second"}
        assert {k: v for k, v in meta1.items() if k not in timing} == {k: v for k, v in meta2.items() if k not in timing}
    assert not list((shared_root / "features").glob(".tmp-*"))  # shards and temp dir cleaned up


def test_torchrun_train_py_end_to_end(tmp_path):
    """`torchrun --nproc_per_node 2 train.py …`: the ranks build the caches
    together, rank 0 trains and alone writes the run dir; a single-process
    rerun finds the same caches (same keys) and trains the same head."""
    from conftest import DATA_ROOT, GSM8K_XL

    overrides = [*GSM8K_XL, "model=tiny_random", "data.limit_train=24", "data.limit_eval=12", "trainer.epochs=2",
                 "trainer.progress=false", "logger=none"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
           "TOOLKEN_PLUS_CACHE": str(tmp_path / "cache"), "TOOLKEN_PLUS_DATA": str(DATA_ROOT)}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(PROJECT_ROOT / "train.py"), *overrides, f"hydra.run.dir={tmp_path / 'run2'}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert two.returncode == 0, two.stderr[-3000:]
    built = sorted(p.name for p in (tmp_path / "cache" / "features").iterdir())
    assert len(built) == 2 and not [n for n in built if n.startswith(".")]  # train + val, no temp left
    assert (tmp_path / "run2" / "metrics.json").is_file() and (tmp_path / "run2" / "toolkens.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(("outputs", "multirun"))] == []  # rank 1 wrote no run dir

    one = subprocess.run([sys.executable, str(PROJECT_ROOT / "train.py"), *overrides,
                          f"hydra.run.dir={tmp_path / 'run1'}"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=180)
    assert one.returncode == 0, one.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "cache" / "features").iterdir()) == built  # hits, builds nothing
    assert "feature cache hit" in one.stderr + one.stdout
    m1, m2 = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("run1", "run2"))
    assert m1["val/f1"] == m2["val/f1"] and m1["train/loss"] == m2["train/loss"]

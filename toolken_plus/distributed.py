"""Several processes (`torchrun`) sharing the one expensive training step.

Under `torchrun --nproc_per_node N train.py …` (or across machines with
--nnodes / --rdzv_endpoint), every process runs train.py; the environment
torchrun sets (WORLD_SIZE, RANK, LOCAL_RANK) says which one this is. The
feature caches are built by all of them together (train/cache.py: each rank
forwards every world_size-th length batch, rank 0 merges one cache, identical
to a single process's); then ranks > 0 stop and rank 0 alone trains the head,
calibrates, fits the reranker and writes the run dir. The cache dir must be
on a filesystem every rank sees (it is where the shards meet).

Without torchrun (WORLD_SIZE unset or 1) nothing here does anything.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

# Ranks wait at barriers while the slowest rank finishes its share and rank 0
# merges the shards: the default timeouts (10-30 min) are too short for a
# large cache.
TIMEOUT = timedelta(hours=6)


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) as torchrun set them; (0, 1, 0) otherwise."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def launched_distributed() -> bool:
    return env_world()[1] > 1


def init_from_env() -> bool:
    """Join the process group torchrun describes (NCCL with GPUs, gloo on
    CPU; each rank on GPU LOCAL_RANK); False, doing nothing, for a single
    process or when a group is already up."""
    if not launched_distributed() or (dist.is_available() and dist.is_initialized()):
        return False
    backend = "gloo"
    if torch.cuda.is_available():
        backend = "nccl"
        torch.cuda.set_device(env_world()[2])
    dist.init_process_group(backend, timeout=TIMEOUT)
    return True


def world() -> tuple[int, int]:
    """(rank, world_size) of the initialised process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank() -> int:
    """This process's rank: the group's, else torchrun's (before the group is up)."""
    return world()[0] if dist.is_available() and dist.is_initialized() else env_world()[0]


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def broadcast(obj, src: int = 0):
    """`obj` as rank `src` has it (a picklable object), on every rank."""
    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

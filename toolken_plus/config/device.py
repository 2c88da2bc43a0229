"""Where the backbone runs and in which precision: the top-level options
`device=`, `dtype=` and `device_map=` (schema.py), resolved once, at start.

    device=auto   cuda if torch.cuda.is_available() else cpu (the default)
    device=cpu | cuda | cuda:N
    dtype=null    the backbone's own (model.dtype: float32 for every shipped backbone)
    dtype=float32 | bfloat16 | float16 | auto (cuda: bfloat16 where supported, else float16; cpu: float32)
    device_map=auto   HF backbones: from_pretrained(device_map="auto") (accelerate) spreads a model
                      larger than one GPU over the visible GPUs (and CPU); `device` then only
                      places what is not the backbone (inputs follow the backbone's own devices)

`device=cuda` on a machine without a usable GPU stops here, with a message,
instead of deep inside torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from toolken_plus.config.validation import DEVICE_MAPS, DEVICE_PATTERN, DTYPES, ConfigError


@dataclass(frozen=True)
class Placement:
    """The resolved device, dtype (None: the backbone's own) and device_map."""

    device: torch.device
    dtype: Optional[torch.dtype] = None
    device_map: Optional[str] = None


def resolve_device(device: str | None = "auto") -> torch.device:
    device = device or "auto"
    if not DEVICE_PATTERN.match(str(device)):
        raise ConfigError(f"device={device!r}: must be auto, cpu, cuda or cuda:N")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            built = torch.version.cuda
            why = (f"torch {torch.__version__} was built without CUDA" if built is None else
                   f"torch {torch.__version__} (CUDA {built}) sees no GPU (driver, CUDA_VISIBLE_DEVICES?)")
            raise ConfigError(f"device={device}: no CUDA GPU is available ({why}); use device=cpu or device=auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device={device}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return dev


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype | None:
    if dtype is None:
        return None
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}: must be one of {', '.join(DTYPES)} (or null: the backbone's own)")
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, dtype)


def bfloat16_is_fast(device: torch.device) -> bool:
    """Whether bfloat16 matrix products run natively on `device`: a CUDA GPU
    that supports them, or a CPU with AMX or AVX512-BF16 (elsewhere PyTorch
    emulates them, more slowly than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private, so probed
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)
    return False


def resolve_state_dtype(dtype: str | None, device: torch.device) -> torch.dtype | None:
    """The precision of a pass that only reads hidden states (the llm
    reranker's doc-block pass): None = the backbone's own; auto = bfloat16
    where it is fast (`bfloat16_is_fast`), else the backbone's own."""
    if dtype == "auto":
        return torch.bfloat16 if bfloat16_is_fast(device) else None
    return resolve_dtype(dtype, device)


def dtype_name(dtype: torch.dtype | None) -> str | None:
    """float32 for torch.float32 (how a dtype is written into a checkpoint)."""
    return None if dtype is None else str(dtype).removeprefix("torch.")


def resolve_placement(cfg) -> Placement:
    """The placement a run config asks for (objects or dicts; absent options
    take their defaults)."""
    get = (cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d))
    device = resolve_device(get("device", "auto"))
    device_map = get("device_map", None)
    if device_map is not None and device_map not in DEVICE_MAPS:
        raise ConfigError(f"device_map={device_map!r}: must be one of {', '.join(DEVICE_MAPS)} or null")
    return Placement(device, resolve_dtype(get("dtype", None), device), device_map)

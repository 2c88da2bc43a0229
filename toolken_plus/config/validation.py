"""Config values checked once, at start, before any data or model is loaded.
(Types are checked by the schema, schema.py; this is about ranges.)

Every option with a range is listed here, once, with the range in words; a
bad value stops the run with one message naming each bad option, instead of
a crash deep in the code (`data.max_length=0` → IndexError) or, worse, a run
that "succeeds" (`trainer.epochs=-3` saved untrained toolkens, `lr=inf` NaNs).
Options absent from a config (the inference config has no `trainer`, a
reranker has no `alpha` unless it is the embedding one) are skipped, so
training and inference share the table; configs may be objects or dicts.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

_MISSING = object()


class ConfigError(ValueError):
    """One or more config values are outside their allowed range."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer(lo: int | None = None, hi: int | None = None, *, optional: bool = False) -> tuple[Callable, str]:
    def ok(v):
        if v is None:
            return optional
        return _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi)

    bounds = " and ".join(b for b in (f">= {lo}" if lo is not None else "", f"<= {hi}" if hi is not None else "") if b)
    what = f"an integer {bounds}".strip() + (" or null" if optional else "")
    return ok, what


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           optional: bool = False, finite: bool = True) -> tuple[Callable, str]:
    def ok(v):
        if v is None:
            return optional
        if not _is_number(v) or math.isnan(v) or (finite and not math.isfinite(v)):
            return False
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        return hi is None or v <= hi

    parts = ["a finite number" if finite else "a number (not NaN)"]
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        parts.append(f"<= {hi}")
    return ok, " ".join(parts) + (" or null" if optional else "")


def one_of(*choices: str) -> tuple[Callable, str]:
    return (lambda v: v in choices), "one of " + ", ".join(choices)


def optional_one_of(*choices: str) -> tuple[Callable, str]:
    return (lambda v: v is None or v in choices), "one of " + ", ".join(choices) + " or null"


# The choices of the placement options (config/device.py resolves them).
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
DTYPES = ("float32", "bfloat16", "float16", "auto")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def device_string() -> tuple[Callable, str]:
    return (lambda v: isinstance(v, str) and DEVICE_PATTERN.match(v) is not None,
            "auto, cpu, cuda or cuda:N (auto: cuda if available, else cpu)")


def boolean() -> tuple[Callable, str]:
    return (lambda v: isinstance(v, bool)), "true or false"


def _grid_ok(v) -> bool:
    if not isinstance(v, (list, tuple)) or len(v) != 3 or not all(_is_number(x) and math.isfinite(x) for x in v):
        return False
    lo, hi, step = v
    # the sweep evaluates every grid point on the validation set: keep it bounded
    return step > 0 and lo <= hi and (hi - lo) / step <= 100_000


GRID = (_grid_ok, "[low, high, step] with finite numbers, low <= high, step > 0 and at most 100000 points")

# option path → (check, allowed values in words)
RULES: dict[str, tuple[Callable, str]] = {
    "seed": integer(),
    "resume": boolean(),
    "device": device_string(),
    "dtype": optional_one_of(*DTYPES),
    "device_map": optional_one_of(*DEVICE_MAPS),
    "data.limit_train": integer(1, optional=True),
    "data.limit_eval": integer(1, optional=True),
    "data.max_length": integer(2),
    "trainer.epochs": integer(1),
    "trainer.lr": number(0, lo_open=True),
    "trainer.batch_size": integer(1),
    "trainer.weight_decay": number(0),
    "trainer.progress": boolean(),
    "cache.dtype": one_of("float16", "float32"),
    "cache.max_tokens_per_batch": integer(1),
    "calibration.grid": GRID,
    "tools.recalibrate_bias": boolean(),
    "agent.setting": one_of("toolkens", "no_tools", "gold", "gold_classes"),
    "agent.grounded": boolean(),
    "agent.logit_bias": number(optional=True, finite=False),
    "agent.batch_size": integer(1),
    "agent.max_new_tokens": integer(1),
    "agent.max_arg_tokens": integer(1),
    "agent.max_calls": integer(0),
    "agent.tool_timeout": number(0, 3600, lo_open=True),
    "agent.max_result_chars": integer(1),
    "agent.isolation": one_of("auto", "thread", "process"),
    "agent.tool_memory_mb": integer(16, optional=True),
    "agent.progress": boolean(),
    "agent.show": integer(0),
    "method.r": integer(1),
    "method.alpha": number(0, lo_open=True),
    "method.dropout": number(0, 1),
    "method.lr": number(0, lo_open=True),
    "method.max_length": integer(2),
    "method.max_tokens_per_micro_batch": integer(1),
    "method.retrieve": integer(0),
    "method.max_doc_chars": integer(1),
    "reranker.k": integer(1),
    "reranker.max_doc_chars": integer(1),
    "reranker.max_train": integer(1, optional=True),
    "reranker.max_val": integer(1, optional=True),
    "reranker.epochs": integer(1),
    "reranker.lr": number(0, lo_open=True),
    "reranker.batch_size": integer(1),
    "reranker.state_batch": integer(1),
    "reranker.state_tokens": integer(1),
    "reranker.alpha": number(0, 1),
    "reranker.context_chars": integer(1),
    "reranker.threshold": number(optional=True, finite=False),
    "reranker.keep_all_rejects": boolean(),
    "reranker.mining": one_of("train", "crossfit"),
    "reranker.folds": integer(2),
    "reranker.mix": number(0, 1, optional=True),
    "reranker.reject_bias": number(optional=True),
    "reranker.call_mix": number(0, 1, optional=True),
    "reranker.max_recall_drop": number(0, 1),
    "reranker.state_dtype": optional_one_of(*DTYPES),
    "serve.port": integer(0, 65535),
    "serve.max_prompt_tokens": integer(1, optional=True),
    "serve.max_batch": integer(1),
    "serve.max_wait_ms": number(0, 60_000),
    "task.n_val": integer(0),
    "task.split_seed": integer(),
    "task.val_frac": number(0, 0.5),
    "task.test_frac": number(0, 0.5),
}


def _lookup(cfg, path: str):
    node: Any = cfg
    for part in path.split("."):
        if isinstance(node, dict):
            node = node.get(part, _MISSING)
        else:
            node = getattr(node, part, _MISSING)
        if node is _MISSING:
            return _MISSING
    return node


def config_problems(cfg) -> list[str]:
    """One line per option whose value is outside its allowed range."""
    problems = []
    for path, (ok, allowed) in RULES.items():
        value = _lookup(cfg, path)
        if value is _MISSING:
            continue
        if not ok(value):
            problems.append(f"{path}={value!r}: must be {allowed}")
    return problems


def validate_config(cfg):
    """Raise ConfigError listing every bad option; return cfg unchanged."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    return cfg

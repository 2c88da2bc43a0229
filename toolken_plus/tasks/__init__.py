"""Benchmarks, each a Task subclass (base.py) in a module of this package:
gsm8k_xl.py (GSM8K-XL), metatool.py (MetaTool), virtualhome.py (VirtualHome
plans, run in its simulator: virtualhome_sim.py), custom.py (your own data).

`known_tasks()` finds them by their `name` default, so adding a benchmark
needs no list to edit here: a checkpoint names its task, and loading it finds
the class (only classes of this package: a checkpoint never names code to import).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil

from toolken_plus.tasks.base import ChoiceTask, EvalItem, PlanTask, Task, TaskData, TextTask


@functools.cache
def known_tasks() -> dict[str, type[Task]]:
    """Task classes of this package by name (their `name` field's default)."""
    found: dict[str, type[Task]] = {}
    for info in pkgutil.iter_modules(__path__, __name__ + "."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Task) and obj.__module__ == module.__name__:
                default = next((f.default for f in dataclasses.fields(obj) if f.name == "name"), "")
                if default:
                    found[default] = obj
    return found


def task_from_config(config: dict) -> Task:
    """A Task from its recorded settings ({"name": …, fields…}), e.g. from a checkpoint."""
    name = config.get("name")
    cls = known_tasks().get(name)
    if cls is None:
        raise ValueError(f"unknown task {name!r}; known: {sorted(known_tasks())} (a task of your own: pass it in code)")
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    return cls(**{k: v for k, v in config.items() if k in fields})


__all__ = ["ChoiceTask", "EvalItem", "PlanTask", "Task", "TaskData", "TextTask", "known_tasks", "task_from_config"]

"""Task adapters behind one call: config in, tools + examples out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from toolken_plus.data.examples import Example


@dataclass
class TaskData:
    name: str
    tool_names: list[str]
    tool_docs: dict[str, str]
    train: list[Example]
    val: list[Example]
    notes: list[str] = field(default_factory=list)  # data statistics worth printing
    # "text": call-annotated texts, every position labelled (GSM8K-XL, custom);
    # "choice": one choice point per example after a shared `prefix` (MetaTool).
    kind: str = "text"
    prefix: str = ""


def _limit(examples: list, n) -> list:
    return examples if n is None else examples[: int(n)]


def load_gsm8k_xl(task: dict, data: dict) -> TaskData:
    from toolken_plus.tasks import gsm8k

    root = Path(data["root"])
    stats = gsm8k.Gsm8kStats()
    examples = gsm8k.load_gsm8k(root / task["train_file"], stats=stats)
    train, val = gsm8k.split_train_val(examples, int(task["n_val"]), int(task["split_seed"]))
    from toolken_plus.tasks.gsm8k import calculator_tools

    docs = {name: tool.doc for name, tool in calculator_tools(root).items()}
    return TaskData(
        name=task["name"],
        tool_names=list(gsm8k.TOOLS),
        tool_docs={t: docs.get(t, "") for t in gsm8k.TOOLS},
        train=_limit(train, data.get("limit_train")),
        val=_limit(val, data.get("limit_eval")),
        notes=[stats.summary(), f"split: {len(train)} train / {len(val)} validation (held out of GSM8K train, seed {task['split_seed']})"],
    )


def load_custom(task: dict, data: dict) -> TaskData:
    """Your own tools and data: `task=custom task.tools={name: doc, …}
    task.train_file=train.jsonl task.val_file=val.jsonl` (call-span JSONL,
    see `tasks.gsm8k.load_call_jsonl`); relative paths are under data.root.
    `task.tools=[name, …]` (or a doc of null) takes the documentation of
    registered tools (`toolken-plus tools` lists them)."""
    from toolken_plus.tasks.gsm8k import load_call_jsonl

    tools = task.get("tools") or {}
    if not tools:
        raise ValueError("task=custom needs task.tools: a mapping of tool name to its documentation, "
                         "or a list of registered tool names")
    tools = dict.fromkeys(tools) if isinstance(tools, (list, tuple)) else dict(tools)
    root = Path(data["root"])
    undocumented = [n for n, doc in tools.items() if not doc]
    if undocumented:
        from toolken_plus.tools.plugins import discover_tools

        tools.update({n: t.doc for n, t in discover_tools(root).resolve(undocumented).items()})
    train = load_call_jsonl(root / task["train_file"], tools, limit=data.get("limit_train"))
    val = load_call_jsonl(root / task["val_file"], tools, limit=data.get("limit_eval")) if task.get("val_file") else []
    return TaskData(task["name"], list(tools), tools, train, val,
                    notes=[f"custom task: {len(train)} train / {len(val)} validation examples, tools {list(tools)}"])


def load_metatool(task: dict, data: dict) -> TaskData:
    from toolken_plus.tasks import metatool

    split = metatool_split(task, data)
    docs = metatool.load_tool_docs(Path(data["root"]) / task["docs_file"])
    return TaskData(task["name"], list(docs), docs, _limit(split.train, data.get("limit_train")),
                    _limit(split.val, data.get("limit_eval")), notes=split.notes, kind="choice",
                    prefix=metatool.PROMPT_PREFIX)


def metatool_split(task: dict, data: dict):
    """The seeded MetaTool split; train.py and infer.py both call this."""
    from toolken_plus.tasks import metatool

    root = Path(data["root"])
    docs = metatool.load_tool_docs(root / task["docs_file"])
    queries = metatool.load_queries_csv(root / task["data_file"], docs)
    awareness = metatool.load_awareness(root / task["awareness_file"], docs)
    return metatool.split_metatool(queries, awareness, val_frac=float(task.get("val_frac", 0.1)),
                                   test_frac=float(task.get("test_frac", 0.1)), seed=int(task.get("split_seed", 0)))


TASKS = {"gsm8k_xl": load_gsm8k_xl, "custom": load_custom, "metatool": load_metatool}


def load_task_data(task: dict, data: dict) -> TaskData:
    try:
        loader = TASKS[task["name"]]
    except KeyError:
        raise ValueError(f"unknown task {task.get('name')!r}; known: {sorted(TASKS)}") from None
    return loader(task, data)

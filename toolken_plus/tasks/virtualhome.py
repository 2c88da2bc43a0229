"""VirtualHome: household plans written with toolkens, run in the simulator.

Data. The 518 executable programs of scene TrimmedTestScene1 that ship in
the PyPI package `virtualhome-eval` (title, description, steps with node
ids, initial and final scene graphs) and ToolkenGPT's toolken set
(`vh/func_dict.json` under the data root: 25 actions, 32 objects, [END]).
Every toolken action takes one object. Programs whose every step uses a
toolken action and toolken objects are kept (253 of 518); the rest use
actions or objects outside the set (PUTBACK, POUR, dish_soap, …) and are
dropped, with the counts printed and recorded. Of the kept, `file624_1`
grabs an object it already holds: its own gold plan does not execute, so it
is dropped too (BROKEN_GOLD; tests/test_virtualhome.py replays every gold
program to check the list). The rest are split by a seeded shuffle into
train / validation / test, whole programs held out (252 → 152 / 50 / 50).
ToolkenGPT's 247 training prompts are not used: 86 of them are programs of
this set, which would leak test programs into training.

Text. A shared prefix (an instruction and two training programs as
demonstrations), then per task, as in ToolkenGPT's prompts:

    I am in ['bedroom']. The objects I can manipulate are ['bed', 'chair', …].
    Goal:
    Turn on light
    Hint:
    I go to bedroom and locate a lamp. …
    Plan:
    [WALK] <bedroom>
    …
    [END]

The room is where the character starts (init_graph); the objects are the
toolken objects present in the scene. Every step is a toolken choice: the
action toolken writes `[WALK]`, its object toolken ` <bedroom>`, then a line
break follows. Training labels exactly those choices (data/encoding.py's
targets; nothing else in the text is a target), and the text is tokenized
piece by piece, the same pieces the plan decoder (infer/plan.py) appends.

Scoring (virtualhome_sim.py). A plan is executed from the task's
init_graph, objects resolved to scene instances by one rule for every
setting. `executability`: every step runs. `success_rate`: executable, and
the final graph shows every change the gold program makes to the scene
(states set and unset, relations added and removed; CLOSE relations
ignored). `lcs`: longest common subsequence of steps with the gold plan,
divided by the longer plan's length.
"""

from __future__ import annotations

import functools
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import numpy as np

from toolken_plus.data.encoding import IGNORE, Encoded
from toolken_plus.data.locate import task_root
from toolken_plus.data.text_examples import TextExample
from toolken_plus.tasks.base import EvalItem, PlanTask, TaskData, limit
from toolken_plus.tasks.virtualhome_sim import (
    CHARACTER_ID,
    GoalChanges,
    PlanOutcome,
    Step,
    action_doc,
    execute_plan,
    known_actions,
    parse_program_line,
)
from toolken_plus.tools.registry import Tool

END = "END"
LINE_END = "\n"
BROKEN_GOLD = frozenset({"file624_1", "file688_1"})  # their gold plans grab an object already held
INSTRUCTION = ("Plan household tasks for a robot in a home. Each plan step is one line: an action in "
               "square brackets and the object it acts on in angle brackets. A plan ends with [END].\n\n")


# A plan line as a model writes it (classes only): `[GRAB] <mug>`, `[PUTBACK] <mug> <table>`.
_PLAN_LINE = re.compile(r"^\[([A-Z_]+)\]((?:\s*<[^<>\n]+>)*)$")
_PLAN_OBJECT = re.compile(r"<([^<>\n]+)>")


# --------------------------------------------------------------------- data
@dataclass(frozen=True)
class Program:
    id: str  # e.g. "file11_1"
    title: str
    description: str
    steps: tuple[Step, ...]
    ids: tuple[tuple[int, ...], ...]  # the gold node ids of each step
    graph_file: str  # {init_graph, final_graph}


@dataclass(frozen=True)
class PlanExample:
    """A program as training text: its header and its plan."""

    id: str
    header: str
    steps: tuple[Step, ...]


def default_programs_dir() -> Path:
    try:
        import virtualhome_eval
    except ImportError as exc:  # pragma: no cover - installed by make setup
        raise ImportError("VirtualHome needs the package virtualhome-eval: pip install --no-deps virtualhome-eval") from exc
    return Path(virtualhome_eval.__file__).parent / "dataset" / "programs_processed_precond_nograb_morepreconds"


_SCENE = "TrimmedTestScene1_graph/results_intentions_march-13-18"


@functools.lru_cache(maxsize=4)
def load_programs(programs_dir: str) -> tuple[Program, ...]:
    root = Path(programs_dir)
    scripts = sorted((root / "executable_programs" / _SCENE).glob("file*.txt"))
    if not scripts:
        raise FileNotFoundError(f"no VirtualHome programs under {root / 'executable_programs' / _SCENE}")
    out = []
    for path in scripts:
        lines = path.read_text(encoding="utf-8").split("\n")
        parsed = [parse_program_line(line) for line in lines if line.strip().startswith("[")]
        out.append(Program(path.stem, lines[0].strip(), lines[1].strip(), tuple(s for s, _ in parsed),
                           tuple(i for _, i in parsed), str(root / "init_and_final_graphs" / _SCENE / f"{path.stem}.json")))
    return tuple(out)


@functools.lru_cache(maxsize=64)
def load_graphs(graph_file: str) -> tuple[dict, dict]:
    data = json.loads(Path(graph_file).read_text(encoding="utf-8"))
    return data["init_graph"], data["final_graph"]


@dataclass(frozen=True)
class Scene:
    """What the task needs to know of a program's initial scene without
    keeping its graph (0.75 MB of JSON) in memory."""

    room: str  # where the character starts
    classes: frozenset
    facts: tuple  # (class, category, properties) per class, for the tool docs


@functools.lru_cache(maxsize=None)
def scene_of(graph_file: str) -> Scene:
    init, _ = load_graphs(graph_file)
    names = {n["id"]: n["class_name"] for n in init["nodes"]}
    rooms = {n["id"] for n in init["nodes"] if n.get("category") == "Rooms"}
    room = next((names[e["to_id"]] for e in init["edges"]
                 if e["from_id"] == CHARACTER_ID and e["relation_type"] == "INSIDE" and e["to_id"] in rooms), "home")
    facts = {}
    for n in sorted(init["nodes"], key=lambda n: n["id"]):
        facts.setdefault(n["class_name"], (n.get("category", ""), tuple(sorted(n.get("properties", ())))))
    return Scene(room, frozenset(names.values()), tuple((c, *f) for c, f in sorted(facts.items())))


def load_toolkens(path: Path) -> tuple[list[str], list[str]]:
    """(actions, objects) of a ToolkenGPT func_dict ({"[WALK]": 4, "<couch>": 26, "[END]": 57})."""
    try:
        names = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"VirtualHome toolkens not found: {path} (data.root, or task.toolkens_file)") from exc
    order = sorted(names, key=names.get)
    actions = [n[1:-1] for n in order if n.startswith("[") and n != "[END]"]
    objects = [n[1:-1] for n in order if n.startswith("<")]
    unknown = [a for a in actions if a not in known_actions()]
    if unknown or any(known_actions()[a] != 1 for a in actions):
        raise ValueError(f"{path}: every action toolken must be a one-object simulator action; not: "
                         f"{unknown or [a for a in actions if known_actions()[a] != 1]}")
    return actions, objects


def header_text(program: Program, objects: list[str]) -> str:
    scene = scene_of(program.graph_file)
    present = [o for o in objects if o in scene.classes]
    return (f"I am in ['{scene.room}']. The objects I can manipulate are {present}.\n"
            f"Goal:\n{program.title}\nHint:\n{program.description}\nPlan:\n")


def plan_text(steps) -> str:
    return "".join(s.text + LINE_END for s in steps) + f"[{END}]"


def lcs_ratio(plan: list[Step], gold: list[Step]) -> float:
    """Longest common subsequence of steps, over the longer plan's length."""
    if not plan and not gold:
        return 1.0
    prev = [0] * (len(gold) + 1)
    for a in plan:
        cur = [0]
        for j, b in enumerate(gold):
            cur.append(prev[j] + 1 if a == b else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1] / max(len(plan), len(gold))


# --------------------------------------------------------------------- task
@dataclass
class VirtualHome(PlanTask):
    name: str = "virtualhome"
    toolkens_file: str = "vh/func_dict.json"  # under the data root
    programs_dir: Optional[str] = None  # None: the programs inside the virtualhome-eval package
    split_seed: int = 0
    val_frac: float = 0.2
    test_frac: float = 0.2
    n_demos: int = 2  # training programs shown in the shared prefix
    max_steps: int = 30  # a plan stops here if [END] did not come (gold plans: 4–26 steps in the toolken set)

    eval_sets: ClassVar[tuple[str, ...]] = ("test", "val")
    main_metric: ClassVar[str] = "success_rate"
    datasets: ClassVar[tuple[str, ...]] = ("vh",)  # the toolkens; the programs are in the virtualhome-eval package
    eval_conditions: ClassVar[str] = (
        "Every method writes a plan for the same test programs, from the same task header (title, description, "
        "the scene's objects); a plan stops at [END] or after 30 steps (text methods: at most 308 greedy tokens). "
        "Each plan runs in the same simulator from the program's initial graph; a model's plan names classes only, "
        "instances are resolved the same way for every method.")
    # python -m toolken_plus.cli.compare: (metrics key, title, format)
    compare_columns: ClassVar[tuple] = (("n", "plans", "{}"), ("executability", "executability", "{:.3f}"),
                                        ("success_rate", "success", "{:.3f}"), ("lcs", "LCS", "{:.3f}"),
                                        ("mean_plan_steps", "steps/plan", "{:.2f}"),
                                        ("rerank_changed_step", "reranker changed", "{}"), ("seconds", "wall s", "{}"))

    # ------------------------------------------------------------ data
    def toolkens(self, root: Path) -> tuple[list[str], list[str]]:
        return load_toolkens(Path(root) / self.toolkens_file)

    def split(self, root: Path) -> dict:
        """{"train", "val", "test": [Program], "notes": [str]}: seeded, whole programs."""
        actions, objects = self.toolkens(root)
        programs = load_programs(str(self.programs_dir or default_programs_dir()))
        inside = [p for p in programs if all(s.action in actions and all(o in objects for o in s.objects) for s in p.steps)]
        outside = Counter(x for p in programs if p not in inside
                          for x in {*(f"[{s.action}]" for s in p.steps if s.action not in actions),
                                    *(f"<{o}>" for s in p.steps for o in s.objects if o not in objects)})
        kept = [p for p in inside if p.id not in BROKEN_GOLD]
        order = sorted(kept, key=lambda p: p.id)
        random.Random(self.split_seed).shuffle(order)
        n_test, n_val = round(len(order) * self.test_frac), round(len(order) * self.val_frac)
        test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
        notes = [f"VirtualHome: {len(programs)} programs, {len(inside)} use only toolken actions and objects "
                 f"({len(programs) - len(inside)} dropped; most common outside the set: "
                 f"{', '.join(f'{k} {v}' for k, v in outside.most_common(6))}), "
                 f"{len(inside) - len(kept)} dropped whose gold plan does not execute; "
                 f"split {len(train)} train / {len(val)} val / {len(test)} test (seed {self.split_seed})"]
        return {"train": train, "val": val, "test": test, "notes": notes}

    @functools.cached_property
    def _prefix_cache(self) -> dict:
        return {}

    def prefix_text(self, root: Path) -> str:
        root = Path(root)
        if root not in self._prefix_cache:
            _, objects = self.toolkens(root)
            demos = self.split(root)["train"][: self.n_demos]
            self._prefix_cache[root] = INSTRUCTION + "".join(
                f"Task {k + 1}:\n{header_text(p, objects)}{plan_text(p.steps)}\n\n" for k, p in enumerate(demos)
            ) + f"Task {self.n_demos + 1}:\n"
        return self._prefix_cache[root]

    @property
    def shared_prefix(self) -> str:
        """The prefix for the data root of the last load / eval_items (the
        Task interface's `shared_prefix` takes no root; this one needs it)."""
        root = self.__dict__.get("_root")
        if root is None:
            raise RuntimeError("VirtualHome.shared_prefix: call load(data) or eval_items(data) first (it needs the data root)")
        return self.prefix_text(root)

    def _use_root(self, data) -> Path:
        root = task_root(data, self)
        self.__dict__["_root"] = root  # not a dataclass field: not part of the task's config
        return root

    def load(self, data) -> TaskData:
        root = self._use_root(data)
        actions, objects = self.toolkens(root)
        split = self.split(root)
        to_example = lambda p: PlanExample(p.id, header_text(p, objects), p.steps)  # noqa: E731
        train = [to_example(p) for p in split["train"]]
        val = [to_example(p) for p in split["val"]]
        docs = {n: t.doc for n, t in self.build_tools(root).items()}
        return TaskData(self.toolken_names(root), docs, limit(train, data.limit_train), limit(val, data.limit_eval),
                        notes=split["notes"])

    def toolken_names(self, root: Path) -> list[str]:
        actions, objects = self.toolkens(root)
        return [*actions, *objects, END]

    def encode(self, tokenizer, examples: list[PlanExample], tool_index: dict[str, int], max_length: int) -> list[Encoded]:
        """Token ids of header + plan, built piece by piece (as the decoder
        appends them); the label at the position before each action / object /
        [END] piece is its toolken, every other position is IGNORE."""
        def ids_of(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        out = []
        for ex in examples:
            ids = list(ids_of(ex.header))
            labels = [IGNORE] * len(ids)
            lost = 0
            for piece, tool in self._pieces(ex.steps):
                piece_ids = ids_of(piece)
                if tool is not None:
                    lost += len(ids) - 1 >= max_length  # its choice point is cut off
                    labels[-1] = tool_index[tool]
                ids += piece_ids
                labels += [IGNORE] * len(piece_ids)
            ids, labels = ids[:max_length], labels[:max_length]
            next_token = np.full(len(ids), IGNORE, dtype=np.int64)  # no vocabulary targets: every step is a toolken
            out.append(Encoded(np.asarray(ids, dtype=np.int64), next_token, np.asarray(labels, dtype=np.int64), lost))
        return out

    def _pieces(self, steps):
        """(text, toolken chosen right before it, or None)."""
        for s in steps:
            yield self.action_text(s.action), s.action
            for o in s.objects:
                yield self.object_text(o), o
            yield LINE_END, None
        yield self.action_text(END), END

    # ------------------------------------------------- text methods (icl, lora)
    def text_prompt(self, header: str, root: Path, method: str) -> str:
        """icl: the instruction, every action toolken's doc, the demos of the
        shared prefix, then the task; lora: the instruction and the task only
        (what it is trained on). The objects are listed in each task's header."""
        if method == "lora":
            return f"{INSTRUCTION}Task 1:\n{header}"
        actions, _ = self.toolkens(root)
        docs = "".join(f"{action_doc(a)}\n" for a in actions)
        return f"{INSTRUCTION}Actions:\n{docs}\n{self.prefix_text(root)[len(INSTRUCTION):]}{header}"

    def parse_text(self, text: str) -> dict:
        """A written plan → the prediction a toolken plan gives: steps up to
        `[END]`; a line that is not `[ACTION] <object> …` ends the plan
        (finish "unparsed"), as does the step limit or the token budget."""
        plan, finish = [], "length"
        for line in text.split(LINE_END):
            line = line.strip()
            if line == f"[{END}]":
                finish = "end"
                break
            m = _PLAN_LINE.match(line)
            if m is None:
                finish = "unparsed"
                break
            if len(plan) == self.max_steps:
                finish = "step_limit"
                break
            plan.append([m.group(1), _PLAN_OBJECT.findall(m.group(2))])
        return {"plan": plan, "finish": finish, "text": text}

    def text_examples(self, examples: list[PlanExample], root: Path) -> list[TextExample]:
        return [TextExample(ex.id, self.text_prompt(ex.header, root, "lora"), plan_text(ex.steps)) for ex in examples]

    # ------------------------------------------------- plan interface (infer/plan.py)
    @staticmethod
    def action_text(action: str) -> str:
        return f"[{action}]"

    @staticmethod
    def object_text(obj: str) -> str:
        return f" <{obj}>"

    def arity(self, action: str) -> int:
        return 0 if action == END else known_actions()[action]

    def example_text(self, item: EvalItem) -> str:
        return item.question

    def episode(self, item: EvalItem):
        from toolken_plus.tasks.virtualhome_sim import Episode

        return Episode(load_graphs(item.meta["graph_file"])[0])

    def can_run(self, episode, action: str, objects: tuple[str, ...]) -> bool:
        return episode.can_run(Step(action, objects))

    def apply(self, episode, action: str, objects: tuple[str, ...]) -> None:
        result = episode.run(Step(action, objects))
        if not result.ok:  # grounded decoding chose only steps that run
            raise RuntimeError(f"grounded step {result.step.text} did not run: {result.message}")

    def scene_objects(self, item: EvalItem) -> set[str]:
        return set(scene_of(item.meta["graph_file"]).classes)

    def gold_plan(self, item: EvalItem, with_ids: bool = True) -> dict:
        """The gold plan; without its node ids, scoring resolves each object to
        an instance the way it does for a model's plan (a plan written in
        toolkens names classes only), so that row is the ceiling of toolkens."""
        plan = {"plan": [[s.action, list(s.objects)] for s in item.label], "finish": "gold"}
        if with_ids:
            plan["ids"] = [list(i) for i in item.meta["gold_ids"]]
        return plan

    # ------------------------------------------------------------- tools
    def build_tools(self, root: Path) -> dict[str, Tool]:
        """Doc-only tools: the plan is executed by the simulator, not by them."""
        actions, objects = self.toolkens(root)
        tools = {a: Tool(a, None, action_doc(a)) for a in actions}
        tools.update({o: Tool(o, None, object_doc(o, self._object_facts(root).get(o))) for o in objects})
        tools[END] = Tool(END, None, "[END]: ends the plan; choose it once the goal of the task is reached.")
        return tools

    def _object_facts(self, root: Path) -> dict[str, tuple[str, tuple]]:
        """class → (category, properties) from the scenes of the programs (fixed by the data)."""
        facts: dict[str, tuple[str, tuple]] = {}
        _, objects = self.toolkens(root)
        split = self.split(root)
        for p in sorted([*split["train"], *split["val"], *split["test"]], key=lambda p: p.id):
            for cls, category, props in scene_of(p.graph_file).facts:
                if cls in objects:
                    facts.setdefault(cls, (category, props))
        return facts

    # -------------------------------------------------------- evaluation
    def eval_items(self, data) -> list[EvalItem]:
        root = self._use_root(data)
        if data.eval_file:
            raise ValueError("task=virtualhome evaluates its own split (data.eval=test|val), not data.eval_file")
        which = data.eval or self.eval_sets[0]
        if which not in self.eval_sets:
            raise ValueError(f"data.eval={which!r}: expected one of {list(self.eval_sets)}")
        _, objects = self.toolkens(root)
        programs = self.split(root)[which]
        return [EvalItem(p.id, header_text(p, objects), list(p.steps),
                         meta={"title": p.title, "graph_file": p.graph_file, "gold_ids": [list(i) for i in p.ids]})
                for p in limit(programs, data.limit_eval)]

    def score(self, item: EvalItem, res: dict) -> dict:
        init, final = load_graphs(item.meta["graph_file"])
        plan = [Step(a, tuple(objs)) for a, objs in res["plan"]]
        ids = [tuple(i) for i in res["ids"]] if res.get("ids") else None
        outcome: PlanOutcome = execute_plan(init, plan, GoalChanges.between(init, final), ids=ids)
        return {
            "id": item.id,
            "title": item.meta["title"],
            "plan": [s.text for s in plan],
            "gold": [s.text for s in item.label],
            "finish": res["finish"],
            "executable": outcome.executable,
            "success": outcome.success,
            "lcs": lcs_ratio(plan, item.label),
            "failure": outcome.failure,
            "failed_step": next((k for k, s in enumerate(outcome.steps) if not s["ok"]), None),
            "steps": outcome.steps,  # simulator verdict per step run (a plan stops at its first failure)
            "unmet": outcome.unmet,
            "choices": res.get("choices", []),
            # text methods (icl, lora): what the model wrote, and whether the prompt was cut to fit
            **{k: res[k] for k in ("text", "prompt_cut") if k in res},
        }

    def metrics(self, rows: list[dict]) -> dict:
        n = len(rows)
        mean = lambda key: sum(float(r[key]) for r in rows) / n if n else 0.0  # noqa: E731
        return {
            "n": n,
            "executability": mean("executable"),
            "success_rate": mean("success"),
            "lcs": mean("lcs"),
            "failures": dict(Counter(r["failure"] for r in rows if r["failure"])),
            "finish": dict(Counter(r["finish"] for r in rows)),
            "mean_plan_steps": sum(len(r["plan"]) for r in rows) / n if n else 0.0,
            "mean_gold_steps": sum(len(r["gold"]) for r in rows) / n if n else 0.0,
            "rerank_changed_step": sum(c.get("changed", False) for r in rows for c in r["choices"]),
            "rerank_rejects_ignored": sum(c.get("reject_ignored", False) for r in rows for c in r["choices"]),
        }

    def report(self, metrics: dict, rows: list[dict], run_dir: Path) -> str:
        grounded = " grounded" if metrics.get("grounded") else ""
        lines = [f"# VirtualHome {metrics.get('eval', 'test')}: method={metrics.get('method', 'toolkens')}, "
                 f"setting={metrics.get('setting')}, reranker={metrics.get('reranker', 'none')}{grounded}", ""]
        for key in ("n", "executability", "success_rate", "lcs", "mean_plan_steps", "mean_gold_steps", "seconds"):
            v = metrics.get(key)
            lines.append(f"- {key}: {v:.3f}" if isinstance(v, float) else f"- {key}: {v}")
        lines += ["", "Failures (first failing step of each plan):", ""]
        lines += [f"- {k}: {v}" for k, v in sorted(metrics["failures"].items(), key=lambda kv: -kv[1])] or ["- none"]
        messages = Counter(r["steps"][r["failed_step"]]["message"].split(" when executing")[0]
                           for r in rows if r["failed_step"] is not None)
        if messages:
            lines += ["", "Most frequent simulator messages:", ""]
            lines += [f"- {m}: {c}" for m, c in messages.most_common(8)]
        return "\n".join(lines) + "\n"

    def headline(self, m: dict) -> str:
        return f"executability {m['executability']:.3f} success_rate {m['success_rate']:.3f} lcs {m['lcs']:.3f} (n={m['n']})"


def object_doc(obj: str, facts: tuple[str, tuple] | None) -> str:
    if facts is None:
        return f"<{obj}>: an object of the household scene (absent from these programs' scenes)."
    category, props = facts
    if category == "Rooms":
        return f"<{obj}>: a room of the home; walk or run to it to be inside it."
    what = f"<{obj}>: {category.lower() or 'an object'} in the home"
    return what + (f"; properties: {', '.join(p.lower() for p in props)}." if props else ".")

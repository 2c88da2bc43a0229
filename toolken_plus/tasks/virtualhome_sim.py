"""A thin adapter over the VirtualHome evolving-graph simulator (the PyPI
package `virtualhome-eval`, MIT): plan steps ↔ script lines, scene-graph node
ids, step-by-step execution, and every simulator failure turned into a
recorded reason.

A plan written with toolkens names object *classes* (`[GRAB] <mug>`); the
simulator runs *instances* (`[GRAB] <mug> (1012)`). `Episode.run` picks the
instance: among the scene's nodes of that class, newest first (objects a
program adds to the scene have ids >= 1000), the first with which the step
runs in the current state; if none runs, the newest, whose failure is
recorded. Every setting (gold, toolkens, rerankers, grounded or not) goes
through this same resolution, so they are compared on equal terms.

The simulator's own quirks handled here: it raises (AttributeError,
TypeError, ScriptParseException) instead of returning False on malformed
input; its ExecutionInfo accumulates messages across calls (a fresh one per
attempt); with instance ids it never checks that the id's class is the class
written in the line (the adapter chooses ids itself, from the class).
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, field

# The simulator is imported lazily (0.3 s, numpy/networkx/scipy): only
# VirtualHome runs pay for it.

CHARACTER_ID = 65  # the character's node in TrimmedTestScene1
IGNORED_RELATIONS = frozenset({"CLOSE"})  # proximity: which of several paths the character took, not the goal


@functools.lru_cache(maxsize=1)
def sim():
    """The simulator's modules (import once)."""
    from virtualhome_eval.simulation.evolving_graph import environment, execution, scripts, utils

    # It logs every refused step at INFO; those are recorded with the plan instead.
    logging.getLogger(execution.__name__).setLevel(logging.WARNING)
    return environment, execution, scripts, utils.load_name_equivalence()


def known_actions() -> dict[str, int]:
    """Every action the simulator knows, with its number of objects."""
    _, _, scripts, _ = sim()
    return {a.name: a.value[1] for a in scripts.Action}


@dataclass(frozen=True)
class Step:
    """One plan step: an action and the object classes it acts on (ids are
    chosen when it runs)."""

    action: str  # e.g. "GRAB"
    objects: tuple[str, ...] = ()  # class names, e.g. ("mug",)

    @property
    def text(self) -> str:
        return f"[{self.action}]" + "".join(f" <{o}>" for o in self.objects)

    def script_line(self, ids: tuple[int, ...]) -> str:
        return f"[{self.action}]" + "".join(f" <{o}> ({i})" for o, i in zip(self.objects, ids))


_STEP = re.compile(r"^\[(\w+)\]((?:\s*<[^>]+>\s*\(\d+(?:\.\d+)?\))*)\s*$")
_ARG = re.compile(r"<([^>]+)>\s*\((\d+)(?:\.(\d+))?\)")


def parse_program_line(line: str) -> tuple[Step, tuple[int, ...]]:
    """`[WALK] <computer> (1.417)` → (Step("WALK", ("computer",)), (417,)):
    in the dataset's `(a.b)`, b is the scene-graph node id (a the script's
    own instance number)."""
    m = _STEP.match(line.strip())
    if not m:
        raise ValueError(f"not a program step: {line!r}")
    args = [(cls, int(b) if b is not None else int(a)) for cls, a, b in _ARG.findall(m.group(2))]
    return Step(m.group(1).upper(), tuple(c for c, _ in args)), tuple(i for _, i in args)


@dataclass
class StepResult:
    step: Step
    ok: bool
    ids: tuple[int, ...] = ()  # the instances it ran on (or was tried on)
    reason: str | None = None  # failure kind: see FAILURE_KINDS
    message: str | None = None  # the simulator's words

    def record(self) -> dict:
        return {"step": self.step.text, "ok": self.ok, "ids": list(self.ids), "reason": self.reason,
                "message": self.message}


FAILURE_KINDS = ("unknown_action", "wrong_arity", "object_not_in_scene", "precondition", "simulator_error")


class Episode:
    """One task's simulation, from its initial scene graph, one step at a time.

    After a failed step the episode is over (`failed`): a plan is executable
    only if every step runs."""

    def __init__(self, init_graph: dict):
        environment, execution, _, name_eq = sim()
        self.graph = environment.EnvironmentGraph(init_graph)
        self.state = environment.EnvironmentState(self.graph, name_eq, instance_selection=True)
        self._executor = execution.ScriptExecutor(self.graph, name_eq)
        self._execution = execution
        by_class: dict[str, list[int]] = {}
        for node in init_graph["nodes"]:
            by_class.setdefault(node["class_name"], []).append(node["id"])
        # newest first: a program's own objects (ids >= 1000) before the base scene's
        self.instances = {c: sorted(ids, reverse=True) for c, ids in by_class.items()}
        self.results: list[StepResult] = []
        self.failed = False

    @property
    def classes(self) -> set[str]:
        return set(self.instances)

    # ---------------------------------------------------------------- checks
    def _script(self, step: Step, ids: tuple[int, ...]):
        _, _, scripts, _ = sim()
        return scripts.Script([scripts.parse_script_line(step.script_line(ids), 0)])

    def _static_failure(self, step: Step) -> StepResult | None:
        arity = known_actions().get(step.action)
        if arity is None:
            return StepResult(step, False, reason="unknown_action", message=f"the simulator has no action {step.action}")
        if arity != len(step.objects):
            return StepResult(step, False, reason="wrong_arity",
                              message=f"{step.action} takes {arity} object(s), got {len(step.objects)}")
        missing = [o for o in step.objects if o not in self.instances]
        if missing:
            return StepResult(step, False, reason="object_not_in_scene", message=f"no {', '.join(missing)} in this scene")
        return None

    def _candidates(self, step: Step):
        """Instance tuples to try, preferred first (one object: newest first;
        two: every pair, in that order)."""
        pools = [self.instances[o] for o in step.objects]
        if not pools:
            yield ()
            return
        if len(pools) == 1:
            for i in pools[0]:
                yield (i,)
            return
        for i in pools[0]:
            for j in pools[1]:
                yield (i, j)

    def _runs(self, step: Step, ids: tuple[int, ...]) -> bool:
        self._executor.info = self._execution.ExecutionInfo()  # it accumulates messages otherwise
        try:
            return bool(self._executor.check_one_step(self._script(step, ids), self.state))
        except Exception:  # the simulator raises on some inputs instead of answering False
            return False

    def runnable_ids(self, step: Step) -> tuple[int, ...] | None:
        """The instances the step would run on now, or None if it cannot run."""
        if self.failed or self._static_failure(step) is not None:
            return None
        return next((ids for ids in self._candidates(step) if self._runs(step, ids)), None)

    def can_run(self, step: Step) -> bool:
        return self.runnable_ids(step) is not None

    # --------------------------------------------------------------- running
    def run(self, step: Step, ids: tuple[int, ...] | None = None) -> StepResult:
        """Run one step (on `ids` if given, else on the instances chosen as in
        the module docstring); a failure ends the episode."""
        if self.failed:
            raise RuntimeError("the episode already failed: a plan stops at its first failing step")
        result = self._run(step, ids)
        self.results.append(result)
        self.failed = not result.ok
        return result

    def _run(self, step: Step, ids: tuple[int, ...] | None) -> StepResult:
        if ids is None:
            static = self._static_failure(step)
            if static is not None:
                return static
            ids = self.runnable_ids(step) or next(self._candidates(step))
        self._executor.info = self._execution.ExecutionInfo()
        try:
            ok, state = self._executor.execute_one_step(self._script(step, ids), self.state)
        except Exception as exc:  # malformed input the simulator did not expect
            return StepResult(step, False, ids, "simulator_error", f"{type(exc).__name__}: {exc}")
        if not ok:
            message = self._executor.info.get_error_string() or "the simulator refused the step"
            return StepResult(step, False, ids, "precondition", message)
        self.state = state
        return StepResult(step, True, ids)

    def graph_dict(self) -> dict:
        return self.state.to_dict()


# ------------------------------------------------------------------ success
@dataclass(frozen=True)
class GoalChanges:
    """What a gold program changes in the scene: node states turned on and
    off, and relations added and removed (CLOSE ignored, see IGNORED_RELATIONS)."""

    states_added: frozenset = frozenset()  # (node id, STATE)
    states_removed: frozenset = frozenset()
    edges_added: frozenset = frozenset()  # (from id, RELATION, to id)
    edges_removed: frozenset = frozenset()

    @classmethod
    def between(cls, init_graph: dict, final_graph: dict) -> "GoalChanges":
        s0, s1 = _node_states(init_graph), _node_states(final_graph)
        e0, e1 = _edges(init_graph), _edges(final_graph)
        return cls(frozenset(s1 - s0), frozenset(s0 - s1), frozenset(e1 - e0), frozenset(e0 - e1))

    def unmet(self, graph: dict) -> list[str]:
        """The changes `graph` does not show (empty: the goal is reached)."""
        states, edges = _node_states(graph), _edges(graph)
        out = [f"state {s} of node {n} not set" for n, s in sorted(self.states_added - states)]
        out += [f"state {s} of node {n} still set" for n, s in sorted(self.states_removed & states)]
        out += [f"{a} {r} {b} missing" for a, r, b in sorted(self.edges_added - edges)]
        out += [f"{a} {r} {b} still there" for a, r, b in sorted(self.edges_removed & edges)]
        return out

    def __len__(self) -> int:
        return len(self.states_added) + len(self.states_removed) + len(self.edges_added) + len(self.edges_removed)


def _node_states(graph: dict) -> set[tuple[int, str]]:
    return {(n["id"], str(s).upper()) for n in graph["nodes"] for s in n.get("states", ())}


def _edges(graph: dict) -> set[tuple[int, str, int]]:
    return {(e["from_id"], str(e["relation_type"]).upper(), e["to_id"]) for e in graph["edges"]
            if str(e["relation_type"]).upper() not in IGNORED_RELATIONS}


@dataclass
class PlanOutcome:
    """A plan executed from the initial graph, and judged."""

    executable: bool
    success: bool  # executable and every gold change holds in the final graph
    steps: list[dict] = field(default_factory=list)  # StepResult.record() per step run
    failure: str | None = None  # the first failing step's reason
    unmet: list[str] = field(default_factory=list)


def execute_plan(init_graph: dict, steps: list[Step], goal: GoalChanges, ids: list[tuple] | None = None) -> PlanOutcome:
    """Run `steps` (on `ids` if given) from `init_graph` until one fails; judge against `goal`."""
    episode = Episode(init_graph)
    for k, step in enumerate(steps):
        if not episode.run(step, ids[k] if ids is not None else None).ok:
            break
    return judge(episode, goal)


def judge(episode: Episode, goal: GoalChanges) -> PlanOutcome:
    steps = [r.record() for r in episode.results]
    if episode.failed:
        return PlanOutcome(False, False, steps, episode.results[-1].reason)
    unmet = goal.unmet(episode.graph_dict())
    return PlanOutcome(True, not unmet, steps, None, unmet[:10])



# -------------------------------------------------------------- action docs
# What each action needs before it runs, in our words, read from the
# simulator's executors (execution.py: each executor's checks and the
# failures it reports); the required object properties come from the
# simulator's Action enum (action_doc adds them).
PRECONDITIONS = {
    "WALK": "walks to the object or room; the character must not be sitting or lying. Afterwards it is close to the object (inside the room)",
    "RUN": "like WALK, faster: goes to the object or room; not while sitting or lying",
    "FIND": "finds the object, walking to it if it is not close; the object must be in the scene",
    "TURNTO": "turns the character to face the object",
    "LOOKAT": "looks at the object; the character must face it (TURNTO first)",
    "POINTAT": "points at the object; the character must face it (TURNTO first)",
    "WATCH": "watches the object (a television, …); it must be lookable, faced, in the same room, not inside something closed",
    "GRAB": "takes the object in a free hand; the character must be close to it, it must not be held already nor inside something closed",
    "PUTOBJBACK": "puts a held object back where it was taken from; the object must be held",
    "DROP": "drops a held object; the object must be held",
    "OPEN": "opens the object; close to it, a free hand, the object closed and not switched on",
    "CLOSE": "closes the object; close to it, a free hand, the object open",
    "SWITCHON": "switches the object on; close to it, the object off and plugged in",
    "SWITCHOFF": "switches the object off; close to it, the object on",
    "PLUGIN": "plugs the object in; close to it, a free hand, the object unplugged",
    "SIT": "sits on the object; close to it, not already sitting, the object not covered with things",
    "LIE": "lies on the object; close to it, not already lying, the object not covered with things",
    "TYPE": "types on the object (a keyboard, …); close to it",
    "TOUCH": "touches the object; close to it, not inside something closed",
    "READ": "reads the object; it must be held",
    "DRINK": "drinks from the object; it must be held",
    "PUSH": "pushes the object; close to it, a free hand, not inside something closed",
    "PULL": "pulls the object; close to it, a free hand, not inside something closed",
    "WASH": "washes the object; close to it",
    "RINSE": "rinses the object; close to it",
}


def action_doc(action: str) -> str:
    """The documentation a reranker reads for an action toolken."""
    _, _, scripts, _ = sim()
    try:
        value = scripts.Action[action].value
    except KeyError:
        return f"[{action}]: an action the simulator does not know."
    human, arity = value[0], value[1]
    props = [p for group in (value[2] if len(value) > 2 else []) for p in group]
    needs = f" The object must be {' or '.join(p.lower().replace('_', ' ') for p in props)}." if props else ""
    what = PRECONDITIONS.get(action, human.lower())
    return f"[{action}]" + " <object>" * arity + f": {human}: {what}.{needs}"

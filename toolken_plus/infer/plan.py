"""Prediction for plan tasks (VirtualHome): write each item's plan one
toolken choice at a time, many items together.

A step is an action toolken (or the end toolken), then one object toolken
per object the action takes. At each choice the task says what may be
chosen: actions (and end) at the start of a step; at an object slot, the
objects present in the item's scene. Stage 1 scores the allowed toolkens
(W_τ h at the row's last position); the reranker, if any, re-ranks their
top-k. Reject has no meaning inside a plan: when a reranker puts it first,
its best tool is taken and the record says so (`reject_ignored`).

Grounded decoding (`agent.grounded=true`) also asks the simulator: an
action is allowed only if some allowed object makes the step run in the
current state, an object only if the step runs with it; the chosen step is
then run, so the state follows the plan. Actions are checked lazily, best
stage-1 score first, until k are allowed, so a step costs a few dozen
simulator checks rather than actions × objects.

Each chosen toolken's text (`[WALK]`, ` <kitchen>`, a line break at the end
of a step) is appended piece by piece, exactly as training tokenized it
(tasks/virtualhome.py), with one batched forward per round; the task's
few-shot prefix is computed once and shared by every row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from toolken_plus.backbone import Backbone
from toolken_plus.data.encoding import context_start_ids
from toolken_plus.kv import make_prefix, prefill_rows
from toolken_plus.rerank.base import RerankContext, top_candidates
from toolken_plus.tasks.base import EvalItem, PlanTask

log = logging.getLogger(__name__)


@dataclass
class PlanRow:
    """One item being planned."""

    index: int  # in the items list
    item: EvalItem
    text: str  # header + plan so far (the embedding reranker reads it)
    allowed_objects: set
    episode: object = None  # the simulator state, grounded decoding only
    layers: list | None = None
    n: int = 0
    hidden: torch.Tensor | None = None
    plan: list = field(default_factory=list)  # [[action, [objects]]]
    action: str | None = None  # the step being written
    objects: list = field(default_factory=list)
    choices: list = field(default_factory=list)
    finish: str | None = None


class PlanPredictor:
    def __init__(self, backbone: Backbone, head, reranker, task: PlanTask, prefix: str, *, batch_size: int = 16,
                 grounded: bool = False, max_steps: int = 30, progress: bool = True):
        self.backbone, self.head, self.reranker, self.task = backbone, head, reranker, task
        self.batch_size, self.grounded, self.max_steps, self.progress = batch_size, grounded, max_steps, progress
        self.names = head.tool_names
        self.index = {n: i for i, n in enumerate(self.names)}
        self.end = task.end_toolken
        self.actions = [n for n in self.names if n != self.end and self._is_action(n)]
        self.objects = [n for n in self.names if n != self.end and not self._is_action(n)]
        self.bias = float(head.logit_bias)
        tok = backbone.tokenizer
        self._ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        self._prefix = make_prefix(backbone, context_start_ids(tok, prefix) if prefix else [])  # as training's (recipe.py)

    def _is_action(self, name: str) -> bool:
        try:
            self.task.arity(name)
            return True
        except KeyError:
            return False

    # ------------------------------------------------------------ choices
    def _runnable(self, row: PlanRow, action: str, objects: list[str]) -> list[str]:
        out = []
        for o in objects:
            if self.task.can_run(row.episode, action, (o,)):
                out.append(o)
        return out

    def _allowed(self, row: PlanRow, scores: torch.Tensor) -> list[str]:
        """The toolkens that may be chosen next, for this row."""
        if row.action is None:  # the start of a step
            if len(row.plan) >= self.max_steps:
                return []
            if not self.grounded:
                return [*self.actions, self.end]
            allowed, k = [self.end], self.reranker.k
            for i in torch.argsort(scores, descending=True).tolist():  # lazily, best first
                name = self.names[i]
                if name in self.actions and self.task.arity(name) <= 1:
                    objects = [o for o in self.objects if o in row.allowed_objects]
                    if self.task.arity(name) == 0 or self._runnable(row, name, objects):
                        allowed.append(name)
                        if len(allowed) > k:
                            break
            return allowed
        objects = [o for o in self.objects if o in row.allowed_objects]
        if self.grounded and self.task.arity(row.action) == 1:
            return self._runnable(row, row.action, objects)
        return objects

    def _decide(self, rows: list[PlanRow]) -> list[str | None]:
        hidden = torch.stack([r.hidden for r in rows])
        scores = self.head(hidden)
        contexts, cands, allowed_sets = [], [], []
        for r, s in zip(rows, scores):
            allowed = self._allowed(r, s)
            mask = torch.full_like(s, float("-inf"))
            mask[[self.index[a] for a in allowed]] = 0.0
            masked = s + mask
            c = [i for i in top_candidates(masked, self.reranker.k) if masked[i] > float("-inf")] if allowed else []
            contexts.append(RerankContext(masked, text=r.text, layers=r.layers, n=r.n, prefix=self._prefix))
            cands.append(c)
            allowed_sets.append(allowed)
        todo = [j for j, c in enumerate(cands) if c]
        ranked = dict(zip(todo, self.reranker.rank_batch([contexts[j] for j in todo], [cands[j] for j in todo]))) if todo else {}
        out: list[str | None] = []
        for j, r in enumerate(rows):
            if j not in ranked:
                out.append(None)
                continue
            best = next(x for x in ranked[j] if not x.is_reject)
            if self.reranker.reranks:
                r.choices.append({"candidates": [self.names[i] for i in cands[j]], "chosen": best.tool,
                                  "changed": best.index != cands[j][0], "reject_ignored": ranked[j][0].is_reject})
            out.append(best.tool)
        return out

    # --------------------------------------------------------------- loop
    @torch.no_grad()
    def predict(self, items: list[EvalItem], on_result=None) -> list[dict]:
        out: list[dict] = [None] * len(items)  # type: ignore[list-item]
        bar = tqdm(total=len(items), desc="plans", disable=not self.progress, unit="plan")
        for s in range(0, len(items), self.batch_size):
            rows = [self._start(s + j, it) for j, it in enumerate(items[s : s + self.batch_size])]
            self._extend(rows, [self._ids(r.text) for r in rows])
            active = rows
            while active:
                chosen = self._decide(active)
                extend, pieces = [], []
                for r, name in zip(active, chosen):
                    piece = self._take(r, name)
                    if piece is None:
                        result = {"plan": r.plan, "finish": r.finish, "choices": r.choices}
                        out[r.index] = result
                        bar.update(1)
                        if on_result is not None:
                            on_result(r.index, result)
                    else:
                        extend.append(r)
                        pieces.append(piece)
                if extend:
                    self._extend(extend, pieces)
                active = extend
        bar.close()
        return out

    def _start(self, index: int, item: EvalItem) -> PlanRow:
        episode = self.task.episode(item) if self.grounded else None
        return PlanRow(index, item, self.task.example_text(item), self.task.scene_objects(item), episode)

    def _take(self, r: PlanRow, name: str | None) -> list[int] | None:
        """Apply a choice to the row; the token ids to append, or None when its plan is over."""
        if name is None:
            r.finish = "step_limit" if r.action is None and len(r.plan) >= self.max_steps else "no_allowed_choice"
            return None
        if r.action is None:
            if name == self.end:
                r.finish = "end"
                return None
            r.action, r.objects = name, []
            text = self.task.action_text(name)
        else:
            r.objects.append(name)
            text = self.task.object_text(name)
        ids = self._ids(text)
        if len(r.objects) == self.task.arity(r.action):  # the step is complete
            r.plan.append([r.action, list(r.objects)])
            if self.grounded:
                self.task.apply(r.episode, r.action, tuple(r.objects))
            ids = ids + self._ids("\n")
            text += "\n"
            r.action, r.objects = None, []
        r.text += text
        return ids

    def _extend(self, rows: list[PlanRow], pieces: list[list[int]]) -> None:
        grown = prefill_rows(self.backbone, [(r.layers, r.n, p, self._prefix) for r, p in zip(rows, pieces)])
        for r, (layers, n, hidden) in zip(rows, grown):
            r.layers, r.n, r.hidden = layers, n, hidden


class GoldPlans:
    """agent.setting=gold: the gold plans with their gold node ids, through the
    same scoring path (its executability and success must be 1.0);
    gold_classes: the same plans by class only (with_ids=False), instances
    resolved as for a model's plan."""

    def __init__(self, task: PlanTask, with_ids: bool = True):
        self.task = task
        self.with_ids = with_ids

    def predict(self, items: list[EvalItem], on_result=None) -> list[dict]:
        out = []
        for i, item in enumerate(items):
            result = self.task.gold_plan(item, with_ids=self.with_ids)
            out.append(result)
            if on_result is not None:
                on_result(i, result)
        return out

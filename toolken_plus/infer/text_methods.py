"""Prediction for the text methods (method=icl, method=lora) on choice and
plan tasks: the model writes its answer as text (a tool's name; plan lines),
the task parses it into the same prediction a toolken predictor gives, and
the task scores it the same way. (Text tasks use the agent loop with
`text_calls`: infer/policy.py.)

Decoding is greedy, batched with left padding (transformers' generate), and
stops at the task's stop strings or `max_new_tokens`. A prompt longer than
the model's context keeps its end (the task) and loses its beginning; the row
records it.
"""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm

from toolken_plus.backbone import Backbone
from toolken_plus.data.encoding import leading_special_ids
from toolken_plus.tasks.base import EvalItem

log = logging.getLogger(__name__)


class TextGenerator:
    """Greedy continuations of many prompts, a batch at a time (longest first,
    so each batch pads little)."""

    def __init__(self, backbone: Backbone, *, max_new_tokens: int, stop: tuple[str, ...] = (), batch_size: int = 8,
                 progress: bool = True, desc: str = "generate"):
        self.backbone, self.max_new_tokens, self.stop = backbone, max_new_tokens, stop
        self.batch_size, self.progress, self.desc = max(1, batch_size), progress, desc
        self.max_context = getattr(backbone.model.config, "max_position_embeddings", None)

    def _ids(self, prompt: str) -> tuple[list[int], bool]:
        tok = self.backbone.tokenizer
        lead = leading_special_ids(tok)  # the prompt is the whole context: BOS first, if the tokenizer adds one
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        if self.max_context is not None and len(lead) + len(ids) + self.max_new_tokens > self.max_context:
            return lead + ids[len(lead) + len(ids) + self.max_new_tokens - self.max_context:], True
        return lead + ids, False

    @torch.no_grad()
    def generate(self, prompts: list[str], on_batch=None) -> list[tuple[str, bool]]:
        """(continuation cut at the first stop string, prompt was cut) per prompt;
        `on_batch(indices, outputs)` after each batch."""
        tok, model = self.backbone.tokenizer, self.backbone.model
        encoded = [self._ids(p) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i][0]))
        out: list[tuple[str, bool] | None] = [None] * len(prompts)
        bar = tqdm(total=len(prompts), desc=self.desc, disable=not self.progress, unit="item")
        for s in range(0, len(order), self.batch_size):
            chunk = order[s : s + self.batch_size]
            width = max(len(encoded[i][0]) for i in chunk)
            pad = tok.pad_token_id
            device = model.get_input_embeddings().weight.device  # device=… / device_map: the first layer's
            input_ids = torch.tensor([[pad] * (width - len(encoded[i][0])) + encoded[i][0] for i in chunk], device=device)
            mask = torch.tensor([[0] * (width - len(encoded[i][0])) + [1] * len(encoded[i][0]) for i in chunk], device=device)
            kwargs = dict(stop_strings=list(self.stop), tokenizer=tok) if self.stop else {}
            gen = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=self.max_new_tokens,
                                 do_sample=False, pad_token_id=pad, **kwargs)
            for j, i in enumerate(chunk):
                text = tok.decode(gen[j, width:], skip_special_tokens=True)
                out[i] = (self._cut(text), encoded[i][1])
            if on_batch is not None:
                on_batch(chunk, [out[i] for i in chunk])
            bar.update(len(chunk))
        bar.close()
        return out

    def _cut(self, text: str) -> str:
        """The text up to and including the first stop string."""
        ends = [text.find(s) + len(s) for s in self.stop if s in text]
        return text[: min(ends)] if ends else text


class DocRetriever:
    """The top-m tool docs for a query by sentence-embedding similarity: the
    in-context baseline's answer to more docs than the context holds."""

    def __init__(self, docs: dict[str, str], m: int, embedder=None):
        from toolken_plus.rerank.embedder import SentenceEmbedder

        self.names = list(docs)
        self.docs = docs
        self.m = m
        self.embedder = embedder or SentenceEmbedder()
        self.doc_emb = self.embedder.encode([f"{n}: {d}" for n, d in docs.items()])

    def __call__(self, queries: list[str]) -> list[dict[str, str]]:
        """The listed docs of each query; all queries are embedded in one call."""
        if self.m <= 0 or self.m >= len(self.names):
            return [dict(self.docs) for _ in queries]
        sims = self.embedder.encode(list(queries)) @ self.doc_emb.T
        return [{self.names[i]: self.docs[self.names[i]] for i in row} for row in torch.topk(sims, self.m, dim=1).indices.tolist()]


class ChoiceTextPredictor:
    """Choice tasks (MetaTool): the model names a tool (or None) in text."""

    def __init__(self, backbone: Backbone, task, method, *, docs: dict[str, str], demos: list, retriever=None,
                 batch_size: int = 8, progress: bool = True):
        self.task, self.method, self.docs, self.demos = task, method, docs, demos
        self.retriever = retriever
        self.generator = TextGenerator(backbone, max_new_tokens=12, stop=("\n",), batch_size=batch_size,
                                       progress=progress, desc="choices")

    def predict(self, items: list[EvalItem], on_result=None) -> list[dict]:
        listed = self._listed([it.question for it in items])
        prompts = [self.task.text_prompt(it.question, self.method.name, docs, self.demos) for it, docs in zip(items, listed)]
        results: list[dict | None] = [None] * len(items)

        def done(indices, outputs):
            for i, (text, cut) in zip(indices, outputs):
                tool, parsed = self.task.parse_text(text, self.docs)
                results[i] = {"triggered": tool is not None, "stage1_topk": [tool] if tool else [], "rerank": None,
                              "selected": tool, "called": tool, "text": text, "parsed": parsed, "prompt_cut": cut,
                              **({"retrieved": list(listed[i])} if listed[i] is not None and self.retriever else {})}
                if on_result is not None:
                    on_result(i, results[i])

        self.generator.generate(prompts, on_batch=done)
        return results

    def _listed(self, queries: list[str]) -> list[dict[str, str] | None]:
        if self.method.name != "icl":
            return [None] * len(queries)
        return self.retriever(queries) if self.retriever is not None else [self.docs] * len(queries)


class PlanTextPredictor:
    """Plan tasks (VirtualHome): the model writes the plan's lines in text."""

    def __init__(self, backbone: Backbone, task, method, root, *, batch_size: int = 8, progress: bool = True):
        self.task, self.method, self.root = task, method, root
        # a step is ~8 tokens; room for the step limit and [END]
        self.generator = TextGenerator(backbone, max_new_tokens=10 * task.max_steps + 8, stop=("[END]", "\n\n"),
                                       batch_size=batch_size, progress=progress, desc="plans")

    def predict(self, items: list[EvalItem], on_result=None) -> list[dict]:
        prompts = [self.task.text_prompt(it.question, self.root, self.method.name) for it in items]
        results: list[dict | None] = [None] * len(items)

        def done(indices, outputs):
            for i, (text, cut) in zip(indices, outputs):
                results[i] = {**self.task.parse_text(text), "prompt_cut": cut}
                if on_result is not None:
                    on_result(i, results[i])

        self.generator.generate(prompts, on_batch=done)
        return results

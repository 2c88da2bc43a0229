"""Few-shot prompt templates with a `[QUESTION]` slot (ToolkenGPT's format).

A template is split into a constant few-shot *prefix* and a per-question
part, so the agent computes the prefix's KV cache once and reuses it for every
question and every tool call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SLOT = "[QUESTION]"


@dataclass(frozen=True)
class FewShotPrompt:
    prefix: str  # few-shot demos, identical for every question
    question_format: str  # e.g. "Question: [QUESTION]\nAnswer:"

    def question_part(self, question: str) -> str:
        return self.question_format.replace(SLOT, question.strip())

    def render(self, question: str) -> str:
        return self.prefix + self.question_part(question)

    @classmethod
    def from_text(cls, text: str) -> "FewShotPrompt":
        if SLOT not in text:
            raise ValueError(f"prompt template has no {SLOT} slot")
        at = text.index(SLOT)
        line_start = text.rfind("\n", 0, at) + 1
        rest = text[line_start:]
        # Cut after the first "Answer:" that follows the slot: ToolkenGPT's
        # llama_multiply.txt carries a stray demo after it.
        cue = rest.find("Answer:", rest.index(SLOT))
        if cue >= 0:
            rest = rest[: cue + len("Answer:")]
        return cls(prefix=text[:line_start], question_format=rest)

    @classmethod
    def from_file(cls, path: str | Path) -> "FewShotPrompt":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"prompt template not found: {path} (check data.root)")
        return cls.from_text(path.read_text())

"""Examples for the text methods (method=lora): the tool calls are part of
the text the model learns to write, so an example is just a prompt and the
completion to learn after it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TextExample:
    """One supervised example for text methods (lora): the model reads `prompt` and learns to write `completion`."""

    id: str
    prompt: str
    completion: str

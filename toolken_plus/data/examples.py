"""Data types shared by every task adapter.

An :class:`Example` is a plain text in which each tool call shows only as its
result; each :class:`ToolCall` records the character span of that result.  The
tokeniser step later maps these character spans to token positions with the
tokenizer's offset mapping, so nothing here depends on a particular backbone.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class DataError(ValueError):
    """Bad data; the message names the file and the line (or record index)."""


@dataclass(frozen=True)
class ToolCall:
    """One tool call, visible in the text only as its result.

    ``result`` is the result text exactly as it appears in ``Example.text``,
    i.e. ``example.text[call.start:call.end] == call.result``.
    """

    tool: str  # tool name, e.g. "add"
    args: tuple  # parsed args (int or float for calculator tools), e.g. (48, 2)
    result: str  # result text exactly as it appears in ``Example.text``
    start: int  # character span [start, end) of the result in ``Example.text``
    end: int


@dataclass
class Example:
    """A training/validation text with the character spans of its tool calls."""

    id: str  # e.g. "gsm8k-train-17"
    text: str  # plain text in which each call shows only as its result
    calls: list[ToolCall]  # sorted by start
    # Character spans of results whose call was dropped (e.g. an expression the
    # tools cannot express).  No label is learned there: teaching the model the
    # ordinary next token at a place where a calculator was really used would
    # teach it to do arithmetic "by heart", which is what toolkens avoid.
    ignore_spans: list[tuple[int, int]] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # e.g. {"question": ..., "answer": "72"}

"""Turn examples with character spans of tool calls into per-position targets.

Position p of a tokenised text predicts token p+1. Each position gets one of
- `tool_label[p] = -1`: an ordinary vocabulary target, `next_token[p]`;
- `tool_label[p] = k >= 0`: the gold is toolken k (p precedes the first token
  of call k's result span);
- `tool_label[p] = IGNORE`: no loss here (inside a result span, which the tool
  writes at inference, or at a dropped call, or the last position).

Spans are mapped through the tokenizer's offset mapping, so any tokenizer
works: nothing assumes how a tokenizer splits numbers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from toolken_plus.data.examples import Example

IGNORE = -100
VOCAB = -1


@dataclass
class Encoded:
    input_ids: np.ndarray  # (T,) int64
    next_token: np.ndarray  # (T,) int64, IGNORE at the last position
    tool_label: np.ndarray  # (T,) int64: VOCAB, a tool index, or IGNORE
    n_calls_lost: int = 0  # calls cut by truncation or starting at token 0

    def __len__(self) -> int:
        return len(self.input_ids)


def _first_token_at(offsets, special, char: int) -> int | None:
    """Index of the first real token that ends after `char` (the token holding it)."""
    for i, ((s, e), sp) in enumerate(zip(offsets, special)):
        if not sp and e > char and e > s:
            return i
    return None


def _span_end_token(offsets, special, char: int, first: int) -> int:
    """One past the last real token, from `first` on, that starts before `char`."""
    k = first
    while k < len(offsets) and not special[k] and offsets[k][0] < char:
        k += 1
    return k


def leading_special_ids(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts before a text when it adds
    special tokens (a BOS; none for SmolLM2's). Training reads examples so
    (`encode_example`), so every context inference starts reads them first
    too (`context_start_ids`)."""
    with_special = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    for k in range(len(with_special) - len(plain) + 1):
        if with_special[k : k + len(plain)] == plain:
            return list(with_special[:k])
    return []


def context_start_ids(tokenizer, text: str) -> list[int]:
    """Token ids of the text a context begins with (a prompt prefix, a shared
    prefix): the tokenizer's leading special tokens, then the text, as a
    training example begins. The rest of a context is tokenized without
    special tokens."""
    return leading_special_ids(tokenizer) + list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_example(tokenizer, example: Example, tool_index: dict[str, int], max_length: int = 1024) -> Encoded:
    enc = tokenizer(
        example.text,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        truncation=True,
        max_length=max_length,
    )
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    special = [bool(s) for s in enc["special_tokens_mask"]]
    T = len(ids)

    next_token = np.full(T, IGNORE, dtype=np.int64)
    next_token[:-1] = ids[1:]
    tool_label = np.full(T, VOCAB, dtype=np.int64)
    tool_label[-1] = IGNORE

    lost = 0

    def mark(start: int, end: int, label: int) -> bool:
        j = _first_token_at(offsets, special, start)
        if j is None or j == 0:
            return False
        k = _span_end_token(offsets, special, end, j)
        # Position j-1 decides whether to call; positions j..k-2 would predict
        # the rest of the result span, which the tool writes: no loss there.
        tool_label[j - 1] = label
        tool_label[j : max(j, k - 1)] = IGNORE
        return True

    for s, e in example.ignore_spans:
        mark(s, e, IGNORE)
    for call in example.calls:
        if call.tool not in tool_index:
            raise KeyError(f"{example.id}: unknown tool {call.tool!r}; known tools: {sorted(tool_index)}")
        if not mark(call.start, call.end, tool_index[call.tool]):
            lost += 1
    return Encoded(ids, next_token, tool_label, lost)


def encode_examples(tokenizer, examples, tool_index, max_length: int = 1024) -> list[Encoded]:
    return [encode_example(tokenizer, ex, tool_index, max_length) for ex in examples]


def encodings_digest(encoded: list[Encoded]) -> str:
    """Content hash of what the cache is built from: token ids and targets.

    It covers the data, the prompt format and the tokenizer at once, because
    any change in them changes these arrays."""
    h = hashlib.sha256()
    for e in encoded:
        h.update(e.input_ids.tobytes())
        h.update(e.tool_label.tobytes())
        h.update(b"|")
    return h.hexdigest()

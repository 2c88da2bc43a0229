"""GSM8K-XL answers: read the final number of a generation and score it like ToolkenGPT.

ToolkenGPT scores GSM8K-XL with ``accuracy(preds, labels, type="em")`` in
``evaluation/metrics.py`` of github.com/Ber666/ToolkenGPT, rounding with
``custom_round`` from its ``funchub/math.py`` (here
:func:`toolkengpt_round`, which the calculator tools use too).  :func:`is_correct`
reproduces that rule; see its docstring.
"""

from __future__ import annotations

import math
import re

# after "####": optional "$" and sign in either order, digits with commas, decimals
_ANSWER = re.compile(r"\s*\$?\s*(?P<sign>[+-]?)\s*\$?\s*(?P<num>[0-9][0-9,]*(?:\.[0-9]+)?|\.[0-9]+)")


def toolkengpt_round(x: float, places: int = 2) -> float:
    """Round like ToolkenGPT's ``custom_round``: to ``places`` decimals, except that a
    number whose 10-decimal text starts ``0.0`` keeps two significant digits
    (0.0333 -> 0.033, 0.00000233 -> 0.0000023).  Because the test is on that text,
    negative numbers (``-0.0…``) always get plain rounding, as in ToolkenGPT."""
    if isinstance(x, int):
        return x  # rounding is the identity; formatting a huge int as float would overflow
    if not math.isfinite(x):
        raise ValueError("non-finite result")
    text = f"{x:.10f}"
    if text.startswith("0.0"):
        zeros = len(text) - 2 - len(text[2:].lstrip("0"))
        return round(x, zeros + 2)
    return round(x, places)


def extract_answer(generation: str) -> float | None:
    """The number right after the first ``####`` in ``generation``, or None.

    Commas are dropped (``1,200`` -> 1200), a ``$`` and a sentence-final ``.``
    are ignored, trailing words are ignored (``#### 32040 calories`` -> 32040).
    None when there is no ``####`` or no number follows it.

    ToolkenGPT's ``parse_answer`` takes the text after the *last* ``####`` and
    ``float()``s all of it; we take the first, because our generation may run on
    into a new "Question:" after the answer, and read only the leading number.
    """
    _, sep, tail = generation.partition("####")
    if not sep:
        return None
    m = _ANSWER.match(tail)
    if m is None:
        return None
    return float(m.group("sign") + m.group("num").replace(",", ""))


def is_correct(pred: float | None, label: float) -> bool:
    """ToolkenGPT's GSM8K-XL exact-match rule (``accuracy(..., type="em")`` in
    Ber666/ToolkenGPT ``evaluation/metrics.py``).

    Both numbers are rounded with ToolkenGPT's ``custom_round`` (2 decimals;
    2 significant digits for small positive numbers).  If the rounded label is
    integral the prediction is then *truncated* with ``int()`` and compared as
    an integer, else the rounded floats must be equal.  Consequence, kept for
    comparability with the paper's numbers: for an integral label any
    prediction in ``[label, label + 1)`` counts (``is_correct(32.7, 32)`` is
    True; ``is_correct(-0.5, 0)`` too, since ``int`` truncates toward zero).
    A missing (None) or non-finite prediction is wrong, as the ``except`` there
    makes it.
    """
    if not math.isfinite(label):
        raise ValueError(f"label must be a finite number, got {label!r}")
    if pred is None or not math.isfinite(pred):
        return False
    label = toolkengpt_round(float(label))
    pred = toolkengpt_round(float(pred))
    if float(label).is_integer():
        return int(pred) == int(label)
    return pred == label

"""GSM8K-XL answer extraction and ToolkenGPT's exact-match rule."""

import math

import pytest

from toolken_plus.tasks.answers import extract_answer, is_correct


@pytest.mark.parametrize(
    "generation, expected",
    [
        ("She makes 4005 * 8 = 32040 every day. #### 32040", 32040.0),
        ("... #### 32040\n\nQuestion: next one #### 7", 32040.0),  # the first ####
        ("#### $1,200.50", 1200.5),
        ("#### 1,200.", 1200.0),
        ("####-253", -253.0),
        ("#### $-4.5", -4.5),
        ("#### 525 calories.", 525.0),
        ("#### .5", 0.5),
        ("The answer is 12", None),
        ("#### unknown", None),
        ("####", None),
    ],
)
def test_extract_answer(generation, expected):
    assert extract_answer(generation) == expected


@pytest.mark.parametrize(
    "pred, label, ok",
    [
        (32040.0, 32040.0, True),
        (32041.0, 32040.0, False),
        (194.88, 194.8815866605875, True),  # label rounded to 2 decimals
        (194.881, 194.8815866605875, True),
        (194.89, 194.8815866605875, False),
        (5269333.33, 5269333.333333334, True),
        (5269333.3, 5269333.333333334, False),
        (12.004, 12.0, True),
        (11.996, 12.0, True),  # rounds to 12.0
        (12.7, 12.0, True),  # ToolkenGPT truncates with int() for integral labels
        (11.99, 12.0, False),
        (-253.0, -253.0, True),
        (0.033, 0.0333, True),  # small numbers keep 2 significant digits
        (0.03, 0.0333, False),
        (None, 12.0, False),
        (math.nan, 12.0, False),
        (math.inf, 12.0, False),
    ],
)
def test_is_correct(pred, label, ok):
    assert is_correct(pred, label) is ok


def test_extract_then_score():
    assert is_correct(extract_answer("so the total is $32,040. #### $32,040."), 32040.0)

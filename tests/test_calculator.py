"""The GSM8K-XL calculator tools: ToolkenGPT's values and result text."""

import inspect
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolken_plus.tools.calls import MAX_CHARS, coerce_arguments, parse_arguments
from toolken_plus.tools.isolation import ThreadRunner
from toolken_plus.tools.registry import Tool
from toolken_plus_tools.calculator import (
    DEMO_FILES,
    TOOLS,
    add,
    divide,
    format_number,
    multiply,
    subtract,
    toolkengpt_round,
)


@pytest.mark.parametrize(
    "call, expected",
    [
        (lambda: add(1, 2), "3"),
        (lambda: add(0.95, 0.85), "1.8"),
        (lambda: add(110, 310, 215), "635"),
        (lambda: add(0.1, 0.2), "0.3"),
        (lambda: subtract(311, 226), "85"),
        (lambda: subtract(10, 3, 2), "5"),
        (lambda: subtract(3, 10), "-7"),
        (lambda: subtract(1, 3.255), "-2.25"),  # 2.255 is 2.25499... in binary
        (lambda: multiply(2.5, 4), "10"),
        (lambda: multiply(2, 3, 4), "24"),
        (lambda: multiply(-1.5, 3), "-4.5"),
        (lambda: divide(1, 3), "0.33"),
        (lambda: divide(2356, 4), "589"),
        (lambda: divide(100, 2, 5), "10"),
        (lambda: divide(-7, 2), "-3.5"),
        (lambda: divide(1, 30), "0.033"),  # ToolkenGPT keeps 2 significant digits below 0.1
        (lambda: divide(-1, 30), "-0.03"),  # ...but only for positive numbers
        (lambda: multiply(4096, 27, 64, 8, 1000000), "56623104000000"),
        (lambda: multiply(1e20, 3), "300000000000000000000"),
        (lambda: multiply(2.5e20, 1), "250000000000000000000"),  # ToolkenGPT prints 250 here
        (lambda: multiply(10**20, 10**20), "1" + "0" * 40),
        (lambda: divide(1, 3e7), "0.000000033"),
        (lambda: subtract(0.001, 0.002), "0"),  # not "-0"
    ],
)
def test_values_and_format(call, expected):
    assert call() == expected


def test_format_number():
    assert format_number(3) == "3"
    assert format_number(3.0) == "3"
    assert format_number(1.80) == "1.8"
    assert format_number(0.0) == "0"
    assert format_number(52.3523) == "52.35"
    assert format_number(52.0011) == "52"
    assert format_number(0.00000233) == "0.0000023"
    assert "e" not in format_number(1.5e-11)
    with pytest.raises(ValueError):
        format_number(math.inf)


def test_round_like_toolkengpt():
    assert toolkengpt_round(0.0333) == 0.033
    assert toolkengpt_round(-0.0333) == -0.03
    assert toolkengpt_round(194.8815866605875) == 194.88
    assert toolkengpt_round(10**30) == 10**30


def test_registry_and_docs():
    assert list(TOOLS) == ["add", "subtract", "multiply", "divide"]
    assert DEMO_FILES == {n: f"llama_{n}.txt" for n in TOOLS}
    for fn in TOOLS.values():
        doc = inspect.getdoc(fn)
        assert doc and "\n\n" not in doc  # one paragraph
        sig = inspect.signature(fn)
        assert sig.return_annotation is str
        assert [p.kind for p in sig.parameters.values()] == [inspect.Parameter.VAR_POSITIONAL]


def test_demo_files_exist(data_root):
    for name in DEMO_FILES.values():
        assert (data_root / "gsm8k-xl" / "template" / name).is_file()


def call_with_timeout(fn, args, timeout=2.0):
    """One call as the agent makes it for a built-in tool."""
    return ThreadRunner(Tool(fn.__name__, fn, "a calculator tool"), timeout, MAX_CHARS).call(args)


def test_errors_are_outcomes():
    out = call_with_timeout(divide, [1, 0])
    assert not out.ok and out.error == "ZeroDivisionError: division by zero"
    out = call_with_timeout(add, [5])
    assert not out.ok and "at least 2 numbers" in out.error
    out = call_with_timeout(multiply, [1e200, 1e200])
    assert not out.ok and "non-finite" in out.error


def test_parse_coerce_call_pipeline():
    args = coerce_arguments(parse_arguments("1,340, 635"), inspect.signature(add))
    assert call_with_timeout(add, args).value == "1975"


finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(list(TOOLS)), st.lists(st.one_of(finite, st.integers()), min_size=0, max_size=5))
def test_fuzz_tools_never_raise(name, values):
    out = call_with_timeout(TOOLS[name], values, timeout=2.0)
    if out.ok:
        assert isinstance(out.value, str) and "e" not in out.value
        (number,) = parse_arguments(out.value)
        assert math.isfinite(number)
    else:
        assert isinstance(out.error, str) and out.error

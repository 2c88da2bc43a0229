"""Strict argument parsing, signature checks and guarded tool calls."""

import inspect
import math
import threading
import time

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from toolken_plus.tools.calls import (
    MAX_CHARS,
    CallArguments,
    ToolArgumentError,
    bind_arguments,
    coerce_arguments,
    format_result,
    parse_arguments,
    parse_call_arguments,
    run_and_format,
)
from toolken_plus.tools.isolation import ThreadRunner
from toolken_plus.tools.registry import Tool


@pytest.mark.parametrize(
    "text, expected",
    [
        ("48, 2", [48, 2]),
        ("1,000, 2", [1000, 2]),
        ("1,2", [1, 2]),
        ("3, 4", [3, 4]),
        ("1,0000", [1, 0]),  # four digits after the comma: a separator
        ("12,345,678", [12345678]),
        ("1,000,000.25, 3", [1000000.25, 3]),
        ("50%", [0.5]),
        ("7%, 12.5%", [0.07, 0.125]),
        ("-3, +4, -0.5", [-3, 4, -0.5]),
        ("2.5, .5, 5.", [2.5, 0.5, 5.0]),
        ("$1,200.50", [1200.5]),
        ("-$5, $-5", [-5, -5]),
        ("1e5, 2.5E-3", [100000.0, 0.0025]),
        ('"hello, world"', ["hello, world"]),
        ("'it\\'s', \"say \\\"hi\\\"\"", ["it's", 'say "hi"']),
        ("'a\\\\b', 'c\\nd'", ["a\\b", "c\\nd"]),  # only \\ and \<quote> are escapes
        ("[1, 2]", [[1, 2]]),
        ("[1, [2, ['x']]], []", [[1, [2, ["x"]]], []]),
        ("", []),
        ("  \n ", []),
        ("  4 ,\t5  ", [4, 5]),
    ],
)
def test_parse_examples(text, expected):
    assert parse_arguments(text) == expected


def test_ints_stay_int_decimals_float():
    assert [type(v) for v in parse_arguments("3, 3.0, 1e2, 50%")] == [int, float, float, float]


@pytest.mark.parametrize(
    "text, reason",
    [
        ("2+3", "'+' at position 1"),
        ("__import__('os')", "'_' at position 0"),
        ("open(", "'o' at position 0"),
        ("(1, 2)", "'(' at position 0"),
        ("[1, 2", "unclosed '['"),
        ("1, 2]", "']' at position 4"),
        ('"abc', "unterminated string"),
        ("1,,2", "',' at position 2"),
        ("1, 2,", "expected a value at end of text"),
        ("2 3", "'3' at position 2"),
        ("-", "expected digits"),
        ("1e999", "out of range"),
        ("x" * (MAX_CHARS + 1), "too long"),
        (", ".join(["1"] * 65), "too many arguments"),
        ("[" * 9 + "]" * 9, "nested deeper than 8"),
        ("٣", "unexpected"),  # non-ASCII digits are not numbers here
    ],
)
def test_parse_rejects(text, reason):
    with pytest.raises(ToolArgumentError) as info:
        parse_arguments(text)
    assert reason in str(info.value)


def test_nesting_up_to_eight_is_fine():
    assert parse_arguments("[" * 8 + "]" * 8) == [[[[[[[[[]]]]]]]]]


@given(st.text(max_size=300))
def test_fuzz_arbitrary_text(text):
    try:
        assert isinstance(parse_arguments(text), list)
    except ToolArgumentError:
        pass


@given(st.text(alphabet="0123456789,. []'\"\\$%+-eE", max_size=80))
def test_fuzz_literal_alphabet(text):
    try:
        assert isinstance(parse_arguments(text), list)
    except ToolArgumentError:
        pass


numbers = st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False))


@given(st.lists(numbers, max_size=64))
def test_round_trip_repr(values):
    text = ", ".join(repr(v) for v in values)
    assume(len(text) <= MAX_CHARS)
    parsed = parse_arguments(text)
    assert parsed == values
    assert [type(v) for v in parsed] == [type(v) for v in values]


@given(st.lists(st.integers(min_value=-10**12, max_value=10**12), max_size=20))
def test_round_trip_thousands_commas(values):
    assert parse_arguments(", ".join(f"{v:,}" for v in values)) == values


# --- keyword arguments: the same parser ------------------------------------


@pytest.mark.parametrize(
    "text, args, kwargs",
    [
        ('city="Paris", days=3', [], {"city": "Paris", "days": 3}),
        ('"Paris", days = 3', ["Paris"], {"days": 3}),
        ("n=1,000, m=2", [], {"n": 1000, "m": 2}),  # the comma rule holds after a name too
        ("xs=[1, 2], s='a=b, c'", [], {"xs": [1, 2], "s": "a=b, c"}),  # '=' inside a string is text
        (" _private\n=\t-5% ", [], {"_private": -0.05}),
        ("1, 2, k9=$3", [1, 2], {"k9": 3}),
    ],
)
def test_parse_keyword_arguments(text, args, kwargs):
    assert parse_call_arguments(text) == CallArguments(args, kwargs)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("a=1, 2", "positional argument after keyword argument at position 5"),
        ("a=1, a=2", "keyword argument 'a' repeated at position 5"),
        ("a=", "expected a value at end of text"),
        ("a=1,", "expected a value at end of text"),
        ("a==1", "unexpected 'a' at position 0"),
        ("=1", "unexpected '=' at position 0"),
        ("city=Paris", "unexpected 'P' at position 5"),  # a bare name is not a value
        ("x=__import__('os')", "unexpected '_' at position 2"),
        ("os.path=1", "unexpected 'o' at position 0"),  # names are plain identifiers
        ("f(x)=1", "unexpected 'f' at position 0"),
        ("[a=1]", "unexpected 'a' at position 1"),  # no keywords inside a list
        ("é=1", "unexpected 'é' at position 0"),  # ASCII names only
        (", ".join(f"k{i}=1" for i in range(65)), "too many arguments"),
    ],
)
def test_parse_keyword_rejects(text, reason):
    with pytest.raises(ToolArgumentError) as info:
        parse_call_arguments(text)
    assert reason in str(info.value)


def test_parse_arguments_takes_positional_values_only():
    assert parse_arguments("1, 2") == parse_call_arguments("1, 2").args == [1, 2]
    with pytest.raises(ToolArgumentError, match="keyword argument 'days' where only positional"):
        parse_arguments('"Paris", days=3')


@given(st.text(alphabet="abxyz_019,. []'\"\\$%+-eE=", max_size=80))
def test_fuzz_keyword_alphabet(text):
    try:
        assert isinstance(parse_call_arguments(text), CallArguments)
    except ToolArgumentError:
        pass


identifiers = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)


@given(st.lists(numbers, max_size=5), st.dictionaries(identifiers, numbers, max_size=5))
def test_round_trip_keywords(args, kwargs):
    text = ", ".join([repr(v) for v in args] + [f"{k}={v!r}" for k, v in kwargs.items()])
    assert parse_call_arguments(text) == CallArguments(args, kwargs)


# --- coerce_arguments -------------------------------------------------------


def two_floats(a: float, b: float) -> float:
    return a + b


def typed(n: int, s: str, xs: list[float], opt: float = 1.0) -> None:
    pass


def varargs(*args: float) -> float:
    return sum(args)


def sig(fn):
    return inspect.signature(fn)


def test_coerce_ok():
    assert coerce_arguments([1, 2.5], sig(two_floats)) == [1, 2.5]
    out = coerce_arguments([3.0, "x", [1, 2.5]], sig(typed))
    assert out == [3, "x", [1, 2.5]] and type(out[0]) is int
    assert coerce_arguments([1, 2, 3, 4.5], sig(varargs)) == [1, 2, 3, 4.5]
    assert coerce_arguments(["anything"], None) == ["anything"]


@pytest.mark.parametrize(
    "fn, args, message",
    [
        (two_floats, [1, 2, 3], "expected 2 arguments, got 3"),
        (two_floats, [1], "expected 2 arguments, got 1"),
        (typed, [1], "expected 3 to 4 arguments, got 1"),
        (two_floats, [1, "2"], "argument 2: expected float, got str '2'"),
        (typed, [1.5, "x", []], "argument 1: expected int"),
        (typed, [1, 2, []], "argument 2: expected str"),
        (typed, [1, "x", 3], "argument 3: expected list"),
        (typed, [1, "x", [1, "y"]], "argument 3 item 2: expected float"),
        (varargs, [1, [2]], "argument 2: expected float"),
    ],
)
def test_coerce_errors(fn, args, message):
    with pytest.raises(ToolArgumentError) as info:
        coerce_arguments(args, sig(fn))
    assert message in str(info.value)


def test_coerce_postponed_annotations():
    def f(a: "int", b: "list[float]"):
        pass

    assert coerce_arguments([2.0, [1]], sig(f)) == [2, [1]]
    with pytest.raises(ToolArgumentError):
        coerce_arguments([2.5, [1]], sig(f))


# --- binding keyword arguments to the signature ----------------------------


def weather(city: str, days: int = 1, *, units: str = "C") -> str:
    return f"{city} {days} {units}"


def pos_only(x: float, /, y: float = 0.0) -> float:
    return x + y


def scaled(*xs: float, scale: float) -> float:
    return scale * sum(xs)


def open_ended(a: int, **extra: float) -> str:
    return f"{a} {sorted(extra.items())}"


def bind(text, fn):
    return bind_arguments(parse_call_arguments(text), sig(fn))


@pytest.mark.parametrize(
    "fn, text, args, kwargs",
    [
        (weather, 'city="Paris", days=3', ["Paris", 3], {}),  # canonical: as if written positionally
        (weather, 'days=2.0, city="Oslo"', ["Oslo", 2], {}),  # any order; int converted as for positional values
        (weather, '"Oslo", units="F"', ["Oslo"], {"units": "F"}),  # keyword-only stays a keyword
        (weather, 'city="Oslo", units="F"', ["Oslo"], {"units": "F"}),
        (pos_only, "1, y=2", [1, 2], {}),
        (scaled, "1, 2, scale=3", [1, 2], {"scale": 3}),
        (open_ended, "1, b=2.5, c=0", [1], {"b": 2.5, "c": 0}),  # **extra takes other names
        (open_ended, "a=1", [1], {}),
        (two_floats, "1, b=2", [1, 2], {}),
    ],
)
def test_bind_keywords_ok(fn, text, args, kwargs):
    call = bind(text, fn)
    assert (call.args, call.kwargs) == (args, kwargs)
    fn(*call.args, **call.kwargs)  # Python binds it the same way


@pytest.mark.parametrize(
    "fn, text, message",
    [
        (weather, 'town="Paris"', "unknown keyword argument 'town'; keywords the tool takes: city, days, units"),
        (weather, '"Paris", city="Oslo"', "argument 'city' given twice: as argument 1 and by keyword"),
        (weather, "days=3", "missing required argument 'city'"),
        (scaled, "1, 2", "missing required argument 'scale'"),  # keyword-only and required
        (two_floats, "b=1", "missing required argument 'a'"),
        (weather, "city=3", "argument 'city': expected str, got int 3"),
        (weather, '"Oslo", days="two"', "argument 'days': expected int, got str 'two'"),
        (weather, '"Oslo", units=1', "argument 'units': expected str"),
        (open_ended, '1, b="x"', "argument 'b': expected float, got str 'x'"),
        (pos_only, "x=1", "unknown keyword argument 'x' (it is positional-only)"),
        (weather, '"Oslo", 1, "C"', "expected 1 to 2 arguments, got 3"),  # keyword-only is not positional
        (varargs, "x=1", "unknown keyword argument 'x'; keywords the tool takes: none"),
    ],
)
def test_bind_keyword_errors(fn, text, message):
    with pytest.raises(ToolArgumentError) as info:
        bind(text, fn)
    assert message in str(info.value)


def test_bind_without_signature_passes_keywords_through():
    assert bind_arguments(CallArguments([1], {"k": "v"}), None) == CallArguments([1], {"k": "v"})


def test_call_with_keywords_reaches_the_tool():
    call = bind('"Oslo", units="F", days=2', weather)
    out = ThreadRunner(Tool("weather", weather, "Weather."), 2.0, MAX_CHARS).call(call.args, call.kwargs)
    assert out.ok and out.value == "Oslo 2 F"
    assert run_and_format(weather, ["Rome"], 300, {"units": "K"}).value == "Rome 1 K"


# --- a guarded call in a thread (the agent's path for built-in tools) --------


def call_with_timeout(fn, args, timeout=2.0):
    """One call through the runner the agent uses for in-process tools."""
    return ThreadRunner(Tool("t", fn, "a test tool"), timeout, MAX_CHARS).call(args)


def test_call_ok():
    out = call_with_timeout(two_floats, [1, 2])
    assert out.ok and out.value == "3" and out.error is None and out.seconds >= 0


def test_call_exception():
    out = call_with_timeout(lambda a, b: a / b, [1, 0])
    assert not out.ok and out.error == "ZeroDivisionError: division by zero"


def test_call_wrong_arity_is_an_outcome_too():
    out = call_with_timeout(two_floats, [1])
    assert not out.ok and out.error.startswith("TypeError")


def test_call_timeout():
    release = threading.Event()

    def slow():
        release.wait(0.5)  # sleeps 0.5 s unless the test lets it go
        return 1

    start = time.perf_counter()
    out = call_with_timeout(slow, [], timeout=0.05)
    release.set()
    assert not out.ok and out.error == "timed out after 0.05 s"
    assert time.perf_counter() - start < 0.4


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_call_non_finite(bad):
    out = call_with_timeout(lambda: bad, [])
    assert not out.ok and out.error.endswith("non-finite result")


def test_call_base_exception_is_contained():
    def leave():
        raise SystemExit(3)

    out = call_with_timeout(leave, [])
    assert not out.ok and out.error == "SystemExit: 3"


# --- formatting results ------------------------------------------------------


class _BadStr:
    def __str__(self):
        raise RuntimeError("no text for you")


class _SneakyStr(str):
    def __str__(self):
        return self

    def __len__(self):
        return 1


def test_format_result_caps_and_records_the_cut():
    assert format_result(1975, 300) == ("1975", None)
    assert format_result("x" * 300, 300) == ("x" * 300, None)
    text, cut = format_result("7" * 100_000, 300)
    assert text == "7" * 300 and cut == 100_000
    assert format_result(_SneakyStr("abcdef"), 3) == ("abc", 6)  # a str subclass's own len() is not trusted
    assert format_result("a\ud800b", 10) == ("a?b", None)  # a lone surrogate would make the tokenizer raise


@pytest.mark.parametrize("value, error", [
    (10 ** 5000, ValueError),  # int -> str conversion stops above 4300 digits
    (_BadStr(), RuntimeError),
    (math.nan, ValueError),
], ids=["huge-int", "bad-str", "nan"])  # (pytest itself cannot str() the huge int for an id)
def test_format_result_raises_for_results_without_text(value, error):
    with pytest.raises(error):
        format_result(value, 300)


@pytest.mark.parametrize("fn, error", [
    (lambda: 10 ** 5000, "result cannot be written as text: ValueError: Exceeds the limit"),
    (lambda: _BadStr(), "result cannot be written as text: RuntimeError: no text for you"),
    (lambda: 1 / 0, "ZeroDivisionError: division by zero"),
    (lambda: exit(4), "SystemExit: 4"),
])
def test_run_and_format_turns_every_failure_into_an_outcome(fn, error):
    out = run_and_format(fn, [], 300)
    assert not out.ok and out.error.startswith(error)


def test_run_and_format_ok():
    out = run_and_format(lambda a: "y" * a, [1000], 10)
    assert out.ok and (out.value, out.truncated_from) == ("y" * 10, 1000)

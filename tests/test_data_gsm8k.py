"""Tests for the GSM8K-XL task adapter (GSM8K annotations -> toolken examples)."""

import json
import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolken_plus.data.examples import DataError, Example, ToolCall
from toolken_plus.tasks.gsm8k import (
    DROP_REASONS,
    PROMPT_QUESTION,
    TOOLS,
    Gsm8kStats,
    classify_annotation,
    format_prompt,
    format_text,
    load_call_jsonl,
    load_gsm8k,
    load_gsm8k_xl_test,
    load_tecton_val,
    parse_annotation,
    split_train_val,
)

TRAIN = Path("gsm8k") / "train.jsonl"
XL_TEST = Path("gsm8k-xl") / "test.json"
TECTON_VAL = Path("gsm8k-xl") / "tecton_val.json"


def count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def write_jsonl(tmp_path: Path, name: str, rows: list) -> Path:
    """Rows that are strings are written verbatim (to make malformed lines)."""
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def assert_spans_match(example: Example) -> None:
    for call in example.calls:
        assert example.text[call.start : call.end] == call.result, (example.id, call)
    assert [c.start for c in example.calls] == sorted(c.start for c in example.calls)


# ------------------------------------------------------------------ text format


def test_tools_follow_toolkengpt_order():
    func_dict = {"<add>": 0, "<subtract>": 1, "<multiply>": 2, "<divide>": 3}
    assert TOOLS == tuple(name[1:-1] for name in sorted(func_dict, key=func_dict.get))


def test_format_text_joins_lines_and_continues_the_prompt():
    text = format_text("How many?", ["It is 2+2 = 4.", "#### 4"])
    assert text == "Question: How many?\nAnswer: It is 2+2 = 4. #### 4"
    assert text.startswith(PROMPT_QUESTION.format(question="How many?") + " ")
    assert text.startswith(format_prompt("How many?") + " ")


# ------------------------------------------------------------------ annotations


@pytest.mark.parametrize(
    "body, expected",
    [
        ("48/2=24", ("divide", (48, 2))),
        ("48+24=72", ("add", (48, 24))),
        ("120-36=84", ("subtract", (120, 36))),
        ("0.2*50=10", ("multiply", (0.2, 50))),
        (" 12 + 24 = 36 ", ("add", (12, 24))),
        ("5+11+33+66=115", ("add", (5, 11, 33, 66))),
        ("2*4*2=16", ("multiply", (2, 4, 2))),
        ("1,000*3=3,000", ("multiply", (1000, 3))),
        ("-5+2=-3", ("add", (-5, 2))),
        (".5*10=5", ("multiply", (0.5, 10))),
        ("7-9=-2", ("subtract", (7, 9))),
        ("2=1=1+1", None),  # split on the last '=': lhs '2=1' is not an expression
    ],
)
def test_parse_annotation_kept_and_argument_types(body, expected):
    assert parse_annotation(body) == expected
    if expected:
        assert [type(a) for a in parse_annotation(body)[1]] == [type(a) for a in expected[1]]


@pytest.mark.parametrize(
    "body, reason",
    [
        ("80/100*10=8", "mixed_operators"),
        ("16+15-3=28", "mixed_operators"),
        ("100-50-30-15=5", "chained_sub_or_div"),
        ("100/2/5=10", "chained_sub_or_div"),
        ("12=12", "no_operator"),
        ("-3=-3", "no_operator"),
        ("(500+200)=700", "parentheses"),
        ("60/(2/3)=90", "parentheses"),
        ("5%*20=1", "unparseable"),
        ("3x4=12", "unparseable"),
        ("71+-3=68", "unparseable"),
        ("560//10=56", "unparseable"),
        ("2+2", "unparseable"),
        ("2+2=four", "unparseable"),
        ("", "unparseable"),
    ],
)
def test_dropped_annotations_have_reasons(body, reason):
    assert parse_annotation(body) is None
    assert classify_annotation(body) == reason
    assert reason in DROP_REASONS


annotation_like = st.text(alphabet="0123456789.,+-*/=()%x $<>", max_size=30)


@settings(max_examples=300, deadline=None)
@given(annotation_like)
def test_parse_annotation_never_raises(body):
    parsed = parse_annotation(body)
    if parsed is not None:
        tool, args = parsed
        assert tool in TOOLS
        assert all(isinstance(a, (int, float)) for a in args)
        assert len(args) == 2 if tool in ("subtract", "divide") else len(args) >= 2


# --------------------------------------------------------------------- loading


def test_spans_survive_blank_lines_indentation_and_joining(tmp_path):
    answer = "  First 2+2 = <<2+2=4>>4.\n\n\tThen <<4*3=12>>12, and 1,000+2+3 = <<1,000+2+3=1,005>>1,005!\n#### 1,005"
    path = write_jsonl(tmp_path, "mini.jsonl", [{"question": " Q? ", "answer": answer}])
    (example,) = load_gsm8k(path)
    assert example.text == "Question: Q?\nAnswer: First 2+2 = 4. Then 12, and 1,000+2+3 = 1,005! #### 1,005"
    assert [(c.tool, c.args, c.result) for c in example.calls] == [
        ("add", (2, 2), "4"),
        ("multiply", (4, 3), "12"),
        ("add", (1000, 2, 3), "1,005"),
    ]
    assert_spans_match(example)
    assert example.meta == {"question": "Q?", "answer": "1,005"}
    assert example.id == "gsm8k-mini-0"


def test_dropped_annotations_leave_ignore_spans_only_when_a_result_is_shown(tmp_path):
    answer = "A 80/100*10 = <<80/100*10=8>>8 and <<2+2=4>> four; 3*3 = <<3*3=9>>9.\n#### 9"
    path = write_jsonl(tmp_path, "d.jsonl", [{"question": "Q", "answer": answer}])
    stats = Gsm8kStats()
    (example,) = load_gsm8k(path, stats=stats)
    assert [example.text[s:e] for s, e in example.ignore_spans] == ["8"]
    assert example.text[example.ignore_spans[0][0] - 2 :].startswith("= 8 and  four")
    assert [(c.tool, c.result) for c in example.calls] == [("multiply", "9")]
    assert stats.dropped["mixed_operators"] == 1
    assert stats.dropped["no_result_span"] == 1
    assert stats.calls_kept == 1 and stats.annotations == 3


def test_bad_rows_are_warned_with_file_and_line_and_counted(tmp_path, caplog):
    good = {"question": "Q", "answer": "1+1 = <<1+1=2>>2\n#### 2"}
    path = write_jsonl(tmp_path, "rows.jsonl", [good, '{"question": "Q", ', {"question": "no answer"}, good])
    stats = Gsm8kStats()
    with caplog.at_level(logging.WARNING):
        examples = load_gsm8k(path, stats=stats)
    assert [e.id for e in examples] == ["gsm8k-rows-0", "gsm8k-rows-3"]
    assert stats.skipped_rows == 2 and stats.examples == 2
    assert f"{path}:2: malformed JSON line skipped" in caplog.text
    assert f"{path}:3: row skipped" in caplog.text


def test_offset_and_limit(tmp_path):
    rows = [{"question": f"Q{i}", "answer": f"{i}+1 = <<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}"} for i in range(5)]
    path = write_jsonl(tmp_path, "five.jsonl", rows)
    assert [e.id for e in load_gsm8k(path, limit=2, offset=1)] == ["gsm8k-five-1", "gsm8k-five-2"]
    assert len(load_gsm8k(path)) == 5


def test_split_train_val_is_seeded_disjoint_and_complete():
    items = list(range(50))
    train, val = split_train_val(items, 10, seed=3)
    assert len(val) == 10 and len(train) == 40
    assert sorted(train + val) == items
    assert split_train_val(items, 10, seed=3) == (train, val)
    assert split_train_val(items, 10, seed=4)[1] != val
    with pytest.raises(ValueError):
        split_train_val(items, 51, seed=0)


# --------------------------------------------------------- user-supplied calls


def test_load_call_jsonl_reads_calls_and_results(tmp_path, caplog):
    text = "2 and 3 make 5, twice is 10"
    rows = [
        {
            "text": text,
            "calls": [{"tool": "multiply", "start": 25, "end": 27, "args": [5, 2]}, {"tool": "add", "start": 13, "end": 14}],
        },
        "{broken",
        {"text": "no calls here"},
    ]
    path = write_jsonl(tmp_path, "calls.jsonl", rows)
    with caplog.at_level(logging.WARNING):
        examples = load_call_jsonl(path, TOOLS)
    assert f"{path}:2: malformed JSON line skipped" in caplog.text
    assert len(examples) == 2 and examples[1].calls == []
    assert examples[0].calls == [
        ToolCall("add", (), "5", 13, 14),
        ToolCall("multiply", (5, 2), "10", 25, 27),
    ]


def test_load_call_jsonl_unknown_tool_names_file_line_and_known_tools(tmp_path):
    rows = [{"text": "abc 5", "calls": []}, {"text": "abc 5", "calls": [{"tool": "power", "start": 4, "end": 5}]}]
    path = write_jsonl(tmp_path, "calls.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_call_jsonl(path, TOOLS)
    message = str(info.value)
    assert message.startswith(f"{path}:2:")
    assert "'power'" in message and "add, subtract, multiply, divide" in message


@pytest.mark.parametrize("start, end", [(4, 9), (3, 3), (-1, 2), ("4", 5)])
def test_load_call_jsonl_bad_spans(tmp_path, start, end):
    path = write_jsonl(tmp_path, "calls.jsonl", [{"text": "abc 5", "calls": [{"tool": "add", "start": start, "end": end}]}])
    with pytest.raises(DataError, match=rf"^{path}:1: "):
        load_call_jsonl(path, TOOLS)


# ------------------------------------------------- the data folder (real or fixture)


def test_first_train_records_exact_spans(full_data_root):
    natalia, _, betty = load_gsm8k(full_data_root / TRAIN, limit=3)
    answer = natalia.text.split("\nAnswer: ", 1)[1]
    assert answer == "Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips altogether in April and May. #### 72"
    divide, add = natalia.calls
    assert (divide.tool, divide.args, divide.result) == ("divide", (48, 2), "24")
    assert (add.tool, add.args, add.result) == ("add", (48, 24), "72")
    assert natalia.text[divide.start - len("48/2 = ") : divide.end + 6] == "48/2 = 24 clips"
    assert natalia.text[add.start - len("48+24 = ") : add.end + 6] == "48+24 = 72 clips"
    assert natalia.ignore_spans == [] and natalia.meta["answer"] == "72"
    assert natalia.id == "gsm8k-train-0"

    # "100 - 50 - 30 - 15 = $<<100-50-30-15=5>>5": chained subtract is dropped,
    # and its shown result is excluded from the loss.
    assert [(c.tool, c.args) for c in betty.calls] == [("divide", (100, 2)), ("multiply", (15, 2))]
    ((start, end),) = betty.ignore_spans
    assert betty.text[start:end] == "5"
    assert betty.text[start - len("100 - 50 - 30 - 15 = $") : end + 5] == "100 - 50 - 30 - 15 = $5 more"


def test_every_kept_call_span_matches_on_first_500(data_root):
    examples = load_gsm8k(data_root / TRAIN, limit=500)
    assert len(examples) == min(500, count_lines(data_root / TRAIN))
    for example in examples:
        assert_spans_match(example)
        for start, end in example.ignore_spans:
            assert 0 <= start < end <= len(example.text)


def test_full_train_stats_are_consistent_and_silent(data_root, capsys, caplog):
    stats = Gsm8kStats()
    with caplog.at_level(logging.WARNING):
        examples = load_gsm8k(data_root / TRAIN, stats=stats)
    assert capsys.readouterr() == ("", "")
    assert caplog.records == []
    assert stats.examples == len(examples) == count_lines(data_root / TRAIN) and stats.skipped_rows == 0
    assert stats.calls_kept + stats.dropped_total == stats.annotations
    assert sum(stats.per_tool.values()) == stats.calls_kept == sum(len(e.calls) for e in examples)
    assert sum(len(e.ignore_spans) for e in examples) == stats.dropped_total - stats.dropped["no_result_span"]
    assert stats.multi_arg_calls == sum(len(c.args) > 2 for e in examples for c in e.calls) > 0
    assert all(n > 0 for n in stats.per_tool.values())
    assert stats.dropped["chained_sub_or_div"] > 0 and stats.dropped["mixed_operators"] > 0
    assert str(stats.calls_kept) in stats.summary()


def test_real_train_and_test_sizes(full_data_root):
    assert len(load_gsm8k(full_data_root / TRAIN)) == 7473
    assert len(load_gsm8k_xl_test(full_data_root / XL_TEST)) == 568


def test_xl_test_placeholders_filled(data_root):
    path = data_root / XL_TEST
    items = load_gsm8k_xl_test(path)
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(items) == len(records)
    first = items[0]
    assert str(records[0]["enhanced_v"][0]) in first["question"] and first["label"] == records[0]["enhanced_result"]
    assert first["id"] == "gsm8k-xl-test-0"
    assert not [item["id"] for item in items if "{v_" in item["question"]]
    assert "1.0" not in items[0]["question"]  # integral values printed as ints
    assert len(load_gsm8k_xl_test(path, limit=3)) == 3


def test_xl_test_first_record(full_data_root):
    first = load_gsm8k_xl_test(full_data_root / XL_TEST, limit=1)[0]
    assert "4096" in first["question"] and first["label"] == 32040.0


def test_xl_test_fallback_and_missing_value(tmp_path):
    rows = [
        {"question": "{v_1} and {v_2} and {v_1}", "v": [2.0, "gas"], "enhanced_v": [8.0], "enhanced_result": 1.0},
        {"question": "{v_3}", "v": [1.0], "enhanced_v": [1], "enhanced_result": 1.0},
    ]
    path = write_jsonl(tmp_path, "test.json", rows)
    assert load_gsm8k_xl_test(path, limit=1)[0]["question"] == "8 and gas and 8"
    with pytest.raises(DataError, match=r"record 1: placeholder \{v_3\}"):
        load_gsm8k_xl_test(path)


def test_tecton_val_reads_every_call(data_root):
    items = load_tecton_val(data_root / TECTON_VAL)
    assert len(items) == len(json.loads((data_root / TECTON_VAL).read_text(encoding="utf-8")))
    assert [item["id"] for item in items[:2]] == ["tecton-val-0", "tecton-val-1"]
    for item in items:
        assert isinstance(item["label"], float) and item["calls"]
        for tool, args, result in item["calls"]:
            assert tool in TOOLS and args and all(isinstance(a, (int, float)) for a in args) and result


def test_tecton_val_calls(full_data_root):
    items = load_tecton_val(full_data_root / TECTON_VAL, limit=2)
    assert items[0]["label"] == 11.0
    assert items[0]["calls"] == [("multiply", (3, 3), "9"), ("subtract", (20, 9), "11")]
    assert items[1]["calls"][-1] == ("add", (5, 11, 33, 66), "115")


def test_tecton_val_unknown_tool(tmp_path):
    rows = [
        {"question": "q", "answer": "9", "calculation": ["<multiply>(3, 3)=9"]},
        {"question": "q", "answer": "8", "calculation": ["<power>(2, 3)=8"]},
    ]
    path = tmp_path / "val.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_tecton_val(path)
    assert str(path) in str(info.value) and "record 1" in str(info.value) and "'power'" in str(info.value)


def test_load_call_jsonl_overlapping_calls_and_ignore_spans(tmp_path):
    overlap = {"text": "12345", "calls": [{"tool": "add", "start": 0, "end": 3}, {"tool": "add", "start": 2, "end": 4}]}
    path = write_jsonl(tmp_path, "overlap.jsonl", [overlap])
    with pytest.raises(DataError, match=rf"^{path}:1: .*overlap"):
        load_call_jsonl(path, TOOLS)
    ok = {"text": "12345", "calls": [], "ignore_spans": [[1, 3]], "id": "x", "meta": {"k": 1}}
    (example,) = load_call_jsonl(write_jsonl(tmp_path, "ok.jsonl", [ok]), TOOLS)
    assert (example.id, example.ignore_spans, example.meta) == ("x", [(1, 3)], {"k": 1})

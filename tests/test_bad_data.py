"""Hostile data files: bytes that are not UTF-8, JSON nested past Python's
parser, lone surrogates, wrongly typed fields and empty evaluation files.
Each must end in a DataError (or, in tolerant training reads, a logged and
counted skip) that names the file and the line, never a bare Python error."""

import json
import logging
from pathlib import Path

import pytest

from toolken_plus.data.examples import DataError
from toolken_plus.data.jsonl import JsonlStats, read_json_or_jsonl, read_jsonl
from toolken_plus.tasks import metatool
from toolken_plus.tasks.gsm8k import TOOLS, Gsm8kStats, load_call_jsonl, load_gsm8k, load_gsm8k_xl_test, load_tecton_val

GOOD_XL = {"question": "What is {v_1} plus 2?", "v": [1.0], "enhanced_v": [40.0], "enhanced_result": 42.0}
GOOD_TECTON = {"question": "What is 3 times 3?", "answer": "9", "calculation": ["<multiply>(3, 3)=9"]}
GOOD_TRAIN = {"question": "Q", "answer": "1+1 = <<1+1=2>>2\n#### 2"}
DEEP = "[" * 100000  # RecursionError in json.loads
SURROGATE = '{"question": "half an emoji \\ud800", "answer": "1"}'  # a JSON escape, not a character
BAD_UTF8 = b'{"question": "caf\xe9", "answer": "1"}'  # Latin-1 e-acute


def write_lines(tmp_path: Path, name: str, lines: list) -> Path:
    """dicts as JSON, str verbatim, bytes as raw bytes (to write invalid UTF-8)."""
    raw = [r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode() for r in lines]
    path = tmp_path / name
    path.write_bytes(b"\n".join(raw) + b"\n")
    return path


# ------------------------------------------------------------ the JSONL reader
@pytest.mark.parametrize("bad, reason", [(BAD_UTF8, "not UTF-8: byte 0xe9 at byte offset 17"),
                                         (DEEP, "nested too deeply"),
                                         (SURROGATE, "lone surrogate in question")])
def test_tolerant_jsonl_skips_a_bad_line_naming_it_and_strict_raises(tmp_path, caplog, bad, reason):
    path = write_lines(tmp_path, "rows.jsonl", [{"a": 1}, bad, {"a": 3}])
    stats = JsonlStats()
    with caplog.at_level(logging.WARNING, logger="toolken_plus.data.jsonl"):
        rows = list(read_jsonl(path, stats=stats))
    assert [line for line, _ in rows] == [1, 3] and stats == JsonlStats(read=2, skipped=1)
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith(f"{path}:2: malformed JSON line skipped (") and reason in message
    with pytest.raises(DataError, match=rf"^{path}:2: malformed JSON line \(") as err:
        list(read_jsonl(path, strict=True))
    assert reason in str(err.value)


def test_lone_surrogate_is_found_deep_in_a_record_and_real_pairs_pass(tmp_path):
    nested = '{"text": "ok", "calls": [{"tool": "\\udfff", "start": 0, "end": 1}]}'
    emoji = '{"text": "\\ud83d\\ude00 and \\u00e9"}'  # an escaped pair is one real character
    path = write_lines(tmp_path, "rows.jsonl", [nested, emoji])
    with pytest.raises(DataError, match=r"lone surrogate in calls\[0\]\.tool"):
        list(read_jsonl(path, strict=True))
    assert [r for _, r in read_jsonl(path)] == [{"text": "\U0001f600 and \u00e9"}]


def test_invalid_utf8_at_the_start_of_a_json_lines_file(tmp_path):
    path = write_lines(tmp_path, "rows.json", [b"\xff\xfe{}", {"a": 2}])  # format sniffing must not decode
    assert read_json_or_jsonl(path) == [{"a": 2}]


# ------------------------------------------------------------ whole JSON files
def test_json_array_not_utf8_names_line_and_byte_offset(tmp_path):
    path = tmp_path / "val.json"
    path.write_bytes(b'[\n  {"q": 1},\n  {"q": "caf\xe9"}\n]')
    with pytest.raises(DataError, match=rf"^{path}:3: not UTF-8: byte 0xe9 at byte offset 26 of the file"):
        read_json_or_jsonl(path)


def test_json_array_too_deep_or_with_a_lone_surrogate(tmp_path, caplog):
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP)
    with pytest.raises(DataError, match=rf"^{deep}: JSON nested too deeply"):
        read_json_or_jsonl(deep)
    surrogate = tmp_path / "s.json"
    surrogate.write_text('[{"q": "fine"}, {"q": "\\ud800"}]')
    stats = JsonlStats()
    with caplog.at_level(logging.WARNING):
        assert read_json_or_jsonl(surrogate, stats=stats) == [{"q": "fine"}]
    assert stats.skipped == 1 and f"{surrogate}:[1]: item skipped (lone surrogate in q" in caplog.text
    with pytest.raises(DataError, match=rf"^{surrogate}:\[1\]: item \(lone surrogate in q"):
        read_json_or_jsonl(surrogate, strict=True)


# ------------------------------------------------------ evaluation loaders fail
@pytest.mark.parametrize("field, value, reason", [
    ("enhanced_result", "seven", "'enhanced_result' must be a number, got str 'seven'"),
    ("enhanced_result", None, "'enhanced_result' must be a number, got null"),
    ("enhanced_result", True, "'enhanced_result' must be a number"),
    ("question", 5, "'question' must be a string, got int 5"),
    ("enhanced_v", "40", "'enhanced_v' must be a list"),
])
def test_xl_test_bad_field_names_file_line_and_record(tmp_path, field, value, reason):
    path = write_lines(tmp_path, "test.json", [GOOD_XL, {**GOOD_XL, field: value}])
    with pytest.raises(DataError) as err:
        load_gsm8k_xl_test(path)
    assert str(err.value).startswith(f"{path}:2: record 1: {reason}")


@pytest.mark.parametrize("bad", [BAD_UTF8, DEEP, SURROGATE, "{broken"])
def test_xl_test_never_skips_a_malformed_line(tmp_path, bad):
    path = write_lines(tmp_path, "test.json", [GOOD_XL, bad, GOOD_XL])
    with pytest.raises(DataError, match=rf"^{path}:2: "):
        load_gsm8k_xl_test(path)


@pytest.mark.parametrize("content", ["", "\n  \n\n", "[]"])
def test_eval_file_without_questions_is_an_error(tmp_path, content):
    path = tmp_path / "test.json"
    path.write_text(content)
    for load in (load_gsm8k_xl_test, load_tecton_val):
        with pytest.raises(DataError, match=rf"^no questions in {path}$"):
            load(path)


@pytest.mark.parametrize("field, value, reason", [
    ("answer", "seven", "answer 'seven' is not a number"),
    ("answer", None, "answer None is not a number"),
    ("answer", "nan", "answer 'nan' is not a number"),
    ("question", ["What?"], "'question' must be a string, got list ['What?']"),
    ("calculation", "<add>(1, 2)=3", "'calculation' must be a list"),
    ("calculation", [7], "calculation 7 is not of the form"),
])
def test_tecton_val_bad_field_names_file_and_record(tmp_path, field, value, reason):
    path = tmp_path / "val.json"
    path.write_text(json.dumps([GOOD_TECTON, {**GOOD_TECTON, field: value}]))
    with pytest.raises(DataError) as err:
        load_tecton_val(path)
    assert str(err.value).startswith(f"{path}: record 1: {reason}")
    assert load_tecton_val(path, limit=1)[0]["label"] == 9.0


def test_tecton_val_rows_are_checked_in_json_lines_too(tmp_path):
    path = write_lines(tmp_path, "val.jsonl", [GOOD_TECTON, {**GOOD_TECTON, "answer": 12}, {**GOOD_TECTON, "answer": False}])
    with pytest.raises(DataError, match=rf"^{path}:3: record 2: answer False is not a number"):
        load_tecton_val(path)
    assert [item["label"] for item in load_tecton_val(path, limit=2)] == [9.0, 12.0]


# ----------------------------------------------- training loaders skip and count
def test_gsm8k_train_skips_undecodable_deep_and_surrogate_lines(tmp_path, caplog):
    path = write_lines(tmp_path, "train.jsonl", [GOOD_TRAIN, BAD_UTF8, DEEP, SURROGATE, GOOD_TRAIN])
    stats = Gsm8kStats()
    with caplog.at_level(logging.WARNING):
        examples = load_gsm8k(path, stats=stats)
    assert [e.id for e in examples] == ["gsm8k-train-0", "gsm8k-train-4"] and stats.skipped_rows == 3
    for line in (2, 3, 4):
        assert f"{path}:{line}: malformed JSON line skipped" in caplog.text


def test_call_jsonl_skips_a_lone_surrogate_text(tmp_path, caplog):
    path = write_lines(tmp_path, "calls.jsonl", ['{"text": "5 \\udc00", "calls": []}', {"text": "fine", "calls": []}])
    with caplog.at_level(logging.WARNING):
        (example,) = load_call_jsonl(path, TOOLS)
    assert example.text == "fine" and f"{path}:1: malformed JSON line skipped (lone surrogate in text" in caplog.text


# ------------------------------------------------------------------ MetaTool files
def test_metatool_csv_not_utf8_names_line_and_byte_offset(tmp_path):
    path = tmp_path / "q.csv"
    path.write_bytes(b"Query,Tool\nWeather in Paris,WeatherTool\nCaf\xe9 near me?,WeatherTool\n")
    with pytest.raises(DataError, match=rf"^{path}:3: not UTF-8: byte 0xe9 at byte offset 43 of the file"):
        metatool.load_queries_csv(path, {"WeatherTool"})


def test_metatool_json_files_not_utf8_or_with_lone_surrogates(tmp_path):
    docs = tmp_path / "plugin_des.json"
    docs.write_bytes(b'{\n "WeatherTool": "Weather \xff"\n}')
    with pytest.raises(DataError, match=rf"^{docs}:2: not UTF-8"):
        metatool.load_tool_docs(docs)
    docs.write_text('{"WeatherTool": "Weather \\ud800"}')
    with pytest.raises(DataError, match=rf"^{docs}: lone surrogate in WeatherTool"):
        metatool.load_tool_docs(docs)
    awareness = tmp_path / "Task1.json"
    awareness.write_text('[{"query": "Hi \\ud800", "label": "negative"}]')
    with pytest.raises(DataError, match=rf"^{awareness}:\[0\]: item \(lone surrogate in query"):
        metatool.load_awareness(awareness, {"WeatherTool"})

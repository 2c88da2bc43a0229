"""Tests for the tolerant JSON Lines readers."""

import json
import logging
from pathlib import Path

import pytest

from toolken_plus.data.examples import DataError
from toolken_plus.data.jsonl import JsonlStats, read_json_or_jsonl, read_jsonl


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_yields_line_numbers_and_skips_blank_lines_silently(tmp_path, caplog):
    path = write(tmp_path, "ok.jsonl", '{"a": 1}\n\n   \n{"a": 2}\n')
    stats = JsonlStats()
    with caplog.at_level(logging.WARNING):
        rows = list(read_jsonl(path, stats=stats))
    assert rows == [(1, {"a": 1}), (4, {"a": 2})]
    assert stats == JsonlStats(read=2, skipped=0)
    assert caplog.records == []


def test_malformed_lines_are_logged_with_line_number_skipped_and_counted(tmp_path, caplog):
    path = write(tmp_path, "bad.jsonl", '{"a": 1}\n{"a": \n[1, 2]\n{"a": 4}\n')
    stats = JsonlStats()
    with caplog.at_level(logging.WARNING, logger="toolken_plus.data.jsonl"):
        rows = list(read_jsonl(path, stats=stats))
    assert [line for line, _ in rows] == [1, 4]
    assert stats == JsonlStats(read=2, skipped=2)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2  # exactly once per bad line
    assert messages[0].startswith(f"{path}:2: malformed JSON line skipped (")
    assert messages[1].startswith(f"{path}:3: malformed JSON line skipped (")
    assert "object" in messages[1]


def test_strict_mode_raises_data_error_naming_file_and_line(tmp_path):
    path = write(tmp_path, "bad.jsonl", '{"a": 1}\nnot json\n')
    with pytest.raises(DataError, match=rf"^{path}:2: "):
        list(read_jsonl(path, strict=True))


def test_missing_file_names_path_and_config_key(tmp_path):
    missing = tmp_path / "nowhere" / "train.jsonl"
    with pytest.raises(FileNotFoundError) as info:
        read_jsonl(missing)  # raises on the call, not on first iteration
    assert str(missing) in str(info.value)
    assert "data.root" in str(info.value)


def test_json_or_jsonl_accepts_both_formats(tmp_path):
    records = [{"q": 1}, {"q": 2}]
    array = write(tmp_path, "a.json", "  \n" + json.dumps(records, indent=2))
    lines = write(tmp_path, "b.json", "\n".join(json.dumps(r) for r in records) + "\n")
    assert read_json_or_jsonl(array) == records
    assert read_json_or_jsonl(lines) == records


def test_json_array_problems(tmp_path, caplog):
    broken = write(tmp_path, "broken.json", '[{"q": 1},\n {"q": ]')
    with pytest.raises(DataError, match=rf"^{broken}:2: malformed JSON"):
        read_json_or_jsonl(broken)
    mixed = write(tmp_path, "mixed.json", '[{"q": 1}, 5]')
    stats = JsonlStats()
    with caplog.at_level(logging.WARNING):
        assert read_json_or_jsonl(mixed, stats=stats) == [{"q": 1}]
    assert stats == JsonlStats(read=1, skipped=1)
    assert f"{mixed}:[1]:" in caplog.text
    with pytest.raises(DataError):
        read_json_or_jsonl(mixed, strict=True)


def test_data_files_one_of_each_format(data_root):
    lines = data_root / "gsm8k-xl" / "test.json"  # JSON Lines despite its name
    array = data_root / "gsm8k-xl" / "tecton_val.json"
    assert lines.read_text().lstrip().startswith("{") and array.read_text().lstrip().startswith("[")
    assert len(read_json_or_jsonl(lines)) == len([x for x in lines.read_text().splitlines() if x.strip()]) > 1
    assert read_json_or_jsonl(array) == json.loads(array.read_text()) != []


def test_real_files_one_of_each_format(full_data_root):
    assert len(read_json_or_jsonl(full_data_root / "gsm8k-xl" / "test.json")) == 568  # JSON Lines
    assert len(read_json_or_jsonl(full_data_root / "gsm8k-xl" / "tecton_val.json")) == 1000  # array

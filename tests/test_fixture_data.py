"""The synthetic data fixture (tests/fixtures/data): small, in the layout and
formats of the real data folder, not copied from it; and the conftest logic
that chooses between the two."""

import csv
import json
from pathlib import Path

import conftest
from conftest import DATA_ROOT, FIXTURE_DATA

from toolken_plus.config import default_data_root
from toolken_plus.data.prompts import FewShotPrompt


def _fixture_files() -> list[Path]:
    return sorted(p for p in FIXTURE_DATA.rglob("*") if p.is_file() and p.name != "README.md")


def _records(path: Path):
    """A JSON file's content, or the list of records of a JSON Lines file."""
    return _read(path)[1]


def _read(path: Path) -> tuple[str, object]:
    text = path.read_text(encoding="utf-8")
    try:
        return "json", json.loads(text)
    except json.JSONDecodeError:  # several values: JSON Lines
        return "jsonl", [json.loads(line) for line in text.splitlines() if line.strip()]


def _shape(path: Path):
    """What a reader relies on: JSON Lines or not, record fields, value types,
    CSV header, a template's header line and question slot."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".txt":
        return "template", text.splitlines()[0], FewShotPrompt.from_text(text).question_format
    if path.suffix == ".csv":
        return "csv", next(csv.reader(text.splitlines()))
    kind, data = _read(path)
    if isinstance(data, list):  # records: the fields each one has
        return ("jsonl" if kind == "jsonl" else "array"), sorted({tuple(sorted(r)) for r in data})
    inner = {tuple(v) if isinstance(v, dict) else type(v).__name__ for v in data.values()}
    return "object", sorted(inner, key=str)


# ----------------------------------------------------------------- always
def test_fixture_is_small_and_documented():
    assert sum(p.stat().st_size for p in _fixture_files()) < 100_000
    readme = (FIXTURE_DATA / "README.md").read_text()
    assert "synthetic" in readme.lower()
    for p in _fixture_files():  # the README lists every file
        assert p.name in readme, p


def test_the_fixture_is_chosen_only_where_the_data_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("TOOLKEN_PLUS_DATA", str(tmp_path / "missing"))  # set, but not there
    assert conftest._full_data_root() is None
    monkeypatch.setenv("TOOLKEN_PLUS_DATA", str(FIXTURE_DATA))  # what conftest sets when it falls back
    assert conftest._full_data_root() is None
    monkeypatch.setenv("TOOLKEN_PLUS_DATA", str(tmp_path))
    assert conftest._full_data_root() == tmp_path
    monkeypatch.delenv("TOOLKEN_PLUS_DATA")
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path / "no_shared_data")  # ../shared/data missing
    assert conftest._full_data_root() is None
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path)
    assert conftest._full_data_root() == tmp_path


def test_every_default_reads_the_chosen_data_root(data_root):
    assert data_root == DATA_ROOT and default_data_root() == DATA_ROOT  # data.root unset, in process and in subprocesses
    assert (data_root / "gsm8k" / "train.jsonl").is_file()


# ------------------------------------------------------ against the real data
def test_fixture_has_the_layout_and_formats_of_the_real_data(full_data_root):
    for path in _fixture_files():
        real = full_data_root / path.relative_to(FIXTURE_DATA)
        assert real.is_file(), f"{path.relative_to(FIXTURE_DATA)} is not in the real data"
        mine, theirs = _shape(path), _shape(real)
        if mine[0] in ("jsonl", "array"):  # the fixture's records have fields the real ones have
            assert mine[0] == theirs[0] and set(mine[1]) <= set(theirs[1]), (path, mine, theirs)
        else:
            assert mine == theirs, (path, mine, theirs)
    for name in ("tecton_doc_dict.json", "func_dict.json"):
        assert _records(FIXTURE_DATA / "gsm8k-xl" / name).keys() == _records(full_data_root / "gsm8k-xl" / name).keys()


def test_fixture_content_is_synthetic(full_data_root):
    """Nothing of the real files' text is in the fixture (the ToolkenGPT
    templates have no stated licence): no question, query, demo or tool name."""
    real_questions = {json.loads(line)["question"] for name in ("train.jsonl", "test.jsonl")
                      for line in (full_data_root / "gsm8k" / name).read_text().splitlines() if line.strip()}
    real_questions |= {r["question"] for r in _records(full_data_root / "gsm8k-xl" / "test.json")}
    mine = [json.loads(line)["question"] for line in (FIXTURE_DATA / "gsm8k" / "train.jsonl").read_text().splitlines()]
    mine += [r["question"] for r in _records(FIXTURE_DATA / "gsm8k-xl" / "test.json")]
    assert not set(mine) & real_questions

    def demo_lines(folder: Path) -> set[str]:
        return {line for p in (folder / "gsm8k-xl" / "template").glob("*.txt") for line in p.read_text().splitlines()
                if line.startswith(("Question: ", "Answer: ")) and "[QUESTION]" not in line and line != "Answer:"}

    assert not demo_lines(FIXTURE_DATA) & demo_lines(full_data_root)
    docs = lambda root: {v for d in _records(root / "gsm8k-xl" / "tecton_doc_dict.json").values() for v in d.values()}  # noqa: E731
    assert not docs(FIXTURE_DATA) & docs(full_data_root)

    real_queries = {r["Query"] for r in csv.DictReader((full_data_root / "metatool/data/all_clean_data.csv").open())}
    real_queries |= {r["query"] for r in _records(full_data_root / "metatool/tmp_dataset/Task1.json")}
    my_queries = {r["Query"] for r in csv.DictReader((FIXTURE_DATA / "metatool/data/all_clean_data.csv").open())}
    my_queries |= {r["query"] for r in _records(FIXTURE_DATA / "metatool/tmp_dataset/Task1.json")}
    assert not my_queries & real_queries
    assert not _records(FIXTURE_DATA / "metatool/plugin_des.json").keys() & _records(full_data_root / "metatool/plugin_des.json").keys()

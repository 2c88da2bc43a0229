"""`toolken-plus report`: fake run dirs in, one markdown report with tables and PNGs out."""

import json

import pytest

from toolken_plus.adapter.config import ToolEntry, ToolkenConfig
from toolken_plus.cli import commands
from toolken_plus.cli.report import collect, main, render
from toolken_plus.tasks.gsm8k_xl import Gsm8kXL


def _run(root, name, **metrics):
    d = root / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps(metrics))
    return d


def _runs(root):
    """Two GSM8K-XL infer runs (ICL, and ToolkenGPT from before the method key) and a gold
    run, a VirtualHome run that answered fewer plans than the other, a LoRA and an old-style
    Toolken+ train run (task and reranker only in its toolken_config.json)."""
    _run(root, "gsm/icl", task="gsm8k_xl", setting="toolkens", method="icl", reranker="none", eval="test", n=10,
         accuracy=0.25, tool_calls=4, tool_errors=0, false_positive_calls=1, seconds=12.5)
    _run(root, "gsm/old", task="gsm8k_xl", setting="toolkens", reranker="none", n=10,  # no method, no eval
         accuracy=0.4, tool_calls=9, tool_errors=1, false_positive_calls=2, seconds=30.0)
    _run(root, "gsm/gold", task="gsm8k_xl", setting="gold", eval="test", n=10, accuracy=1.0, seconds=1.0)
    _run(root, "vh/a", task="virtualhome", setting="toolkens", reranker="llm", grounded=True, eval="test", n=50,
         executability=1.0, success_rate=0.28, lcs=0.362, seconds=409.1)
    _run(root, "vh/b", task="virtualhome", setting="toolkens", reranker="none", eval="test", n=20,
         executability=0.78, success_rate=0.24, lcs=0.452, seconds=126.7)
    _run(root, "train/lora", task="gsm8k_xl", method="lora", epochs=2, **{
        "cost/train_seconds": 95.25, "cost/trainable_params": 460800, "cost/peak_memory_mb": 1234.4,
        "cost/examples_per_s": 21.04})
    old = _run(root, "train/toolkens", epochs=10, **{"time/train_cache_build_s": 200.0, "time/train_epochs_s": 20.5,
                                                     "time/reranker_s": 100.0})
    ToolkenConfig([ToolEntry("add")], 8, reranker={"name": "llm", "k": 3}, task={"name": "gsm8k_xl"}).save(old)


def _table(markdown, heading):
    """The table rows under `## heading` (header row first)."""
    return markdown.split(f"{heading}\n\n", 1)[1].split("\n\n", 1)[0].splitlines()


def test_a_table_per_benchmark_and_a_cost_table(tmp_path):
    _runs(tmp_path / "runs")
    (tmp_path / "runs" / "broken").mkdir()
    (tmp_path / "runs" / "broken" / "metrics.json").write_text("{not json")
    _run(tmp_path / "runs", "other", some="json")  # neither an infer nor a train run: ignored
    infer, train, skipped = collect([tmp_path / "runs"])
    assert (len(infer), len(train), len(skipped)) == (5, 2, 1)
    md = render(infer, train, tmp_path / "out", skipped)

    gsm = _table(md, "## GSM8K-XL test")
    assert gsm[0] == "| method | questions | accuracy | tool calls | tool errors | false-positive calls | wall s | run dir |"
    # gold first, then toolkens (the run without a method key is ToolkenGPT), then ICL
    assert [row.split(" | ")[0] for row in gsm[2:]] == ["| gold", "| ToolkenGPT", "| in-context (ICL)"]
    assert gsm[3].startswith("| ToolkenGPT | 10 | 0.400 | 9 | 1 | 2 | 30.0 | `")
    assert gsm[3].endswith("gsm/old` |") and gsm[4].startswith("| in-context (ICL) | 10 | 0.250 | 4 | 0 | 1 | 12.5 |")
    assert "different numbers" not in md.split("## GSM8K-XL test")[1].split("##")[0]
    assert Gsm8kXL.eval_conditions in md.split("## GSM8K-XL test")[1].split("##")[0]  # what every row shares

    vh = _table(md, "## VirtualHome test")
    assert vh[0].startswith("| method | plans | executability | success | LCS |")
    assert vh[2].startswith("| Toolken+ (llm), grounded | 50 | 1.000 | 0.280 | 0.362 |")
    assert vh[3].startswith("| ToolkenGPT | 20 | 0.780 | 0.240 | 0.452 |")
    assert "Not comparable: these runs answered different numbers of questions (n = 20, 50)." in md

    cost = _table(md, "### GSM8K-XL")
    assert cost[0] == "| method | reranker | epochs | train s | trainable params | peak MB | examples/s | run dir |"
    assert cost[2].startswith("| Toolken+ (llm) | llm | 10 | 320.5 |  |  |  | `")  # phase times summed
    assert cost[3].startswith("| LoRA | none | 2 | 95.2 | 460,800 | 1234 | 21.0 | `")

    assert "## Skipped files" in md and "broken/metrics.json`: JSONDecodeError" in md
    for png in ("gsm8k_xl_test.png", "virtualhome_test.png", "training_cost.png"):
        assert (tmp_path / "out" / png).stat().st_size > 0 and f"]({png})" in md


def test_main_writes_the_report_and_the_cli_has_the_command(tmp_path, capsys):
    _runs(tmp_path / "runs")
    out = tmp_path / "out"
    assert commands.main(["report", str(tmp_path / "runs"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out / 'report.md'}" in printed and "## VirtualHome test" in printed
    assert (out / "report.md").read_text().startswith("# Toolken+ report")


def test_no_runs_is_exit_status_2(tmp_path, capsys):
    (tmp_path / "empty" / "x").mkdir(parents=True)
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert "no metrics.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_help_exits_0():
    with pytest.raises(SystemExit) as stop:
        commands.main(["report", "--help"])
    assert stop.value.code == 0

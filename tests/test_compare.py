import json

import pytest

from toolken_plus.cli.compare import table
from toolken_plus.tasks.base import EvalItem
from toolken_plus.tasks.gsm8k_xl import Gsm8kXL, false_positive_calls


def _run(tmp_path, name, **metrics):
    d = tmp_path / name
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps(metrics))
    return d


def test_table_lists_each_setting(tmp_path):
    a = _run(tmp_path, "a", setting="no_tools", n=10, accuracy=0.1, tool_calls=0, tool_errors=0, false_positive_calls=0, seconds=5)
    b = _run(tmp_path, "b", setting="toolkens", n=10, accuracy=0.25, tool_calls=31, tool_errors=2, false_positive_calls=7, seconds=9)
    out = table([a, b]).splitlines()
    assert len(out) == 4 and "| no tools | 10 | 0.100 |" in out[2] and "| ToolkenGPT | 10 | 0.250 | 31 | 2 | 7 | 9 |" == out[3]
    p = _run(tmp_path, "p", setting="toolkens", reranker="llm", rerank_rejects=3, n=10, accuracy=0.2)
    assert "| Toolken+ (llm), 3 rejects | 10 | 0.200 |" in table([a, p]).splitlines()[3]
    c = _run(tmp_path, "c", setting="x", n=11, accuracy=0.0)
    with pytest.raises(ValueError, match="not comparable"):
        table([a, c])


def test_a_task_names_its_own_columns(tmp_path):
    g = _run(tmp_path, "g", task="virtualhome", setting="gold", n=5, executability=1.0, success_rate=1.0, lcs=1.0)
    t = _run(tmp_path, "t", task="virtualhome", setting="toolkens", grounded=True, reranker="llm", n=5,
             executability=1.0, success_rate=0.4, lcs=0.5, rerank_changed_step=3)
    out = table([g, t]).splitlines()
    assert out[0].startswith("| setting | plans | executability | success | LCS |")
    assert out[2].startswith("| gold | 5 | 1.000 | 1.000 | 1.000 |")
    assert out[3].startswith("| Toolken+ (llm), grounded | 5 | 1.000 | 0.400 | 0.500 |")


def test_false_positive_calls_is_the_multiset_excess():
    assert false_positive_calls(["add", "multiply", "multiply"], ["multiply", "subtract"]) == 2
    assert false_positive_calls([], ["add"]) == 0
    assert false_positive_calls(["add"], []) == 1


def test_score_counts_rerank_rejects_and_changed_tools():
    from toolken_plus.infer.agent import AgentResult

    reranks = [{"candidates": ["add", "multiply"], "chosen": None},      # Reject
               {"candidates": ["add", "multiply"], "chosen": "multiply"},  # changed
               {"candidates": ["add", "multiply"], "chosen": "add"}]       # kept stage 1's top-1
    res = AgentResult("q", "text", "text", [], 3.0, "answer", 5, reranks)
    task = Gsm8kXL()
    m = task.metrics([task.score(EvalItem("q0", "q", 3.0), res)])
    assert (m["rerank_decisions"], m["rerank_rejects"], m["rerank_changed_tool"]) == (3, 1, 1)

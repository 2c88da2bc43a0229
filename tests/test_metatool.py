"""MetaTool: data split, choice encoding, the prefix-reusing cache, and the
train → infer path with both rerankers on a tiny random backbone."""

import json
from collections import Counter, defaultdict

import pytest
import torch

from toolken_plus.backbone import TinyRandomBackbone
from toolken_plus.config.schema import AgentConfig, DataConfig, InferConfig, TrainConfig, TrainerConfig
from toolken_plus.data.encoding import IGNORE, VOCAB
from toolken_plus.data.examples import DataError
from toolken_plus.rerank import EmbeddingRerank, LLMRerank
from toolken_plus.tasks import metatool
from toolken_plus.tasks.metatool import MetaTool, choice_metrics
from toolken_plus.train.cache import build_feature_cache
from toolken_plus.train.recipe import TrainToolkensRecipe

TASK = MetaTool()


@pytest.fixture(scope="module")
def split(data_root):
    return TASK.split(data_root)


def test_split_is_disjoint_stratified_and_awareness_balanced(split, data_root):
    q = lambda xs: {x.query for x in xs}  # noqa: E731
    assert not (q(split.train) & q(split.test)) and not (q(split.train) & q(split.val))
    assert not (q(split.train) & q(split.awareness_test)) and not (q(split.val) & q(split.awareness_test))
    docs = metatool.load_tool_docs(data_root / TASK.docs_file)
    queries = metatool.load_queries_csv(data_root / TASK.data_file, docs)
    awareness = metatool.load_awareness(data_root / TASK.awareness_file, docs)
    norm = lambda text: " ".join(text.split())  # noqa: E731
    held, tools_of = {norm(a.query) for a in awareness}, defaultdict(set)
    for x in queries:
        tools_of[norm(x.query)].add(x.tool)
    per_tool = Counter(next(iter(t)) for query, t in tools_of.items() if query not in held and len(t) == 1)
    assert {x.tool for x in split.test} == {t for t, n in per_tool.items() if n >= 3}  # every tool with >= 3 queries
    negatives = sum(a.tool is None for a in awareness)
    assert sum(x.tool is None for x in split.awareness_test) == sum(x.tool is not None for x in split.awareness_test) == negatives // 2
    assert sum(x.tool is None for x in split.train) > 0 and sum(x.tool is None for x in split.val) > 0
    again = TASK.split(data_root)
    assert [x.id for x in again.test] == [x.id for x in split.test]  # seeded


def test_real_split_sizes(full_data_root):
    split = TASK.split(full_data_root)
    assert len(metatool.load_tool_docs(full_data_root / TASK.docs_file)) == 199
    assert len({x.tool for x in split.test}) >= 190  # every tool with >= 3 queries has test queries
    assert sum(x.tool is None for x in split.awareness_test) == sum(x.tool is not None for x in split.awareness_test) == 260


def test_choice_encoding_labels_only_the_choice_point(smol_tokenizer):
    exs = [metatool.ChoiceExample("a", "What's the weather?", "WeatherTool"), metatool.ChoiceExample("b", "Hi there", None)]
    enc = metatool.encode_choices(smol_tokenizer, exs, {"WeatherTool": 3})
    assert smol_tokenizer.decode(enc[0].input_ids).endswith("Tool:")
    assert enc[0].tool_label[-1] == 3 and enc[1].tool_label[-1] == VOCAB
    assert (enc[0].tool_label[:-1] == IGNORE).all()
    none_id = smol_tokenizer(" None", add_special_tokens=False)["input_ids"][0]
    assert enc[1].next_token[-1] == none_id


def test_query_csv_reads_none_and_names_bad_rows(tmp_path):
    f = tmp_path / "q.csv"
    f.write_text("Query,Tool\nWhat's up?,None\nWeather in Paris,WeatherTool\n")
    rows = metatool.load_queries_csv(f, {"WeatherTool"})
    assert [r.tool for r in rows] == [None, "WeatherTool"]
    f.write_text("Query,Tool\nok,WeatherTool\nbad,NoSuchTool\n")
    with pytest.raises(DataError, match=r"q.csv:3: unknown tool 'NoSuchTool'"):
        metatool.load_queries_csv(f, {"WeatherTool"})


@pytest.mark.parametrize("row, reason", [("Weather in Paris,", "empty Tool cell"),  # was read as "no tool"
                                         ("Weather in Paris", "no Tool cell")])  # the column is missing
def test_query_csv_missing_tool_is_an_error_not_no_tool(tmp_path, row, reason):
    f = tmp_path / "q.csv"
    f.write_text(f"Query,Tool\nok,WeatherTool\n{row}\nfine,None\n")
    with pytest.raises(DataError, match=rf"^{f}:3: {reason} \(write None when the query needs no tool\)"):
        metatool.load_queries_csv(f, {"WeatherTool"})


@pytest.mark.parametrize("spelling", ["none", "null", "NONE"])
def test_query_csv_only_the_literal_None_means_no_tool(tmp_path, spelling):
    f = tmp_path / "q.csv"
    f.write_text(f"Query,Tool\nHi there, None \nWhat's up?,{spelling}\n")
    with pytest.raises(DataError, match=rf"q.csv:3: unknown tool '{spelling}' .*None means no tool"):
        metatool.load_queries_csv(f, {"WeatherTool"})
    assert metatool.load_queries_csv(f, {"WeatherTool", spelling})[1].tool == spelling  # a tool may be named so


def test_query_csv_names_the_file_line_after_a_multiline_query(tmp_path):
    f = tmp_path / "q.csv"
    f.write_text('Query,Tool\n"Weather in\nParis",WeatherTool\nok,\n')
    with pytest.raises(DataError, match=rf"^{f}:4: empty Tool cell"):
        metatool.load_queries_csv(f, {"WeatherTool"})
    f.write_text('Query,Tool\n"Weather in\nParis",WeatherTool\nok,None\n')
    assert [r.id for r in metatool.load_queries_csv(f, {"WeatherTool"})] == ["q-2", "q-3"]  # ids count rows


def test_query_csv_without_queries_is_an_error(tmp_path):
    f = tmp_path / "q.csv"
    f.write_text("Query,Tool\n")
    with pytest.raises(DataError, match=f"^no questions in {f}$"):
        metatool.load_queries_csv(f, {"WeatherTool"})


def test_real_query_csv_loads_with_every_tool_cell_filled(full_data_root):
    docs = metatool.load_tool_docs(full_data_root / TASK.docs_file)
    rows = metatool.load_queries_csv(full_data_root / TASK.data_file, docs)
    assert len(rows) == 20614 and rows[-1].id == "q-20615"
    # No row of all_clean_data.csv is "no tool" (its negatives are Task1's); no cell is empty.
    assert not [r for r in rows if r.tool is None]


def test_prefix_reusing_cache_equals_full_forward(tiny_backbone, cache_root):
    tok = tiny_backbone.tokenizer
    prefix = tok(metatool.PROMPT_PREFIX, add_special_tokens=False)["input_ids"]
    exs = [metatool.ChoiceExample(str(i), q, "A") for i, q in enumerate(["short one", "a somewhat longer query here ok"])]
    enc = metatool.encode_choices(tok, exs, {"A": 0})
    cache = build_feature_cache(tiny_backbone, enc, cache_root, dtype="float32", progress=False, prefix_ids=prefix)
    for row, e in enumerate(enc):
        with torch.no_grad():
            h, _ = tiny_backbone.final_hidden(torch.tensor([prefix + e.input_ids.tolist()]))
        assert torch.allclose(torch.from_numpy(cache.h[row].copy()), h[0, -1], atol=1e-4)
    assert cache.meta["prefix_tokens"] == len(prefix)


def test_choice_metrics():
    preds = [
        {"gold": "A", "selected": "A", "called": "A", "triggered": True, "stage1_topk": ["A", "B"]},
        {"gold": "B", "selected": "A", "called": None, "triggered": True, "stage1_topk": ["A", "B"]},
        {"gold": None, "selected": "A", "called": "A", "triggered": True, "stage1_topk": ["A", "B"]},
        {"gold": None, "selected": "B", "called": None, "triggered": False, "stage1_topk": ["B", "A"]},
    ]
    m = choice_metrics(preds, k=2)
    assert m["top1_accuracy"] == 0.5 and m["top2_accuracy"] == 1.0 and m["end_to_end_accuracy"] == 0.5
    assert m["awareness_accuracy"] == 0.5 and m["call_precision"] == 0.5 and m["call_recall"] == 0.5
    assert m["rejected_rate"] == 0.5 and m["false_positive_calls"] == 1
    assert m["per_tool"]["B"] == {"accuracy": 0.0, "n": 1}


@pytest.mark.parametrize("reranker", ["llm", "embedding"])
def test_train_and_infer_metatool_end_to_end(tiny_backbone, data_root, tmp_path, reranker, monkeypatch):
    from toolken_plus.adapter import ToolkenHead
    from toolken_plus.infer.recipe import run_inference
    from toolken_plus.rerank.embedder import HashEmbedder

    if reranker == "embedding":  # the MiniLM model is tested elsewhere; keep this fast
        monkeypatch.setattr("toolken_plus.rerank.embedder.SentenceEmbedder", lambda *a, **k: HashEmbedder())
    spec = (LLMRerank(max_train=80, max_val=40, epochs=2, state_batch=8) if reranker == "llm"
            else EmbeddingRerank(max_val=40))
    cfg = TrainConfig(task=MetaTool(), model=TinyRandomBackbone(hidden_size=16), reranker=spec, cache_dir=str(tmp_path / "cache"),
                      data=DataConfig(root=str(data_root), limit_train=80, limit_eval=40, max_length=128),
                      trainer=TrainerConfig(epochs=2, lr=1e-2, batch_size=16, progress=False))
    run = tmp_path / "train"
    metrics = TrainToolkensRecipe(cfg, run, backbone=tiny_backbone).run()
    assert "val_rerank/accuracy" in metrics
    if reranker == "llm":  # cross-fitted mining (the default) reports both modes' yields; the mix is calibrated
        assert metrics["rerank/mining"] == "crossfit" and metrics["rerank/crossfit_folds"] == 5
        assert {"rerank/train_mined_rejects@train", "rerank/train_mined_rejects@crossfit"} <= set(metrics)
        assert metrics["rerank/train_mined_golds@crossfit"] == metrics["rerank/train_mined_golds@train"]
        assert 0.0 <= metrics["rerank/mix"] <= 1.0 and metrics["val_rerank/tool_accuracy"] >= metrics["val_stage1/tool_accuracy"]
        # the Reject shift: calibrated for call F1 with MetaTool's call prior, recall within budget of stage 1's
        assert metrics["rerank/val_call_prior"] == 0.5 and "rerank/reject_bias@mix0" in metrics
        assert metrics["val_rerank/call_recall"] >= metrics["val_stage1/call_recall"] - 0.02 - 1e-9
        assert metrics["val_rerank/false_positive_calls"] <= metrics["val_stage1/false_positive_calls"] + 1e-9
        saved_rerank = json.loads((run / "toolken_config.json").read_text())["reranker"]
        assert (saved_rerank["reject_bias"], saved_rerank["call_mix"]) == (metrics["rerank/reject_bias"], metrics["rerank/call_mix"])
        # the calibrated call decision is never below the threshold-only ablation on validation
        assert metrics["val_rerank/call_f1"] >= metrics["val_threshold_only/call_f1"] - 1e-9
    saved = json.loads((run / "toolken_config.json").read_text())
    n_tools = len(TASK.docs(data_root))  # 199 in MetaTool
    assert saved["reranker"]["name"] == reranker and len(saved["tools"]) == n_tools
    split = TASK.split(data_root)
    for which in ("selection", "awareness"):
        icfg = InferConfig(checkpoint=str(run), reranker=spec, data=DataConfig(root=str(data_root), eval=which, limit_eval=24),
                           agent=AgentConfig(progress=False))
        out = tmp_path / which
        m, rows, task = run_inference(icfg, out, backbone=tiny_backbone)  # the task comes from the checkpoint
        expected = min(24, len(split.test if which == "selection" else split.awareness_test))  # 24 on the real data
        assert task.name == "metatool" and m["n"] == expected and m["reranker"] == reranker
        # the selected tool is always one of stage 1's top-k candidates
        assert 0.0 <= m["top1_accuracy"] <= m["top3_accuracy"] <= 1.0
        assert all(r["selected"] in r["stage1_topk"] for r in rows)
        assert (out / "confusion.png").stat().st_size > 1000 and (out / "report.md").is_file()
        on_disk = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
        assert on_disk == rows and all(set(r["rerank"]) == {"candidates", "chosen", "ranking"} for r in rows)
        if which == "awareness":
            assert "awareness_accuracy" in m and "call_f1" in m
    # the checkpoint carries what stage 2 learnt: W_r (tools + Reject) or the calibrated threshold
    head = ToolkenHead.from_pretrained(run)
    if reranker == "llm":
        built = LLMRerank().build(tiny_backbone, head, {n: "" for n in head.tool_names})
        assert head.rerank_weight.shape == (n_tools + 1, tiny_backbone.hidden_size)  # the tools + Reject
        # the doc-block pass runs at inference in the precision it was fitted in (auto: bfloat16 where fast)
        fitted_in = saved["reranker"]["state_dtype"]
        assert fitted_in == metrics["rerank/state_dtype"] in ("bfloat16", "float32")
        assert built.state_dtype == getattr(torch, fitted_in)
        assert LLMRerank(state_dtype="float32").build(tiny_backbone, head, {}).state_backbone is tiny_backbone
    else:
        built = EmbeddingRerank().build(tiny_backbone, head, {n: "" for n in head.tool_names}, embedder=HashEmbedder())
        assert built.threshold == saved["reranker"]["threshold"]
    assert built.name == reranker

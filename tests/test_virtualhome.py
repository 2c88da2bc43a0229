"""VirtualHome: the simulator adapter, the task (split, encoding, scoring),
the plan predictor (masked and grounded decoding) and the whole path on a
tiny random backbone."""

import json

import pytest

from toolken_plus.config.schema import AgentConfig, DataConfig, InferConfig, TrainConfig, TrainerConfig
from toolken_plus.data.encoding import IGNORE
from toolken_plus.infer.recipe import run_inference
from toolken_plus.rerank import EmbeddingRerank, LLMRerank
from toolken_plus.tasks import known_tasks
from toolken_plus.tasks.virtualhome import (
    BROKEN_GOLD,
    END,
    VirtualHome,
    default_programs_dir,
    lcs_ratio,
    load_graphs,
    load_programs,
)
from toolken_plus.tasks.virtualhome_sim import Episode, GoalChanges, Step, execute_plan, known_actions, parse_program_line
from toolken_plus.train.recipe import TrainToolkensRecipe

TASK = VirtualHome()


def programs():
    return load_programs(str(default_programs_dir()))


def program(pid):
    return next(p for p in programs() if p.id == pid)


# ---------------------------------------------------------------- simulator
def test_program_lines_name_scene_nodes():
    assert parse_program_line("[WALK] <computer> (1.417)") == (Step("WALK", ("computer",)), (417,))
    assert parse_program_line("[PUTBACK] <mug> (1.1012) <table> (2.107)") == (Step("PUTBACK", ("mug", "table")), (1012, 107))
    with pytest.raises(ValueError, match="not a program step"):
        parse_program_line("walk to the kitchen")


def test_every_gold_test_program_executes_and_succeeds(data_root):
    test = TASK.split(data_root)["test"]
    assert test
    for p in test:
        init, final = load_graphs(p.graph_file)
        out = execute_plan(init, list(p.steps), GoalChanges.between(init, final), ids=list(p.ids))
        assert out.executable and out.success, (p.id, out.failure, out.unmet)


@pytest.mark.slow
def test_every_gold_program_replays_except_the_two_broken_ones():
    no_change = 0
    for p in programs():
        init, final = load_graphs(p.graph_file)
        goal = GoalChanges.between(init, final)
        out = execute_plan(init, list(p.steps), goal, ids=list(p.ids))
        assert (out.executable and out.success) == (p.id not in BROKEN_GOLD), p.id
        no_change += len(goal) == 0
    assert no_change == 14  # gold programs that change only CLOSE relations (docs/data.md)


def test_broken_plans_get_their_failure_reason():
    p = program("file11_1")  # walk to the bedroom, find a floor lamp, touch it, switch it on
    init, final = load_graphs(p.graph_file)
    goal = GoalChanges.between(init, final)
    cases = {
        "unknown_action": [Step("FLY", ("bedroom",))],
        "wrong_arity": [Step("WALK", ())],
        "object_not_in_scene": [Step("WALK", ("kitchen",))],  # the scene has no kitchen
        "precondition": [Step("SWITCHON", ("floor_lamp",))],  # not close to it yet
    }
    for reason, plan in cases.items():
        out = execute_plan(init, plan, goal)
        assert not out.executable and not out.success and out.failure == reason, (reason, out)
        assert out.steps[-1]["message"]
    # a wrong instance id is a recorded failure, not an exception from the simulator
    out = execute_plan(init, [Step("WALK", ("bedroom",))], goal, ids=[(999_999,)])
    assert out.failure == "simulator_error" and not out.executable
    # an executable plan that does not reach the goal
    out = execute_plan(init, [Step("WALK", ("bedroom",))], goal)
    assert out.executable and not out.success and out.unmet
    # the plan stops at its first failure
    out = execute_plan(init, [Step("FLY", ("bedroom",)), Step("WALK", ("bedroom",))], goal)
    assert len(out.steps) == 1


def test_success_ignores_close_relations_only():
    init = {"nodes": [{"id": 1, "class_name": "a", "states": ["OFF"]}, {"id": 2, "class_name": "b", "states": []}],
            "edges": [{"from_id": 1, "relation_type": "CLOSE", "to_id": 2}]}
    final = {"nodes": [{"id": 1, "class_name": "a", "states": ["ON"]}, {"id": 2, "class_name": "b", "states": []}],
             "edges": [{"from_id": 1, "relation_type": "ON", "to_id": 2}]}
    goal = GoalChanges.between(init, final)
    assert len(goal) == 3  # ON set, OFF unset, 1 ON 2 added; the CLOSE edge removed does not count
    assert goal.unmet(final) == [] and len(goal.unmet(init)) == 3


def test_episode_resolves_instances_that_can_run():
    p = program("file11_1")
    ep = Episode(load_graphs(p.graph_file)[0])
    assert not ep.can_run(Step("SWITCHON", ("floor_lamp",)))
    assert ep.run(Step("WALK", ("floor_lamp",))).ok
    assert ep.can_run(Step("SWITCHON", ("floor_lamp",)))
    result = ep.run(Step("SWITCHON", ("floor_lamp",)))
    assert result.ok and result.ids == (1000,)  # the program's own lamp
    assert ep.run(Step("FLY", ())).reason == "unknown_action" and ep.failed
    with pytest.raises(RuntimeError):
        ep.run(Step("WALK", ("bedroom",)))


def test_lcs_ratio():
    a, b, c = Step("WALK", ("bedroom",)), Step("FIND", ("bed",)), Step("LIE", ("bed",))
    assert lcs_ratio([a, b, c], [a, b, c]) == 1.0
    assert lcs_ratio([a, c], [a, b, c]) == pytest.approx(2 / 3)
    assert lcs_ratio([], [a]) == 0.0 and lcs_ratio([], []) == 1.0


# --------------------------------------------------------------------- task
def test_task_is_found_and_splits_whole_programs(data_root):
    assert known_tasks()["virtualhome"] is VirtualHome
    split = TASK.split(data_root)
    ids = [[p.id for p in split[k]] for k in ("train", "val", "test")]
    assert not set(ids[0]) & set(ids[1]) and not set(ids[0]) & set(ids[2]) and not set(ids[1]) & set(ids[2])
    assert not BROKEN_GOLD & {i for part in ids for i in part}
    assert TASK.split(data_root)["test"] == split["test"]  # seeded
    assert VirtualHome(split_seed=1).split(data_root)["test"] != split["test"]
    actions, objects = TASK.toolkens(data_root)
    for p in split["train"]:
        assert all(s.action in actions and set(s.objects) <= set(objects) for s in p.steps)
    assert "dropped" in split["notes"][0]


@pytest.mark.full_data
def test_split_sizes_on_the_full_toolken_set(data_root):
    split = TASK.split(data_root)
    assert [len(split[k]) for k in ("train", "val", "test")] == [152, 50, 50]  # 253 in the set, 1 broken gold


def test_encoding_labels_every_choice_and_nothing_else(data_root, smol_tokenizer):
    data = TASK.load(DataConfig(root=str(data_root), limit_train=3, limit_eval=1))
    index = {n: i for i, n in enumerate(data.tool_names)}
    for ex, enc in zip(data.train, TASK.encode(smol_tokenizer, data.train, index, 1024)):
        labelled = [int(x) for x in enc.tool_label if x != IGNORE]
        gold = [index[t] for s in ex.steps for t in (s.action, *s.objects)] + [index[END]]
        assert labelled == gold and (enc.next_token == IGNORE).all()
        # the tokens after each labelled position are that toolken's text
        for pos in (enc.tool_label != IGNORE).nonzero()[0]:
            name = data.tool_names[int(enc.tool_label[pos])]
            text = smol_tokenizer.decode(enc.input_ids[pos + 1 : pos + 12].tolist())
            assert text.lstrip().startswith(f"[{name}]" if name == END or name in known_actions() else f"<{name}>")
    cut = TASK.encode(smol_tokenizer, data.train[:1], index, 40)[0]
    assert cut.n_calls_lost > 0 and len(cut) == 40


def test_tool_docs_come_from_the_simulator(data_root):
    tools = TASK.build_tools(data_root)
    assert len(tools) == len(TASK.toolken_names(data_root))
    assert "grabbable" in tools["GRAB"].doc and "close" in tools["GRAB"].doc
    assert "room" in tools["bedroom"].doc and tools[END].doc
    assert all(t.fn is None for t in tools.values())


# ------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def vh_checkpoint(tmp_path_factory, tiny_backbone, data_root):
    run = tmp_path_factory.mktemp("vh") / "train"
    cfg = TrainConfig(task=VirtualHome(), reranker=LLMRerank(max_train=60, max_val=30, epochs=1, state_batch=8),
                      cache_dir=str(run.parent / "cache"),
                      data=DataConfig(root=str(data_root), limit_train=12, limit_eval=6, max_length=512),
                      trainer=TrainerConfig(epochs=2, lr=1e-2, batch_size=4, progress=False))
    metrics = TrainToolkensRecipe(cfg, run, backbone=tiny_backbone).run()
    assert metrics["train/gold_calls"] > 12 and "val_rerank/accuracy" in metrics
    return run


def _infer(run, tmp_path, backbone, data_root, reranker=None, **agent):
    # A random backbone seldom chooses [END]: plans of at most 8 steps keep this fast.
    cfg = InferConfig(checkpoint=str(run), task={"max_steps": 8}, data=DataConfig(root=str(data_root), limit_eval=3),
                      agent=AgentConfig(progress=False, batch_size=2, **agent), reranker=reranker)
    return run_inference(cfg, tmp_path, backbone=backbone)


def test_a_plan_runs_end_to_end_on_a_tiny_backbone(vh_checkpoint, tiny_backbone, data_root, tmp_path):
    m, rows, task = _infer(vh_checkpoint, tmp_path / "plain", tiny_backbone, data_root)
    assert task.name == "virtualhome" and m["n"] == 3
    assert {"executability", "success_rate", "lcs", "failures", "n", "seconds"} <= set(m)
    test_ids = [p.id for p in TASK.split(data_root)["test"][:3]]
    assert [r["id"] for r in rows] == test_ids
    for r in rows:
        assert r["finish"] in ("end", "step_limit") and len(r["plan"]) <= 8
        assert all(s["ok"] for s in r["steps"][:-1])  # execution stops at the first failure
        assert r["executable"] == (r["failure"] is None)
    on_disk = [json.loads(x) for x in (tmp_path / "plain" / "predictions.jsonl").read_text().splitlines()]
    assert on_disk == rows and (tmp_path / "plain" / "report.md").is_file()


def test_objects_absent_from_the_scene_are_never_chosen(vh_checkpoint, tiny_backbone, data_root, tmp_path, monkeypatch):
    # Make stage 1 prefer a toolken object the scene lacks: it must still not be chosen.
    from toolken_plus.infer import plan as plan_module
    from toolken_plus.tasks.virtualhome import scene_of

    real = plan_module.PlanPredictor._decide
    chosen = []

    def spy(self, rows):
        out = real(self, rows)
        for r, name in zip(rows, out):
            if name in self.objects:
                chosen.append((name, scene_of(r.item.meta["graph_file"]).classes))
        return out

    monkeypatch.setattr(plan_module.PlanPredictor, "_decide", spy)
    _infer(vh_checkpoint, tmp_path, tiny_backbone, data_root)
    assert chosen and all(name in classes for name, classes in chosen)


@pytest.mark.parametrize("reranker", [None, "llm", "embedding"])
def test_grounded_decoding_never_emits_a_step_that_cannot_run(vh_checkpoint, tiny_backbone, data_root, tmp_path,
                                                              reranker, monkeypatch):
    from toolken_plus.rerank.embedder import HashEmbedder

    monkeypatch.setattr("toolken_plus.rerank.embedder.SentenceEmbedder", lambda *a, **k: HashEmbedder())
    spec = {None: None, "llm": LLMRerank(), "embedding": EmbeddingRerank(threshold=0.0)}[reranker]
    m, rows, _ = _infer(vh_checkpoint, tmp_path, tiny_backbone, data_root, grounded=True, reranker=spec)
    assert m["grounded"] is True and m["executability"] == 1.0
    assert all(r["executable"] and all(s["ok"] for s in r["steps"]) for r in rows)
    assert sum(len(r["plan"]) for r in rows) > 0
    if reranker:
        assert all(c["chosen"] in c["candidates"] for r in rows for c in r["choices"])


def test_gold_setting_scores_one_through_the_same_path(tiny_backbone, data_root, tmp_path):
    cfg = InferConfig(task=VirtualHome(), data=DataConfig(root=str(data_root)), agent=AgentConfig(setting="gold", progress=False))
    m, rows, _ = run_inference(cfg, tmp_path, backbone=tiny_backbone)
    assert m["n"] == len(TASK.split(data_root)["test"])
    assert m["executability"] == m["success_rate"] == m["lcs"] == 1.0


def test_gold_classes_drops_the_node_ids_and_resolves_instances(data_root, tmp_path):
    """The class-only gold row is the ceiling of toolken plans: the same plans,
    but a light is "a light", so some steps land on another instance."""
    cfg = InferConfig(task=VirtualHome(), data=DataConfig(root=str(data_root)),
                      agent=AgentConfig(setting="gold_classes", progress=False))
    m, rows, _ = run_inference(cfg, tmp_path)  # no backbone: it must not need one
    assert m["setting"] == "gold_classes" and m["lcs"] == 1.0
    assert m["executability"] < 1.0 and m["success_rate"] < m["executability"]
    unrunnable = next(r for r in rows if r["id"] == "file392_1")  # [SWITCHON] <light>: the wrong light is on already
    assert not unrunnable["executable"] and "is not off" in unrunnable["steps"][unrunnable["failed_step"]]["message"]


def test_gold_setting_loads_no_model(data_root, tmp_path, monkeypatch):
    def no_model(*a, **k):
        raise AssertionError("agent.setting=gold loaded a backbone")

    monkeypatch.setattr("toolken_plus.infer.recipe.build_backbone", no_model)
    cfg = InferConfig(task=VirtualHome(), data=DataConfig(root=str(data_root), limit_eval=2),
                      agent=AgentConfig(setting="gold", progress=False))
    m, _, _ = run_inference(cfg, tmp_path)
    assert m["n"] == 2 and m["success_rate"] == 1.0


def test_gold_setting_is_refused_for_other_tasks(tiny_backbone, data_root, tmp_path):
    from toolken_plus.tasks.metatool import MetaTool

    cfg = InferConfig(task=MetaTool(), data=DataConfig(root=str(data_root)), agent=AgentConfig(setting="gold"))
    with pytest.raises(ValueError, match="not a plan task"):
        run_inference(cfg, tmp_path, backbone=tiny_backbone)


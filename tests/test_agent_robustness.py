"""The agent under hostile input, on a tiny random backbone: results without
text or of any length, isolated plugin tools, questions longer than the
context, rows that fail, and results reported as they finish."""

import logging
from pathlib import Path

import pytest
from conftest import compose
from fake_plugins import install, weather_distribution  # noqa: F401 (fixture)

from toolken_plus import tool
from toolken_plus.adapter.head import ToolkenHead
from toolken_plus.data.prompts import FewShotPrompt
from toolken_plus.infer.agent import Agent, AgentConfig
from toolken_plus.infer.batch_cache import BatchCache
from toolken_plus.infer.policy import DecisionPolicy
from toolken_plus.tasks.gsm8k import calculator_tools
from toolken_plus.tools.isolation import ProcessRunner
from toolken_plus.tools.plugins import discover_tools
from toolken_plus.tools.registry import ToolDefinitionError

QUESTIONS = ["Tom has 3 apples and buys 4 more. How many?", "A car drives 60 miles per hour for 2 hours.",
             "Sam had 10 cookies and ate 3.", "What is 5 times 6?", "Zoe splits 12 pens among 4 kids."]
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Hostile:
    def __str__(self):
        raise RuntimeError("no text for you")


@tool
def huge() -> int:
    """An int of 5001 digits: str() of it raises."""
    return 10 ** 5000


@tool
def hostile() -> object:
    """A result whose __str__ raises."""
    return Hostile()


@tool
def flood(n: int) -> str:
    """n sevens."""
    return "7" * n


@tool
def digits(n: int) -> str:
    """n ones (one token each)."""
    return "1" * n


CODE_TOOLS = {t.name: t for t in (huge, hostile, flood, digits)}


@pytest.fixture(scope="module")
def prompt(data_root):
    return FewShotPrompt.from_file(data_root / "gsm8k-xl" / "template" / "llama_general.txt")


def _agent(backbone, tools, prompt, **cfg):
    head = ToolkenHead(list(tools), backbone.hidden_size, seed=0)
    return Agent(backbone, head, tools, prompt, AgentConfig(progress=False, **{"max_new_tokens": 20, **cfg}))


def _script_calls(agent, monkeypatch, tool_, args_text, when):
    """The "model" calls `tool_` with `args_text` whenever `when(row)` holds in reasoning mode."""
    script = agent.policy.tok(args_text + ")", add_special_tokens=False)["input_ids"]
    monkeypatch.setattr(agent.policy, "choose_tool", lambda row, vocab, scores: tool_ if when(row) else None)
    monkeypatch.setattr(agent.policy, "tool_mode_token", lambda row, vocab: script[len(row.arg_ids)])


def _once(row):
    return row.new_tokens == 2 and not row.calls


# ------------------------------------------------- 4. results without text
@pytest.mark.parametrize("name, error", [
    ("huge", "result cannot be written as text: ValueError: Exceeds the limit (4300 digits)"),
    ("hostile", "result cannot be written as text: RuntimeError: no text for you"),
])
def test_a_result_without_text_is_a_call_error_and_the_batch_goes_on(tiny_backbone, prompt, monkeypatch, name, error):
    agent = _agent(tiny_backbone, CODE_TOOLS, prompt, batch_size=2, max_new_tokens=6)
    _script_calls(agent, monkeypatch, CODE_TOOLS[name], "", _once)
    results = agent.run_batch(QUESTIONS[:2])
    for res in results:
        (call,) = res.calls
        assert call.result is None and call.error.startswith(error)
        assert res.finish_reason in {"length", "eos", "answer"}


# ----------------------------------------------------- 5. result length cap
@pytest.mark.parametrize("max_chars", [None, 20])
def test_a_long_result_is_cut_before_the_tokenizer_sees_it(tiny_backbone, prompt, monkeypatch, max_chars):
    options = {} if max_chars is None else {"max_result_chars": max_chars}
    agent = _agent(tiny_backbone, CODE_TOOLS, prompt, batch_size=1, max_new_tokens=6, **options)
    cap = agent.cfg.max_result_chars
    assert 200 <= AgentConfig.max_result_chars <= 500
    _script_calls(agent, monkeypatch, flood, "100000", _once)
    encoded = []
    real = agent.policy.encode
    monkeypatch.setattr(agent.policy, "encode", lambda text: encoded.append(text) or real(text))
    (call,) = agent.run(QUESTIONS[0]).calls
    assert call.result == "7" * cap and call.truncated_from == 100_000 and call.error is None
    assert vars(call)["truncated_from"] == 100_000  # predictions.jsonl writes vars(call)
    assert max(t.count("7") for t in encoded) <= cap + QUESTIONS[0].count("7")


def test_agent_options_reach_the_agent_config_from_the_command_line():
    from toolken_plus.config import as_config
    from toolken_plus.config.schema import InferConfig

    cfg = as_config(compose(["agent.max_result_chars=50", "agent.isolation=process", "agent.tool_memory_mb=512"], "infer"),
                    InferConfig).agent
    assert (cfg.max_result_chars, cfg.isolation, cfg.tool_memory_mb) == (50, "process", 512)
    assert as_config(compose(["agent.tool_memory_mb=null"], "infer"), InferConfig).agent.tool_memory_mb is None
    assert as_config(compose([], "infer"), InferConfig).agent == AgentConfig()  # one source of defaults


# ------------------------------------------------------- 6. isolated tools
@pytest.mark.parametrize("args_text", ['"Paris"', 'city="Paris"'])
def test_an_isolated_plugin_tool_runs_end_to_end(tiny_backbone, prompt, monkeypatch, install, args_text):  # noqa: F811
    install(weather_distribution)
    tools = {"weather": discover_tools().get("weather")}
    with _agent(tiny_backbone, tools, prompt, batch_size=2, max_new_tokens=6) as agent:
        runner = agent.policy.runners["weather"]
        assert isinstance(runner, ProcessRunner)  # a third-party plugin: a worker process by default
        _script_calls(agent, monkeypatch, tools["weather"], args_text, _once)
        results = agent.run_batch(QUESTIONS[:2])
        pid = runner.worker.proc.pid
    assert not Path(f"/proc/{pid}").exists()  # closed and reaped
    for res in results:
        (call,) = res.calls
        assert (call.args, call.kwargs, call.result, call.error) == (["Paris"], None, "sunny, 21 C", None)
        assert f'<weather>({args_text})=sunny, 21 C' in res.trace  # the trace keeps what the model wrote


def test_process_isolation_of_a_closure_fails_when_the_agent_is_made(tiny_backbone, prompt):
    rate = 2
    tools = {"double": tool(lambda x: x * rate, name="double", doc="Doubles a number.")}
    with pytest.raises(ToolDefinitionError, match="'double' .* cannot run in a worker process"):
        _agent(tiny_backbone, tools, prompt, isolation="process")


# --------------------------------------------------- 7a. the model's context
def _prefilled(agent, monkeypatch) -> list[tuple]:
    jobs = []
    real = agent.scheduler.prefill_many
    monkeypatch.setattr(agent.scheduler, "prefill_many", lambda js: jobs.extend(js) or real(js))
    return jobs


def _context(job) -> int:
    layers, n, ids, prefix = job
    return (prefix.n if prefix is not None else 0) + n + len(ids)


def test_a_question_longer_than_the_context_is_cut_keeping_its_end(tiny_backbone, prompt, monkeypatch, caplog):
    agent = Agent(tiny_backbone, None, {}, prompt, AgentConfig(progress=False, max_new_tokens=20, batch_size=2))
    limit = tiny_backbone.model.config.max_position_embeddings
    asked = "How many apples does Tom have now?"
    long_q = "Tom went to the market. " + "He saw many stalls with fruit and vegetables. " * 500 + asked
    assert len(agent.policy.encode(long_q)) > 2 * limit
    jobs = _prefilled(agent, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="toolken_plus.infer.agent"):
        cut, short = agent.run_batch([long_q, QUESTIONS[0]])
    assert "of 2 questions: 1 cut to fit the model's context" in caplog.text
    assert cut.question == long_q and cut.finish_reason in {"length", "eos", "answer"}
    assert len(cut.notes) == 1 and cut.notes[0].startswith("question cut to its last ")
    (start,) = [j for j in jobs if tiny_backbone.tokenizer.decode(j[2]).endswith(asked + "\nAnswer:")]
    assert _context(start) + 20 + DecisionPolicy.RESULT_ROOM <= limit
    assert _context(start) > limit - 20 - DecisionPolicy.RESULT_ROOM - 10  # cut no more than needed (no tools here)
    assert short.notes == [] and short.trace == agent.run(QUESTIONS[0]).trace


def test_a_cut_question_leaves_room_for_tool_mode(tiny_backbone, prompt, data_root, monkeypatch):
    """The budget counts the longest tool demos (<add>'s are longer than the
    reasoning prompt) and the arguments: tool mode fits too."""
    agent = _agent(tiny_backbone, calculator_tools(data_root), prompt, logit_bias=50.0, batch_size=1, max_calls=3,
                   max_arg_tokens=6)
    long_q = "Tom went to the market. " + "He saw many stalls with fruit and vegetables. " * 500 + "How many?"
    jobs = _prefilled(agent, monkeypatch)
    res = agent.run(long_q)
    assert res.notes and len(res.calls) == 3
    assert not [c for c in res.calls if c.error.startswith("no room")]
    assert max(_context(j) for j in jobs) < tiny_backbone.model.config.max_position_embeddings


def test_a_question_is_skipped_when_nothing_of_it_fits(tiny_backbone, prompt):
    agent = Agent(tiny_backbone, None, {}, prompt, AgentConfig(progress=False, max_new_tokens=2040))
    seen = []
    (res,) = agent.run_batch([QUESTIONS[0]], on_result=lambda i, r: seen.append(i))
    assert res.finish_reason.startswith("skipped: ") and "2048" in res.finish_reason
    assert res.generation == "" and res.new_tokens == 0 and seen == [0]


def _watch_steps(monkeypatch) -> list[int]:
    """The largest position each batched decode step writes to."""
    positions = []
    real = BatchCache.step

    def step(self, tokens):
        positions.append(int((self.offsets + self.lengths).max()))
        return real(self, tokens)

    monkeypatch.setattr(BatchCache, "step", step)
    return positions


def _limit_after_start(agent, monkeypatch, question: str, extra: int) -> int:
    """Let `question` start with only `extra` tokens of context to spare (the
    start budget is an estimate; what follows must hold whatever it says)."""
    prefix = agent.scheduler.prefix("reason", agent.prompt.prefix)
    monkeypatch.setattr(agent.policy, "reserved", lambda: prefix.n)
    agent.policy.max_context = prefix.n + len(agent.policy.encode(agent.prompt.question_part(question))) + extra
    return agent.policy.max_context


@pytest.mark.parametrize("batch_size", [1, 2])
def test_a_row_stops_when_its_context_is_full(tiny_backbone, prompt, monkeypatch, batch_size):
    agent = Agent(tiny_backbone, None, {}, prompt, AgentConfig(progress=False, max_new_tokens=20, batch_size=batch_size))
    limit = _limit_after_start(agent, monkeypatch, QUESTIONS[0], extra=5)
    positions = _watch_steps(monkeypatch)
    results = agent.run_batch([QUESTIONS[0]] * batch_size)
    assert [r.finish_reason for r in results] == ["context"] * batch_size
    assert max(positions) == limit - 1  # the last position, and none past it
    assert {r.new_tokens for r in results} == {5}


def test_a_result_that_does_not_fit_stops_the_row(tiny_backbone, prompt, monkeypatch):
    agent = _agent(tiny_backbone, CODE_TOOLS, prompt, batch_size=1)
    limit = _limit_after_start(agent, monkeypatch, QUESTIONS[0], extra=60)
    _script_calls(agent, monkeypatch, flood, "100", _once)
    jobs = _prefilled(agent, monkeypatch)
    positions = _watch_steps(monkeypatch)
    res = agent.run(QUESTIONS[0])
    assert res.finish_reason == "context" and res.calls[0].result == "7" * 100
    assert max(_context(j) for j in jobs) < limit and max(positions) < limit


def test_a_call_without_room_for_tool_mode_fails_and_the_row_goes_on(tiny_backbone, prompt, monkeypatch):
    agent = _agent(tiny_backbone, CODE_TOOLS, prompt, batch_size=1, max_new_tokens=8)
    limit = _limit_after_start(agent, monkeypatch, QUESTIONS[0], extra=20)  # arguments need 32
    _script_calls(agent, monkeypatch, flood, "1", _once)
    jobs = _prefilled(agent, monkeypatch)
    res = agent.run(QUESTIONS[0])
    (call,) = res.calls
    assert call.error == f"no room for tool mode in the model's context of {limit} tokens"
    assert res.finish_reason in {"length", "eos", "answer"} and res.new_tokens == 8
    assert max(_context(j) for j in jobs) < limit


# ------------------------------------------------------- 7b. one row fails
@pytest.mark.parametrize("bad, reason", [
    ("Tom has \ud800 apples.", "error: UnicodeEncodeError: 'utf-8' codec can't encode character '\\ud800'"),
    (None, "error: TypeError: a question must be text, not NoneType"),
    (42, "error: TypeError: a question must be text, not int"),
])
def test_a_bad_question_fails_alone(tiny_backbone, prompt, data_root, bad, reason):
    agent = _agent(tiny_backbone, calculator_tools(data_root), prompt, logit_bias=4.0, batch_size=3, max_arg_tokens=6)
    seen = []
    results = agent.run_batch([QUESTIONS[0], bad, QUESTIONS[2]], on_result=lambda i, r: seen.append(i))
    assert results[1].finish_reason.startswith(reason) and results[1].generation == "" and results[1].question == bad
    alone = [agent.run(QUESTIONS[0]), agent.run(QUESTIONS[2])]
    assert [results[0].trace, results[2].trace] == [r.trace for r in alone]
    assert [len(results[0].calls), len(results[2].calls)] == [len(r.calls) for r in alone]
    assert sorted(seen) == [0, 1, 2]


@pytest.mark.parametrize("hook, bias", [("append_reason_token", 4.0), ("after_tool_token", 50.0)])
def test_an_exception_while_handling_one_row_ends_that_row_only(tiny_backbone, prompt, data_root, monkeypatch, hook, bias):
    agent = _agent(tiny_backbone, calculator_tools(data_root), prompt, logit_bias=bias, batch_size=3, max_arg_tokens=6,
                   max_calls=3)
    questions = [QUESTIONS[0], QUESTIONS[1], QUESTIONS[2]]
    alone = [agent.run(q) for q in questions]
    real = getattr(agent.policy, hook)

    def flaky(row, token):
        if row.question == QUESTIONS[1]:
            raise RuntimeError("tokenizer exploded")
        return real(row, token)

    monkeypatch.setattr(agent.policy, hook, flaky)
    results = agent.run_batch(questions)
    assert results[1].finish_reason == "error: RuntimeError: tokenizer exploded"
    assert [results[0].trace, results[2].trace] == [alone[0].trace, alone[2].trace]


# --------------------------------------------------- 7c. results as they finish
def test_on_result_reports_each_question_as_it_finishes(tiny_backbone, prompt, data_root, monkeypatch):
    agent = _agent(tiny_backbone, calculator_tools(data_root), prompt, logit_bias=4.0, batch_size=2, max_arg_tokens=6)
    started, seen = [], []
    real = agent.policy.prepare
    monkeypatch.setattr(agent.policy, "prepare", lambda row, reserved: started.append(row.index) or real(row, reserved))
    results = agent.run_batch(QUESTIONS, on_result=lambda i, r: seen.append((i, r, len(started))))
    assert sorted(i for i, _, _ in seen) == list(range(len(QUESTIONS)))
    assert all(results[i] is r for i, r, _ in seen)
    assert seen[0][2] < len(QUESTIONS)  # the first was reported before the last question started

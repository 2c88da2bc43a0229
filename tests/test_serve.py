"""`toolken-plus serve` / `chat` on a tiny trained checkpoint: the OpenAI-shaped
API (through httpx's ASGI transport, and once over a real socket), its
errors, and concurrent requests sharing the agent's batched loop."""

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import DATA_ROOT, PROJECT_ROOT, compose
from test_infer_entrypoint import model_tiny_random, tiny_checkpoint  # noqa: F401  (fixtures)

from toolken_plus.config import as_config
from toolken_plus.config.schema import ServeRunConfig
from toolken_plus.config.validation import config_problems
from toolken_plus.infer.recipe import load_agent
from toolken_plus.infer.records import AgentResult, ToolCallRecord
from toolken_plus.serve import BatchWorker, create_app
from toolken_plus.serve.chat import chat_loop, format_reply
from toolken_plus.serve.openai import chat_completion

QUESTIONS = ["Tom has 3 apples and buys 4 more. How many?", "A car drives 60 miles per hour for 2 hours.",
             "Sam had 10 cookies and ate 3.", "What is 5 times 6?"]
AGENT = {"max_new_tokens": 8, "max_arg_tokens": 4, "logit_bias": 2.0}
MAX_PROMPT = 64


@pytest.fixture(scope="module")
def agent(tiny_checkpoint, model_tiny_random, data_root):  # noqa: F811
    with load_agent(tiny_checkpoint, backbone=model_tiny_random, data_root=data_root, **AGENT) as agent:
        yield agent


@pytest.fixture(scope="module")
def alone(agent):
    """Each question answered on its own, before any server touches the agent."""
    return {q: agent.run(q) for q in QUESTIONS}


@pytest.fixture
def app(agent, alone):
    app = create_app(agent, max_batch=16, max_wait_ms=50, max_prompt_tokens=MAX_PROMPT)
    yield app
    app.state.worker.stop()


def _ask(question: str, **extra) -> dict:
    return {"model": "whatever", "messages": [{"role": "user", "content": question}], **extra}


def _requests(app, *calls):
    """Send (method, path, kwargs) requests concurrently through the ASGI app; the responses in order."""
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as client:
            return await asyncio.gather(*(client.request(m, p, **kw) for m, p, kw in calls))

    return asyncio.run(go())


def test_a_request_gets_an_openai_chat_completion(app, alone):
    q = QUESTIONS[0]
    r, = _requests(app, ("POST", "/v1/chat/completions", {"json": _ask(q)}))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion" and isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == alone[q].generation  # what the agent answers on its own
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["completion_tokens"] == alone[q].new_tokens > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] and usage["prompt_tokens"] > 0
    extra = body["toolken_plus"]
    assert extra["trace"] == alone[q].trace and extra["finish_reason"] == alone[q].finish_reason
    assert len(choice["message"].get("tool_calls", [])) == len(alone[q].calls)


def test_tool_calls_in_openai_shape_with_their_results(agent):
    calls = [ToolCallRecord("multiply", "4096, 27", [4096, 27], "110592", seconds=0.001),
             ToolCallRecord("divide", "1, 0", [1, 0], None, "ZeroDivisionError: division by zero"),
             ToolCallRecord("add", "3 +", None, None, "bad arguments: …")]
    result = AgentResult("q", "It is 110592 bolts.", "It is <multiply>(4096, 27)=110592 bolts.", calls, 110592.0, "answer", 9)
    body = chat_completion(result, model="m", prompt_tokens=5, tools=agent.tools, notes=["a note"])
    first, failed, unparsed = body["choices"][0]["message"]["tool_calls"]
    assert first["type"] == "function" and first["id"].startswith("call_") and first["function"]["name"] == "multiply"
    assert json.loads(first["function"]["arguments"]) == {"args": [4096, 27]}  # multiply(*args)
    assert (first["arguments_text"], first["result"], first["error"]) == ("4096, 27", "110592", None)
    assert failed["result"] is None and "ZeroDivisionError" in failed["error"]
    assert json.loads(unparsed["function"]["arguments"]) == {} and unparsed["arguments_text"] == "3 +"
    assert body["choices"][0]["finish_reason"] == "stop"  # not "tool_calls": the calls ran already
    assert body["toolken_plus"]["answer"] == 110592.0 and body["toolken_plus"]["notes"] == ["a note"]
    json.dumps(body)  # serialisable as it is


def test_bad_requests_get_400_with_a_message_and_the_server_stays_up(app):
    image = [{"type": "image_url", "image_url": {}}]
    bodies = [{"content": b'{"messages": [', "headers": {"content-type": "application/json"}},
              {"json": {"model": "x"}},
              {"json": {"messages": []}},
              {"json": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}},
              {"json": _ask("hi", stream=True)},
              {"json": {"messages": [{"role": "user", "content": image}]}},
              {"json": _ask("   ")}]
    bad = [("POST", "/v1/chat/completions", kw) for kw in bodies]
    responses = _requests(app, *bad)
    assert [r.status_code for r in responses] == [400] * len(bad), [r.text for r in responses]
    messages = [r.json()["error"]["message"] for r in responses]
    assert "not valid JSON" in messages[0]
    assert "messages" in messages[1] and "required" in messages[1].lower()
    assert "messages" in messages[2]
    assert "last message must be the user's" in messages[3]
    assert "stream" in messages[4] and "text content" in messages[5] and "empty" in messages[6]
    assert all(r.json()["error"]["type"] == "invalid_request_error" for r in responses)
    health, ok = _requests(app, ("GET", "/health", {}), ("POST", "/v1/chat/completions", {"json": _ask(QUESTIONS[1])}))
    assert health.status_code == 200 and ok.status_code == 200


def test_a_too_long_prompt_gets_413_and_the_server_stays_up(app):
    long = "Tom counts apples again and again. " * 40
    r, = _requests(app, ("POST", "/v1/chat/completions", {"json": _ask(long)}))
    health, ok = _requests(app, ("GET", "/health", {}), ("POST", "/v1/chat/completions", {"json": _ask(QUESTIONS[2])}))
    assert r.status_code == 413
    error = r.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert f"at most {MAX_PROMPT}" in error["message"] and "serve.max_prompt_tokens" in error["message"]
    assert health.status_code == 200 and health.json()["rejected"] == 1 and health.json()["max_prompt_tokens"] == MAX_PROMPT
    assert ok.status_code == 200


def test_concurrent_requests_share_one_batched_run(app, alone):
    n = 16
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(n)]
    responses = _requests(app, *[("POST", "/v1/chat/completions", {"json": _ask(q)}) for q in questions])
    assert [r.status_code for r in responses] == [200] * n
    # batched, each still gets its own answer: what the agent answers alone
    assert [r.json()["choices"][0]["message"]["content"] for r in responses] == [alone[q].generation for q in questions]
    stats, = _requests(app, ("GET", "/health", {}))
    stats = stats.json()
    assert stats["requests"] == n and stats["answered"] == n and stats["in_flight"] == 0
    assert stats["runs"] < n and stats["largest_run"] > 1, stats


def test_a_failed_run_is_a_500_and_the_next_request_is_answered(app, agent, monkeypatch):
    real = agent.run_batch

    def broken(*args, **kwargs):
        monkeypatch.setattr(agent, "run_batch", real)  # once
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(agent, "run_batch", broken)
    r, = _requests(app, ("POST", "/v1/chat/completions", {"json": _ask(QUESTIONS[0])}))
    assert r.status_code == 500 and "out of memory, say" in r.json()["error"]["message"]
    health, ok = _requests(app, ("GET", "/health", {}), ("POST", "/v1/chat/completions", {"json": _ask(QUESTIONS[0])}))
    assert health.status_code == 200 and health.json()["failed"] == 1 and ok.status_code == 200


def test_after_shutdown_requests_get_503(app):
    app.state.worker.stop()
    r, health = _requests(app, ("POST", "/v1/chat/completions", {"json": _ask(QUESTIONS[0])}), ("GET", "/health", {}))
    assert r.status_code == 503 and health.status_code == 503


def test_models_lists_the_served_model(app):
    r, = _requests(app, ("GET", "/v1/models", {}))
    assert r.json()["data"][0]["id"] == "toolken_plus/gsm8k_xl"


def test_chat_loop_answers_each_line_with_its_tool_calls(agent, alone):
    out = io.StringIO()
    chat_loop(agent, io.StringIO(f"{QUESTIONS[0]}\n\n{QUESTIONS[1]}\n/quit\n{QUESTIONS[2]}\n"), out)
    text = out.getvalue()
    assert text.count("[answer]") == 2  # empty line skipped, nothing after /quit
    assert alone[QUESTIONS[0]].generation.strip() in text
    for call in alone[QUESTIONS[0]].calls + alone[QUESTIONS[1]].calls:
        assert f"[tool] {call.tool}({call.args_text})" in text


def test_format_reply_shows_each_tool_call_its_result_or_error():
    # the tiny checkpoint may make no calls at all: the [tool] lines are checked here on a synthetic result
    calls = [ToolCallRecord("multiply", "4096, 27", [4096, 27], "110592"),
             ToolCallRecord("divide", "1, 0", [1, 0], None, "ZeroDivisionError: division by zero")]
    result = AgentResult("q", " It is 110592 bolts. ", "It is <multiply>(4096, 27)=110592 bolts.", calls, 110592.0,
                         "answer", 9, notes=["a note"])
    assert format_reply(result).splitlines() == [
        "It is 110592 bolts.",
        "  [tool] multiply(4096, 27) = 110592",
        "  [tool] divide(1, 0) failed: ZeroDivisionError: division by zero",
        "  [answer] 110592.0 (answer, 9 tokens)",
        "  [note] a note"]
    assert format_reply(AgentResult("q", "", "")).splitlines()[0] == "(no text)"


def test_a_run_admits_at_most_max_run_requests_and_the_rest_are_answered_by_the_next(agent, alone, monkeypatch):
    worker = BatchWorker(agent, max_batch=2, max_wait_ms=50)
    assert worker.max_run == BatchWorker.RUN_BATCHES * 2
    worker.max_run = 4
    runs = []  # the questions each agent.run_batch call got, in run order (those that joined through `more` too)
    real = agent.run_batch

    def recording(questions, *args, more, **kwargs):
        runs.append(list(questions))

        def more_recorded():
            joined = more()
            runs[-1] += joined
            return joined

        return real(questions, *args, more=more_recorded, **kwargs)

    monkeypatch.setattr(agent, "run_batch", recording)
    n = 10
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(n)]
    try:
        futures = [worker.submit(q) for q in questions]
        replies = [f.result(timeout=300) for f in futures]
    finally:
        worker.stop()
    # every request answered, each with what the agent answers alone
    assert [r.result.generation for r in replies] == [alone[q].generation for q in questions]
    assert all(len(run) <= 4 for run in runs) and len(runs) >= 3, runs  # the cap ended runs: 10 requests, <= 4 a run
    assert [q for run in runs for q in run] == questions  # first come, first served: nothing lost, nothing reordered
    stats = worker.stats()
    assert stats["runs"] == len(runs) and stats["largest_run"] <= 4 and stats["answered"] == n and stats["in_flight"] == 0


def test_serve_config_composes():
    cfg = as_config(compose(["checkpoint=/some/run", "serve.port=9000", "serve.max_batch=4", "agent.max_new_tokens=9"],
                            "serve"), ServeRunConfig)
    assert (cfg.serve.port, cfg.serve.max_batch, cfg.serve.max_prompt_tokens, cfg.agent.max_new_tokens) == (9000, 4, None, 9)
    assert cfg.stage == "serve" and cfg.serve.host == "127.0.0.1"
    bad = as_config(compose(["serve.max_batch=0", "serve.port=70000"], "serve"), ServeRunConfig)
    assert len(config_problems(bad)) == 2


# ------------------------------------------------------------ real processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(tmp_path, command: str, *overrides: str, **popen):
    """`toolken-plus <command>` in a subprocess, importing this checkout."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TOOLKEN_PLUS_CACHE": str(tmp_path / "cache"),
           "TOOLKEN_PLUS_DATA": str(DATA_ROOT), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    args = [sys.executable, "-c", "import sys; from toolken_plus.cli import main; sys.exit(main())", command, *overrides]
    return subprocess.Popen(args, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def test_toolken_plus_serve_over_a_real_socket(tmp_path, tiny_checkpoint):  # noqa: F811
    port = _free_port()
    proc = _command(tmp_path, "serve", f"checkpoint={tiny_checkpoint}", f"serve.port={port}", "serve.max_wait_ms=100",
                    *(f"agent.{k}={v}" for k, v in AGENT.items()), f"hydra.run.dir={tmp_path / 'run'}")
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.3)
        n = 8
        with ThreadPoolExecutor(n) as pool:
            responses = list(pool.map(lambda q: httpx.post(f"{base}/v1/chat/completions", json=_ask(q), timeout=120),
                                      [QUESTIONS[i % len(QUESTIONS)] for i in range(n)]))
        assert [r.status_code for r in responses] == [200] * n, [r.text for r in responses]
        assert all(r.json()["object"] == "chat.completion" for r in responses)
        bad = httpx.post(f"{base}/v1/chat/completions", content=b"nope", headers={"content-type": "application/json"})
        assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
        health = httpx.get(f"{base}/health").json()
        assert health["status"] == "ok" and health["requests"] == n and health["runs"] < n
        assert health["tools"] == ["add", "subtract", "multiply", "divide"]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert (tmp_path / "run" / "serve.log").is_file()


def test_toolken_plus_chat_reads_questions_from_stdin(tmp_path, tiny_checkpoint, alone):  # noqa: F811
    proc = _command(tmp_path, "chat", f"checkpoint={tiny_checkpoint}", *(f"agent.{k}={v}" for k, v in AGENT.items()),
                    f"hydra.run.dir={tmp_path / 'run'}", stdin=subprocess.PIPE)
    out, err = proc.communicate(f"{QUESTIONS[0]}\n", timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert out.count("[answer]") == 1 and alone[QUESTIONS[0]].generation.strip() in out

"""The HTTP API: an OpenAI-compatible chat endpoint in front of an agent.

    app = create_app(load_agent("outputs/train/gsm8k_xl/<run>"))
    uvicorn.run(app, port=8765)

    POST /v1/chat/completions   the agent answers the last user message (openai.py: the format)
    GET  /health                200 while the worker runs: the model, its tools, batching counters
    GET  /v1/models             the one model served

Every request goes through one BatchWorker (worker.py), so concurrent
requests are decoded together. Errors are OpenAI error objects: 400 for a
request that is not valid JSON or not a chat request, 413 for a user message
over the prompt limit, 500 when the agent failed on it, 503 once the server
is shutting down; none of them stops the server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(f"{exc.name} is missing: serving needs the `serve` extra, pip install 'toolken_plus[serve]'") from exc

from toolken_plus.serve.openai import BadRequest, ChatCompletionRequest, chat_completion, error_body, question_of
from toolken_plus.serve.worker import BatchWorker, PromptTooLong, WorkerStopped

log = logging.getLogger(__name__)


def _validation_message(exc: RequestValidationError) -> str:
    problems = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            detail = (err.get("ctx") or {}).get("error")
            return f"the request body is not valid JSON{f': {detail}' if detail else ''}"
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        problems.append(f"{where}: {err.get('msg')}")
    return "invalid request: " + "; ".join(problems)


def create_app(agent, *, max_batch: int = 16, max_wait_ms: float = 10.0, max_prompt_tokens: int | None = None,
               model_name: str | None = None, worker: BatchWorker | None = None) -> FastAPI:
    """A FastAPI app answering with `agent` (an infer.agent.Agent, e.g. from
    load_agent) as `model_name` (default toolken_plus/<task>). The batching
    options are BatchWorker's (or pass a `worker`).
    The worker thread starts with the app (or at the first request, e.g.
    under httpx's ASGI transport, which runs no lifespan) and stops with it;
    closing the agent is the caller's. `app.state.worker` is the worker."""
    worker = worker or BatchWorker(agent, max_batch=max_batch, max_wait_ms=max_wait_ms, max_prompt_tokens=max_prompt_tokens)
    name = model_name or (f"toolken_plus/{agent.task.name}" if getattr(agent, "task", None) is not None else agent.backbone.name)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        yield
        await asyncio.to_thread(worker.stop)

    app = FastAPI(title="toolken_plus", summary="a frozen LM with trained toolkens, answering with real tools",
                  lifespan=lifespan)
    app.state.worker = worker
    app.state.agent = agent

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        return JSONResponse(error_body(_validation_message(exc)), status_code=400)

    @app.get("/health")
    async def health():
        ok = worker.healthy
        body = {"status": "ok" if ok else "stopping", "model": name, "backbone": agent.backbone.name,
                "task": getattr(agent.task, "name", None),
                "tools": list(agent.head.tool_names) if agent.head is not None else [], **worker.stats()}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": started, "owned_by": "toolken_plus"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        try:
            question, notes = question_of(body)
            reply = await asyncio.wrap_future(worker.submit(question))
        except BadRequest as exc:
            return JSONResponse(error_body(str(exc)), status_code=400)
        except PromptTooLong as exc:
            return JSONResponse(error_body(str(exc), code="context_length_exceeded"), status_code=413)
        except WorkerStopped as exc:
            return JSONResponse(error_body(str(exc), "server_error"), status_code=503)
        except Exception as exc:  # the agent's run failed: this request's error, the server goes on
            log.exception("request failed")
            return JSONResponse(error_body(f"the agent failed: {type(exc).__name__}: {exc}", "server_error"), status_code=500)
        result = reply.result
        if result.finish_reason.startswith("skipped"):
            return JSONResponse(error_body(result.finish_reason, code="context_length_exceeded"), status_code=413)
        if result.finish_reason.startswith("error"):
            return JSONResponse(error_body(f"the agent failed on this question: {result.finish_reason}", "server_error"),
                                status_code=500)
        return chat_completion(result, model=name, prompt_tokens=reply.prompt_tokens, tools=agent.tools, notes=notes)

    return app

"""The OpenAI chat-completions format: what a request may hold, the question
the agent answers from it, and the reply built from an AgentResult.

The reply is a standard `chat.completion` object. The calls the agent made
(and already ran) are in the assistant message's `tool_calls`, each in
OpenAI's shape (`id`, `type: "function"`, `function: {name, arguments}` with
the arguments as a JSON object string) plus `arguments_text` (as the model
wrote them), `result` and `error`. `finish_reason` is "stop" or "length",
never "tool_calls": there is nothing left for the client to run. The field
`toolken_plus` adds what the agent knows besides: the task's parse of the
answer, the trace (calls written `<tool>(args)=result`), the agent's own
finish reason and notes. docs/usage.md ("Serving") shows an example.
"""

from __future__ import annotations

import inspect
import json
import time
import uuid
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from toolken_plus.infer.records import AgentResult, ToolCallRecord
from toolken_plus.tools.registry import Tool


class BadRequest(ValueError):
    """A request the server cannot answer as asked (HTTP 400)."""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: Union[str, list[dict[str, Any]], None] = None


class ChatCompletionRequest(BaseModel):
    """The fields this server reads; any other OpenAI field is accepted and
    ignored (decoding is greedy, its length agent.max_new_tokens)."""

    model_config = ConfigDict(extra="allow")

    messages: list[ChatMessage] = Field(min_length=1)
    model: Optional[str] = None  # echoed by OpenAI; this server answers with the one agent it serves
    stream: bool = False
    n: int = 1


def message_text(message: ChatMessage) -> str:
    """A message's text: its string content, or its text parts joined."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise BadRequest(f"only text content is supported, got a {part.get('type')!r} part")
        texts.append(part["text"])
    return "\n".join(texts)


def question_of(request: ChatCompletionRequest) -> tuple[str, list[str]]:
    """The question the agent answers: the last message, the user's. The
    agent answers one question under its task's few-shot prompt, so earlier
    messages (a system prompt, past turns) are not shown to the model: a
    note in the reply says so."""
    if request.stream:
        raise BadRequest("stream=true is not supported: the reply comes whole")
    if request.n != 1:
        raise BadRequest(f"n={request.n} is not supported: decoding is greedy, there is one answer")
    last = request.messages[-1]
    if last.role != "user":
        raise BadRequest(f"the last message must be the user's question, not a {last.role!r} message")
    question = message_text(last).strip()
    if not question:
        raise BadRequest("the last user message is empty")
    notes = []
    if len(request.messages) > 1:
        notes.append(f"{len(request.messages) - 1} earlier message(s) were not shown to the model: "
                     f"the agent answers the last user message under its task's prompt")
    return question, notes


def named_arguments(tool: Tool | None, args: list) -> dict:
    """A call's positional arguments by the tool's parameter names (`*rest` a list)."""
    sig = tool.signature if tool is not None else None
    if sig is None:
        return {"args": list(args)}
    out, i = {}, 0
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and i < len(args):
            out[p.name], i = args[i], i + 1
        elif p.kind is inspect.Parameter.VAR_POSITIONAL:
            out[p.name], i = list(args[i:]), len(args)
    if i < len(args):
        out["args"] = list(args[i:])
    return out


def tool_call(call: ToolCallRecord, tools: dict[str, Tool]) -> dict:
    arguments = named_arguments(tools.get(call.tool), call.args) if call.args is not None else {}
    arguments.update(call.kwargs or {})  # keyword-only parameters and **kwargs values stay keywords after binding
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": call.tool, "arguments": json.dumps(arguments, default=str)},
        "arguments_text": call.args_text,  # as the model wrote them
        "result": call.result,  # the text written back into the reply; null when the call failed
        "error": call.error,
        "seconds": round(call.seconds, 4),
    }


FINISH = {"answer": "stop", "eos": "stop", "length": "length", "context": "length"}


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def chat_completion(result: AgentResult, *, model: str, prompt_tokens: int, tools: dict[str, Tool],
                    notes: list[str] = ()) -> dict:
    """The chat.completion object answering a request with `result`."""
    message: dict[str, Any] = {"role": "assistant", "content": result.generation}
    if result.calls:
        message["tool_calls"] = [tool_call(c, tools) for c in result.calls]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": FINISH.get(result.finish_reason, "stop")}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": result.new_tokens,
                  "total_tokens": prompt_tokens + result.new_tokens},
        "toolken_plus": {
            "answer": _jsonable(result.answer),  # the task's parse of the reply (GSM8K: the number)
            "trace": result.trace,  # the reply with calls written <tool>(args)=result
            "finish_reason": result.finish_reason,  # answer | eos | length | context
            "notes": [*notes, *result.notes],
            "reranks": _jsonable(result.reranks),  # Toolken+ stage-2 decisions (empty without a reranker)
        },
    }


def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None) -> dict:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}

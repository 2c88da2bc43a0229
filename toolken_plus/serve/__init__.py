"""Serving an agent: an OpenAI-compatible HTTP API (`toolken-plus serve`) and a REPL (`toolken-plus chat`).

    from toolken_plus import load_agent
    from toolken_plus.serve import create_app

    app = create_app(load_agent("outputs/train/gsm8k_xl/<run>"), max_batch=16)   # FastAPI; run it with uvicorn

worker.py   BatchWorker: one thread owns the agent; concurrent requests join its batched loop
openai.py   the chat-completions request and reply format
app.py      create_app: POST /v1/chat/completions, GET /health, GET /v1/models
chat.py     chat_loop: the REPL of `toolken-plus chat`

The commands themselves (Hydra, conf/serve.yaml) are toolken_plus/cli/serve.py: serve_main, chat_main.

FastAPI and uvicorn come with the `serve` extra; they load on first use.
"""

import importlib

_LAZY = {
    "create_app": "toolken_plus.serve.app",
    "BatchWorker": "toolken_plus.serve.worker",
    "chat_loop": "toolken_plus.serve.chat",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'toolken_plus.serve' has no attribute {name!r}")

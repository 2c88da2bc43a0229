"""`toolken-plus serve` and `toolken-plus chat`: an agent behind an HTTP API, or in a terminal.

    toolken-plus serve checkpoint=<run dir of train.py> [serve.port=8765] [serve.host=0.0.0.0]
        [serve.max_batch=16] [serve.max_wait_ms=10] [serve.max_prompt_tokens=N] [agent.max_new_tokens=…] [model=…]
    toolken-plus chat checkpoint=<run dir of train.py> [agent.…]      # type a question, read the reply and its tool calls
    toolken-plus serve --help                                         # every option (toolken_plus/conf/serve.yaml)

The agent is built as infer.py builds it (the checkpoint records its backbone
and task; model= / task= / reranker= / agent.* override them). Hydra writes its
log and the composed config into outputs/<serve|chat>/<task>/<time>/.
"""

from __future__ import annotations

import logging
import os
import sys

# Before transformers / huggingface_hub are imported: they read these once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import hydra  # noqa: E402

from toolken_plus.cli.configs import register_configs  # noqa: E402
from toolken_plus.cli.hydra_argv import run_hydra_main  # noqa: E402
from toolken_plus.config import CONFIG_DIR  # noqa: E402

log = logging.getLogger(__name__)

register_configs()

# What makes `chat` a run of its own on conf/serve.yaml (before the user's overrides, which may change them).
CHAT_OVERRIDES = ["stage=chat", "hydra.job.name=chat"]


def _agent(cfg):
    from toolken_plus.config import as_config
    from toolken_plus.config.schema import ServeRunConfig
    from toolken_plus.config.validation import validate_config
    from toolken_plus.infer.recipe import agent_from_config

    cfg = validate_config(as_config(cfg, ServeRunConfig))
    return cfg, agent_from_config(cfg)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="serve")
def serve_hydra_main(cfg) -> None:
    import uvicorn

    from toolken_plus.serve.app import create_app

    cfg, agent = _agent(cfg)
    opts = cfg.serve
    try:
        app = create_app(agent, max_batch=opts.max_batch, max_wait_ms=opts.max_wait_ms,
                         max_prompt_tokens=opts.max_prompt_tokens)
        log.info("serving %s (%s) on http://%s:%d: POST /v1/chat/completions, GET /health", cfg.checkpoint or "no checkpoint",
                 agent.backbone.name, opts.host, opts.port)
        uvicorn.run(app, host=opts.host, port=opts.port, log_level="info")
    finally:
        agent.close()


def serve_main(argv: list[str] | None = None, prog: str = "toolken-plus serve") -> int:
    """`toolken-plus serve [overrides]`: argv are Hydra's (default sys.argv[1:])."""
    return run_hydra_main(serve_hydra_main, prog, argv)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="serve")
def chat_hydra_main(cfg) -> None:
    from toolken_plus.serve.chat import chat_loop

    _, agent = _agent(cfg)
    agent.cfg.progress = False
    with agent:
        chat_loop(agent)


def chat_main(argv: list[str] | None = None, prog: str = "toolken-plus chat") -> int:
    """`toolken-plus chat [overrides]`: argv are Hydra's (default sys.argv[1:])."""
    return run_hydra_main(chat_hydra_main, prog, [*CHAT_OVERRIDES, *(sys.argv[1:] if argv is None else argv)])


__all__ = ["serve_main", "chat_main"]

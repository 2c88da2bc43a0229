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
from typing import Callable

log = logging.getLogger(__name__)


def _hydra_main(fn: Callable, argv: list[str] | None, prefix: list[str] = ()) -> int:
    """Run fn(cfg) on toolken_plus/conf/serve.yaml composed with `argv` (Hydra's command
    line: overrides, --help, --cfg job, …) as infer.py's @hydra.main does."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    import hydra

    from toolken_plus.cli.configs import register_configs
    from toolken_plus.config import CONFIG_DIR

    register_configs()
    outcome = {"rc": 0}

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="serve")
    def entry(cfg) -> None:
        outcome["rc"] = fn(cfg)

    saved = sys.argv
    sys.argv = ["toolken-plus", *prefix, *(saved[1:] if argv is None else argv)]
    try:
        entry()
    finally:
        sys.argv = saved
    return outcome["rc"]


def _agent(cfg):
    from toolken_plus.config import as_config
    from toolken_plus.config.schema import ServeRunConfig
    from toolken_plus.config.validation import validate_config
    from toolken_plus.infer.recipe import agent_from_config

    cfg = validate_config(as_config(cfg, ServeRunConfig))
    return cfg, agent_from_config(cfg)


def _serve(cfg) -> int:
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
    return 0


def serve_main(argv: list[str] | None = None) -> int:
    """`toolken-plus serve [overrides]`: argv are Hydra's (default sys.argv[1:])."""
    return _hydra_main(_serve, argv)


def _chat(cfg) -> int:
    from toolken_plus.serve.chat import chat_loop

    _, agent = _agent(cfg)
    agent.cfg.progress = False
    with agent:
        return chat_loop(agent)


def chat_main(argv: list[str] | None = None) -> int:
    """`toolken-plus chat [overrides]`: argv are Hydra's (default sys.argv[1:])."""
    return _hydra_main(_chat, argv, prefix=["stage=chat", "hydra.job.name=chat"])


__all__ = ["serve_main", "chat_main"]

"""Answer a task's evaluation questions with trained toolkens, and score them:
`toolken-plus infer` (or `python infer.py`).

    toolken-plus infer checkpoint=<run dir of train> [reranker=<stage 2>]
        [data.limit_eval=N] [data.eval_file=PATH] [data.eval=<set>] [agent.batch_size=16]
    toolken-plus infer experiment=<benchmark> agent.setting=no_tools     # the same prompts, no tools
    toolken-plus infer --help       # the groups and their options; docs/configuration.md explains them

The checkpoint records its backbone and task (model= / task= override them).
Writes predictions.jsonl (as it goes; rerunning the same run dir resumes),
metrics.json and report.md into the Hydra run dir.
"""

import os

# Before transformers / huggingface_hub are imported: they read these once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402

from toolken_plus.cli.configs import register_configs  # noqa: E402
from toolken_plus.cli.hydra_argv import run_hydra_main  # noqa: E402
from toolken_plus.config import CONFIG_DIR  # noqa: E402
from toolken_plus.infer.recipe import run_inference  # noqa: E402
from toolken_plus.tasks.base import format_trace  # noqa: E402

register_configs()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="infer")
def hydra_main(cfg) -> float:
    run_dir = HydraConfig.get().runtime.output_dir
    metrics, rows, task = run_inference(cfg, run_dir)
    if task.mode == "text":
        for row in rows[: cfg.agent.show]:
            print(format_trace(row), end="\n\n")
    else:
        print(open(os.path.join(run_dir, "report.md")).read())
    print(f"{task.headline(metrics)}, {metrics['seconds']} s; run dir: {run_dir}")
    return metrics.get(task.main_metric) or 0.0  # the value Hydra sweepers optimise


def main(argv: list[str] | None = None, prog: str = "toolken-plus infer") -> int:
    """Answer and score a task's questions with trained toolkens (Hydra overrides, as `python infer.py`)."""
    return run_hydra_main(hydra_main, prog, argv)


if __name__ == "__main__":
    main()

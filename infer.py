"""Answer a task's evaluation questions with trained toolkens, and score them.

    python infer.py checkpoint=<run dir of train.py> [reranker=<stage 2>]
        [data.limit_eval=N] [data.eval_file=PATH] [data.eval=<set>] [agent.batch_size=16]
    python infer.py experiment=<benchmark> agent.setting=no_tools     # the same prompts, no tools
    python infer.py --help          # the groups and their options; docs/configuration.md explains them

The checkpoint records its backbone and task (model= / task= override them).
Writes predictions.jsonl (as it goes; rerunning the same run dir resumes),
metrics.json and report.md into the Hydra run dir.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402

from toolken_plus.cli.configs import register_configs  # noqa: E402
from toolken_plus.config import CONFIG_DIR  # noqa: E402
from toolken_plus.infer.recipe import run_inference  # noqa: E402
from toolken_plus.tasks.base import format_trace  # noqa: E402

register_configs()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="infer")
def main(cfg) -> float:
    run_dir = HydraConfig.get().runtime.output_dir
    metrics, rows, task = run_inference(cfg, run_dir)
    if task.mode == "text":
        for row in rows[: cfg.agent.show]:
            print(format_trace(row), end="\n\n")
    else:
        print(open(os.path.join(run_dir, "report.md")).read())
    print(f"{task.headline(metrics)}, {metrics['seconds']} s; run dir: {run_dir}")
    return metrics.get(task.main_metric) or 0.0  # the value Hydra sweepers optimise


if __name__ == "__main__":
    main()

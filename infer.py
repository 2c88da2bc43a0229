"""Answer questions with the agent loop and evaluate.

    python infer.py experiment=gsm8k_xl checkpoint=<run dir of train.py> \
        [data.limit_eval=N] [data.eval_file=PATH] [agent.setting=toolkens|no_tools] \
        [agent.logit_bias=B] [agent.batch_size=16] [reranker=none|llm|embedding]
    python infer.py experiment=metatool checkpoint=<run dir> [reranker=none|llm|embedding] \
        [data.eval=selection|awareness] [data.eval_file=queries.csv]

Writes predictions.jsonl, metrics.json and report.md (MetaTool: also
confusion.png) into the Hydra run dir.
"""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from toolken_plus.config import CONFIG_DIR  # noqa: E402  (also registers resolvers)
from toolken_plus.infer.evaluate import format_trace  # noqa: E402
from toolken_plus.infer.recipe import run_inference  # noqa: E402


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="infer")
def main(cfg: DictConfig) -> float:
    run_dir = HydraConfig.get().runtime.output_dir
    if cfg.task.name == "metatool":
        return choice_main(cfg, run_dir)
    metrics, out = run_inference(cfg, run_dir)
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    for row in rows[: int(cfg.agent.show)]:
        print(format_trace(row), end="\n\n")
    print(f"accuracy {metrics['accuracy']:.3f} ({metrics['correct']}/{metrics['n']}), tool calls {metrics['tool_calls']}, "
          f"errors {metrics['tool_errors']}, false-positive calls {metrics['false_positive_calls']}, "
          f"{metrics['seconds']} s; run dir: {out}")
    return metrics["accuracy"]


def choice_main(cfg: DictConfig, run_dir: str) -> float:
    from toolken_plus.config import to_dict
    from toolken_plus.infer.choice import run_choice_inference

    metrics, out = run_choice_inference(to_dict(cfg), run_dir)
    print((out / "report.md").read_text())
    print(f"run dir: {out}")
    return metrics.get("top1_accuracy", metrics.get("awareness_accuracy", 0.0))


if __name__ == "__main__":
    main()

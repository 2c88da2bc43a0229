"""Train toolkens on a frozen backbone.

    python train.py experiment=gsm8k_xl [model=tiny_random] [data.limit_train=N]
        [trainer.epochs=E] [trainer.lr=LR] [trainer.batch_size=B] [seed=S] [logger=wandb]
    python train.py task=custom task.train_file=… checkpoint=<run dir> 'tools.add=[name]'   # add tools

The Hydra run dir receives toolkens.safetensors, toolken_config.json and
metrics.json; rerunning with the same `hydra.run.dir=…` resumes training.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from toolken_plus.config import CONFIG_DIR  # noqa: E402  (also registers resolvers)
from toolken_plus.train.recipe import TrainToolkensRecipe, format_metrics_table  # noqa: E402


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    run_dir = HydraConfig.get().runtime.output_dir
    recipe = TrainToolkensRecipe(cfg, run_dir)
    metrics = recipe.run()
    if "val/f1" in metrics:
        print(format_metrics_table(metrics, recipe.task.tool_names))
        kept = recipe.addition is not None and not recipe.addition.recalibrate_bias
        how = "kept from the base checkpoint" if kept else "calibrated on validation"
        print(f"logit bias {metrics['logit_bias']:+.2f} ({how}); run dir: {run_dir}")
    else:
        print(f"trained {len(recipe.task.tool_names)} toolkens without validation data; run dir: {run_dir}")
    return metrics.get("val/f1", 0.0)  # the value Hydra sweepers optimise


if __name__ == "__main__":
    main()

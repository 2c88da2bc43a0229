"""Train toolkens on a frozen backbone: `toolken-plus train` (or `python train.py`).

    toolken-plus train experiment=<benchmark> [model=<backbone>] [reranker=<stage 2>]
        [data.limit_train=N] [trainer.epochs=E] [trainer.lr=LR] [seed=S] [logger=<logger>]
    toolken-plus train experiment=<benchmark> method=lora [method.r=R]   # the LoRA fine-tuning baseline
    toolken-plus train task=<task> … checkpoint=<run dir> 'tools.add=[name]'   # add tools to a trained model
    toolken-plus train --help       # the groups and their options; docs/configuration.md explains them

The Hydra run dir receives toolkens.safetensors, toolken_config.json and
metrics.json (method=lora: the PEFT adapter and method_config.json);
rerunning with the same `hydra.run.dir=…` resumes training.

    torchrun --nproc_per_node N train.py experiment=… [overrides…]
        # N processes build the feature caches together, rank 0 trains (toolken_plus/distributed.py)
"""

import os
import shutil
import sys
import tempfile

# Before transformers / huggingface_hub are imported: they read these once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402

import toolken_plus.distributed as distributed  # noqa: E402
from toolken_plus.cli.configs import register_configs  # noqa: E402
from toolken_plus.cli.hydra_argv import run_hydra_main  # noqa: E402
from toolken_plus.config import CONFIG_DIR  # noqa: E402
from toolken_plus.train.select import train_recipe  # noqa: E402

register_configs()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def hydra_main(cfg) -> float | None:
    distributed.init_from_env()  # under torchrun: join the ranks (toolken_plus/distributed.py)
    recipe = train_recipe(cfg, HydraConfig.get().runtime.output_dir)
    metrics = recipe.run()
    if distributed.rank() > 0:  # helped build the feature caches; rank 0 trains
        return None
    print(recipe.summary())
    # the value Hydra sweepers maximise: toolkens' validation F1, LoRA's negated validation loss
    return metrics["val/f1"] if "val/f1" in metrics else -metrics.get("val/loss", 0.0)


def main(argv: list[str] | None = None, prog: str = "toolken-plus train") -> int:
    """Train toolkens on a frozen backbone (Hydra overrides, as `python train.py`)."""
    rank, scratch = distributed.env_world()[0], None
    args = list(sys.argv[1:] if argv is None else argv)
    if rank > 0:
        # torchrun rank > 0: rank 0 alone writes the run dir; this one gets a
        # throwaway one (Hydra makes one for every process).
        scratch = tempfile.mkdtemp(prefix=f"toolken-rank{rank}-")
        args = [a for a in args if not a.startswith(("hydra.run.dir=", "hydra.output_subdir="))]
        args += [f"hydra.run.dir={scratch}", "hydra.output_subdir=null"]
    try:
        return run_hydra_main(hydra_main, prog, args)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        distributed.shutdown()


if __name__ == "__main__":
    main()

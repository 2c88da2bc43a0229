"""Training: the feature cache (one pass of the frozen backbone), the
factorised ToolkenGPT loss, the stage-1 trainer and bias calibration, stage-2
(reranker) fitting, adding tools to a checkpoint, and the recipe behind
train.py."""

"""Inference: the agent loop, choice-point prediction, evaluation with
predictions written as they come, and the recipe behind infer.py."""

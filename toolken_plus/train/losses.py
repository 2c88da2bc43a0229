"""The ToolkenGPT loss, factorised for a frozen LM.

Full loss at one position: cross-entropy over [W_V h ; W_τ h] with gold
either a vocabulary token v or a toolken k. With a = logsumexp(W_V h) and
g = (W_V h)[v] precomputed (they do not depend on W_τ):

    CE = logsumexp(a, W_τ h) − (g if gold is v else (W_τ h)[k])

which is exact, not an approximation (tests/test_losses.py checks it
against the full concatenated cross-entropy).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def factorized_toolken_loss(
    tool_scores: torch.Tensor,  # (P, n) W_τ h
    logsumexp_vocab: torch.Tensor,  # (P,) a
    gold_vocab_logit: torch.Tensor,  # (P,) g
    tool_label: torch.Tensor,  # (P,) -1 for a vocabulary gold, k >= 0 for toolken k
    reduction: str = "mean",
) -> torch.Tensor:
    all_lse = torch.logsumexp(torch.cat([logsumexp_vocab[:, None], tool_scores], dim=1), dim=1)
    is_tool = tool_label >= 0
    tool_target = tool_scores.gather(1, tool_label.clamp_min(0).long()[:, None]).squeeze(1)
    target = torch.where(is_tool, tool_target, gold_vocab_logit)
    loss = all_lse - target
    return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss


def full_toolken_loss(vocab_logits: torch.Tensor, tool_scores: torch.Tensor, next_token: torch.Tensor, tool_label: torch.Tensor) -> torch.Tensor:
    """Reference: CE over the concatenated logits, as ToolkenGPT computes it.
    Used by the baseline recipe and by the exactness test."""
    logits = torch.cat([vocab_logits, tool_scores], dim=-1)
    target = torch.where(tool_label >= 0, vocab_logits.shape[-1] + tool_label, next_token)
    return F.cross_entropy(logits, target)

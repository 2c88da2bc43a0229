"""The `method` group: how the frozen backbone is taught to use tools.

    toolkens  ToolkenGPT / Toolken+ (default): toolken embeddings beside the
              frozen output head; a reranker (reranker=…) makes it Toolken+
    icl       in-context tool use: nothing is trained; the prompt gives the
              tools' docs and few-shot demos and the model writes its calls
              as text, which the same parser and tools execute
    lora      supervised fine-tuning of the backbone with a PEFT LoRA adapter
              on the same training data written as text with its calls;
              inference then parses the calls from text like icl

The baselines (icl, lora) answer the question a user asks first: is the
toolken method better, or cheaper, than prompting the model with the tools'
docs, or fine-tuning it? All three run on the same splits, are scored by the
same task code and run their calls through the same parser and tools.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


@dataclass
class ToolkensMethod:
    name: str = "toolkens"

    text_calls: ClassVar[bool] = False  # calls are toolkens, not text


@dataclass
class IclMethod:
    name: str = "icl"
    # Choice tasks whose tool docs do not all fit the context (MetaTool's 199
    # against SmolLM2's 2,048 tokens): the prompt lists the top-m docs per
    # query, retrieved with the MiniLM sentence embedder (0 = every doc).
    retrieve: int = 20
    max_doc_chars: int = 200  # each listed doc is cut to this many characters

    text_calls: ClassVar[bool] = True


@dataclass
class LoraMethod:
    name: str = "lora"
    r: int = 8  # LoRA rank
    alpha: int = 16  # scaling = alpha / r
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    lr: float = 2e-4  # AdamW; trainer.epochs, trainer.batch_size and trainer.weight_decay are shared with toolkens
    max_length: int = 512  # tokens of prompt + completion; longer ones are cut from the left of the prompt
    # A step's examples go forward and backward in micro-batches of at most this many padded tokens
    # (gradients accumulate: the same update): backward keeps every layer's activations, ~14 GB
    # for 32 MetaTool queries at once on SmolLM2-135M
    max_tokens_per_micro_batch: int = 1024

    text_calls: ClassVar[bool] = True


METHODS = {"toolkens": ToolkensMethod, "icl": IclMethod, "lora": LoraMethod}


def method_name(method) -> str:
    """The name of a method spec; None (no method= given) is toolkens."""
    return "toolkens" if method is None else method.name


__all__ = ["IclMethod", "LoraMethod", "METHODS", "ToolkensMethod", "method_name"]

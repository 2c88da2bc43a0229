"""Toolken+ stage 2: re-score the stage-1 candidates against the tools'
documentation, with a Reject option (base.py). Rerankers: none (base.py,
ToolkenGPT), llm (llm.py, Toolken+), embedding (embedding.py, ours);
stage-2 training data is mined from the stage-1 head (mining.py)."""

from toolken_plus.rerank.base import NoRerank, NoReranker, Ranked, RerankContext, Reranker, top_candidates
from toolken_plus.rerank.embedding import EmbeddingRerank, EmbeddingReranker
from toolken_plus.rerank.llm import LLMRerank, LLMReranker

__all__ = ["EmbeddingRerank", "EmbeddingReranker", "LLMRerank", "LLMReranker", "NoRerank", "NoReranker", "Ranked",
           "RerankContext", "Reranker", "top_candidates"]

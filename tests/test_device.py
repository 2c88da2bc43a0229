"""device=, dtype=, device_map= (config/device.py): resolved at start, applied
to training, the feature cache and inference; CPU runs exactly as before."""

import json

import pytest
import torch
from conftest import GSM8K_XL, compose, run_entry_point

from toolken_plus.backbone import TinyRandomBackbone, build_backbone
from toolken_plus.backbone.loading import HFBackbone
from toolken_plus.config.device import Placement, resolve_device, resolve_dtype, resolve_placement
from toolken_plus.config.schema import InferConfig, TrainConfig
from toolken_plus.config.validation import ConfigError, config_problems

TINY = [*GSM8K_XL, "model=tiny_random", "data.limit_train=16", "data.limit_eval=8",
        "trainer.epochs=1", "trainer.progress=false", "logger=none"]
INFER = ["data.limit_eval=2", "agent.batch_size=2", "agent.max_new_tokens=6", "agent.max_arg_tokens=3",
         "agent.progress=false", "agent.logit_bias=2.0"]


def test_defaults_keep_todays_placement():
    cfg = TrainConfig()
    assert (cfg.device, cfg.dtype, cfg.device_map) == ("auto", None, None)
    assert config_problems(cfg) == []
    p = resolve_placement(cfg)
    assert p.device.type == ("cuda" if torch.cuda.is_available() else "cpu") and p.dtype is None
    assert HFBackbone().dtype == "float32"  # dtype=null: the backbone's own, float32 as before


def test_options_compose_for_train_and_infer():
    cfg = compose(["device=cpu", "dtype=bfloat16", "device_map=auto"], "config")
    assert (cfg.device, cfg.dtype, cfg.device_map) == ("cpu", "bfloat16", "auto")
    assert compose(["device=cuda:1"], "infer").device == "cuda:1"


def test_bad_device_and_dtype_are_refused_with_the_allowed_values():
    problems = config_problems(InferConfig(device="gpu", dtype="float8", device_map="everywhere"))
    assert any(p.startswith("device='gpu': must be auto, cpu, cuda or cuda:N") for p in problems), problems
    assert any(p.startswith("dtype='float8'") and "bfloat16" in p for p in problems), problems
    assert any(p.startswith("device_map='everywhere'") for p in problems), problems
    with pytest.raises(ConfigError, match="must be auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")


def test_dtype_resolution():
    cpu = torch.device("cpu")
    assert resolve_dtype(None, cpu) is None
    assert resolve_dtype("auto", cpu) is torch.float32
    assert resolve_dtype("bfloat16", cpu) is torch.bfloat16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_gpu_fails_early_with_a_clear_message(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="device=cuda: no CUDA GPU is available"):
        resolve_device("cuda")
    # train.py stops at setup, before data or model: the message, no torch traceback
    proc = run_entry_point("train.py", TINY + ["device=cuda", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    assert proc.returncode != 0
    assert "device=cuda: no CUDA GPU is available" in proc.stderr
    assert "torch/cuda" not in proc.stderr


def test_placement_moves_and_casts_a_backbone(tmp_path, tiny_backbone):
    spec = TinyRandomBackbone(hidden_size=16)
    bb = build_backbone(spec, tmp_path, Placement(torch.device("cpu"), torch.bfloat16))
    assert bb.model.dtype == torch.bfloat16 and bb.device.type == "cpu"
    with pytest.raises(ValueError, match="device_map=auto applies to HF backbones"):
        build_backbone(spec, tmp_path, Placement(torch.device("cpu"), None, "auto"))


def test_bfloat16_backbone_gets_its_own_feature_cache(tiny_backbone):
    import copy

    from toolken_plus.train.cache import cache_key

    half = copy.deepcopy(tiny_backbone)
    half.model.to(torch.bfloat16)
    assert cache_key(tiny_backbone, [], "float16", "d") != cache_key(half, [], "float16", "d")


def _train_then_infer(tmp_path, placement_args):
    tmp_path.mkdir(parents=True, exist_ok=True)
    run = tmp_path / "run"
    proc = run_entry_point("train.py", TINY + placement_args + [f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "toolkens.safetensors").is_file()
    inf = tmp_path / "inf"
    proc = run_entry_point("infer.py", [f"checkpoint={run}", *INFER, *placement_args, f"hydra.run.dir={inf}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((run / "metrics.json").read_text()), json.loads((inf / "metrics.json").read_text())


def test_cpu_float32_equals_the_default_end_to_end(tmp_path):
    explicit = _train_then_infer(tmp_path / "a", ["device=cpu", "dtype=float32"])
    if torch.cuda.is_available():
        return
    auto = _train_then_infer(tmp_path / "b", ["device=auto"])  # = cpu here
    for key in ("val/f1", "logit_bias", "train/loss"):
        assert explicit[0][key] == auto[0][key], key
    assert explicit[1]["n"] == auto[1]["n"] == 2 and explicit[1]["accuracy"] == auto[1]["accuracy"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tiny_train_and_infer_on_cuda(tmp_path):
    train_m, infer_m = _train_then_infer(tmp_path, ["device=cuda"])
    assert "val/f1" in train_m and infer_m["n"] == 2
    train_m, infer_m = _train_then_infer(tmp_path / "bf16", ["device=cuda", "dtype=bfloat16"])
    assert infer_m["n"] == 2


@pytest.mark.parametrize("native", [True, False])
def test_state_dtype_auto_is_bfloat16_only_where_the_cpu_has_it(monkeypatch, native):
    """reranker.state_dtype=auto: bfloat16 on a CPU with AMX/AVX512-BF16, else
    the backbone's own (emulated bfloat16 would be slower than float32)."""
    from toolken_plus.config.device import dtype_name, resolve_state_dtype

    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: native, raising=False)
    cpu = torch.device("cpu")
    assert resolve_state_dtype("auto", cpu) == (torch.bfloat16 if native else None)
    assert resolve_state_dtype(None, cpu) is None and resolve_state_dtype("float16", cpu) == torch.float16
    assert dtype_name(torch.bfloat16) == "bfloat16" and dtype_name(None) is None
    with pytest.raises(ConfigError):
        resolve_state_dtype("int8", cpu)
    assert config_problems({"reranker": {"state_dtype": "int8"}}) and not config_problems({"reranker": {"state_dtype": "auto"}})

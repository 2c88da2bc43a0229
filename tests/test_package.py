"""The installable product: a wheel built from this checkout holds the Hydra
configs and the built-in tool packs, and once installed into a folder of its
own and run from a directory outside the repository (no source checkout on the
import path), `toolken-plus` trains, infers, lists tools and reports."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import FIXTURE_DATA, PROJECT_ROOT

# What a wheel is built from; built from a copy, because a build writes
# build/ and *.egg-info beside its sources.
SOURCES = ("pyproject.toml", "README.md", "toolken_plus", "tools")
# The fixture's GSM8K train.jsonl has 40 questions: hold 8 out for validation.
TINY_TRAIN = ["experiment=gsm8k_xl", "task.n_val=8", "model=tiny_random", "data.limit_train=16", "data.limit_eval=8",
              "trainer.epochs=1", "trainer.progress=false"]


def _pip(*args: str) -> None:
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    (tmp / "src").mkdir()
    for name in SOURCES:
        src = PROJECT_ROOT / name
        if src.is_dir():
            shutil.copytree(src, tmp / "src" / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, tmp / "src" / name)
    _pip("wheel", str(tmp / "src"), "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"))
    (built,) = (tmp / "dist").glob("toolken_plus-*.whl")
    return built


@pytest.fixture(scope="module")
def site(wheel, tmp_path_factory) -> Path:
    """The wheel installed into a folder of its own; its dependencies come from this venv."""
    target = tmp_path_factory.mktemp("site")
    _pip("install", "--no-deps", "--target", str(target), str(wheel))
    return target


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory) -> Path:
    """A working directory outside the repository."""
    cwd = tmp_path_factory.mktemp("user")
    assert PROJECT_ROOT not in cwd.parents
    return cwd


def _env(site: Path, cwd: Path) -> dict:
    # Only the installed copy on the path (the venv's editable install of the
    # checkout is a finder behind it); a private cache; the fixture data.
    return {**os.environ, "PYTHONPATH": str(site), "TOOLKEN_PLUS_DATA": str(FIXTURE_DATA),
            "TOOLKEN_PLUS_CACHE": str(cwd / "cache"), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}


def _toolken_plus(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The installed console script, run as a user would."""
    exe = site / "bin" / "toolken-plus"
    return subprocess.run([str(exe), *args], cwd=cwd, env=_env(site, cwd), capture_output=True, text=True, timeout=300)


def test_wheel_holds_the_configs_and_the_tool_packs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {p.relative_to(PROJECT_ROOT).as_posix() for p in (PROJECT_ROOT / "toolken_plus" / "conf").rglob("*.yaml")}
    assert {"toolken_plus/conf/config.yaml", "toolken_plus/conf/infer.yaml",
            "toolken_plus/conf/experiment/gsm8k_xl.yaml"} <= configs
    assert configs <= names, f"not in the wheel: {sorted(configs - names)} (pyproject.toml: packages, package-data)"
    assert {"toolken_plus_tools/__init__.py", "toolken_plus_tools/calculator.py"} <= names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "toolken-plus = toolken_plus.cli:main" in text and "toolken_plus_tools.calculator:PACK" in text


def test_installed_package_is_the_one_that_runs(site, elsewhere):
    code = ("import toolken_plus, toolken_plus_tools; from toolken_plus.config import CONFIG_DIR; "
            "print(toolken_plus.__file__); print(toolken_plus_tools.__file__); print(CONFIG_DIR)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=_env(site, elsewhere),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for path in proc.stdout.split():
        assert Path(path).is_relative_to(site), path


def test_installed_cli_trains_infers_lists_and_reports(site, elsewhere):
    runs = elsewhere / "outputs"
    proc = _toolken_plus(site, elsewhere, "train", *TINY_TRAIN, f"hydra.run.dir={runs / 'train'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {"toolkens.safetensors", "toolken_config.json", "metrics.json"} <= {p.name for p in (runs / "train").iterdir()}
    # Hydra composed the configs inside the installed package
    assert f"path: {site}/toolken_plus/conf\n      schema: file\n      provider: main" in (
        runs / "train" / ".hydra" / "hydra.yaml").read_text()

    proc = _toolken_plus(site, elsewhere, "infer", f"checkpoint={runs / 'train'}", "data.limit_eval=2", "agent.batch_size=2",
                         "agent.max_new_tokens=8", "agent.progress=false", f"hydra.run.dir={runs / 'infer'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((runs / "infer" / "metrics.json").read_text())["n"] == 2
    assert "accuracy" in proc.stdout

    proc = _toolken_plus(site, elsewhere, "report", str(runs), "--out", str(elsewhere / "reports"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GSM8K-XL" in (elsewhere / "reports" / "report.md").read_text()

    proc = _toolken_plus(site, elsewhere, "tools", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    tools = {t["name"]: t for t in json.loads(proc.stdout)["tools"]}
    assert {"add", "subtract", "multiply", "divide"} <= tools.keys() and tools["add"]["package"] == "toolken_plus"


def test_installed_train_help_is_hydras(site, elsewhere):
    proc = _toolken_plus(site, elsewhere, "train", "--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "powered by Hydra" in proc.stdout and "experiment: gsm8k_xl, metatool, virtualhome" in proc.stdout
    proc = _toolken_plus(site, elsewhere, "--help")
    assert proc.returncode == 0 and all(name in proc.stdout for name in ("train", "infer", "tools", "report"))


def test_dispatch_table_and_its_errors(capsys):
    from toolken_plus.cli import commands

    assert {"train", "infer", "tools", "report"} <= commands.COMMANDS.keys()
    assert commands.main([]) == 2 and "usage: toolken-plus COMMAND" in capsys.readouterr().err
    assert commands.main(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err
    assert commands.main(["--version"]) == 0 and capsys.readouterr().out.startswith("toolken-plus 0.")
    seen = []
    commands.COMMANDS["echo"] = lambda argv: seen.append(argv)  # a command is one entry: name -> callable(argv)
    try:
        assert commands.main(["echo", "a=1", "--help"]) == 0 and seen == [["a=1", "--help"]]
    finally:
        del commands.COMMANDS["echo"]


def test_cli_imports_train_and_infer_only_when_they_run():
    code = "import sys, toolken_plus.cli; print('torch' in sys.modules, 'toolken_plus.train' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert proc.stdout.split() == ["False", "False"], proc.stderr

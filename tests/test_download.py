"""Data without the project's data folder: the data folders' lookup order,
the error for a missing dataset, and the shipped manifest against the real
data."""

import re
import shutil

import pytest
from conftest import FIXTURE_DATA

from toolken_plus.config.schema import DataConfig
from toolken_plus.data import locate, manifest
from toolken_plus.data.locate import task_root
from toolken_plus.tasks.gsm8k_xl import Gsm8kXL
from toolken_plus.tasks.metatool import MetaTool


# -------------------------------------------------------------------- lookup
def _roots(tmp_path, monkeypatch, *names):
    """Four data folders in lookup order (config, env, shared, download dir),
    each a copy of the fixture's datasets `names`; the env, shared and
    download-dir ones are the ones the lookup sees."""
    roots = {k: tmp_path / k for k in ("config", "env", "shared", "cache")}
    roots["cache"] = tmp_path / "cache" / "data"
    for root in roots.values():
        root.mkdir(parents=True)
        for name in names:
            shutil.copytree(FIXTURE_DATA / name, root / name)
    monkeypatch.setenv("TOOLKEN_PLUS_DATA", str(roots["env"]))
    monkeypatch.setattr(locate, "SHARED_DATA", roots["shared"])
    monkeypatch.setenv("TOOLKEN_PLUS_CACHE", str(tmp_path / "cache"))
    return roots


def test_lookup_order_config_env_shared_download_dir(tmp_path, monkeypatch):
    roots = _roots(tmp_path, monkeypatch, "metatool")
    assert locate.download_dir() == roots["cache"]
    assert [label for label, _ in locate.search_roots()] == ["$TOOLKEN_PLUS_DATA", "../shared/data", "download dir"]
    metatool = MetaTool()
    assert task_root(DataConfig(root=str(roots["config"])), metatool) == roots["config"]
    assert task_root(DataConfig(), metatool) == roots["env"]
    monkeypatch.delenv("TOOLKEN_PLUS_DATA")
    assert task_root(DataConfig(), metatool) == roots["shared"]
    shutil.rmtree(roots["shared"])
    assert task_root(DataConfig(), metatool) == roots["cache"]
    # the task reads from there
    assert len(MetaTool().load(DataConfig()).train) == len(MetaTool().load(DataConfig(root=str(FIXTURE_DATA))).train)


def test_an_incomplete_folder_is_passed_over(tmp_path, monkeypatch):
    roots = _roots(tmp_path, monkeypatch, "metatool")
    (roots["env"] / "metatool" / "plugin_des.json").unlink()  # e.g. a download that stopped half way
    assert task_root(DataConfig(), MetaTool()) == roots["shared"]


def test_data_root_when_set_is_the_only_folder_searched(tmp_path, monkeypatch):
    roots = _roots(tmp_path, monkeypatch, "metatool")
    (roots["config"] / "metatool" / "plugin_des.json").unlink()
    with pytest.raises(FileNotFoundError) as err:
        MetaTool().load(DataConfig(root=str(roots["config"])))
    assert str(err.value).startswith(f"data.root={roots['config']} does not hold dataset 'metatool' (metatool needs "
                                     f"metatool/data/all_clean_data.csv, metatool/plugin_des.json, metatool/tmp_dataset/Task1.json; "
                                     f"{roots['config'] / 'metatool'} lacks plugin_des.json). Download it there with "
                                     f"`toolken-plus data download --only metatool --to {roots['config']}`")


def test_each_dataset_is_found_on_its_own(tmp_path, monkeypatch):
    """GSM8K-XL reads gsm8k/ and gsm8k-xl/: each from the first folder that has it."""
    roots = _roots(tmp_path, monkeypatch)
    shutil.copytree(FIXTURE_DATA / "gsm8k", roots["env"] / "gsm8k")
    shutil.copytree(FIXTURE_DATA / "gsm8k-xl", roots["cache"] / "gsm8k-xl")
    task = Gsm8kXL(n_val=8)
    assert len(task.load(DataConfig()).train) == 32
    assert len(task.eval_items(DataConfig())) == len(task.eval_items(DataConfig(root=str(FIXTURE_DATA))))
    assert task_root(DataConfig(), task) == roots["cache"]


def test_a_missing_dataset_names_the_command_that_gets_it(tmp_path, monkeypatch):
    roots = _roots(tmp_path, monkeypatch)
    with pytest.raises(FileNotFoundError, match=r"dataset 'metatool' not found .*`toolken-plus data download --only metatool`") as err:
        MetaTool().load(DataConfig())
    for label in ("env", "shared", "cache"):
        assert str(roots[label]) in str(err.value)

    shutil.copytree(FIXTURE_DATA / "gsm8k-xl", roots["shared"] / "gsm8k-xl")  # gsm8k-xl there, gsm8k (training data) nowhere
    (roots["env"] / "gsm8k").mkdir()
    with pytest.raises(FileNotFoundError, match=r"dataset 'gsm8k' not found .*gsm8k needs gsm8k/train\.jsonl; .*/env/gsm8k lacks "
                                              r"train\.jsonl\)\. Download it with `toolken-plus data download --only gsm8k`"):
        Gsm8kXL(n_val=8).load(DataConfig())
    assert Gsm8kXL().eval_items(DataConfig(limit_eval=2))  # evaluation needs gsm8k-xl only


# ------------------------------------------------------------ the manifest
def test_the_manifest_pins_every_file_to_a_full_commit():
    assert len({f.path for f in manifest.FILES}) == len(manifest.FILES)
    for f in manifest.FILES:
        assert re.fullmatch(r"https://raw\.githubusercontent\.com/[\w.-]+/[\w.-]+/[0-9a-f]{40}/\S+", f.url), f.url
        assert re.fullmatch(r"[0-9a-f]{64}", f.sha256) and f.size > 0 and f.licence
        assert f.dataset in manifest.dataset_names()
    for name in manifest.dataset_names():
        assert manifest.required_files(name), name


def test_the_fixture_holds_every_dataset():
    """So every test on tests/fixtures/data still finds its data there."""
    for name in manifest.dataset_names():
        assert locate.has_dataset(FIXTURE_DATA, name), (name, locate.missing_files(FIXTURE_DATA, name))


def test_the_shipped_manifest_matches_the_real_data(full_data_root):
    assert manifest.check_folder(full_data_root) == []
    real = {str(p.relative_to(full_data_root)) for p in full_data_root.rglob("*") if p.is_file() and p.name != "README.md"}
    assert real == {f.path for f in manifest.FILES}

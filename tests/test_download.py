"""Data without the project's data folder: `toolken-plus data download`
against a local HTTP server serving the fixture data, the data folders'
lookup order, the error for a missing dataset, and the shipped manifest
against the real data."""

import functools
import hashlib
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import FIXTURE_DATA

from toolken_plus import rundir
from toolken_plus.cli import main as cli_main
from toolken_plus.config.schema import DataConfig
from toolken_plus.data import download as download_module
from toolken_plus.data import locate, manifest
from toolken_plus.data.download import DownloadError, data_main, download
from toolken_plus.data.locate import task_root
from toolken_plus.data.manifest import File
from toolken_plus.tasks.gsm8k_xl import Gsm8kXL
from toolken_plus.tasks.metatool import MetaTool

FIXTURE_FILES = sorted(str(p.relative_to(FIXTURE_DATA)) for p in FIXTURE_DATA.rglob("*") if p.is_file() and p.name != "README.md")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A threaded HTTP server on localhost serving a copy of the fixture data
    (the data folder's layout); yields its base URL and folder."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    served = tmp_path / "served"
    shutil.copytree(FIXTURE_DATA, served, ignore=shutil.ignore_patterns("README.md"))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def fixture_manifest(base_url: str, folder: Path) -> list[File]:
    """A manifest of the fixture files, pointing at the test server."""
    return [File(p, f"{base_url}/{quote(p)}", hashlib.sha256((folder / p).read_bytes()).hexdigest(), (folder / p).stat().st_size,
                 "test") for p in FIXTURE_FILES]


def _leftovers(folder: Path) -> list[Path]:
    """Temporary files (`.<name>.<pid>.<random>`, or older `….part`) and the
    staging folder: no data file's name starts with a dot."""
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".part")]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not rundir.pid_alive(child.pid)
    return child.pid


# ------------------------------------------------------------------ download
def test_download_writes_identical_files_and_a_rerun_skips_them(server, tmp_path):
    base, served = server
    files, out, lines = fixture_manifest(base, served), tmp_path / "out", []
    assert download(files, out, progress=lines.append) == {"downloaded": len(files), "skipped": 0}
    for p in FIXTURE_FILES:
        assert (out / p).read_bytes() == (FIXTURE_DATA / p).read_bytes(), p
    assert len(lines) == len(files) and all(line.endswith("downloaded, sha256 ok") for line in lines)
    assert lines[0].startswith(f"[ 1/{len(files)}] {files[0].path} (")
    assert not _leftovers(out)

    lines.clear()
    assert download(files, out, progress=lines.append) == {"downloaded": 0, "skipped": len(files)}
    assert all(line.endswith("present, sha256 ok") for line in lines)

    damaged = out / "metatool" / "plugin_des.json"  # a changed file is fetched again
    damaged.write_text("{}")
    lines.clear()
    assert download(files, out, progress=lines.append) == {"downloaded": 1, "skipped": len(files) - 1}
    assert damaged.read_bytes() == (FIXTURE_DATA / "metatool" / "plugin_des.json").read_bytes()
    assert [line for line in lines if "replaces a file that differed" in line] == [
        line for line in lines if "metatool/plugin_des.json" in line]


def test_temp_files_carry_the_pid_so_what_a_killed_download_left_is_removed_by_the_next(server, tmp_path, monkeypatch):
    base, served = server
    files, out = fixture_manifest(base, served), tmp_path / "out"
    renamed, replace = [], os.replace

    def recording_replace(src, dst):
        renamed.append(Path(src))
        replace(src, dst)

    monkeypatch.setattr(download_module.os, "replace", recording_replace)
    download(files, out, progress=lambda line: None)
    monkeypatch.undo()
    assert len(renamed) == len(files)
    for tmp, f in zip(renamed, files):  # rundir's temp file name, with this process's pid
        assert tmp.parent == out / ".partial" and tmp.name.startswith(f".{Path(f.path).name}.{os.getpid()}.")
        m = rundir._TEMP_FILE.match(tmp.name)
        assert m and int(m.group(1)) == os.getpid(), tmp.name
    assert not _leftovers(out)

    # a download killed mid-file (kill -9) left its temp file; one still running has its own
    staging = out / ".partial"
    staging.mkdir()
    stale = staging / f".plugin_des.json.{_dead_pid()}.k1ll3d_x"
    running = staging / f".train.jsonl.{os.getpid()}.runn1ng_"
    stale.write_bytes(b"half a file")
    running.write_bytes(b"being written")
    (out / "metatool" / "plugin_des.json").unlink()
    assert download(files, out, progress=lambda line: None) == {"downloaded": 1, "skipped": len(files) - 1}
    assert not stale.exists() and running.exists()  # the live one is kept, and so is .partial
    assert sorted(_leftovers(out)) == [staging, running]
    running.unlink()  # that download finished
    assert download(files, out, progress=lambda line: None) == {"downloaded": 0, "skipped": len(files)}
    assert not _leftovers(out)  # .partial is removed once empty

    # the same when nothing is left to download: the stale temp alone kept .partial from being removed
    staging.mkdir()
    stale.write_bytes(b"half a file")
    assert download(files, out, progress=lambda line: None) == {"downloaded": 0, "skipped": len(files)}
    assert not _leftovers(out)


def test_a_wrong_checksum_is_refused_naming_the_file_and_nothing_is_left(server, tmp_path):
    base, served = server
    files = fixture_manifest(base, served)
    bad = next(i for i, f in enumerate(files) if f.path == "metatool/plugin_des.json")
    files[bad] = File(files[bad].path, files[bad].url, "0" * 64, files[bad].size, "test")
    out = tmp_path / "out"
    with pytest.raises(DownloadError, match=r"metatool/plugin_des\.json: checksum mismatch, refused") as err:
        download(files, out, progress=lambda line: None)
    assert str(files[bad].url) in str(err.value) and "0" * 64 in str(err.value)
    assert not (out / "metatool" / "plugin_des.json").exists() and not _leftovers(out)
    assert (out / "metatool" / "data" / "all_clean_data.csv").is_file()  # the others are in place

    # a file longer than the manifest says is cut off and refused as well
    files[bad] = File(files[bad].path, files[bad].url, files[bad].sha256, 10, "test")
    with pytest.raises(DownloadError, match=r"metatool/plugin_des\.json: .* sends more than the expected 10 bytes"):
        download(files, out, progress=lambda line: None)
    assert not (out / "metatool" / "plugin_des.json").exists() and not _leftovers(out)


def test_a_missing_file_on_the_server_is_a_clear_error(server, tmp_path):
    base, served = server
    files = fixture_manifest(base, served)
    (served / "vh" / "func_dict.json").unlink()
    lines = []
    with pytest.raises(DownloadError, match=r"1 of \d+ files not downloaded:\n  vh/func_dict\.json: HTTP 404 .* from http://127") as err:
        download(files, tmp_path / "out", progress=lines.append)
    assert f"{base}/vh/func_dict.json" in str(err.value)
    assert [line for line in lines if "FAILED" in line] == [line for line in lines if "vh/func_dict.json" in line]
    assert not (tmp_path / "out" / "vh").exists() and not _leftovers(tmp_path / "out")


def test_an_unreachable_server_is_a_clear_error(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    files = [File("vh/func_dict.json", "http://127.0.0.1:9/vh/func_dict.json", "0" * 64, 1, "test")]  # port 9: nothing listens
    with pytest.raises(DownloadError, match=r"vh/func_dict\.json: cannot reach http://127\.0\.0\.1:9/.*--base-url"):
        download(files, tmp_path / "out", progress=lambda line: None)
    assert not (tmp_path / "out").exists()  # made for the download, removed as it stayed empty


def test_the_command_downloads_only_the_datasets_named(server, tmp_path, monkeypatch, capsys):
    base, served = server
    monkeypatch.setattr(manifest, "FILES", tuple(fixture_manifest("http://unused.invalid", served)))  # --base-url replaces it
    out = tmp_path / "out"
    assert data_main(["download", "--to", str(out), "--only", "metatool", "virtualhome", "--base-url", base]) == 0
    text = capsys.readouterr().out
    got = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert got == [p for p in FIXTURE_FILES if p.startswith(("metatool/", "vh/"))]
    assert text.count("downloaded, sha256 ok") == len(got) and f"data.root={out}" in text

    # the same through `toolken-plus`
    assert cli_main(["data", "download", "--to", str(out), "--only", "gsm8k_xl", "--base-url", base]) == 0
    assert (out / "gsm8k" / "train.jsonl").is_file() and (out / "gsm8k-xl" / "test.json").is_file()

    (served / "gsm8k" / "train.jsonl").write_text("changed on the server\n")
    (out / "gsm8k" / "train.jsonl").unlink()
    assert data_main(["download", "--to", str(out), "--base-url", base]) == 1
    err = capsys.readouterr().err
    assert "gsm8k/train.jsonl: checksum mismatch" in err and not (out / "gsm8k" / "train.jsonl").exists()

    assert data_main(["download", "--only", "nonsense"]) == 2
    assert "unknown dataset 'nonsense': choose from gsm8k, gsm8k-xl, metatool, vh" in capsys.readouterr().err


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
    # ... and from there only: with fewer queries in that copy, it sees fewer training queries
    queries = roots["cache"] / "metatool" / "data" / "all_clean_data.csv"
    rows = queries.read_text().splitlines(keepends=True)
    queries.write_text("".join(rows[: len(rows) // 2]))
    fewer = len(MetaTool().load(DataConfig()).train)
    assert fewer == len(MetaTool().load(DataConfig(root=str(roots["cache"]))).train)
    assert fewer < len(MetaTool().load(DataConfig(root=str(FIXTURE_DATA))).train)
    for other in ("config", "env"):  # the folders it no longer reads still hold the full copy
        assert len(MetaTool().load(DataConfig(root=str(roots[other]))).train) > fewer


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


def test_where_and_list_show_the_search_order_and_each_dataset(tmp_path, monkeypatch, capsys):
    roots = _roots(tmp_path, monkeypatch, "vh")
    shutil.rmtree(roots["env"] / "vh")
    assert data_main(["where"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"1\. data\.root +not set\n +2\. \$TOOLKEN_PLUS_DATA +.*env: no dataset\n +3\. \.\./shared/data +.*shared: vh\n", out)
    assert re.search(r"metatool +not found: toolken-plus data download --only metatool\n", out)
    assert f"vh        {roots['shared']} (../shared/data)" in out
    assert data_main(["where", "--data-root", str(roots["config"])]) == 0
    out = capsys.readouterr().out
    assert re.search(r"2\. \$TOOLKEN_PLUS_DATA +not searched", out) and f"vh        {roots['config']} (data.root)" in out
    assert cli_main(["data", "list", "--files"]) == 0
    out = capsys.readouterr().out
    for d in manifest.DATASETS:
        assert f"{d.name}: {d.title}" in out
    assert "HowieHwong/MetaTool @ 35e81bb7576826e980c80fed8f8c0a2b4a1e6fbb" in out and "virtualhome-eval" in out


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

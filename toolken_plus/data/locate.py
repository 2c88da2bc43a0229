"""Where each dataset is read from.

A dataset is a top-level folder of a data folder (gsm8k, gsm8k-xl, metatool,
vh; data/manifest.py). A folder holds a dataset when it has every file of it
that the tasks read. Lookup order:

    1. data.root                  the config option: when set, the only folder searched
    2. $TOOLKEN_PLUS_DATA         when set
    3. ../shared/data             beside the project
    4. the download dir           $TOOLKEN_PLUS_CACHE/data, else ~/.cache/toolken_plus/data,
                                  where `toolken-plus data download` writes

With data.root unset, each dataset is read from the first of 2-4 that holds
it, so an incomplete folder (a download that stopped half way, a folder with
only some datasets) is passed over. A dataset that is not found is an error
naming the command that downloads it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from toolken_plus.config import PROJECT_ROOT, data_root, default_cache_dir
from toolken_plus.data import manifest

SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
# The labels of the four data folders, in lookup order (search_roots, `toolken-plus data where`).
ROOT_LABELS = ("data.root", "$TOOLKEN_PLUS_DATA", "../shared/data", "download dir")
CONFIGURED, FROM_ENV, SHARED, DOWNLOADS = ROOT_LABELS


def download_dir() -> Path:
    """Where `toolken-plus data download` writes unless given --to."""
    return default_cache_dir() / "data"


def search_roots(configured: str | os.PathLike[str] | None = None) -> list[tuple[str, Path]]:
    """(where it comes from, folder), in lookup order; `configured` is
    data.root, which, when set, is the only one."""
    if configured:
        return [(CONFIGURED, Path(configured))]
    roots = []
    if os.environ.get("TOOLKEN_PLUS_DATA"):
        roots.append((FROM_ENV, Path(os.environ["TOOLKEN_PLUS_DATA"])))
    roots.append((SHARED, SHARED_DATA))
    roots.append((DOWNLOADS, download_dir()))
    return roots


def missing_files(root: str | os.PathLike[str], name: str) -> list[str]:
    """The files of dataset `name` that the tasks read and `root` lacks."""
    return [f.path for f in manifest.required_files(name) if not (Path(root) / f.path).is_file()]


def has_dataset(root: str | os.PathLike[str], name: str) -> bool:
    return (Path(root) / name).is_dir() and not missing_files(root, name)


def find_dataset(name: str, configured: str | os.PathLike[str] | None = None) -> Path | None:
    """The first folder of the search order that holds dataset `name`, or None."""
    return next((root for _, root in search_roots(configured) if has_dataset(root, name)), None)


def download_command(names: Sequence[str]) -> str:
    return f"toolken-plus data download --only {' '.join(names)}"


def _not_found(names: Sequence[str], roots: list[tuple[str, Path]]) -> FileNotFoundError:
    needs = "; ".join(f"{n} needs {', '.join(f.path for f in manifest.required_files(n))}" for n in names)
    partial = "".join(f"; {root / n} lacks {', '.join(m.split('/', 1)[1] for m in missing)}"
                      for _, root in roots for n in names if (root / n).is_dir() and (missing := missing_files(root, n)))
    what = f"dataset {names[0]!r}" if len(names) == 1 else f"datasets {', '.join(map(repr, names))}"
    if roots[0][0] == CONFIGURED:
        root = roots[0][1]
        return FileNotFoundError(
            f"data.root={root} does not hold {what} ({needs}{partial}). Download it there with "
            f"`{download_command(names)} --to {root}`, or leave data.root unset to read each dataset from the first "
            f"of $TOOLKEN_PLUS_DATA, ../shared/data and the download dir that holds it (docs/data.md, 'Getting the data')")
    looked = "; ".join(f"{label} {root}" for label, root in roots)
    return FileNotFoundError(
        f"{what} not found (looked in: {looked}; {needs}{partial}). Download it with `{download_command(names)}` "
        f"(into the download dir, where it is found), or point data.root at a folder that has it "
        f"(docs/data.md, 'Getting the data')")


def dataset_root(datasets: Sequence[str], configured: str | os.PathLike[str] | None = None) -> Path:
    """The first folder of the search order that holds all of `datasets`
    (a task reads them through one folder); FileNotFoundError otherwise."""
    roots = search_roots(configured)
    for _, root in roots:
        if all(has_dataset(root, n) for n in datasets):
            return root
    found = {n: find_dataset(n, configured) for n in datasets}
    missing = [n for n, root in found.items() if root is None]
    if not missing:
        raise FileNotFoundError(f"datasets {', '.join(f'{n} (in {root})' for n, root in found.items())} are in different "
                              f"folders; this task reads them from one: `{download_command(list(datasets))}` puts them "
                              f"together in the download dir")
    raise _not_found(missing, roots)


def task_root(data, task) -> Path:
    """The folder a task reads its files from (`data` is the data config):
    the first folder that holds its `datasets` (FileNotFoundError otherwise);
    for a task without datasets (task=custom: your own files), data.root,
    else default_data_root()."""
    datasets = getattr(task, "datasets", ())
    return dataset_root(datasets, data.root) if datasets else data_root(data)


def data_file(data, path: str | os.PathLike[str]) -> Path:
    """A data file named relative to the data folder (e.g. a task's
    `gsm8k/train.jsonl`): under the folder that holds its dataset when its
    first part is a known dataset, else under data.root (or
    default_data_root()); an absolute path as it is."""
    path = Path(path)
    if path.is_absolute():
        return path
    if path.parts and path.parts[0] in manifest.dataset_names():
        return dataset_root([path.parts[0]], data.root) / path
    return data_root(data) / path

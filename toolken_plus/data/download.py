"""`toolken-plus data`: get the datasets without the project's data folder.

    toolken-plus data download [--to DIR] [--only NAME …] [--base-url URL]
                     every file of data/manifest.py (or of the datasets NAME: gsm8k, gsm8k-xl,
                     metatool, vh, or a task: gsm8k_xl, metatool, virtualhome) from its public
                     source at a pinned commit, sha256-checked, into DIR (default: the download
                     dir, $TOOLKEN_PLUS_CACHE/data or ~/.cache/toolken_plus/data, where it is found)
    toolken-plus data list [--files] [--data-root DIR]
                     each dataset: what it is, its sources and licence, where it is found
    toolken-plus data where [--data-root DIR]
                     the folders searched, in order, and the one each dataset is read from

Each file is written to a temporary file (in DIR/.partial), checked (size
and sha256) and then renamed into place: a file that fails the check is
refused and nothing is left behind. A temporary file's name carries its
writer's pid, so what a killed download left is removed by the next one. A
file already present with the right sha256 is skipped, so an interrupted
download resumes where it stopped.
--base-url fetches from a mirror instead: URL/<path in the data folder>.
Only the standard library (urllib) is used; HTTP(S)_PROXY are honoured.
VirtualHome's programs and simulator are not downloaded here: they are the
PyPI package virtualhome-eval (pip install --no-deps virtualhome-eval).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import quote

from toolken_plus.data import locate, manifest
from toolken_plus.data.manifest import File
from toolken_plus.rundir import file_sha256, remove_stale_temps, temp_file_prefix

CHUNK = 1 << 20
TIMEOUT = 60  # seconds without data before a request fails


class DownloadError(RuntimeError):
    """A file could not be fetched or failed its check; the message names it."""


def human(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB"):
        n /= 1000
        if n < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} GB"


def file_url(f: File, base_url: str | None = None) -> str:
    return f"{base_url.rstrip('/')}/{quote(f.path)}" if base_url else f.url


def is_present(path: Path, f: File) -> bool:
    """`path` holds exactly the manifest's file."""
    return path.is_file() and path.stat().st_size == f.size and file_sha256(path) == f.sha256


def fetch(f: File, dest: Path, url: str, staging: Path) -> None:
    """Fetch `url` into a temporary file in `staging`, check its size and
    sha256 against `f`, and only then rename it to `dest`; DownloadError
    (naming the file and the URL) otherwise, with the temporary file removed.
    The temporary file's name carries this process's pid (rundir's
    `.<name>.<pid>.<random>`), so one left by a killed download is removed by
    the next (`remove_stale_temps`)."""
    staging.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_file_prefix(Path(f.path).name), dir=staging)
    try:
        digest, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": "toolken-plus data download"})
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                    while chunk := response.read(CHUNK):
                        size += len(chunk)
                        if size > f.size:
                            raise DownloadError(f"{f.path}: {url} sends more than the expected {f.size} bytes; refused, "
                                                f"nothing written")
                        digest.update(chunk)
                        out.write(chunk)
            except urllib.error.HTTPError as exc:
                raise DownloadError(f"{f.path}: HTTP {exc.code} {exc.reason} from {url}") from None
            except urllib.error.URLError as exc:
                raise DownloadError(f"{f.path}: cannot reach {url} ({exc.reason}); without internet, "
                                    f"--base-url URL fetches from a mirror with the data folder's layout") from None
            except (OSError, TimeoutError) as exc:  # connection reset, read timeout, ...
                raise DownloadError(f"{f.path}: download from {url} failed ({exc})") from None
            out.flush()
            os.fsync(out.fileno())
        if size != f.size or digest.hexdigest() != f.sha256:
            raise DownloadError(f"{f.path}: checksum mismatch, refused (nothing written): {url} gave {size} bytes "
                                f"with sha256 {digest.hexdigest()}, the manifest expects {f.size} bytes with sha256 {f.sha256}")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a data file is as readable as any other
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def download(files: Sequence[File], to: str | os.PathLike[str], *, base_url: str | None = None,
             progress: Callable[[str], None] = print) -> dict[str, int]:
    """Every file of `files` into the folder `to` (at its path in the data
    folder), one progress line each; files already there with the right
    sha256 are skipped. Goes on past a failed file, then raises DownloadError
    listing every failure. Returns {"downloaded": n, "skipped": n}.
    Temporary files that killed downloads left in `to`/.partial are removed
    first (those of downloads still running are kept)."""
    to = Path(to)
    staging, created = to / ".partial", not to.exists()
    remove_stale_temps(staging)
    counts, failures = {"downloaded": 0, "skipped": 0}, []
    width = len(str(len(files)))
    for i, f in enumerate(files, 1):
        head = f"[{i:>{width}}/{len(files)}] {f.path} ({human(f.size)})"
        dest = to / f.path
        if is_present(dest, f):
            counts["skipped"] += 1
            progress(f"{head}: present, sha256 ok")
            continue
        replacing = " (replaces a file that differed)" if dest.exists() else ""
        try:
            fetch(f, dest, file_url(f, base_url), staging)
        except DownloadError as exc:
            failures.append(str(exc))
            progress(f"{head}: FAILED: {exc}")
            continue
        counts["downloaded"] += 1
        progress(f"{head}: downloaded, sha256 ok{replacing}")
    for empty in (staging, to) if created else (staging,):
        try:
            empty.rmdir()  # only if empty: another download may be running here
        except OSError:
            pass
    if failures:
        raise DownloadError(f"{len(failures)} of {len(files)} files not downloaded:\n  " + "\n  ".join(failures))
    return counts


# ------------------------------------------------------------------- the command
def _virtualhome_status() -> str:
    from importlib import metadata

    try:
        version = metadata.version(manifest.VIRTUALHOME_PACKAGE)
    except metadata.PackageNotFoundError:
        return (f"VirtualHome programs and simulator: the PyPI package {manifest.VIRTUALHOME_PACKAGE}, not installed "
                f"(pip install --no-deps {manifest.VIRTUALHOME_PACKAGE})")
    return f"VirtualHome programs and simulator: the PyPI package {manifest.VIRTUALHOME_PACKAGE} {version}, installed"


def _found(name: str, data_root: str | None) -> str:
    root = locate.find_dataset(name, data_root)
    if root is None:
        return f"not found: {locate.download_command([name])}{f' --to {data_root}' if data_root else ''}"
    label = next(label for label, r in locate.search_roots(data_root) if r == root)
    return f"{root} ({label})"


def cmd_download(args) -> int:
    try:
        names = manifest.resolve(args.only) if args.only else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    files = manifest.files_of(names)
    to = Path(args.to) if args.to else locate.download_dir()
    total = sum(f.size for f in files)
    print(f"{len(files)} files ({human(total)}) of {', '.join(names or manifest.dataset_names())} into {to}"
          + (f", from {args.base_url}" if args.base_url else ""), flush=True)
    try:
        counts = download(files, to, base_url=args.base_url, progress=lambda line: print(line, flush=True))
    except (DownloadError, OSError) as exc:  # OSError: DIR not writable, disk full, ...
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"done: {counts['downloaded']} downloaded, {counts['skipped']} already present, in {to}")
    if to.resolve() != locate.download_dir().resolve():
        print(f"read from there with data.root={to} (or TOOLKEN_PLUS_DATA={to})")
    if names is None or "vh" in names:
        print(_virtualhome_status())
    return 0


def cmd_list(args) -> int:
    for d in manifest.DATASETS:
        files = manifest.files_of([d.name])
        print(f"{d.name}: {d.title}")
        print(f"  files    {len(files)}, {human(sum(f.size for f in files))} "
              f"({sum(f.required for f in files)} read by task {', '.join(d.tasks)})")
        for s in d.sources:
            print(f"  source   {s}{f', {s.note}' if s.note else ''}")
            print(f"  licence  {s.licence}")
        print(f"  found    {_found(d.name, args.data_root)}")
        if args.files:
            for f in files:
                print(f"    {f.path}  {human(f.size)}  sha256 {f.sha256[:16]}…  {f.url}")
    print(_virtualhome_status())
    return 0


def cmd_where(args) -> int:
    roots = dict(locate.search_roots(args.data_root))
    print("data.root is set: it is the only folder searched" if args.data_root else
          "Each dataset is read from the first of these folders that holds it:")
    for n, label in enumerate(locate.ROOT_LABELS, 1):
        root = roots.get(label)
        if root is None:
            print(f"  {n}. {label:<19} {'not searched' if args.data_root else 'not set'}")
            continue
        held = [name for name in manifest.dataset_names() if locate.has_dataset(root, name)]
        print(f"  {n}. {label:<19} {root}: {', '.join(held) if held else 'no dataset' if root.is_dir() else 'missing'}")
    print()
    for name in manifest.dataset_names():
        print(f"  {name:<9} {_found(name, args.data_root)}")
    print(_virtualhome_status())
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="{download,list,where}")
    dl = sub.add_parser("download", help="fetch the datasets from their public sources (sha256-checked)",
                        description="Fetch every dataset file from its public source at a pinned commit, check its "
                                    "sha256 and write it into the data folder layout.")
    dl.add_argument("--to", metavar="DIR", help=f"where to write (default: the download dir, {locate.download_dir()})")
    dl.add_argument("--only", nargs="+", metavar="NAME",
                    help=f"only these datasets ({', '.join(manifest.dataset_names())}) or tasks' datasets "
                         f"(gsm8k_xl, metatool, virtualhome)")
    dl.add_argument("--base-url", metavar="URL", help="fetch URL/<path in the data folder> from a mirror instead")
    dl.set_defaults(data_run=cmd_download)
    ls = sub.add_parser("list", help="each dataset, its sources and licence, and where it is found")
    ls.add_argument("--files", action="store_true", help="also every file with its size, sha256 and URL")
    ls.add_argument("--data-root", metavar="DIR", help="as the config option data.root")
    ls.set_defaults(data_run=cmd_list)
    wh = sub.add_parser("where", help="the folders searched for data, in order, and where each dataset is read from")
    wh.add_argument("--data-root", metavar="DIR", help="as the config option data.root")
    wh.set_defaults(data_run=cmd_where)


def data_main(argv: Sequence[str] | None = None) -> int:
    """`toolken-plus data …` with its own argument list (argv without `data`)."""
    parser = argparse.ArgumentParser(prog="toolken-plus data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return args.data_run(args)


if __name__ == "__main__":
    sys.exit(data_main())

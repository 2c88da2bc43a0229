"""Files on disk that survive crashes and concurrent runs.

- `atomic_write`: temp file in the same folder, then rename, so readers never
  see half a file and a crash keeps the previous version.
- `make_temp_dir` / `remove_stale_temps`: every temp file or folder carries
  the pid of its writer in its name (`.tmp-<pid>-…`, `.<name>.<pid>.…`), so a
  later run can tell the leftovers of a process that died (kill -9, power
  loss) from the work of one that is still running, and remove only those.
  Temp folders also carry a tag of their machine (`.tmp-<pid>-h<host>-…`):
  a pid means nothing on another machine sharing the folder (SLURM jobs,
  multi-node torchrun), so another machine's temp is left for a day.
- `RunDirLock`: one process at a time in a run dir. Two trainings writing
  the same toolkens, checkpoint and metrics would leave files that
  contradict each other; the second one fails at once, naming the holder.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
# `.tmp-<pid>-h<host tag>-<random>` (folders; older: `.tmp-<pid>-<random>`)
# and `.<target name>.<pid>.<random>` (files).
_TEMP_DIR = re.compile(r"\.tmp-(\d+)-(?:h([0-9a-f]{8})-)?")
_TEMP_FILE = re.compile(r"\..+\.(\d+)\.[^.]+$")
# Temp names from before the pid was recorded: removed once clearly abandoned.
_LEGACY_AGE_S = 24 * 3600


def temp_file_prefix(name: str) -> str:
    """The prefix (for tempfile.mkstemp, without a suffix) of a temp file for
    `name`: `.<name>.<pid>.`, which `remove_stale_temps` recognises."""
    return f".{name}.{os.getpid()}."


def atomic_write(target: Path, write) -> None:
    """Write via a temp file in the same folder, then rename: readers never see
    a half-written file, and a crash leaves the previous version intact."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=temp_file_prefix(target.name))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, as hex (read in 1 MB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def host_tag() -> str:
    """8 hex digits naming this machine (a hash of its hostname)."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def make_temp_dir(parent: Path) -> Path:
    """A temp folder in `parent` whose name records this process's pid and machine."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=parent, prefix=f".tmp-{os.getpid()}-h{host_tag()}-"))


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove temp files/folders in `folder` left by processes that are gone.

    A temp of a live process is kept (it may be mid-write); one whose name
    carries no pid (older versions) or another machine's tag is removed only
    when it is a day old. Returns what
    was removed."""
    removed = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for entry in folder.iterdir():
        name = entry.name
        if not name.startswith("."):
            continue
        m = _TEMP_DIR.match(name) or (_TEMP_FILE.match(name) if entry.is_file() else None)
        other_host = m is not None and m.re is _TEMP_DIR and m.group(2) not in (None, host_tag())
        if m and not other_host:
            stale = not pid_alive(int(m.group(1)))
        elif name.startswith(".tmp-"):  # another machine's, or one without a pid
            try:
                stale = now - entry.stat().st_mtime > _LEGACY_AGE_S
            except FileNotFoundError:
                continue
        else:
            continue
        if not stale:
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    if removed:
        log.info("removed %d temp file(s) left by interrupted runs in %s", len(removed), folder)
    return removed


class RunDirBusy(RuntimeError):
    """Another process holds the run dir."""


class RunDirLock:
    """An exclusive lock on a run dir, held for the life of a run.

    flock, not a pid file alone: the kernel releases it when the holder dies,
    even by kill -9, so a crashed run never blocks the next one. The holder's
    pid is written into the lock file for the message of whoever is refused."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self._file = None

    def acquire(self) -> "RunDirLock":
        if self._file is not None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        f = open(self.run_dir / LOCK_NAME, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                f.close()
                raise
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise RunDirBusy(f"run dir {self.run_dir} is in use by another run (pid {holder}): wait for it to "
                             f"finish, or choose another hydra.run.dir") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        # No other run writes here now: clear what crashed writers left.
        remove_stale_temps(self.run_dir)
        remove_stale_temps(self.run_dir / "checkpoints")
        return self

    def release(self) -> None:
        if self._file is None:
            return
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        self._file = None

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

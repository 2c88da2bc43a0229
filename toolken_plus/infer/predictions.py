"""predictions.jsonl written as the run goes, and resumed after an interruption.

An evaluation of 568 questions runs for half an hour on this CPU; written only
at the end, one crash (or one bad question) lost all of it. `PredictionLog`
appends each row as soon as it is known, flushed; rerunning infer.py with the
same run dir skips the examples already answered. A fingerprint of the
settings that decide the answers is kept beside the file, so a rerun with
other settings is refused instead of mixing two experiments in one file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path

from toolken_plus.rundir import atomic_write

log = logging.getLogger(__name__)

PREDICTIONS_NAME = "predictions.jsonl"
STATE_NAME = "predictions_state.json"


# Settings that change how many examples are answered, how fast or how they
# are shown, but not any answer: a rerun may change them and still resume.
NOT_IN_FINGERPRINT = ("data.limit_eval", "data.limit_train", "agent.batch_size", "agent.progress", "agent.show", "resume",
                      "logger", "cache_dir", "trainer", "cache", "calibration", "tools", "stage",
                      # where the model runs does not change what it predicts (dtype does: kept, unless the default)
                      "device", "device_map")


def settings_fingerprint(cfg: dict) -> dict:
    """The config minus NOT_IN_FINGERPRINT, plus a digest of the checkpoint's
    weights (a run dir retrained in place must not resume old predictions)."""
    out = copy.deepcopy(cfg)
    for path in NOT_IN_FINGERPRINT:
        *parents, last = path.split(".")
        node = out
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    if out.get("dtype", 0) is None:  # the default: fingerprints of runs from before the option still match
        out.pop("dtype")
    ckpt = cfg.get("checkpoint")
    weights = Path(ckpt) / "toolkens.safetensors" if ckpt else None
    if weights is not None and weights.is_file():
        out["checkpoint_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    return out


class PredictionsMismatch(ValueError):
    """The run dir holds predictions made with other settings."""


class PredictionLog:
    def __init__(self, run_dir: str | Path, fingerprint: dict, *, resume: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / PREDICTIONS_NAME
        self.state_path = self.run_dir / STATE_NAME
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back from JSON
        self.done: dict[str, dict] = {}
        if resume:
            self._resume()
        elif self.path.exists():
            log.info("resume=false: %s is replaced", self.path)
        # the fingerprint first: a file of predictions is never there without it
        atomic_write(self.state_path, lambda p: Path(p).write_text(json.dumps({"fingerprint": self.fingerprint}, indent=2)))
        if not self.done:
            self.path.write_text("")
        self._file = open(self.path, "a", encoding="utf-8")

    def _resume(self) -> None:
        if not self.path.is_file():
            return
        saved = {}
        if self.state_path.is_file():
            try:
                saved = json.loads(self.state_path.read_text()).get("fingerprint", {})
            except ValueError:
                saved = None
        if saved != self.fingerprint:
            diffs = _differences(saved or {}, self.fingerprint)
            raise PredictionsMismatch(
                f"{self.path} holds predictions made with other settings:\n  " + "\n  ".join(diffs or ["(unknown)"])
                + "\nuse a fresh hydra.run.dir, rerun with the same settings, or pass resume=false to start over")
        text = self.path.read_text(encoding="utf-8")
        lines = text.split("\n")
        # The last line may be torn by a kill mid-write: keep whole lines only.
        whole = lines[:-1] if not text.endswith("\n") else lines
        rows = []
        for line in whole:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                break
            if not isinstance(row, dict) or "id" not in row:
                break
            rows.append(row)
        self.done = {str(r["id"]): r for r in rows}
        # Rewrite without a torn tail so appends start on a fresh line.
        self.path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        if self.done:
            log.info("resuming: %d predictions already in %s", len(self.done), self.path)

    def todo(self, items: list) -> list:
        ids = [_id(it) for it in items]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise ValueError(f"evaluation items have duplicate ids {dup}: predictions could not be resumed")
        return [it for it in items if _id(it) not in self.done]

    def append(self, row: dict) -> None:
        self.done[str(row["id"])] = row
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def finish(self, items: list) -> list[dict]:
        """All rows in the items' order, rewritten so the file is in that order too."""
        self._file.close()
        rows = [self.done[_id(it)] for it in items]
        atomic_write(self.path, lambda p: Path(p).write_text("".join(json.dumps(r) + "\n" for r in rows)))
        return rows

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def _id(item) -> str:
    """An evaluation item's id (an EvalItem, or a dict with "id")."""
    return str(item["id"] if isinstance(item, dict) else item.id)


def _differences(saved: dict, now: dict, path: str = "") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        name = f"{path}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, name + ".")
        elif a != b:
            out.append(f"{name}: {a!r} before, {b!r} now")
    return out

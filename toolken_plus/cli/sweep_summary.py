"""The table of a sweep's jobs: `python train.py -m a=1,2 …` (any launcher:
the basic one, submitit_slurm, …) ends by writing, in the sweep dir,

    sweep_summary.md    one row per job: its number, the overrides that vary
    sweep_summary.csv   across the jobs, and its main metrics (metrics.json)

A Hydra callback (registered in conf/hydra_common.yaml, so infer.py sweeps
get one too); it runs where the sweep was launched, after every job is done,
and reads the job dirs (for SLURM: on the shared filesystem the jobs wrote).
A job without metrics.json (failed, or still running) is listed as such.

    python -m toolken_plus.cli.sweep_summary <sweep dir>     # (re)write it by hand
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)

# The metrics shown, in this order, when a job has them (train: toolkens and
# LoRA; infer: its metrics.json's top-level numbers are used when none match).
MAIN_METRICS = ["val/f1", "val/precision", "val/recall", "val/loss", "train/loss", "logit_bias", "epochs",
                "cost/train_seconds"]
MAX_FALLBACK_METRICS = 8


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The sweep's job dirs (those holding .hydra/overrides.yaml), by job number."""
    found = [p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml")]
    return sorted(found, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, str(p)))


def collect(sweep_dir: Path) -> tuple[list[str], list[str], list[dict]]:
    """(overrides common to every job, metric columns, one row per job)."""
    jobs = []
    for d in job_dirs(sweep_dir):
        overrides = yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text()) or []
        metrics_file = d / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
        jobs.append({"job": str(d.relative_to(sweep_dir)), "overrides": list(overrides), "metrics": metrics})
    common = [o for o in (jobs[0]["overrides"] if jobs else []) if all(o in j["overrides"] for j in jobs)]
    numeric = [{k: v for k, v in (j["metrics"] or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
               for j in jobs]
    columns = [k for k in MAIN_METRICS if any(k in m for m in numeric)]
    if not columns:
        seen: dict[str, None] = {}
        for m in numeric:
            seen.update(dict.fromkeys(m))
        columns = list(seen)[:MAX_FALLBACK_METRICS]
    rows = []
    for j, m in zip(jobs, numeric):
        varying = [o for o in j["overrides"] if o not in common] if len(jobs) > 1 else j["overrides"]
        rows.append({"job": j["job"], "overrides": " ".join(varying),
                     "status": "ok" if j["metrics"] is not None else "no metrics.json",
                     **{c: m.get(c) for c in columns}})
    return common, columns, rows


def _fmt(v) -> str:
    if v is None:
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_summary(sweep_dir: str | Path) -> Path | None:
    """Write sweep_summary.md and .csv in `sweep_dir`; the .md's path (None: no jobs)."""
    sweep_dir = Path(sweep_dir)
    common, columns, rows = collect(sweep_dir)
    if not rows:
        return None
    header = ["job", "overrides", "status", *columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    (sweep_dir / "sweep_summary.csv").write_text(buf.getvalue())
    lines = [f"# Sweep {sweep_dir}", "", f"{len(rows)} jobs; common overrides: `{' '.join(common) or '(none)'}`", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["job"], f"`{r['overrides']}`" if r["overrides"] else "", r["status"], *(_fmt(r[c]) for c in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    md = sweep_dir / "sweep_summary.md"
    md.write_text("\n".join(lines) + "\n")
    return md


class SweepSummary(Callback):
    """Hydra callback: the summary table when a multirun ends."""

    def on_multirun_end(self, config, **kwargs) -> None:
        try:
            md = write_summary(config.hydra.sweep.dir)
        except Exception as e:  # never fail a finished sweep over its summary
            log.warning("could not write the sweep summary of %s: %s", config.hydra.sweep.dir, e)
            return
        if md is not None:
            log.info("sweep summary: %s", md)
            print(f"sweep summary: {md}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    path = write_summary(sys.argv[1])
    print(path.read_text() if path else f"no job dirs in {sys.argv[1]}")

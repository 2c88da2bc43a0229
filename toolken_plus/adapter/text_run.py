"""What a run of a text method (method=lora) records beside its PEFT adapter:
method_config.json, so `infer.py checkpoint=<run>` knows the method, the base
model it was trained on (and how to rebuild it) and the task, as a toolken
checkpoint's toolken_config.json does."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from toolken_plus.rundir import atomic_write

METHOD_CONFIG_NAME = "method_config.json"
FORMAT_VERSION = 1


@dataclass
class TextRunRecord:
    method: dict  # the method spec's fields ({"name": "lora", "r", …})
    base_model: dict  # {"name", "revision", "spec": backbone_spec(...)}
    task: dict = field(default_factory=dict)  # the task's settings ({"name", …})
    provenance: dict = field(default_factory=dict)  # data hash, examples, epochs
    format_version: int = FORMAT_VERSION

    def save(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / METHOD_CONFIG_NAME
        atomic_write(path, lambda p: Path(p).write_text(json.dumps(asdict(self), indent=2)))
        return path

    @classmethod
    def load(cls, run_dir: str | Path) -> "TextRunRecord":
        path = Path(run_dir) / METHOD_CONFIG_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} not found: not a run dir of train.py method=lora") from None
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: unreadable ({err})") from None
        if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: not a method config of this version (format_version {FORMAT_VERSION})")
        return cls(**{k: data[k] for k in ("method", "base_model", "task", "provenance") if k in data})

    @staticmethod
    def exists(run_dir: str | Path) -> bool:
        return (Path(run_dir) / METHOD_CONFIG_NAME).is_file()

"""Results store: run folders, atomic records, run ids.

Layout under a store root (``ExperimentConfig.output_dir``, default ``results/``)::

    runs/<run_id>/            one student run (train + evaluate) or one evaluation-only run
        config.yaml           resolved config
        env.json              package versions, git commit, hardware
        teacher.json          which teacher-stage folder the run learned from
        metrics.jsonl         training log
        checkpoints/{best,last,state}/
        eval/predictions.jsonl, eval/scores.json
        scores.json           final scores (the record tables read)
    teacher/<teacher_id>/     teacher answers + cached teacher signal (shared by many runs)
    tables/, figures/, benchmarks/

Every record is written to a temporary file in the same folder and renamed into place, so a crash
never leaves a half-written file and concurrent jobs never read one.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from uld.config import ExperimentConfig, config_hash, dump_config

__all__ = [
    "atomic_write_text",
    "atomic_write_json",
    "append_jsonl",
    "read_json",
    "run_id",
    "teacher_stage_id",
    "RunFolder",
    "env_info",
]


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line (a single write call, so concurrent appenders do not interleave lines)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def run_id(cfg: ExperimentConfig) -> str:
    """``<name>-<hash of the resolved config>``: the same config always lands in the same folder."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in cfg.name)
    return f"{safe}-{config_hash(cfg)}"


def teacher_stage_id(cfg: ExperimentConfig) -> str:
    """Teacher-stage id: only what changes the teacher's answers and signal counts."""
    from uld.config import to_dict
    import hashlib

    d = to_dict(cfg)
    key = {
        "teacher": {k: v for k, v in d["teacher"].items() if k != "path"},
        "data": {
            k: d["data"][k]
            for k in ("task", "train_size", "val_fraction", "split_seed", "max_length", "teacher_shots", "teacher_title")
        },
        "generation": {
            k: v for k, v in d["generation"].items() if k not in ("batch_size", "chunk_size", "backend")
        },
    }
    blob = json.dumps(key, sort_keys=True, separators=(",", ":"))
    h = hashlib.sha256(blob.encode()).hexdigest()[:10]
    teacher = "".join(c if c.isalnum() or c in "-_." else "-" for c in (cfg.teacher.name or "teacher"))
    return f"{cfg.data.task}-{teacher}-{h}"


class RunFolder:
    """A run's folder in the store. Creating one writes ``config.yaml`` and ``env.json``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def for_config(cls, cfg: ExperimentConfig, *, kind: str = "runs") -> "RunFolder":
        rid = teacher_stage_id(cfg) if kind == "teacher" else run_id(cfg)
        return cls(Path(cfg.output_dir) / kind / rid)

    @property
    def id(self) -> str:
        return self.path.name

    def init(self, cfg: ExperimentConfig) -> "RunFolder":
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / "config.yaml", dump_config(cfg))
        atomic_write_json(self.path / "env.json", env_info())
        return self

    def file(self, *parts: str) -> Path:
        return self.path.joinpath(*parts)

    def exists(self, *parts: str) -> bool:
        return self.file(*parts).exists()

    def write_json(self, name: str, obj: Any) -> Path:
        return atomic_write_json(self.file(name), obj)

    def read_json(self, name: str) -> Any:
        return read_json(self.file(name))

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"RunFolder({str(self.path)!r})"


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if out.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def env_info() -> dict[str, Any]:
    """Versions, git commit and hardware: enough to tell two runs' environments apart."""
    from importlib import metadata

    pkgs = {}
    for name in ("uld-repro", "torch", "transformers", "datasets", "accelerate", "evaluate", "bert-score", "rouge-score", "POT", "numpy", "pandas"):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pkgs[name] = None
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "packages": pkgs,
        "git_commit": _git_commit(),
    }
    try:
        import torch

        info["cuda"] = torch.version.cuda
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["torch_threads"] = torch.get_num_threads()
    except Exception:  # pragma: no cover - torch missing or broken CUDA
        pass
    return info

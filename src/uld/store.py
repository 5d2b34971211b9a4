"""The results store: run folders and teacher-stage folders, one writer each, recoverable changes.

Layout under a store root (``ExperimentConfig.output_dir``, default ``results/``)::

    runs/<run_id>/            one student run (train + evaluate) or one evaluation-only run
        config.yaml           resolved config (its hash is the folder's id, see uld.ids)
        env.json              package versions, git commit, hardware
        teacher.json          which teacher-stage folder the run learned from
        metrics.jsonl         training log
        train_summary.json    written when training is done
        checkpoints/{best,last,state}/
        eval/predictions.jsonl, eval/scores.json
        scores.json           final scores: the record tables read; a run without it is unfinished
    runs/.<run_id>.lock       held while a process computes the run
    teacher/<teacher_id>/     teacher answers + cached teacher signal (shared by many runs)
    teacher/.<teacher_id>.lock

One writer: a process computing a run (or a teacher stage) holds its lock; a second one gets
:class:`RunLocked` naming the holder, or waits if asked to. Nothing is destroyed in place: a forced
retraining or re-evaluation is built in a staging folder beside the old results and moved in by
:meth:`RunFolder.commit`, a journaled step that :meth:`RunFolder.recover` finishes after a crash, so a
run folder always holds either its old complete results or its new ones.

:func:`check_store` verifies every folder's id against its config and lists what is orphaned,
unfinished or left over; :func:`migrate_store` rewrites stored configs in today's schema layout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import yaml

from uld.config import ExperimentConfig, dump_config, from_dict, migrate, one_line, to_dict
from uld.errors import ConfigError, ResultsError, RunLocked
from uld.ids import V1_RUN_FIELDS, config_hash, hashed_fields, run_id, teacher_stage_id
from uld.io import (
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    file_lock,
    read_json,
    read_text,
    recover_dir,
    remove,
    replace,
    repo_root,
)

__all__ = [
    "RunFolder",
    "RunLocked",
    "find_run",
    "iter_runs",
    "store_info",
    "env_info",
    "StoreReport",
    "check_store",
    "migrate_store",
]

COMMIT_JOURNAL = ".commit.json"
TRASH = ".trash"


class RunFolder:
    """A run's (or teacher stage's) folder in the store. ``init`` writes ``config.yaml`` and ``env.json``.

    The final record is ``scores.json``: a folder without it is an unfinished run, invisible to
    :func:`uld.results.load_results` and re-run by the pipeline.
    """

    FINAL = "scores.json"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def for_config(cls, cfg: ExperimentConfig, *, kind: str = "runs") -> "RunFolder":
        rid = teacher_stage_id(cfg) if kind == "teacher" else run_id(cfg)
        return cls(Path(cfg.output_dir) / kind / rid)

    @property
    def id(self) -> str:
        return self.path.name

    def file(self, *parts: str) -> Path:
        return self.path.joinpath(*parts)

    def exists(self, *parts: str) -> bool:
        return self.file(*parts).exists()

    @property
    def is_complete(self) -> bool:
        """True once the final record (``scores.json``) is in place and no change is half done."""
        return self.exists(self.FINAL) and not self.exists(COMMIT_JOURNAL)

    # the records "done" rests on: the final scores and the evaluation outputs they summarise
    DONE_RECORDS = (FINAL, "eval/scores.json", "eval/predictions.jsonl")

    def damaged(self, names: Sequence[str] = DONE_RECORDS) -> list[tuple[str, str]]:
        """``(file, why)`` for each of ``names`` present in the folder that does not read back as a record
        (empty, truncated, not JSON, not an object, scores without metrics): a complete-looking run whose
        results are gone. Reading only: it changes nothing."""
        out = []
        for name in names:
            path = self.file(name)
            if path.is_file():
                why = _record_problem(path)
                if why:
                    out.append((name, f"{path}: {why}"))
        return out

    @property
    def is_done(self) -> bool:
        """Complete, and its final records read: what lets a rerun skip the run."""
        return self.is_complete and not self.damaged()

    # ---- records ---------------------------------------------------------------------------------

    def init(self, cfg: ExperimentConfig) -> "RunFolder":
        """Create the folder for ``cfg`` (idempotent).

        A folder that already holds a config for a *different* computation is an error rather than
        being silently overwritten: that would attach old checkpoints and scores to a new config.
        ``env.json`` keeps the environment the run started in; a resumed run on another machine adds
        a line to ``env_history.jsonl``.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        with file_lock(self.path.parent / f".{self.id}.init.lock"):
            self.recover()
            cfg_file = self.file("config.yaml")
            if cfg_file.exists():
                stored = self.config()
                if config_hash(stored) != config_hash(cfg):
                    raise ResultsError(
                        f"{cfg_file} holds a different config (hash {config_hash(stored)}, new {config_hash(cfg)}); "
                        "use a fresh run folder or delete this one"
                    )
            else:
                atomic_write_text(cfg_file, dump_config(cfg))
            env = env_info()
            if not self.exists("env.json"):
                atomic_write_json(self.file("env.json"), env)
            elif self.read_json("env.json") != env:
                append_jsonl(self.file("env_history.jsonl"), env)
        return self

    def write_json(self, name: str, obj: Any) -> Path:
        return atomic_write_json(self.file(name), obj)

    def append_jsonl(self, name: str, record: dict) -> None:
        append_jsonl(self.file(name), record)

    def read_json(self, name: str) -> Any:
        return read_json(self.file(name))

    def config_dict(self) -> dict[str, Any]:
        """The stored ``config.yaml`` as a plain dict in today's layout (older schemas migrated)."""
        path = self.file("config.yaml")
        try:
            data = yaml.safe_load(read_text(path)) or {}
        except FileNotFoundError:
            raise ResultsError(f"{path} is missing: not a run folder") from None
        except yaml.YAMLError as exc:
            raise ResultsError(f"{path}: invalid YAML: {one_line(exc)}") from None
        if not isinstance(data, dict):
            raise ResultsError(f"{path}: the top level must be a mapping")
        try:
            return migrate(data, source=str(path))
        except ConfigError as exc:
            raise ResultsError(str(exc)) from None

    def config(self) -> ExperimentConfig:
        """The stored config, validated against the current schema."""
        path = self.file("config.yaml")
        try:
            return from_dict(ExperimentConfig, self.config_dict(), source=str(path))
        except ConfigError as exc:
            raise ResultsError(str(exc)) from None

    # ---- one writer ------------------------------------------------------------------------------

    @property
    def lock_path(self) -> Path:
        return self.path.parent / f".{self.id}.lock"

    @contextlib.contextmanager
    def lock(self, *, blocking: bool = False) -> Iterator["RunFolder"]:
        """Exclusive lock on this run: one process computes it at a time.

        ``blocking=False`` raises :class:`RunLocked` naming the holder, so a launcher can move on to the
        next point; ``blocking=True`` waits for the holder to finish.
        """
        with file_lock(self.lock_path, blocking=blocking, what=f"{self.path.parent.name}/{self.id}"):
            yield self

    # ---- recoverable changes ---------------------------------------------------------------------

    def staging(self, name: str) -> Path:
        """A fresh folder beside this run's records in which a new version of them is built."""
        folder = self.file(f".staging-{name}")
        remove(folder)
        folder.mkdir(parents=True)
        return folder

    def commit(self, staging: Path, names: Sequence[str], *, drop: Sequence[str] = ()) -> None:
        """Replace the entries ``names`` of this folder by their versions in ``staging`` (an entry the
        staging folder lacks is removed) and remove ``drop`` (records made obsolete), as one step:
        a journal is written first, so :meth:`recover` completes the step after a crash."""
        present = [n for n in names if (staging / n).exists()]
        journal = {"staging": staging.name, "present": present, "remove": [n for n in names if n not in present] + list(drop)}
        atomic_write_json(self.file(COMMIT_JOURNAL), journal)
        self._apply(journal)

    def _apply(self, journal: dict) -> None:
        staging, trash = self.file(journal["staging"]), self.file(TRASH)
        trash.mkdir(exist_ok=True)
        for name in journal["present"]:
            src, dst = staging / name, self.file(name)
            if not src.exists():
                continue  # moved before the interruption
            if dst.exists():
                remove(trash / name)
                (trash / name).parent.mkdir(parents=True, exist_ok=True)
                replace(dst, trash / name)
            dst.parent.mkdir(parents=True, exist_ok=True)
            replace(src, dst)
        for name in journal["remove"]:
            remove(self.file(name))
        remove(trash)
        remove(staging)
        remove(self.file(COMMIT_JOURNAL))  # last: until it is gone, recover() can finish the step

    def recover(self) -> None:
        """Finish a commit a crash interrupted, undo half-done folder swaps of the checkpoints, and delete
        the temporary files of writers that died mid-write. Call it holding the folder's lock."""
        for tmp in sorted(self.path.rglob(".*.tmp")):  # files and staged folders (.best.tmp, .state.tmp)
            remove(tmp)
        journal_path = self.file(COMMIT_JOURNAL)
        if journal_path.exists():
            try:
                journal = read_json(journal_path)
            except ResultsError:  # torn journal: the commit had not started; drop it
                remove(journal_path)
            else:
                self._apply(journal)
        for sub in ("best", "last", "state"):
            recover_dir(self.file("checkpoints", sub))

    def leftovers(self) -> list[Path]:
        """Staging folders and the journal of interrupted writers."""
        return sorted(self.path.glob(".staging-*")) + sorted(self.path.glob(COMMIT_JOURNAL))

    def clean_leftovers(self) -> list[Path]:
        """Finish or drop what interrupted writers left in a complete run (a killed ``--force`` retraining's
        ``.staging-train/``, a failed re-evaluation's ``.staging-eval/``), if no process holds the run now.
        Returns what was removed."""
        if not self.leftovers():
            return []
        try:
            with self.lock():
                self.recover()
                gone = [p for p in self.leftovers() if p.name != COMMIT_JOURNAL]
                for p in gone:
                    remove(p)
                return gone
        except RunLocked:  # its writer is alive: the folder is its business
            return []

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"RunFolder({str(self.path)!r})"


def _record_problem(path: Path) -> Optional[str]:
    """Why a JSON / JSONL record file does not read back whole, or None."""
    try:
        text = read_text(path)
    except (ResultsError, OSError) as exc:
        return f"unreadable ({exc})"
    if not text.strip():
        return "empty file"
    if path.suffix == ".jsonl":
        if not text.endswith("\n"):
            return "truncated (no newline after its last line)"
        seen: dict[str, int] = {}
        for i, line in enumerate(text.splitlines(), 1):
            try:
                row = json.loads(line) if line.strip() else {}
            except json.JSONDecodeError as exc:
                return f"line {i}: invalid JSON ({exc.msg})"
            if not isinstance(row, dict):
                return f"line {i}: not a JSON object"
            item = row.get("id")
            if item is not None and str(item) in seen:
                return f"line {i}: item id {item!r} repeats line {seen[str(item)]}"
            seen[str(item)] = i
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"invalid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"
    if not isinstance(record, dict):
        return "not a JSON object"
    if path.name == RunFolder.FINAL and not isinstance(record.get("metrics"), dict):
        return "not a scores record (no 'metrics' object)"
    return None


def find_run(cfg: ExperimentConfig, root: str | os.PathLike | None = None) -> RunFolder:
    """The folder a grid point's run lives in (``root`` defaults to ``cfg.output_dir``)."""
    return RunFolder(Path(cfg.output_dir if root is None else root) / "runs" / run_id(cfg))


def _run_dirs(root: Path) -> Iterator[Path]:
    """Run folders under ``root``: ``root/runs/*`` for a store root, else any folder with a scores.json
    below ``root`` (so a copied-out bunch of run folders loads just as well)."""
    if (root / "runs").is_dir():
        yield from sorted(p for p in (root / "runs").iterdir() if p.is_dir() and not p.name.startswith("."))
        return
    if (root / "config.yaml").exists() or (root / RunFolder.FINAL).exists():
        yield root
        return
    for dirpath, dirnames, _ in os.walk(root):
        # checkpoints hold model weights only; teacher stages are not runs
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in ("checkpoints", "teacher", "eval"))
        p = Path(dirpath)
        if (p / RunFolder.FINAL).exists():
            yield p


def iter_runs(root: str | os.PathLike = "results", *, complete_only: bool = True) -> Iterator[RunFolder]:
    """Run folders of a store (``complete_only``: those with ``scores.json``).

    A folder with scores but no ``config.yaml`` cannot say what it measured: it is an error naming the
    folder rather than a run silently missing from the tables.
    """
    root = Path(root)
    if not root.exists():
        return
    for d in _run_dirs(root):
        run = RunFolder(d)
        if not run.exists("config.yaml"):
            if run.exists(RunFolder.FINAL):
                raise ResultsError(f"{run.path} has scores.json but no config.yaml: it cannot be placed in a table")
            continue
        if complete_only and not run.is_complete:
            continue
        yield run


def store_info(root: str | os.PathLike = "results") -> dict[str, Any]:
    """``<root>/STORE.json`` (e.g. ``{"fixture": true, "note": ...}`` for the test store), else {}."""
    path = Path(root) / "STORE.json"
    return read_json(path) if path.exists() else {}


# --------------------------------------------------------------------------------------------------
# Environment record
# --------------------------------------------------------------------------------------------------


def _git_commit() -> str | None:
    root = repo_root()
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def env_info() -> dict[str, Any]:
    """Versions, git commit and hardware: enough to tell two runs' environments apart."""
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


# --------------------------------------------------------------------------------------------------
# Checking and migrating a store
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class StoreReport:
    """What :func:`check_store` found, folder by folder (paths relative to the store root)."""

    root: Path
    ok: list[str] = dataclasses.field(default_factory=list)
    unfinished: list[str] = dataclasses.field(default_factory=list)
    orphans: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (folder, why it cannot be found)
    leftovers: list[str] = dataclasses.field(default_factory=list)  # staging folders, journals of crashed writers
    locked: list[str] = dataclasses.field(default_factory=list)
    damaged: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (record, why it does not read)

    @property
    def clean(self) -> bool:
        return not self.orphans and not self.damaged

    def format(self) -> str:
        lines = [f"store {self.root}: {len(self.ok)} folders match their ids, {len(self.unfinished)} unfinished, "
                 f"{len(self.orphans)} orphaned, {len(self.leftovers)} left over by interrupted writers, "
                 f"{len(self.locked)} being written now, {len(self.damaged)} with damaged records"]
        lines += [f"  ORPHAN {folder}: {why}" for folder, why in self.orphans]
        lines += [f"  DAMAGED {record}: {why} (`uld run` of its config evaluates it again)" for record, why in self.damaged]
        lines += [f"  unfinished {folder}" for folder in self.unfinished]
        lines += [f"  leftover {p} (a rerun of its run recovers or replaces it)" for p in self.leftovers]
        lines += [f"  locked {p}" for p in self.locked]
        return "\n".join(lines)


def _is_locked(lock: Path) -> bool:
    """Whether a process holds ``lock``, asked without writing (a shared probe on a read-only descriptor),
    so a check works on a read-only or full store."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # drops the probe's lock too
    return False


def check_store(root: str | os.PathLike = "results") -> StoreReport:
    """Every run and teacher-stage folder of a store against the id its config gives today.

    An *orphan* is a folder today's code will never find: its name differs from the id of its config,
    or its config no longer reads (unknown keys, retired values), or it has results but no config.
    """
    root = Path(root)
    report = StoreReport(root=root)
    for kind, ident in (("runs", run_id), ("teacher", teacher_stage_id)):
        base = root / kind
        if not base.is_dir():
            continue
        for folder in sorted(base.iterdir()):
            rel = f"{kind}/{folder.name}"
            if folder.name.startswith("."):
                if folder.suffix == ".lock" and _is_locked(folder):
                    report.locked.append(rel)
                continue
            if not folder.is_dir():
                continue
            run = RunFolder(folder)
            for p in run.leftovers():
                report.leftovers.append(f"{rel}/{p.name}")
            if not run.exists("config.yaml"):
                report.orphans.append((rel, "no config.yaml"))
                continue
            try:
                want = ident(run.config())
            except ResultsError as exc:
                report.orphans.append((rel, f"its config no longer reads: {exc}"))
                continue
            if want != folder.name:
                moved = _moved_default(run.config(), folder.name) if kind == "runs" else []
                why = f"; a schema default moved since it ran: {', '.join(moved)}" if moved else ""
                report.orphans.append((rel, f"its config's id is {want}{why}"))
            elif kind == "runs" and not run.is_complete:
                report.unfinished.append(rel)
            elif kind == "runs" and run.damaged((*RunFolder.DONE_RECORDS, "train_summary.json")):
                report.damaged += [(f"{rel}/{name}", why) for name, why in
                                   run.damaged((*RunFolder.DONE_RECORDS, "train_summary.json"))]
            elif kind == "teacher" and not run.exists(".done"):
                report.unfinished.append(rel)
            else:
                report.ok.append(rel)
    return report


def _value(cfg: Any, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return to_dict(cfg)


def finished_configs(root: str | os.PathLike) -> dict[str, ExperimentConfig]:
    """Folder name -> config of every finished run of a store whose config reads (read once per report)."""
    out = {}
    for folder in sorted((Path(root) / "runs").glob("*")):
        run = RunFolder(folder)
        if folder.name.startswith(".") or not run.is_complete:
            continue
        try:
            out[folder.name] = run.config()
        except ResultsError:
            continue
    return out


def default_drift(cfg: ExperimentConfig, runs: dict[str, ExperimentConfig], explicit: set[str]) -> list[tuple[str, list[tuple[str, Any, Any]]]]:
    """Why a grid point finds no run: the finished ``runs`` (:func:`finished_configs`) that differ from
    ``cfg`` only in fields its config file leaves unset (``explicit``: the keys it sets), i.e. in today's
    defaults. Each comes with those fields as ``(path, the run's value, today's default)``; a run that
    only a changed schema default separates from its cell is found here instead of silently dropping out."""
    out = []
    prefix = run_id(cfg).rsplit("-", 1)[0] + "-"
    for name, have in runs.items():
        if not name.startswith(prefix):
            continue
        diffs = [(path, _value(have, path), _value(cfg, path)) for path, _, _ in hashed_fields()
                 if _value(have, path) != _value(cfg, path)]
        if diffs and not any(path in explicit for path, _, _ in diffs):
            out.append((name, diffs))
    return out


def _moved_default(cfg: ExperimentConfig, folder_name: str) -> list[str]:
    """Fields added after the first schema whose default moved since the run was made: setting any one of
    them back to today's default gives the folder's name (it was hashed away as a default then)."""
    found = []
    for path, legacy, f in hashed_fields():
        if legacy in V1_RUN_FIELDS or f.default is dataclasses.MISSING:
            continue
        value = _value(cfg, path)
        if value == to_dict(f.default):
            continue
        trial = from_dict(ExperimentConfig, to_dict(cfg))
        parent = trial
        for part in path.split(".")[:-1]:
            parent = getattr(parent, part)
        setattr(parent, path.rsplit(".", 1)[-1], f.default)
        if run_id(trial) == folder_name:
            found.append(f"'{path}' (the run's {value!r}, today's default {f.default!r})")
    return found


def migrate_store(root: str | os.PathLike = "results", *, apply: bool = False,
                  on_change: Optional[Callable[[Path], None]] = None) -> list[Path]:
    """Stored configs that an older schema wrote (renamed or retired fields), rewritten in today's
    layout when ``apply`` (ids do not change: see :mod:`uld.ids`). Returns the files that differ."""
    root = Path(root)
    changed = []
    for kind in ("runs", "teacher"):
        for cfg_file in sorted((root / kind).glob("*/config.yaml")):
            run = RunFolder(cfg_file.parent)
            raw = yaml.safe_load(read_text(cfg_file)) or {}
            if migrate(raw, source=str(cfg_file)) == raw:
                continue
            cfg = run.config()
            changed.append(cfg_file)
            if apply:
                before = (run_id if kind == "runs" else teacher_stage_id)(cfg)
                if before != cfg_file.parent.name:
                    raise ResultsError(f"{cfg_file}: migrating would change its id to {before}; not rewriting it")
                atomic_write_text(cfg_file, dump_config(cfg))
            if on_change is not None:
                on_change(cfg_file)
    return changed

"""Results store: run folders, atomic records, run ids, and the one-DataFrame view of all scores.

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
    reference/author_results.tsv   the paper authors' own scores (facts, loaded with source="authors")

Every record is written to a temporary file in the same folder and renamed into place, so a crash
never leaves a half-written file and concurrent jobs never read one. Records that several jobs may
change (a JSON file updated piecewise) go through :func:`atomic_update_json`, which holds an
exclusive ``fcntl`` lock for the read-modify-write so no update is lost; appends to JSONL logs are
single ``write`` calls on an ``O_APPEND`` descriptor, which POSIX keeps whole. Jobs that must not run
the same grid point twice at once take :meth:`RunFolder.lock`.

:func:`load_results` flattens every finished run (``scores.json`` present) into one row per
run x task x metric; :func:`load_reference` maps the authors' TSV into the same columns, so the two
sources can be compared cell by cell.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Optional

import yaml

from uld.config import ExperimentConfig, dump_config, from_dict, migrate
from uld.ids import config_hash, run_id, teacher_stage_id

__all__ = [
    "ResultsError",
    "RunLocked",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_update_json",
    "append_jsonl",
    "read_json",
    "read_jsonl",
    "file_lock",
    "RunFolder",
    "find_run",
    "iter_runs",
    "store_info",
    "env_info",
    "setting_of",
    "describe_config",
    "METRICS",
    "COLUMNS",
    "SETTINGS",
    "load_results",
    "load_reference",
    "load_training_logs",
    "reference_path",
    "REFERENCE_ENV",
]

_REPO_ROOT = Path(__file__).resolve().parents[2]
REFERENCE_ENV = "ULD_REFERENCE_TSV"
DEFAULT_REFERENCE = _REPO_ROOT / "results" / "reference" / "author_results.tsv"


from uld.errors import ResultsError, RunLocked  # noqa: E402


# --------------------------------------------------------------------------------------------------
# Atomic records
# --------------------------------------------------------------------------------------------------


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


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, blocking: bool = True) -> Iterator[Path]:
    """Hold an exclusive advisory lock on ``path`` (created if absent) for the ``with`` block.

    ``flock`` locks belong to the open file description, so they are released when the process
    dies: a crashed job never leaves a run locked. Non-blocking mode raises :class:`RunLocked`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLocked(f"{path} is held by another process") from None
            raise
        yield path
    finally:
        os.close(fd)  # closing the descriptor drops the lock


def _lock_path_for(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


def atomic_update_json(path: str | os.PathLike, update: Callable[[Any], Any], *, default: Any = None) -> Any:
    """Read-modify-write a JSON record under an exclusive lock; returns the new value.

    ``update`` receives the current value (``default`` when the file does not exist yet) and returns
    the value to store. Two processes updating the same file both see each other's changes: the
    second waits for the first's rename before reading.
    """
    path = Path(path)
    with file_lock(_lock_path_for(path)):
        current = read_json(path) if path.exists() else default
        new = update(current)
        atomic_write_json(path, new)
    return new


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


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All records of a JSONL file. A torn last line (a job killed mid-append) is skipped with a warning;
    a bad line anywhere else is an error naming file and line."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if i == len(lines):
                warnings.warn(f"{path}:{i}: skipping an incomplete last line", stacklevel=2)
                continue
            raise ResultsError(f"{path}:{i}: invalid JSON line: {exc}") from None
    return out


# --------------------------------------------------------------------------------------------------
# Run ids and run folders
# --------------------------------------------------------------------------------------------------


class RunFolder:
    """A run's folder in the store. ``init`` writes ``config.yaml`` and ``env.json``.

    The final record is ``scores.json``: a folder without it is an unfinished run, invisible to
    :func:`load_results` and re-run by the pipeline.
    """

    LOCK = ".lock"
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

    def init(self, cfg: ExperimentConfig) -> "RunFolder":
        """Create the folder for ``cfg`` (idempotent).

        A folder that already holds a config for a *different* computation is an error rather than
        being silently overwritten: that would attach old checkpoints and scores to a new config.
        ``env.json`` keeps the environment the run started in; a resumed run on another machine adds
        a line to ``env_history.jsonl``.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        with file_lock(self.file(".init.lock")):
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

    def file(self, *parts: str) -> Path:
        return self.path.joinpath(*parts)

    def exists(self, *parts: str) -> bool:
        return self.file(*parts).exists()

    @property
    def is_complete(self) -> bool:
        """True once the final record (``scores.json``) is in place."""
        return self.exists(self.FINAL)

    def write_json(self, name: str, obj: Any) -> Path:
        return atomic_write_json(self.file(name), obj)

    def update_json(self, name: str, update: Callable[[Any], Any], *, default: Any = None) -> Any:
        """Locked read-modify-write of ``name`` (see :func:`atomic_update_json`)."""
        return atomic_update_json(self.file(name), update, default=default)

    def append_jsonl(self, name: str, record: dict) -> None:
        append_jsonl(self.file(name), record)

    def read_json(self, name: str) -> Any:
        return read_json(self.file(name))

    def config_dict(self) -> dict[str, Any]:
        """The stored ``config.yaml`` as a plain dict (tolerates fields older or newer code added)."""
        path = self.file("config.yaml")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ResultsError(f"{path} is missing: not a run folder") from None
        except yaml.YAMLError as exc:
            raise ResultsError(f"{path}: invalid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ResultsError(f"{path}: the top level must be a mapping")
        return data

    def config(self) -> ExperimentConfig:
        """The stored config, validated against the current schema."""
        source = str(self.file("config.yaml"))
        return from_dict(ExperimentConfig, migrate(self.config_dict(), source=source), source=source)

    @contextlib.contextmanager
    def lock(self, *, blocking: bool = True) -> Iterator["RunFolder"]:
        """Exclusive lock on this run: one job computes a grid point at a time.

        ``blocking=False`` raises :class:`RunLocked` when another job holds it, so a launcher can
        move on to the next point instead of waiting.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        with file_lock(self.file(self.LOCK), blocking=blocking):
            yield self

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"RunFolder({str(self.path)!r})"


def find_run(cfg: ExperimentConfig, root: str | os.PathLike | None = None) -> RunFolder:
    """The folder a grid point's run lives in (``root`` defaults to ``cfg.output_dir``)."""
    return RunFolder(Path(cfg.output_dir if root is None else root) / "runs" / run_id(cfg))


def _run_dirs(root: Path) -> Iterator[Path]:
    """Run folders under ``root``: ``root/runs/*`` for a store root, else any folder with a config.yaml
    and a scores.json below ``root`` (so a copied-out bunch of run folders loads just as well)."""
    if (root / "runs").is_dir():
        yield from sorted(p for p in (root / "runs").iterdir() if p.is_dir() and not p.name.startswith("."))
        return
    if (root / "config.yaml").exists():
        yield root
        return
    for dirpath, dirnames, _ in os.walk(root):
        # checkpoints hold model weights only; teacher stages are not runs
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in ("checkpoints", "teacher", "eval"))
        p = Path(dirpath)
        if (p / "config.yaml").exists() and (p / RunFolder.FINAL).exists():
            yield p


def iter_runs(root: str | os.PathLike = "results", *, complete_only: bool = True) -> Iterator[RunFolder]:
    """Run folders of a store (``complete_only``: those with ``scores.json``)."""
    root = Path(root)
    if not root.exists():
        return
    for d in _run_dirs(root):
        run = RunFolder(d)
        if not run.exists("config.yaml"):
            continue
        if complete_only and not run.is_complete:
            continue
        yield run


def store_info(root: str | os.PathLike = "results") -> dict[str, Any]:
    """``<root>/STORE.json`` (e.g. ``{"fixture": true, "note": ...}`` for the test store), else {}."""
    path = Path(root) / "STORE.json"
    return read_json(path) if path.exists() else {}


# --------------------------------------------------------------------------------------------------
# Flat view: one row per run x task x metric
# --------------------------------------------------------------------------------------------------

METRICS = (
    "f1",
    "em",
    "rouge1",
    "rouge2",
    "rougeL",
    "rougeLsum",
    "bertscore_f1",
    "bertscore_precision",
    "bertscore_recall",
)

COLUMNS = [
    "source",  # "ours" | "authors"
    "run_id",
    "run_dir",
    "experiment",  # config name
    "task",
    "teacher",  # registry short name; None for a student evaluated on its own
    "student",  # registry short name; None for a teacher evaluated on its own
    "setting",  # see SETTINGS
    "method",
    "lam",  # effective lambda: 0 for methods without a distillation term
    "seed",
    "train_fraction",
    "train_size",
    "test_size",
    "ot_cost",  # only for method "uld-ot"
    "shots",
    "target",  # "student" | "teacher"
    "split",
    "n",  # evaluated items
    "protocol",
    "checkpoint",
    "step",  # the authors' selected checkpoint step (ours: None)
    "metric",
    "value",  # x100
    "flag",  # a known defect of this number, else None
]

# Canonical names of what a row measures; tables and plots group on these.
SETTINGS = {
    "teacher": "teacher, few-shot",
    "student-few-shot": "student, few-shot",
    "student-zero-shot": "student, zero-shot",
    "sft-gold": "student, SFT on gold answers",
    "lambda0": "λ=0 (teacher text)",
    "uld": "ULD",
    "kd-kl": "KD (KL, same tokenizer)",
    "uld-ot": "ULD-OT",
}

_NO_DISTILL_TERM = ("none", "sft-gold", "sft-teacher")


def setting_of(method: str, lam: float | None, target: str, shots: int | None) -> str:
    """Canonical setting code (a key of :data:`SETTINGS`) for one evaluated model.

    ULD with lambda = 0 is cross-entropy on the teacher's text, the same objective as
    ``sft-teacher``: both are the paper's "λ=0" baseline.
    """
    if target == "teacher":
        return "teacher"
    if method == "none":
        return "student-few-shot" if (shots or 0) > 0 else "student-zero-shot"
    if method == "sft-teacher" or (method == "uld" and not lam):
        return "lambda0"
    return method


def _get(d: dict, dotted: str, default: Any = None) -> Any:
    node: Any = d
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _check_scores(obj: Any, path: Path) -> dict:
    if not isinstance(obj, dict):
        raise ResultsError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    metrics = obj.get("metrics")
    if not isinstance(metrics, dict):
        raise ResultsError(f"{path}: field 'metrics' must be an object of metric -> number")
    for k, v in metrics.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ResultsError(f"{path}: metric '{k}' must be a number, got {v!r}")
    return obj


def describe_config(cfg: dict[str, Any] | ExperimentConfig, target: str | None = None) -> dict[str, Any]:
    """What a run measures, from its (resolved) config: the identity columns of :data:`COLUMNS`.

    Used both for finished runs and for grid points that have not run yet, so a table can place a
    grid point in its cell before any result exists.
    """
    if isinstance(cfg, ExperimentConfig):
        from uld.config import to_dict

        cfg = to_dict(cfg)
    target = target or _get(cfg, "evaluation.target", "student")
    method = _get(cfg, "training.method", "uld")
    lam = 0.0 if method in _NO_DISTILL_TERM else float(_get(cfg, "training.lam", 0.0) or 0.0)
    shots = _get(cfg, "evaluation.shots", 0) if target == "student" else _get(cfg, "data.teacher_shots")
    teacher = _get(cfg, "teacher.name") or None
    student = _get(cfg, "student.name") or None
    # a model evaluated on its own does not depend on the other side of the pair
    if target == "teacher":
        student = None
    elif method in ("none", "sft-gold"):
        teacher = None
    return {
        "experiment": _get(cfg, "name"),
        "task": _get(cfg, "data.task"),
        "teacher": teacher,
        "student": student,
        "setting": setting_of(method, lam, target, shots),
        "method": method,
        "lam": lam,
        "seed": _get(cfg, "training.seed"),
        "train_fraction": float(_get(cfg, "data.train_fraction", 1.0)),
        "train_size": _get(cfg, "data.train_size"),
        "test_size": _get(cfg, "data.test_size"),
        "ot_cost": _get(cfg, "training.ot_cost") if method == "uld-ot" else None,
        "shots": shots,
        "target": target,
    }


def _rows_for_run(run: RunFolder) -> list[dict[str, Any]]:
    cfg = run.config_dict()
    scores_path = run.file(RunFolder.FINAL)
    try:
        scores = _check_scores(read_json(scores_path), scores_path)
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{scores_path}: invalid JSON: {exc}") from None
    base = {"source": "ours", "run_id": run.id, "run_dir": str(run.path)}
    base.update(describe_config(cfg, target=scores.get("target")))
    if scores.get("task"):
        base["task"] = scores["task"]
    base.update(
        split=scores.get("split"),
        n=scores.get("n"),
        protocol=scores.get("protocol"),
        checkpoint=scores.get("checkpoint"),
        step=None,
        flag=None,
    )
    rows = []
    for metric, value in scores["metrics"].items():
        if value is None:
            continue
        rows.append({**base, "metric": metric, "value": float(value)})
    return rows


def _frame(rows: list[dict[str, Any]]):
    import pandas as pd

    df = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("lam", "train_fraction", "value"):
        df[col] = df[col].astype(float)
    return df


def load_results(
    root: str | os.PathLike = "results",
    source: Literal["ours", "authors", "both"] = "ours",
    *,
    reference: str | os.PathLike | None = None,
    on_error: Literal["raise", "warn"] = "raise",
):
    """One pandas DataFrame over all finished runs: one row per run x task x metric (:data:`COLUMNS`).

    ``root`` is a store root (its ``runs/`` is read), a single run folder, or any folder holding run
    folders at any depth. ``source="authors"`` gives the authors' numbers (:func:`load_reference`),
    ``"both"`` stacks the two. A malformed record raises :class:`ResultsError` naming the file, or with
    ``on_error="warn"`` is skipped with a warning.
    """
    import pandas as pd

    if source not in ("ours", "authors", "both"):
        raise ValueError(f"source must be 'ours', 'authors' or 'both', got {source!r}")
    frames = []
    if source in ("ours", "both"):
        rows: list[dict[str, Any]] = []
        for run in iter_runs(root):
            try:
                rows.extend(_rows_for_run(run))
            except ResultsError as exc:
                if on_error == "raise":
                    raise
                warnings.warn(str(exc), stacklevel=2)
        frames.append(_frame(rows))
    if source in ("authors", "both"):
        frames.append(load_reference(reference))
    if len(frames) == 1:
        return frames[0]
    return pd.concat(frames, ignore_index=True)


_LOG_INFO = ("task", "teacher", "student", "setting", "method", "lam", "train_fraction", "ot_cost", "seed")


def load_training_logs(root: str | os.PathLike = "results", run_ids: Optional[list[str]] = None):
    """Every ``metrics.jsonl`` line of the store's runs, joined with what the run is.

    Columns: the log keys (step, epoch, split, loss, ce, uld, lr, tokens_per_s, ...) plus run_id,
    run_dir, task, teacher, student, setting, method, lam, train_fraction, ot_cost, seed. Unfinished
    runs are included: their curves are exactly what one looks at while they train.
    """
    import pandas as pd

    wanted = set(run_ids) if run_ids is not None else None
    frames = []
    for run in iter_runs(root, complete_only=False):
        if wanted is not None and run.id not in wanted:
            continue
        if not run.exists("metrics.jsonl"):
            continue
        records = read_jsonl(run.file("metrics.jsonl"))
        if not records:
            continue
        desc = describe_config(run.config_dict(), target="student")
        info = {"run_id": run.id, "run_dir": str(run.path)}
        info.update({k: desc[k] for k in _LOG_INFO})
        df = pd.DataFrame(records)
        for k, v in info.items():
            df[k] = v
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["run_id", "run_dir", *_LOG_INFO, "step", "epoch", "split", "loss", "ce", "uld"])
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------------------
# The authors' numbers
# --------------------------------------------------------------------------------------------------

# Names in the authors' result files -> our registry short names / task names (experiments/models.yaml).
AUTHOR_MODELS = {
    "Llama-2-7b-chat-hf": "llama-2-7b-chat",
    "Mistral-7B-Instruct-v0.2": "mistral-7b-instruct",
    "pythia-160m-deduped": "pythia-160m",
    "pythia-410m-deduped": "pythia-410m",
    "pythia-1b-deduped": "pythia-1b",
    "opt-350m": "opt-350m",
    "bloomz-560m": "bloomz-560m",
    "mt0-base": "mt0-base",
}
AUTHOR_TEACHERS = ("Llama-2-7b-chat-hf", "Mistral-7B-Instruct-v0.2")
AUTHOR_TASKS = {
    "squad": "squad",
    "qed": "qed",
    "FairytaleQA": "fairytaleqa",
    "pubmed_qa": "pubmedqa",
    "dialogsum": "dialogsum",
}
AUTHOR_METRICS = {
    "f1": "f1",
    "em": "em",
    "rouge1": "rouge1",
    "rouge2": "rouge2",
    "rougeL": "rougeL",
    "bertF1": "bertscore_f1",
    "bertP": "bertscore_precision",
    "bertR": "bertscore_recall",
}
# Known defects of the authors' files (see ../shared/README.md), keyed by
# (model, task, setting) and the metrics affected (None: every metric of the row).
AUTHOR_DEFECTS = {
    ("mistral-7b-instruct", "fairytaleqa", "teacher"): (
        None,
        "authors' file repeats the Mistral QED teacher numbers for this row",
    ),
    ("llama-2-7b-chat", "dialogsum", "teacher"): (
        ("bertscore_f1", "bertscore_precision", "bertscore_recall"),
        "authors' BERTScore for this row (8.63) looks broken",
    ),
}
_DISTILL_SETTING = re.compile(r"^d(?P<lam>\d+(?:\.\d+)?)(?:_(?P<frac>\d*\.\d+))?$")
_ORIGINAL_SETTING = re.compile(r"^original\((?P<title>titled|untitled)\)$")


def reference_path(path: str | os.PathLike | None = None) -> Path:
    """The authors' TSV: ``path``, else ``$ULD_REFERENCE_TSV``, else results/reference/ in the repo."""
    if path is not None:
        return Path(path)
    return Path(os.environ.get(REFERENCE_ENV, DEFAULT_REFERENCE))


def _num(text: str, path: Path, lineno: int, col: str) -> Optional[float]:
    if text in ("", "-", "None", "nan"):
        return None
    try:
        return float(text)
    except ValueError:
        raise ResultsError(f"{path}:{lineno}: column '{col}' is not a number: {text!r}") from None


def load_reference(path: str | os.PathLike | None = None):
    """The authors' per-run scores in the columns of :func:`load_results` (``source="authors"``).

    Mapping: dataset names -> our task names; model names -> registry short names; setting ``d0`` ->
    method ``sft-teacher`` (λ=0), ``d1.5`` -> ``uld`` with λ=1.5, a ``_0.25`` suffix -> train_fraction
    0.25; ``original(...)`` rows -> method ``none`` (teacher few-shot rows have target "teacher" and no
    student; student few-shot rows have no teacher). The teachers' rows are fractions in the authors'
    files and are scaled to x100 like every other row. Known defects are named in ``flag``.
    """
    import csv

    path = reference_path(path)
    if not path.is_file():
        raise ResultsError(f"authors' reference file not found: {path} (set {REFERENCE_ENV})")
    rows: list[dict[str, Any]] = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        missing = {"student", "dataset", "teacher", "setting", "ckpt", "shots", "n", *AUTHOR_METRICS} - set(
            reader.fieldnames or []
        )
        if missing:
            raise ResultsError(f"{path}: missing columns {sorted(missing)}")
        for lineno, rec in enumerate(reader, start=2):
            rows.extend(_reference_rows(rec, path, lineno))
    return _frame(rows)


def _reference_rows(rec: dict[str, str], path: Path, lineno: int) -> list[dict[str, Any]]:
    model_raw, task_raw, setting_raw = rec["student"], rec["dataset"], rec["setting"]
    if model_raw not in AUTHOR_MODELS:
        raise ResultsError(f"{path}:{lineno}: unknown model {model_raw!r} (add it to AUTHOR_MODELS)")
    if task_raw not in AUTHOR_TASKS:
        raise ResultsError(f"{path}:{lineno}: unknown dataset {task_raw!r}")
    model, task = AUTHOR_MODELS[model_raw], AUTHOR_TASKS[task_raw]
    shots = int(rec["shots"]) if rec["shots"] not in ("", "-") else None
    n = _num(rec["n"], path, lineno, "n")
    step = _num(rec["ckpt"], path, lineno, "ckpt")
    common = {
        "source": "authors",
        "run_id": f"authors:{model_raw}/{task_raw}/{rec['teacher']}/{setting_raw}",
        "run_dir": None,
        "experiment": "authors",
        "task": task,
        "seed": None,
        "train_size": None,
        "test_size": None,
        "ot_cost": None,
        "shots": shots,
        "split": "test",
        "n": int(n) if n is not None else None,
        "protocol": "authors",
        "checkpoint": None,
        "step": int(step) if step is not None else None,
    }
    scale = 1.0
    if (m := _DISTILL_SETTING.match(setting_raw)) is not None:
        teacher_raw = rec["teacher"]
        if teacher_raw not in AUTHOR_MODELS:
            raise ResultsError(f"{path}:{lineno}: unknown teacher {teacher_raw!r}")
        lam = float(m["lam"])
        method = "uld" if lam > 0 else "sft-teacher"
        frac = float(m["frac"]) if m["frac"] else 1.0
        common.update(teacher=AUTHOR_MODELS[teacher_raw], student=model, method=method, lam=lam,
                      train_fraction=frac, target="student", setting=setting_of(method, lam, "student", 0))
    elif _ORIGINAL_SETTING.match(setting_raw):
        is_teacher = model_raw in AUTHOR_TEACHERS
        target = "teacher" if is_teacher else "student"
        common.update(teacher=model if is_teacher else None, student=None if is_teacher else model,
                      method="none", lam=0.0, train_fraction=1.0, target=target,
                      setting=setting_of("none", 0.0, target, shots))
        scale = 100.0 if is_teacher else 1.0  # the teachers' rows are stored as fractions
    else:
        raise ResultsError(f"{path}:{lineno}: unknown setting {setting_raw!r}")

    defect = AUTHOR_DEFECTS.get((model, task, common["setting"]))
    out = []
    for col, metric in AUTHOR_METRICS.items():
        value = _num(rec[col], path, lineno, col)
        if value is None:
            continue
        if scale != 1.0 and not -1.0 <= value <= 1.0:
            raise ResultsError(f"{path}:{lineno}: teacher row {col}={value} is not a fraction")
        flag = None
        if defect is not None and (defect[0] is None or metric in defect[0]):
            flag = defect[1]
        value = round(value * scale, 10)  # 0.5301 * 100 -> 53.01, not 53.010000000000005
        out.append({**common, "metric": metric, "value": value, "flag": flag})
    return out


# --------------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------------


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

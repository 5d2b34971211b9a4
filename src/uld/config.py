"""Typed experiment configuration.

One schema (nested dataclasses) is filled from YAML, then dotted command-line overrides
(``training.optim.lr=2e-6``) are applied on top, then the result is validated. Unknown keys and values of
the wrong type are errors that name the key and the file they came from. The resolved config is what
every run folder stores (``config.yaml``) and what run ids are hashed from.

Dependency rule: below this module sit only the names it validates against (tasks, methods, metric
groups) and the typed loader (``uld.typed``); nothing that trains or evaluates.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Optional

import yaml

from uld.data import TASKS
from uld.errors import ConfigError
from uld.typed import from_dict, to_dict
from uld.methods import METHOD_NAMES, get_method
from uld.metrics import METRIC_GROUPS

MethodName = Literal[METHOD_NAMES]  # type: ignore[valid-type]  # the names of uld.methods.METHODS

__all__ = [
    "ConfigError",
    "ModelConfig",
    "DataConfig",
    "GenerationConfig",
    "TrainingConfig",
    "OptimConfig",
    "DistillConfig",
    "OTConfig",
    "CheckpointConfig",
    "EvaluationConfig",
    "ExperimentConfig",
    "load_config",
    "MAX_GRID_POINTS",
    "name_problem",
    "explicit_keys",
    "load_yaml_config",
    "from_dict",
    "to_dict",
    "apply_overrides",
    "dump_config",
    "expand_grid",
    "RENAMED",
    "migrate",
    "RETIRED",
]


# --------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """A model, by registry short name (``experiments/models.yaml``) or by Hub id / local folder.

    ``path`` overrides where the weights are read from (a local folder) without changing the model's
    identity, so the same config runs on and offline and keeps the same run id.
    """

    name: str = ""
    path: Optional[str] = None
    revision: Optional[str] = None
    dtype: Optional[str] = None  # None: the registry's setting ("float32", "bfloat16", "float16", "auto")
    trust_remote_code: bool = False
    # weights from an earlier run of the same store (its checkpoints/best), e.g. a fine-tuned teacher;
    # the registry entry of ``name`` still says how to prompt it. The run id is content-addressed, so it
    # identifies the weights.
    from_run: Optional[str] = None


@dataclass
class DataConfig:
    """Which task, which rows, and how they are cut into training / validation / test."""

    task: str = "squad"
    dir: Optional[str] = None  # local data folder (original formats); None: $ULD_DATA_DIR, else the Hub
    train_start: int = 0  # skip the first rows of the training pool (a slice disjoint from another run's)
    train_size: Optional[int] = None  # first N rows of the training pool (None: all of it)
    train_fraction: float = 1.0  # dataset-size ablation, applied to the training part only
    fraction_mode: Literal["first", "random"] = "first"  # paper: the first N%
    val_fraction: float = 0.1  # seeded hold-out of the training pool for checkpoint selection
    split_seed: int = 42
    test_size: Optional[int] = None  # first N rows of the evaluated split (None: all of it)
    # prompt + answer tokens; the context is truncated, never the answer. None: no limit but the student's
    # context length (the authors' code never truncates a training row)
    max_length: Optional[int] = 1024
    teacher_shots: Optional[int] = None  # None: the paper's count for (teacher, task) from the registry
    teacher_title: Optional[bool] = None  # None: the paper's setting for (teacher, task)
    # ---- seeded random samples (issue 25); the defaults keep the first rows, as every committed run ----
    # "shuffled": train_start / train_size slice a permutation of the training pool drawn with sample_seed,
    # so items spread across articles and two slices of one permutation (a teacher's, a student's) are disjoint
    pool_order: Literal["file", "shuffled"] = "file"
    # "shuffled": test_size questions drawn at random from the evaluated split with sample_seed (kept in file order)
    test_order: Literal["file", "shuffled"] = "file"
    sample_seed: int = 0


@dataclass
class GenerationConfig:
    """Teacher answer generation (paper: greedy, 150 new tokens, first line kept)."""

    max_new_tokens: int = 150
    batch_size: int = 8
    first_line: bool = True
    top_k_signal: int = 256  # teacher signal cache: top-k sorted probabilities kept per answer token
    signal_temperature: float = 1.0  # the cache holds softmax(teacher logits / T): T < 1 sharpens the teacher
    store_signal: bool = True
    chunk_size: int = 256  # rows per resumable chunk
    share_prefix: bool = False  # prefill each batch's shared prompt opening once (few-shot prompts; same answers)


@dataclass
class OptimConfig:
    """Optimizer and schedule (paper: AdamW, OneCycle per optimizer step, lr 1e-6)."""

    lr: float = 1e-6
    lr_preset: Optional[Literal["paper", "authors-jobs"]] = None  # paper: 1e-6, authors' jobs: 2e-6
    weight_decay: float = 0.1
    max_grad_norm: Optional[float] = 1.0  # None: no clipping
    warmup_ratio: float = 0.1
    scheduler: Literal["onecycle", "constant", "linear"] = "onecycle"
    # torch's fused AdamW: ~12x cheaper optimizer step on CPU, the same update up to float rounding. Off by
    # default so that rerunning a committed config reproduces its weights bit for bit; new studies opt in.
    fused: bool = False


@dataclass
class DistillConfig:
    """How the distillation term compares student and teacher (methods uld, kd-kl, uld-ot)."""

    teacher_signal: Literal["cached", "online"] = "cached"  # cached: the teacher stage's top-k signal (uld)
    top_k: Optional[int] = None  # None: exact ULD over full vocabularies (online), the cache's width (cached)
    alignment: Literal["positional", "offsets"] = "positional"
    reduction: Literal["sample", "token", "sum"] = "sample"
    student_temperature: float = 1.0
    teacher_temperature: float = 1.0
    skip_student_eos: bool = True
    skip_teacher_eos: bool = False  # drop the teacher position that predicts its EOS (chat teachers without EOS)
    loss_chunk_size: Optional[int] = None


@dataclass
class OTConfig:
    """Optimal transport with a token cost (method uld-ot)."""

    cost: Literal["uniform", "levenshtein", "embedding"] = "uniform"
    top_k: int = 32
    solver: Literal["emd", "sinkhorn"] = "emd"
    embedding_model: Optional[str] = None  # cost=embedding: a token-embedding model (Hub id or local folder)


@dataclass
class CheckpointConfig:
    """When to validate and save, which checkpoint to keep."""

    eval_every: Optional[int] = None  # optimizer steps between validation passes (None: each epoch)
    save_every: Optional[int] = None  # optimizer steps between resumable checkpoints (None: each epoch)
    select: Literal["best_val_loss", "last"] = "best_val_loss"
    keep_last: bool = True
    # checkpoints/state (weights, optimizer, RNG: ~3x the model) only serves to resume an interrupted run;
    # a finished run keeps just its trainer.json unless this is set, so a study of many runs fits on disk
    keep_state: bool = False


@dataclass
class TrainingConfig:
    """Student training. Defaults are the paper's (decoder students, lr preset ``paper``)."""

    method: MethodName = "uld"  # see uld.methods
    lam: float = 1.5
    epochs: float = 5.0
    max_steps: Optional[int] = None
    batch_size: int = 8
    grad_accum: int = 1
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    # "answer": project only the positions that predict answer tokens onto the vocabulary (same losses,
    # several times faster with large vocabularies); "all": the full [B, T, V] logits
    logits: Literal["all", "answer"] = "all"
    seed: int = 42
    optim: OptimConfig = field(default_factory=OptimConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    ot: OTConfig = field(default_factory=OTConfig)
    checkpoints: CheckpointConfig = field(default_factory=CheckpointConfig)
    log_every: int = 10
    num_workers: int = 0
    trackers: list[str] = field(default_factory=list)  # e.g. ["tensorboard", "wandb"]
    # throughput (issue 24): "random" batches rows in the seeded shuffled order (every committed run);
    # "length" sorts each window of 50 batches of that order by length and shuffles the batches, so a batch
    # pads little (same rows every epoch, other batch partners: a new run id)
    batching: Literal["random", "length"] = "random"


@dataclass
class EvaluationConfig:
    """Generate-and-score on the task's test split."""

    target: Literal["student", "teacher"] = "student"
    checkpoint: Literal["best", "last"] = "best"
    shots: int = 0  # student prompts are zero-shot (paper); >0 for student few-shot baselines
    batch_size: int = 16
    max_new_tokens: int = 150
    first_line: bool = True
    metrics: list[str] = field(default_factory=lambda: ["f1", "em", "rouge", "bertscore"])
    references: Literal["authors", "complete"] = "authors"
    rouge_stemming: bool = False
    bertscore_model: str = "roberta-large"
    bertscore_path: Optional[str] = None  # local folder for the BERTScore model (offline)
    bertscore_rescale: bool = True
    bertscore_num_layers: Optional[int] = None
    bertscore_batch_size: int = 32
    # throughput (issue 24): the weights' precision while generating; None: as the model loads (fp32 for
    # every committed run). "bfloat16" is ~2.5x faster on CPUs with bf16 matrix units, answers may differ
    dtype: Optional[Literal["float32", "bfloat16"]] = None
    # throughput: prefill each batch's common prompt opening once (chat header, instruction, the shots of
    # a few-shot prompt); the same computation in another order, so fp32 answers may differ by rounding
    share_prefix: bool = False


@dataclass
class ExperimentConfig:
    """One experiment = one teacher/student/task/method run (or a grid of them, see ``grid``)."""

    name: str = "experiment"
    description: str = ""
    teacher: ModelConfig = field(default_factory=ModelConfig)
    student: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    # dotted key -> list of values; `uld run` expands the product into one run per point
    grid: dict[str, list[Any]] = field(default_factory=dict)
    # task -> dotted key -> value: settings a preset gives one task only (the paper's batch 8 on SQuAD),
    # applied to each grid point of that task; the resolved point records the values themselves
    per_task: dict[str, dict[str, Any]] = field(default_factory=dict)
    output_dir: str = "results"  # store root: runs/, teacher/, tables/, figures/
    device: Optional[str] = None  # None: whatever accelerate picks


# Schema history. RENAMED: legacy dotted path -> current dotted path (stored configs are migrated on
# read and the field keeps being hashed under its legacy path, see uld.ids). RETIRED: removed field ->
# the only value the code still implements (a stored config holding another value is refused).
RENAMED: dict[str, str] = {
    **{f"training.{k}": f"training.optim.{k}" for k in ("lr", "lr_preset", "weight_decay", "max_grad_norm", "warmup_ratio", "scheduler")},
    **{f"training.{k}": f"training.distill.{k}" for k in (
        "teacher_signal", "top_k", "alignment", "reduction", "student_temperature", "teacher_temperature",
        "skip_student_eos", "skip_teacher_eos", "loss_chunk_size")},
    **{f"training.ot_{k}": f"training.ot.{k}" for k in ("top_k", "solver", "embedding_model")},
    "training.ot_cost": "training.ot.cost",
    **{f"training.{k}": f"training.checkpoints.{k}" for k in ("eval_every", "save_every", "select", "keep_last", "keep_state")},
}
RETIRED: dict[str, Any] = {
    "generation.do_sample": False,  # decoding is greedy, always (the paper's protocol)
    "generation.backend": "hf",  # generation runs on transformers; the untested vLLM path was removed
}

def _parse_override_value(text: str) -> Any:
    # YAML gives numbers, booleans, null and lists ("[0, 1.5]") their natural types
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(cfg: Any, overrides: list[str] | dict[str, Any], *, source: str = "command line") -> Any:
    """Return a copy of ``cfg`` with dotted overrides applied (``["training.optim.lr=2e-6", ...]`` or a dict)."""
    data = to_dict(cfg)
    items = overrides.items() if isinstance(overrides, dict) else [_split_override(o) for o in overrides]
    for key, value in items:
        if isinstance(value, str) and not isinstance(overrides, dict):
            value = _parse_override_value(value)
        _set_dotted(data, key, value, source)
    return from_dict(type(cfg), data, source=source)


def _split_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, value = text.split("=", 1)
    return key.strip(), value


def _set_dotted(data: dict, key: str, value: Any, source: str) -> None:
    if key in RENAMED:
        warnings.warn(f"'{key}' ({source}) is now '{RENAMED[key]}'", FutureWarning, stacklevel=3)
        key = RENAMED[key]
    if key == "grid" and isinstance(value, dict):
        value = {RENAMED.get(k, k): v for k, v in value.items()}
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
            raise ConfigError(f"unknown key '{'.'.join(parts[: i + 1])}' in {source}")
        node = node[part]
    last = parts[-1]
    # `grid` is a free-form mapping: allow new keys there; everywhere else the key must exist
    if last not in node and parts[0] != "grid":
        raise ConfigError(f"unknown key '{key}' in {source}")
    node[last] = value


def load_yaml_config(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML file into a dict, following ``base:`` (a path relative to the file) recursively."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (f" (the base of {_seen[-1]})" if _seen else ""))
    if path.resolve() in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path.resolve()))
        raise ConfigError(f"{path}: its 'base:' chain comes back to itself ({chain})")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {one_line(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    base = data.pop("base", None)
    if base is None:
        return data
    bases = base if isinstance(base, list) else [base]
    merged: dict[str, Any] = {}
    for b in bases:
        if not isinstance(b, str):
            raise ConfigError(f"{path}: 'base' must be a file name or a list of them, got {b!r}")
        merged = _deep_merge(merged, load_yaml_config(path.parent / b, (*_seen, path.resolve())))
    return _deep_merge(merged, data)


def one_line(exc: BaseException) -> str:
    """A library's multi-line message (YAML's carets and context lines) as one line."""
    return " ".join(part.strip() for part in str(exc).splitlines() if part.strip() and part.strip() != "^")


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "grid":
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def migrate(data: dict[str, Any], *, source: str = "") -> dict[str, Any]:
    """A config mapping written under an older schema, in today's layout (:data:`RENAMED`, :data:`RETIRED`).

    A renamed key moves to its new place; a retired key is dropped when it holds the one value the code
    still implements and refused otherwise. Grid keys are migrated too.
    """
    where = f" in {source}" if source else ""
    out = json_copy(data)
    for legacy, value in RETIRED.items():
        found, current = _pop_dotted(out, legacy)
        if found and current != value:
            raise ConfigError(f"'{legacy}'{where} was removed; only {value!r} is supported, got {current!r}")
        grid = out.get("grid")
        if isinstance(grid, dict) and legacy in grid:
            raise ConfigError(f"grid key '{legacy}'{where} was removed from the schema")
    for legacy, new in RENAMED.items():
        found, value = _pop_dotted(out, legacy)
        if found:
            parts = new.split(".")
            node = out
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            if parts[-1] in node:
                raise ConfigError(f"'{legacy}'{where} was renamed to '{new}'; give only one of them")
            node[parts[-1]] = value
        grid = out.get("grid")
        if isinstance(grid, dict) and legacy in grid:
            grid[new] = grid.pop(legacy)
    return out


def json_copy(data: Any) -> Any:
    """Deep copy of plain YAML data (dicts and lists are copied, scalars shared)."""
    if isinstance(data, dict):
        return {k: json_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [json_copy(v) for v in data]
    return data


def _pop_dotted(data: dict, key: str) -> tuple[bool, Any]:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return False, None
    if parts[-1] not in node:
        return False, None
    return True, node.pop(parts[-1])


# a grid past this many points is refused unless asked for (`--large-grid`): a typo in one list (a range
# pasted where a pair was meant) would otherwise launch thousands of trainings
MAX_GRID_POINTS = 1000


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None, *,
                max_grid_points: Optional[int] = MAX_GRID_POINTS) -> ExperimentConfig:
    """YAML file (optional) -> ExperimentConfig -> dotted overrides -> validated config.

    ``max_grid_points``: a grid expanding to more points is an error naming the count and the limit
    (None: no limit)."""
    data = load_yaml_config(path) if path is not None else {}
    data = migrate(data, source=str(path) if path else "")
    cfg = from_dict(ExperimentConfig, data, source=str(path) if path else "")
    if overrides:
        cfg = apply_overrides(cfg, overrides)
        # an override of a swept key pins it: `training.method=uld` on a config whose grid sweeps
        # training.method means "just that point"; it also beats a per-task value of the same key
        keys = {RENAMED.get(k, k) for k in (_split_override(o)[0] for o in overrides)}
        for key in keys & set(cfg.grid):
            del cfg.grid[key]
        for values in cfg.per_task.values():
            for key in keys & set(values):
                del values[key]
    overridden = {RENAMED.get(k, k) for k in (_split_override(o)[0] for o in overrides or [])}
    validate(cfg, source=str(path) if path else "", overridden=overridden)
    n_points = math.prod(len(v) for v in cfg.grid.values())
    if max_grid_points is not None and n_points > max_grid_points:
        sizes = " x ".join(f"{len(v)} {k}" for k, v in cfg.grid.items())
        origin = "the command line" if "grid" in overridden else path or "the config"
        raise ConfigError(f"'grid' in {origin}: {n_points} points ({sizes}) exceed the limit of "
                          f"{max_grid_points}; pass --large-grid if that many runs are meant")
    return cfg


# (dotted key, rule) pairs: "pos" > 0, "nonneg" >= 0, "unit" in [0, 1); None values are allowed
# where the field is Optional.
_RANGES = (
    ("data.train_size", "pos"), ("data.test_size", "pos"), ("data.train_start", "nonneg"), ("data.max_length", "pos"),
    ("data.teacher_shots", "nonneg"), ("data.val_fraction", "unit"),
    ("generation.max_new_tokens", "pos"), ("generation.batch_size", "pos"), ("generation.chunk_size", "pos"),
    ("generation.top_k_signal", "pos"), ("generation.signal_temperature", "pos"),
    ("training.lam", "nonneg"), ("training.epochs", "pos"), ("training.max_steps", "pos"), ("training.batch_size", "pos"),
    ("training.grad_accum", "pos"), ("training.log_every", "pos"), ("training.num_workers", "nonneg"),
    ("training.optim.lr", "pos"), ("training.optim.weight_decay", "nonneg"), ("training.optim.max_grad_norm", "pos"),
    ("training.optim.warmup_ratio", "unit"),
    ("training.distill.top_k", "pos"), ("training.distill.student_temperature", "pos"),
    ("training.distill.teacher_temperature", "pos"), ("training.distill.loss_chunk_size", "pos"),
    ("training.ot.top_k", "pos"), ("training.checkpoints.eval_every", "pos"), ("training.checkpoints.save_every", "pos"),
    ("evaluation.shots", "nonneg"), ("evaluation.batch_size", "pos"), ("evaluation.max_new_tokens", "pos"),
    ("evaluation.bertscore_batch_size", "pos"), ("evaluation.bertscore_num_layers", "pos"),
)
_RULES = {"pos": (lambda v: v > 0, "must be > 0"), "nonneg": (lambda v: v >= 0, "must be >= 0"),
          "unit": (lambda v: 0 <= v < 1, "must be in [0, 1)")}


def validate(cfg: ExperimentConfig, source: str = "", overridden: Iterable[str] = ()) -> None:
    """Cross-field checks the type system cannot express; the error names the key and where its value
    came from: the file, or the command line for the keys in ``overridden``."""
    where = f" in {source}" if source else ""
    overridden = set(overridden)

    def bad(key: str, msg: str) -> ConfigError:
        origin = " in the command line" if key in overridden else where
        return ConfigError(f"'{key}'{origin}: {msg}")

    problem = name_problem(cfg.name)
    if problem:
        raise bad("name", problem)

    for key, value in _leaves(to_dict(cfg)):
        if isinstance(value, float) and not math.isfinite(value):
            raise bad(key, f"must be a finite number, got {value}")
    for key, rule in _RANGES:
        value = _get_dotted(cfg, key)
        ok, msg = _RULES[rule]
        if value is not None and not ok(value):
            raise bad(key, f"{msg}, got {value}")
    if not 0 < cfg.data.train_fraction <= 1:
        raise bad("data.train_fraction", f"must be in (0, 1], got {cfg.data.train_fraction}")
    if cfg.data.test_order == "shuffled" and cfg.data.test_size is None:
        raise bad("data.test_order", "'shuffled' draws data.test_size questions at random; set data.test_size")
    if cfg.data.task not in TASKS:
        raise bad("data.task", f"unknown task {cfg.data.task!r} (one of {', '.join(sorted(TASKS))})")
    unknown = [m for m in cfg.evaluation.metrics if m not in METRIC_GROUPS]
    if unknown:
        raise bad("evaluation.metrics", f"unknown metric(s) {unknown} (known: {', '.join(sorted(METRIC_GROUPS))})")
    for key, problem in get_method(cfg.training.method).check(cfg):
        raise bad(key, problem)
    for key in cfg.grid:
        try:
            _get_dotted(cfg, key)
        except (AttributeError, KeyError):
            raise ConfigError(f"grid key '{key}'{where} is not a config field") from None
        if not isinstance(cfg.grid[key], list) or not cfg.grid[key]:
            raise ConfigError(f"grid key '{key}'{where} must map to a non-empty list")
    for task, values in cfg.per_task.items():
        if task not in TASKS:
            raise ConfigError(f"'per_task.{task}'{where}: unknown task (one of {', '.join(sorted(TASKS))})")
        for key in values:
            try:
                _get_dotted(cfg, RENAMED.get(key, key))
            except (AttributeError, KeyError):
                raise ConfigError(f"'per_task.{task}.{key}'{where} is not a config field") from None


def name_problem(name: Any) -> str | None:
    """Why ``name`` cannot name run folders (``runs/<name>-<hash>``), or None. A leading dot hides the
    folder from every reader of the store; a separator or ``..`` puts it somewhere else."""
    if not isinstance(name, str) or not name.strip():
        return f"must be a non-empty name, got {name!r}"
    if "/" in name or "\\" in name or ".." in name:
        return f"must not hold a path separator or '..' (it names one folder of the store), got {name!r}"
    if name.startswith("."):
        return f"must not start with '.' (the store skips hidden folders), got {name!r}"
    if any(ch.isspace() and ch != " " or not ch.isprintable() for ch in name):
        return f"must be one line of printable characters, got {name!r}"
    return None


def explicit_keys(path: str | os.PathLike, overrides: list[str] | None = None) -> set[str]:
    """The dotted keys a config file (its ``base:`` chain included), its grid, its per-task settings and
    the overrides set; every other field takes today's schema default."""
    data = migrate(load_yaml_config(path), source=str(path))
    keys = {k for k, _ in _leaves({k: v for k, v in data.items() if k not in ("grid", "per_task")})}
    keys |= {RENAMED.get(k, k) for k in data.get("grid") or {}}
    keys |= {RENAMED.get(k, k) for values in (data.get("per_task") or {}).values() for k in values}
    return keys | {RENAMED.get(k, k) for k in (_split_override(o)[0] for o in overrides or [])}


def _leaves(tree: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in tree.items():
        if isinstance(v, dict) and k != "grid":
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _get_dotted(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


def dump_config(cfg: Any, path: str | os.PathLike | None = None) -> str:
    """YAML text of a config (written to ``path`` too when given; the caller handles atomicity)."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)
    if path is not None:
        Path(path).write_text(text)
    return text


def expand_grid(cfg: ExperimentConfig) -> list[ExperimentConfig]:
    """One config per point of ``cfg.grid`` (cartesian product, keys in file order), each with its task's
    ``per_task`` settings applied; no grid: the config itself, so resolved."""
    keys = list(cfg.grid)
    out = []
    for values in itertools.product(*(cfg.grid[k] for k in keys)) if keys else [()]:
        point = apply_overrides(cfg, dict(zip(keys, values)), source=f"grid of {cfg.name}") if keys else cfg
        task_values = point.per_task.get(point.data.task, {})
        if task_values:
            point = apply_overrides(point, {RENAMED.get(k, k): v for k, v in task_values.items()},
                                    source=f"per_task.{point.data.task} of {cfg.name}")
        point = dataclasses.replace(point, grid={}, per_task={})
        validate(point, source=f"grid point {dict(zip(keys, values))} of {cfg.name}" if keys else cfg.name)
        out.append(point)
    return out

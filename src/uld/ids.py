"""Stable identities: run ids and teacher-stage ids.

A run folder is found again by the hash of what it computes, so the hash must not move when the
schema grows. Three rules keep every stored id valid:

* **Frozen fields.** The fields of the first schema (``V1_RUN_FIELDS``, ``V1_TEACHER_FIELDS``) are
  always hashed, at their value, exactly as the first schema hashed them.
* **New fields count only when used.** A field added later is hashed only when its value differs from
  its default; a default that keeps the old behaviour therefore keeps every existing id.
* **Renames and removals are declared.** ``uld.config.RENAMED`` maps a field's legacy path to its
  current one: the field is hashed under the legacy path. ``uld.config.RETIRED`` lists removed fields
  with the one value the code still implements: they are hashed at that value.

Changing a default or the meaning of a hashed field does change ids: ``tests/unit/test_ids.py`` holds the
defaults every id depends on and the committed run folders, so such a change fails a test instead of
silently orphaning the store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from typing import Any, Iterator

from uld.config import RENAMED, RETIRED, ExperimentConfig
from uld.typed import to_dict

__all__ = [
    "HASH_EXCLUDED",
    "V1_RUN_FIELDS",
    "V1_TEACHER_FIELDS",
    "TEACHER_DATA_FIELDS",
    "config_hash",
    "run_id",
    "teacher_stage_id",
    "resume_key",
    "identity",
    "leaf_fields",
    "hashed_fields",
]

# Fields that do not change what a run computes: never hashed.
HASH_EXCLUDED = frozenset({
    "description",
    "grid",
    "per_task",
    "output_dir",
    "device",
    "teacher.path",
    "student.path",
    "data.dir",
    "generation.batch_size",
    "generation.chunk_size",
    "training.log_every",
    "training.keep_state",
    "training.num_workers",
    "training.trackers",
    "evaluation.batch_size",
    "evaluation.bertscore_path",
    "evaluation.bertscore_batch_size",
})

# The first schema's hashed fields (legacy dotted paths). Never edit: every stored id depends on it.
V1_RUN_FIELDS = frozenset({
    "name",
    "teacher.name", "teacher.revision", "teacher.dtype", "teacher.trust_remote_code",
    "student.name", "student.revision", "student.dtype", "student.trust_remote_code",
    "data.task", "data.train_size", "data.train_fraction", "data.fraction_mode", "data.val_fraction",
    "data.split_seed", "data.test_size", "data.max_length", "data.teacher_shots", "data.teacher_title",
    "generation.max_new_tokens", "generation.do_sample", "generation.first_line", "generation.top_k_signal",
    "generation.store_signal",
    "training.method", "training.lam", "training.teacher_signal", "training.top_k", "training.alignment",
    "training.reduction", "training.student_temperature", "training.teacher_temperature",
    "training.skip_student_eos", "training.loss_chunk_size", "training.ot_cost", "training.ot_top_k",
    "training.ot_solver", "training.ot_embedding_model", "training.lr", "training.lr_preset",
    "training.weight_decay", "training.epochs", "training.max_steps", "training.batch_size",
    "training.grad_accum", "training.max_grad_norm", "training.warmup_ratio", "training.scheduler",
    "training.mixed_precision", "training.seed", "training.eval_every", "training.save_every",
    "training.select", "training.keep_last",
    "evaluation.target", "evaluation.checkpoint", "evaluation.shots", "evaluation.max_new_tokens",
    "evaluation.first_line", "evaluation.metrics", "evaluation.references", "evaluation.rouge_stemming",
    "evaluation.bertscore_model", "evaluation.bertscore_rescale", "evaluation.bertscore_num_layers",
})

# A teacher stage depends on the teacher, these data fields and the generation settings.
TEACHER_DATA_FIELDS = ("task", "train_start", "train_size", "val_fraction", "split_seed", "max_length", "teacher_shots", "teacher_title",
                       "pool_order", "sample_seed")
_TEACHER_EXCLUDED = frozenset({"teacher.path", "generation.batch_size", "generation.chunk_size"})
V1_TEACHER_FIELDS = frozenset({  # never edit, like V1_RUN_FIELDS
    "teacher.name", "teacher.revision", "teacher.dtype", "teacher.trust_remote_code",
    "data.task", "data.train_size", "data.val_fraction", "data.split_seed", "data.max_length",
    "data.teacher_shots", "data.teacher_title",
    "generation.max_new_tokens", "generation.do_sample", "generation.first_line", "generation.top_k_signal",
    "generation.store_signal",
})

def leaf_fields(cls: type = ExperimentConfig, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field]]:
    """Every leaf field of the schema as ``(dotted path, field)``, sections recursed, in schema order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            yield from leaf_fields(hints[f.name], path + ".")
        else:
            yield path, f


def hashed_fields(cls: type = ExperimentConfig) -> Iterator[tuple[str, str, dataclasses.Field]]:
    """``(current path, legacy path it is hashed under, field)`` of every field that can enter a run id."""
    legacy_of = {new: old for old, new in RENAMED.items()}
    for path, f in leaf_fields(cls):
        legacy = legacy_of.get(path, path)
        if path not in HASH_EXCLUDED and legacy not in HASH_EXCLUDED:
            yield path, legacy, f


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _put(tree: dict, path: str, value: Any) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        tree = tree.setdefault(part, {})
    tree[parts[-1]] = value


def identity(cfg: ExperimentConfig, *, v1: frozenset, include=lambda legacy: True, exclude=frozenset()) -> dict:
    """The nested mapping an id is the hash of (see the module docstring for the rules).

    ``include(legacy_path)`` selects the fields in scope; ``exclude`` are current paths left out.
    """
    legacy_of = {new: old for old, new in RENAMED.items()}
    tree: dict = {}
    for path, f in leaf_fields(type(cfg)):
        legacy = legacy_of.get(path, path)
        if path in exclude or legacy in exclude or not include(legacy):
            continue
        value = to_dict(_get(cfg, path))
        if legacy not in v1 and value == to_dict(_default(f)):
            continue
        _put(tree, legacy, value)
    for legacy, value in RETIRED.items():
        if legacy in v1 and include(legacy):
            _put(tree, legacy, value)
    return tree


def _digest(tree: dict, length: int) -> str:
    blob = json.dumps(tree, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def config_hash(cfg: ExperimentConfig, length: int = 10) -> str:
    """Short hash of what a run computes (fields in :data:`HASH_EXCLUDED` do not count)."""
    return _digest(identity(cfg, v1=V1_RUN_FIELDS, exclude=HASH_EXCLUDED), length)


def resume_key(cfg: ExperimentConfig) -> str:
    """The longer hash a training state records, to refuse resuming under another config."""
    return config_hash(cfg, length=16)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def run_id(cfg: ExperimentConfig) -> str:
    """``<name>-<hash of the resolved config>``: the same config always lands in the same folder."""
    return f"{_slug(cfg.name)}-{config_hash(cfg)}"


def _in_teacher_scope(legacy: str) -> bool:
    section, _, key = legacy.partition(".")
    if section in ("teacher", "generation"):
        return True
    return section == "data" and key in TEACHER_DATA_FIELDS


def teacher_stage_id(cfg: ExperimentConfig) -> str:
    """``<task>-<teacher>-<hash>``: only what changes the teacher's answers and signal counts."""
    tree = identity(cfg, v1=V1_TEACHER_FIELDS, include=_in_teacher_scope, exclude=HASH_EXCLUDED | _TEACHER_EXCLUDED)
    return f"{cfg.data.task}-{_slug(cfg.teacher.name or 'teacher')}-{_digest(tree, 10)}"

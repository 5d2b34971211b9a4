"""Run ids stay stable as the schema grows, and the committed store is found by today's ids."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from uld import ids
from uld.config import ExperimentConfig, TrainingConfig, GenerationConfig, apply_overrides, expand_grid, from_dict, load_config, migrate, to_dict
from uld.store import RunFolder

REPO = Path(__file__).resolve().parents[2]
DEFAULTS = REPO / "tests" / "fixtures" / "id_defaults.json"
EXPERIMENTS = sorted(p for p in (REPO / "experiments").rglob("*.yaml") if p.name != "models.yaml" and "accelerate" not in p.parts)
STORES = [REPO / "results", REPO / "results" / "micro_h100", REPO / "tests" / "fixtures" / "store"]


def _points() -> list[ExperimentConfig]:
    return [pt for p in EXPERIMENTS for pt in expand_grid(load_config(p))]


def _stored_configs() -> list[tuple[Path, ExperimentConfig]]:
    out = []
    for store in STORES:
        for kind in ("runs", "teacher"):
            for folder in sorted((store / kind).glob("*/")):
                if (folder / "config.yaml").exists():
                    out.append((folder, RunFolder(folder).config()))
    return out


def test_defaults_of_hashed_fields_are_unchanged():
    """Every id depends on these defaults: changing one moves every config that relies on it to a new id,
    or (for a field hashed only when set) silently reuses old runs for a new computation."""
    snapshot = json.loads(DEFAULTS.read_text())
    current = {legacy: to_dict(ids._default(f)) for _, legacy, f in ids.hashed_fields()}  # by hashed (legacy) path
    changed = {p: (snapshot[p], current[p]) for p in snapshot if p in current and snapshot[p] != current[p]}
    assert not changed, f"defaults changed (old, new): {changed}; declare a migration instead"
    added = sorted(set(current) - set(snapshot))
    assert not added, f"new hashed fields {added}: add them with their defaults to {DEFAULTS.name}"


def test_every_first_schema_field_still_exists_or_is_retired():
    from uld.config import RENAMED, RETIRED

    current = {p for p, _ in ids.leaf_fields()}
    legacy_of = {new: old for old, new in RENAMED.items()}
    known = {legacy_of.get(p, p) for p in current} | set(RETIRED)
    assert ids.V1_RUN_FIELDS <= known, sorted(ids.V1_RUN_FIELDS - known)
    assert ids.V1_TEACHER_FIELDS <= known


def _extended_schema():
    """Today's schema plus one defaulted field, as a future version of the code would declare it."""
    ext_training = dataclasses.make_dataclass(
        "TrainingConfig", [("label_smoothing", float, dataclasses.field(default=0.0))], bases=(TrainingConfig,))
    ext_generation = dataclasses.make_dataclass(
        "GenerationConfig", [("repetition_penalty", float, dataclasses.field(default=1.0))], bases=(GenerationConfig,))
    return dataclasses.make_dataclass(
        "ExperimentConfig",
        [("training", ext_training, dataclasses.field(default_factory=ext_training)),
         ("generation", ext_generation, dataclasses.field(default_factory=ext_generation))],
        bases=(ExperimentConfig,),
    )


def test_adding_a_defaulted_field_keeps_every_id():
    ext = _extended_schema()
    configs = _points() + [cfg for _, cfg in _stored_configs()]
    assert len(configs) > 100
    for cfg in configs:
        grown = from_dict(ext, to_dict(cfg))
        assert ids.run_id(grown) == ids.run_id(cfg)
        assert ids.teacher_stage_id(grown) == ids.teacher_stage_id(cfg)
    grown = from_dict(ext, to_dict(configs[0]))
    grown.training.label_smoothing = 0.1
    assert ids.run_id(grown) != ids.run_id(configs[0])  # a new field counts once it is used
    grown.generation.repetition_penalty = 1.2
    assert ids.teacher_stage_id(grown) != ids.teacher_stage_id(configs[0])


@pytest.mark.parametrize("store", STORES, ids=lambda p: str(p.relative_to(REPO)))
def test_committed_folders_are_found_by_todays_ids(store):
    folders = [(f, c) for f, c in _stored_configs() if f.parent.parent == store]
    assert folders, f"no run folders under {store}"
    for folder, cfg in folders:
        want = ids.teacher_stage_id(cfg) if folder.parent.name == "teacher" else ids.run_id(cfg)
        assert folder.name == want, f"{folder} holds a config whose id is now {want}"


def test_ids_ignore_paths_and_batching_but_not_science():
    a = ExperimentConfig(name="t")
    same = apply_overrides(a, ["student.path=/x", "teacher.path=/y", "data.dir=/d", "generation.batch_size=3",
                               "evaluation.batch_size=5", "training.log_every=1", "output_dir=/o"])
    assert ids.run_id(same) == ids.run_id(a) and ids.teacher_stage_id(same) == ids.teacher_stage_id(a)
    assert ids.run_id(apply_overrides(a, ["training.lam=0"])) != ids.run_id(a)
    # the teacher stage does not depend on the student side
    assert ids.teacher_stage_id(apply_overrides(a, ["training.lam=0", "student.name=s"])) == ids.teacher_stage_id(a)
    assert ids.teacher_stage_id(apply_overrides(a, ["generation.top_k_signal=8"])) != ids.teacher_stage_id(a)


def test_throughput_fields_count_only_when_chosen():
    """Evaluation precision and length-bucketed batches change answers and updates: ids move when they are
    chosen, and stay put at their defaults (every committed run)."""
    a = ExperimentConfig(name="t")
    assert ids.run_id(apply_overrides(a, ["evaluation.dtype=bfloat16"])) != ids.run_id(a)
    assert ids.run_id(apply_overrides(a, ["training.batching=length"])) != ids.run_id(a)
    assert ids.run_id(apply_overrides(a, ["training.batching=random"])) == ids.run_id(a)
    assert ids.run_id(apply_overrides(a, ["evaluation.share_prefix=true"])) != ids.run_id(a)
    assert ids.run_id(apply_overrides(a, ["evaluation.share_prefix=false"])) == ids.run_id(a)
    assert ids.teacher_stage_id(apply_overrides(a, ["evaluation.dtype=bfloat16", "training.batching=length"])) == \
        ids.teacher_stage_id(a)


def test_migration_moves_renamed_keys_and_refuses_retired_values(monkeypatch):
    from uld import config

    monkeypatch.setattr(config, "RENAMED", {"training.old_lam": "training.lam"})
    monkeypatch.setattr(config, "RETIRED", {"generation.sampling": False})
    out = migrate({"training": {"old_lam": 0.5}, "generation": {"sampling": False}, "grid": {"training.old_lam": [0, 1]}})
    assert out == {"training": {"lam": 0.5}, "generation": {}, "grid": {"training.lam": [0, 1]}}
    with pytest.raises(config.ConfigError, match="'generation.sampling' in f.yaml was removed"):
        migrate({"generation": {"sampling": True}}, source="f.yaml")
    with pytest.raises(config.ConfigError, match="renamed to 'training.lam'"):
        migrate({"training": {"old_lam": 0.5, "lam": 1.0}})

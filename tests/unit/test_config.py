"""Config schema: every YAML validates, errors name key and file, overrides, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from uld.ids import config_hash
from uld.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    dump_config,
    expand_grid,
    from_dict,
    load_config,
    load_yaml_config,
    to_dict,
)

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT_YAMLS = sorted(p for p in (REPO / "experiments").rglob("*.yaml") if p.name != "models.yaml" and "accelerate" not in p.parts)


def test_there_are_experiment_configs():
    assert EXPERIMENT_YAMLS, "experiments/ should hold experiment configs"


@pytest.mark.parametrize("path", EXPERIMENT_YAMLS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_experiment_yaml_validates(path):
    cfg = load_config(path)
    for point in expand_grid(cfg):
        assert isinstance(point, ExperimentConfig)


def test_model_registry_validates():
    from uld.models import load_registry

    reg = load_registry(REPO / "experiments" / "models.yaml")
    for name in ("llama-2-7b-chat", "mistral-7b-instruct", "pythia-160m", "pythia-410m", "pythia-1b",
                 "opt-350m", "bloomz-560m", "mt0-base", "smollm2-135m-instruct", "qwen2.5-0.5b-instruct", "gemma-3-270m"):
        assert name in reg
    assert reg["mt0-base"].arch == "encoder-decoder"
    assert reg["llama-2-7b-chat"].shots["qed"] == 5
    assert reg["mistral-7b-instruct"].system_role is False


def test_unknown_key_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("training:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"'training\.lrr'.*bad\.yaml"):
        load_config(f)


def test_wrong_type_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("training:\n  batch_size: eight\n")
    with pytest.raises(ConfigError, match=r"'training\.batch_size'.*bad\.yaml.*integer"):
        load_config(f)


def test_wrong_literal(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("training:\n  method: magic\n")
    with pytest.raises(ConfigError, match="training.method"):
        load_config(f)


def test_overrides_apply_and_type_check():
    cfg = load_config(None, ["training.optim.lr=2e-6", "data.task=qed", "training.distill.top_k=256", "student.path=/x"])
    assert cfg.training.optim.lr == 2e-6 and cfg.data.task == "qed" and cfg.training.distill.top_k == 256
    assert cfg.student.path == "/x"
    with pytest.raises(ConfigError, match="training.nope"):
        load_config(None, ["training.nope=1"])
    with pytest.raises(ConfigError, match="training.epochs"):
        load_config(None, ["training.epochs=many"])


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="data.train_fraction"):
        load_config(None, ["data.train_fraction=1.5"])
    with pytest.raises(ConfigError, match="grid key 'training.nope'"):
        load_config(None, ["grid={training.nope: [1]}"])


@pytest.mark.parametrize("path", EXPERIMENT_YAMLS[:50], ids=lambda p: p.name)
def test_round_trip_is_identity(path):
    cfg = load_config(path)
    again = from_dict(ExperimentConfig, yaml.safe_load(dump_config(cfg)))
    assert to_dict(again) == to_dict(cfg)
    assert config_hash(again) == config_hash(cfg)


def test_hash_ignores_paths_but_not_science():
    a = ExperimentConfig()
    assert config_hash(apply_overrides(a, ["student.path=/elsewhere", "evaluation.batch_size=3"])) == config_hash(a)
    assert config_hash(apply_overrides(a, ["training.lam=0"])) != config_hash(a)


def test_grid_expansion_order_and_values():
    cfg = load_config(None, ["grid={training.method: [sft-teacher, uld], training.seed: [1, 2]}"])
    pts = expand_grid(cfg)
    assert [(p.training.method, p.training.seed) for p in pts] == [
        ("sft-teacher", 1), ("sft-teacher", 2), ("uld", 1), ("uld", 2)]
    assert all(p.grid == {} for p in pts)


def test_base_inheritance(tmp_path):
    (tmp_path / "base.yaml").write_text("name: b\ntraining:\n  lr: 3.0e-6\n  epochs: 2\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nname: c\ntraining:\n  epochs: 1\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.name == "c" and cfg.training.optim.lr == 3e-6 and cfg.training.epochs == 1
    assert load_yaml_config(tmp_path / "child.yaml")["training"] == {"lr": 3e-6, "epochs": 1}


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/x.yaml")


def test_override_of_a_grid_key_pins_it():
    smoke = REPO / "experiments" / "smoke.yaml"
    assert len(expand_grid(load_config(smoke))) == 2
    pinned = load_config(smoke, ["training.method=uld"])
    assert pinned.grid == {} and pinned.training.method == "uld"
    assert [p.training.method for p in expand_grid(pinned)] == ["uld"]

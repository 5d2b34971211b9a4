"""Model registry resolution: local overrides, ULD_MODELS_DIR matching, errors."""

from __future__ import annotations

import pytest

from uld.config import ConfigError, ModelConfig
from uld.models import ModelEntry, load_model, load_tokenizer, resolve_model, shots_for, title_for

REG = {
    "pythia-410m": ModelEntry(hub_id="EleutherAI/pythia-410m-deduped"),
    "mt0-base": ModelEntry(hub_id="bigscience/mt0-base", arch="encoder-decoder"),
    "llama": ModelEntry(hub_id="meta-llama/Llama-2-7b-chat-hf", kind="chat", shots={"qed": 5}, title={"squad": True}),
}


def test_registry_name_resolves_to_hub_id(monkeypatch):
    monkeypatch.delenv("ULD_MODELS_DIR", raising=False)
    r = resolve_model(ModelConfig(name="pythia-410m"), REG)
    assert r.source == "EleutherAI/pythia-410m-deduped" and r.name == "pythia-410m" and not r.is_local


def test_hub_id_keeps_registry_settings(monkeypatch):
    monkeypatch.delenv("ULD_MODELS_DIR", raising=False)
    r = resolve_model(ModelConfig(name="bigscience/mt0-base"), REG)
    assert r.name == "mt0-base" and r.is_encoder_decoder


def test_models_dir_matches_short_name_or_hub_basename(tmp_path, monkeypatch):
    (tmp_path / "Pythia-410M-Deduped").mkdir()
    (tmp_path / "mt0-base").mkdir()
    monkeypatch.setenv("ULD_MODELS_DIR", str(tmp_path))
    assert resolve_model(ModelConfig(name="pythia-410m"), REG).source == str(tmp_path / "Pythia-410M-Deduped")
    assert resolve_model(ModelConfig(name="mt0-base"), REG).source == str(tmp_path / "mt0-base")
    # not present locally: falls back to the Hub id
    assert resolve_model(ModelConfig(name="llama"), REG).source == "meta-llama/Llama-2-7b-chat-hf"


def test_explicit_path_wins_and_must_exist(tmp_path, monkeypatch):
    monkeypatch.delenv("ULD_MODELS_DIR", raising=False)
    r = resolve_model(ModelConfig(name="pythia-410m", path=str(tmp_path)), REG)
    assert r.source == str(tmp_path) and r.entry.hub_id == "EleutherAI/pythia-410m-deduped"
    with pytest.raises(ConfigError, match="not a folder"):
        resolve_model(ModelConfig(name="pythia-410m", path=str(tmp_path / "missing")), REG)


def test_bad_models_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ULD_MODELS_DIR", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="ULD_MODELS_DIR"):
        resolve_model(ModelConfig(name="pythia-410m"), REG)


def test_empty_model_config_is_an_error():
    with pytest.raises(ConfigError, match="needs 'name'"):
        resolve_model(ModelConfig(), REG)


def test_shots_and_title_defaults():
    e = REG["llama"]
    assert shots_for(e, "qed") == 5 and shots_for(e, "squad") == 0 and shots_for(e, "qed", 2) == 2
    assert title_for(e, "squad") is True and title_for(e, "qed") is False


def test_tiny_models_load_with_pad_token(tiny_models, monkeypatch):
    monkeypatch.delenv("ULD_MODELS_DIR", raising=False)
    for key, folder in tiny_models.items():
        r = resolve_model(ModelConfig(name=f"tiny-{key}", path=str(folder)))
        tok = load_tokenizer(r, padding_side="left")
        model = load_model(r)
        assert tok.pad_token is not None and tok.padding_side == "left"
        assert r.is_encoder_decoder == (key == "seq2seq")
        assert model.config.vocab_size >= len(tok) - 1


def test_missing_local_weights_message(tmp_path, monkeypatch):
    monkeypatch.delenv("ULD_MODELS_DIR", raising=False)
    (tmp_path / "empty").mkdir()
    r = resolve_model(ModelConfig(name="x", path=str(tmp_path / "empty")), {})
    with pytest.raises((ConfigError, OSError, ValueError)):
        load_tokenizer(r)


def test_unregistered_seq2seq_folder_is_detected(tiny_models, monkeypatch):
    monkeypatch.delenv("ULD_MODELS_DIR", raising=False)
    folder = str(tiny_models["seq2seq"])
    assert resolve_model(ModelConfig(name=folder), {}).is_encoder_decoder
    assert resolve_model(ModelConfig(name="anything", path=folder), {}).is_encoder_decoder
    assert not resolve_model(ModelConfig(name=str(tiny_models["student"])), {}).is_encoder_decoder


def test_from_run_binds_the_runs_best_checkpoint(tmp_path, tiny_models):
    import dataclasses
    import shutil

    from uld.config import ExperimentConfig
    from uld.models import bind_run_models

    cfg = ExperimentConfig(output_dir=str(tmp_path), teacher=ModelConfig(name="gemma-3-270m", from_run="sft-abc"))
    with pytest.raises(ConfigError, match="bind it first"):
        resolve_model(cfg.teacher)
    with pytest.raises(ConfigError, match="from_run='sft-abc'.*not a finished training run"):
        bind_run_models(cfg)
    run = tmp_path / "runs" / "sft-abc"
    shutil.copytree(tiny_models["teacher"], run / "checkpoints" / "best")
    (run / "train_summary.json").write_text("{}")
    bound = bind_run_models(cfg)
    assert bound.teacher.path == str(run / "checkpoints" / "best")
    r = resolve_model(bound.teacher)
    assert r.entry.chat_template == "plain"  # prompted as the registry's gemma-3-270m
    assert r.source == bound.teacher.path
    from uld.ids import run_id

    assert run_id(bound) == run_id(cfg)  # the bound path is not part of the id ...
    assert run_id(cfg) != run_id(dataclasses.replace(cfg, teacher=ModelConfig(name="gemma-3-270m")))  # ... the run is

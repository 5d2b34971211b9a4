"""Kill a training run mid-epoch, resume it: the final weights and metrics equal an uninterrupted run."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.unit.test_training import make_config, new_run, read_metrics, reset_accelerate, teacher_stage, write_data

# what may differ between two identical runs: wall-clock measurements
_TIMING = ("tokens_per_s", "max_memory_mb")


def _strip(recs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in _TIMING} for r in recs]


@pytest.fixture(autouse=True)
def _fresh_accelerate():
    reset_accelerate()
    yield
    reset_accelerate()


@pytest.mark.parametrize("student", ["student", pytest.param("seq2seq", marks=pytest.mark.slow)])
def test_resume_after_a_kill_mid_epoch_reproduces_the_uninterrupted_run(tmp_path, tiny_models, monkeypatch, student):
    from uld import training as TR
    from uld.training import loop

    write_data(tmp_path)
    # 12 train rows, batch 2, grad_accum 2: 3 optimizer steps per epoch, 6 in all; checkpoint every 2
    # steps, so the kill at micro-batch 9 (epoch 1, step 5 in progress) resumes from step 4 mid-epoch
    cfg = make_config(tmp_path, tiny_models, student=student, method="uld", batch_size=2, grad_accum=2,
                      save_every=2, eval_every=3)
    stage = teacher_stage(cfg)

    ref = new_run(cfg, tmp_path / "reference")
    TR.train(cfg, ref, stage)
    reset_accelerate()

    run = new_run(cfg, tmp_path / "killed")
    real, calls = loop.compute_losses, {"n": 0}

    def killed_at_nine(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kw)

    monkeypatch.setattr(loop, "compute_losses", killed_at_nine)
    with pytest.raises(KeyboardInterrupt):
        TR.train(cfg, run, stage)
    monkeypatch.setattr(loop, "compute_losses", real)
    state = json.loads(run.file("checkpoints", "state", "trainer.json").read_text())["position"]
    assert (state["global_step"], state["epoch"], state["batch_in_epoch"]) == (4, 1, 2)
    assert max(r["step"] for r in read_metrics(run)) == 4  # nothing logged past the checkpoint yet
    reset_accelerate()

    summary = TR.train(cfg, run, stage, resume=True)
    assert summary["resumed"] and summary["steps"] == 6
    for sub in ("last", "best"):
        a = load_file(ref.file("checkpoints", sub, "model.safetensors"))
        b = load_file(run.file("checkpoints", sub, "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), sub
    assert _strip(read_metrics(run)) == _strip(read_metrics(ref))
    ref_sum = ref.read_json("train_summary.json")
    assert (summary["best_step"], summary["best_val_loss"]) == (ref_sum["best_step"], ref_sum["best_val_loss"])


def test_resuming_a_finished_run_returns_its_summary(tmp_path, tiny_models):
    from uld import training as TR
    from uld.training import loop

    write_data(tmp_path)
    cfg = make_config(tmp_path, tiny_models, method="sft-teacher", max_steps=2)
    stage = teacher_stage(cfg)
    run = new_run(cfg, tmp_path / "run")
    first = TR.train(cfg, run, stage)
    # a finished run keeps only the marker of its resumable state, not weights/optimizer/RNG
    assert sorted(p.name for p in run.file("checkpoints", "state").iterdir()) == ["trainer.json"]
    assert json.loads(run.file("checkpoints", "state", "trainer.json").read_text())["finished"]
    assert run.file("checkpoints", "best", "model.safetensors").is_file()
    reset_accelerate()
    again = TR.train(cfg, run, stage, resume=True)
    assert again == first


def test_keep_state_keeps_the_whole_resumable_state(tmp_path, tiny_models):
    from uld import training as TR
    from uld.training import loop
    from uld.ids import config_hash

    write_data(tmp_path)
    cfg = make_config(tmp_path, tiny_models, method="sft-teacher", max_steps=2)
    kept = make_config(tmp_path, tiny_models, method="sft-teacher", max_steps=2)
    kept.training.checkpoints.keep_state = True
    assert config_hash(kept) == config_hash(cfg)  # bookkeeping only: same run id
    run = new_run(kept, tmp_path / "run")
    TR.train(kept, run, teacher_stage(kept))
    names = {p.name for p in run.file("checkpoints", "state").iterdir()}
    assert "trainer.json" in names and any(n.endswith(".safetensors") for n in names), names

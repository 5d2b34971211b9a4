"""Checks that need a CUDA device (run by scripts/check_gpu.sh; skipped without one)."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_uld_loss_on_cuda_equals_the_cpu_value():
    from uld.losses import answer_logit_mask, uld_loss

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 12, 5000, generator=g), torch.randn(4, 14, 7000, generator=g)
    labels, t_labels = torch.full((4, 12), -100), torch.full((4, 14), -100)
    labels[:, 4:11], t_labels[:, 5:13] = 1, 1
    sm, tm = answer_logit_mask(labels), answer_logit_mask(t_labels)
    cpu = uld_loss(s.requires_grad_(), t, sm, tm)
    cpu.backward()
    sc = s.detach().cuda().requires_grad_()
    gpu = uld_loss(sc, t.cuda(), sm.cuda(), tm.cuda())
    gpu.backward()
    assert float(gpu) == pytest.approx(float(cpu), rel=1e-5)
    torch.testing.assert_close(sc.grad.cpu(), s.grad, rtol=1e-4, atol=1e-7)


def test_a_bf16_training_run_on_one_gpu(tiny_models, tmp_path):
    """The whole pipeline on the GPU in bf16: teacher stage, training, evaluation."""
    from pathlib import Path

    from uld.cli import main

    repo = Path(__file__).resolve().parents[2]
    data = repo.parent / "shared" / "data"
    data = data if (data / "squad").is_dir() else repo / "tests" / "fixtures" / "data"
    rc = main(["run", str(repo / "experiments" / "smoke.yaml"), f"teacher.path={tiny_models['teacher']}",
               f"student.path={tiny_models['student']}", f"data.dir={data}", f"output_dir={tmp_path}", "training.method=uld",
               "data.train_size=12", "data.test_size=4", "generation.max_new_tokens=6", "generation.top_k_signal=16",
               "training.batch_size=4", "training.max_steps=3", "training.mixed_precision=bf16", "training.logits=answer",
               "evaluation.max_new_tokens=6"])
    assert rc == 0
    (run,) = list((tmp_path / "runs").glob("smoke-*"))
    import json

    env = json.loads((run / "env.json").read_text())
    assert env["gpus"], "the run did not see the GPU"
    assert (run / "scores.json").is_file()

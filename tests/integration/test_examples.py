"""The drop-in examples run as a user runs them: a teacher stage from `uld generate`, then the student
trained by a transformers Trainer (examples/trainer_uld.py) and by a plain loop (examples/loop_uld.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stage(tiny_teacher_stage):
    return tiny_teacher_stage


def _example(name: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, str(REPO / "examples" / name), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


def test_trainer_example_trains_a_student_from_the_cache(stage, tiny_models, tmp_path):
    out = tmp_path / "student"
    proc = _example("trainer_uld.py", "--stage", str(stage), "--student", str(tiny_models["student"]), "--out", str(out),
                    "--steps", "4", "--batch-size", "4", "--lr", "1e-3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [float(x) for x in re.search(r"losses: \[([^\]]*)\]", proc.stdout).group(1).split(",")]
    assert len(losses) == 4 and all(l == l and l > 0 for l in losses)
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out, use_safetensors=True) is not None


def test_plain_loop_example_lowers_the_loss(stage, tiny_models):
    # three steps on one near-full batch already lower the loss by about 0.5 at this learning rate
    proc = _example("loop_uld.py", "--stage", str(stage), "--student", str(tiny_models["student"]), "--steps", "3",
                    "--batch-size", "11", "--lr", "3e-3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [float(m) for m in re.findall(r"loss ([0-9.]+)", proc.stdout)]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert all(float(u) > 0 for u in re.findall(r"uld ([0-9.]+)", proc.stdout))

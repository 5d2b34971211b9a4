"""A run's checkpoint as the teacher of other runs (the headroom study's strong teacher), end to end.

The study's own configs (experiments/headroom/) are run here with the real models swapped for tiny ones:
the teacher is fine-tuned on gold answers by the project's trainer, then writes the training answers and
the signal for the student, in bf16 with answer-only logits, as the study runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from uld.cli import main
from uld.config import expand_grid, load_config
from uld.ids import run_id, teacher_stage_id
from uld.store import RunFolder

REPO = Path(__file__).resolve().parents[2]
HEADROOM = REPO / "experiments" / "headroom"
SHARED_DATA = REPO.parent / "shared" / "data"
DATA = SHARED_DATA if (SHARED_DATA / "squad").is_dir() else REPO / "tests" / "fixtures" / "data"


def _tiny(out: Path, *, teacher: Path | None = None, student: Path | None = None) -> list[str]:
    ov = [f"data.dir={DATA}", f"output_dir={out}", "data.test_size=4", "data.max_length=256",
          "generation.max_new_tokens=6", "generation.batch_size=4", "generation.top_k_signal=16",
          "training.batch_size=4", "training.max_steps=2", "training.optim.lr=1e-3", "evaluation.max_new_tokens=6",
          "evaluation.batch_size=4"]
    ov += [f"teacher.path={teacher}"] if teacher else []
    ov += [f"student.path={student}"] if student else []
    return ov


def test_fine_tuned_teacher_from_a_run(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("ULD_MODELS_DIR", str(tmp_path / "no-models"))
    (tmp_path / "no-models").mkdir()
    # 1. the teacher model trained as a student on gold answers of a disjoint slice
    sft = [*_tiny(tmp_path, student=tiny_models["teacher"]), "data.train_start=20", "data.train_size=12",
           "student.name=tiny-teacher"]
    assert main(["run", str(HEADROOM / "headroom_0_teacher_sft.yaml"), *sft]) == 0
    sft_cfg = load_config(HEADROOM / "headroom_0_teacher_sft.yaml", sft)
    teacher_run = RunFolder.for_config(sft_cfg)
    assert teacher_run.is_complete and teacher_run.read_json("train_summary.json")["data"]["source"] == "gold"

    # 2. students learn from it: its checkpoint is the teacher, found through the run id
    student = [*_tiny(tmp_path, student=tiny_models["student"]), "data.train_size=12", "teacher.name=tiny-teacher",
               f"teacher.from_run={teacher_run.id}", "grid={training.method: [sft-teacher, uld], training.seed: [1]}"]
    assert main(["run", str(HEADROOM / "headroom_1_strong.yaml"), *student]) == 0
    points = expand_grid(load_config(HEADROOM / "headroom_1_strong.yaml", student))
    stage = tmp_path / "teacher" / teacher_stage_id(points[0])
    meta = json.loads((stage / "generation.json").read_text())
    assert meta["teacher"]["source"] == str(teacher_run.file("checkpoints", "best"))
    answers = pd.read_parquet(stage / "answers.parquet")
    from uld.data import training_pool

    taught = training_pool(sft_cfg.data)
    assert not set(answers["row_id"]) & {ex.id for ex in taught.train + taught.val}  # disjoint slices
    for p in points:
        run = RunFolder.for_config(p)
        assert run.is_complete
        summary = run.read_json("train_summary.json")
        assert summary["teacher_dir"] == str(stage)
        log = [json.loads(line) for line in run.file("metrics.jsonl").read_text().splitlines()]
        assert all(rec["loss"] == rec["loss"] for rec in log)  # finite, bf16 autocast on the CPU
    # the study's store records the teacher like any run: its id is part of the students' ids
    original = [o for o in student if not o.startswith("teacher.from_run=")]
    assert teacher_stage_id(points[0]) != teacher_stage_id(expand_grid(load_config(HEADROOM / "headroom_2_baseline.yaml", original))[0])
    assert run_id(points[0]) == RunFolder.for_config(points[0]).id

"""`uld run` end to end on tiny random models with two different tokenizers.

This is the smoke reproduction (experiments/smoke.yaml, as the README runs it) with the real models
swapped for tiny ones through the same local-model overrides a user would use offline.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from uld.cli import main
from uld.config import load_config
from uld.data import test_split
from uld.ids import teacher_stage_id
from uld.store import RunFolder

REPO = Path(__file__).resolve().parents[2]
# the real SQuAD files when ../shared is there (enough rows for a validation hold-out), else the fixtures
SHARED_DATA = REPO.parent / "shared" / "data"
DATA = SHARED_DATA if (SHARED_DATA / "squad").is_dir() else REPO / "tests" / "fixtures" / "data"


def _smoke_overrides(tiny_models, out: Path) -> list[str]:
    return [
        f"teacher.path={tiny_models['teacher']}",
        f"student.path={tiny_models['student']}",
        f"data.dir={DATA}",
        f"output_dir={out}",
        "data.train_size=12",
        "data.test_size=4",
        "data.max_length=256",
        "generation.max_new_tokens=6",
        "generation.batch_size=4",
        "generation.top_k_signal=16",
        "training.batch_size=4",
        "training.max_steps=3",
        "training.optim.lr=1e-3",
        "evaluation.max_new_tokens=6",
        "evaluation.batch_size=4",
    ]


@pytest.fixture(scope="module")
def smoke_run(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("store")
    argv = ["run", str(REPO / "experiments" / "smoke.yaml"), *_smoke_overrides(tiny_models, out)]
    assert main(argv) == 0
    cfg = load_config(REPO / "experiments" / "smoke.yaml", _smoke_overrides(tiny_models, out))
    return cfg, out, argv


def test_every_artifact_appears(smoke_run):
    cfg, out, _ = smoke_run
    from uld.config import expand_grid

    points = expand_grid(cfg)
    assert [p.training.method for p in points] == ["sft-teacher", "uld"]
    # one teacher stage serves both students
    assert len({teacher_stage_id(p) for p in points}) == 1
    tdir = out / "teacher" / teacher_stage_id(points[0])
    for name in ("config.yaml", "env.json", "answers.parquet", "stats.json"):
        assert (tdir / name).is_file(), name
    answers = pd.read_parquet(tdir / "answers.parquet")
    assert set(answers["split"]) <= {"train", "val"} and len(answers) > 0
    for point in points:
        run = RunFolder.for_config(point)
        for name in ("config.yaml", "env.json", "teacher.json", "metrics.jsonl", "train_summary.json",
                     "scores.json", "eval/predictions.jsonl", "checkpoints/best/config.json"):
            assert run.exists(*name.split("/")), f"{run.id}: {name}"
        assert list(run.file("checkpoints", "best").glob("*.safetensors"))
        scores = run.read_json("scores.json")
        assert scores["task"] == "squad" and scores["n"] == len(test_split(point.data)) > 0
        assert 0.0 <= scores["metrics"]["f1"] <= 100.0
        assert json.loads(run.file("teacher.json").read_text())["id"] == tdir.name
        preds = [json.loads(l) for l in run.file("eval", "predictions.jsonl").read_text().splitlines()]
        assert len(preds) == scores["n"] and all("prediction" in p and p["references"] for p in preds)
        saved = load_config(run.file("config.yaml"))
        assert saved.training.method == point.training.method
    assert (out / "tables" / "smoke.md").is_file()
    assert (out / "figures" / "smoke.png").stat().st_size > 1000


def test_uld_run_logs_the_uld_term(smoke_run):
    cfg, out, _ = smoke_run
    from uld.config import expand_grid

    uld_point = expand_grid(cfg)[1]
    lines = [json.loads(l) for l in RunFolder.for_config(uld_point).file("metrics.jsonl").read_text().splitlines()]
    train = [l for l in lines if l.get("split") == "train"]
    assert train and all(l.get("uld") is not None and l["uld"] > 0 for l in train)


def test_rerun_is_idempotent(smoke_run, capsys):
    cfg, out, argv = smoke_run
    from uld.config import expand_grid

    runs = [RunFolder.for_config(p) for p in expand_grid(cfg)]
    before = {r.id: r.file("scores.json").stat().st_mtime_ns for r in runs}
    assert main(argv) == 0
    after = {r.id: r.file("scores.json").stat().st_mtime_ns for r in runs}
    assert before == after

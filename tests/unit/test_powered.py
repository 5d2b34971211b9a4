"""The powered study (experiments/powered/, paper_tables/table_powered.py): its configs resolve to the
pre-registered design (docs/studies/powered_plan.md), and its table plans the expected cells."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from uld import ids, tables
from uld.config import expand_grid, load_config
from uld.data import articles, test_split, training_pool
from uld.reporting.spec import plan_table

REPO = Path(__file__).resolve().parents[2]
POWERED = REPO / "experiments" / "powered"


def _points(name: str):
    return expand_grid(load_config(POWERED / f"{name}.yaml"))


def test_students_follow_the_plan():
    students = _points("powered_2_main")
    assert sorted((p.training.method, p.training.seed) for p in students) == sorted(
        (m, s) for m in ("sft-teacher", "uld") for s in (1, 2, 3, 4, 5))
    for p in students:
        assert p.student.name == "smollm2-135m-instruct" and p.training.mixed_precision == "bf16"
        assert p.training.lam == 1.5 and p.training.distill.teacher_signal == "cached"
        assert (p.data.pool_order, p.data.test_order) == ("shuffled", "shuffled")
        assert p.data.train_size >= 200 and p.data.test_size >= 2000
        n_train = p.data.train_size - round(p.data.val_fraction * p.data.train_size)
        steps_per_epoch = math.ceil(n_train / p.training.batch_size)
        assert p.training.checkpoints.eval_every <= steps_per_epoch / 2  # validation at least twice per epoch
        assert p.training.checkpoints.select == "best_val_loss"
    # the same questions for every run: one data section up to the training seed and method
    assert len({(p.data.test_size, p.data.sample_seed, p.data.test_order) for p in students}) == 1


def test_the_students_teacher_is_the_fine_tuned_run():
    (teacher,) = _points("powered_0_teacher_sft")
    assert teacher.training.method == "sft-gold" and teacher.data.train_size >= 2000
    assert teacher.data.sample_seed == _points("powered_2_main")[0].data.sample_seed
    for name in ("powered_1_teacher_eval", "powered_2_main"):
        assert {p.teacher.from_run for p in _points(name)} == {ids.run_id(teacher)}
    # the teacher's slice of the permutation ends where the students' begins
    student = _points("powered_2_main")[0]
    assert teacher.data.train_start + teacher.data.train_size <= student.data.train_start


def test_items_are_disjoint_and_questions_spread(shared_data_dir):
    (teacher,) = _points("powered_0_teacher_sft")
    student = _points("powered_2_main")[0]
    t_train, t_val = training_pool(dataclasses.replace(teacher.data, dir=str(shared_data_dir)))
    s_train, s_val = training_pool(dataclasses.replace(student.data, dir=str(shared_data_dir)))
    t_ids = {e.id for e in t_train} | {e.id for e in t_val}
    s_ids = {e.id for e in s_train} | {e.id for e in s_val}
    assert len(t_ids) == 2000 and len(s_ids) == 200
    assert not t_ids & s_ids and not {e.id for e in s_train} & {e.id for e in s_val}
    assert len(articles(list(s_train) + list(s_val))) > 50  # not one article, as the first 200 rows were
    questions = test_split(dataclasses.replace(student.data, dir=str(shared_data_dir)))
    assert len(questions) == 3000 and len(articles(questions)) >= 40


def test_table_plan_has_the_expected_cells(tmp_path):
    plan = plan_table("powered", store_root=tmp_path / "store")
    settings = sorted((p.info["setting"], p.info["seed"]) for p in plan.points)
    assert len(plan.points) == 12
    assert [s for s, _ in settings].count("lambda0") == 5 and [s for s, _ in settings].count("uld") == 5
    assert {s for s, _ in settings} == {"sft-gold", "teacher", "lambda0", "uld"}
    built = tables.build_table("powered", report_only=True, store_root=tmp_path / "store", out_dir=tmp_path / "tables")
    md = built.paths["md"].read_text()
    assert "0 of 12 grid points have results" in md and "95% CI (seeds + questions)" in md
    cells = built.paths["csv"].read_text().splitlines()
    assert cells[0].endswith("sq_low,sq_high,n_seeds")
    assert sum(line.startswith("main,") for line in cells) == 4 * 3  # 4 settings x 3 metrics
    assert any(line.startswith('"arm:strong teacher') and ",uld-lambda0," in line for line in cells)


def _plan_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("powered_plan", REPO / "scripts" / "powered_plan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_plan_numbers_come_from_the_committed_strong_arm(tmp_path, capsys):
    from uld.reporting.stats import planned_half_width, VarianceComponents

    script = _plan_script()
    if not (REPO / "results" / "runs" / "headroom-teacher-55d2410df0" / "train_summary.json").is_file():
        import pytest

        pytest.skip("committed headroom runs absent")
    out = tmp_path / "plan.json"
    assert script.main(["--store", str(REPO / "results"), "--json", str(out)]) == 0
    import json

    plan = json.loads(out.read_text())
    est, cons = (VarianceComponents(**plan["components"][k]) for k in ("estimated", "conservative"))
    assert cons.seed >= est.seed and cons.question == est.question > 0
    # the design the YAMLs declare meets the target under the conservative components
    student = _points("powered_2_main")[0]
    n_seeds = len({p.training.seed for p in _points("powered_2_main")})
    assert (n_seeds, student.data.test_size) == script.CHOSEN
    assert planned_half_width(cons, n_seeds, student.data.test_size) <= script.TARGET_HALF_WIDTH
    assert planned_half_width(cons, 3, 500) > 2 * script.TARGET_HALF_WIDTH  # what the headroom arm could see
    assert len(plan["designs"]["conservative"]) == len(script.SEEDS) * len(script.QUESTIONS)
    assert "chosen design 5 seeds x 3000 questions" in capsys.readouterr().out

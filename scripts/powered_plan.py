"""The numbers of docs/studies/powered_plan.md, from the committed strong-teacher headroom runs.

    PYTHONPATH=src python scripts/powered_plan.py [--store results] [--json out.json]

Reads the λ=0 and ULD runs of experiments/headroom/headroom_1_strong.yaml (3 seeds × 500 questions):
per-question F1 from each run's eval/predictions.jsonl, paired by seed, gives the variance components of
ULD − λ=0 (uld.reporting.stats.variance_components); the seed spread of each arm's F1 (scores.json, as
the table prints it) gives a conservative seed component. For each design (seeds × questions) it prints
the expected 95% half-width of the seeds × questions interval, the minimum detectable effect at 80%
power and the power to see the paper's +2.3 F1; then the cost of one run from the runs' own timings
(train_summary.json wall_s per optimizer step, the teacher stage's stats.json throughput) and the total of the plan.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

from uld.reporting.spec import plan_table
from uld.reporting.stats import (VarianceComponents, detection_power, minimum_detectable_effect, planned_half_width,
                                 seed_question_matrix, variance_components)
from uld.store import RunFolder

ARM = "headroom_1_strong"
PAPER_GAIN = 2.3  # the paper's average ULD − λ=0 on extractive QA (SQuAD +2.30, QED +2.43)
SEEDS = (3, 5, 6, 8, 10)
QUESTIONS = (500, 1000, 2000, 3000, 4000)
CHOSEN = (5, 3000)  # the plan's design: paired seeds × questions
TARGET_HALF_WIDTH = 1.2
# The plan's training: 200 items (180 train) at batch 8 = 23 steps per epoch, 10 epochs; validation of
# the 20 held-out items every 11 steps; the teacher fine-tune as the headroom teacher's (2,000 items, 1 epoch)
STUDENT_STEPS = 23 * 10
TEACHER_STEPS = 225
RUNS = 2 * CHOSEN[0]
# Evaluation time is not in the run folders; measured on this 2-core CPU with two runs side by side
# (README "Micro-replication", hardware notes): 500 questions in about 7-9 min for the 135M student.
EVAL_S_PER_QUESTION = (7 * 60 / 500, 9 * 60 / 500)


def strong_arm(store: Path) -> tuple[list[RunFolder], list[RunFolder]]:
    plan = plan_table("headroom", store_root=store)
    cells: dict[str, list[RunFolder]] = {"uld": [], "lambda0": []}
    for p in plan.points:
        if p.source.stem == ARM and p.complete and p.info["setting"] in cells:
            cells[p.info["setting"]].append(p.run)
    if len(cells["uld"]) < 2 or len(cells["lambda0"]) < 2:
        raise SystemExit(f"{store}: the strong-teacher arm ({ARM}) needs >= 2 finished runs per cell")
    return cells["uld"], cells["lambda0"]


def components(store: Path) -> dict:
    uld, lam0 = strong_arm(store)
    seeds, ids, a, b = seed_question_matrix(uld, lam0)
    d = np.asarray(a) - np.asarray(b)
    est = variance_components(d)
    f1 = {name: [r.read_json("scores.json")["metrics"]["f1"] for r in runs] for name, runs in (("uld", uld), ("lambda0", lam0))}
    # conservative: all of either arm's seed spread counted as seed variance of the difference (no pairing
    # benefit, none of it put down to question-by-seed noise)
    seed_var = statistics.variance(f1["uld"]) + statistics.variance(f1["lambda0"])
    cons = VarianceComponents(seed=max(est.seed, seed_var), question=est.question, residual=est.residual)
    return {"seeds": seeds, "n_items": len(ids), "per_seed_diff": [float(x) for x in d.mean(axis=1)],
            "f1": f1, "estimated": est, "conservative": cons, "runs": [r.id for r in uld + lam0]}


def design_rows(c: VarianceComponents) -> list[dict]:
    return [{"seeds": s, "questions": q, "half_width": planned_half_width(c, s, q),
             "mde80": minimum_detectable_effect(c, s, q), "power_at_paper_gain": detection_power(c, s, q, PAPER_GAIN)}
            for s in SEEDS for q in QUESTIONS]


def costs(store: Path) -> dict:
    runs = [RunFolder(p) for p in sorted((store / "runs").glob("headroom-*")) if (p / "train_summary.json").is_file()]
    per_step = []
    for r in runs:
        t = r.read_json("train_summary.json")
        if t.get("trained") and t.get("steps") == 46 and t.get("wall_s"):  # the 2-epoch student runs
            per_step.append(t["wall_s"] / t["steps"])
    teacher = RunFolder(store / "runs" / "headroom-teacher-55d2410df0").read_json("train_summary.json")
    # the committed teacher stage (original teacher, 200 items, 1-shot prompts): its generation rate is the
    # 1-shot teacher evaluation's too; answers + top-64 signal is the cost of the study's stage
    (throughput,) = [json.loads(p.read_text())["throughput"] for p in sorted((store / "teacher").glob("*/stats.json"))][:1]
    one_shot_s_per_item = throughput["generation_seconds"] / throughput["generated_rows"]
    stage = 200 * (throughput["generation_seconds"] + throughput["signal_seconds"]) / throughput["generated_rows"]
    s_step = statistics.median(per_step)
    n_q = CHOSEN[1]
    student_train = STUDENT_STEPS * s_step
    evals = [n_q * x for x in EVAL_S_PER_QUESTION]
    teacher_train = TEACHER_STEPS * teacher["wall_s"] / teacher["steps"]
    # the teacher's two evaluations: 1-shot at the stage's rate; zero-shot assumed 2x the 135M student's time
    teacher_evals = [n_q * one_shot_s_per_item + 2 * e for e in evals]
    per_run = [student_train + e for e in evals]
    total = [RUNS * pr + teacher_train + te + stage for pr, te in zip(per_run, teacher_evals)]
    return {"student_s_per_step": {"median": s_step, "min": min(per_step), "max": max(per_step), "n_runs": len(per_step)},
            "teacher_s_per_step": teacher["wall_s"] / teacher["steps"], "teacher_one_shot_s_per_item": one_shot_s_per_item,
            "student_train_s": student_train, "student_eval_s": evals, "per_run_s": per_run,
            "teacher_train_s": teacher_train, "teacher_eval_s": teacher_evals, "teacher_stage_s": stage,
            "total_s": total}


def _h(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default="results")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = p.parse_args(argv)
    store = Path(args.store)
    comp = components(store)
    out: dict = {"components": {k: comp[k].__dict__ for k in ("estimated", "conservative")},
                 "per_seed_diff": comp["per_seed_diff"], "f1": comp["f1"], "runs": comp["runs"]}
    est, cons = comp["estimated"], comp["conservative"]
    print(f"Strong-teacher arm ({ARM}): seeds {comp['seeds']} x {comp['n_items']} questions; per-seed ULD - lambda=0: "
          + ", ".join(f"{x:+.2f}" for x in comp["per_seed_diff"]))
    for name, c in (("estimated", est), ("conservative", cons)):
        print(f"variance components ({name}, F1^2): seed {c.seed:.3f}, question {c.question:.1f}, residual {c.residual:.1f}")
    print()
    print("| seeds | questions | half-width (est.) | MDE 80% (est.) | half-width (cons.) | MDE 80% (cons.) | power at +2.3 (cons.) |")
    print("|--:|--:|--:|--:|--:|--:|--:|")
    rows = {name: design_rows(c) for name, c in (("estimated", est), ("conservative", cons))}
    for re_, rc in zip(rows["estimated"], rows["conservative"]):
        mark = " **" if (re_["seeds"], re_["questions"]) == CHOSEN else ""
        print(f"| {re_['seeds']}{mark} | {re_['questions']} | {re_['half_width']:.2f} | {re_['mde80']:.2f} | "
              f"{rc['half_width']:.2f} | {rc['mde80']:.2f} | {rc['power_at_paper_gain']:.2f} |")
    out["designs"] = rows
    chosen = next(r for r in rows["conservative"] if (r["seeds"], r["questions"]) == CHOSEN)
    print(f"\nchosen design {CHOSEN[0]} seeds x {CHOSEN[1]} questions: conservative half-width {chosen['half_width']:.2f} "
          f"(target <= {TARGET_HALF_WIDTH}), MDE {chosen['mde80']:.2f}, power at +{PAPER_GAIN} {chosen['power_at_paper_gain']:.2f}")
    cost = costs(store)
    out["cost"] = cost
    st = cost["student_s_per_step"]
    print(f"\nstudent training: {st['median']:.1f} s per optimizer step (median of {st['n_runs']} runs, {st['min']:.1f}-"
          f"{st['max']:.1f}); {STUDENT_STEPS} steps = {_h(cost['student_train_s'])}")
    print(f"student evaluation of {CHOSEN[1]} questions: {_h(cost['student_eval_s'][0])}-{_h(cost['student_eval_s'][1])}")
    print(f"one student run: {_h(cost['per_run_s'][0])}-{_h(cost['per_run_s'][1])}; teacher fine-tune "
          f"{_h(cost['teacher_train_s'])}, its two evaluations {_h(cost['teacher_eval_s'][0])}-{_h(cost['teacher_eval_s'][1])}, "
          f"teacher stage {_h(cost['teacher_stage_s'])}")
    print(f"total ({RUNS} student runs + teacher): {_h(cost['total_s'][0])}-{_h(cost['total_s'][1])} of one process "
          f"(two side by side on this 2-core CPU: about half the wall time); at twice the speed: "
          f"{_h(cost['total_s'][0] / 2)}-{_h(cost['total_s'][1] / 2)}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=lambda o: o.__dict__) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

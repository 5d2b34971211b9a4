"""The compute plan of the paper grids, from the data layer's own counts on the real files.

    .venv/bin/python scripts/compute_plan.py --data-dir ../shared/data --tokenizers ../shared/tokenizers

For every task: the training pool the paper grids use, the teacher prompt tokens (each teacher's prompt
rendered with its shots, title and chat template, tokenized by its real tokenizer), the teacher answer
tokens (the lengths of the authors' own teacher answers on the test split, tokenized the same way) and
the student tokens per training row (prompt + answer, with each student's tokenizer). Then the grids:
how many teacher stages, training runs and evaluations each table needs, the tokens they process, and
the GPU-hours on 4 x A100 under the throughput stated in ``ASSUMPTIONS`` (FLOP counts 2N per token
forward, 6N per trained token; the efficiencies are assumptions, not measurements). Writes
docs/compute_plan.md and results/benchmarks/compute_plan.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from transformers import AutoTokenizer

from uld.config import DataConfig, expand_grid, load_config
from uld.data import encode_teacher_prompt, get_task, render_teacher_prompt, select_teacher_shots, training_pool
from uld.io import atomic_write_json, atomic_write_text
from uld.methods import get_method
from uld.models import load_registry, shots_for, title_for
from uld.reporting.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
TASKS = ("squad", "qed", "fairytaleqa", "pubmedqa", "dialogsum")
TEACHERS = {"llama-2-7b-chat": "llama-2-7b", "mistral-7b-instruct": "mistral-7b"}
STUDENT_TOKENIZERS = {"pythia": "pythia", "opt": "gpt2", "bloomz": "gpt2", "mt0": "gpt2"}  # Bloom/mT5: GPT-2 as a stand-in
AUTHOR_TEACHER_DIRS = {"llama-2-7b-chat": "Llama-2-7b-chat-hf", "mistral-7b-instruct": "Mistral-7B-Instruct-v0.2"}
AUTHOR_TASK_DIRS = {"squad": "squad", "qed": "qed", "fairytaleqa": "FairytaleQA", "pubmedqa": "pubmed_qa", "dialogsum": "dialogsum"}
PAPER_POOL = {"pubmedqa": 211_269}  # the paper trains on PQA-A, which is Hub-only: offline counts are scaled to it
PARAMS = {"llama-2-7b-chat": 6.74e9, "mistral-7b-instruct": 7.24e9, "pythia-160m": 0.162e9, "pythia-410m": 0.405e9,
          "pythia-1b": 1.01e9, "opt-350m": 0.331e9, "bloomz-560m": 0.559e9, "mt0-base": 0.582e9}
ASSUMPTIONS = {
    "gpus": 4,
    "a100_bf16_peak_tflops": 312.0,
    "prefill_mfu": 0.45,  # teacher prompt processing and the signal pass (a forward over prompt + answer)
    "train_mfu": 0.30,  # small students (<= 1B) do not fill an A100: a third of peak
    "decode_tokens_per_s_per_gpu": 1200.0,  # greedy decoding of a 7B model, batch 32, HF generate
    "epochs": 5.0,
    "eval_items": {"squad": 10_570, "qed": 1_355, "fairytaleqa": 1_007, "pubmedqa": 500, "dialogsum": 500},
}


def _mean(xs):
    return statistics.fmean(xs) if xs else 0.0


def _teacher_answer_tokens(tok, teacher: str, task: str) -> float:
    base = REPO.parent / "shared" / "reference" / "author_predictions" / "teachers" / AUTHOR_TEACHER_DIRS[teacher] / AUTHOR_TASK_DIRS[task]
    files = sorted(base.glob("*/predictions.jsonl"))
    if not files:
        return float("nan")
    answers = [json.loads(line)["prediction_text"] for line in files[0].read_text().splitlines() if line.strip()]
    return _mean([len(tok(a, add_special_tokens=False).input_ids) + 1 for a in answers])  # + EOS


def task_counts(data_dir: Path, tokenizers: Path, sample: int) -> dict:
    registry = load_registry()
    toks = {name: AutoTokenizer.from_pretrained(tokenizers / sub) for name, sub in {**TEACHERS, **{k: v for k, v in STUDENT_TOKENIZERS.items()}}.items()}
    out = {}
    for task in TASKS:
        t = get_task(task)
        train, val = training_pool(DataConfig(task=task, dir=str(data_dir)))
        pool = list(train)
        rows = (pool + list(val))[:: max(1, (len(pool) + len(val)) // sample)]
        rec = {"pool_offline": len(pool) + len(val), "pool_paper": PAPER_POOL.get(task, len(pool) + len(val)), "teachers": {}, "students": {}}
        for teacher, sub in TEACHERS.items():
            entry, tok = registry[teacher], toks[teacher]
            shots, title = shots_for(entry, task), title_for(entry, task)
            lens = [len(encode_teacher_prompt(tok, render_teacher_prompt(t, ex, select_teacher_shots(ex, pool, shots, 42), entry, tok, title=title)))
                    for ex in rows]
            over = sum(1 for n in lens if n + 150 + 1 > entry.max_length) / len(lens)  # skipped by the teacher stage
            rec["teachers"][teacher] = {"shots": shots, "prompt_tokens": _mean(lens), "max_prompt_tokens": max(lens),
                                        "over_context": over, "answer_tokens": _teacher_answer_tokens(tok, teacher, task)}
        known = [v["answer_tokens"] for v in rec["teachers"].values() if v["answer_tokens"] == v["answer_tokens"]]
        for v in rec["teachers"].values():  # no authors' answers for a pair: the other teacher's length
            if v["answer_tokens"] != v["answer_tokens"]:
                v["answer_tokens"], v["answer_tokens_from"] = _mean(known), "the other teacher"
        for student in STUDENT_TOKENIZERS:
            tok = toks[student]
            rec["students"][student] = {"prompt_tokens": _mean([len(tok(t.student_prompt(ex)).input_ids) for ex in rows])}
        out[task] = rec
        print(f"{task}: {rec['pool_offline']} rows; teacher prompt tokens "
              f"{ {k: round(v['prompt_tokens']) for k, v in rec['teachers'].items()} }", file=sys.stderr)
    return out


def _student_family(name: str) -> str:
    return next(f for f in STUDENT_TOKENIZERS if name.startswith(f))


def grid_costs(counts: dict) -> dict:
    a = ASSUMPTIONS
    peak = a["a100_bf16_peak_tflops"] * 1e12
    tables = {}
    stages_all: dict = {}
    for name in ("main", "student_size", "data_fraction", "encoder_decoder", "cost_ablation"):
        spec = load_spec(name)
        runs, stages, evals = {}, {}, 0
        for path in spec.files("paper"):
            for cell in expand_grid(load_config(path)):
                task, c = cell.data.task, counts[cell.data.task]
                method = get_method(cell.training.method)
                n_pool = c["pool_paper"]
                if method.needs_teacher_stage:
                    stages[(task, cell.teacher.name)] = c["teachers"][cell.teacher.name]
                if method.target != "none":
                    rows = n_pool * 0.9 * cell.data.train_fraction
                    teacher = c["teachers"].get(cell.teacher.name) or next(iter(c["teachers"].values()))
                    tokens = rows * (c["students"][_student_family(cell.student.name)]["prompt_tokens"] + teacher["answer_tokens"])
                    runs[(task, cell.student.name, cell.teacher.name, cell.training.method, cell.data.train_fraction,
                          cell.training.ot.cost)] = (cell.student.name, tokens * a["epochs"])
                evals += 1
        train_flops = sum(6 * PARAMS[s] * tok for s, tok in runs.values())
        stage_cost = {}
        for (task, teacher), st in stages.items():
            n = counts[task]["pool_paper"]
            prefill = 2 * PARAMS[teacher] * n * st["prompt_tokens"] / (peak * a["prefill_mfu"])
            decode = n * st["answer_tokens"] / a["decode_tokens_per_s_per_gpu"]
            signal = 2 * PARAMS[teacher] * n * (st["prompt_tokens"] + st["answer_tokens"]) / (peak * a["prefill_mfu"])
            stage_cost[f"{task}/{teacher}"] = (prefill + decode + signal) / 3600
        stages_all.update(stage_cost)
        tables[name] = {"training_runs": len(runs), "teacher_stages": len(stages), "evaluations": evals,
                        "trained_tokens": sum(t for _, t in runs.values()),
                        "training_gpu_hours": train_flops / (peak * a["train_mfu"]) / 3600,
                        "teacher_gpu_hours_if_alone": sum(stage_cost.values())}
    # evaluation: the teachers' few-shot scoring dominates (7B, every test item); students are small
    teacher_eval = 0.0
    for teacher in TEACHERS:
        for task, n in a["eval_items"].items():
            st = counts[task]["teachers"][teacher]
            teacher_eval += 2 * PARAMS[teacher] * n * st["prompt_tokens"] / (peak * a["prefill_mfu"]) + n * st["answer_tokens"] / a["decode_tokens_per_s_per_gpu"]
    return {"tables": tables, "teacher_stages": stages_all, "all_teacher_stages_gpu_hours": sum(stages_all.values()),
            "teacher_evaluation_gpu_hours": teacher_eval / 3600}


def render(counts: dict, costs: dict) -> str:
    a = ASSUMPTIONS
    lines = ["# Compute plan of the paper grids", "",
             "Generated by `scripts/compute_plan.py` from the data layer's counts on the real files (`../shared/data`) and the",
             "real tokenizers (`../shared/tokenizers`); teacher answer lengths are the authors' own teacher answers on the test",
             "split. PubMedQA is counted on the offline PQA-L rows and scaled to the paper's 211,269 PQA-A rows. Bloom's and mT5's",
             "tokenizers are not available offline: GPT-2's stands in for their token counts.", "",
             "## Per task", "",
             "| task | training pool (paper) | teacher | shots | prompt tokens (mean / max) | over the context | answer tokens | student prompt tokens (Pythia / OPT) |",
             "|:--|--:|:--|--:|--:|--:|--:|--:|"]
    for task, c in counts.items():
        for i, (teacher, t) in enumerate(c["teachers"].items()):
            mark = "*" if t.get("answer_tokens_from") else ""
            lines.append(f"| {task if i == 0 else ''} | {c['pool_paper']:,} | {teacher} | {t['shots']} | {t['prompt_tokens']:.0f} / {t['max_prompt_tokens']} | "
                         f"{t['over_context']:.1%} | {t['answer_tokens']:.1f}{mark} | {c['students']['pythia']['prompt_tokens']:.0f} / {c['students']['opt']['prompt_tokens']:.0f} |")
    lines += ["", "Over the context: the share of rows whose teacher prompt leaves no room for 150 new tokens in the teacher's "
              "context (4,096 for Llama-2, 32,768 for Mistral); the teacher stage skips and counts them. "
              "\\* no authors' teacher answers for this pair: the other teacher's mean length."]
    lines += ["", "## Per table", "", f"Throughput assumed (not measured; no GPU was available for this plan): A100 bf16 peak "
              f"{a['a100_bf16_peak_tflops']:.0f} TFLOP/s; prefill and the signal pass at {a['prefill_mfu']:.0%} of peak (2N FLOP per "
              f"token), student training at {a['train_mfu']:.0%} (6N FLOP per trained token, {a['epochs']:g} epochs on 90% of the pool), "
              f"greedy decoding of a 7B teacher at {a['decode_tokens_per_s_per_gpu']:.0f} tokens/s per GPU. GPU-hours divide by "
              f"{a['gpus']} for wall-clock on 4 x A100.", "",
              "| table | training runs | teacher stages | evaluations | trained tokens | training GPU-h | teacher GPU-h (its stages) |",
              "|:--|--:|--:|--:|--:|--:|--:|"]
    for name, t in costs["tables"].items():
        lines.append(f"| {name} | {t['training_runs']} | {t['teacher_stages']} | {t['evaluations']} | {t['trained_tokens'] / 1e9:.2f} B | "
                     f"{t['training_gpu_hours']:.0f} | {t['teacher_gpu_hours_if_alone']:.0f} |")
    total_train = sum(t["training_gpu_hours"] for t in costs["tables"].values())
    lines += ["", f"Teacher stages are shared by every table (one per task and teacher, {len(costs['teacher_stages'])} in all): "
              f"{costs['all_teacher_stages_gpu_hours']:.0f} GPU-hours together. Runs shared between tables (same run id) are trained once; "
              f"the per-table training column counts each table's runs, so their sum ({total_train:.0f} GPU-h) is an upper bound. "
              f"Evaluation: the teachers' few-shot scores (every test item through a 7B model) take "
              f"{costs['teacher_evaluation_gpu_hours']:.1f} GPU-hours; students (<= 1B) are a few minutes each. In all, about "
              f"{costs['all_teacher_stages_gpu_hours'] + total_train + costs['teacher_evaluation_gpu_hours']:.0f} GPU-hours: "
              f"{(costs['all_teacher_stages_gpu_hours'] + total_train + costs['teacher_evaluation_gpu_hours']) / a['gpus']:.0f} hours on 4 x A100.", "",
              "## Peak memory per stage", "",
              "| stage | what is resident | per GPU |", "|:--|:--|--:|",
              "| teacher answers | 7B teacher in bf16 (13.5 GB) + KV cache (0.5 MB per token for Llama-2-7b: batch 32 x 1,500 tokens = 24 GB) | ~40 GB |",
              "| teacher signal | 7B teacher in bf16 + activations; logits only at the answer positions (32k vocab x answer tokens) | ~20 GB |",
              "| student training | the student only: the cached signal means the teacher is not resident. fp32 weights, gradients and AdamW state: 16 bytes per parameter (Pythia-1b: 16 GB; FSDP over 4 GPUs: 4 GB) + activations (batch 8 x 1,024 tokens) | 5-25 GB |",
              "| evaluation | the student in fp32 + KV cache of 150 new tokens | < 10 GB |", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--tokenizers", type=Path, default=REPO.parent / "shared" / "tokenizers")
    p.add_argument("--sample", type=int, default=2000, help="rows per task tokenized for the means")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "compute_plan.md")
    args = p.parse_args(argv)
    counts = task_counts(args.data_dir, args.tokenizers, args.sample)
    costs = grid_costs(counts)
    atomic_write_json(REPO / "results" / "benchmarks" / "compute_plan.json", {"assumptions": ASSUMPTIONS, "tasks": counts, **{
        "tables": costs["tables"], "teacher_stages_gpu_hours": costs["teacher_stages"]}})
    atomic_write_text(args.out, render(counts, costs))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

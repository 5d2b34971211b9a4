#!/usr/bin/env python
"""Teacher-stage benchmark: generation throughput over batch size, fp32 vs bf16, with and without the
shared-prefix prefill; the signal pass; and the size of the teacher-signal cache.

Runs the real small teacher (Gemma-3-270M, built by ../shared/scripts/get-small-models) on the first N
SQuAD training items with the stage's own prompt builder (the registry's few-shot count unless
``--shots``), generation loop and signal pass, then writes ``results/benchmarks/teacher.json`` and
``teacher.md``. Every configuration runs in this one process on the same prompts, so the ratios are
paired; run it alone on the machine.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench_teacher.py \\
        --model-dir ~/.cache/small-models/gemma-3-270m --data-dir ../shared/data

Throughput counts generated tokens (up to and including EOS; rows stop at the end of their first
line, as in the stage) over the wall time of the generation loop, prompts tokenized beforehand.
Agreement: greedy answers equal to batch 1 of the same precision, and to fp32 batch 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from uld.config import DataConfig, ModelConfig
from uld.data import encode_teacher_prompt, get_task, teacher_prompt, training_pool
from uld.generation import common_prefix_len, greedy_generate
from uld.io import atomic_write_json, atomic_write_text
from uld.models import load_model, load_tokenizer, resolve_model, shots_for
from uld.signal import signal_rows


def _args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gemma-3-270m", help="registry name of the teacher")
    ap.add_argument("--model-dir", default=str(Path.home() / ".cache/small-models/gemma-3-270m"))
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--task", default="squad")
    ap.add_argument("--n-items", type=int, default=64)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--shots", type=int, default=None, help="few-shot count (default: the registry's for the task)")
    ap.add_argument("--top-k", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "benchmarks"))
    return ap.parse_args()


def _generation_runs(models, tok, prompt_ids, args) -> list[dict]:
    runs, answers = [], {}
    for dtype, model in models.items():
        greedy_generate(model, tok, prompt_ids[:2], max_new_tokens=2, batch_size=2)  # warm-up
        for bs in args.batch_sizes:
            for share in ([False] if bs == 1 else [False, True]):
                out = greedy_generate(model, tok, prompt_ids, max_new_tokens=args.max_new_tokens, batch_size=bs,
                                      share_prefix=share)
                n_tok = sum(out.n_tokens)
                answers[(dtype, bs, share)] = out.answers
                runs.append({"dtype": dtype, "batch_size": bs, "share_prefix": share, "items": len(prompt_ids),
                             "seconds": round(out.seconds, 2), "generated_tokens": n_tok,
                             "tokens_per_s": round(n_tok / out.seconds, 3),
                             "items_per_s": round(len(prompt_ids) / out.seconds, 4),
                             "prefill_tokens": out.prefill_tokens, "pad_tokens": out.pad_tokens})
                print(json.dumps(runs[-1]), flush=True)
    ref = answers[(args.dtypes[0], args.batch_sizes[0], False)]
    for r in runs:
        mine = answers[(r["dtype"], r["batch_size"], r["share_prefix"])]
        own_bs1 = answers[(r["dtype"], args.batch_sizes[0], False)]
        bs1 = runs[[(x["dtype"], x["batch_size"]) for x in runs].index((r["dtype"], args.batch_sizes[0]))]
        r["items_per_s_vs_bs1"] = round(r["items_per_s"] / bs1["items_per_s"], 2)
        r["tokens_per_s_vs_bs1"] = round(r["tokens_per_s"] / bs1["tokens_per_s"], 2)
        r["equal_to_own_bs1"] = f"{sum(a == b for a, b in zip(mine, own_bs1))}/{len(mine)}"
        r[f"equal_to_{args.dtypes[0]}_bs1"] = f"{sum(a == b for a, b in zip(mine, ref))}/{len(mine)}"
    return runs, answers[(args.dtypes[0], 8 if 8 in args.batch_sizes else args.batch_sizes[0], False)]


def _signal_runs(model, tok, prompts, answers, k):
    kept = [i for i, a in enumerate(answers) if a]
    runs, rows_by = [], {}
    for share in (False, True):
        start = time.perf_counter()
        rows_by[share] = signal_rows(model, tok, [prompts[i] for i in kept], [answers[i] for i in kept], k,
                                     batch_size=8, share_prefix=share)
        runs.append({"share_prefix": share, "batch_size": 8, "seconds": round(time.perf_counter() - start, 2)})
        print(json.dumps(runs[-1]), flush=True)
    diff = max(float((a[0] - b[0]).abs().max()) for a, b in zip(rows_by[False], rows_by[True]) if len(a[0]))
    return kept, rows_by[False], runs, diff


def _cache_size(model, kept, rows, k) -> dict:
    probs = torch.cat([p for p, _ in rows]).numpy()
    tail = torch.cat([t for _, t in rows]).numpy()
    n_pos, vocab = len(tail), int(model.config.vocab_size)
    cache_bytes = n_pos * k * 2 + n_pos * 4 + len(kept) * 16  # fp16 probs + fp32 tail + (offset, length)
    full_bytes = n_pos * vocab * 2  # full logits as fp16 at the same positions
    per_1k = 1000 / max(len(kept), 1)
    tails = {str(j): float(np.mean(tail + probs[:, j:].sum(1))) for j in (1, 8, 16, 64, k) if j <= k}
    return {"top_k": k, "answers": len(kept), "positions": n_pos, "positions_per_answer": n_pos / max(len(kept), 1),
            "teacher_vocab_size": vocab, "cache_bytes_per_1000_answers": round(cache_bytes * per_1k),
            "full_logits_fp16_bytes_per_1000_answers": round(full_bytes * per_1k),
            "compression_factor": round(full_bytes / cache_bytes, 1), "mean_tail_mass_at_k": tails}


def main() -> None:
    args = _args()
    resolved = resolve_model(ModelConfig(name=args.model, path=args.model_dir))
    tok = load_tokenizer(resolved, padding_side="left")
    models = {d: load_model(resolved, dtype=d, device=args.device).eval() for d in args.dtypes}
    data_cfg = DataConfig(task=args.task, dir=args.data_dir, train_size=args.n_items, val_fraction=0.0)
    train, _ = training_pool(data_cfg)
    task = get_task(args.task)
    shots = shots_for(resolved.entry, args.task) if args.shots is None else args.shots
    prompts = [teacher_prompt(task, ex, train, resolved.entry, tok, shots, False, data_cfg.split_seed) for ex in train]
    prompt_ids = [encode_teacher_prompt(tok, p) for p in prompts]

    runs, answers = _generation_runs(models, tok, prompt_ids, args)
    kept, rows, signal_runs, signal_diff = _signal_runs(models[args.dtypes[0]], tok, prompts, answers, args.top_k)
    lengths = [len(p) for p in prompt_ids]
    result = {
        "teacher": resolved.describe(), "task": args.task, "n_items": len(prompt_ids), "shots": shots,
        "max_new_tokens": args.max_new_tokens, "mean_prompt_tokens": float(np.mean(lengths)),
        "max_prompt_tokens": int(max(lengths)), "shared_prefix_tokens_all_items": common_prefix_len(prompt_ids),
        "sliding_window": getattr(models[args.dtypes[0]].config, "sliding_window", None),
        "device": args.device, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(), "platform": platform.platform(), "torch": torch.__version__,
        "generation": runs,
        "signal_pass": {"runs": signal_runs, "max_abs_prob_difference_shared_vs_plain": signal_diff},
        "signal": _cache_size(models[args.dtypes[0]], kept, rows, args.top_k),
        "sample_answers": [{"question": train[i].question, "answer": answers[i], "gold": list(train[i].answers)}
                           for i in range(min(8, len(train)))],
    }
    out_dir = Path(args.out)
    atomic_write_json(out_dir / "teacher.json", result)
    atomic_write_text(out_dir / "teacher.md", render_md(result))
    print(render_md(result))


def _prefilled(g: dict) -> str:
    return f"{g['prefill_tokens']:,} ({g['pad_tokens']:,})" if "prefill_tokens" in g else "–"


def render_md(r: dict) -> str:
    s, sp = r["signal"], r["signal_pass"]
    ref_key = next(k for k in r["generation"][0] if k.startswith("equal_to_") and k != "equal_to_own_bs1")
    lines = [
        "# Teacher stage benchmark",
        "",
        f"Teacher `{r['teacher']['name']}` ({r['device']}, {r['torch_threads']} torch threads, {r['cpu_count']} CPUs; "
        f"load average at the end {', '.join(f'{x:.1f}' for x in r['load_average_at_end'])}), "
        f"{r['task']} training items 1-{r['n_items']}, {r['shots']}-shot prompts (mean {r['mean_prompt_tokens']:.0f} "
        f"tokens, max {r['max_prompt_tokens']}; {r['shared_prefix_tokens_all_items']} tokens shared by all), greedy, "
        f"max {r['max_new_tokens']} new tokens, rows stop at the end of their first line. "
        "Produced by `scripts/bench_teacher.py`; every row in one process on the same prompts.",
        "",
        "## Generation throughput",
        "",
        "| dtype | batch | shared prefix | seconds | tokens | tokens/s | items/s | items/s vs batch 1 | prefilled (pads) | "
        f"answers = own batch 1 | answers = {ref_key[len('equal_to_'):].replace('_bs1', ' batch 1')} |",
        "|---|---:|:-:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g in r["generation"]:
        lines.append(
            f"| {g['dtype']} | {g['batch_size']} | {'yes' if g['share_prefix'] else 'no'} | {g['seconds']} | "
            f"{g['generated_tokens']} | {g['tokens_per_s']} | {g['items_per_s']} | {g['items_per_s_vs_bs1']}x | "
            f"{_prefilled(g)} | {g['equal_to_own_bs1']} | {g[ref_key]} |"
        )
    lines += [
        "",
        "## Signal pass (teacher-forced, batch 8, " + r["generation"][0]["dtype"] + ")",
        "",
        "| shared prefix | seconds |",
        "|:-:|---:|",
        *[f"| {'yes' if x['share_prefix'] else 'no'} | {x['seconds']} |" for x in sp["runs"]],
        "",
        f"Largest difference in a cached probability, shared prefix vs not: {sp['max_abs_prob_difference_shared_vs_plain']:.2e}.",
        "",
        "## Teacher signal cache vs full logits",
        "",
        f"Top-{s['top_k']} sorted probabilities (float16) + tail mass (float32) + index, for {s['answers']} answers "
        f"({s['positions']} positions, {s['positions_per_answer']:.1f} per answer incl. EOS), teacher vocabulary "
        f"{s['teacher_vocab_size']:,}.",
        "",
        "| storage | bytes per 1,000 answers |",
        "|---|---:|",
        f"| cached signal (k={s['top_k']}) | {s['cache_bytes_per_1000_answers']:,} |",
        f"| full logits, float16 | {s['full_logits_fp16_bytes_per_1000_answers']:,} |",
        f"| ratio | {s['compression_factor']}x smaller |",
        "",
        "Mean tail mass (probability outside the top k) over answer positions:",
        "",
        "| k | " + " | ".join(s["mean_tail_mass_at_k"]) + " |",
        "|---|" + "---:|" * len(s["mean_tail_mass_at_k"]),
        "| tail | " + " | ".join(f"{v:.4f}" for v in s["mean_tail_mass_at_k"].values()) + " |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

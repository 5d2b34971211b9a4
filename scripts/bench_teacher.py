#!/usr/bin/env python
"""Teacher-stage benchmark: greedy generation throughput vs batch size, and teacher-signal cache size.

Runs the real small teacher (Gemma-3-270M, built by ../shared/scripts/get-small-models) on the first N
SQuAD training items with the stage's own prompt builder, generation loop and signal pass, then writes
``results/benchmarks/teacher.json`` and ``teacher.md``.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench_teacher.py \
        --model-dir ~/.cache/small-models/gemma-3-270m --data-dir ../shared/data

Throughput counts generated tokens (up to and including EOS; rows stop early at the end of their first
line, as in the stage) over wall time of the generation loop, prompts tokenized beforehand.
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

from uld.data import encode_teacher_prompt, teacher_prompt
from uld.signal import signal_rows
from uld.generation import greedy_generate
from uld.config import DataConfig, ModelConfig
from uld.data import get_task, training_pool
from uld.models import load_model, load_tokenizer, resolve_model
from uld.io import atomic_write_json, atomic_write_text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gemma-3-270m", help="registry name of the teacher")
    ap.add_argument("--model-dir", default=str(Path.home() / ".cache/small-models/gemma-3-270m"))
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--task", default="squad")
    ap.add_argument("--n-items", type=int, default=32)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--shots", type=int, default=0, help="few-shot count (0 keeps CPU prompts short)")
    ap.add_argument("--top-k", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "benchmarks"))
    args = ap.parse_args()

    resolved = resolve_model(ModelConfig(name=args.model, path=args.model_dir))
    tok = load_tokenizer(resolved, padding_side="left")
    model = load_model(resolved, device=args.device).eval()
    data_cfg = DataConfig(task=args.task, dir=args.data_dir, train_size=args.n_items, val_fraction=0.0)
    train, _ = training_pool(data_cfg)
    task = get_task(args.task)
    prompts = [
        teacher_prompt(task, ex, train, resolved.entry, tok, args.shots, False, data_cfg.split_seed) for ex in train
    ]
    prompt_ids = [encode_teacher_prompt(tok, p) for p in prompts]

    # warm-up: first calls pay for allocator growth and kernel selection
    greedy_generate(model, tok, prompt_ids[:2], max_new_tokens=2, batch_size=2)

    runs, answers_by_bs = [], {}
    for bs in args.batch_sizes:
        out = greedy_generate(model, tok, prompt_ids, max_new_tokens=args.max_new_tokens, batch_size=bs)
        n_tok = sum(out.n_tokens)
        runs.append(
            {
                "batch_size": bs,
                "items": len(prompt_ids),
                "seconds": round(out.seconds, 2),
                "generated_tokens": n_tok,
                "tokens_per_s": round(n_tok / out.seconds, 3),
                "items_per_s": round(len(prompt_ids) / out.seconds, 4),
            }
        )
        answers_by_bs[bs] = out.answers
        print(json.dumps(runs[-1]), flush=True)
    ref_bs = args.batch_sizes[0]
    for r in runs:
        same = sum(a == b for a, b in zip(answers_by_bs[r["batch_size"]], answers_by_bs[ref_bs]))
        r[f"answers_equal_to_bs{ref_bs}"] = f"{same}/{len(prompt_ids)}"

    # cache size: the signal of the kept answers (one batch size's generations)
    answers = answers_by_bs[8 if 8 in answers_by_bs else ref_bs]
    kept = [i for i, a in enumerate(answers) if a]
    start = time.perf_counter()
    rows = signal_rows(model, tok, [prompts[i] for i in kept], [answers[i] for i in kept], args.top_k, batch_size=8)
    signal_s = time.perf_counter() - start
    probs = torch.cat([p for p, _ in rows]).numpy()
    tail = torch.cat([t for _, t in rows]).numpy()
    n_pos = len(tail)
    vocab = int(model.config.vocab_size)
    cache_bytes = n_pos * args.top_k * 2 + n_pos * 4 + len(kept) * 16  # fp16 probs + fp32 tail + (offset, length)
    full_bytes = n_pos * vocab * 2  # full logits as fp16 at the same positions
    per_1k = 1000 / max(len(kept), 1)
    tails = {}
    for k in (1, 8, 16, 64, args.top_k):
        if k <= args.top_k:
            tails[str(k)] = float(np.mean(tail + probs[:, k:].sum(1)))
    result = {
        "teacher": resolved.describe(),
        "task": args.task,
        "n_items": len(prompt_ids),
        "shots": args.shots,
        "max_new_tokens": args.max_new_tokens,
        "mean_prompt_tokens": float(np.mean([len(p) for p in prompt_ids])),
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "generation": runs,
        "signal": {
            "top_k": args.top_k,
            "answers": len(kept),
            "positions": n_pos,
            "positions_per_answer": n_pos / max(len(kept), 1),
            "signal_pass_seconds": round(signal_s, 2),
            "teacher_vocab_size": vocab,
            "cache_bytes_per_1000_answers": round(cache_bytes * per_1k),
            "full_logits_fp16_bytes_per_1000_answers": round(full_bytes * per_1k),
            "compression_factor": round(full_bytes / cache_bytes, 1),
            "mean_tail_mass_at_k": tails,
        },
        "sample_answers": [{"question": train[i].question, "answer": answers[i], "gold": list(train[i].answers)}
                           for i in range(min(8, len(train)))],
    }
    out_dir = Path(args.out)
    atomic_write_json(out_dir / "teacher.json", result)
    atomic_write_text(out_dir / "teacher.md", render_md(result))
    print(json.dumps(result["signal"], indent=1))


def render_md(r: dict) -> str:
    s = r["signal"]
    lines = [
        "# Teacher stage benchmark",
        "",
        f"Teacher `{r['teacher']['name']}` ({r['teacher']['dtype']}, {r['device']}, {r['torch_threads']} torch threads, "
        f"{r['cpu_count']} CPUs shared with other jobs; load average at the end {', '.join(f'{x:.1f}' for x in r['load_average_at_end'])}), "
        f"{r['task']} training items 1-{r['n_items']}, {r['shots']}-shot prompts "
        f"(mean {r['mean_prompt_tokens']:.0f} tokens), greedy, max {r['max_new_tokens']} new tokens, "
        "rows stop at the end of their first line. Produced by `scripts/bench_teacher.py`.",
        "",
        "## Generation throughput",
        "",
        "| batch size | items | seconds | generated tokens | tokens/s | items/s | answers equal to bs=1 |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    eq_key = next(k for k in r["generation"][0] if k.startswith("answers_equal"))
    for g in r["generation"]:
        lines.append(
            f"| {g['batch_size']} | {g['items']} | {g['seconds']} | {g['generated_tokens']} | {g['tokens_per_s']} | "
            f"{g['items_per_s']} | {g[eq_key]} |"
        )
    lines += [
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
        f"Signal pass (teacher-forced, batch 8): {s['signal_pass_seconds']} s.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

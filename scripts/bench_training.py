"""Student training throughput and peak memory: sft-teacher vs uld (online teacher) vs uld (cached signal).

Same student, same rows, same batch: each method runs in its own process (so its peak memory is its
own), a warm-up step, then ``--steps`` timed optimizer steps through ``uld.training.compute_losses``
(the trainer's loss path) with AdamW. The teacher signal is computed once beforehand with
``uld.teacher.online_teacher_signal`` (top-k, float16, as the teacher stage caches it).
Writes ``results/benchmarks/training.{json,md}``.

    python scripts/bench_training.py                      # real small models from ~/.cache/small-models
    python scripts/bench_training.py --student DIR --teacher DIR --steps 10 --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from uld.config import TrainingConfig
from uld.models import ModelEntry, ResolvedModel, load_model, load_tokenizer
from uld.io import atomic_write_json, atomic_write_text
from uld.training import DistillationCollator, EncodedItem, compute_losses

REPO = Path(__file__).resolve().parents[1]
SMALL = Path(os.environ.get("SMALL_MODELS_DIR", Path.home() / ".cache" / "small-models"))

# SQuAD-like rows (made up here, so the benchmark needs no dataset): passage, question, answer
_PASSAGE = (
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region "
    "in France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway who, "
    "under their leader Rollo, agreed to swear fealty to King Charles III of West Francia. "
)


def _rows(n: int) -> list[tuple[str, str, str]]:
    qs = [("In what country is Normandy located?", "France"), ("Who was the Norse leader?", "Rollo"),
          ("When did the Normans give their name to Normandy?", "in the 10th and 11th centuries"),
          ("Where did the Norse raiders come from?", "Denmark, Iceland and Norway")]
    out = []
    for i in range(n):
        q, a = qs[i % len(qs)]
        ctx = _PASSAGE * (1 + i % 2)
        out.append((f"Context: {ctx}\nQuestion: {q}\nAnswer:", a, f"Answer the question.\n{ctx}\n{q}\n"))
    return out


def _local(path: Path, arch: str = "decoder") -> ResolvedModel:
    return ResolvedModel(path.name, ModelEntry(hub_id=path.name, arch=arch), str(path), None, "float32")


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


CASES = ("sft-teacher", "uld-online", "uld-cached")


def _batches(args):
    """(student tokenizer, collated batch with the teacher side, rows) for the benchmark rows."""
    from uld.data import encode_pair

    s_tok = load_tokenizer(_local(Path(args.student)), padding_side="right")
    t_tok = load_tokenizer(_local(Path(args.teacher)), padding_side="right")
    rows = _rows(args.batch_size)
    items = []
    for i, (prompt, answer, t_prompt) in enumerate(rows):
        s = encode_pair(s_tok, prompt, answer, encoder_decoder=False, max_length=1024)
        t = encode_pair(t_tok, t_prompt, answer, encoder_decoder=False, max_length=None)
        items.append(EncodedItem(f"r{i}", s, t, None))
    return s_tok, t_tok, DistillationCollator(s_tok.pad_token_id, t_tok.pad_token_id)(items), rows


def _setup(args, case: str, shared: dict):
    """(training config, batch on device, teacher or None, student, optimizer) for one method."""
    from safetensors.torch import load_file

    device = torch.device(args.device)
    s_tok, online_batch = shared["s_tok"], shared["online_batch"]
    sft_batch = {k: v for k, v in online_batch.items() if not k.startswith("teacher_")}
    teacher = None
    if case == "sft-teacher":
        tcfg, batch = TrainingConfig(method="sft-teacher"), sft_batch
    elif case == "uld-online":
        tcfg, batch = TrainingConfig(method="uld", teacher_signal="online", top_k=None), online_batch
        if "teacher" not in shared:
            shared["teacher"] = load_model(_local(Path(args.teacher)), dtype=args.teacher_dtype).to(device).eval()
            shared["teacher"].requires_grad_(False)
        teacher = shared["teacher"]
    else:
        sig = load_file(args.signal)  # what the teacher stage caches: fp16 top-k probabilities + tail
        tcfg = TrainingConfig(method="uld", teacher_signal="cached")
        batch = dict(sft_batch, signal_probs=sig["probs"].float(), signal_tail=sig["tail"], signal_lengths=sig["lengths"])
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    model = load_model(_local(Path(args.student))).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.1)
    return tcfg, batch, teacher, model, opt


def _step(args, s_tok, tcfg, batch, teacher, model, opt) -> tuple[float, float]:
    """One optimizer step; (seconds, loss)."""
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
        out = compute_losses(model, batch, tcfg, encoder_decoder=False, teacher=teacher, student_eos_id=s_tok.eos_token_id)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, float(out.loss.detach())


def _shared(args) -> dict:
    s_tok, _, online_batch, _ = _batches(args)
    return {"s_tok": s_tok, "online_batch": online_batch}


def run_case(args) -> dict:
    """Peak memory of one method, alone in this process (one warm-up + one step)."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    shared = _shared(args)
    setup = _setup(args, args.case, shared)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):
        _step(args, shared["s_tok"], *setup)
    return {"peak_memory_mb": round(_peak_mb(device), 1)}


def interleaved_times(args) -> dict:
    """Step times of the three methods taken in turn (A, B, C, A, B, C, ...) in one process, so that a
    change in machine load during the run hits every method alike."""
    torch.manual_seed(0)
    shared = _shared(args)
    setups = {case: _setup(args, case, shared) for case in CASES}
    times: dict[str, list[float]] = {c: [] for c in CASES}
    losses: dict[str, float] = {}
    for step in range(args.warmup + args.steps):
        for case in CASES:
            dt, loss = _step(args, shared["s_tok"], *setups[case])
            if step >= args.warmup:
                times[case].append(dt)
            losses[case] = loss
    n_tokens = int(shared["online_batch"]["attention_mask"].sum())
    return {c: {"median_step_s": statistics.median(times[c]), "step_times_s": times[c],
                "tokens_per_s": n_tokens / statistics.median(times[c]), "loss_last": losses[c],
                "student_tokens_per_batch": n_tokens,
                "teacher_tokens_per_batch": int(shared["online_batch"]["teacher_attention_mask"].sum())}
            for c in CASES}


def bench(args) -> dict:
    """Cache the teacher signal once; peak memory of each method in its own process; step times of
    the three methods interleaved in this process."""
    import subprocess
    import sys
    import tempfile

    from safetensors.torch import save_file

    from uld.teacher import online_teacher_signal

    _, t_tok, _, rows = _batches(args)
    teacher = load_model(_local(Path(args.teacher)), dtype=args.teacher_dtype).eval()
    sig, lengths = online_teacher_signal(teacher, t_tok, [r[2] for r in rows], [r[1] for r in rows], args.top_k,
                                         batch_size=args.batch_size)
    del teacher
    memory = {}
    with tempfile.TemporaryDirectory() as tmp:
        signal = Path(tmp) / "signal.safetensors"
        save_file({"probs": sig.probs.half().contiguous(), "tail": sig.tail.contiguous(), "lengths": lengths}, str(signal))
        for case in CASES:
            out = Path(tmp) / f"{case}.json"
            cmd = [sys.executable, __file__, "--case", case, "--case-out", str(out), "--signal", str(signal),
                   "--student", args.student, "--teacher", args.teacher, "--batch-size", str(args.batch_size),
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device,
                   "--teacher-dtype", args.teacher_dtype] + (["--bf16"] if args.bf16 else [])
            subprocess.run(cmd, check=True)
            memory[case] = json.loads(out.read_text())["peak_memory_mb"]
            print(case, "peak memory (MB)", memory[case], flush=True)
        args.signal = str(signal)
        results = interleaved_times(args)
    for case, r in results.items():
        r["peak_memory_mb"] = memory[case]
    base = results["sft-teacher"]["median_step_s"]
    for r in results.values():
        r["time_ratio_to_sft_teacher"] = r["median_step_s"] / base
    first = results["sft-teacher"]
    return {
        "student": str(args.student),
        "teacher": str(args.teacher),
        "batch_size": args.batch_size,
        "student_tokens_per_batch": first["student_tokens_per_batch"],
        "teacher_tokens_per_batch": first["teacher_tokens_per_batch"],
        "top_k_signal": args.top_k,
        "steps_timed": args.steps,
        "warmup_steps": args.warmup,
        "device": str(args.device),
        "threads": torch.get_num_threads(),
        "bf16_autocast": args.bf16,
        "teacher_dtype": args.teacher_dtype,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "memory_note": "CPU: peak resident memory of a process that ran only that method for 2 steps (model, optimizer, "
        "teacher if any); CUDA: peak allocated",
        "results": results,
        "target": "uld-cached time <= 1.25x sft-teacher",
        "target_met": results["uld-cached"]["time_ratio_to_sft_teacher"] <= 1.25,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", default=str(SMALL / "smollm2-135m-instruct"))
    p.add_argument("--teacher", default=str(SMALL / "gemma-3-270m"))
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--top-k", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the student")
    p.add_argument("--teacher-dtype", default="bfloat16")
    p.add_argument("--out", default=str(REPO / "results" / "benchmarks" / "training"))
    p.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    p.add_argument("--case-out", help=argparse.SUPPRESS)
    p.add_argument("--signal", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        Path(args.case_out).write_text(json.dumps(run_case(args)))
        return
    report = bench(args)
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), report)
    lines = [
        "# Student training throughput: sft-teacher vs ULD (online teacher) vs ULD (cached signal)",
        "",
        f"Student `{Path(report['student']).name}`, teacher `{Path(report['teacher']).name}` ({report['teacher_dtype']}), "
        f"batch {report['batch_size']} ({report['student_tokens_per_batch']} student tokens), top-k {report['top_k_signal']}, "
        f"{report['steps_timed']} timed steps per method after {report['warmup_steps']} warm-up, taken in turn "
        f"(sft, online, cached, sft, ...) in one process, device {report['device']} "
        f"({report['threads']} threads), torch {report['torch']}.",
        "",
        "| method | median step (s) | tokens/s | time / sft-teacher | peak memory (MB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in report["results"].items():
        lines.append(f"| {name} | {r['median_step_s']:.3f} | {r['tokens_per_s']:.0f} | {r['time_ratio_to_sft_teacher']:.2f}x | {r['peak_memory_mb']:.0f} |")
    spread = "; ".join(f"{n}: " + ", ".join(f"{t:.2f}" for t in r["step_times_s"]) for n, r in report["results"].items())
    lines += ["", f"Target: {report['target']} -> {'met' if report['target_met'] else 'NOT met'}.", "",
              f"Step times (s): {spread}.", "",
              f"Memory: {report['memory_note']}.", ""]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Throughput of every stage against this machine's matmul roofline, and today's path vs the fast one.

1. Roofline: fp32 and bf16 matmul GFLOP/s on 1 and 2 threads (square ``--matmul-size`` matrices).
2. Stages, each with wall time and achieved GFLOP/s (``2 x parameters x tokens`` per forward, 3x that for
   a training step; attention's own FLOPs are left out, so these are lower bounds) and that as a fraction
   of the roofline of the precision the stage runs in: model load, evaluation, training step,
   validation, checkpoint save, teacher generation, signal pass.
3. Pairs measured in this one run (every figure is a ratio against a baseline of the same run):
   evaluation  today's path (fp32 weights, batch 32) vs the fast one (``evaluation.dtype: bfloat16``, the
               batch size that measured fastest); fp32 at that batch size must give identical answers
   training    today's bf16 step (seeded random batches, torch's per-tensor AdamW) vs fused AdamW on the
               same batches (isolates that lever; losses compared) vs fused + ``training.batching: length``
               in useful (non-padding) tokens/s, over one epoch of the headroom design's rows
   student run measured end to end with ``uld run`` on the headroom baseline config (teacher stage cached,
               46 steps, 500 questions): today's config as one run on two threads against the fast config
               (bf16 evaluation, length buckets, fused AdamW) as two runs side by side on one thread each
               (``--workers 2``), plus the fast config as one run on two threads to split the levers. The
               baseline run's trained student is then the model of the evaluation pair (bf16 agreement on a
               trained student). ``--quick`` skips it and estimates from the stages instead.
   both cores  the fast training steps as one run on two threads vs two runs on one thread each at once

Writes ``<out>/throughput.{json,md}`` (default ``results/benchmarks``). The numbers are only as good as the
machine is quiet: run it alone.

    python scripts/bench_throughput.py                       # headroom sizes: SmolLM2-135M-Instruct, 500 dev questions
    python scripts/bench_throughput.py --quick --student DIR --teacher DIR --data-dir tests/fixtures/data --out /tmp/b
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

from uld.config import DataConfig
from uld.data import collate, encode_pair, encode_prompt, get_task, test_split, training_pool
from uld.generation import greedy_generate
from uld.io import atomic_write_json, atomic_write_text
from uld.metrics import score_examples
from uld.models import ModelEntry, ResolvedModel, load_model, load_tokenizer
from uld.signal import answer_logits
from uld.training import EncodedItem, EpochSampler, LengthBucketSampler
from uld.training.objectives import answer_nll, student_answer_logits
from uld.training.rows import item_length
from uld.workers import die_with_parent

SMALL = Path(os.environ.get("SMALL_MODELS_DIR", Path.home() / ".cache" / "small-models"))
REPO = Path(__file__).resolve().parents[1]
HEADROOM_CFG = REPO / "experiments" / "headroom" / "headroom_2_baseline.yaml"
# the training levers only: bf16 evaluation changed a trained student's answers (see docs/throughput.md),
# so the end-to-end fast config keeps fp32 evaluation
FAST_OVERRIDES = ["training.batching=length", "training.optim.fused=true"]
HEADROOM = dict(train_size=200, val_fraction=0.1, max_length=384, batch_size=8, steps=46, eval_max_new_tokens=24)


def _local(path: Path) -> ResolvedModel:
    return ResolvedModel(path.name, ModelEntry(hub_id=path.name, arch="decoder"), str(path), None, "float32")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _bf16_units() -> list[str]:
    """The CPU's bf16 matrix/vector features (AMX on Intel, AVX-512 BF16 on AMD and Intel)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f in {"amx_bf16", "amx_tile", "avx512_bf16", "avx512bf16"})


def _gflops(flops: float, seconds: float) -> float:
    return round(flops / seconds / 1e9, 2) if seconds > 0 else 0.0


# ---- roofline --------------------------------------------------------------------------------------


def roofline(size: int, reps: int) -> dict[str, float]:
    out = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
            a @ b  # warm-up: kernel choice, page faults
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                a @ b
                times.append(time.perf_counter() - t)
            out[f"{name}_matmul_gflops_{threads}t"] = _gflops(2 * size**3, min(times))
    return out


# ---- model sizes -----------------------------------------------------------------------------------


def param_counts(model) -> tuple[int, int]:
    """(body parameters a token goes through, vocabulary-projection parameters) of a causal LM."""
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    tied = head.data_ptr() == emb.data_ptr()
    return total - emb.numel() - (0 if tied else head.numel()), head.numel()


def _stage(seconds: float, flops: float, roof: float, **extra) -> dict:
    g = _gflops(flops, seconds)
    return {"wall_s": round(seconds, 3), "gflops": g, "roofline_fraction": round(g / roof, 4) if roof else None, **extra}


# ---- evaluation ------------------------------------------------------------------------------------


def _generate(model, tok, ids, batch_size, max_new_tokens):
    return greedy_generate(model, tok, ids, max_new_tokens=max_new_tokens, batch_size=batch_size, first_line=True)


def _eval_flops(out, body: int, head: int) -> float:
    new = sum(out.n_tokens)
    return 2.0 * body * (out.prefill_tokens + new) + 2.0 * head * new


def bench_evaluation(args, student: Path, roof: dict) -> dict:
    tok = load_tokenizer(_local(student))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    task = get_task("squad")
    examples = test_split(DataConfig(task="squad", dir=args.data_dir, test_size=args.eval_items))
    ids = [encode_prompt(tok, task.student_prompt(ex)) for ex in examples]
    refs = [task.references(ex, "authors") for ex in examples]
    models = {d: load_model(_local(student), dtype=d).eval() for d in ("float32", "bfloat16")}
    body, head = param_counts(models["float32"])
    t = args.threads

    # batch size by measurement, on the first questions, in the fast precision
    probe = ids[: max(args.batch_sizes)]
    probe_rate = {}
    for bs in args.batch_sizes:
        o = _generate(models["bfloat16"], tok, probe, bs, args.max_new_tokens)
        probe_rate[bs] = len(probe) / o.seconds
    best_bs = max(probe_rate, key=probe_rate.get)

    _generate(models["float32"], tok, ids[:1], 1, args.max_new_tokens)  # warm-up, as the probe warmed bf16
    base = _generate(models["float32"], tok, ids, args.baseline_batch_size, args.max_new_tokens)
    fast = _generate(models["bfloat16"], tok, ids, best_bs, args.max_new_tokens)
    fp32_same_bs = _generate(models["float32"], tok, ids, best_bs, args.max_new_tokens)
    # fp32 weights, bf16 matmuls (norms, softmax and the residual stream stay fp32): does the precision
    # of the weights or of the products change the answers?
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = _generate(models["float32"], tok, ids, best_bs, args.max_new_tokens)
    f1 = {k: 100 * statistics.mean(r["f1"] for r in score_examples(o.answers, refs, ["f1"]))
          for k, o in (("fp32", base), ("bf16", fast), ("autocast", autocast))}
    n = len(ids)
    trained = args.student_is_trained
    return {
        "n_items": n, "max_new_tokens": args.max_new_tokens, "threads": t,
        "baseline": {"dtype": "float32", "batch_size": args.baseline_batch_size},
        "fast": {"dtype": "bfloat16", "batch_size": best_bs, "probe_items_per_s": {str(k): round(v, 3) for k, v in probe_rate.items()}},
        "baseline_items_per_s": round(n / base.seconds, 3),
        "fast_items_per_s": round(n / fast.seconds, 3),
        "speedup": round(base.seconds / fast.seconds, 3),
        "fp32_identical": fp32_same_bs.answers == base.answers,
        "bf16_agreement": round(sum(a == b for a, b in zip(fast.answers, base.answers)) / n, 4),
        "fp32_f1": round(f1["fp32"], 2), "bf16_f1": round(f1["bf16"], 2),
        "bf16_f1_delta": round(f1["bf16"] - f1["fp32"], 2),
        "bf16_autocast": {"items_per_s": round(n / autocast.seconds, 3), "speedup": round(base.seconds / autocast.seconds, 3),
                          "agreement": round(sum(a == b for a, b in zip(autocast.answers, base.answers)) / n, 4),
                          "f1": round(f1["autocast"], 2), "f1_delta": round(f1["autocast"] - f1["fp32"], 2)},
        "agreement_model": "trained student" if trained else "untrained student (answers at length; the issue asks for a trained one)",
        "stages": {
            "evaluation_fp32": _stage(base.seconds, _eval_flops(base, body, head), roof[f"fp32_matmul_gflops_{t}t"],
                                      pad_tokens=base.pad_tokens, prefill_tokens=base.prefill_tokens),
            "evaluation_bf16": _stage(fast.seconds, _eval_flops(fast, body, head), roof[f"bf16_matmul_gflops_{t}t"],
                                      pad_tokens=fast.pad_tokens, prefill_tokens=fast.prefill_tokens),
        },
    }, models["float32"]


# ---- training --------------------------------------------------------------------------------------


def _training_items(args, tok) -> tuple[list, list]:
    """The headroom design's rows: the first ``train_size`` items of the SQuAD pool, 10% held out,
    student prompt + gold answer (the teacher's answers are as short), cut to ``max_length``."""
    task = get_task("squad")
    pool = training_pool(DataConfig(task="squad", dir=args.data_dir, train_size=args.train_size, val_fraction=0.1))

    def enc(rows):
        return [EncodedItem(str(ex.id), encode_pair(tok, task.student_prompt(ex), task.gold_answer(ex), encoder_decoder=False,
                                                    max_length=args.max_length, context=ex.context)) for ex in rows]

    return enc(pool.train), enc(pool.val)


def _batches(items, order, batch_size, pad_id) -> list[dict]:
    return [collate([items[i].student for i in order[b : b + batch_size]], pad_id, "right") for b in range(0, len(order), batch_size)]


def _train(model_dir: Path, batches: list[dict], *, fused: bool, seed: int, head: int, body: int) -> dict:
    """Optimizer steps of a bf16-autocast student over ``batches`` (CE on the answers, answer-only logits,
    as the headroom configs train): per-step seconds and losses."""
    torch.manual_seed(seed)
    model = load_model(_local(model_dir)).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.1, **({"fused": True} if fused else {"foreach": False}))
    secs, losses, useful, padded, flops = [], [], 0, 0, 0.0

    def loss_of(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, labels, causal = student_answer_logits(model, batch, False, answer_only=True)
        nll, n = answer_nll(logits, labels, causal=causal)
        return nll.sum() / n.sum().clamp_min(1), n

    loss_of(batches[0])[0].backward()  # warm-up (kernel choice, allocations), no update
    model.zero_grad(set_to_none=True)
    for batch in batches:
        t = time.perf_counter()
        loss, n = loss_of(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        secs.append(time.perf_counter() - t)
        losses.append(float(loss.detach()))
        useful += int(batch["attention_mask"].sum())
        padded += batch["input_ids"].numel()
        flops += 6.0 * body * batch["input_ids"].numel() + 6.0 * head * int(n.sum())
    return {"seconds": sum(secs), "step_s": [round(s, 3) for s in secs], "losses": losses, "useful_tokens": useful,
            "padded_tokens": padded, "flops": flops, "model": model, "optimizer": opt}


def _timed_training(model_dir: Path, batches: list[dict], threads: int, seed: int) -> tuple[float, int]:
    """(seconds, useful tokens) of fused-AdamW steps over ``batches`` on ``threads`` threads (a worker's job)."""
    torch.set_num_threads(threads)
    r = _train(model_dir, batches, fused=True, seed=seed, head=0, body=0)
    return r["seconds"], r["useful_tokens"]


def side_by_side(args, student: Path, batches: list[dict]) -> dict:
    """The same steps as one run on two threads, and as two runs of half the steps on one thread each
    at the same time (what ``uld table --workers 2`` does): useful tokens per second of wall time."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    work = batches if len(batches) >= 2 else batches * 2  # each worker needs a batch
    s, tokens = _timed_training(student, work, 2, args.seed)
    torch.set_num_threads(args.threads)
    halves = [work[0::2], work[1::2]]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=die_with_parent) as pool:
        t = time.perf_counter()
        done = list(pool.map(_timed_training, [student, student], halves, [1, 1], [args.seed, args.seed]))
        wall = time.perf_counter() - t  # includes each worker's start and model load: what a real worker pays
    one, two = tokens / s, sum(n for _, n in done) / wall
    return {"one_run_two_threads_tokens_per_s": round(one, 2), "two_runs_one_thread_tokens_per_s": round(two, 2),
            "speedup": round(two / one, 3), "steps": len(work)}


def bench_training(args, student: Path, roof: dict) -> tuple[dict, dict]:
    tok = load_tokenizer(_local(student), padding_side="right")
    train_items, val_items = _training_items(args, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    bs, n_steps = args.batch_size, args.train_steps
    plain = list(EpochSampler(len(train_items), args.seed))
    bucketed = list(LengthBucketSampler([item_length(it) for it in train_items], bs, args.seed))
    random_batches = _batches(train_items, plain, bs, pad)[:n_steps]
    bucket_batches = _batches(train_items, bucketed, bs, pad)[:n_steps]
    probe = load_model(_local(student))
    body, head = param_counts(probe)
    del probe
    roof_bf16 = roof[f"bf16_matmul_gflops_{args.threads}t"]

    base = _train(student, random_batches, fused=False, seed=args.seed, head=head, body=body)
    k = min(10, n_steps)
    same = _train(student, random_batches[:k], fused=True, seed=args.seed, head=head, body=body)
    fast = _train(student, bucket_batches, fused=True, seed=args.seed, head=head, body=body)
    rel = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(base["losses"][:k], same["losses"]))
    for r in (base, same):  # free two students' weights and moments before the third is used
        del r["model"], r["optimizer"]

    def rate(r):
        return r["useful_tokens"] / r["seconds"]

    out = {
        "steps": n_steps, "batch_size": bs, "threads": args.threads, "precision": "bf16 autocast, answer-only logits",
        "baseline": "seeded random batches, per-tensor AdamW (today's bf16 path)",
        "fast": "training.batching=length, fused AdamW",
        "baseline_tokens_per_s": round(rate(base), 2),
        "fused_only_tokens_per_s": round(same["useful_tokens"] / same["seconds"], 2),
        "fused_only_speedup_first_steps": round((sum(base["step_s"][:k]) / same["seconds"]), 3),
        "fast_tokens_per_s": round(rate(fast), 2),
        "speedup": round(rate(fast) / rate(base), 3),
        "padding_fraction": {"baseline": round(1 - base["useful_tokens"] / base["padded_tokens"], 4),
                             "fast": round(1 - fast["useful_tokens"] / fast["padded_tokens"], 4)},
        "max_loss_rel_diff": rel, "loss_steps_compared": k,
        "losses": {"baseline": base["losses"][:k], "fused": same["losses"]},
    }
    stages = {
        "training_step_baseline": _stage(statistics.median(base["step_s"]), base["flops"] / len(base["step_s"]), roof_bf16),
        "training_step_fast": _stage(statistics.median(fast["step_s"]), fast["flops"] / len(fast["step_s"]), roof_bf16),
    }
    # validation: one pass over the held-out rows, as the trainer does (bf16 autocast, no gradients)
    model = fast["model"].eval()
    vb = _batches(val_items, list(range(len(val_items))), bs, pad)
    t, vflops = time.perf_counter(), 0.0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for b in vb:
            logits, labels, causal = student_answer_logits(model, b, False, answer_only=True)
            vflops += 2.0 * body * b["input_ids"].numel() + 2.0 * head * int((labels != -100).sum())
    stages["validation"] = _stage(time.perf_counter() - t, vflops, roof_bf16, rows=len(val_items))
    # checkpoint: the HF folder (best/last) and the resumable state's tensors (weights + AdamW moments)
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        model.save_pretrained(Path(tmp) / "hf", safe_serialization=True)
        hf_s = time.perf_counter() - t
        state = {f"{i}.{k}": v.contiguous() for i, s in enumerate(fast["optimizer"].state.values())
                 for k, v in s.items() if isinstance(v, torch.Tensor) and v.dim() > 0}
        t = time.perf_counter()
        save_file(state, str(Path(tmp) / "optimizer.safetensors"))
        state_s = time.perf_counter() - t
    stages["checkpoint_save"] = {"wall_s": round(hf_s, 3), "optimizer_state_wall_s": round(state_s, 3)}
    # the side-by-side workers load their own students: free this one and its moments first (an 11 GB
    # parent beside two workers was killed for memory on a 24 GB machine)
    del fast["model"], fast["optimizer"], model, state
    import gc

    gc.collect()
    if args.side_by_side:  # the end-to-end runs measure it otherwise, on whole runs
        out["side_by_side"] = side_by_side(args, student, bucket_batches)
    return out, stages


# ---- teacher stage ---------------------------------------------------------------------------------


def bench_teacher(args, teacher: Path, roof: dict) -> dict:
    tok = load_tokenizer(_local(teacher), padding_side="right")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = load_model(_local(teacher)).eval()
    body, head = param_counts(model)
    task = get_task("squad")
    rows = list(training_pool(DataConfig(task="squad", dir=args.data_dir, train_size=args.teacher_items, val_fraction=0.0)).train)
    ids = [encode_prompt(tok, task.student_prompt(ex)) for ex in rows]
    gen = _generate(model, tok, ids, args.baseline_batch_size, args.max_new_tokens)
    roof32 = roof[f"fp32_matmul_gflops_{args.threads}t"]
    stages = {"teacher_generation": _stage(gen.seconds, _eval_flops(gen, body, head), roof32, items=len(ids))}
    encs = [encode_pair(tok, task.student_prompt(ex), a, encoder_decoder=False, max_length=None) for ex, a in zip(rows, gen.answers) if a]
    t, flops = time.perf_counter(), 0.0
    with torch.no_grad():
        for b in range(0, len(encs), args.batch_size):
            batch = collate(encs[b : b + args.batch_size], tok.pad_token_id, "right")
            logits, mask = answer_logits(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
            flops += 2.0 * body * batch["input_ids"].numel() + 2.0 * head * logits.shape[0] * logits.shape[1]
    stages["signal_pass"] = _stage(time.perf_counter() - t, flops, roof32, items=len(encs))
    return stages


# ---- a whole student run, end to end -----------------------------------------------------------------


def _uld_run(args, store: Path, seeds: list[int], overrides: list[str], workers: int, log_name: str,
             options: tuple[str, ...] = ()) -> float:
    """Wall seconds of ``uld run`` on the headroom baseline config (lambda=0 arm) for ``seeds`` in ``store``."""
    cmd = [sys.executable, "-m", "uld", "run", str(HEADROOM_CFG), f"output_dir={store}", "training.method=sft-teacher",
           "grid={training.seed: [%s]}" % ", ".join(map(str, seeds)), *args.run_overrides, *overrides, "--workers", str(workers),
           *options]
    env = dict(os.environ, ULD_DATA_DIR=args.data_dir, ULD_MODELS_DIR=str(SMALL), PYTHONPATH=str(REPO / "src"))
    env.pop("OMP_NUM_THREADS", None)
    print("$", " ".join(cmd), flush=True)
    with open(store / log_name, "w") as log:
        t = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=log, stderr=subprocess.STDOUT)
        return time.perf_counter() - t


def _fresh_store(root: Path, name: str, args) -> Path:
    """A store holding only the cached teacher stage (copied from results/teacher), so nothing else is reused."""
    store = root / name
    shutil.rmtree(store, ignore_errors=True)
    (store / "teacher").mkdir(parents=True)
    for stage in (REPO / "results" / "teacher").iterdir():
        shutil.copytree(stage, store / "teacher" / stage.name)
    # the teacher stage must come from the cache: `--stages teacher` finds it (or computes it, untimed)
    _uld_run(args, store, [1], [], 1, "teacher.log", ("--stages", "teacher"))
    return store


def _f1_of(store: Path) -> list[float]:
    import json

    return [round(json.loads(p.read_text())["metrics"]["f1"], 2) for p in sorted((store / "runs").glob("*/scores.json"))]


def bench_student_run(args, root: Path) -> dict:
    """Today's config one run on two threads vs the fast config two runs side by side (and one run on two
    threads): seconds per run. ``_best`` is the baseline run's trained student (its best checkpoint)."""
    base_store = _fresh_store(root, "baseline", args)
    base_s = _uld_run(args, base_store, [11], [], 1, "run.log")
    fast1_store = _fresh_store(root, "fast_one", args)
    fast1_s = _uld_run(args, fast1_store, [11], FAST_OVERRIDES, 1, "run.log")
    fast2_store = _fresh_store(root, "fast_two", args)
    fast2_wall = _uld_run(args, fast2_store, [11, 12], FAST_OVERRIDES, 2, "run.log")
    best = next((base_store / "runs").glob("*/checkpoints/best"))
    return {
        "estimated": False,
        "config": str(HEADROOM_CFG.relative_to(REPO)) + " (training.method=sft-teacher, seeds 11 and 12)",
        "baseline": "today's config, one run, two threads (uld run --workers 1)",
        "fast": "fast config (" + " ".join(FAST_OVERRIDES) + "; fp32 evaluation), two runs side by side, one thread each "
                "(uld run --workers 2)",
        "baseline_s": round(base_s, 1),
        "fast_s": round(fast2_wall / 2, 1),
        "fast_pair_wall_s": round(fast2_wall, 1),
        "speedup": round(base_s / (fast2_wall / 2), 3),
        "fast_one_run_two_threads_s": round(fast1_s, 1),
        "config_levers_speedup": round(base_s / fast1_s, 3),
        "side_by_side_speedup": round(fast1_s / (fast2_wall / 2), 3),
        "test_f1": {"baseline": _f1_of(base_store), "fast_one": _f1_of(fast1_store), "fast_two": _f1_of(fast2_store)},
        "_best": str(best),
    }


class Phases:
    """Each finished phase's result in ``<dir>/phases.json``: a benchmark killed part way (for memory,
    say) resumes at the phase it was in instead of measuring everything again."""

    def __init__(self, folder: Optional[Path]):
        import json

        self.path = folder / "phases.json" if folder is not None else None
        self.done = json.loads(self.path.read_text()) if self.path is not None and self.path.is_file() else {}

    def run(self, name: str, fn):
        if name in self.done:
            print(f"phase {name}: measured before, read from {self.path}", flush=True)
            return self.done[name]
        self.done[name] = fn()
        if self.path is not None:
            atomic_write_json(self.path, self.done)
        return self.done[name]


# ---- report ----------------------------------------------------------------------------------------


def student_run_estimate(ev: dict, tr: dict, stages: dict, load_s: float, n_eval: int, steps: int) -> dict:
    """Seconds of one headroom student run from the stage timings (not measured end to end)."""
    save = stages["checkpoint_save"]
    fixed = load_s + 2 * stages["validation"]["wall_s"] + 4 * save["wall_s"] + 2 * (save["wall_s"] + save["optimizer_state_wall_s"])
    step_base = tr["_base_step_s"]
    step_fast = tr["_fast_step_s"]
    base = fixed + steps * step_base + n_eval / ev["baseline_items_per_s"]
    fast = fixed + steps * step_fast + n_eval / ev["fast_items_per_s"]
    return {"baseline_s": round(base, 3), "fast_s": round(fast, 3), "speedup": round(base / fast, 3),
            "estimated": True, "how": f"load + {steps} steps + 2 validations + 4 model saves + 2 resumable states + {n_eval} questions"}


def render_md(res: dict) -> str:
    r, ev, tr, sr = res["roofline"], res["evaluation"], res["training"], res["student_run"]
    lines = [
        "# Throughput against the matmul roofline", "",
        f"`{res['command']}` on {res['machine']['cpu']} ({res['machine']['cores']} cores), torch {res['machine']['torch']}, "
        f"{res['threads']} thread(s). Every ratio is against a baseline measured in the same run.", "",
        "| matmul | 1 thread | 2 threads |", "|---|---:|---:|",
        f"| fp32 GFLOP/s | {r['fp32_matmul_gflops_1t']} | {r['fp32_matmul_gflops_2t']} |",
        f"| bf16 GFLOP/s | {r['bf16_matmul_gflops_1t']} | {r['bf16_matmul_gflops_2t']} |", "",
        "| stage | wall s | GFLOP/s | of roofline |", "|---|---:|---:|---:|",
    ]
    for name, s in res["stages"].items():
        frac = s.get("roofline_fraction")
        lines.append(f"| {name} | {s['wall_s']} | {s.get('gflops', '')} | {'' if frac is None else f'{100 * frac:.1f}%'} |")
    lines += [
        "", f"**Evaluation** ({ev['n_items']} SQuAD dev questions, {ev['max_new_tokens']} new tokens): fp32 batch "
        f"{ev['baseline']['batch_size']} {ev['baseline_items_per_s']} items/s, bf16 batch {ev['fast']['batch_size']} "
        f"{ev['fast_items_per_s']} items/s: **{ev['speedup']}x**. fp32 at the fast batch size identical: {ev['fp32_identical']}; "
        f"bf16 answers identical to fp32: {100 * ev['bf16_agreement']:.1f}%, F1 {ev['bf16_f1']} vs {ev['fp32_f1']} "
        f"({ev['bf16_f1_delta']:+}) on the {ev['agreement_model']}. bf16 autocast (fp32 weights, bf16 matmuls): "
        f"{ev['bf16_autocast']['items_per_s']} items/s ({ev['bf16_autocast']['speedup']}x), "
        f"{100 * ev['bf16_autocast']['agreement']:.1f}% identical, F1 {ev['bf16_autocast']['f1_delta']:+}.", "",
        f"**Training** ({tr['steps']} steps of {tr['batch_size']} rows, {tr['precision']}): useful tokens/s "
        f"{tr['baseline_tokens_per_s']} today, {tr['fast_tokens_per_s']} fast: **{tr['speedup']}x** (padding "
        f"{100 * tr['padding_fraction']['baseline']:.1f}% -> {100 * tr['padding_fraction']['fast']:.1f}%); fused AdamW alone on "
        f"the same batches: {tr['fused_only_speedup_first_steps']}x, first {tr['loss_steps_compared']} losses within "
        f"{tr['max_loss_rel_diff']:.2e} relative.", "",
        (f"**Student run** (estimated from the stages, {sr['how']}): {sr['baseline_s']} s -> {sr['fast_s']} s, "
         f"**{sr['speedup']}x**." if sr.get("estimated") else
         f"**Student run, end to end** (`uld run` on {sr['config']}): {sr['baseline']}: {sr['baseline_s']} s; "
         f"{sr['fast']}: {sr['fast_pair_wall_s']} s for the pair, {sr['fast_s']} s per run: **{sr['speedup']}x**. "
         f"The fast config as one run on two threads: {sr['fast_one_run_two_threads_s']} s ({sr['config_levers_speedup']}x "
         f"from the config levers, {sr['side_by_side_speedup']}x more from running side by side). Test F1 of the runs "
         f"(500 questions): baseline {sr['test_f1']['baseline']}, fast one run {sr['test_f1']['fast_one']}, fast pair "
         f"{sr['test_f1']['fast_two']}; the stage estimate was {sr['estimate_from_stages']['speedup']}x."), "",
    ]
    if "side_by_side" in tr:
        sbs = tr["side_by_side"]
        lines += [f"**Using both cores** ({sbs['steps']} fast training steps): one run on two threads "
                  f"{sbs['one_run_two_threads_tokens_per_s']} useful tokens/s, two runs side by side on one thread "
                  f"each {sbs['two_runs_one_thread_tokens_per_s']} (worker start and model load included): "
                  f"**{sbs['speedup']}x**.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--student", default=str(SMALL / "smollm2-135m-instruct"))
    p.add_argument("--teacher", default=str(SMALL / "gemma-3-270m"), help="skipped (and said so) when missing")
    p.add_argument("--student-is-trained", action="store_true", help="the student is a trained headroom checkpoint")
    p.add_argument("--eval-student", help="model of the evaluation pair (default: the end-to-end baseline run's trained "
                   "student; with --quick or --no-student-run, --student)")
    p.add_argument("--no-student-run", action="store_true", help="skip the end-to-end runs; estimate the run from the stages")
    p.add_argument("--run-overrides", nargs="*", default=[], metavar="key=value",
                   help="extra overrides of the end-to-end runs (a smaller look, e.g. training.max_steps=2 data.test_size=16)")
    p.add_argument("--work-dir", help="stores of the end-to-end runs and phases.json, each finished phase's result: rerun with "
                   "the same folder and a killed benchmark resumes at the phase it was in (default: a temporary folder, removed after)")
    p.add_argument("--data-dir", default=os.environ.get("ULD_DATA_DIR", str(REPO.parent / "shared" / "data")))
    p.add_argument("--out", default=str(REPO / "results" / "benchmarks"))
    p.add_argument("--threads", type=int, default=2, choices=[1, 2])
    p.add_argument("--quick", action="store_true", help="tiny sizes (tests)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--eval-items", type=int, help="questions evaluated (default 500; --quick 6)")
    p.add_argument("--train-steps", type=int, help="timed optimizer steps per variant (default one epoch, 23)")
    args = p.parse_args(argv)
    eval_items, train_steps = args.eval_items, args.train_steps
    quick = args.quick
    args.matmul_size, reps = (256, 2) if quick else (2048, 5)
    args.eval_items = 6 if quick else 500
    args.teacher_items = 4 if quick else 64
    args.max_new_tokens = 4 if quick else HEADROOM["eval_max_new_tokens"]
    args.batch_sizes = [2, 3] if quick else [16, 32, 64]
    args.baseline_batch_size = 2 if quick else 32
    args.train_size = 15 if quick else HEADROOM["train_size"]
    args.max_length = HEADROOM["max_length"]
    args.batch_size = 4 if quick else HEADROOM["batch_size"]
    args.train_steps = 2 if quick else 23  # one epoch of the headroom design (180 rows / 8)
    args.eval_items = eval_items or args.eval_items
    args.train_steps = train_steps or args.train_steps

    phases = Phases(Path(args.work_dir) if args.work_dir else None)
    roof = phases.run("roofline", lambda: roofline(args.matmul_size, reps))
    torch.set_num_threads(args.threads)
    end_to_end, eval_student = None, Path(args.eval_student or args.student)
    work = tempfile.TemporaryDirectory(prefix="uld-bench-") if not args.work_dir else None
    whole_runs = not (quick or args.no_student_run)
    args.side_by_side = not whole_runs  # whole runs measure side by side themselves
    if whole_runs:
        end_to_end = phases.run("student_run", lambda: bench_student_run(args, Path(args.work_dir or work.name)))
        if not args.eval_student:
            eval_student, args.student_is_trained = Path(end_to_end["_best"]), True

    def load_time():
        load_model(_local(Path(args.student)))  # the first load also imports the model's code
        t = time.perf_counter()
        load_model(_local(Path(args.student)))
        return {"wall_s": round(time.perf_counter() - t, 3)}

    stages = {"model_load": phases.run("model_load", load_time)}
    ev = dict(phases.run("evaluation", lambda: bench_evaluation(args, eval_student, roof)[0]))
    stages.update(ev.pop("stages"))
    tr, tr_stages = phases.run("training", lambda: bench_training(args, Path(args.student), roof))
    stages.update(tr_stages)
    tr = dict(tr)
    tr["_base_step_s"], tr["_fast_step_s"] = (stages["training_step_baseline"]["wall_s"], stages["training_step_fast"]["wall_s"])
    teacher = Path(args.teacher)
    if teacher.is_dir():
        stages.update(phases.run("teacher", lambda: bench_teacher(args, teacher, roof)))
    else:
        stages["teacher_generation"] = stages["signal_pass"] = {"wall_s": None, "skipped": f"no teacher at {teacher}"}
    sr = student_run_estimate(ev, tr, stages, stages["model_load"]["wall_s"], ev["n_items"], 2 if quick else HEADROOM["steps"])
    if end_to_end is not None:
        end_to_end = {k: v for k, v in end_to_end.items() if k != "_best"}
        end_to_end["estimate_from_stages"] = sr
        sr = end_to_end
    del tr["_base_step_s"], tr["_fast_step_s"]
    if work is not None:
        work.cleanup()
    res = {
        "command": "python scripts/bench_throughput.py" + (" --quick" if quick else ""),
        "threads": args.threads, "quick": quick,
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "bf16_units": _bf16_units(), "load_avg_1m": os.getloadavg()[0]},
        "roofline": roof, "stages": stages, "evaluation": ev, "training": tr, "student_run": sr,
    }
    out = Path(args.out)
    atomic_write_json(out / "throughput.json", res)
    atomic_write_text(out / "throughput.md", render_md(res))
    print(render_md(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""Benchmark the ULD losses: forward+backward time and peak memory against baselines.

Methods, all on the same random logits (fp32 unless --dtype) and the same answer masks:
  ce         plain cross-entropy on the student logits (the floor a distillation loss adds to)
  exact      uld.losses.uld_loss, top_k=None (chunked, 1-bit saved state)
  topk       uld.losses.uld_loss, top_k=--k
  loop       a per-sample loop following the paper's algorithm (slice, softmax, sort, pad, L1)
  trl        TRL's GOLD ``ULDLoss`` in its positional mode (use_extended_uld=False), when installed

Every (configuration, method) runs in its own subprocess, so the peak resident memory it reports
(``ru_maxrss`` minus the resident size after the inputs were built) belongs to that method alone.
Time: median of --repeats forward+backward calls after one warm-up call.

    python scripts/bench_losses.py --quick
    python scripts/bench_losses.py --threads 1 --repeats 5        # full grid of the issue
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

METHODS = ("ce", "exact", "topk", "loop", "trl")
VOCABS = {"50k-32k": (50_304, 32_000), "152k-49k": (151_936, 49_152)}
PROMPT_LEN = 16
ROOT = Path(__file__).resolve().parents[1]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _paper_loop(student_logits, teacher_logits, student_labels, teacher_labels):
    """Per-sample ULD as published: answer slices, softmax, full sort, zero-pad, L1, mean."""
    import torch
    import torch.nn.functional as F

    losses = []
    for i in range(student_logits.shape[0]):
        s_idx = (student_labels[i] != -100).nonzero().squeeze(1)
        t_idx = (teacher_labels[i] != -100).nonzero().squeeze(1)
        n = min(len(s_idx), len(t_idx))
        if n == 0:
            continue
        # causal shift: logits at t-1 predict the label at t
        s = F.softmax(student_logits[i, s_idx[:n] - 1].float(), dim=-1).sort(-1, descending=True).values
        t = F.softmax(teacher_logits[i, t_idx[:n] - 1].float(), dim=-1).sort(-1, descending=True).values
        width = max(s.shape[-1], t.shape[-1])
        s = F.pad(s, (0, width - s.shape[-1]))
        t = F.pad(t, (0, width - t.shape[-1]))
        losses.append((s - t).abs().sum(-1).mean())
    return torch.stack(losses).mean()


def _trl_loss_fn():
    from types import SimpleNamespace

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.gold.gold_trainer import ULDLoss

    cfg = SimpleNamespace(
        uld_crossentropy_weight=0.0,
        uld_distillation_weight=1.0,
        uld_student_temperature=1.0,
        uld_teacher_temperature=1.0,
        uld_skip_student_eos=False,
        uld_skip_teacher_eos=False,
        use_extended_uld=False,
        uld_token_merge_strategy="observed",
        uld_use_hybrid_loss=False,
        uld_hybrid_matched_weight=None,
        uld_hybrid_unmatched_weight=None,
        beta=1.0,
    )
    return ULDLoss(cfg)


def worker(spec: dict) -> dict:
    """Run one (configuration, method) and return its timings and peak memory."""
    import torch
    import torch.nn.functional as F

    from uld.losses import answer_logit_mask, uld_loss

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    b, t, vs, vt = spec["B"], spec["T"], spec["Vs"], spec["Vt"]
    dtype = getattr(torch, spec["dtype"])
    length = PROMPT_LEN + t
    s_logits = torch.randn(b, length, vs, dtype=dtype).mul_(3.0).requires_grad_(True)
    t_logits = torch.randn(b, length, vt, dtype=dtype).mul_(3.0)
    labels_s = torch.randint(0, vs, (b, length))
    labels_s[:, :PROMPT_LEN] = -100
    labels_t = torch.randint(0, vt, (b, length))
    labels_t[:, :PROMPT_LEN] = -100
    s_mask = answer_logit_mask(labels_s)
    t_mask = answer_logit_mask(labels_t)
    method = spec["method"]

    if method == "ce":

        def step():
            return F.cross_entropy(
                s_logits[:, :-1].reshape(-1, vs).float(), labels_s[:, 1:].reshape(-1), ignore_index=-100
            )
    elif method == "exact":

        def step():
            return uld_loss(s_logits, t_logits, s_mask, t_mask, reduction="sample")
    elif method == "topk":

        def step():
            return uld_loss(s_logits, t_logits, s_mask, t_mask, top_k=spec["k"], reduction="sample")
    elif method == "loop":

        def step():
            return _paper_loop(s_logits, t_logits, labels_s, labels_t)
    elif method == "trl":
        fn = _trl_loss_fn()
        ids_s, ids_t = labels_s.clamp(min=0), labels_t.clamp(min=0)

        def step():
            return fn(s_logits, t_logits, labels_s, labels_t, ids_s, ids_t)
    else:
        raise ValueError(f"unknown method {method!r}")

    base = _rss_bytes()
    times = []
    value = None
    for i in range(spec["repeats"] + 1):
        s_logits.grad = None
        t0 = time.perf_counter()
        loss = step()
        loss.backward()
        dt = time.perf_counter() - t0
        value = float(loss)
        if i > 0:  # first call is a warm-up
            times.append(dt)
        del loss
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "method": method,
        "time_s": statistics.median(times),
        "times_s": times,
        "peak_extra_bytes": max(0, peak - base),
        "inputs_bytes": base,
        "loss": value,
    }


def run_one(spec: dict, timeout: float) -> dict:
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
        cmd = [sys.executable, __file__, "--worker", json.dumps(spec), "--worker-out", out.name]
        env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"method": spec["method"], "error": f"timed out after {timeout:.0f} s"}
        if proc.returncode != 0:
            return {"method": spec["method"], "error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
        return json.loads(Path(out.name).read_text())


def _ratio(x, y):
    return None if x is None or y in (None, 0) else x / y


def render_markdown(report: dict) -> str:
    lines = [
        "# ULD loss benchmark (forward + backward)",
        "",
        f"Machine: {report['machine']}; torch {report['torch']}; threads {report['threads']}; "
        f"dtype {report['dtype']}; median of {report['repeats']} runs after a warm-up; {report['note']}",
        "",
        "Peak = resident-memory high-water mark of the method's own process minus its resident size once "
        "the inputs (logits) were built; it includes the gradient of the student logits.",
        "",
        "| B | T | Vs | Vt | method | time (s) | x CE | x TRL | peak extra (GB) | peak x loop |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        by = {m["method"]: m for m in row["methods"]}
        ce = by.get("ce", {}).get("time_s")
        trl = by.get("trl", {}).get("time_s")
        loop_peak = by.get("loop", {}).get("peak_extra_bytes")
        for m in row["methods"]:
            if "error" in m:
                lines.append(f"| {row['B']} | {row['T']} | {row['Vs']} | {row['Vt']} | {m['method']} | "
                             f"{m['error']} | | | | |")
                continue
            r_ce, r_trl = _ratio(m["time_s"], ce), _ratio(m["time_s"], trl)
            r_mem = _ratio(m["peak_extra_bytes"], loop_peak)
            lines.append(
                f"| {row['B']} | {row['T']} | {row['Vs']} | {row['Vt']} | {m['method']} | {m['time_s']:.3f} | "
                f"{'' if r_ce is None else f'{r_ce:.2f}'} | {'' if r_trl is None else f'{r_trl:.2f}'} | "
                f"{m['peak_extra_bytes'] / 1e9:.2f} | {'' if r_mem is None else f'{r_mem:.2f}'} |"
            )
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(text)
        tmp = Path(f.name)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="4x32,4x256,8x32,8x256",
                    help="comma-separated BxT (batch x answer length), e.g. 4x64,8x256")
    ap.add_argument("--vocabs", default=",".join(VOCABS), help=f"comma-separated keys of {list(VOCABS)}")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--k", type=int, default=256, help="top-k width of the top-k mode")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per (configuration, method)")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (2x8, 50k-32k, 2 repeats)")
    ap.add_argument("--note", default="", help="free text stored with the results (e.g. machine was shared)")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "losses"),
                    help="output path without extension (.json and .md are written)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        Path(args.worker_out).write_text(json.dumps(worker(json.loads(args.worker))))
        return 0

    if args.quick:
        args.sizes, args.vocabs, args.repeats = "2x8", "50k-32k", 2
    methods = [m for m in args.methods.split(",") if m]
    if "trl" in methods:
        try:
            import trl  # noqa: F401
        except ImportError:
            print("trl is not installed: skipping the TRL baseline", file=sys.stderr)
            methods.remove("trl")
    import torch

    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "threads": args.threads,
        "dtype": args.dtype,
        "repeats": args.repeats,
        "k": args.k,
        "prompt_len": PROMPT_LEN,
        "note": args.note or "n/a",
        "results": [],
    }
    try:
        import trl

        report["trl"] = trl.__version__
    except ImportError:
        pass
    for vocab_key in args.vocabs.split(","):
        vs, vt = VOCABS[vocab_key]
        for size in args.sizes.split(","):
            b, t = (int(x) for x in size.lower().split("x"))
            row = {"B": b, "T": t, "Vs": vs, "Vt": vt, "methods": []}
            for method in methods:
                spec = {"B": b, "T": t, "Vs": vs, "Vt": vt, "method": method, "threads": args.threads,
                        "repeats": args.repeats, "k": args.k, "dtype": args.dtype}
                res = run_one(spec, args.timeout)
                row["methods"].append(res)
                print(f"B={b} T={t} Vs={vs} Vt={vt} {method}: "
                      + (res.get("error") and str(res["error"]) or
                         f"{res['time_s']:.3f} s, peak +{res['peak_extra_bytes'] / 1e9:.2f} GB, loss {res['loss']:.4f}"),
                      flush=True)
            by = {m["method"]: m for m in row["methods"] if "error" not in m}
            for m in row["methods"]:
                if "error" in m:
                    continue
                m["ratio_to_ce"] = _ratio(m["time_s"], by.get("ce", {}).get("time_s"))
                m["ratio_to_trl"] = _ratio(m["time_s"], by.get("trl", {}).get("time_s"))
                m["peak_ratio_to_loop"] = _ratio(m["peak_extra_bytes"], by.get("loop", {}).get("peak_extra_bytes"))
            report["results"].append(row)
            out = Path(args.out)
            _atomic_write(out.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
            _atomic_write(out.with_suffix(".md"), render_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

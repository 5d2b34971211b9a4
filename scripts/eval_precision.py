"""Which precision (or evaluation path) can evaluate a trained student without changing its answers?

Greedy answers of one checkpoint on the same SQuAD dev questions under several precision recipes, each
compared with fp32 (answers identical, F1 difference, items/s). A recipe named ``autocast-<part>-fp32``
runs bf16 autocast with that part of every layer (``attn``, ``mlp``, ``head``) back in fp32, which
locates where a model is sensitive to bf16. ``fp32-share-prefix`` is fp32 with each batch's common prompt
opening prefilled once (``evaluation.share_prefix``).

    python scripts/eval_precision.py --checkpoint results/runs/<run>/checkpoints/best --questions 500
    python scripts/eval_precision.py --checkpoint DIR --recipes fp32,bf16,autocast,autocast-mlp-fp32 --out /tmp/p.json

The questions are the first ``--questions`` of the dev set in file order (the headroom studies' 500); add
``--shuffled`` for a seeded random sample across articles instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
from pathlib import Path

import torch

from uld.config import DataConfig, ModelConfig
from uld.data import encode_prompt, get_task, test_split
from uld.generation import greedy_generate
from uld.io import atomic_write_json
from uld.metrics import score_examples
from uld.models import load_model, load_tokenizer, resolve_model

RECIPES = ("fp32", "fp32-share-prefix", "bf16", "autocast", "autocast-attn-fp32", "autocast-mlp-fp32", "autocast-head-fp32")
# module names (suffixes) of each part in the decoder-only models the project uses (Llama/Gemma layouts)
PARTS = {"attn": ".self_attn", "mlp": ".mlp", "head": "lm_head"}


def _as_fp32(module: torch.nn.Module) -> None:
    """Run ``module`` in fp32 even inside a bf16 autocast region (its inputs are cast up)."""
    inner = module.forward

    def forward(*args, **kwargs):
        up = lambda x: x.float() if torch.is_tensor(x) and x.is_floating_point() else x  # noqa: E731
        with torch.autocast("cpu", enabled=False):
            return inner(*[up(a) for a in args], **{k: up(v) for k, v in kwargs.items()})

    module.forward = forward


def load_for(recipe: str, local):
    """-> (model, autocast context) for a recipe; ``local``: the resolved checkpoint folder."""
    model = load_model(local, dtype="bfloat16" if recipe == "bf16" else "float32").eval()
    if not recipe.startswith("autocast"):
        return model, contextlib.nullcontext()
    if recipe != "autocast":
        part = PARTS[recipe.split("-")[1]]
        hits = [m for name, m in model.named_modules() if name.endswith(part) or name == part]
        if not hits:
            raise SystemExit(f"--recipes {recipe}: no module named *{part} in {local.source}")
        for m in hits:
            _as_fp32(m)
    return model, torch.autocast("cpu", dtype=torch.bfloat16)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a model folder (e.g. a run's checkpoints/best)")
    p.add_argument("--questions", type=int, default=500, help="SQuAD dev questions (default 500)")
    p.add_argument("--shuffled", action="store_true", help="a seeded random sample of the dev set (seed 25)")
    p.add_argument("--recipes", default="fp32,bf16,autocast,autocast-attn-fp32,autocast-mlp-fp32,autocast-head-fp32",
                   help=f"comma-separated, the first is the reference; any of {', '.join(RECIPES)}")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--data-dir", default=os.environ.get("ULD_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    p.add_argument("--out", help="write the comparison as JSON here")
    args = p.parse_args(argv)
    recipes = args.recipes.split(",")
    bad = [r for r in recipes if r not in RECIPES]
    if bad:
        p.error(f"--recipes: unknown {bad}; choose from {', '.join(RECIPES)}")
    torch.set_num_threads(args.threads)
    folder = Path(args.checkpoint)
    if not (folder / "config.json").is_file():
        p.error(f"--checkpoint {folder}: no config.json (not a model folder)")
    local = resolve_model(ModelConfig(name=folder.name, path=str(folder)))
    tok = load_tokenizer(local)
    task = get_task("squad")
    data = DataConfig(task="squad", dir=args.data_dir, test_size=args.questions,
                      **({"test_order": "shuffled", "sample_seed": 25} if args.shuffled else {}))
    examples = test_split(data)
    ids = [encode_prompt(tok, task.student_prompt(ex)) for ex in examples]
    refs = [task.references(ex, "authors") for ex in examples]
    runs = {}
    for recipe in recipes:
        model, ctx = load_for(recipe, local)
        with ctx:
            greedy_generate(model, tok, ids[:1], max_new_tokens=args.max_new_tokens, batch_size=1)  # warm-up
            out = greedy_generate(model, tok, ids, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                  first_line=True, desc=recipe, share_prefix=recipe == "fp32-share-prefix")
        f1 = 100 * statistics.mean(r["f1"] for r in score_examples(out.answers, refs, ["f1"]))
        runs[recipe] = {"seconds": out.seconds, "f1": f1, "answers": out.answers,
                        "mean_words": statistics.mean(len(a.split()) for a in out.answers)}
        del model
    ref = runs[recipes[0]]
    n = len(ids)
    rows = {r: {"items_per_s": round(n / v["seconds"], 3), "speedup": round(ref["seconds"] / v["seconds"], 3),
                "identical": round(sum(a == b for a, b in zip(v["answers"], ref["answers"])) / n, 4),
                "f1": round(v["f1"], 2), "f1_delta": round(v["f1"] - ref["f1"], 2), "mean_words": round(v["mean_words"], 2)}
            for r, v in runs.items()}
    print(f"{n} questions, {args.threads} thread(s), batch {args.batch_size}; reference {recipes[0]}")
    print(f"{'recipe':<22}{'items/s':>9}{'speedup':>9}{'identical':>11}{'F1':>8}{'dF1':>8}{'words':>7}")
    for r, v in rows.items():
        print(f"{r:<22}{v['items_per_s']:>9}{v['speedup']:>9}{100 * v['identical']:>10.1f}%{v['f1']:>8}{v['f1_delta']:>+8}{v['mean_words']:>7}")
    if args.out:
        atomic_write_json(Path(args.out), {"checkpoint": str(folder), "questions": n, "threads": args.threads,
                                           "batch_size": args.batch_size, "reference": recipes[0], "recipes": rows,
                                           "command": "python scripts/eval_precision.py " + " ".join(sys.argv[1:] if argv is None else argv)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

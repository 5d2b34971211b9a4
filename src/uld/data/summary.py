"""``uld data summary TASK``: split sizes, length statistics, invalid rows and rendered prompts.

:func:`summarize_task` returns one JSON-serialisable dict::

    {"task": "squad", "kind": "extractive", "source": "/data/squad" | "hub:rajpurkar/squad",
     "splits": {"train": {"size": N, "invalid": n, "problems": [...], "empty": {...},
                          "chars": {"context": stats, "question": stats, "answer": stats},
                          "n_answers": stats, "tokens": {tokenizer: {"prompt": stats, "answer": stats}}},
                "test": {...}},
     "prompts": {"student": str, "teacher_messages": [...], "teacher": {tokenizer: str}}}

``train`` is the whole training pool before any hold-out or fraction; ``test`` the evaluated split.
Token statistics use a seeded sample of at most ``token_sample`` rows per split (recorded).
"""

from __future__ import annotations

import os
import random
from typing import Any

from uld.data.base import DataError, Example, Task, get_task, resolve_data_dir, select_shots
from uld.data.prompts import ChatTemplateError, render_chat

__all__ = ["summarize_task", "format_summary", "length_stats"]


def length_stats(values: list[int]) -> dict[str, Any]:
    """min / mean / median / p95 / max of a list of lengths (empty list: zeros)."""
    if not values:
        return {"n": 0, "min": 0, "mean": 0.0, "median": 0, "p95": 0, "max": 0}
    v = sorted(values)
    return {
        "n": len(v),
        "min": v[0],
        "mean": round(sum(v) / len(v), 2),
        "median": v[len(v) // 2],
        "p95": v[min(len(v) - 1, int(0.95 * len(v)))],
        "max": v[-1],
    }


def _split_summary(task: Task, split: str, examples: list[Example], problems: list[DataError],
                   tokenizers: dict[str, Any], token_sample: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "size": len(examples),
        "invalid": len(problems),
        "problems": [str(p) for p in problems[:5]],
        "empty": {
            "question": sum(1 for e in examples if task.has_question and not e.question),
            "answers": sum(1 for e in examples if not e.answers),
        },
        "chars": {
            "context": length_stats([len(e.context) for e in examples]),
            "question": length_stats([len(e.question) for e in examples]) if task.has_question else None,
            "answer": length_stats([len(e.answers[0]) for e in examples if e.answers]),
        },
        "n_answers": length_stats([len(e.answers) for e in examples]),
    }
    if tokenizers:
        rows = examples
        if len(rows) > token_sample:
            idx = sorted(random.Random(0).sample(range(len(rows)), token_sample))
            rows = [rows[i] for i in idx]
        out["tokens"] = {"sampled_rows": len(rows)}
        for name, tok in tokenizers.items():
            prompts = tok([task.student_prompt(e) for e in rows], add_special_tokens=False)["input_ids"]
            answers = tok([e.answers[0] for e in rows if e.answers], add_special_tokens=False)["input_ids"]
            out["tokens"][name] = {
                "prompt": length_stats([len(p) for p in prompts]),
                "answer": length_stats([len(a) for a in answers]),
            }
    return out


def summarize_task(
    task: str | Task,
    data_dir: str | os.PathLike | None = None,
    tokenizers: dict[str, Any] | None = None,
    *,
    shots: int = 1,
    token_sample: int = 2000,
) -> dict[str, Any]:
    """Describe both splits of ``task`` (see the module docstring for the layout)."""
    task = get_task(task)
    root = resolve_data_dir(data_dir)
    tokenizers = tokenizers or {}
    out: dict[str, Any] = {
        "task": task.name,
        "kind": task.kind,
        "source": str(root / task.name) if root is not None else f"hub:{task.hub_id}",
        "splits": {},
    }
    loaded = {}
    for split in ("train", "test"):
        examples, problems = task.load_report(split, root)
        loaded[split] = examples
        out["splits"][split] = _split_summary(task, split, examples, problems, tokenizers, token_sample)
    prompts: dict[str, Any] = {}
    if loaded["test"]:
        ex = loaded["test"][0]
        prompts["student"] = task.student_prompt(ex)
        shot_examples = select_shots(loaded["train"], shots, seed=0, exclude=[ex.id]) if loaded["train"] else []
        messages = task.teacher_messages(ex, shot_examples, title=bool(ex.title))
        prompts["teacher_messages"] = messages
        prompts["teacher"] = {}
        for name, tok in tokenizers.items():
            try:
                prompts["teacher"][name] = render_chat(tok, messages)
            except ChatTemplateError:
                # No template in the folder: show the base-model rendering instead of failing.
                prompts["teacher"][name] = render_chat(tok, messages, template="plain")
    out["prompts"] = prompts
    return out


def format_summary(d: dict[str, Any]) -> str:
    """Human-readable text of :func:`summarize_task`'s dict."""
    lines = [f"task {d['task']} ({d['kind']}), source {d['source']}"]
    for split, s in d["splits"].items():
        lines.append(f"\n[{split}] {s['size']:,} examples, {s['invalid']} invalid rows")
        for p in s["problems"]:
            lines.append(f"  ! {p}")
        empty = ", ".join(f"{k}={v}" for k, v in s["empty"].items() if v)
        if empty:
            lines.append(f"  empty: {empty}")
        for field, st in s["chars"].items():
            if st:
                lines.append(f"  {field:9s} chars: mean {st['mean']}, median {st['median']}, p95 {st['p95']}, max {st['max']}")
        lines.append(f"  references per item: mean {s['n_answers']['mean']}, max {s['n_answers']['max']}")
        tokens = s.get("tokens")
        if tokens:
            lines.append(f"  tokens (sample of {tokens['sampled_rows']:,} rows):")
            for name, t in tokens.items():
                if name == "sampled_rows":
                    continue
                lines.append(
                    f"    {name}: prompt mean {t['prompt']['mean']} / p95 {t['prompt']['p95']} / max {t['prompt']['max']}; "
                    f"answer mean {t['answer']['mean']} / max {t['answer']['max']}"
                )
    prompts = d.get("prompts", {})
    if "student" in prompts:
        lines += ["\n--- student prompt (first test item) ---", prompts["student"]]
    for name, text in prompts.get("teacher", {}).items():
        lines += [f"\n--- teacher prompt ({name}) ---", text]
    if "teacher_messages" in prompts and not prompts.get("teacher"):
        lines.append("\n--- teacher messages ---")
        for m in prompts["teacher_messages"]:
            lines.append(f"[{m['role']}] {m['content']}")
    return "\n".join(lines)

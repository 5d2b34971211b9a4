"""Teacher stage: greedy teacher answers on the training pool, plus the cached teacher signal.

One stage serves every student, method, λ and training fraction of a grid (its id depends on the
teacher, the pool and the generation settings only, see :func:`uld.ids.teacher_stage_id`).

Stage layout (``results/teacher/<teacher_stage_id>/``)::

    config.yaml, env.json        written by RunFolder.init (the reduced config of :func:`stage_config`)
    plan.json                    row order + chunk size, checked on resume
    chunks/chunk-00000.parquet   one atomic file per chunk of ``generation.chunk_size`` pool rows
    answers.parquet              kept rows (columns: :mod:`uld.answers`)
    signal/                      the cached teacher signal (:mod:`uld.signal`)
    generation.json              teacher id/revision, decoding settings, prompt hashes, versions
    stats.json                   counts (dropped, skipped), tail mass, sizes, throughput
    .done                        written last: its presence means the stage is complete

One writer: the stage is computed under its lock (``teacher/.<id>.lock``); a second ``uld generate``
of the same stage gets an error naming the holder (or waits with ``wait=True``). Resuming and
sharding: rows are cut into chunks in pool order; process ``r`` of ``N`` (``accelerate launch``) runs
chunks ``r, r + N, ...``; a chunk whose file exists is never recomputed; the main process merges
once all exist. ``force=True`` builds a new stage beside the old one (``teacher/.<id>.regen``) and swaps
it in at the end, so the old stage stays usable until the new one is complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from uld.answers import ANSWER_COLUMNS, ANSWERS_FILE
from uld.config import ExperimentConfig, to_dict
from uld.data import Example, PromptTooLong, get_task, training_pool
from uld.data.teacher_prompts import encode_teacher_pair, encode_teacher_prompt, render_teacher_prompt, select_teacher_shots
from uld.distributed import Dist, dist, on_main
from uld.errors import TeacherStageError
from uld.generation import greedy_generate
from uld.io import atomic_write_json, atomic_write_text, parquet_metadata, read_json, read_parquet, remove, swap_dir, write_parquet
from uld.models import bind_run_models, load_model, load_tokenizer, resolve_model, shots_for, title_for
from uld.signal import SIGNAL_DIR, TeacherSignalStore, online_teacher_signal, signal_rows, write_signal
from uld.store import RunFolder

log = logging.getLogger(__name__)

__all__ = [
    "TeacherStageError",
    "run_teacher_stage",
    "stage_config",
    "merge_chunks",
    "TeacherSignalStore",
    "online_teacher_signal",
    "signal_rows",
    "DONE_MARKER",
]

DONE_MARKER = ".done"
CHUNK_DIR = "chunks"
SCHEMA_VERSION = 1

# Row status inside chunk files: only "kept" rows reach answers.parquet and the signal.
KEPT, EMPTY, TOO_LONG = "kept", "empty", "too_long"


# --------------------------------------------------------------------------------------------------
# Plan: which rows, in which chunks
# --------------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    rows: list[Example]  # in pool order: train then val
    splits: list[str]
    chunk_size: int

    @property
    def n_chunks(self) -> int:
        return math.ceil(len(self.rows) / self.chunk_size) if self.rows else 0

    def chunk(self, i: int) -> range:
        return range(i * self.chunk_size, min((i + 1) * self.chunk_size, len(self.rows)))

    def describe(self) -> dict:
        ids = [ex.id for ex in self.rows]
        return {
            "schema_version": SCHEMA_VERSION,
            "chunk_size": self.chunk_size,
            "n_rows": len(ids),
            "n_chunks": self.n_chunks,
            "n_train": self.splits.count("train"),
            "n_val": self.splits.count("val"),
            "row_ids_sha256": hashlib.sha256("\n".join(f"{s}/{r}" for s, r in zip(self.splits, ids)).encode()).hexdigest(),
        }


def _make_plan(cfg: ExperimentConfig) -> _Plan:
    # The stage covers the whole pool; the train_fraction ablation is the trainer's business, so every
    # fraction reuses one teacher stage.
    train, val = training_pool(dataclasses.replace(cfg.data, train_fraction=1.0))
    rows = list(train) + list(val)
    seen: set[str] = set()
    for ex in rows:
        if ex.id in seen:
            raise TeacherStageError(f"duplicate row id {ex.id!r} in the {cfg.data.task} training pool")
        seen.add(ex.id)
    if cfg.generation.chunk_size <= 0:
        raise TeacherStageError(f"generation.chunk_size must be positive, got {cfg.generation.chunk_size}")
    return _Plan(rows, ["train"] * len(train) + ["val"] * len(val), cfg.generation.chunk_size)


def _check_plan(folder: Path, plan: _Plan, *, write: bool) -> None:
    """Chunks on disk are only reusable when the rows and chunk size are the ones they were made with."""
    path = folder / "plan.json"
    want = plan.describe()
    if path.exists():
        have = read_json(path)
        if have != want:
            diff = sorted(k for k in want if have.get(k) != want[k])
            raise TeacherStageError(
                f"{folder} holds chunks made with a different plan ({', '.join(diff)} differ: "
                f"{ {k: have.get(k) for k in diff} } vs { {k: want[k] for k in diff} }); "
                "rerun with the original generation.chunk_size or with --force"
            )
    elif write:
        atomic_write_json(path, want)


# --------------------------------------------------------------------------------------------------
# The teacher and one chunk
# --------------------------------------------------------------------------------------------------


class _Teacher:
    """Lazily loaded teacher (tokenizer at once, weights only when a chunk needs them)."""

    def __init__(self, cfg: ExperimentConfig, device):
        self.cfg = cfg
        self.resolved = resolve_model(cfg.teacher)
        if self.resolved.is_encoder_decoder:
            raise TeacherStageError(
                f"teacher {self.resolved.name!r} is an encoder-decoder model; the teacher stage supports "
                "decoder-only teachers"
            )
        self.entry = self.resolved.entry
        self.task = get_task(cfg.data.task)
        self.tokenizer = load_tokenizer(self.resolved, padding_side="left")
        self.shots = shots_for(self.entry, cfg.data.task, cfg.data.teacher_shots)
        self.title = title_for(self.entry, cfg.data.task, cfg.data.teacher_title)
        self.device = torch.device(cfg.device) if cfg.device else device
        self._model = None

    @property
    def model(self):
        if self._model is None:
            self._model = load_model(self.resolved, device=str(self.device)).eval()
        return self._model

    @property
    def context(self) -> int:
        """Longest prompt + generation the teacher can attend to."""
        ctx = self.entry.max_length
        mpe = getattr(self.model.config, "max_position_embeddings", None)
        return min(ctx, mpe) if isinstance(mpe, int) and mpe > 0 else ctx


@dataclass
class _Row:
    """One pool item on its way through a chunk."""

    example: Example
    split: str
    shots: list[Example]
    prompt: str
    prompt_ids: list[int]
    status: str = TOO_LONG
    generation: str = ""
    answer: str = ""
    n_generated: int = 0
    n_answer_tokens: int = 0
    probs: bytes = b""
    tail: bytes = b""
    signal_length: int = 0

    def record(self) -> dict[str, Any]:
        ex = self.example
        return {
            "row_id": ex.id, "split": self.split, "status": self.status, "context": ex.context,
            "question": ex.question, "title": ex.title, "gold": list(ex.answers), "teacher_prompt": self.prompt,
            "shot_ids": [s.id for s in self.shots], "generation": self.generation, "answer": self.answer,
            "n_prompt_tokens": len(self.prompt_ids), "n_generated_tokens": self.n_generated,
            "n_answer_tokens": self.n_answer_tokens, "signal_length": self.signal_length,
            "signal_probs": self.probs, "signal_tail": self.tail,
        }


def _process_chunk(teacher: _Teacher, plan: _Plan, index: int, pool: list[Example], progress: Callable[[int, int], None]):
    """Generate, cut, filter and score one chunk; returns (DataFrame with every row of the chunk, meta)."""
    import pandas as pd

    cfg, gen = teacher.cfg, teacher.cfg.generation
    rows = []
    for i in plan.chunk(index):
        ex = plan.rows[i]
        shots = select_teacher_shots(ex, pool, teacher.shots, cfg.data.split_seed)
        prompt = render_teacher_prompt(teacher.task, ex, shots, teacher.entry, teacher.tokenizer, title=teacher.title)
        rows.append(_Row(ex, plan.splits[i], shots, prompt, encode_teacher_prompt(teacher.tokenizer, prompt)))
    ctx = teacher.context
    # A prompt that leaves no room for max_new_tokens (+ EOS in the signal pass) is skipped and counted,
    # never truncated: a truncated question/passage would make the teacher answer something else.
    todo = [r for r in rows if len(r.prompt_ids) + gen.max_new_tokens + 1 <= ctx]
    out = greedy_generate(teacher.model, teacher.tokenizer, [r.prompt_ids for r in todo], max_new_tokens=gen.max_new_tokens,
                          batch_size=gen.batch_size, first_line=gen.first_line, share_prefix=gen.share_prefix,
                          progress=progress)
    for r, text, answer, n in zip(todo, out.texts, out.answers, out.n_tokens):
        r.generation, r.answer, r.n_generated = text, answer, n
        r.status = KEPT if answer else EMPTY
    # The kept answer is re-tokenized after the prompt; in rare cases it is longer than what was
    # generated and the pair no longer fits the context: skip it too rather than truncate.
    for r in rows:
        if r.status != KEPT:
            continue
        try:
            r.n_answer_tokens = encode_teacher_pair(teacher.tokenizer, r.prompt, r.answer, max_length=ctx).n_answer_tokens - 1
        except PromptTooLong:
            r.status = TOO_LONG
    kept = [r for r in rows if r.status == KEPT]
    sig_start = time.perf_counter()
    if gen.store_signal and kept:
        sig = signal_rows(teacher.model, teacher.tokenizer, [r.prompt for r in kept], [r.answer for r in kept],
                          gen.top_k_signal, batch_size=gen.batch_size, max_length=ctx, temperature=gen.signal_temperature,
                          share_prefix=gen.share_prefix)
        for r, (p, t) in zip(kept, sig):
            r.probs = np.ascontiguousarray(p.numpy().astype(np.float16)).tobytes()
            r.tail = np.ascontiguousarray(t.numpy().astype(np.float32)).tobytes()
            r.signal_length = len(p)
    meta = {
        "chunk": index, "n_rows": len(rows), "generation_seconds": out.seconds, "generated_tokens": int(sum(out.n_tokens)),
        "generated_rows": len(todo), "signal_seconds": time.perf_counter() - sig_start, "top_k": gen.top_k_signal,
        "context": ctx, "device": str(teacher.device),
    }
    return pd.DataFrame([r.record() for r in rows]), meta


def _chunk_path(folder: Path, index: int) -> Path:
    return folder / CHUNK_DIR / f"chunk-{index:05d}.parquet"


def _write_chunk(path: Path, df, meta: dict) -> None:
    """One chunk file, atomically, with its metadata (timings, device) in the parquet schema."""
    write_parquet(df, path, metadata=meta)


def _read_chunk(path: Path):
    return read_parquet(path), parquet_metadata(path)


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------


def stage_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The part of ``cfg`` a teacher stage depends on (what its ``config.yaml`` records).

    Many experiments share one stage (every student, method, lambda and train fraction of a grid), so
    the stage folder records this reduced config rather than the config of whichever run came first.
    """
    return ExperimentConfig(
        name="teacher-stage",
        teacher=dataclasses.replace(cfg.teacher),
        data=dataclasses.replace(cfg.data, train_fraction=1.0, fraction_mode="first", test_size=None),
        generation=dataclasses.replace(cfg.generation),
        output_dir=cfg.output_dir,
        device=cfg.device,
    )


def run_teacher_stage(cfg: ExperimentConfig, *, force: bool = False, wait: bool = False) -> Path:
    """Teacher answers + cached teacher signal for ``cfg``'s training pool; returns the stage folder.

    Idempotent (a complete stage returns at once), resumable (finished chunks are kept), shardable
    (under ``accelerate launch`` each process runs every N-th chunk; the main process merges), one
    writer at a time (``wait``: wait for another writer instead of failing). Every process returns
    the same folder once the merge is done.
    """
    cfg = bind_run_models(cfg)
    final = RunFolder.for_config(cfg, kind="teacher")
    if final.exists(DONE_MARKER) and not force:
        return final.path
    d = _dist()
    with contextlib.ExitStack() as held:
        on_main(lambda: held.enter_context(final.lock(blocking=wait)), d)
        if on_main(lambda: final.exists(DONE_MARKER) and not force, d):  # finished while we waited
            return final.path
        work = RunFolder(final.path.parent / f".{final.id}.regen") if force else final
        try:
            on_main(lambda: _prepare(work, cfg, fresh=force), d)
            plan = _make_plan(cfg)
            on_main(lambda: _check_plan(work.path, plan, write=True), d)
            _run_chunks(cfg, plan, work.path, d)
            d.barrier()
            on_main(lambda: merge_chunks(work.path, cfg=cfg, plan=plan), d)
        except Exception:
            if force:  # a forced stage starts afresh anyway: a failed one leaves nothing beside the old stage
                on_main(lambda: remove(work.path), d)
            raise
        if force:
            on_main(lambda: swap_dir(work.path, final.path), d)
    return final.path


def _dist() -> Dist:
    """The launch's process group (a seam: tests simulate one rank of a sharded launch)."""
    return dist()


def _prepare(work: RunFolder, cfg: ExperimentConfig, *, fresh: bool) -> None:
    if fresh:
        remove(work.path)
    work.init(stage_config(cfg))


def _run_chunks(cfg: ExperimentConfig, plan: _Plan, folder: Path, d: Dist) -> None:
    mine = [i for i in range(plan.n_chunks) if i % d.world == d.rank and not _chunk_path(folder, i).exists()]
    if not mine:
        return
    teacher = _Teacher(cfg, d.device)
    pool = [ex for ex, s in zip(plan.rows, plan.splits) if s == "train"] or plan.rows
    bar = _Progress(sum(len(plan.chunk(i)) for i in mine), disable=not d.is_main)
    try:
        for i in mine:
            df, meta = _process_chunk(teacher, plan, i, pool, bar.update_counts)
            _write_chunk(_chunk_path(folder, i), df, meta)
    finally:
        bar.close()


class _Progress:
    def __init__(self, total: int, disable: bool):
        from tqdm.auto import tqdm

        self.tokens = 0
        self.start = time.perf_counter()
        self.bar = None if disable else tqdm(total=total, unit="item", desc="teacher answers", dynamic_ncols=True)

    def update_counts(self, n_rows: int, n_tokens: int) -> None:
        self.tokens += n_tokens
        if self.bar is not None:
            self.bar.update(n_rows)
            self.bar.set_postfix(tok_s=f"{self.tokens / max(time.perf_counter() - self.start, 1e-9):.1f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------------------------
# Merge
# --------------------------------------------------------------------------------------------------


def merge_chunks(folder: str | Path, *, cfg: ExperimentConfig, plan: Optional[_Plan] = None) -> dict:
    """Check and merge the chunk files of a stage into answers.parquet + signal/ + stats.json + .done.

    Deterministic: chunks are read in index order, rows keep pool order. Raises TeacherStageError naming
    the chunk when a chunk file is missing or does not hold exactly its expected rows.
    Returns the stats dict.
    """
    import pandas as pd

    folder = Path(folder)
    plan = plan or _make_plan(cfg)
    k = cfg.generation.top_k_signal
    frames, metas = [], []
    for i in range(plan.n_chunks):
        path = _chunk_path(folder, i)
        if not path.exists():
            raise TeacherStageError(f"teacher stage {folder}: chunk file {path.name} is missing (chunk {i} of {plan.n_chunks})")
        try:
            df, meta = _read_chunk(path)
        except Exception as exc:
            raise TeacherStageError(f"chunk file {path} is unreadable ({exc}); delete it to regenerate") from None
        want = [plan.rows[j].id for j in plan.chunk(i)]
        have = df["row_id"].tolist()
        if have != want:
            missing = [r for r in want if r not in set(have)]
            extra = [r for r in have if r not in set(want)]
            raise TeacherStageError(
                f"teacher stage {folder}: chunk {path.name} does not hold its expected rows "
                f"(missing {len(missing)}: {missing[:5]}, unexpected {len(extra)}: {extra[:5]}"
                + (", order differs" if not missing and not extra else "") + ")"
            )
        frames.append(df)
        metas.append(meta)
    all_rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ANSWER_COLUMNS + ["status"])
    kept = all_rows[all_rows["status"] == KEPT].reset_index(drop=True)
    if cfg.generation.store_signal:
        signal = []
        for rid, n, pb, tb in zip(kept["row_id"], kept["signal_length"], kept["signal_probs"], kept["signal_tail"]):
            p, t = np.frombuffer(pb, dtype=np.float16), np.frombuffer(tb, dtype=np.float32)
            if p.size != n * k or t.size != n:
                raise TeacherStageError(f"teacher stage {folder}: signal of row {rid!r} has {p.size} values, expected {n}x{k}")
            signal.append((p.reshape(int(n), k), t))
        write_signal(folder / SIGNAL_DIR, kept["row_id"].tolist(), signal, k=k, temperature=cfg.generation.signal_temperature)
    write_parquet(kept[ANSWER_COLUMNS].copy(), folder / ANSWERS_FILE)
    stats = _stats(folder, cfg, plan, all_rows, kept, metas, k)
    atomic_write_json(folder / "stats.json", stats)
    atomic_write_json(folder / "generation.json", _generation_meta(cfg, all_rows))
    atomic_write_text(folder / DONE_MARKER, json.dumps({"n_kept": len(kept), "n_tokens": int(kept["signal_length"].sum())}) + "\n")
    return stats


def _stats(folder: Path, cfg: ExperimentConfig, plan: _Plan, all_rows, kept, metas: list[dict], k: int) -> dict:
    sig = folder / SIGNAL_DIR
    n_tok = int(kept["signal_length"].sum()) if len(kept) else 0
    tail = np.load(sig / "tail.npy", mmap_mode="r") if n_tok else np.zeros(0, np.float32)
    gen_s = sum(m.get("generation_seconds", 0.0) for m in metas)
    gen_tok = sum(m.get("generated_tokens", 0) for m in metas)
    gen_rows = sum(m.get("generated_rows", 0) for m in metas)
    sig_bytes = sum((sig / f).stat().st_size for f in ("probs.npy", "tail.npy", "index.parquet") if (sig / f).exists())
    try:
        vocab: Optional[int] = _vocab_size(cfg)
    except Exception:  # vocabulary unknown: leave the comparison out
        vocab = None
    per_1k = (lambda b: b / len(kept) * 1000) if len(kept) else (lambda b: None)
    counts = all_rows["status"].value_counts().to_dict()
    by_split = kept["split"].value_counts().to_dict()
    return {
        "n_rows": len(all_rows),
        "n_kept": int(counts.get(KEPT, 0)),
        "n_kept_train": int(by_split.get("train", 0)),
        "n_kept_val": int(by_split.get("val", 0)),
        "n_dropped_empty": int(counts.get(EMPTY, 0)),
        "n_skipped_too_long": int(counts.get(TOO_LONG, 0)),
        "dropped_row_ids": all_rows.loc[all_rows["status"] == EMPTY, "row_id"].tolist(),
        "skipped_row_ids": all_rows.loc[all_rows["status"] == TOO_LONG, "row_id"].tolist(),
        "split": {"val_fraction": cfg.data.val_fraction, "split_seed": cfg.data.split_seed,
                  "n_train": plan.splits.count("train"), "n_val": plan.splits.count("val")},
        "signal": {
            "top_k": k,
            "temperature": cfg.generation.signal_temperature,
            "n_positions": n_tok,
            "mean_tail_mass": float(np.mean(tail, dtype=np.float64)) if n_tok else None,
            "max_tail_mass": float(np.max(tail)) if n_tok else None,
            "p95_tail_mass": float(np.quantile(tail, 0.95)) if n_tok else None,
            "bytes": sig_bytes,
            "bytes_per_1000_answers": per_1k(sig_bytes),
            "teacher_vocab_size": vocab,
            # what storing the full teacher logits in float16 at the same positions would take
            "full_logits_fp16_bytes_per_1000_answers": per_1k(n_tok * vocab * 2) if vocab else None,
        },
        "throughput": {
            "generation_seconds": gen_s,
            "generated_tokens": gen_tok,
            "generated_rows": gen_rows,
            "tokens_per_s": gen_tok / gen_s if gen_s > 0 else None,
            "items_per_s": gen_rows / gen_s if gen_s > 0 else None,
            "signal_seconds": sum(m.get("signal_seconds", 0.0) for m in metas),
            "devices": sorted({m.get("device", "?") for m in metas}),
        },
        "mean_answer_tokens": float(kept["n_answer_tokens"].mean()) if len(kept) else None,
    }


def _vocab_size(cfg: ExperimentConfig) -> int:
    from transformers import AutoConfig

    r = resolve_model(cfg.teacher)
    conf = AutoConfig.from_pretrained(r.source, revision=r.revision, trust_remote_code=r.trust_remote_code)
    conf = getattr(conf, "text_config", None) or conf
    return int(conf.vocab_size)


def _generation_meta(cfg: ExperimentConfig, all_rows) -> dict:
    r = resolve_model(cfg.teacher)
    versions = {}
    for name in ("uld-repro", "torch", "transformers"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    prompts_sha = hashlib.sha256("\n\x00".join(all_rows["teacher_prompt"].tolist()).encode()).hexdigest()
    return {
        "teacher": r.describe(),
        "task": cfg.data.task,
        "shots": shots_for(r.entry, cfg.data.task, cfg.data.teacher_shots),
        "title": title_for(r.entry, cfg.data.task, cfg.data.teacher_title),
        "shot_seed": cfg.data.split_seed,
        "chat_template": r.entry.chat_template,
        "system_role": r.entry.system_role,
        "prompts_sha256": prompts_sha,
        "decoding": {"greedy": True, "max_new_tokens": cfg.generation.max_new_tokens, "first_line": cfg.generation.first_line},
        "signal": {"top_k": cfg.generation.top_k_signal, "dtype": "float16", "tail_dtype": "float32",
                   "positions": "answer tokens + EOS", "temperature": cfg.generation.signal_temperature},
        "generation_config": to_dict(cfg.generation),
        "versions": versions,
    }

"""Teacher stage: greedy teacher answers on the training pool, plus a cached teacher signal.

ULD compares the student's and the teacher's token distributions only after sorting them, so the
teacher's identity of tokens never matters: its sorted probabilities do. This module records, once, for
every answer token the teacher's top-k sorted probabilities (float16) and the probability mass outside
them (the "tail"). Training then reads that cache instead of holding the teacher in memory, and one
teacher pass serves every student and every lambda.

Stage layout (``results/teacher/<teacher_stage_id>/``)::

    config.yaml, env.json        written by RunFolder.init
    plan.json                    row order + chunk size, checked on resume
    chunks/chunk-00000.parquet   one atomic file per chunk of ``generation.chunk_size`` pool rows
    answers.parquet              kept rows (see the architecture contract for the columns)
    signal/probs.npy             float16 [N_tokens, k]   top-k teacher probabilities, sorted descending
    signal/tail.npy              float32 [N_tokens]      1 - sum(top-k) per position
    signal/index.parquet         row_id -> (offset, length) into the two arrays above
    generation.json              teacher id/revision, decoding settings, prompt hashes, versions
    stats.json                   counts (dropped, skipped), tail mass, sizes, throughput
    .done                        written last: its presence means the stage is complete

Signal positions: for a kept answer ``a_1 .. a_L`` (tokenized by :func:`encode_teacher_pair`, i.e.
``uld.data.encode_pair`` after the rendered prompt, EOS appended), the stored rows are the teacher's next-token distributions at the positions that predict
``a_1 .. a_L, EOS``: ``L + 1`` rows per answer, in order. This is the same set of positions as
``uld.losses.answer_logit_mask(labels, causal=True)`` selects in the online teacher's logits.

Resuming and sharding: rows are cut into chunks in pool order; process ``r`` of ``N`` (accelerate) runs
chunks ``r, r + N, ...``; a chunk whose file exists is never recomputed. Process 0 merges the chunks in
index order once all exist and checks that every expected row is present.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np
import torch

from uld.config import ExperimentConfig, to_dict
from uld.data.teacher_prompts import (
    answer_separator,
    encode_teacher_pair,
    encode_teacher_prompt,
    render_teacher_prompt,
    select_teacher_shots,
    teacher_prompt,
)
from uld.generation import GenerationOutput, greedy_generate, keep_first_line
from uld.losses import TeacherSignal
from uld.io import atomic_write_json, atomic_write_text
from uld.store import RunFolder

if TYPE_CHECKING:  # pragma: no cover
    from uld.data import Example

log = logging.getLogger(__name__)

__all__ = [
    "TeacherStageError",
    "select_teacher_shots",
    "teacher_prompt",
    "render_teacher_prompt",
    "encode_teacher_prompt",
    "encode_teacher_pair",
    "answer_separator",
    "online_teacher_signal",
    "signal_rows",
    "run_teacher_stage",
    "stage_config",
    "merge_chunks",
    "TeacherSignalStore",
    "DONE_MARKER",
]

DONE_MARKER = ".done"
CHUNK_DIR = "chunks"
SIGNAL_DIR = "signal"
SCHEMA_VERSION = 1

# Row status inside chunk files: only "kept" rows reach answers.parquet and the signal.
KEPT, EMPTY, TOO_LONG = "kept", "empty", "too_long"


from uld.errors import TeacherStageError  # noqa: E402


# --------------------------------------------------------------------------------------------------
# Generation backends and the teacher-forced signal pass
# --------------------------------------------------------------------------------------------------


def _as_list(x) -> list[int]:
    return x.tolist() if hasattr(x, "tolist") else list(x)


def _generate_vllm(resolved, prompts: list[str], *, max_new_tokens: int, first_line_only: bool) -> GenerationOutput:
    """Greedy generation with vLLM (optional backend for large teachers; not covered by the tests).

    The teacher-forced signal pass still runs on the HF model, so the cached signal is computed the same
    way whichever backend wrote the text.
    """
    try:
        from vllm import LLM, SamplingParams
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise TeacherStageError("generation.backend=vllm but vllm is not installed") from exc
    llm = LLM(model=resolved.source, revision=resolved.revision, dtype=resolved.dtype,
              trust_remote_code=resolved.trust_remote_code)
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
    start = time.perf_counter()
    outs = llm.generate(prompts, params)
    seconds = time.perf_counter() - start
    texts = [o.outputs[0].text for o in outs]
    n_tokens = [len(o.outputs[0].token_ids) for o in outs]
    del llm
    answers = [keep_first_line(t) if first_line_only else t.strip() for t in texts]
    return GenerationOutput(texts, answers, n_tokens, seconds)


# --------------------------------------------------------------------------------------------------
# Teacher signal: top-k sorted probabilities + tail mass at the answer positions
# --------------------------------------------------------------------------------------------------


def _forward_accepts(model, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
        return False


def _topk_tail(logits: torch.Tensor, k: int, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits [N, V]`` -> (top-k probabilities ``[N, k]`` float32 sorted descending, tail ``[N]`` float32).

    Same arithmetic as the online loss path (``uld.losses.teacher_signal_from_logits``). When
    ``k > V`` the missing columns are zero probabilities: the vocabulary has no more tokens.
    """
    from uld.losses import teacher_signal_from_logits

    top, tail = teacher_signal_from_logits(logits, k, temperature=temperature)
    if top.shape[-1] < k:
        top = torch.nn.functional.pad(top, (0, k - top.shape[-1]))
    return top, tail


@torch.no_grad()
def signal_rows(
    model,
    tokenizer,
    prompts: Sequence[str],
    answers: Sequence[str],
    k: int,
    *,
    batch_size: int = 8,
    max_length: Optional[int] = None,
    add_eos: bool = True,
    temperature: float = 1.0,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Teacher-forced pass over ``prompt + answer (+ EOS)``; one ``(probs [L, k], tail [L])`` per row.

    ``L`` is the number of supervised answer positions (answer tokens plus EOS), i.e. the positions
    ``answer_logit_mask(labels, causal=True)`` selects. Rows are tokenized with
    :func:`encode_teacher_pair`, left-padded with explicit position ids (so padding changes nothing),
    and only the answer-predicting positions are projected onto the vocabulary.
    A pair longer than ``max_length`` raises ``uld.data.PromptTooLong`` (it is never truncated).
    """
    from uld.losses import answer_logit_mask

    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    encoded = []
    for i, (p, a) in enumerate(zip(prompts, answers)):
        enc = encode_teacher_pair(tokenizer, p, a, max_length=max_length, add_eos=add_eos)
        encoded.append((_as_list(enc.input_ids), _as_list(enc.labels)))

    # Left padding puts every row's answer at the end, so only the last few positions need the
    # vocabulary projection (logits_to_keep). Position ids then have to be given explicitly: the
    # models' default arange would shift a left-padded row. Models without these arguments get right
    # padding and full logits.
    left = _forward_accepts(model, "logits_to_keep") and _forward_accepts(model, "position_ids")
    out: list[Optional[tuple[torch.Tensor, torch.Tensor]]] = [None] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        width = max(len(encoded[i][0]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(idx), width), dtype=torch.long)
        labels = torch.full((len(idx), width), -100, dtype=torch.long)
        for r, i in enumerate(idx):
            x, y = encoded[i]
            sl = slice(width - len(x), width) if left else slice(0, len(x))
            ids[r, sl] = torch.tensor(x)
            attn[r, sl] = 1
            labels[r, sl] = torch.tensor(y)
        mask = answer_logit_mask(labels, causal=True)  # [B, T] True where logits predict an answer token
        has = mask.any(dim=0).nonzero()
        first = int(has[0]) if len(has) else width - 1
        kwargs: dict[str, Any] = {"input_ids": ids.to(device), "attention_mask": attn.to(device)}
        if left:
            kwargs["position_ids"] = (attn.cumsum(-1) - 1).clamp_min(0).to(device)
            kwargs["logits_to_keep"] = width - first  # the last (width - first) positions
            logits = model(**kwargs).logits[:, -(width - first) :]  # [B, width - first, V]
        else:
            logits = model(**kwargs).logits[:, first:]
        sub = mask[:, first:].to(logits.device)
        top, tail = _topk_tail(logits[sub], k, temperature)  # rows in (batch row, position) order
        lengths = sub.sum(dim=1).tolist()
        offsets = np.cumsum([0] + lengths)
        for r, i in enumerate(idx):
            out[i] = (top[offsets[r] : offsets[r + 1]].cpu(), tail[offsets[r] : offsets[r + 1]].cpu())
    return out  # type: ignore[return-value]


def _pad_rows(rows: Sequence[tuple[torch.Tensor, torch.Tensor]], k: int, dtype=torch.float32) -> tuple[TeacherSignal, torch.Tensor]:
    lengths = torch.tensor([len(p) for p, _ in rows], dtype=torch.long)
    T = int(lengths.max()) if len(rows) else 0
    probs = torch.zeros((len(rows), T, k), dtype=dtype)
    tail = torch.zeros((len(rows), T), dtype=dtype)
    for r, (p, t) in enumerate(rows):
        probs[r, : len(p)] = p.to(dtype)
        tail[r, : len(t)] = t.to(dtype)
    return TeacherSignal(probs=probs, tail=tail), lengths


def online_teacher_signal(
    model,
    tokenizer,
    prompts: Sequence[str],
    answers: Sequence[str],
    k: int,
    *,
    batch_size: int = 8,
    max_length: Optional[int] = None,
    add_eos: bool = True,
    temperature: float = 1.0,
) -> tuple[TeacherSignal, torch.Tensor]:
    """Teacher signal computed now (no cache): ``(TeacherSignal(probs [n, T, k], tail [n, T]), lengths [n])``.

    float32, zero-padded after each row's ``lengths[i]`` positions. The teacher stage stores exactly
    these values (probabilities cast to float16), so the cache can be checked against this function.
    """
    rows = signal_rows(model, tokenizer, prompts, answers, k, batch_size=batch_size, max_length=max_length,
                       add_eos=add_eos, temperature=temperature)
    return _pad_rows(rows, k)


# --------------------------------------------------------------------------------------------------
# Chunk files
# --------------------------------------------------------------------------------------------------


def _chunk_path(folder: Path, index: int) -> Path:
    return folder / CHUNK_DIR / f"chunk-{index:05d}.parquet"


def _write_chunk(path: Path, df, meta: dict) -> None:
    """Write one chunk atomically: a parquet file with the chunk's metadata in the schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"uld_chunk": json.dumps(meta).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb+") as fh:
        import os

        os.fsync(fh.fileno())
    tmp.replace(path)


def _read_chunk(path: Path):
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # a corrupt file: name it
        raise TeacherStageError(f"chunk file {path} is unreadable ({exc}); delete it to regenerate") from exc
    meta = json.loads((table.schema.metadata or {}).get(b"uld_chunk", b"{}"))
    return table.to_pandas(), meta


def _array_bytes(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    rows: list  # Example, in pool order (train then val)
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
    from uld.data import training_pool

    # The stage covers the whole pool; the train_fraction ablation is the trainer's business, so every
    # fraction reuses one teacher stage.
    data_cfg = dataclasses.replace(cfg.data, train_fraction=1.0)
    train, val = training_pool(data_cfg)
    rows = list(train) + list(val)
    seen: set[str] = set()
    for ex in rows:
        if ex.id in seen:
            raise TeacherStageError(f"duplicate row id {ex.id!r} in the {cfg.data.task} training pool")
        seen.add(ex.id)
    if cfg.generation.chunk_size <= 0:
        raise TeacherStageError(f"generation.chunk_size must be positive, got {cfg.generation.chunk_size}")
    return _Plan(rows, ["train"] * len(train) + ["val"] * len(val), cfg.generation.chunk_size)


def _distributed():
    """(process index, number of processes, barrier, device) from accelerate; single-process fallback."""
    try:
        from accelerate import PartialState

        state = PartialState()
        return state.process_index, state.num_processes, state.wait_for_everyone, state.device
    except Exception:  # pragma: no cover - accelerate missing or not initialisable
        return 0, 1, (lambda: None), torch.device("cpu")


class _Teacher:
    """Lazily loaded teacher (tokenizer at once, weights only when a chunk needs them)."""

    def __init__(self, cfg: ExperimentConfig, device):
        from uld.data import get_task
        from uld.models import load_tokenizer, resolve_model, shots_for, title_for

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
            from uld.models import load_model

            self._model = load_model(self.resolved, device=str(self.device)).eval()
        return self._model

    @property
    def context(self) -> int:
        """Longest prompt + generation the teacher can attend to."""
        ctx = self.entry.max_length
        if self._model is not None:
            mpe = getattr(self._model.config, "max_position_embeddings", None)
            if isinstance(mpe, int) and mpe > 0:
                ctx = min(ctx, mpe)
        return ctx


def _process_chunk(teacher: _Teacher, plan: _Plan, index: int, pool: list, progress) -> tuple[Any, dict]:
    """Generate, cut, filter and score one chunk; returns (DataFrame with every row of the chunk, meta)."""
    import pandas as pd

    from uld.data import PromptTooLong

    cfg = teacher.cfg
    gen = cfg.generation
    rows = [plan.rows[i] for i in plan.chunk(index)]
    splits = [plan.splits[i] for i in plan.chunk(index)]
    shots = [select_teacher_shots(ex, pool, teacher.shots, cfg.data.split_seed) for ex in rows]
    prompts = [
        render_teacher_prompt(teacher.task, ex, s, teacher.entry, teacher.tokenizer, title=teacher.title)
        for ex, s in zip(rows, shots)
    ]
    prompt_ids = [encode_teacher_prompt(teacher.tokenizer, p) for p in prompts]
    model = teacher.model if gen.backend == "hf" else None
    ctx = teacher.context
    # A prompt that leaves no room for max_new_tokens (+ EOS in the signal pass) is skipped and counted,
    # never truncated: a truncated question/passage would make the teacher answer something else.
    fits = [len(p) + gen.max_new_tokens + 1 <= ctx for p in prompt_ids]
    todo = [i for i, ok in enumerate(fits) if ok]

    if gen.backend == "vllm":
        out = _generate_vllm(teacher.resolved, [prompts[i] for i in todo], max_new_tokens=gen.max_new_tokens,
                             first_line_only=gen.first_line)
        progress(len(todo), sum(out.n_tokens))
        model = teacher.model
    else:
        out = greedy_generate(model, teacher.tokenizer, [prompt_ids[i] for i in todo],
                              max_new_tokens=gen.max_new_tokens, batch_size=gen.batch_size,
                              first_line=gen.first_line, progress=progress)

    status = [TOO_LONG] * len(rows)
    texts = [""] * len(rows)
    answers = [""] * len(rows)
    n_gen = [0] * len(rows)
    for j, i in enumerate(todo):
        texts[i], answers[i], n_gen[i] = out.texts[j], out.answers[j], out.n_tokens[j]
        status[i] = KEPT if answers[i] else EMPTY

    # The kept answer is re-tokenized after the prompt; in rare cases it is longer than what was
    # generated and the pair no longer fits the context: skip it too rather than truncate.
    n_answer = [0] * len(rows)
    for i in range(len(rows)):
        if status[i] != KEPT:
            continue
        try:
            enc = encode_teacher_pair(teacher.tokenizer, prompts[i], answers[i], max_length=ctx)
        except PromptTooLong:
            status[i] = TOO_LONG
            continue
        n_answer[i] = enc.n_answer_tokens - 1  # without the EOS
    kept = [i for i, s in enumerate(status) if s == KEPT]
    sig_start = time.perf_counter()
    probs_b, tail_b, lens = [b""] * len(rows), [b""] * len(rows), [0] * len(rows)
    if gen.store_signal and kept:
        sig = signal_rows(model, teacher.tokenizer, [prompts[i] for i in kept], [answers[i] for i in kept],
                          gen.top_k_signal, batch_size=gen.batch_size, max_length=ctx,
                          temperature=gen.signal_temperature)
        for i, (p, t) in zip(kept, sig):
            probs_b[i] = _array_bytes(p.numpy().astype(np.float16))
            tail_b[i] = _array_bytes(t.numpy().astype(np.float32))
            lens[i] = len(p)
    sig_seconds = time.perf_counter() - sig_start

    df = pd.DataFrame(
        {
            "row_id": [ex.id for ex in rows],
            "split": splits,
            "status": status,
            "context": [ex.context for ex in rows],
            "question": [ex.question for ex in rows],
            "title": [ex.title for ex in rows],
            "gold": [list(ex.answers) for ex in rows],
            "teacher_prompt": prompts,
            "shot_ids": [[s.id for s in ss] for ss in shots],
            "generation": texts,
            "answer": answers,
            "n_prompt_tokens": [len(p) for p in prompt_ids],
            "n_generated_tokens": n_gen,
            "n_answer_tokens": n_answer,
            "signal_length": lens,
            "signal_probs": probs_b,
            "signal_tail": tail_b,
        }
    )
    meta = {
        "chunk": index,
        "n_rows": len(rows),
        "generation_seconds": out.seconds,
        "generated_tokens": int(sum(out.n_tokens)),
        "generated_rows": len(todo),
        "signal_seconds": sig_seconds,
        "top_k": gen.top_k_signal,
        "context": ctx,
        "device": str(teacher.device),
    }
    return df, meta


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


def run_teacher_stage(cfg: ExperimentConfig, *, force: bool = False) -> Path:
    """Teacher answers + cached teacher signal for ``cfg``'s training pool; returns the stage folder.

    Idempotent (a complete stage returns at once), resumable (finished chunks are kept), and shardable
    (under ``accelerate launch`` each process runs every N-th chunk; process 0 merges). Every process
    returns the same folder once the merge is done.
    """
    from uld.models import bind_run_models

    folder = RunFolder.for_config(cfg, kind="teacher")
    cfg = bind_run_models(cfg)
    rank, world, barrier, device = _distributed()
    if folder.exists(DONE_MARKER) and not force:
        return folder.path
    if rank == 0:
        if force and folder.path.exists():
            shutil.rmtree(folder.path)
        folder.init(stage_config(cfg))
    barrier()

    plan = _make_plan(cfg)
    _check_plan(folder.path, plan, write=rank == 0)
    barrier()
    if rank != 0:
        _check_plan(folder.path, plan, write=False)

    mine = [i for i in range(plan.n_chunks) if i % world == rank and not _chunk_path(folder.path, i).exists()]
    if mine:
        teacher = _Teacher(cfg, device)
        pool = [ex for ex, s in zip(plan.rows, plan.splits) if s == "train"] or plan.rows
        bar = _progress_bar(sum(len(plan.chunk(i)) for i in mine), disable=rank != 0)
        for i in mine:
            df, meta = _process_chunk(teacher, plan, i, pool, bar.update_counts)
            _write_chunk(_chunk_path(folder.path, i), df, meta)
        bar.close()
    barrier()
    if rank == 0:
        merge_chunks(folder.path, cfg=cfg, plan=plan)
    barrier()
    return folder.path


def _check_plan(folder: Path, plan: _Plan, *, write: bool) -> None:
    """Chunks on disk are only reusable when the rows and chunk size are the ones they were made with."""
    path = folder / "plan.json"
    want = plan.describe()
    if path.exists():
        have = json.loads(path.read_text())
        if have != want:
            diff = sorted(k for k in want if have.get(k) != want[k])
            raise TeacherStageError(
                f"{folder} holds chunks made with a different plan ({', '.join(diff)} differ: "
                f"{ {k: have.get(k) for k in diff} } vs { {k: want[k] for k in diff} }); "
                "rerun with the original generation.chunk_size or with force=True"
            )
    elif write:
        atomic_write_json(path, want)


class _Progress:
    def __init__(self, total: int, disable: bool):
        self.bar = None
        self.tokens = 0
        self.start = time.perf_counter()
        if not disable:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, unit="item", desc="teacher answers", dynamic_ncols=True)
            except ImportError:  # pragma: no cover
                self.bar = None

    def update_counts(self, n_rows: int, n_tokens: int) -> None:
        self.tokens += n_tokens
        if self.bar is not None:
            self.bar.update(n_rows)
            self.bar.set_postfix(tok_s=f"{self.tokens / max(time.perf_counter() - self.start, 1e-9):.1f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress_bar(total: int, disable: bool) -> _Progress:
    return _Progress(total, disable)


# --------------------------------------------------------------------------------------------------
# Merge
# --------------------------------------------------------------------------------------------------


ANSWER_COLUMNS = [
    "row_id", "split", "context", "question", "title", "gold", "teacher_prompt", "answer",
    "n_answer_tokens", "shot_ids", "generation", "n_prompt_tokens", "n_generated_tokens",
]


def merge_chunks(folder: str | Path, *, cfg: ExperimentConfig, plan: Optional[_Plan] = None) -> dict:
    """Check and merge the chunk files of a stage into answers.parquet + signal/ + stats.json + .done.

    Deterministic: chunks are read in index order, rows keep pool order. Raises TeacherStageError naming
    the chunk when a chunk file is missing or does not hold exactly its expected rows.
    Returns the stats dict.
    """
    import pandas as pd

    folder = Path(folder)
    plan = plan or _make_plan(cfg)
    expected_total = plan.n_chunks
    k = cfg.generation.top_k_signal

    frames, metas = [], []
    for i in range(expected_total):
        path = _chunk_path(folder, i)
        if not path.exists():
            raise TeacherStageError(f"teacher stage {folder}: chunk file {path.name} is missing (chunk {i} of {expected_total})")
        df, meta = _read_chunk(path)
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

    # signal arrays, memory-mappable, written to temp names and renamed in place
    sig_dir = folder / SIGNAL_DIR
    sig_dir.mkdir(parents=True, exist_ok=True)
    lengths = kept["signal_length"].astype(np.int64).to_numpy()
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else np.zeros(0, np.int64)
    n_tok = int(lengths.sum())
    tmp_p, tmp_t = sig_dir / ".probs.npy.tmp", sig_dir / ".tail.npy.tmp"
    probs = np.lib.format.open_memmap(tmp_p, mode="w+", dtype=np.float16, shape=(n_tok, k))
    tail = np.lib.format.open_memmap(tmp_t, mode="w+", dtype=np.float32, shape=(n_tok,))
    for off, n, pb, tb, rid in zip(offsets, lengths, kept["signal_probs"], kept["signal_tail"], kept["row_id"]):
        p = np.frombuffer(pb, dtype=np.float16)
        t = np.frombuffer(tb, dtype=np.float32)
        if p.size != n * k or t.size != n:
            raise TeacherStageError(f"teacher stage {folder}: signal of row {rid!r} has {p.size} values, expected {n}x{k}")
        probs[off : off + n] = p.reshape(n, k)
        tail[off : off + n] = t
    probs.flush()
    tail.flush()
    del probs, tail
    tmp_p.replace(sig_dir / "probs.npy")
    tmp_t.replace(sig_dir / "tail.npy")
    index = pd.DataFrame({"row_id": kept["row_id"], "offset": offsets.astype(np.int64), "length": lengths})
    _write_parquet(index, sig_dir / "index.parquet")

    answers = kept[ANSWER_COLUMNS].copy()
    _write_parquet(answers, folder / "answers.parquet")

    stats = _stats(folder, cfg, plan, all_rows, kept, metas, n_tok, k)
    atomic_write_json(folder / "stats.json", stats)
    atomic_write_json(folder / "generation.json", _generation_meta(cfg, all_rows))
    atomic_write_text(folder / DONE_MARKER, json.dumps({"n_kept": len(kept), "n_tokens": n_tok}) + "\n")
    return stats


def _write_parquet(df, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)


def _stats(folder, cfg, plan, all_rows, kept, metas, n_tok, k) -> dict:
    tail_path = folder / SIGNAL_DIR / "tail.npy"
    tail = np.load(tail_path, mmap_mode="r") if n_tok else np.zeros(0, np.float32)
    gen_s = sum(m.get("generation_seconds", 0.0) for m in metas)
    gen_tok = sum(m.get("generated_tokens", 0) for m in metas)
    gen_rows = sum(m.get("generated_rows", 0) for m in metas)
    sig_bytes = sum((folder / SIGNAL_DIR / f).stat().st_size for f in ("probs.npy", "tail.npy", "index.parquet"))
    try:
        vocab: Optional[int] = _vocab_size(cfg)
    except Exception:  # pragma: no cover - vocabulary unknown: leave the comparison out
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

    from uld.models import resolve_model

    r = resolve_model(cfg.teacher)
    conf = AutoConfig.from_pretrained(r.source, revision=r.revision, trust_remote_code=r.trust_remote_code)
    conf = getattr(conf, "text_config", None) or conf
    return int(conf.vocab_size)


def _generation_meta(cfg: ExperimentConfig, all_rows) -> dict:
    from importlib import metadata

    from uld.models import resolve_model, shots_for, title_for

    r = resolve_model(cfg.teacher)
    versions = {}
    for name in ("uld-repro", "torch", "transformers", "vllm"):
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
        "decoding": {
            "greedy": True,
            "max_new_tokens": cfg.generation.max_new_tokens,
            "first_line": cfg.generation.first_line,
            "backend": cfg.generation.backend,
        },
        "signal": {"top_k": cfg.generation.top_k_signal, "dtype": "float16", "tail_dtype": "float32",
                   "positions": "answer tokens + EOS", "temperature": cfg.generation.signal_temperature},
        "generation_config": to_dict(cfg.generation),
        "versions": versions,
    }


# --------------------------------------------------------------------------------------------------
# Reading the cache
# --------------------------------------------------------------------------------------------------


class TeacherSignalStore:
    """Memory-mapped reader of a stage's cached teacher signal.

    ``path`` is the stage folder or its ``signal/`` folder. Arrays are opened with ``mmap_mode="r"``
    (no pickle), so only the rows asked for are read from disk.
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        sig = path / SIGNAL_DIR if (path / SIGNAL_DIR).is_dir() else path
        for name in ("probs.npy", "tail.npy", "index.parquet"):
            if not (sig / name).is_file():
                raise FileNotFoundError(f"teacher signal store {sig}: {name} is missing (is the teacher stage complete?)")
        import pandas as pd

        self.path = sig
        self.probs = np.load(sig / "probs.npy", mmap_mode="r", allow_pickle=False)
        self.tail = np.load(sig / "tail.npy", mmap_mode="r", allow_pickle=False)
        idx = pd.read_parquet(sig / "index.parquet")
        self._index = {r: (int(o), int(n)) for r, o, n in zip(idx["row_id"], idx["offset"], idx["length"])}

    @property
    def k(self) -> int:
        return int(self.probs.shape[1])

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, row_id: str) -> bool:
        return row_id in self._index

    def length(self, row_id: str) -> int:
        return self._locate(row_id)[1]

    def _locate(self, row_id: str) -> tuple[int, int]:
        try:
            return self._index[row_id]
        except KeyError:
            raise KeyError(f"row {row_id!r} has no cached teacher signal in {self.path}") from None

    def get(self, row_ids: Sequence[str], *, top_k: Optional[int] = None, dtype=torch.float32) -> tuple[TeacherSignal, torch.Tensor]:
        """``(TeacherSignal(probs [n, T, k'], tail [n, T]), lengths [n])`` for ``row_ids``, zero-padded.

        ``top_k`` (<= the stored k) keeps fewer probabilities and folds the rest into the tail, so a
        smaller-k experiment can reuse a larger-k cache.
        """
        k = self.k if top_k is None else top_k
        if not 0 < k <= self.k:
            raise ValueError(f"top_k={top_k} but the cache at {self.path} holds k={self.k}")
        spans = [self._locate(r) for r in row_ids]
        lengths = torch.tensor([n for _, n in spans], dtype=torch.long)
        T = int(lengths.max()) if spans else 0
        probs = torch.zeros((len(spans), T, k), dtype=dtype)
        tail = torch.zeros((len(spans), T), dtype=dtype)
        for r, (off, n) in enumerate(spans):
            p = torch.from_numpy(np.array(self.probs[off : off + n], dtype=np.float32))
            t = torch.from_numpy(np.array(self.tail[off : off + n], dtype=np.float32))
            if k < self.k:
                t = t + p[:, k:].sum(dim=-1)
                p = p[:, :k]
            probs[r, :n] = p.to(dtype)
            tail[r, :n] = t.to(dtype)
        return TeacherSignal(probs=probs, tail=tail), lengths

    @staticmethod
    def mask(lengths: torch.Tensor, max_len: Optional[int] = None) -> torch.Tensor:
        """``lengths [n]`` -> bool ``[n, T]``, True on each row's first ``lengths[i]`` positions."""
        T = int(lengths.max()) if max_len is None and len(lengths) else (max_len or 0)
        return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]

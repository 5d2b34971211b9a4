"""Generate-and-score on a task's test split: the runner behind every number in the tables.

Protocol (the paper's): greedy decoding, at most 150 new tokens, only the first non-empty line of the
generation is kept (stripped). Students get the zero-shot prompt they were trained on
(``Task.student_prompt``); teachers are evaluated few-shot through their chat template, exactly as they
were prompted to write the training answers. Scores come from :mod:`uld.metrics` (corpus = mean x 100)
against ``Task.references(ex, protocol)``: ``"authors"`` for paper tables, ``"complete"`` for all
references.

Outputs in a run folder (or any output folder)::

    eval/predictions.jsonl   one row per test item: id, prompt_hash, prediction, references, scores
    eval/scores.json         the aggregate record (also copied to scores.json, which the store reads)

Every file is written atomically; a run that already has ``scores.json`` is skipped unless forced. While
a run is evaluated, its answers are journaled batch by batch (``eval/partial.<rank>.jsonl``,
:class:`AnswerJournal`): an evaluation killed part-way resumes with the questions it had not answered.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional, Sequence

from uld.config import DataConfig, EvaluationConfig, ExperimentConfig, ModelConfig
from uld.data import encode_prompt, encode_teacher_prompt, get_task, render_teacher_prompt, select_shots, test_split, training_pool
from uld.distributed import dist, on_main
from uld.errors import EvaluationError
from uld.generation import greedy_generate, keep_first_line  # noqa: F401  (keep_first_line re-exported)
from uld.io import atomic_write_json, atomic_write_text, json_dumps, remove
from uld.metrics import aggregate, bertscore_settings, rescore_file, score_examples
from uld.model_card import model_card
from uld.models import TOKENIZER_FILES, ResolvedModel, bind_run_models, has_tokenizer_files, load_model, load_tokenizer, resolve_model, shots_for, title_for
from uld.store import RunFolder

log = logging.getLogger(__name__)

__all__ = [
    "generate_predictions",
    "build_prompts",
    "evaluation_model",
    "run_prompts",
    "prompt_hash",
    "evaluate_model",
    "evaluate_run",
    "evaluate_checkpoint",
    "AnswerJournal",
    "score_predictions",
    "rescore_file",
    "EvaluationError",
]



# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------


def _encode(tokenizer, prompt: str, *, encoder_decoder: bool, add_special_tokens: bool) -> list[int]:
    return encode_prompt(tokenizer, prompt, encoder_decoder=encoder_decoder, add_special_tokens=add_special_tokens)


def generate_predictions(
    model,
    tokenizer,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 150,
    batch_size: int = 16,
    first_line: bool = True,
    encoder_decoder: bool = False,
    add_special_tokens: bool = True,
    progress: bool = True,
    desc: str = "generate",
    share_prefix: bool = False,
    on_batch: Optional[Any] = None,
) -> list[str]:
    """Greedy generations for ``prompts`` (text, or token ids already encoded), in input order.

    Prompts are sorted by length so a batch holds similar lengths (little padding), left-padded for a
    decoder-only model (every row's next token sits at the last position), right-padded for an
    encoder-decoder. Text prompts are encoded like the training prompts (``uld.data.encode_prompt``);
    ``add_special_tokens=False`` for text that already carries them (a rendered chat prompt).
    Post-processing: the first non-empty line, stripped (``first_line=False``: the whole text, stripped).
    ``share_prefix``: each batch's common opening is prefilled once (decoder-only; ``uld.generation``).
    ``on_batch(indices, answers)``: called after each batch (indices into ``prompts``).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    ids: list[list[int]] = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            ids.append(_encode(tokenizer, p, encoder_decoder=encoder_decoder, add_special_tokens=add_special_tokens))
        elif isinstance(p, (list, tuple)) and all(isinstance(t, int) for t in p):
            ids.append(list(p))
        else:
            raise TypeError(f"prompts[{i}] must be a str or a list of token ids, got {type(p).__name__}")
        if not ids[-1]:
            raise ValueError(f"prompts[{i}] encodes to no tokens")
    out = greedy_generate(
        model, tokenizer, ids, max_new_tokens=max_new_tokens, batch_size=batch_size, first_line=first_line,
        encoder_decoder=encoder_decoder, desc=desc if progress else None, share_prefix=share_prefix, on_batch=on_batch,
    )
    return out.answers


# --------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------


def prompt_hash(prompt: str) -> str:
    """Short content hash of a prompt: two runs saw the same input iff the hashes agree."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def _student_few_shot(task, ex, shots) -> str:
    # Same plain format as the zero-shot prompt: solved examples, a blank line, then the item.
    solved = [f"{task.student_prompt(s)} {task.gold_answer(s)}" for s in shots]
    return "\n\n".join(solved + [task.student_prompt(ex)])


def build_prompts(
    task,
    examples: Sequence[Any],
    *,
    target: str = "student",
    shots: Sequence[Any] = (),
    tokenizer=None,
    title: bool = False,
    system_role: bool = True,
    chat_template: Optional[str] = None,
) -> list[str]:
    """Prompt text per example.

    ``target="student"``: the zero-shot student prompt, or, with ``shots``, those solved examples in
    the same plain format before it. ``target="teacher"``: the chat-rendered few-shot prompt
    (``render_chat(tokenizer, task.teacher_messages(ex, shots, title=...))``); its text carries the
    special tokens, so encode it with ``add_special_tokens=False``.
    """
    if target == "student":
        if not shots:
            return [task.student_prompt(ex) for ex in examples]
        return [_student_few_shot(task, ex, shots) for ex in examples]
    if target != "teacher":
        raise ValueError(f"target must be 'student' or 'teacher', got {target!r}")
    if tokenizer is None:
        raise ValueError("teacher prompts need the teacher's tokenizer (for its chat template)")
    entry = SimpleNamespace(system_role=system_role, chat_template=chat_template)
    return [render_teacher_prompt(task, ex, list(shots), entry, tokenizer, title=title) for ex in examples]


# --------------------------------------------------------------------------------------------------
# Scoring and records
# --------------------------------------------------------------------------------------------------


def _bertscore_opts(cfg: EvaluationConfig) -> dict[str, Any]:
    return {
        "model_type": cfg.bertscore_model,
        "model_path": cfg.bertscore_path,
        "num_layers": cfg.bertscore_num_layers,
        "rescale": cfg.bertscore_rescale,
        "batch_size": cfg.bertscore_batch_size,
    }


def score_predictions(
    predictions: Sequence[str],
    references_lists: Sequence[Sequence[str]],
    cfg: EvaluationConfig,
    *,
    device: Optional[str] = None,
) -> tuple[list[dict[str, float]], dict[str, float], dict[str, Any]]:
    """(per-example scores, corpus metrics x 100, notes) for the metrics ``cfg`` asks for.

    BERTScore needs its model (roberta-large by default). If it is given by Hub name and cannot be
    loaded (offline), BERTScore is left out and ``notes["skipped"]`` says why; a local
    ``bertscore_path`` that fails to load is an error.
    """
    metrics = list(cfg.metrics)
    notes: dict[str, Any] = {"rouge_stemming": cfg.rouge_stemming}
    wants_bert = any(m == "bertscore" or m.startswith("bertscore_") for m in metrics)
    others = [m for m in metrics if not (m == "bertscore" or m.startswith("bertscore_"))]
    rows = score_examples(predictions, references_lists, others, rouge_stemming=cfg.rouge_stemming)
    if wants_bert:
        opts = _bertscore_opts(cfg)
        notes["bertscore"] = bertscore_settings(
            **{k: opts[k] for k in ("model_type", "model_path", "num_layers", "rescale")}
        )
        try:
            bert_rows = score_examples(
                predictions, references_lists, ["bertscore"], bertscore_opts={**opts, "device": device}
            )
        except OSError as exc:
            if cfg.bertscore_path is not None:
                raise
            reason = (f"BERTScore model {cfg.bertscore_model!r} could not be loaded ({exc.__class__.__name__}); "
                      f"offline, set evaluation.bertscore_path to a local copy")
            log.warning(reason)
            notes["skipped"] = {"bertscore": reason}
        else:
            for row, extra in zip(rows, bert_rows):
                row.update(extra)
    return rows, aggregate(rows), notes


def evaluate_model(
    model_source: Any,
    task: Any,
    examples: Sequence[Any],
    cfg: EvaluationConfig,
    *,
    prompts: Optional[Sequence[str]] = None,
    prompt_ids: Optional[Sequence[Sequence[int]]] = None,
    tokenizer: Any = None,
    encoder_decoder: Optional[bool] = None,
    add_special_tokens: bool = True,
    protocol: Optional[str] = None,
    device: Optional[str] = None,
    dtype: Optional[str] = None,
    model_info: Optional[dict[str, Any]] = None,
    journal: Optional[Path] = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Generate for ``examples`` and score them. Returns (per-example rows, scores record).

    ``model_source``: a loaded model (then ``tokenizer`` is required), a local folder / Hub id, or a
    ``uld.models.ResolvedModel``. ``prompts`` default to the task's zero-shot student prompts;
    ``prompt_ids`` (optional) are their token ids when the caller tokenizes them itself (teacher prompts).
    ``dtype`` (default ``cfg.dtype``) is the precision a model loaded here gets; a loaded model is used as is.
    The record's ``metrics`` are x 100; ``model`` describes what was evaluated.
    ``journal``: a folder where answers are appended batch by batch (:class:`AnswerJournal`), so an
    evaluation that is killed resumes with the questions it had not answered; the caller removes it.
    """
    task = get_task(task)
    examples = list(examples)
    if not examples:
        raise EvaluationError(f"no examples to evaluate for task {task.name!r}")
    protocol = protocol or cfg.references
    dtype = dtype or cfg.dtype
    model, tokenizer, enc_dec, info = _load(model_source, tokenizer, encoder_decoder, device=device, dtype=dtype)
    info = {**info, **(model_info or {})}
    if prompts is None:
        prompts = build_prompts(task, examples)
    if len(prompts) != len(examples):
        raise ValueError(f"{len(prompts)} prompts for {len(examples)} examples")
    if prompt_ids is not None and len(prompt_ids) != len(prompts):
        raise ValueError(f"{len(prompt_ids)} prompt_ids for {len(prompts)} prompts")
    inputs = prompt_ids if prompt_ids is not None else prompts
    # under `accelerate launch` each process answers every N-th item; the answers are gathered in order
    d = dist()
    shard = list(range(d.rank, len(examples), d.world))
    keys = [f"{ex.id}/{prompt_hash(p)}" for ex, p in zip(examples, prompts)]
    book = None
    if journal is not None:
        book = AnswerJournal(journal, _journal_fingerprint(info, cfg, dtype), rank=d.rank)
    done = book.load() if book is not None else {}
    todo = [i for i in shard if keys[i] not in done]
    if len(todo) < len(shard):
        log.info("resuming: %d of %d answers come from %s", len(shard) - len(todo), len(shard), journal)

    def record(idx: list[int], answers: list[str]) -> None:
        book.append([(keys[todo[j]], a) for j, a in zip(idx, answers)])

    fresh = generate_predictions(
        model, tokenizer, [inputs[i] for i in todo], max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
        first_line=cfg.first_line, encoder_decoder=enc_dec, add_special_tokens=add_special_tokens,
        desc=f"evaluate {task.name}", progress=d.is_main, share_prefix=cfg.share_prefix,
        on_batch=record if book is not None else None,
    ) if todo else []
    answered = dict(zip(todo, fresh))
    mine = [answered[i] if i in answered else done[keys[i]] for i in shard]
    predictions = [""] * len(examples)
    for part in d.gather(list(zip(shard, mine))):
        for i, pred in part:
            predictions[i] = pred
    references = [task.references(ex, protocol) for ex in examples]
    per, metrics, notes = on_main(lambda: score_predictions(predictions, references, cfg, device=device), d)
    rows = [
        {"id": ex.id, "prompt_hash": prompt_hash(p), "prediction": pred, "references": list(refs), **scores}
        for ex, p, pred, refs, scores in zip(examples, prompts, predictions, references, per)
    ]
    record = {
        "task": task.name,
        "split": "test",
        "n": len(rows),
        "target": cfg.target,
        "protocol": protocol,
        "checkpoint": None,
        "model": info,
        "metrics": metrics,
        "n_empty_predictions": sum(1 for p in predictions if not p),
        "generation": {"max_new_tokens": cfg.max_new_tokens, "first_line": cfg.first_line, "greedy": True,
                       "shots": cfg.shots, **({"dtype": dtype} if dtype else {}),
                       **({"share_prefix": True} if cfg.share_prefix else {})},
        "metric_settings": notes,
    }
    return rows, record


def _load(model_source, tokenizer, encoder_decoder, *, device, dtype):
    """-> (model, tokenizer, is_encoder_decoder, description)."""
    if isinstance(model_source, (str, os.PathLike)):
        model_source = resolve_model(ModelConfig(name=str(model_source)))
    if isinstance(model_source, ResolvedModel):
        resolved = model_source
        model = load_model(resolved, dtype=dtype)
        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
            tok_src = resolved if tokenizer is None else resolve_model(ModelConfig(name=str(tokenizer)))
            tokenizer = load_tokenizer(tok_src)
        enc_dec = resolved.is_encoder_decoder if encoder_decoder is None else encoder_decoder
        info = resolved.describe()
    else:
        model = model_source
        if tokenizer is None:
            raise ValueError("evaluate_model got a loaded model: pass its tokenizer too")
        enc_dec = bool(getattr(model.config, "is_encoder_decoder", False)) if encoder_decoder is None else encoder_decoder
        info = {"name": getattr(model.config, "_name_or_path", "") or type(model).__name__}
    if device is None:
        device = str(dist().device)  # this process's device under `accelerate launch`
    model.to(device)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, enc_dec, info


class AnswerJournal:
    """The answers an unfinished evaluation has generated so far, so a killed one resumes where it stopped.

    One file per process, ``<folder>/partial.<rank>.jsonl``: a header line ``{"fingerprint": ...}`` (the
    model, its weight files and the generation settings), then one line per answer ``{"key", "answer"}``
    (``key``: question id and prompt hash), appended after each batch, each line with one write.
    :meth:`load` reads every process's file whose header matches, so a resume may use another number of
    processes; a file written for other weights or settings is ignored and, for this process's own file,
    removed. A torn last line (a kill mid-append) is skipped. Greedy fp32 answers do not depend on which
    batch a question lands in, so a resumed evaluation gives the answers of an uninterrupted one.
    """

    def __init__(self, folder: Path, fingerprint: dict[str, Any], *, rank: int = 0):
        self.folder, self.fingerprint, self.path = Path(folder), fingerprint, Path(folder) / f"partial.{rank}.jsonl"

    def _files(self) -> list[Path]:
        return sorted(self.folder.glob("partial.*.jsonl")) if self.folder.is_dir() else []

    def load(self) -> dict[str, str]:
        from uld.io import read_jsonl, read_text

        if self.path.is_file():
            text = read_text(self.path)
            if text and not text.endswith("\n"):
                # a kill mid-append left a torn last line: drop it, so the next answer starts a line of its own
                atomic_write_text(self.path, text[: text.rfind("\n") + 1])
        out: dict[str, str] = {}
        for path in self._files():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # another process's torn last line: skipped, as it should be
                rows = read_jsonl(path)
            if not rows or rows[0].get("fingerprint") != self.fingerprint:
                log.info("%s: written for other weights or settings; not used", path)
                if path == self.path:
                    remove(path)
                continue
            for row in rows[1:]:
                if isinstance(row.get("key"), str) and isinstance(row.get("answer"), str):
                    out[row["key"]] = row["answer"]
        return out

    def append(self, answers: Sequence[tuple[str, str]]) -> None:
        from uld.io import append_jsonl

        if not self.path.exists():
            atomic_write_text(self.path, json_dumps({"fingerprint": self.fingerprint}, indent=None) + "\n")
        for key, answer in answers:
            append_jsonl(self.path, {"key": key, "answer": answer})


def _journal_fingerprint(info: dict[str, Any], cfg: EvaluationConfig, dtype: Optional[str]) -> dict[str, Any]:
    """What the answers depend on: the model as described, the size and modification time of its local
    weight files (a retrained checkpoint has new ones), and the generation settings."""
    source = Path(str(info.get("source", "")))
    weights = {}
    if source.is_dir():
        for f in sorted(source.glob("*.safetensors")):
            st = f.stat()
            weights[f.name] = [st.st_size, st.st_mtime_ns]
    return json.loads(json_dumps({"model": info, "weights": weights, "max_new_tokens": cfg.max_new_tokens,
                                  "first_line": cfg.first_line, "batch_size": cfg.batch_size, "dtype": dtype,
                                  "share_prefix": cfg.share_prefix, "shots": cfg.shots}, indent=None))


def _write_outputs(folder: Path, rows: list[dict[str, Any]], record: dict[str, Any]) -> None:
    """``eval/predictions.jsonl``, ``eval/scores.json`` and, last, ``scores.json`` (its presence means done)."""
    lines = "".join(json_dumps(r, indent=None) + "\n" for r in rows)
    atomic_write_text(folder / "eval" / "predictions.jsonl", lines)
    atomic_write_json(folder / "eval" / "scores.json", record)
    atomic_write_json(folder / "scores.json", record)


# --------------------------------------------------------------------------------------------------
# Runs and stand-alone checkpoints
# --------------------------------------------------------------------------------------------------


def evaluate_run(
    cfg: ExperimentConfig, run: RunFolder, model_dir: str | os.PathLike | None = None, *, force: bool = False
) -> dict[str, Any]:
    """Evaluate a run's checkpoint (or, for ``training.method: none``, the model itself) on the test split.

    Model: ``model_dir`` if given, else ``checkpoints/<evaluation.checkpoint>`` of the run; with method
    ``none`` or ``evaluation.target: teacher``, the registry's student / teacher. Skips (returns the
    stored record) when ``scores.json`` exists, unless ``force``. The outputs are built in a staging
    folder and committed into the run in one step, so a crash never leaves new predictions beside old
    scores. The evaluated checkpoint's model card gets the scores. Every process may call it; the main
    process evaluates.
    """
    if on_main(lambda: run.is_done and not force):  # a damaged scores.json is evaluated again
        log.info("%s: scores.json exists, skipping evaluation", run.path)
        return run.read_json("scores.json")
    return _evaluate_run(bind_run_models(cfg), run, model_dir)


def checkpoint_folder(cfg: ExperimentConfig, run: RunFolder, model_dir: str | os.PathLike | None = None) -> Path | None:
    """The weights folder a run is evaluated from: ``model_dir``, else the run's selected checkpoint;
    None when it is evaluated with a registry model (the teacher, or the untrained student)."""
    if cfg.evaluation.target == "teacher":
        return None
    if model_dir is None and cfg.training.method == "none":
        return None
    return Path(model_dir) if model_dir is not None else run.file("checkpoints", cfg.evaluation.checkpoint)


def evaluation_model(cfg: ExperimentConfig, run: RunFolder, model_dir: str | os.PathLike | None = None):
    """``(resolved model, checkpoint folder or None, checkpoint label or None)`` a run is evaluated with:
    the teacher, the run's selected checkpoint, ``model_dir``, or the untrained student."""
    ev = cfg.evaluation
    folder = checkpoint_folder(cfg, run, model_dir)
    if folder is None:
        return resolve_model(cfg.teacher if ev.target == "teacher" else cfg.student), None, None
    if not folder.is_dir():
        raise EvaluationError(f"checkpoint folder {folder} does not exist: train the run first (uld train) or pass model_dir")
    resolved = resolve_model(ModelConfig(name=cfg.student.name, path=str(folder), dtype=cfg.student.dtype))
    return resolved, folder, str(folder if model_dir is not None else ev.checkpoint)


def _evaluate_run(cfg: ExperimentConfig, run: RunFolder, model_dir: str | os.PathLike | None) -> dict[str, Any]:
    ev = cfg.evaluation
    task = get_task(cfg.data.task)
    examples = test_split(cfg.data)
    resolved, folder, checkpoint = evaluation_model(cfg, run, model_dir)
    tokenizer = load_tokenizer(resolved)
    prompts, prompt_ids, shots = run_prompts(cfg, task, examples, resolved, tokenizer)
    rows, record = evaluate_model(
        resolved, task, examples, ev, prompts=prompts, prompt_ids=prompt_ids, tokenizer=tokenizer, device=cfg.device,
        journal=run.file("eval"),  # replaced as a whole when the finished outputs are committed
    )
    record.update(checkpoint=checkpoint, run_id=run.id, method=cfg.training.method, shot_ids=[s.id for s in shots])
    on_main(lambda: _record_evaluation(cfg, run, folder if model_dir is None else None, rows, record))
    return record


def _record_evaluation(cfg: ExperimentConfig, run: RunFolder, checkpoint: Optional[Path], rows: list, record: dict) -> None:
    """The checkpoint's card first, then predictions and scores in one commit: scores.json means done."""
    if checkpoint is not None:
        card = model_card(cfg, run.id, step=_checkpoint_step(checkpoint), scores=record, checkpoint=checkpoint.name)
        atomic_write_text(checkpoint / "README.md", card)
    staging = run.staging("eval")
    try:
        _write_outputs(staging, rows, record)
    except Exception:
        remove(staging)  # a full disk gets its space back; the run keeps its old records
        raise
    run.commit(staging, ["eval", "scores.json"])


def _checkpoint_step(folder: Path) -> Optional[int]:
    try:
        return json.loads((folder / "checkpoint.json").read_text()).get("step")
    except (OSError, ValueError):
        return None


def run_prompts(cfg: ExperimentConfig, task, examples, resolved: ResolvedModel, tokenizer):
    """(prompts, token ids or None, shots) of a run's evaluation: the teacher's few-shot chat prompts,
    tokenized exactly as the teacher stage feeds them, or the student's plain prompts."""
    ev = cfg.evaluation
    if ev.target == "teacher":
        entry = resolved.entry
        k = shots_for(entry, task.name, cfg.data.teacher_shots)
        # the teacher stage draws its shots from the whole training part of the pool (no fraction)
        pool = list(training_pool(dataclasses.replace(cfg.data, train_fraction=1.0)).train)
        shots = select_shots(pool, k, cfg.data.split_seed) if k else []
        title = title_for(entry, task.name, cfg.data.teacher_title)
        prompts = [render_teacher_prompt(task, ex, shots, entry, tokenizer, title=title) for ex in examples]
        return prompts, [encode_teacher_prompt(tokenizer, p) for p in prompts], shots
    shots = select_shots(list(training_pool(cfg.data).train), ev.shots, cfg.data.split_seed) if ev.shots else []
    return build_prompts(task, examples, shots=shots), None, shots


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    task: str,
    *,
    data_dir: str | os.PathLike | None = None,
    test_size: Optional[int] = None,
    out_dir: str | os.PathLike,
    tokenizer: str | os.PathLike | None = None,
    eval_cfg: Optional[EvaluationConfig] = None,
    force: bool = False,
    device: Optional[str] = None,
) -> dict[str, Any]:
    """Evaluate any HF model folder or Hub id on ``task``'s test split with zero-shot student prompts.

    Writes ``out_dir/eval/predictions.jsonl``, ``out_dir/eval/scores.json`` and ``out_dir/scores.json``
    and returns the record. ``tokenizer`` (folder or Hub id) is needed when the checkpoint folder has
    no tokenizer files.
    """
    eval_cfg = eval_cfg or EvaluationConfig()
    out = Path(out_dir)
    if (out / "config.yaml").exists() or (out.parent.name == "runs" and (out / "env.json").exists()):
        raise EvaluationError(f"--out {out} is a run folder of the store; its records belong to its run "
                              "(use `uld evaluate CONFIG` to re-evaluate a run, or choose another --out)")
    if (out / "scores.json").exists() and not force:
        raise EvaluationError(f"{out / 'scores.json'} exists; pass --force to replace it, or choose another --out")
    if test_size is not None and test_size <= 0:
        raise EvaluationError(f"--test-size must be a positive number of items, got {test_size}")
    ckpt = Path(checkpoint)
    if ckpt.exists() and not ckpt.is_dir():
        raise EvaluationError(f"checkpoint {ckpt} is a file; give the model folder")
    if ckpt.is_dir() and tokenizer is None and not has_tokenizer_files(ckpt):
        raise EvaluationError(
            f"checkpoint folder {ckpt} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...): pass the "
            f"tokenizer the model was trained with, e.g. `uld evaluate --checkpoint {ckpt} --tokenizer DIR_OR_HUB_ID`"
        )
    task_obj = get_task(task)
    examples = test_split(DataConfig(task=task_obj.name, dir=str(data_dir) if data_dir else None, test_size=test_size))
    rows, record = evaluate_model(str(checkpoint), task_obj, examples, eval_cfg, tokenizer=tokenizer, device=device)
    record["checkpoint"] = str(checkpoint)
    on_main(lambda: _write_outputs(out, rows, record))
    return record

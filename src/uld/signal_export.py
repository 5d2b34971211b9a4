"""A teacher stage's signal as a Hugging Face dataset, and back (``uld signal export`` / ``uld signal import``).

The export is a folder ``datasets.load_dataset("parquet", data_dir=DIR)`` opens: parquet shards under
``data/`` (one row per teacher answer: the answer, its source item, the teacher token ids it predicts,
the sorted top-k probabilities and tail mass, a CRC32; :func:`uld.signal.write_signal_dataset`) and a
dataset card ``README.md`` (teacher, tokenizer, task, prompts, generation settings, format version, the
licence of the source data). The import writes a teacher-stage folder (``answers.parquet``, ``signal/``,
``generation.json``, ``config.yaml``, ``.done``) whose arrays are byte-identical to the exported stage's.
The format is ``docs/signal_format.md``.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from uld.answers import ANSWER_COLUMNS, ANSWERS_FILE, check_signal_matches, read_answers
from uld.data.teacher_prompts import encode_teacher_pair
from uld.errors import SignalError
from uld.io import atomic_write_json, atomic_write_text, read_json, read_text, remove, sha256_file, swap_dir, write_parquet
from uld.signal import (
    FORMAT_VERSION, SHARD_DIR, SIGNAL_DIR, TeacherSignalStore, read_signal_dataset, write_signal,
    write_signal_dataset,
)

__all__ = ["export_signal", "import_signal", "dataset_card", "DATA_LICENCES"]

# The source datasets' licences (../shared/README.md): the answers and passages in an export derive from them.
DATA_LICENCES = {
    "squad": ("cc-by-sa-4.0", "rajpurkar/squad"),
    "qed": ("cc-by-sa-3.0", "google-research-datasets/qed"),
    "fairytaleqa": ("apache-2.0", "GEM/FairytaleQA"),
    "pubmedqa": ("mit", "qiaojin/PubMedQA"),
    "dialogsum": ("cc-by-nc-sa-4.0", "knkarthick/dialogsum"),
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "merges.txt",
                    "special_tokens_map.json")
DONE_MARKER = ".done"  # uld.teacher's marker (a layer above: the name is the contract)


def _teacher_tokenizer(source: str, revision: Optional[str]):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise SignalError(f"cannot load the teacher tokenizer from {source!r} ({type(exc).__name__}); pass --tokenizer DIR") from None


def _tokenizer_record(tok, source: str) -> dict:
    folder = Path(source)
    files = {name: sha256_file(folder / name) for name in _TOKENIZER_FILES if (folder / name).is_file()}
    return {"source": source, "class": type(tok).__name__, "vocab_size": len(tok), "eos_token_id": tok.eos_token_id,
            "files_sha256": files}


def export_signal(stage: str | Path, out: str | Path, *, tokenizer: Optional[str] = None, rows_per_shard: int = 5000,
                  force: bool = False) -> list[Path]:
    """Export a complete teacher stage to ``out`` (built beside it, then swapped in); returns the shard paths.

    ``tokenizer``: folder of the teacher's tokenizer when the one the stage recorded has moved. Each
    answer is re-tokenized as the stage tokenized it; a count that differs from its signal positions is an
    error (the wrong tokenizer, or a stage out of sync).
    """
    stage, out = Path(stage), Path(out)
    if not (stage / DONE_MARKER).is_file():
        raise SignalError(f"{stage}: not a complete teacher stage (no {DONE_MARKER}); run `uld generate` first")
    if out.exists() and any(out.iterdir()) and not force:
        raise SignalError(f"{out}: exists and is not empty (pass --force to replace it)")
    store = TeacherSignalStore(stage)
    answers = read_answers(stage)
    check_signal_matches(answers, store, stage)
    answers = answers.set_index(answers["row_id"].astype(str)).loc[store.row_ids()].reset_index(drop=True)
    answers = answers[[c for c in ANSWER_COLUMNS if c in answers.columns]]
    gen = read_json(stage / "generation.json")
    teacher = gen.get("teacher", {})
    source = tokenizer or teacher.get("source") or teacher.get("hub_id")
    tok = _teacher_tokenizer(source, None if tokenizer else teacher.get("revision"))
    token_ids = []
    for prompt, answer in zip(answers["teacher_prompt"], answers["answer"]):
        enc = encode_teacher_pair(tok, prompt, answer)
        token_ids.append([int(t) for t in enc.labels if t != -100])
    meta = _provenance(stage, gen, _tokenizer_record(tok, source))
    staged = out.parent / f".{out.name}.export-tmp"
    remove(staged)
    staged.mkdir(parents=True)
    try:
        shards = write_signal_dataset(staged, answers, store, token_ids, meta, rows_per_shard=rows_per_shard)
        atomic_write_text(staged / "README.md", dataset_card(read_signal_dataset(staged).meta, stage))
    except BaseException:
        remove(staged)
        raise
    swap_dir(staged, out)
    return [out / p.relative_to(staged) for p in shards]


def _provenance(stage: Path, gen: dict, tokenizer: dict) -> dict:
    task = gen.get("task", "")
    licence, dataset = DATA_LICENCES.get(task, ("other", ""))
    try:
        version = metadata.version("uld-repro")
    except metadata.PackageNotFoundError:
        version = None
    return {
        "teacher": gen.get("teacher", {}),
        "tokenizer": tokenizer,
        "task": task,
        "source_data": {"task": task, "dataset": dataset, "licence": licence},
        "prompts": {key: gen.get(key) for key in ("shots", "title", "shot_seed", "chat_template", "system_role", "prompts_sha256")},
        "generation": {"decoding": gen.get("decoding"), "config": gen.get("generation_config")},
        "stage": {"id": stage.name, "config_yaml": read_text(stage / "config.yaml") if (stage / "config.yaml").is_file() else None,
                  "generation_json": gen},
        "exported_by": {"uld-repro": version},
    }


def dataset_card(meta: dict, stage: Path | str = "") -> str:
    """The ``README.md`` of an export: YAML front matter the Hub reads, then the provenance in prose."""
    src, teacher, tok = meta["source_data"], meta["teacher"], meta["tokenizer"]
    splits = sorted({name.split("/", 1)[1].split("-", 1)[0] for name in meta["shards"]})
    files = "\n".join(f"  - split: {s}\n    path: {SHARD_DIR}/{s}-*.parquet" for s in splits)
    decoding = meta["generation"].get("decoding") or {}
    prompts = meta["prompts"]
    return f"""---
license: {src['licence']}
pretty_name: ULD teacher signal, {teacher.get('name', '?')} on {meta['task']}
tags:
- knowledge-distillation
- universal-logit-distillation
- teacher-signal
configs:
- config_name: default
  data_files:
{files}
---

# Teacher signal: {teacher.get('name', '?')} on {meta['task']}

The sorted top-{meta['k']} next-token probabilities (and the remaining tail mass) of the teacher
`{teacher.get('hub_id') or teacher.get('name')}` at every position of its own greedy answers to the
`{meta['task']}` training pool: everything the Universal Logit Distillation loss (ULD, arXiv 2402.12030)
needs to distil this teacher into a student with any tokenizer, without the teacher in memory.
Written by `uld signal export` from teacher stage `{Path(stage).name or meta['stage']['id']}`.

- format: teacher-signal format version {meta['format_version']} (`docs/signal_format.md` in uld-repro);
  probabilities float16 `[n_positions, {meta['k']}]` per answer, tail float32, temperature {meta['temperature']}
- rows: {meta['n_rows']} answers, {meta['n_positions']} positions (each answer's tokens + EOS)
- teacher: `{teacher.get('hub_id')}` (revision `{teacher.get('revision')}`, {teacher.get('dtype')}), tokenizer
  `{tok.get('class')}` with {tok.get('vocab_size')} tokens, files sha256 {json.dumps(tok.get('files_sha256', {}))}
- prompts: {prompts.get('shots')} shot(s) (seed {prompts.get('shot_seed')}), template `{prompts.get('chat_template')}`,
  sha256 of all prompts `{prompts.get('prompts_sha256')}`
- generation: greedy {decoding.get('greedy')}, max_new_tokens {decoding.get('max_new_tokens')}, first line only
  {decoding.get('first_line')}

## Source data and licence

The passages, questions, references and answers derive from `{src['dataset']}` ({src['task']}), licensed
{src['licence']}; that licence applies to this dataset.

## Use

```python
import datasets
ds = datasets.load_dataset("parquet", data_dir="THIS_FOLDER")   # train / validation splits

from uld import TeacherSignalStore                            # pip install uld-repro
store = TeacherSignalStore.from_dataset("THIS_FOLDER")        # checked: version, shards, CRC per row
```
"""


def import_signal(path: str | Path, out: str | Path, *, force: bool = False) -> Path:
    """Write the exported signal at ``path`` as a teacher-stage folder ``out`` (built beside it, then
    swapped in): ``answers.parquet``, ``signal/`` (byte-identical arrays, the same index), and the stage's
    ``generation.json`` and ``config.yaml`` from the export's provenance. Returns ``out``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise SignalError(f"{out}: exists and is not empty (pass --force to replace it)")
    data = read_signal_dataset(path)
    staged = out.parent / f".{out.name}.import-tmp"
    remove(staged)
    try:
        _write_stage(staged, data, path)
    except BaseException:
        remove(staged)
        raise
    swap_dir(staged, out)
    return out


def _write_stage(staged: Path, data, path: str | Path) -> None:
    rows = [(data.probs[o : o + n], data.tail[o : o + n]) for o, n in zip(data.index["offset"], data.index["length"])]
    write_signal(staged / SIGNAL_DIR, data.index["row_id"].tolist(), rows, k=int(data.meta["k"]),
                 temperature=float(data.meta["temperature"]))
    TeacherSignalStore(staged / SIGNAL_DIR).verify()
    write_parquet(data.answers[[c for c in ANSWER_COLUMNS if c in data.answers.columns]], staged / ANSWERS_FILE)
    stage: dict[str, Any] = data.meta.get("stage", {})
    if stage.get("generation_json"):
        atomic_write_json(staged / "generation.json", stage["generation_json"])
    if stage.get("config_yaml"):
        atomic_write_text(staged / "config.yaml", stage["config_yaml"])
    atomic_write_text(staged / DONE_MARKER, json.dumps({"n_kept": len(data.answers), "n_tokens": int(len(data.tail)),
                                                         "imported_from": str(path), "format_version": FORMAT_VERSION}) + "\n")


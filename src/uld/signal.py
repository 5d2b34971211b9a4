"""The teacher signal: the teacher's next-token distributions at the answer positions.

ULD compares the student's and the teacher's distributions only after sorting them, so the identity of
the teacher's tokens never matters, only its sorted probabilities. This module computes them with one
teacher-forced pass (:func:`answer_logits`, also what online-teacher training calls), keeps the k
largest per position plus the mass of the rest (the *tail*), writes them once to a cache
(:func:`write_signal`) and serves them to training (:class:`TeacherSignalStore`): one teacher pass
serves every student and every λ, and the teacher is not resident while students train.

Positions: for an answer ``a_1 .. a_L`` tokenized after its prompt with an EOS appended
(:func:`uld.data.encode_teacher_pair`), the rows are the distributions that predict
``a_1 .. a_L, EOS``: ``L + 1`` rows per answer, in order, the positions
``uld.losses.answer_logit_mask(labels, causal=True)`` selects.

Cache layout (``<stage>/signal/``)::

    probs.npy      float16 [N, k]   top-k probabilities per position, sorted descending
    tail.npy       float32 [N]      1 - sum(top-k) per position, computed before rounding
    index.parquet  row_id, offset, length, crc32: row -> its positions [offset, offset + length)
    meta.json      format_version, k, temperature, dtypes, number of positions and rows

The reader checks everything it can before training trusts a byte: the format version, array shapes and
dtypes against ``meta.json``, an index that tiles the arrays exactly in order, the width and temperature
the config asks for, and (caches whose index has ``crc32``) a checksum of every row bound to its id, so a
shifted or swapped index is an error naming the file, not a silently wrong loss.

The same signal travels outside a stage as parquet shards (``uld signal export``, one row per answer;
:func:`read_signal_dataset` reads them back, :meth:`TeacherSignalStore.from_dataset` trains from them).
Both forms are specified, with their versioning rule, in ``docs/signal_format.md``.
"""

from __future__ import annotations

import inspect
import json
import zlib
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np
import torch

from uld.errors import SignalError
from uld.data.teacher_prompts import encode_teacher_pair
from uld.io import atomic_write_bytes, atomic_write_json, load_npy, read_json, read_parquet, replace, write_parquet
from uld.generation import layout, prefix_cache, usable_prefix
from uld.losses import TeacherSignal, answer_logit_mask, fold_tail, teacher_signal_from_logits

__all__ = [
    "FORMAT_VERSION",
    "signal_format_version",
    "read_signal_dataset",
    "SignalDataset",
    "answer_logits",
    "signal_rows",
    "online_teacher_signal",
    "pad_rows",
    "write_signal",
    "TeacherSignalStore",
    "SIGNAL_DIR",
]

SIGNAL_DIR = "signal"
# The version of docs/signal_format.md this module writes; the readers accept exactly these.
FORMAT_VERSION = 1
KNOWN_VERSIONS = (1,)
# What every stage's generation.json said about its signal before the version was written: the
# version-1 layout (see signal_format_version).
_V1_RECORD = {"positions": "answer tokens + EOS", "dtype": "float16", "tail_dtype": "float32"}


# --------------------------------------------------------------------------------------------------
# Computing it
# --------------------------------------------------------------------------------------------------


def _accepts(model: Any, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
        return False


@torch.no_grad()
def answer_logits(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, *, skip_eos: bool = False,
    shared: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A frozen teacher's logits from the first answer-predicting column on: ``([B, T - f, V], mask [B, T - f])``.

    ``labels [B, T]`` is -100 off the answers; ``mask`` marks the positions that predict an answer
    token (its last, the EOS, dropped with ``skip_eos``). Rows may be padded on either side: position
    ids are given explicitly, so padding changes nothing. The prompt columns are never compared, so
    they are not projected onto the vocabulary (``logits_to_keep``): with a 256k-token teacher that
    projection is most of the teacher's cost.

    ``shared > 0`` says every row opens with the same ``shared`` tokens, unpadded (``uld.generation``'s
    ``[prefix][pads][tail]`` layout): they go through the model once and the rows continue from that
    cache. It must not reach the first answer-predicting column.
    """
    mask = answer_logit_mask(labels, causal=True, skip_eos=skip_eos)
    cols = mask.any(dim=0).nonzero()
    first = int(cols[0]) if len(cols) else mask.shape[1] - 1
    keep = mask.shape[1] - first
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
    if _accepts(model, "position_ids"):
        kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
    if shared:
        if shared > first:
            raise ValueError(f"shared prefix of {shared} tokens reaches the answer columns (first at {first})")
        kwargs["input_ids"] = input_ids[:, shared:]
        kwargs["past_key_values"] = prefix_cache(model, input_ids[:1, :shared], input_ids.shape[0])
        if "position_ids" in kwargs:
            kwargs["position_ids"] = kwargs["position_ids"][:, shared:]
    if _accepts(model, "logits_to_keep"):
        logits = model(**kwargs, logits_to_keep=keep).logits[:, -keep:]
    else:
        logits = model(**kwargs).logits[:, first - shared :]
    return logits, mask[:, first:].to(logits.device)


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
    share_prefix: bool = False,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Teacher-forced pass over ``prompt + answer (+ EOS)``; one ``(probs [L, k], tail [L])`` per row (float32).

    Rows are tokenized with :func:`uld.data.encode_teacher_pair` and batched by length (left-padded
    when the model takes position ids), and only the answer columns are projected.
    A pair longer than ``max_length`` raises ``uld.data.PromptTooLong`` (it is never truncated). When
    ``k`` exceeds the vocabulary the missing columns are zero probabilities. ``share_prefix`` runs each
    batch's common opening once (``uld.generation.greedy_generate``).
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    encoded = []
    for p, a in zip(prompts, answers):
        enc = encode_teacher_pair(tokenizer, p, a, max_length=max_length, add_eos=add_eos)
        encoded.append((list(enc.input_ids), list(enc.labels)))
    # left padding puts every answer in the last columns (fewest projected positions); a model that
    # takes no position ids would shift left-padded rows, so it gets right padding
    left = _accepts(model, "position_ids")
    out: list[Optional[tuple[torch.Tensor, torch.Tensor]]] = [None] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        shared = _shared_prefix(model, [encoded[i] for i in idx]) if share_prefix and left else 0
        ids, _ = layout([encoded[i][0] for i in idx], pad_id, shared=shared, right_pad=not left)
        attn = layout([[1] * len(encoded[i][0]) for i in idx], 0, shared=shared, right_pad=not left)[0]
        labels = layout([encoded[i][1] for i in idx], -100, shared=shared, right_pad=not left)[0]
        logits, mask = answer_logits(model, ids.to(device), attn.to(device), labels.to(device), shared=shared)
        top, tail = teacher_signal_from_logits(logits[mask], k, temperature=temperature)
        if top.shape[-1] < k:
            top = torch.nn.functional.pad(top, (0, k - top.shape[-1]))
        offsets = np.cumsum([0] + mask.sum(dim=1).tolist())
        for r, i in enumerate(idx):
            out[i] = (top[offsets[r] : offsets[r + 1]].float().cpu(), tail[offsets[r] : offsets[r + 1]].float().cpu())
    return out  # type: ignore[return-value]


def _shared_prefix(model, pairs: Sequence[tuple[list[int], list[int]]]) -> int:
    """Tokens a batch of ``(input_ids, labels)`` rows shares before any answer label, or 0 when not worth it."""
    if len(pairs) < 2:
        return 0
    before_answer = min(next((j for j, y in enumerate(lab) if y != -100), len(lab)) for _, lab in pairs)
    return usable_prefix(model, [x for x, _ in pairs], cap=before_answer - 1)


def pad_rows(rows: Sequence[tuple[torch.Tensor, torch.Tensor]], k: int, dtype=torch.float32) -> tuple[TeacherSignal, torch.Tensor]:
    """Rows of ``(probs [L_i, k], tail [L_i])`` as one zero-padded ``TeacherSignal [n, T, k]`` and lengths ``[n]``."""
    lengths = torch.tensor([len(p) for p, _ in rows], dtype=torch.long)
    T = int(lengths.max()) if len(rows) else 0
    probs = torch.zeros((len(rows), T, k), dtype=dtype)
    tail = torch.zeros((len(rows), T), dtype=dtype)
    for r, (p, t) in enumerate(rows):
        probs[r, : len(p)] = p.to(dtype)
        tail[r, : len(t)] = t.to(dtype)
    return TeacherSignal(probs=probs, tail=tail), lengths


def online_teacher_signal(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], k: int, **kwargs) -> tuple[TeacherSignal, torch.Tensor]:
    """The signal computed now, without a cache: ``(TeacherSignal(probs [n, T, k], tail [n, T]), lengths [n])``.

    float32, zero-padded after each row's ``lengths[i]`` positions; keyword arguments as :func:`signal_rows`.
    The teacher stage caches exactly these values (probabilities as float16), so a cache can be
    checked against this function.
    """
    return pad_rows(signal_rows(model, tokenizer, prompts, answers, k, **kwargs), k)


# --------------------------------------------------------------------------------------------------
# Caching it
# --------------------------------------------------------------------------------------------------


def _crc(row_id: str, p: np.ndarray, t: np.ndarray) -> int:
    """Checksum of a row's values bound to its id: an index whose rows point at other rows' values fails it."""
    crc = zlib.crc32(np.ascontiguousarray(p).tobytes(), zlib.crc32(str(row_id).encode()))
    return zlib.crc32(np.ascontiguousarray(t).tobytes(), crc)


def write_signal(folder: str | Path, row_ids: Sequence[str], rows: Sequence[tuple[np.ndarray, np.ndarray]], *, k: int,
                 temperature: float) -> dict:
    """Write the cache of ``rows`` (``(probs [L, k] float16, tail [L] float32)`` per row id) to
    ``folder`` (the ``signal/`` folder): arrays first, then the index, then ``meta.json``, each
    atomically. Returns the meta record."""
    import pandas as pd

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lengths = np.array([len(t) for _, t in rows], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(rows) else np.zeros(0, np.int64)
    n = int(lengths.sum())
    tmp_p, tmp_t = folder / ".probs.npy.tmp", folder / ".tail.npy.tmp"
    probs = np.lib.format.open_memmap(tmp_p, mode="w+", dtype=np.float16, shape=(n, k))
    tail = np.lib.format.open_memmap(tmp_t, mode="w+", dtype=np.float32, shape=(n,))
    crcs = []
    for rid, off, length, (p, t) in zip(row_ids, offsets, lengths, rows):
        p = np.asarray(p, dtype=np.float16).reshape(-1, k) if np.asarray(p).size else np.zeros((0, k), np.float16)
        t = np.asarray(t, dtype=np.float32)
        if p.shape != (length, k):
            raise SignalError(f"{folder}: row {rid!r} has a signal of shape {p.shape}, expected ({length}, {k})")
        probs[off : off + length] = p
        tail[off : off + length] = t
        crcs.append(_crc(rid, p, t))
    probs.flush()
    tail.flush()
    del probs, tail
    replace(tmp_p, folder / "probs.npy")
    replace(tmp_t, folder / "tail.npy")
    index = pd.DataFrame({"row_id": list(row_ids), "offset": offsets, "length": lengths,
                          "crc32": np.array(crcs, dtype=np.int64)})
    write_parquet(index, folder / "index.parquet")
    meta = {"format_version": FORMAT_VERSION, "k": int(k), "temperature": float(temperature), "probs_dtype": "float16", "tail_dtype": "float32",
            "n_positions": n, "n_rows": len(row_ids), "positions": "answer tokens + EOS"}
    atomic_write_json(folder / "meta.json", meta)
    return meta


# --------------------------------------------------------------------------------------------------
# Reading it
# --------------------------------------------------------------------------------------------------


def _check_version(version: Any, where: Path) -> int:
    if version not in KNOWN_VERSIONS:
        raise SignalError(f"{where}: teacher-signal format_version {version!r} is not one this uld reads "
                          f"(known: {', '.join(map(str, KNOWN_VERSIONS))}); see docs/signal_format.md")
    return int(version)


def signal_format_version(sig: str | Path, meta: Optional[dict] = None) -> int:
    """The format version of a stage's ``signal/`` folder, or a :class:`SignalError` naming the file.

    ``meta.json`` carries ``format_version`` since version 1 was written down. A folder without one is read
    as version 1 only when it sits in a teacher stage whose ``generation.json`` describes the version-1
    layout (``signal``: positions "answer tokens + EOS", float16 probabilities, float32 tail), which every
    stage written before the version existed records; anything else without a version is refused.
    """
    sig = Path(sig)
    meta_path = sig / "meta.json"
    if meta is None and meta_path.is_file():
        meta = read_json(meta_path)
    if meta is not None and "format_version" in meta:
        return _check_version(meta["format_version"], meta_path)
    gen = sig.parent / "generation.json"
    record = read_json(gen).get("signal", {}) if gen.is_file() else {}
    if all(record.get(key) == value for key, value in _V1_RECORD.items()):
        return 1
    where = meta_path if meta is not None else sig
    raise SignalError(f"{where}: the teacher signal has no format_version, and {gen} does not describe the version-1 "
                      "layout either; see docs/signal_format.md")


class TeacherSignalStore:
    """Memory-mapped, checked reader of a stage's cached teacher signal.

    ``path`` is the stage folder or its ``signal/`` folder. ``expect_k`` / ``expect_temperature``: what
    the config asks for (a cache of another width or temperature is refused). Arrays are opened with
    ``mmap_mode="r"`` and no pickle, so only the rows asked for are read from disk.
    :meth:`from_dataset` reads the exported parquet form instead (held in memory).
    """

    def __init__(self, path: str | Path, *, expect_k: Optional[int] = None, expect_temperature: Optional[float] = None):
        path = Path(path)
        sig = path / SIGNAL_DIR if (path / SIGNAL_DIR).is_dir() else path
        for name in ("probs.npy", "tail.npy", "index.parquet"):
            if not (sig / name).is_file():
                raise FileNotFoundError(f"teacher signal store {sig}: {name} is missing (is the teacher stage complete?)")
        meta = read_json(sig / "meta.json") if (sig / "meta.json").is_file() else self._legacy_meta(sig)
        meta["format_version"] = signal_format_version(sig, meta if (sig / "meta.json").is_file() else None)
        self._setup(sig, load_npy(sig / "probs.npy"), load_npy(sig / "tail.npy"), read_parquet(sig / "index.parquet"), meta,
                    sig / "index.parquet", expect_k, expect_temperature)

    @classmethod
    def from_dataset(cls, path: str | Path, *, expect_k: Optional[int] = None,
                     expect_temperature: Optional[float] = None) -> "TeacherSignalStore":
        """The signal of an exported dataset folder (``uld signal export``: parquet shards), checked as
        :func:`read_signal_dataset` checks it and held in memory; no teacher stage needed."""
        data = read_signal_dataset(path)
        store = cls.__new__(cls)
        store._setup(Path(path), data.probs, data.tail, data.index, data.meta, Path(path), expect_k, expect_temperature)
        return store

    def _setup(self, sig: Path, probs, tail, idx, meta: dict, index_path: Path, expect_k: Optional[int],
               expect_temperature: Optional[float]) -> None:
        self.path, self.probs, self.tail, self.meta = sig, probs, tail, meta
        self._check_arrays()
        self._index = self._check_index(idx, index_path)
        if expect_k is not None and self.k != expect_k:
            raise SignalError(f"{sig / 'probs.npy'}: the cached signal keeps the top {self.k} probabilities, "
                              f"the config asks for generation.top_k_signal={expect_k}")
        if expect_temperature is not None and float(self.meta.get("temperature", 1.0)) != float(expect_temperature):
            raise SignalError(f"{sig}: the signal was cached at temperature {self.meta.get('temperature')}, "
                              f"the config asks for {expect_temperature}")

    @property
    def format_version(self) -> int:
        return int(self.meta["format_version"])

    @staticmethod
    def _legacy_meta(sig: Path) -> dict:
        """Caches written before ``meta.json`` existed: the stage's ``generation.json`` says the rest."""
        gen = sig.parent / "generation.json"
        signal = read_json(gen).get("signal", {}) if gen.is_file() else {}
        return {"temperature": float(signal.get("temperature", 1.0)), "k": signal.get("top_k")}

    def _check_arrays(self) -> None:
        p, t = self.probs, self.tail
        if p.ndim != 2 or p.dtype != np.float16:
            raise SignalError(f"{self.path / 'probs.npy'}: expected a float16 [positions, k] array, got {p.dtype} {p.shape}")
        if t.ndim != 1 or t.dtype != np.float32 or t.shape[0] != p.shape[0]:
            raise SignalError(f"{self.path / 'tail.npy'}: expected float32 [{p.shape[0]}], got {t.dtype} {t.shape}")
        for key, have in (("k", p.shape[1]), ("n_positions", p.shape[0])):
            want = self.meta.get(key)
            if want is not None and int(want) != int(have):
                raise SignalError(f"{self.path / 'meta.json'}: says {key}={want}, the arrays have {have}")

    def _check_index(self, idx, where: Path) -> dict[str, tuple[int, int, Optional[int]]]:
        for col in ("row_id", "offset", "length"):
            if col not in idx.columns:
                raise SignalError(f"{where}: missing column {col!r}")
        offsets, lengths = idx["offset"].to_numpy(np.int64), idx["length"].to_numpy(np.int64)
        expected = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else lengths
        bad = np.nonzero(offsets != expected)[0]
        if len(bad) or (lengths < 0).any():
            i = int(bad[0]) if len(bad) else int(np.nonzero(lengths < 0)[0][0])
            raise SignalError(f"{where}: row {idx['row_id'].iloc[i]!r} starts at {offsets[i]}, expected {expected[i]}: "
                              "the index does not tile the signal arrays (shifted or edited index)")
        if int(lengths.sum()) != self.probs.shape[0]:
            raise SignalError(f"{where}: the rows cover {int(lengths.sum())} positions, the arrays hold {self.probs.shape[0]}")
        ids = idx["row_id"].astype(str)
        if ids.duplicated().any():
            raise SignalError(f"{where}: row {ids[ids.duplicated()].iloc[0]!r} appears more than once")
        crcs = idx["crc32"].to_numpy(np.int64) if "crc32" in idx.columns else [None] * len(idx)
        return {r: (int(o), int(n), None if c is None else int(c)) for r, o, n, c in zip(ids, offsets, lengths, crcs)}

    @property
    def k(self) -> int:
        return int(self.probs.shape[1])

    @property
    def temperature(self) -> float:
        return float(self.meta.get("temperature", 1.0))

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, row_id: str) -> bool:
        return row_id in self._index

    def row_ids(self) -> list[str]:
        return list(self._index)

    def length(self, row_id: str) -> int:
        return self._locate(row_id)[1]

    def _locate(self, row_id: str) -> tuple[int, int, Optional[int]]:
        try:
            return self._index[row_id]
        except KeyError:
            raise KeyError(f"row {row_id!r} has no cached teacher signal in {self.path}") from None

    def get(self, row_ids: Sequence[str], *, top_k: Optional[int] = None, dtype=torch.float32) -> tuple[TeacherSignal, torch.Tensor]:
        """``(TeacherSignal(probs [n, T, k'], tail [n, T]), lengths [n])`` for ``row_ids``, zero-padded.

        ``top_k`` (<= the stored k) keeps fewer probabilities and folds the rest into the tail, so a
        smaller-k experiment can reuse a larger-k cache. Every row with a stored checksum is verified.
        """
        k = self.k if top_k is None else top_k
        if not 0 < k <= self.k:
            raise ValueError(f"top_k={top_k} but the cache at {self.path} holds k={self.k}")
        rows = []
        for rid in row_ids:
            off, n, crc = self._locate(rid)
            p = np.asarray(self.probs[off : off + n])
            t = np.asarray(self.tail[off : off + n])
            if crc is not None and _crc(rid, p, t) != crc:
                raise SignalError(f"{self.path}: the signal of row {rid!r} does not match its checksum in index.parquet "
                                  "(the index or the arrays were altered)")
            pt, tt = torch.from_numpy(p.astype(np.float32)), torch.from_numpy(t.astype(np.float32))
            if k < self.k:
                pt, tt = fold_tail(pt, tt, k)
            rows.append((pt, tt))
        return pad_rows(rows, k, dtype=dtype)

    def verify(self) -> None:
        """Check every row against its stored checksum (a full read of the cache, once)."""
        for rid, (off, n, crc) in self._index.items():
            if crc is not None and _crc(rid, np.asarray(self.probs[off : off + n]), np.asarray(self.tail[off : off + n])) != crc:
                raise SignalError(f"{self.path}: the signal of row {rid!r} does not match its checksum in index.parquet "
                                  "(the index or the arrays were altered)")

    @staticmethod
    def mask(lengths: torch.Tensor, max_len: Optional[int] = None) -> torch.Tensor:
        """``lengths [n]`` -> bool ``[n, T]``, True on each row's first ``lengths[i]`` positions."""
        T = int(lengths.max()) if max_len is None and len(lengths) else (max_len or 0)
        return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


# --------------------------------------------------------------------------------------------------
# The dataset form: parquet shards, one row per answer (docs/signal_format.md)
# --------------------------------------------------------------------------------------------------

SHARD_META_KEY = b"uld_signal"
SHARD_DIR = "data"
# the stage's split names -> the Hub's split file names (`load_dataset` recognises these)
SPLIT_FILES = {"train": "train", "val": "validation"}
SIGNAL_COLUMNS = ("format_version", "row_index", "row_id", "split", "n_positions", "answer_token_ids", "probs", "tail",
                  "crc32")
# keys every shard of one export carries with the same value
_SHARED_KEYS = ("format_version", "k", "temperature", "n_rows", "n_positions", "shards")


class SignalDataset(NamedTuple):
    """An exported signal read back: what a stage holds, in the stage's own layout.

    answers: one row per answer in signal order (the stage's answer columns + ``answer_token_ids``);
    probs ``float16 [N, k]``, tail ``float32 [N]`` (N positions); index: ``row_id, offset, length, crc32``
    (a stage's ``index.parquet``); meta: the shards' common record (version, k, temperature, provenance).
    """

    answers: Any
    probs: np.ndarray
    tail: np.ndarray
    index: Any
    meta: dict


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _ragged(values: np.ndarray, lengths: np.ndarray, pa_type):
    import pyarrow as pa

    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa_type) if not isinstance(values, pa.Array)
                                    else values)


def write_signal_dataset(out: str | Path, answers, store: "TeacherSignalStore", token_ids: Sequence[Sequence[int]], meta: dict,
                         *, rows_per_shard: int = 5000) -> list[Path]:
    """Write ``store``'s signal with its ``answers`` (a DataFrame in the store's row order) and the teacher
    ``token_ids`` each row predicts as parquet shards ``out/data/<split>-NNNNN-of-NNNNN.parquet``.

    Every shard carries ``meta`` (provenance) plus the format version, k, temperature, totals and the
    list of shard names in its schema metadata; the version is also a column, so it survives
    ``datasets.load_dataset``. Each shard is written atomically. Returns the shard paths.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    ids = [str(r) for r in answers["row_id"]]
    if ids != store.row_ids():
        raise SignalError(f"{store.path}: the answers and the signal list different rows (or another order)")
    if rows_per_shard < 1:
        raise SignalError(f"rows per shard must be >= 1, got {rows_per_shard}")
    plan: list[tuple[str, np.ndarray]] = []
    splits = answers["split"].astype(str).to_numpy()
    for split, stem in SPLIT_FILES.items():
        rows = np.nonzero(splits == split)[0]
        parts = [rows[i : i + rows_per_shard] for i in range(0, len(rows), rows_per_shard)]
        plan += [(f"{SHARD_DIR}/{stem}-{i:05d}-of-{len(parts):05d}.parquet", part) for i, part in enumerate(parts)]
    unknown = sorted(set(splits) - set(SPLIT_FILES))
    if unknown:
        raise SignalError(f"{store.path}: rows of split {unknown[0]!r} (expected {sorted(SPLIT_FILES)})")
    record = {**meta, "format_version": FORMAT_VERSION, "k": store.k, "temperature": store.temperature,
              "probs_dtype": "float16", "tail_dtype": "float32", "positions": _V1_RECORD["positions"],
              "n_rows": len(ids), "n_positions": int(store.probs.shape[0]), "shards": [name for name, _ in plan]}
    written = []
    for name, rows in plan:
        sub = answers.iloc[rows].reset_index(drop=True)
        spans = [store._locate(ids[r]) for r in rows]
        lengths = np.array([n for _, n, _ in spans], dtype=np.int64)
        for r, n in zip(rows, lengths):
            if len(token_ids[r]) != n:
                raise SignalError(f"{store.path}: row {ids[r]!r} has {n} signal positions but {len(token_ids[r])} teacher "
                                  "token ids (answer + EOS): the tokenizer is not the teacher's")
        probs = np.concatenate([np.asarray(store.probs[o : o + n]) for o, n, _ in spans] or [np.zeros((0, store.k), np.float16)])
        tail = np.concatenate([np.asarray(store.tail[o : o + n]) for o, n, _ in spans] or [np.zeros(0, np.float32)])
        flat_ids = np.concatenate([np.asarray(token_ids[r], dtype=np.int32) for r in rows] or [np.zeros(0, np.int32)])
        table = pa.Table.from_pandas(sub, preserve_index=False)
        columns = {
            "format_version": pa.array(np.full(len(rows), FORMAT_VERSION, np.int32)),
            "row_index": pa.array(rows.astype(np.int64)),
            "n_positions": pa.array(lengths.astype(np.int32)),
            "answer_token_ids": _ragged(flat_ids, lengths, pa.int32()),
            "probs": _ragged(pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1), pa.float16()), store.k), lengths, None),
            "tail": _ragged(tail, lengths, pa.float32()),
            # a stage written before checksums has none: the export computes them (the values are the stage's)
            "crc32": pa.array(np.array([_crc(ids[r], store.probs[o : o + n], store.tail[o : o + n]) if c is None else c
                                        for r, (o, n, c) in zip(rows, spans)], dtype=np.int64)),
        }
        for col, values in columns.items():
            table = table.append_column(col, values)
        order = ["format_version", "row_index", "row_id", "split"] + [c for c in table.column_names if c not in SIGNAL_COLUMNS]
        table = table.select(order + [c for c in SIGNAL_COLUMNS if c not in order])
        table = table.replace_schema_metadata({SHARD_META_KEY: json.dumps({**record, "shard": name}).encode()})
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        written.append(atomic_write_bytes(path, sink.getvalue().to_pybytes()))
    return written


def _read_shard(path: Path, root: Path):
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
        raise SignalError(f"{path}: unreadable parquet shard ({_one_line(exc)})") from None
    raw = (table.schema.metadata or {}).get(SHARD_META_KEY)
    if raw is None:
        raise SignalError(f"{path}: no teacher-signal format_version in its metadata (not a shard written by "
                          "`uld signal export`); see docs/signal_format.md")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise SignalError(f"{path}: its teacher-signal metadata is not JSON") from None
    _check_version(meta.get("format_version"), path)
    missing = [c for c in SIGNAL_COLUMNS if c not in table.column_names]
    if missing:
        raise SignalError(f"{path}: missing column(s) {missing}")
    if meta.get("shard") != path.relative_to(root).as_posix():
        raise SignalError(f"{path}: the shard says it is {meta.get('shard')!r} (renamed or moved shard)")
    versions = set(table.column("format_version").to_pylist())
    if versions != {meta["format_version"]}:
        raise SignalError(f"{path}: rows of format_version {sorted(versions)} in a shard of version {meta['format_version']}")
    return table, meta


def read_signal_dataset(path: str | Path) -> SignalDataset:
    """Read and check an exported signal (``uld signal export``): every shard present, readable and of a
    known version, one export's shards only, rows in order, shapes, and each row's CRC32. Any failure is a
    :class:`SignalError` naming the shard (and the row)."""
    import pandas as pd
    import pyarrow as pa

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such exported teacher signal folder")
    files = sorted(p for p in root.rglob("*.parquet") if not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise SignalError(f"{root}: no parquet shards (expected {SHARD_DIR}/*.parquet written by `uld signal export`)")
    tables, metas = [], []
    for f in files:
        table, meta = _read_shard(f, root)
        tables.append(table.append_column("_shard", pa.array([str(f)] * table.num_rows)))
        metas.append(meta)
    first = metas[0]
    for f, m in zip(files, metas):
        for key in _SHARED_KEYS:
            if m.get(key) != first.get(key):
                raise SignalError(f"{f}: says {key}={m.get(key)!r} but {files[0]} says {first.get(key)!r} "
                                  "(shards of different exports)")
    present = {f.relative_to(root).as_posix() for f in files}
    for name in first["shards"]:
        if name not in present:
            raise SignalError(f"{root / name}: shard missing ({len(present)} of {len(first['shards'])} present)")
    k = int(first["k"])
    table = pa.concat_tables(tables, promote_options="default")
    table = table.take(pa.array(np.argsort(table.column("row_index").to_numpy(), kind="stable")))
    shard_of = table.column("_shard").to_pylist()
    row_index = table.column("row_index").to_numpy()
    ids = [str(r) for r in table.column("row_id").to_pylist()]
    if not np.array_equal(row_index, np.arange(len(row_index))) or len(row_index) != first["n_rows"]:
        bad = next((i for i, r in enumerate(row_index) if r != i), min(len(row_index), len(shard_of) - 1))
        raise SignalError(f"{shard_of[bad]}: row_index does not run 0..{first['n_rows'] - 1} across the shards "
                          f"(row {ids[bad]!r} has {row_index[bad]})")
    lengths = table.column("n_positions").to_numpy().astype(np.int64)
    probs_col, tail_col, tok_col = (table.column(c).combine_chunks() for c in ("probs", "tail", "answer_token_ids"))
    if probs_col.type.value_type != pa.list_(pa.float16(), k):
        raise SignalError(f"{shard_of[0]}: column probs is {probs_col.type}, expected list<fixed_size_list<halffloat, {k}>>")
    for name, col in (("probs", probs_col), ("tail", tail_col), ("answer_token_ids", tok_col)):
        counts = col.value_lengths().to_numpy(zero_copy_only=False)
        bad = np.nonzero(counts != lengths)[0]
        if len(bad):
            i = int(bad[0])
            raise SignalError(f"{shard_of[i]}: row {ids[i]!r} has {counts[i]} {name} entries, n_positions says {lengths[i]}")
    probs = np.asarray(probs_col.flatten().flatten().to_numpy(zero_copy_only=False), dtype=np.float16).reshape(-1, k)
    tail = np.asarray(tail_col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(lengths) else np.zeros(0, np.int64)
    crcs = table.column("crc32").to_numpy()
    for i, (rid, off, n) in enumerate(zip(ids, offsets, lengths)):
        if _crc(rid, probs[off : off + n], tail[off : off + n]) != int(crcs[i]):
            raise SignalError(f"{shard_of[i]}: the signal of row {rid!r} does not match its crc32 (the shard was altered)")
    answers = table.drop_columns(["_shard", "format_version", "row_index", "n_positions", "probs", "tail", "crc32"]).to_pandas()
    index = pd.DataFrame({"row_id": ids, "offset": offsets, "length": lengths, "crc32": crcs.astype(np.int64)})
    meta = {key: value for key, value in first.items() if key != "shard"}
    return SignalDataset(answers, probs, tail, index, meta)

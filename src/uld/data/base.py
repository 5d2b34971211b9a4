"""Examples, the task base class, the task registry and the split rules shared by all five tasks.

A task turns rows of its public dataset into :class:`Example` objects and knows its prompts. Rows come
either from local files in the dataset's original public format (``data_dir`` or ``$ULD_DATA_DIR``)
or from the Hugging Face Hub; both paths produce the same intermediate record (the local format), so
one ``parse_row`` validates both. Adding a task = one module defining a :class:`Task` subclass plus
one line in :data:`TASKS` (``uld/data/__init__.py`` registers the built-in ones).
"""

from __future__ import annotations

from uld.errors import DataError

import dataclasses
import logging
import math
import os
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Literal, Mapping, Optional

log = logging.getLogger(__name__)

DATA_DIR_ENV = "ULD_DATA_DIR"
Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = ("train", "test")

__all__ = [
    "DATA_DIR_ENV",
    "DataError",
    "Example",
    "Task",
    "TASKS",
    "register_task",
    "get_task",
    "resolve_data_dir",
    "select_shots",
    "PoolSplit",
    "training_pool",
    "test_split",
    "split_pool",
    "shuffled_order",
    "articles",
    "sample_articles",
]


@dataclass(frozen=True)
class Example:
    """One evaluable item, normalised across tasks.

    ``answers`` holds every reference the source gives, in source order; ``answers[0]`` is the
    gold answer used for supervised training and the one reference of the authors' protocol for
    single-reference tasks.
    """

    id: str  # unique within (task, split)
    context: str  # passage / story section / abstract / dialogue
    question: str  # "" for DialogSum
    answers: tuple[str, ...]
    title: str = ""


# --------------------------------------------------------------------------------------------------
# Row validation helpers (used by every task's parse_row)
# --------------------------------------------------------------------------------------------------


class RowContext:
    """Where a row came from, to build errors that point at it."""

    def __init__(self, task: str, split: str, row: str):
        self.task, self.split, self.row = task, split, row

    def error(self, field: str, message: str) -> DataError:
        return DataError(message, task=self.task, split=self.split, row=self.row, field=field)

    def get(self, record: Mapping[str, Any], field: str) -> Any:
        reason = getattr(record, "reason", None)  # an unreadable JSON line (see uld.data._io)
        if reason is not None:
            raise self.error("", f"not valid JSON ({reason})")
        if not isinstance(record, Mapping):
            raise self.error("", f"expected an object (mapping), got {type(record).__name__}")
        if field not in record:
            raise self.error(field, "missing field")
        return record[field]

    def text(self, record: Mapping[str, Any], field: str, *, allow_empty: bool = False) -> str:
        """A string field; surrounding whitespace is kept out of prompts."""
        value = self.get(record, field)
        if not isinstance(value, str):
            raise self.error(field, f"expected a string, got {type(value).__name__} ({value!r:.60})")
        value = value.strip()
        if not value and not allow_empty:
            raise self.error(field, "empty")
        return value

    def answers(self, values: Iterable[Any], field: str) -> tuple[str, ...]:
        out = []
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise self.error(f"{field}[{i}]", f"expected a string, got {type(v).__name__}")
            if not v.strip():
                raise self.error(f"{field}[{i}]", "empty answer")
            out.append(v.strip())
        if not out:
            raise self.error(field, "no answer")
        return tuple(out)


# --------------------------------------------------------------------------------------------------
# Task base class and registry
# --------------------------------------------------------------------------------------------------

TaskKind = Literal["extractive", "generative", "medical", "dialogue"]


class Task:
    """Base class. Subclasses set the class attributes and implement the three row hooks."""

    name: ClassVar[str]
    kind: ClassVar[TaskKind]
    hub_id: ClassVar[str]
    system_prompt: ClassVar[str]
    context_label: ClassVar[str] = "Context"
    question_label: ClassVar[str] = "Question"
    answer_label: ClassVar[str] = "Answer"
    has_question: ClassVar[bool] = True

    # ---- hooks -----------------------------------------------------------------------------------
    def local_files(self, split: Split, root: Path) -> list[Path]:
        """The files ``split`` is read from under ``root`` (checked to exist before reading)."""
        raise NotImplementedError

    def local_rows(self, split: Split, files: list[Path]) -> Iterator[tuple[str, Any]]:
        """(row label, raw record) pairs in file order; the label is used in error messages."""
        raise NotImplementedError

    def hub_rows(self, split: Split) -> Iterator[tuple[str, Any]]:
        """Same as :meth:`local_rows`, records mapped to the local format, read from the Hub."""
        raise NotImplementedError

    def parse_row(self, record: Any, ctx: RowContext) -> Example:
        raise NotImplementedError

    # ---- loading ---------------------------------------------------------------------------------
    def load(self, split: Split, data_dir: str | os.PathLike | None = None) -> list[Example]:
        """All examples of ``split`` ("train": the whole training pool; "test": the evaluated split).

        ``data_dir``: a folder holding ``<task>/...`` in the original formats; None reads
        ``$ULD_DATA_DIR`` and, if that is unset too, the Hugging Face Hub. Any invalid row raises
        :class:`DataError`. Parsed splits are cached in-process (keyed on file paths and mtimes).
        """
        examples, problems = self.load_report(split, data_dir)
        if problems:
            raise problems[0]
        return examples

    def load_report(
        self, split: Split, data_dir: str | os.PathLike | None = None
    ) -> tuple[list[Example], list[DataError]]:
        """Lenient load: (valid examples, one DataError per invalid or duplicate row).

        Missing files still raise at once: there is nothing to count.
        """
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r} (one of {list(SPLITS)})", task=self.name, split=str(split))
        root = resolve_data_dir(data_dir)
        if root is None:
            examples, problems = self._collect(split, self.hub_rows(split))
            return list(examples), list(problems)
        files = self.local_files(split, root / self.name)
        for f in files:
            if not f.is_file():
                raise DataError(
                    f"missing file {f} (expected the original {self.name} files under {root / self.name}; "
                    f"set data.dir / ${DATA_DIR_ENV} to the folder holding '{self.name}/')",
                    task=self.name,
                    split=split,
                )
        key = tuple((str(f.resolve()), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
        examples, problems = _load_cached(type(self), split, key)
        return list(examples), list(problems)

    def _collect(self, split: str, rows: Iterable[tuple[str, Any]]) -> tuple[tuple[Example, ...], tuple[DataError, ...]]:
        examples: list[Example] = []
        problems: list[DataError] = []
        seen: dict[str, str] = {}
        for label, record in rows:
            ctx = RowContext(self.name, split, label)
            try:
                ex = self.parse_row(record, ctx)
            except DataError as exc:
                problems.append(exc)
                continue
            if ex.id in seen:
                problems.append(
                    DataError(f"duplicate id {ex.id!r} (first seen at row {seen[ex.id]!r})", task=self.name,
                              split=split, row=label, field="id")
                )
                continue
            seen[ex.id] = label
            examples.append(ex)
        if problems:
            log.warning("%s/%s: %d invalid rows (first: %s)", self.name, split, len(problems), problems[0])
        return tuple(examples), tuple(problems)

    # ---- prompts ---------------------------------------------------------------------------------
    def student_prompt(self, ex: Example) -> str:
        """Zero-shot student prompt, identical at training and evaluation time (no trailing space)."""
        parts = [f"{self.context_label}: {ex.context}"]
        if self.has_question:
            parts.append(f"{self.question_label}: {ex.question}")
        parts.append(f"{self.answer_label}:")
        return "\n".join(parts)

    def prompt_parts(self, ex: Example) -> tuple[str, str, str]:
        """(before, context, after) with ``before + context + after == student_prompt(ex)``.

        ``encode_pair`` uses it to shorten only the context when a length limit bites.
        """
        prompt = self.student_prompt(ex)
        before = f"{self.context_label}: "
        assert prompt.startswith(before + ex.context)
        return before, ex.context, prompt[len(before) + len(ex.context):]

    def teacher_user_turn(self, ex: Example, *, title: bool) -> str:
        """The user turn for one item: the student prompt, optionally headed by the passage title."""
        text = self.student_prompt(ex)
        if title and ex.title:
            text = f"Title: {ex.title.replace('_', ' ')}\n{text}"
        return text

    def teacher_messages(self, ex: Example, shots: list[Example], *, title: bool = False) -> list[dict]:
        """System prompt, then one user/assistant pair per shot (gold answer), then ``ex``'s user turn."""
        if any(s.id == ex.id for s in shots):
            raise DataError("a few-shot example is the item being asked", task=self.name, row=ex.id)
        msgs = [{"role": "system", "content": self.system_prompt}]
        for s in shots:
            msgs.append({"role": "user", "content": self.teacher_user_turn(s, title=title)})
            msgs.append({"role": "assistant", "content": self.gold_answer(s)})
        msgs.append({"role": "user", "content": self.teacher_user_turn(ex, title=title)})
        return msgs

    # ---- targets ---------------------------------------------------------------------------------
    def gold_answer(self, ex: Example) -> str:
        """The supervised target for ``sft-gold`` and for few-shot turns."""
        if not ex.answers:
            raise DataError("no gold answer (the source annotates none)", task=self.name, row=ex.id, field="answers")
        return ex.answers[0]

    def references(self, ex: Example, protocol: Literal["authors", "complete"] = "authors") -> list[str]:
        """References for scoring. ``authors``: what the paper's authors scored against; ``complete``:
        every reference the source has. Default (override per task): all answers either way."""
        if protocol not in ("authors", "complete"):
            raise ValueError(f"unknown reference protocol {protocol!r} (authors | complete)")
        if not ex.answers:
            raise DataError("no reference answer", task=self.name, row=ex.id, field="answers")
        return list(ex.answers)

    def __repr__(self) -> str:
        return f"<Task {self.name} ({self.kind})>"


@lru_cache(maxsize=32)
def _load_cached(cls: type, split: str, key: tuple) -> tuple[tuple[Example, ...], tuple[DataError, ...]]:
    task = cls()
    files = [Path(p) for p, _, _ in key]
    return task._collect(split, task.local_rows(split, files))  # noqa: SLF001


TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: ``TASKS[cls.name] = cls``."""
    TASKS[cls.name] = cls
    return cls


_ALIASES = {"fairytale_qa": "fairytaleqa", "pubmed_qa": "pubmedqa", "dialog_sum": "dialogsum"}


def get_task(name: str | Task) -> Task:
    """A task instance by name (case-insensitive; the authors' folder names are accepted too)."""
    if isinstance(name, Task):
        return name
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in TASKS:
        raise DataError(f"unknown task {name!r} (one of {sorted(TASKS)})")
    return TASKS[key]()


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Optional[Path]:
    """Explicit folder, else ``$ULD_DATA_DIR``, else None (= the Hub)."""
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or None
    if data_dir is None:
        return None
    p = Path(data_dir).expanduser()
    if not p.is_dir():
        raise DataError(f"data folder {p} does not exist")
    return p


def hub_dataset(*args: Any, **kwargs: Any):
    """``datasets.load_dataset`` with a hint when offline (imported lazily: datasets is heavy)."""
    try:
        from datasets import load_dataset
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise DataError("reading from the Hub needs the 'datasets' package") from exc
    try:
        return load_dataset(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - network / cache errors come in many types
        raise DataError(
            f"could not load {args[0]!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}). "
            f"Offline? Point data.dir or ${DATA_DIR_ENV} at a folder with the original files."
        ) from exc


# --------------------------------------------------------------------------------------------------
# Few-shot selection and the train / validation / test rules
# --------------------------------------------------------------------------------------------------


def select_shots(pool: list[Example], k: int, seed: int, *, exclude: Iterable[str] = ()) -> list[Example]:
    """``k`` few-shot examples drawn from ``pool`` with a seeded RNG, never one whose id is excluded.

    The same (pool, k, seed) gives the same shots for every item, so teacher prompts share a prefix;
    an item that is itself among the shots gets the next candidate of the same seeded order instead.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k == 0:
        return []
    excluded = set(exclude)
    # Items without a gold answer cannot serve as a shot (the shot's answer is the gold one).
    eligible = sum(1 for ex in pool if ex.answers and ex.id not in excluded)
    if eligible < k:
        raise DataError(f"cannot draw {k} few-shot examples from {eligible} eligible items of a pool of {len(pool)}")
    # One fixed stream of draws per seed: exclusions only skip draws, they never reshuffle the rest.
    rng = random.Random(seed)
    chosen: list[int] = []
    while len(chosen) < k:
        i = rng.randrange(len(pool))
        if i not in chosen and pool[i].answers and pool[i].id not in excluded:
            chosen.append(i)
    shots = [pool[i] for i in chosen]
    return shots


class PoolSplit(tuple):
    """``(train, val)``, unpackable like a pair; ``.info`` records what was done (counts, rules)."""

    info: dict

    def __new__(cls, train: list[Example], val: list[Example], info: dict):
        obj = super().__new__(cls, (train, val))
        obj.info = info
        return obj

    @property
    def train(self) -> list[Example]:
        return self[0]

    @property
    def val(self) -> list[Example]:
        return self[1]


def split_pool(
    pool: list[Example],
    *,
    train_start: int = 0,
    train_size: int | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 42,
    train_fraction: float = 1.0,
    fraction_mode: str = "first",
    pool_order: str = "file",
    sample_seed: int = 0,
) -> PoolSplit:
    """Cut a training pool into (train, val), in this order:

    0. ``pool_order="shuffled"``: the pool is first permuted with :func:`shuffled_order` (``sample_seed``),
       so the slice below is a random sample spread across the source's articles; ``"file"`` keeps it;
    1. ``train_start`` / ``train_size``: keep N rows of the pool from row ``train_start`` (default: the
       first N), so two runs can train on disjoint slices (of one permutation, when shuffled);
    2. hold out ``round(val_fraction * N)`` rows drawn with ``random.Random(split_seed)`` for
       checkpoint selection (both parts keep pool order);
    3. ``train_fraction`` of the remaining train part: the first ``ceil(f * n)`` rows (``"first"``,
       the paper's rule) or a seeded random subset in pool order (``"random"``).
    The validation part never changes with ``train_fraction``, so fraction ablations share it.
    """
    if not 0 < train_fraction <= 1:
        raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if fraction_mode not in ("first", "random"):
        raise ValueError(f"fraction_mode must be 'first' or 'random', got {fraction_mode!r}")
    if pool_order not in ("file", "shuffled"):
        raise ValueError(f"pool_order must be 'file' or 'shuffled', got {pool_order!r}")
    info: dict[str, Any] = {"pool_size": len(pool)}
    if train_start < 0:
        raise ValueError(f"train_start must be >= 0, got {train_start}")
    if pool_order == "shuffled":
        pool = [pool[i] for i in shuffled_order(len(pool), sample_seed, "pool")]
        info.update(pool_order=pool_order, sample_seed=sample_seed)
    rows = pool[train_start:]
    rows = rows[:train_size] if train_size is not None else rows
    info["after_train_size"] = len(rows)
    if train_start:
        info["train_start"] = train_start
    n_val = int(round(val_fraction * len(rows)))
    val_idx = set(random.Random(split_seed).sample(range(len(rows)), n_val))
    val = [ex for i, ex in enumerate(rows) if i in val_idx]
    train = [ex for i, ex in enumerate(rows) if i not in val_idx]
    info["val_size"] = len(val)
    info["train_before_fraction"] = len(train)
    if train_fraction < 1:
        n_keep = max(1, math.ceil(train_fraction * len(train))) if train else 0
        if fraction_mode == "first":
            train = train[:n_keep]
        else:
            # A separate stream from the hold-out draw, so changing the fraction never moves val.
            keep = set(random.Random(f"{split_seed}/fraction").sample(range(len(train)), n_keep))
            train = [ex for i, ex in enumerate(train) if i in keep]
    info["train_size"] = len(train)
    info.update(
        train_size_limit=train_size,
        val_fraction=val_fraction,
        split_seed=split_seed,
        train_fraction=train_fraction,
        fraction_mode=fraction_mode,
    )
    if not train:
        raise DataError(f"the training part is empty after the split rules ({info})")
    return PoolSplit(train, val, info)


def training_pool(data_cfg: Any) -> PoolSplit:
    """``(train, val)`` for ``data_cfg`` (a ``uld.config.DataConfig``); ``.info`` holds the counts."""
    task = get_task(data_cfg.task)
    pool = task.load("train", data_cfg.dir)
    out = split_pool(
        pool,
        train_start=getattr(data_cfg, "train_start", 0),
        train_size=data_cfg.train_size,
        val_fraction=data_cfg.val_fraction,
        split_seed=data_cfg.split_seed,
        train_fraction=data_cfg.train_fraction,
        fraction_mode=data_cfg.fraction_mode,
        pool_order=getattr(data_cfg, "pool_order", "file"),
        sample_seed=getattr(data_cfg, "sample_seed", 0),
    )
    out.info["task"] = task.name
    log.info("%s training pool: %s", task.name, out.info)
    return out


def shuffled_order(n: int, seed: int, stream: str) -> list[int]:
    """A permutation of ``range(n)`` drawn with ``random.Random(f"{seed}/{stream}")``.

    One named stream per use ("pool", "test"), so sampling the evaluated split never moves the training
    sample of the same seed; string seeding is stable across Python versions and processes.
    """
    order = list(range(n))
    random.Random(f"{seed}/{stream}").shuffle(order)
    return order


def test_split(data_cfg: Any) -> list[Example]:
    """The evaluated split of ``data_cfg.task``: the first ``data_cfg.test_size`` rows or, with
    ``test_order="shuffled"``, ``test_size`` rows drawn at random (``sample_seed``), kept in file order."""
    task = get_task(data_cfg.task)
    rows = task.load("test", data_cfg.dir)
    if data_cfg.test_size is None:
        return rows
    if getattr(data_cfg, "test_order", "file") == "shuffled":
        keep = sorted(shuffled_order(len(rows), data_cfg.sample_seed, "test")[: data_cfg.test_size])
        return [rows[i] for i in keep]
    return rows[: data_cfg.test_size]


def articles(examples: Iterable[Example]) -> dict[str, int]:
    """Source article (``Example.title``) -> number of examples, most frequent first ("" = no title)."""
    counts: dict[str, int] = {}
    for ex in examples:
        counts[ex.title] = counts.get(ex.title, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def sample_articles(data_cfg: Any) -> dict[str, dict[str, int]]:
    """Which articles a config's data draw from: ``{"train": {...}, "val": {...}, "test": {...}}``,
    each :func:`articles` of that part (the training part before any ``train_fraction``)."""
    train, val = training_pool(dataclasses.replace(data_cfg, train_fraction=1.0))
    return {"train": articles(train), "val": articles(val), "test": articles(test_split(data_cfg))}


test_split.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite the name


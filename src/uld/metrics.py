"""The paper's answer-quality metrics: SQuAD token F1 / exact match, ROUGE, BERTScore.

All per-example scores are fractions in [0, 1]; corpus scores (``aggregate``, ``score_corpus``) are
means x 100, the scale of the paper's tables. Every metric takes, per example, ONE prediction and a
non-empty LIST of references, and scores the prediction against its best-matching reference.

Agreement with the authors' numbers (checked by ``tests/unit/test_author_rescoring.py`` on their own
``predictions.jsonl`` files, 99 runs):

- F1 and EM: official SQuAD v1.1 normalisation (lower case, ASCII punctuation removed, articles
  a/an/the dropped, whitespace collapsed), max over references. Reproduces the authors' F1, EM and their
  token precision/recall exactly on every file, given the authors' references: for QED they scored
  against the FIRST span of the first Natural Questions annotation only (``protocol="authors"``);
  ``protocol="complete"`` takes the max over all spans (e.g. 55.33 -> 56.31 F1 on one run). SQuAD v1.1
  semantics are kept on purpose: an empty prediction scores F1 0 against everything, and EM 1 only
  against a reference that normalises to the empty string.
- Exact match: the authors' code is reported to count a prediction containing "no response" twice. We
  do not copy that; none of the 99 reference files has such a prediction, so it changes none of them.
- ROUGE: ``rouge-score`` without stemming (as ``evaluate``'s ``rouge`` metric runs it by default), max
  F-measure over references (``RougeScorer.score_multi``). ``evaluate`` aggregates with a bootstrap
  (the median of 1,000 resampled means, unseeded); we report the plain mean, which is deterministic.
  The two differ by the bootstrap's noise only (measured: at most a few hundredths of a point).
  rouge-score's tokenizer keeps only ``[a-z0-9]`` runs, so non-ASCII letters split words (as for the
  authors).
- BERTScore: ``bert-score`` with roberta-large, layer 17, baseline rescaling, lang "en" (the paper's
  setting). It needs the roberta-large weights; offline, point ``model_path`` at a local copy.

This module is pure Python plus the two metric libraries; nothing here trains or generates.
"""

from __future__ import annotations

import json
import os
import re
import string
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Optional, Sequence

__all__ = [
    "ROUGE_TYPES",
    "METRIC_KEYS",
    "METRIC_GROUPS",
    "MetricInputError",
    "normalize_answer",
    "token_f1",
    "token_prf",
    "exact_match",
    "span_start_error",
    "rouge_scores",
    "bertscore",
    "bertscore_settings",
    "score_examples",
    "aggregate",
    "score_corpus",
    "references_from_author_answers",
    "read_predictions",
    "rescore_file",
]

ROUGE_TYPES: tuple[str, ...] = ("rouge1", "rouge2", "rougeL", "rougeLsum")
BERTSCORE_KEYS: tuple[str, ...] = ("bertscore_f1", "bertscore_precision", "bertscore_recall")
# Keys of a corpus score dict, in table order. token_precision / token_recall come with "f1" (the
# authors report them as "precision" / "recall").
METRIC_KEYS: tuple[str, ...] = (
    "f1", "em", *ROUGE_TYPES, *BERTSCORE_KEYS, "token_precision", "token_recall",
)
# Names accepted in ``EvaluationConfig.metrics`` -> the keys they produce.
METRIC_GROUPS: dict[str, tuple[str, ...]] = {
    "f1": ("f1", "token_precision", "token_recall"),
    "em": ("em",),
    "rouge": ROUGE_TYPES,
    **{k: ROUGE_TYPES for k in ROUGE_TYPES},
    "bertscore": BERTSCORE_KEYS,
    **{k: BERTSCORE_KEYS for k in BERTSCORE_KEYS},
}


from uld.errors import MetricInputError  # noqa: E402


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------


def _check_prediction(prediction: Any, where: str = "") -> str:
    if not isinstance(prediction, str):
        raise TypeError(f"{where}prediction must be a str, got {type(prediction).__name__}")
    return prediction


def _check_references(references: Any, where: str = "") -> Sequence[str]:
    # A bare string would silently be scored character by character.
    if isinstance(references, str) or not isinstance(references, (list, tuple)):
        raise TypeError(f"{where}references must be a list of str, got {type(references).__name__}")
    if len(references) == 0:
        raise ValueError(f"{where}references is an empty list: every prediction needs at least one reference")
    for i, ref in enumerate(references):
        if not isinstance(ref, str):
            raise TypeError(f"{where}references[{i}] must be a str, got {type(ref).__name__}")
    return references


def _check_corpus(predictions: Any, references_lists: Any) -> None:
    if isinstance(predictions, str) or not isinstance(predictions, Sequence):
        raise TypeError(f"predictions must be a list of str, got {type(predictions).__name__}")
    if isinstance(references_lists, str) or not isinstance(references_lists, Sequence):
        raise TypeError(f"references_lists must be a list of lists of str, got {type(references_lists).__name__}")
    if len(predictions) != len(references_lists):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references_lists)} reference lists: they must pair up"
        )
    for i, (pred, refs) in enumerate(zip(predictions, references_lists)):
        _check_prediction(pred, f"row {i}: ")
        _check_references(refs, f"row {i}: ")


# --------------------------------------------------------------------------------------------------
# SQuAD v1.1 token F1 and exact match
# --------------------------------------------------------------------------------------------------

_PUNCT = frozenset(string.punctuation)  # ASCII only, as in the official script
_ARTICLES = re.compile(r"\b(a|an|the)\b")


@lru_cache(maxsize=1 << 16)
def normalize_answer(s: str) -> str:
    """Official SQuAD v1.1 normalisation: lower, drop ASCII punctuation, drop a/an/the, collapse spaces.

    Non-ASCII punctuation (curly quotes, dashes) is kept, exactly as in the official script.
    """
    if not isinstance(s, str):
        raise TypeError(f"normalize_answer expects a str, got {type(s).__name__}")
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _prf(pred_tokens: list[str], ref_tokens: list[str]) -> tuple[float, float, float]:
    common = Counter(pred_tokens) & Counter(ref_tokens)
    same = sum(common.values())
    if same == 0:  # includes empty-vs-empty (SQuAD v1.1: F1 0)
        return 0.0, 0.0, 0.0
    precision = same / len(pred_tokens)
    recall = same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall), precision, recall


def token_prf(prediction: str, references: list[str]) -> tuple[float, float, float]:
    """(F1, precision, recall) of SQuAD tokens, EACH maximised over the references independently.

    The independent maxima are what the authors report as "precision" and "recall" beside F1.
    """
    _check_prediction(prediction)
    _check_references(references)
    pred = normalize_answer(prediction).split()
    scores = [_prf(pred, normalize_answer(r).split()) for r in references]
    return max(s[0] for s in scores), max(s[1] for s in scores), max(s[2] for s in scores)


def token_f1(prediction: str, references: list[str]) -> float:
    """SQuAD v1.1 token F1 in [0, 1], max over ``references`` (a non-empty list of str)."""
    return token_prf(prediction, references)[0]


def exact_match(prediction: str, references: list[str]) -> float:
    """1.0 if the normalised prediction equals any normalised reference, else 0.0 (SQuAD v1.1)."""
    _check_prediction(prediction)
    _check_references(references)
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(r) for r in references))


def span_start_error(prediction: str, references: Sequence[str]) -> Optional[bool]:
    """True when a non-empty answer's first normalised word is the first word of no reference
    (e.g. "in 1960" against "1960"); None for an empty answer, which starts no span.

    A diagnostic of where extractive answers go wrong, shared by the run diagnostics and the study breakdowns.
    """
    words = normalize_answer(str(prediction)).split()
    if not words:
        return None
    return words[0] not in {(normalize_answer(str(r)).split() or [""])[0] for r in references}


# --------------------------------------------------------------------------------------------------
# ROUGE
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _rouge_scorer(stemming: bool, rouge_types: tuple[str, ...]):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=stemming)


def rouge_scores(
    predictions: Sequence[str],
    references_lists: Sequence[Sequence[str]],
    *,
    stemming: bool = False,
    rouge_types: Sequence[str] = ROUGE_TYPES,
    aggregate: Literal["mean", "none"] = "mean",
) -> dict[str, Any]:
    """ROUGE F-measures with ``rouge-score``, best reference per example and per ROUGE type.

    Returns ``{rouge_type: mean F in [0, 1]}`` (``aggregate="mean"``) or ``{rouge_type: [F per
    example]}`` (``aggregate="none"``). Corresponds to ``evaluate.load("rouge").compute(predictions,
    references, use_stemmer=stemming)`` except that the mean replaces evaluate's bootstrap median.
    """
    _check_corpus(predictions, references_lists)
    unknown = [t for t in rouge_types if t not in ROUGE_TYPES]
    if unknown:
        raise ValueError(f"unknown ROUGE type(s) {unknown}; valid: {list(ROUGE_TYPES)}")
    scorer = _rouge_scorer(bool(stemming), tuple(rouge_types))
    per: dict[str, list[float]] = {t: [] for t in rouge_types}
    for pred, refs in zip(predictions, references_lists):
        best = scorer.score_multi(list(refs), pred)
        for t in rouge_types:
            per[t].append(float(best[t].fmeasure))
    if aggregate == "none":
        return per
    if aggregate != "mean":
        raise ValueError(f"aggregate must be 'mean' or 'none', got {aggregate!r}")
    return {t: _mean(v) for t, v in per.items()}


# --------------------------------------------------------------------------------------------------
# BERTScore
# --------------------------------------------------------------------------------------------------


def _bert_score_baseline(model_type: str, lang: str) -> Path:
    import bert_score

    return Path(bert_score.__file__).parent / "rescale_baseline" / lang / f"{model_type}.tsv"


def bertscore_settings(
    *,
    model_type: str = "roberta-large",
    model_path: str | os.PathLike | None = None,
    num_layers: int | None = None,
    rescale: bool = True,
    lang: str = "en",
    baseline_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Resolve what ``bertscore`` will run (model source, layer, baseline file) without loading anything.

    ``model_type`` names the model (it picks the default layer and the packaged rescale baseline);
    ``model_path`` is where its weights are read from, e.g. a local copy of roberta-large offline.
    Raises ValueError with a fix when the layer or the baseline cannot be determined.
    """
    from bert_score.utils import model2layers

    source = str(model_path) if model_path is not None else model_type
    if model_path is not None and not Path(model_path).is_dir():
        raise ValueError(f"bertscore model_path {str(model_path)!r} is not a folder")
    if num_layers is None:
        if model_type not in model2layers:
            raise ValueError(
                f"BERTScore has no default layer for model_type {model_type!r}: pass num_layers "
                f"(evaluation.bertscore_num_layers), or use a known model_type such as 'roberta-large' "
                f"with model_path pointing at its local folder"
            )
        num_layers = model2layers[model_type]
    baseline: str | None = None
    if rescale:
        if baseline_path is not None:
            if not Path(baseline_path).is_file():
                raise ValueError(f"BERTScore baseline file {str(baseline_path)!r} does not exist")
            baseline = str(baseline_path)
        else:
            packaged = _bert_score_baseline(model_type, lang)
            if not packaged.is_file():
                raise ValueError(
                    f"bert-score ships no rescale baseline for model_type {model_type!r} and lang {lang!r} "
                    f"(looked for {packaged}). Set rescale=False (evaluation.bertscore_rescale=false) or "
                    f"give a baseline file; scores without rescaling are not comparable to the paper's."
                )
            baseline = str(packaged)
    return {
        "model_type": model_type,
        "source": source,
        "num_layers": int(num_layers),
        "rescale": bool(rescale),
        "baseline_path": baseline,
        "lang": lang,
    }


def bertscore(
    predictions: Sequence[str],
    references_lists: Sequence[Sequence[str]],
    *,
    model_type: str = "roberta-large",
    model_path: str | os.PathLike | None = None,
    num_layers: int | None = None,
    rescale: bool = True,
    lang: str = "en",
    batch_size: int = 32,
    device: str | None = None,
    baseline_path: str | os.PathLike | None = None,
    aggregate: Literal["mean", "none"] = "mean",
) -> dict[str, Any]:
    """BERTScore precision / recall / F1 via ``bert_score.score`` (best reference per example).

    Returns ``{"precision", "recall", "f1"}``: means (``aggregate="mean"``) or per-example lists
    (``"none"``). Rescaled scores can be negative. See ``bertscore_settings`` for the arguments.
    """
    _check_corpus(predictions, references_lists)
    settings = bertscore_settings(
        model_type=model_type, model_path=model_path, num_layers=num_layers, rescale=rescale, lang=lang,
        baseline_path=baseline_path,
    )
    if aggregate not in ("mean", "none"):
        raise ValueError(f"aggregate must be 'mean' or 'none', got {aggregate!r}")
    n = len(predictions)
    if n == 0:
        empty: dict[str, Any] = {"precision": [], "recall": [], "f1": []}
        return empty if aggregate == "none" else {k: float("nan") for k in empty}
    import torch
    from bert_score import score as bs_score

    # bert-score gives an empty candidate or reference raw scores of 0, but its code path for empty
    # strings breaks with transformers >= 5; so empty pairs are set to 0 here and only the rest is sent.
    # The multi-reference max (per component, as bert-score does) and the baseline rescaling are then
    # applied here, in the library's float32 arithmetic.
    pair_rows: list[int] = []
    cands: list[str] = []
    refs: list[str] = []
    has_empty_pair = [False] * n
    for i, (pred, group) in enumerate(zip(predictions, references_lists)):
        for ref in group:
            if pred.strip() and ref.strip():
                pair_rows.append(i)
                cands.append(pred)
                refs.append(ref)
            else:
                has_empty_pair[i] = True
    raw = torch.full((n, 3), float("-inf"))
    if cands:
        # bert-score reads the weights from `model_type`: a hub name or the local folder
        p, r, f = bs_score(
            cands, refs, model_type=settings["source"], num_layers=settings["num_layers"], lang=lang,
            rescale_with_baseline=False, batch_size=batch_size, device=device, verbose=False,
        )
        pair_scores = torch.stack([p, r, f], dim=-1).float()
        index = torch.tensor(pair_rows).unsqueeze(-1).expand(-1, 3)
        raw = raw.scatter_reduce(0, index, pair_scores, reduce="amax")
    for i, empty_pair in enumerate(has_empty_pair):
        if empty_pair:
            raw[i] = torch.maximum(raw[i], torch.zeros(3))
    if settings["baseline_path"] is not None:
        import pandas as pd

        table = pd.read_csv(settings["baseline_path"])
        if settings["num_layers"] >= len(table):
            raise ValueError(
                f"BERTScore baseline {settings['baseline_path']} has no row for layer {settings['num_layers']}"
            )
        base = torch.tensor(table.iloc[settings["num_layers"]].to_numpy(dtype="float64")[1:]).float()  # P, R, F
        raw = (raw - base) / (1 - base)
    per = {"precision": raw[:, 0].tolist(), "recall": raw[:, 1].tolist(), "f1": raw[:, 2].tolist()}
    if aggregate == "none":
        return per
    return {k: _mean(v) for k, v in per.items()}


# --------------------------------------------------------------------------------------------------
# Corpus scoring
# --------------------------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if len(values) else float("nan")


def _requested_keys(metrics: Iterable[str]) -> list[str]:
    keys: list[str] = []
    for name in metrics:
        if name not in METRIC_GROUPS:
            raise ValueError(f"unknown metric {name!r}; valid: {sorted(METRIC_GROUPS)}")
        keys += [k for k in METRIC_GROUPS[name] if k not in keys]
    return [k for k in METRIC_KEYS if k in keys]


def score_examples(
    predictions: Sequence[str],
    references_lists: Sequence[Sequence[str]],
    metrics: Iterable[str] = ("f1", "em", "rouge"),
    *,
    rouge_stemming: bool = False,
    bertscore_opts: Mapping[str, Any] | None = None,
) -> list[dict[str, float]]:
    """Per-example scores (fractions in [0, 1]; rescaled BERTScore may be < 0), one dict per row.

    ``metrics`` takes group names ("f1", "em", "rouge", "bertscore") or single keys ("rouge1").
    ``bertscore_opts`` are keyword arguments of ``bertscore`` (model_type, model_path, ...).
    Input errors name the row (``row 12: references is an empty list ...``).
    """
    _check_corpus(predictions, references_lists)
    keys = _requested_keys(metrics)
    rows: list[dict[str, float]] = [{} for _ in predictions]
    if {"f1", "em"} & set(keys):
        for row, pred, refs in zip(rows, predictions, references_lists):
            if "f1" in keys:
                row["f1"], row["token_precision"], row["token_recall"] = token_prf(pred, list(refs))
            if "em" in keys:
                row["em"] = exact_match(pred, list(refs))
    if set(ROUGE_TYPES) & set(keys):
        per = rouge_scores(predictions, references_lists, stemming=rouge_stemming, aggregate="none")
        for t in ROUGE_TYPES:
            for row, v in zip(rows, per[t]):
                row[t] = v
    if set(BERTSCORE_KEYS) & set(keys):
        per = bertscore(predictions, references_lists, **dict(bertscore_opts or {}), aggregate="none")
        for name in ("f1", "precision", "recall"):
            for row, v in zip(rows, per[name]):
                row[f"bertscore_{name}"] = v
    return [{k: row[k] for k in METRIC_KEYS if k in row} for row in rows]


def aggregate(per_example: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Corpus scores: mean over examples x 100, for every key the rows carry (in ``METRIC_KEYS`` order)."""
    if not per_example:
        return {}
    keys = [k for k in METRIC_KEYS if k in per_example[0]]
    out = {}
    for k in keys:
        missing = [i for i, row in enumerate(per_example) if k not in row]
        if missing:
            raise ValueError(f"row {missing[0]} has no {k!r} score while row 0 has one")
        out[k] = 100.0 * _mean([row[k] for row in per_example])
    return out


def score_corpus(
    predictions: Sequence[str],
    references_lists: Sequence[Sequence[str]],
    metrics: Iterable[str] = ("f1", "em", "rouge"),
    **opts: Any,
) -> dict[str, float]:
    """Corpus scores x 100 (keys from ``METRIC_KEYS``); ``opts`` as in ``score_examples``."""
    return aggregate(score_examples(predictions, references_lists, metrics, **opts))


# --------------------------------------------------------------------------------------------------
# Predictions files (ours and the authors')
# --------------------------------------------------------------------------------------------------


def references_from_author_answers(
    answers: Any, protocol: Literal["authors", "complete"] = "authors", *, where: str = ""
) -> list[str]:
    """The reference list for one row of the authors' ``predictions.jsonl`` (``answers`` field).

    Their files store answers in the source's own shape: SQuAD ``{"text": [...], "answer_start":
    [...]}``; QED a list of spans ``{"start", "end", "string"}`` (they scored the FIRST span only:
    ``protocol="authors"``; ``"complete"`` keeps every span); FairytaleQA / PubMedQA a single string;
    DialogSum a list of strings.
    """
    if protocol not in ("authors", "complete"):
        raise ValueError(f"protocol must be 'authors' or 'complete', got {protocol!r}")
    if isinstance(answers, str):
        return [answers]
    if isinstance(answers, dict):
        if "text" not in answers:
            raise MetricInputError(f"{where}answers is a mapping without a 'text' field")
        return _check_str_list(answers["text"], f"{where}answers.text")
    if isinstance(answers, list):
        if answers and all(isinstance(a, dict) for a in answers):
            spans = []
            for i, a in enumerate(answers):
                if not isinstance(a.get("string"), str):
                    raise MetricInputError(f"{where}answers[{i}].string is missing or not a str")
                spans.append(a["string"])
            return spans[:1] if protocol == "authors" else spans
        return _check_str_list(answers, f"{where}answers")
    raise MetricInputError(f"{where}answers has an unsupported type {type(answers).__name__}")


def _check_str_list(values: Any, where: str) -> list[str]:
    if not isinstance(values, list) or not values:
        raise MetricInputError(f"{where} must be a non-empty list of str")
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise MetricInputError(f"{where}[{i}] must be a str, got {type(v).__name__}")
    return list(values)


def read_predictions(
    path: str | os.PathLike, protocol: Literal["authors", "complete"] = "authors"
) -> tuple[list[str], list[list[str]], list[str]]:
    """Read a predictions.jsonl -> (predictions, references_lists, row ids).

    Accepts our rows (``prediction`` + ``references``, optional ``id``) and the authors' rows
    (``prediction_text`` + ``answers``). Problems raise MetricInputError naming file, line and field; an
    item id given twice is one (it would be counted twice in every corpus metric).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    preds: list[str] = []
    refs: list[list[str]] = []
    ids: list[str] = []
    first_line: dict[str, int] = {}
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MetricInputError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}: "
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MetricInputError(f"{where}invalid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise MetricInputError(f"{where}expected a JSON object")
        if "prediction" in row and "references" in row:
            pred, ref = row["prediction"], row["references"]
            pred_field = "prediction"
            if not isinstance(ref, list):
                raise MetricInputError(f"{where}references must be a list of str")
            try:
                _check_references(ref)
            except (TypeError, ValueError) as exc:
                raise MetricInputError(where + str(exc)) from None
        elif "prediction_text" in row and "answers" in row:
            pred, pred_field = row["prediction_text"], "prediction_text"
            ref = references_from_author_answers(row["answers"], protocol, where=where)
        else:
            raise MetricInputError(
                f"{where}needs 'prediction' + 'references' (ours) or 'prediction_text' + 'answers' "
                f"(the authors'); found {sorted(row)}"
            )
        if not isinstance(pred, str):
            raise MetricInputError(f"{where}{pred_field} must be a str, got {type(pred).__name__}")
        item = row.get("id")
        if item is not None:
            if str(item) in first_line:
                raise MetricInputError(f"{where}item id {item!r} repeats line {first_line[str(item)]}: each item is scored once")
            first_line[str(item)] = lineno
        preds.append(pred)
        refs.append(list(ref))
        ids.append(str(item if item is not None else lineno))
    if not preds:
        raise MetricInputError(f"{path}: no predictions in the file")
    return preds, refs, ids


def rescore_file(
    path: str | os.PathLike,
    task: str | None = None,
    protocol: Literal["authors", "complete"] = "authors",
    *,
    metrics: Iterable[str] = ("f1", "em", "rouge"),
    rouge_stemming: bool = False,
    bertscore_opts: Mapping[str, Any] | None = None,
    per_example: bool = False,
) -> dict[str, Any]:
    """Score an existing predictions.jsonl (ours or the authors'); corpus metrics x 100.

    ``protocol`` matters for the authors' QED files only (first span vs all spans); our files carry
    their references explicitly. ``task`` is recorded, not needed. Returns ``{"path", "task",
    "protocol", "n", "n_empty_predictions", "metrics", ["per_example"]}``.
    """
    preds, refs, ids = read_predictions(path, protocol)
    rows = score_examples(preds, refs, metrics, rouge_stemming=rouge_stemming, bertscore_opts=bertscore_opts)
    out: dict[str, Any] = {
        "path": str(path),
        "task": task,
        "protocol": protocol,
        "n": len(preds),
        "n_empty_predictions": sum(1 for p in preds if not p.strip()),
        "metrics": aggregate(rows),
    }
    if per_example:
        out["per_example"] = [{"id": i, **r} for i, r in zip(ids, rows)]
    return out

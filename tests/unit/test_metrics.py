"""Golden cases for the metrics (worked out by hand), input errors, and the BERTScore wrapper."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from uld.metrics import (
    METRIC_KEYS,
    MetricInputError,
    aggregate,
    bertscore,
    bertscore_settings,
    exact_match,
    normalize_answer,
    read_predictions,
    references_from_author_answers,
    rescore_file,
    rouge_scores,
    score_corpus,
    score_examples,
    span_start_error,
    token_f1,
    token_prf,
)

# --------------------------------------------------------------------------------------------------
# SQuAD normalisation, F1, EM
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Cat!", "cat"),
        ("An apple a day", "apple day"),
        ("  multiple \t spaces\n", "multiple spaces"),
        ("theatre another", "theatre another"),  # articles only as whole words
        ("U.S.A.", "usa"),
        ("Denver Broncos' win (24-10)", "denver broncos win 2410"),
        ("Wilhelm Conrad Röntgen", "wilhelm conrad röntgen"),  # non-ASCII letters kept, lower-cased
        ("“quoted” — dash", "“quoted” — dash"),  # non-ASCII punctuation kept, as in the official script
        ("", ""),
        ("...", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_token_f1_partial_overlap():
    # pred tokens [cat, sat, on, mat], ref [cat, sat]: P = 2/4, R = 2/2, F1 = 2/3
    assert token_f1("The cat sat on the mat.", ["a cat sat"]) == pytest.approx(2 / 3)
    f1, p, r = token_prf("The cat sat on the mat.", ["a cat sat"])
    assert (p, r) == pytest.approx((0.5, 1.0))


def test_token_f1_counts_repeated_tokens_once_per_occurrence():
    # common = min counts: x 1, y 1 -> 2 of 3 on each side
    assert token_f1("x x y", ["x y y"]) == pytest.approx(2 / 3)


def test_max_over_references():
    refs = ["Paris France", "Paris"]
    assert token_f1("Paris", refs) == 1.0
    assert exact_match("paris.", refs) == 1.0
    assert exact_match("Paris, France!", refs) == 1.0
    assert exact_match("Lyon", refs) == 0.0


def test_precision_and_recall_maximised_independently():
    # vs "b": P 1/4, R 1 (F1 0.4); vs the long ref: P 1, R 4/8 (F1 2/3). Each is maximised on its own,
    # which is what the authors report as "precision" and "recall".
    f1, p, r = token_prf("b c d e", ["b", "b c d e f g h i"])
    assert (f1, p, r) == pytest.approx((2 / 3, 1.0, 1.0))


def test_article_only_reference_normalises_to_empty():
    # "a" is an article: the reference normalises to "" -> no tokens, F1 0; EM needs an empty prediction
    assert token_f1("a", ["a"]) == 0.0
    assert exact_match("the", ["a"]) == 1.0


def test_empty_prediction():
    assert token_f1("", ["Paris"]) == 0.0
    assert exact_match("", ["Paris"]) == 0.0
    assert token_f1("   ", ["Paris"]) == 0.0


def test_scores_are_in_unit_interval():
    for pred, refs in [("a b", ["b c"]), ("x", ["x"]), ("", ["y"]), ("q w e r t y", ["w", "e r"])]:
        assert 0.0 <= token_f1(pred, refs) <= 1.0
        assert exact_match(pred, refs) in (0.0, 1.0)


def test_empty_references_list_is_an_error():
    with pytest.raises(ValueError, match="references is an empty list"):
        token_f1("x", [])
    with pytest.raises(ValueError, match="references is an empty list"):
        exact_match("x", [])


@pytest.mark.parametrize(
    "pred, refs, field",
    [(3, ["x"], "prediction"), (None, ["x"], "prediction"), ("x", "x", "references"), ("x", ["a", None], r"references\[1\]")],
)
def test_non_string_inputs_name_the_field(pred, refs, field):
    with pytest.raises(TypeError, match=field):
        token_f1(pred, refs)
    with pytest.raises(TypeError, match=field):
        exact_match(pred, refs)


def test_corpus_errors_name_the_row():
    with pytest.raises(ValueError, match="row 2: references is an empty list"):
        score_examples(["a", "b", "c"], [["a"], ["b"], []], ("f1",))
    with pytest.raises(TypeError, match="row 1: prediction must be a str"):
        score_examples(["a", 7], [["a"], ["b"]], ("em",))
    with pytest.raises(ValueError, match="2 predictions but 1 reference lists"):
        score_examples(["a", "b"], [["a"]], ("f1",))
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        score_examples(["a"], [["a"]], ("bleu",))


# --------------------------------------------------------------------------------------------------
# ROUGE
# --------------------------------------------------------------------------------------------------


def test_rouge_golden():
    # pred unigrams 3, ref 6, common 3: P 1, R 0.5 -> F 2/3. Bigrams: 2 vs 5, common 2 -> F 4/7.
    got = rouge_scores(["the cat sat"], [["the cat sat on the mat"]])
    assert got["rouge1"] == pytest.approx(2 / 3)
    assert got["rouge2"] == pytest.approx(4 / 7)
    assert got["rougeL"] == pytest.approx(2 / 3)


def test_rouge_best_reference_and_mean():
    preds = ["the cat sat", "dogs bark"]
    refs = [["nothing here", "the cat sat"], ["cats meow"]]
    per = rouge_scores(preds, refs, aggregate="none")
    assert per["rouge1"] == pytest.approx([1.0, 0.0])
    assert rouge_scores(preds, refs)["rouge1"] == pytest.approx(0.5)


def test_rouge_stemming_option():
    assert rouge_scores(["running dogs"], [["run dog"]])["rouge1"] == 0.0
    assert rouge_scores(["running dogs"], [["run dog"]], stemming=True)["rouge1"] == pytest.approx(1.0)


def test_rouge_tokenizer_splits_non_ascii_like_rouge_score():
    # rouge-score keeps only [a-z0-9] runs: "Röntgen" -> "r", "ntgen"
    assert rouge_scores(["Röntgen"], [["R ntgen"]])["rouge1"] == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------------
# Corpus scores and files
# --------------------------------------------------------------------------------------------------


def test_score_corpus_is_mean_times_100():
    preds = ["Paris", "the cat sat on the mat", ""]
    refs = [["Paris"], ["a cat sat"], ["Lyon"]]
    got = score_corpus(preds, refs, ("f1", "em", "rouge"))
    assert got["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)
    assert got["em"] == pytest.approx(100 / 3)
    assert list(got) == [k for k in METRIC_KEYS if k in got]
    assert set(got) == {"f1", "em", "rouge1", "rouge2", "rougeL", "rougeLsum", "token_precision", "token_recall"}
    per = score_examples(preds, refs, ("f1", "em", "rouge"))
    assert aggregate(per) == pytest.approx(got)
    assert per[1]["f1"] == pytest.approx(2 / 3)


def test_single_rouge_key_selects_the_rouge_group():
    got = score_corpus(["a b"], [["a b"]], ("rouge1",))
    assert set(got) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}


def test_references_from_author_answers_formats():
    squad = {"text": ["Denver Broncos", "Broncos"], "answer_start": [1, 2]}
    assert references_from_author_answers(squad) == ["Denver Broncos", "Broncos"]
    qed = [{"start": 0, "end": 5, "string": "first"}, {"start": 9, "end": 15, "string": "second"}]
    assert references_from_author_answers(qed, "authors") == ["first"]
    assert references_from_author_answers(qed, "complete") == ["first", "second"]
    assert references_from_author_answers("a long answer") == ["a long answer"]
    assert references_from_author_answers(["s1", "s2", "s3"]) == ["s1", "s2", "s3"]
    with pytest.raises(MetricInputError, match=r"answers\[1\]\.string"):
        references_from_author_answers([{"string": "a"}, {"start": 1}])
    with pytest.raises(MetricInputError, match="unsupported type"):
        references_from_author_answers(3)


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_rescore_our_and_author_formats(tmp_path):
    ours = _write_jsonl(
        tmp_path / "ours.jsonl",
        [{"id": "q1", "prediction": "Paris", "references": ["Paris", "paris, France"]},
         {"id": "q2", "prediction": "", "references": ["Lyon"]}],
    )
    got = rescore_file(ours, task="squad", metrics=("f1", "em"), per_example=True)
    assert got["n"] == 2 and got["n_empty_predictions"] == 1
    assert got["metrics"]["f1"] == pytest.approx(50.0)
    assert [r["id"] for r in got["per_example"]] == ["q1", "q2"]
    theirs = _write_jsonl(
        tmp_path / "theirs.jsonl",
        [{"answers": [{"start": 0, "end": 1, "string": "Lyon"}, {"start": 2, "end": 3, "string": "Paris"}],
          "prediction_text": "Paris"}],
    )
    assert rescore_file(theirs, protocol="authors", metrics=("em",))["metrics"]["em"] == 0.0
    assert rescore_file(theirs, protocol="complete", metrics=("em",))["metrics"]["em"] == 100.0


@pytest.mark.parametrize(
    "row, match",
    [
        ("{not json", r"bad\.jsonl:2: invalid JSON"),
        ({"prediction": 5, "references": ["x"]}, r":2: prediction must be a str"),
        ({"prediction_text": ["x"], "answers": "x"}, r":2: prediction_text must be a str"),
        ({"prediction": "x", "references": []}, r":2: references is an empty list"),
        ({"prediction": "x"}, r":2: needs 'prediction' \+ 'references'"),
    ],
)
def test_read_predictions_errors_name_line_and_field(tmp_path, row, match):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"prediction": "ok", "references": ["ok"]}, row])
    with pytest.raises(MetricInputError, match=match):
        read_predictions(path)


def test_read_predictions_empty_and_missing_file(tmp_path):
    with pytest.raises(MetricInputError, match="no predictions"):
        read_predictions(_write_jsonl(tmp_path / "empty.jsonl", []))
    with pytest.raises(FileNotFoundError):
        read_predictions(tmp_path / "absent.jsonl")


# --------------------------------------------------------------------------------------------------
# BERTScore
# --------------------------------------------------------------------------------------------------


def test_bertscore_settings_paper_default():
    s = bertscore_settings()
    assert s["model_type"] == "roberta-large" and s["source"] == "roberta-large"
    assert s["num_layers"] == 17 and s["rescale"]
    assert Path(s["baseline_path"]).is_file()


def test_bertscore_settings_unknown_model_needs_layers_and_baseline(tmp_path):
    with pytest.raises(ValueError, match="num_layers"):
        bertscore_settings(model_type="my-local-bert", model_path=tmp_path)
    with pytest.raises(ValueError, match="rescale=False"):
        bertscore_settings(model_type="my-local-bert", model_path=tmp_path, num_layers=2)
    s = bertscore_settings(model_type="my-local-bert", model_path=tmp_path, num_layers=2, rescale=False)
    assert s["source"] == str(tmp_path) and s["baseline_path"] is None
    with pytest.raises(ValueError, match="is not a folder"):
        bertscore_settings(model_path=tmp_path / "absent")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer random BERT with a WordPiece tokenizer trained on the spot (no network)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    # the folder name must not contain "t5" / start with "scibert": bert-score keys on both
    dest = tmp_path_factory.mktemp("bertscore") / "tiny-bert"
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    corpus = ["the cat sat on the mat", "a dog ran in the park", "paris is the capital of france"]
    tok.train_from_iterator(corpus * 10, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    fast = BertTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=128,
    )
    fast.save_pretrained(dest)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(dest, safe_serialization=True)
    return dest


PREDS = ["the cat sat", "a dog ran in paris", "cat"]
REFS = [["the cat sat on the mat"], ["the dog ran", "paris is the capital"], ["france"]]
TINY = dict(model_type="tiny-bert", num_layers=2, rescale=False, device="cpu")


def test_bertscore_wrapper_equals_library(tiny_bert):
    import torch
    from bert_score import score as bs_score

    ours = bertscore(PREDS, REFS, model_path=tiny_bert, aggregate="none", **TINY)
    p, r, f = bs_score(PREDS, REFS, model_type=str(tiny_bert), num_layers=2, device="cpu")
    assert torch.allclose(torch.tensor(ours["precision"]), p, atol=1e-6)
    assert torch.allclose(torch.tensor(ours["recall"]), r, atol=1e-6)
    assert torch.allclose(torch.tensor(ours["f1"]), f, atol=1e-6)
    means = bertscore(PREDS, REFS, model_path=tiny_bert, **TINY)
    assert means["f1"] == pytest.approx(float(f.mean()), abs=1e-6)


def test_bertscore_rescaled_equals_library_with_packaged_baseline(tiny_bert):
    """A local folder named as a known model rescales with that model's packaged baseline."""
    import torch
    from bert_score import score as bs_score

    ours = bertscore(PREDS, REFS, model_type="roberta-large", model_path=tiny_bert, num_layers=2, rescale=True,
                     device="cpu", aggregate="none")
    baseline = bertscore_settings(num_layers=2)["baseline_path"]
    p, r, f = bs_score(PREDS, REFS, model_type=str(tiny_bert), num_layers=2, device="cpu", lang="en",
                       rescale_with_baseline=True, baseline_path=baseline)
    assert torch.allclose(torch.tensor(ours["precision"]), p, atol=1e-6)
    assert torch.allclose(torch.tensor(ours["f1"]), f, atol=1e-6)
    raw = bertscore(PREDS, REFS, model_path=tiny_bert, aggregate="none", **TINY)
    assert ours["f1"] != pytest.approx(raw["f1"])  # rescaling did something


def test_bertscore_empty_prediction_or_reference_scores_raw_zero(tiny_bert):
    """bert-score's rule (raw 0 for an empty side), which its own code can no longer run on transformers 5."""
    import pandas as pd

    raw = bertscore(["", "cat", "cat"], [["france"], [" "], ["", "the cat"]], model_path=tiny_bert,
                    aggregate="none", **TINY)
    assert raw["f1"][:2] == [0.0, 0.0] and raw["precision"][:2] == [0.0, 0.0]
    alone = bertscore(["cat"], [["the cat"]], model_path=tiny_bert, aggregate="none", **TINY)
    assert raw["f1"][2] == pytest.approx(max(0.0, alone["f1"][0]), abs=1e-6)
    scaled = bertscore([""], [["france"]], model_type="roberta-large", model_path=tiny_bert, num_layers=2,
                       device="cpu", aggregate="none")
    b = float(pd.read_csv(bertscore_settings(num_layers=2)["baseline_path"]).iloc[2]["F"])
    assert scaled["f1"][0] == pytest.approx(-b / (1 - b), abs=1e-6)


def test_bertscore_multi_reference_takes_best(tiny_bert):
    opts = dict(model_path=tiny_bert, aggregate="none", **TINY)
    both = bertscore(["a dog ran"], [["the dog ran", "paris is the capital"]], **opts)
    each = [bertscore(["a dog ran"], [[r]], **opts) for r in ("the dog ran", "paris is the capital")]
    for key in ("precision", "recall", "f1"):  # each component maximised on its own, as bert-score does
        assert both[key][0] == pytest.approx(max(e[key][0] for e in each), abs=1e-6)


def test_score_examples_with_bertscore(tiny_bert):
    opts = dict(model_path=tiny_bert, **TINY)
    rows = score_examples(PREDS, REFS, ("f1", "bertscore"), bertscore_opts=opts)
    direct = bertscore(PREDS, REFS, aggregate="none", **opts)
    assert [r["bertscore_f1"] for r in rows] == pytest.approx(direct["f1"], abs=1e-6)
    assert {"bertscore_precision", "bertscore_recall", "f1"} <= set(rows[0])


def test_span_start_error_compares_first_normalized_words():
    refs = ["the 1960s", "in the 1960s"]
    # "The" is an article, dropped by normalisation: the answer starts like the first reference
    assert span_start_error("The 1960s.", refs) is False
    assert span_start_error("In 1960s", refs) is False  # starts like the second reference
    assert span_start_error("during the 1960s", refs) is True
    assert span_start_error(" the , ", refs) is None  # nothing left after normalisation: no span started
    assert span_start_error("1960s", ["", "1960s"]) is False  # an empty reference starts with no word
    assert span_start_error("x", [""]) is True

"""Shared greedy generation: first-line rule, order, batching invariance, token counts."""

from __future__ import annotations

import pytest
import torch

from uld.config import ModelConfig
from uld.generation import greedy_generate, keep_first_line
from uld.models import load_model, load_tokenizer, resolve_model


def test_keep_first_line():
    assert keep_first_line("  Paris \nThe capital") == "Paris"
    assert keep_first_line("\n\n Denver Broncos\n") == "Denver Broncos"
    assert keep_first_line(" \n \t") == ""
    assert keep_first_line("a\r\nb") == "a"


@pytest.fixture(scope="module")
def student(tiny_models):
    r = resolve_model(ModelConfig(name="tiny", path=str(tiny_models["student"])))
    torch.manual_seed(0)
    return load_model(r), load_tokenizer(r)


def _prompts(tok):
    texts = ["Context: a b c\nQuestion: x?\nAnswer:", "Hi", "Context: the Eiffel Tower is in Paris, France.\nAnswer:"]
    return [tok(t).input_ids for t in texts]


def test_batching_and_order_do_not_change_outputs(student):
    model, tok = student
    model.train()
    ids = _prompts(tok)
    one = greedy_generate(model, tok, ids, max_new_tokens=5, batch_size=1, first_line=False)
    many = greedy_generate(model, tok, ids, max_new_tokens=5, batch_size=3, first_line=False)
    assert one.texts == many.texts
    rev = greedy_generate(model, tok, ids[::-1], max_new_tokens=5, batch_size=2, first_line=False)
    assert rev.texts == one.texts[::-1]
    assert all(0 < n <= 5 for n in one.n_tokens)
    assert model.training  # the caller's mode is restored


def test_first_line_answers_are_prefix_lines(student):
    model, tok = student
    ids = _prompts(tok)
    full = greedy_generate(model, tok, ids, max_new_tokens=8, batch_size=2, first_line=False)
    cut = greedy_generate(model, tok, ids, max_new_tokens=8, batch_size=2, first_line=True)
    assert cut.answers == [keep_first_line(t) for t in full.texts]


def test_progress_callback_counts_rows_and_tokens(student):
    model, tok = student
    seen = []
    out = greedy_generate(model, tok, _prompts(tok), max_new_tokens=4, batch_size=2, progress=lambda r, t: seen.append((r, t)))
    assert sum(r for r, _ in seen) == 3 and sum(t for _, t in seen) == sum(out.n_tokens)


def test_bad_arguments(student):
    model, tok = student
    with pytest.raises(ValueError, match="batch_size"):
        greedy_generate(model, tok, [[1]], max_new_tokens=2, batch_size=0)
    with pytest.raises(ValueError, match="no tokens"):
        greedy_generate(model, tok, [[]], max_new_tokens=2, batch_size=1)

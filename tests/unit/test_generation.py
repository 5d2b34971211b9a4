"""Shared greedy generation: first-line rule, order, batching invariance, token counts."""

from __future__ import annotations

import pytest
import torch

from uld.config import ModelConfig
from uld.generation import MIN_SHARED_PREFIX, common_prefix_len, greedy_generate, keep_first_line
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


def _shared_opening_prompts(tok):
    opening = "System: answer in one line.\nExample: Context: the sky is blue.\nQuestion: colour?\nAnswer: blue\n"
    tails = ["Context: a b c\nQuestion: x?\nAnswer:", "Question: hi?\nAnswer:", "Context: Paris is in France.\nQuestion: where?\nAnswer:"]
    return [tok(opening + t).input_ids for t in tails]


def test_common_prefix_len_leaves_each_row_a_token():
    assert common_prefix_len([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert common_prefix_len([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter row keeps its last token
    assert common_prefix_len([[7, 2], [1, 2]]) == 0
    assert common_prefix_len([[1, 2, 3]]) == 2


def test_shared_prefix_gives_the_same_greedy_answers(student):
    model, tok = student
    ids = _shared_opening_prompts(tok)
    assert common_prefix_len(ids) >= MIN_SHARED_PREFIX  # the path under test is taken
    plain = greedy_generate(model, tok, ids, max_new_tokens=6, batch_size=3, first_line=False)
    shared = greedy_generate(model, tok, ids, max_new_tokens=6, batch_size=3, first_line=False, share_prefix=True)
    alone = greedy_generate(model, tok, ids, max_new_tokens=6, batch_size=1, first_line=False)
    assert shared.texts == plain.texts == alone.texts
    assert shared.n_tokens == plain.n_tokens


def test_shared_prefix_gives_the_same_teacher_signal(student, monkeypatch):
    import uld.signal as signal
    from uld.signal import signal_rows

    seen = []
    real = signal.answer_logits
    monkeypatch.setattr(signal, "answer_logits", lambda *a, **kw: seen.append(kw.get("shared", 0)) or real(*a, **kw))
    model, tok = student
    texts = [tok.decode(p) for p in _shared_opening_prompts(tok)]
    answers = ["blue sky", "hello there friend", "France"]
    plain = signal_rows(model, tok, texts, answers, 8, batch_size=3)
    shared = signal_rows(model, tok, texts, answers, 8, batch_size=3, share_prefix=True)
    assert seen[0] == 0 and seen[1] >= MIN_SHARED_PREFIX  # the shared path ran
    for (p0, t0), (p1, t1) in zip(plain, shared):
        assert p0.shape == p1.shape and p0.shape[0] > 0
        torch.testing.assert_close(p1, p0, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(t1, t0, atol=1e-5, rtol=1e-4)


def test_shared_prefix_is_not_used_past_a_sliding_window(student):
    from uld.generation import fits_window

    model, _ = student
    window = getattr(model.config, "sliding_window", None)
    assert fits_window(model, 10_000) == (window is None)

    class _Cfg:
        sliding_window = 64

    class _M:
        config = _Cfg()

    assert fits_window(_M(), 60, 4) and not fits_window(_M(), 60, 5)

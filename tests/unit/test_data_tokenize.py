"""encode_pair / collate on the real Llama-2, Mistral, GPT-2 and Pythia tokenizers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from uld.data import PromptTooLong, collate, encode_pair, encode_prompt, get_task
from uld.data.tokenize import IGNORE_INDEX, special_affixes

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
TOKENIZERS = ["llama-2-7b", "mistral-7b", "gpt2", "pythia"]
EXPECTED_PREFIX = {"llama-2-7b": [1], "mistral-7b": [1], "gpt2": [], "pythia": []}


def _items():
    out = []
    for name in ("squad", "qed", "fairytaleqa", "pubmedqa", "dialogsum"):
        task = get_task(name)
        for ex in task.load("test", FIXTURES)[:2]:
            out.append((task, ex))
    return out


@pytest.mark.parametrize("tok_name", TOKENIZERS)
def test_decoder_labels_line_up_with_answer_tokens(shared_tokenizer, tok_name):
    tok = shared_tokenizer(tok_name)
    assert special_affixes(tok) == (EXPECTED_PREFIX[tok_name], [])
    for task, ex in _items():
        prompt, answer = task.student_prompt(ex), task.gold_answer(ex)
        enc = encode_pair(tok, prompt, answer, context=ex.context)
        assert len(enc.input_ids) == len(enc.labels) == len(enc.attention_mask)
        n_prompt = enc.prompt_length
        # prompt part = exactly what generation is given; all of it masked
        assert enc.input_ids[:n_prompt] == encode_prompt(tok, prompt) == list(tok(prompt)["input_ids"])
        assert enc.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
        # supervised part = answer tokens of the running text + EOS
        supervised = enc.labels[n_prompt:]
        assert supervised == enc.input_ids[n_prompt:] and supervised[-1] == tok.eos_token_id
        assert enc.input_ids == list(tok(prompt + " " + answer)["input_ids"]) + [tok.eos_token_id]
        assert tok.decode(supervised[:-1]).strip() == answer
        # char offsets: start at 0, increase, EOS at len(answer), each token's text starts there
        starts = enc.answer_char_starts
        assert len(starts) == len(supervised) and starts[0] == 0 and starts[-1] == len(answer)
        assert starts == sorted(starts)
        for tid, s in zip(supervised[:-1], starts[:-1]):
            piece = tok.decode([tid]).strip()
            if piece and "\ufffd" not in piece:
                assert answer[s:].lstrip().startswith(piece), (tok_name, piece, answer[s:])
        assert not enc.truncated


@pytest.mark.parametrize("tok_name", TOKENIZERS)
def test_encoder_decoder_layout(shared_tokenizer, tok_name):
    tok = shared_tokenizer(tok_name)
    task = get_task("squad")
    ex = task.load("test", FIXTURES)[0]
    prompt, answer = task.student_prompt(ex), task.gold_answer(ex)
    enc = encode_pair(tok, prompt, answer, encoder_decoder=True)
    assert enc.encoder_decoder and enc.input_ids == list(tok(prompt)["input_ids"])
    assert enc.labels == list(tok(answer, add_special_tokens=False)["input_ids"]) + [tok.eos_token_id]
    assert IGNORE_INDEX not in enc.labels and len(enc.answer_char_starts) == len(enc.labels)
    assert enc.answer_char_starts[0] == 0 and enc.answer_char_starts[-1] == len(answer)


@pytest.mark.parametrize("tok_name", TOKENIZERS)
def test_truncation_cuts_context_only(shared_tokenizer, tok_name):
    tok = shared_tokenizer(tok_name)
    task = get_task("squad")
    ex = task.load("test", FIXTURES)[0]
    prompt, answer = task.student_prompt(ex), "Denver Broncos"
    full = encode_pair(tok, prompt, answer, context=ex.context)
    limit = len(full.input_ids) - 40
    enc = encode_pair(tok, prompt, answer, context=ex.context, max_length=limit)
    assert enc.truncated and 0 < len(enc.input_ids) <= limit and enc.context_chars_dropped > 0
    n = enc.prompt_length
    assert enc.labels[n:] == full.labels[full.prompt_length :]  # the answer is untouched
    text = tok.decode(enc.input_ids[:n], skip_special_tokens=True)
    assert text.endswith("\nQuestion: Which NFL team represented the AFC at Super Bowl 50?\nAnswer:")
    assert text.lstrip().startswith("Context: Super Bowl 50 was")
    # room for the question and answer only: the whole context goes; less than that cannot fit
    empty = len(encode_pair(tok, prompt.replace(ex.context, ""), answer).input_ids)
    assert len(encode_pair(tok, prompt, answer, context=ex.context, max_length=empty).input_ids) == empty
    with pytest.raises(PromptTooLong, match="even with an empty context") as err:
        encode_pair(tok, prompt, answer, context=ex.context, max_length=empty - 1)
    assert err.value.max_length == empty - 1
    with pytest.raises(PromptTooLong, match="no context to shorten"):
        encode_pair(tok, prompt, answer, max_length=limit)
    enc_dec = encode_pair(tok, prompt, answer, encoder_decoder=True, context=ex.context, max_length=50)
    assert enc_dec.truncated and len(enc_dec.input_ids) <= 50 and enc_dec.labels == encode_pair(
        tok, prompt, answer, encoder_decoder=True).labels


def test_bad_arguments(shared_tokenizer):
    tok = shared_tokenizer("gpt2")
    with pytest.raises(ValueError, match="empty answer"):
        encode_pair(tok, "Context: x\nAnswer:", "  ")
    with pytest.raises(ValueError, match="does not occur"):
        encode_pair(tok, "Context: x\nAnswer:", "y", context="z")


def test_collate_padding(shared_tokenizer):
    tok = shared_tokenizer("pythia")
    a = encode_pair(tok, "Context: a b c d e\nAnswer:", "yes")
    b = encode_pair(tok, "Context: a\nAnswer:", "a longer answer")
    for side in ("right", "left"):
        batch = collate([a, b], pad_id=1, padding_side=side)
        T = max(len(a.input_ids), len(b.input_ids))
        assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, T)
        for i, e in enumerate((a, b)):
            mask = batch["attention_mask"][i].bool()
            assert batch["input_ids"][i][mask].tolist() == e.input_ids
            assert batch["labels"][i][mask].tolist() == e.labels
            assert (batch["labels"][i][~mask] == IGNORE_INDEX).all() and (batch["input_ids"][i][~mask] == 1).all()
            pad = T - len(e.input_ids)
            if pad:
                assert not (mask[-pad:] if side == "right" else mask[:pad]).any()
        assert batch["answer_char_starts"][1].tolist() == b.answer_char_starts
        assert batch["answer_char_starts"][0, len(a.answer_char_starts):].eq(-1).all()

    ea = encode_pair(tok, "Context: a\nAnswer:", "yes", encoder_decoder=True)
    eb = encode_pair(tok, "Context: a b c\nAnswer:", "a longer answer", encoder_decoder=True)
    batch = collate([ea, eb], pad_id=1, padding_side="left")
    assert batch["labels"].shape == batch["decoder_attention_mask"].shape == (2, len(eb.labels))
    assert batch["labels"][0].tolist() == ea.labels + [IGNORE_INDEX] * (len(eb.labels) - len(ea.labels))
    assert batch["input_ids"][0, -len(ea.input_ids):].tolist() == ea.input_ids  # left-padded encoder input
    assert batch["labels"].dtype == torch.long
    with pytest.raises(ValueError, match="mixes"):
        collate([a, ea], pad_id=1)
    with pytest.raises(ValueError, match="pad_id is None"):
        collate([a], pad_id=None)

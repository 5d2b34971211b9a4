"""Position pairing across tokenizers: synthetic cases and real Llama-2 / Pythia / GPT-2 tokenizations."""

from __future__ import annotations

import json

import pytest
import torch

from uld.alignment import char_starts_from_offsets, offset_masks, pad_char_starts, pair_positions
from uld.losses import answer_logit_mask, positional_pairs, uld_loss


def test_positional_mode_is_the_loss_pairing():
    g = torch.Generator().manual_seed(0)
    ms, mt = torch.rand(4, 9, generator=g) < 0.5, torch.rand(4, 7, generator=g) < 0.5
    for a, b in zip(pair_positions(ms, mt), positional_pairs(ms, mt)):
        assert torch.equal(a, b)


def test_offsets_mode_pairs_equal_starts_and_skips_the_rest():
    # answer "Denver Broncos": student " Denver"(0) " Broncos"(6) EOS(14);
    # teacher "▁Den"(0) "ver"(3) "▁Bron"(6) "cos"(10) EOS(14)
    ms = torch.tensor([[0, 1, 1, 1, 0]], dtype=torch.bool)
    mt = torch.tensor([[0, 0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    s_starts, t_starts = [[0, 6, 14]], [[0, 3, 6, 10, 14]]
    s_row, s_pos, t_row, t_pos = pair_positions(
        ms, mt, "offsets", student_char_starts=s_starts, teacher_char_starts=t_starts
    )
    assert s_pos.tolist() == [1, 2, 3] and t_pos.tolist() == [2, 4, 6]
    # positional pairing drifts: the 2nd student token is compared with "ver"
    assert pair_positions(ms, mt)[3].tolist() == [2, 3, 4]
    # the masks form feeds uld_loss directly and gives the same pairs
    s2, t2 = offset_masks(ms, mt, s_starts, t_starts)
    assert s2.sum() == t2.sum() == 3


def test_offsets_first_of_run_padding_and_extra_entries():
    # teacher splits one character into two byte tokens starting at the same char (3, 3):
    # only the first is eligible; the student's extra trailing entry (EOS dropped by skip_eos) is ignored
    ms = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    mt = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    s_starts = pad_char_starts([[0, 3, 4, 9], [0, 2]])
    t_starts = torch.tensor([[0, 3, 3, 4], [2, -1, -1, -1]])
    s2, t2 = offset_masks(ms, mt, s_starts, t_starts)
    assert s2.tolist() == [[1, 1, 1, 0], [0, 1, 0, 0]]
    assert t2.tolist() == [[1, 1, 0, 1], [1, 0, 0, 0]]


def test_offsets_errors_name_the_row():
    ms = torch.tensor([[1, 1], [1, 1]], dtype=torch.bool)
    with pytest.raises(ValueError, match="student row 1: 1 char starts for 2 marked"):
        offset_masks(ms, ms, [[0, 1], [0]], [[0, 1], [0, 1]])
    with pytest.raises(ValueError, match="teacher row 0: char starts must not decrease"):
        offset_masks(ms, ms, [[0, 1], [0, 1]], [[3, 1], [0, 1]])
    with pytest.raises(ValueError, match="mode"):
        pair_positions(ms, ms, "bytes")


def test_char_starts_from_offsets():
    om = torch.tensor([[[0, 5], [5, 9], [9, 15], [0, 0]]])  # prompt, " Den", "ver", appended EOS
    got = char_starts_from_offsets(om, torch.tensor([6]), answer_length=torch.tensor([9]))
    assert got.tolist() == [[0, 0, 3, 9]]


# ---------------------------------------------------------------------------------------------
# Real tokenizers on real answers
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def squad_items(shared_data_dir):
    path = shared_data_dir / "squad" / "dev-v1.1.json"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    data = json.loads(path.read_text())["data"]
    items = []
    for article in data[:6]:
        for para in article["paragraphs"][:1]:
            for qa in para["qas"][:3]:
                items.append((para["context"][:300], qa["question"], qa["answers"][0]["text"]))
    return items


def _encode(tok, prompt, answer, padding_side, width):
    """Prompt + " " + answer + EOS, labels -100 on the prompt; returns ids, labels, answer char starts."""
    text = f"{prompt} {answer}"
    start = len(prompt) + 1
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    is_answer = [end > start and e_start != end for e_start, end in offsets]
    ids.append(tok.eos_token_id)
    offsets.append((0, 0))
    is_answer.append(True)
    labels = [i if a else -100 for i, a in zip(ids, is_answer)]
    starts = char_starts_from_offsets([o for o, a in zip(offsets, is_answer) if a], start, len(answer)).tolist()
    pad = width - len(ids)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if padding_side == "left":
        return [pad_id] * pad + ids, [-100] * pad + labels, starts
    return ids + [pad_id] * pad, labels + [-100] * pad, starts


def _batch(tok, items, padding_side):
    width = 200
    rows = [_encode(tok, f"Context: {c}\nQuestion: {q}\nAnswer:", a, padding_side, width) for c, q, a in items]
    ids = torch.tensor([r[0] for r in rows])
    labels = torch.tensor([r[1] for r in rows])
    return ids, labels, [r[2] for r in rows]


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("name", ["llama-2-7b", "pythia", "gpt2"])
def test_answer_logit_mask_predicts_exactly_the_answer(shared_tokenizer, squad_items, name, padding_side):
    tok = shared_tokenizer(name)
    ids, labels, _ = _batch(tok, squad_items, padding_side)
    mask = answer_logit_mask(labels)
    for b, (_, _, answer) in enumerate(squad_items):
        pos = mask[b].nonzero().squeeze(1)
        predicted = ids[b, pos + 1].tolist()  # causal: logits at t predict token t + 1
        assert predicted[-1] == tok.eos_token_id
        assert tok.decode(predicted[:-1]).strip() == answer.strip()
        # the first marked position is the last prompt token (':' or a lone '▁' before digits),
        # never BOS or padding, and the position after the last answer token is not marked
        assert labels[b, pos[0]] == -100 and labels[b, pos[0] + 1] != -100
        assert ids[b, pos[0]] not in (tok.bos_token_id, tok.pad_token_id)
        assert tok.decode(ids[b, : pos[0] + 1]).rstrip().endswith("Answer:")
    # skip_eos removes exactly one position per row, the one that predicts the EOS
    skipped = answer_logit_mask(labels, skip_eos=True, eos_token_id=tok.eos_token_id)
    assert (mask.sum(1) - skipped.sum(1)).tolist() == [1] * len(squad_items)
    assert (ids[skipped.roll(1, dims=1)] != tok.eos_token_id).all()


@pytest.mark.parametrize("student_name", ["pythia", "gpt2"])
def test_offsets_pairs_tokens_that_start_at_the_same_character(shared_tokenizer, squad_items, student_name):
    s_tok, t_tok = shared_tokenizer(student_name), shared_tokenizer("llama-2-7b")
    s_ids, s_labels, s_starts = _batch(s_tok, squad_items, "right")
    t_ids, t_labels, t_starts = _batch(t_tok, squad_items, "left")
    ms, mt = answer_logit_mask(s_labels), answer_logit_mask(t_labels)
    s_row, s_pos, t_row, t_pos = pair_positions(
        ms, mt, "offsets", student_char_starts=s_starts, teacher_char_starts=t_starts
    )
    assert torch.equal(s_row, t_row)
    # each pair's two tokens start at the same answer character
    s_rank = (ms.long().cumsum(1) - 1)[s_row, s_pos]
    t_rank = (mt.long().cumsum(1) - 1)[t_row, t_pos]
    for r, i, j in zip(s_row.tolist(), s_rank.tolist(), t_rank.tolist()):
        assert s_starts[r][i] == t_starts[r][j]
    # every row pairs its first answer token (start 0) and its EOS (start len(answer))
    for b, (_, _, answer) in enumerate(squad_items):
        firsts = [s_starts[b][i] for r, i in zip(s_row.tolist(), s_rank.tolist()) if r == b]
        assert firsts[0] == 0 and firsts[-1] == len(answer)
    # on these answers the tokenizers split words differently, so positional pairing drifts somewhere
    p_row, p_spos, _, p_tpos = pair_positions(ms, mt)
    ps = (ms.long().cumsum(1) - 1)[p_row, p_spos]
    pt = (mt.long().cumsum(1) - 1)[p_row, p_tpos]
    drift = [s_starts[r][i] != t_starts[r][j] for r, i, j in zip(p_row.tolist(), ps.tolist(), pt.tolist())]
    assert any(drift)
    # and the loss runs on real-shaped inputs with the offset masks
    s2, t2 = offset_masks(ms, mt, s_starts, t_starts)
    g = torch.Generator().manual_seed(0)
    s_logits = torch.randn(*s_ids.shape, 64, generator=g, requires_grad=True)
    t_logits = torch.randn(*t_ids.shape, 48, generator=g)
    loss = uld_loss(s_logits, t_logits, s2, t2)
    loss.backward()
    assert torch.isfinite(loss) and (s_logits.grad[~s2] == 0).all()

"""TRL (an optional extra): examples/trl_uld.py trains with SFTTrainer from an exported signal, and its loss on
a batch is uld's; TRL's own GOLD ULDLoss, in the paper's causal pairing, is an independent oracle for
`uld_loss` (docs/signal_format.md says how TRL's default pairing differs)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

trl = pytest.importorskip("trl")

from uld.losses import ULDLoss, answer_logit_mask, uld_loss  # noqa: E402
from uld.signal import TeacherSignalStore  # noqa: E402
from uld.signal_export import export_signal  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _gold_uld(strategy: str):
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.gold.gold_trainer import ULDLoss as GoldULDLoss

    # the GOLDConfig fields ULDLoss reads: distillation term only, positional mode (no byte-offset merging)
    cfg = SimpleNamespace(uld_crossentropy_weight=0.0, uld_distillation_weight=1.0, uld_student_temperature=1.0,
                          uld_teacher_temperature=1.0, uld_skip_student_eos=False, uld_skip_teacher_eos=False,
                          use_extended_uld=False, uld_token_merge_strategy=strategy, uld_use_hybrid_loss=False,
                          uld_hybrid_matched_weight=None, uld_hybrid_unmatched_weight=None, beta=1.0)
    return GoldULDLoss(cfg)


def _ragged_batch(gen: torch.Generator, b: int, t: int, v: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows of a random prompt (>= 1 token) then a random answer (>= 1 token): logits, labels."""
    logits = (torch.randn(b, t, v, generator=gen, dtype=torch.float64) * 3).requires_grad_(True)
    labels = torch.full((b, t), -100)
    for i in range(b):
        start = int(torch.randint(1, t // 2, (1,), generator=gen))
        end = int(torch.randint(start + 1, t + 1, (1,), generator=gen))
        labels[i, start:end] = torch.randint(0, v, (end - start,), generator=gen)
    return logits, labels


@pytest.mark.parametrize("seed", range(6))
def test_trl_gold_uld_with_causal_pairing_equals_ours(seed):
    gen = torch.Generator().manual_seed(seed)
    b = int(torch.randint(1, 6, (1,), generator=gen))
    s_logits, s_labels = _ragged_batch(gen, b, int(torch.randint(4, 14, (1,), generator=gen)), 37)
    t_logits, t_labels = _ragged_batch(gen, b, int(torch.randint(4, 14, (1,), generator=gen)), 53)
    s_mask, t_mask = answer_logit_mask(s_labels, causal=True), answer_logit_mask(t_labels, causal=True)
    ours = uld_loss(s_logits, t_logits, s_mask, t_mask, reduction="sample")
    (g_ours,) = torch.autograd.grad(ours, s_logits)
    theirs = _gold_uld("bayesian")(s_logits, t_logits, s_labels, t_labels, s_labels.clamp(min=0), t_labels.clamp(min=0))
    (g_theirs,) = torch.autograd.grad(theirs, s_logits)
    torch.testing.assert_close(ours, theirs.reshape(()), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-10, atol=1e-12)
    # TRL's default ("observed") compares the distributions AT the answer tokens, one position after the
    # paper's: the ones that predict the token after each answer token
    observed = _gold_uld("observed")(s_logits, t_logits, s_labels, t_labels, s_labels.clamp(min=0), t_labels.clamp(min=0))
    shifted = uld_loss(s_logits, t_logits, answer_logit_mask(s_labels, causal=False), answer_logit_mask(t_labels, causal=False))
    torch.testing.assert_close(observed.reshape(()), shifted, rtol=1e-12, atol=1e-12)
    assert abs(float(observed.detach()) - float(ours.detach())) > 1e-6


# --------------------------------------------------------------------------------------------------
# examples/trl_uld.py
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tiny_teacher_stage, tmp_path_factory):
    stage = tiny_teacher_stage
    out = tmp_path_factory.mktemp("export") / "signal"
    export_signal(stage, out)
    return stage, out


def _example_module():
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import trl_uld
    finally:
        sys.path.pop(0)
    return trl_uld


def test_trl_trainer_loss_on_a_batch_is_uld_loss(exported, tiny_models, tmp_path):
    from transformers import AutoTokenizer


    sys.path.insert(0, str(REPO / "examples"))
    try:
        from trainer_uld import collate, student_rows
    finally:
        sys.path.pop(0)
    stage, signal_dir = exported
    trainer = _example_module().build_trainer(signal_dir, tiny_models["student"], tmp_path / "out", steps=1, batch_size=4,
                                                cache_dir=str(tmp_path / "cache"))
    batch = next(iter(trainer.get_train_dataloader()))
    row_ids = list(batch["row_ids"])
    model = trainer.model.eval()
    with torch.no_grad():
        got = trainer.compute_loss(model, dict(batch))
    # the reference: uld's own tokenization and collation of the same rows, the stage's own cache
    tok = AutoTokenizer.from_pretrained(tiny_models["student"])
    by_id = {r["row_id"]: r for r in student_rows(stage, tok)}
    ref = collate([by_id[r] for r in row_ids], tok.pad_token_id or tok.eos_token_id)
    assert torch.equal(batch["labels"], ref["labels"]) and torch.equal(batch["input_ids"][batch["attention_mask"].bool()],
                                                                       ref["input_ids"][ref["attention_mask"].bool()])
    teacher, lengths = TeacherSignalStore(stage).get(row_ids)
    with torch.no_grad():
        logits = model(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"]).logits
        want = ULDLoss(lam=1.5, student_eos_id=tok.eos_token_id)(logits, ref["labels"], teacher, teacher_lengths=lengths)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert float(got) > 0


def test_trl_example_trains_from_the_export(exported, tiny_models, tmp_path):
    _, signal_dir = exported
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               HF_DATASETS_CACHE=str(tmp_path / "cache"), TRL_EXPERIMENTAL_SILENCE="1")
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "trl_uld.py"), "--signal", str(signal_dir), "--student",
                           str(tiny_models["student"]), "--out", str(tmp_path / "student"), "--steps", "4", "--batch-size", "4",
                           "--lr", "1e-3"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [float(x) for x in re.search(r"losses: \[([^\]]*)\]", proc.stdout).group(1).split(",")]
    assert len(losses) == 4 and all(l == l and l > 0 for l in losses)
    assert (tmp_path / "student" / "model.safetensors").is_file()

"""Trainer on tiny random models: schedule, every method's loss, cached == online, bad input, a full run.

The teacher-stage folder the trainer reads is made by the real teacher stage (``uld.teacher``) on a
small synthetic SQuAD file, once per module. The helpers at the top are shared with the integration
tests (``tests/integration/test_resume.py``, ``test_training_ddp.py``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from uld.config import ExperimentConfig, apply_overrides, from_dict, migrate
from uld.store import RunFolder

TOP_K = 16
_WORDS = "the river city tower north king queen music paris school church science war army law".split()


def squad_json(n_articles: int = 3, per_article: int = 5) -> dict:
    """A small SQuAD v1.1 file (``n_articles * per_article`` questions, ids q000...)."""
    data, q = [], 0
    for a in range(n_articles):
        paras = []
        for p in range(per_article):
            words = [_WORDS[(a * 7 + p * 3 + i) % len(_WORDS)] for i in range(10 + 2 * p)]
            context = " ".join(words).capitalize() + "."
            answer = words[2]
            paras.append({"context": context, "qas": [{
                "id": f"q{q:03d}", "question": f"What is word {p}?",
                "answers": [{"text": answer, "answer_start": context.lower().find(answer)}],
            }]})  # fmt: skip
            q += 1
        data.append({"title": f"Article_{a}", "paragraphs": paras})
    return {"version": "1.1", "data": data}


def write_data(root: Path, n_articles: int = 3, per_article: int = 5) -> Path:
    d = root / "data" / "squad"
    d.mkdir(parents=True, exist_ok=True)
    (d / "train-v1.1.json").write_text(json.dumps(squad_json(n_articles, per_article)))
    (d / "dev-v1.1.json").write_text(json.dumps(squad_json(1, 2)))
    return d.parent


def make_config(root: Path, models: dict, *, student: str = "student", teacher: str = "teacher", **training) -> ExperimentConfig:
    """A tiny config: 15 SQuAD rows (12 train, 3 val), teacher answers of 6 tokens, top-16 signal.

    ``training`` takes the flat field names of the first schema (``lr=``, ``top_k=``, ``select=``...):
    the schema's own migration puts them in their sections, which this module so exercises too."""
    train = {"method": "uld", "lr": 1e-3, "epochs": 2, "batch_size": 4, "log_every": 1, "seed": 3}
    train.update(training)
    return from_dict(ExperimentConfig, migrate({
        "name": "tiny",
        "teacher": {"name": "tiny-teacher", "path": str(models[teacher])},
        "student": {"name": f"tiny-{student}", "path": str(models[student])},
        "data": {"task": "squad", "dir": str(root / "data"), "val_fraction": 0.2},
        # first_line off: a random teacher may start with a newline and leave an empty answer
        "generation": {"max_new_tokens": 6, "batch_size": 8, "chunk_size": 8, "top_k_signal": TOP_K, "first_line": False},
        "training": train,
        "output_dir": str(root / "out"),
    }))  # fmt: skip


def teacher_stage(cfg: ExperimentConfig) -> Path:
    from uld.teacher import run_teacher_stage

    return Path(run_teacher_stage(cfg))


def new_run(cfg: ExperimentConfig, path: Path | None = None) -> RunFolder:
    run = RunFolder(path) if path is not None else RunFolder.for_config(cfg)
    return run.init(cfg)


def read_metrics(run: RunFolder) -> list[dict]:
    return [json.loads(line) for line in run.file("metrics.jsonl").read_text().splitlines() if line.strip()]


def reset_accelerate() -> None:
    """Forget the process-wide accelerate state between runs inside one test process."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()


# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_models):
    """Data folder + teacher stage shared by the tests of this module."""
    root = tmp_path_factory.mktemp("training")
    write_data(root)
    cfg = make_config(root, tiny_models)
    return {"root": root, "models": tiny_models, "teacher_dir": teacher_stage(cfg), "cfg": cfg}


@pytest.fixture(autouse=True)
def _fresh_accelerate():
    reset_accelerate()
    yield
    reset_accelerate()


def _batch(cfg: ExperimentConfig, teacher_dir: Path, n: int = 4, *, online: bool = False):
    """(student model, teacher model or None, one collated training batch of n rows)."""
    from uld import training as TR
    from uld.training import loop
    from uld.models import load_model, load_tokenizer, resolve_model

    s_res = resolve_model(cfg.student)
    s_tok = load_tokenizer(s_res, padding_side="right")
    train_rows, _, _ = TR.load_training_rows(cfg, teacher_dir)
    t_tok = teacher = store = None
    if online:
        t_res = resolve_model(cfg.teacher)
        t_tok, teacher = load_tokenizer(t_res, padding_side="right"), load_model(t_res).eval()
    else:
        from uld.teacher import TeacherSignalStore

        store = TeacherSignalStore(teacher_dir)
    items, _ = TR.encode_rows(train_rows[:n], s_tok, student_encoder_decoder=s_res.is_encoder_decoder,
                              max_length=cfg.data.max_length, teacher_tok=t_tok)
    coll = TR.DistillationCollator(s_tok.pad_token_id, t_tok.pad_token_id if t_tok else None, store)
    torch.manual_seed(0)
    return load_model(s_res), teacher, coll(items), s_res.is_encoder_decoder, s_tok


# ---- schedule and learning rate ------------------------------------------------------------------


def test_onecycle_starts_at_half_peaks_and_ends_at_a_tenth():
    from uld.training import build_scheduler

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = build_scheduler(opt, "onecycle", total_steps=100, max_lr=2e-6, warmup_ratio=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-6)  # lr / 2
    assert max(lrs) == pytest.approx(2e-6) and int(torch.tensor(lrs).argmax()) == 9  # end of the 10% warm-up
    assert lrs[-1] == pytest.approx(2e-7)  # lr / 10
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10])) and all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_short_onecycle_still_runs():
    from uld.training import build_scheduler

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    for total in (1, 2, 3, 5, 10):
        sched = build_scheduler(opt, "onecycle", total_steps=total, max_lr=1.0, warmup_ratio=0.1)
        lrs = []
        for _ in range(total):
            lrs.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        assert max(lrs) <= 1.0 + 1e-9
        if total >= 2:
            assert lrs[0] == pytest.approx(0.5) and lrs[-1] == pytest.approx(0.1)


def test_plan_steps_counts_optimizer_steps():
    from uld.training import TrainingError, plan_steps

    assert plan_steps(10, 3, 5.0, None) == (4, 20)  # ceil(10 / 3) steps per epoch, the last window short
    assert plan_steps(10, 1, 0.5, None) == (10, 5)
    assert plan_steps(10, 2, 5.0, 7) == (5, 7)
    with pytest.raises(TrainingError):
        plan_steps(0, 1, 1.0, None)


def test_learning_rate_presets_and_config():
    from uld.config import OptimConfig, TrainingConfig
    from uld.training import resolve_lr

    def tc(**optim) -> TrainingConfig:
        return TrainingConfig(optim=OptimConfig(**optim))

    assert resolve_lr(TrainingConfig()) == (1e-6, "config")
    assert resolve_lr(tc(lr_preset="authors-jobs")) == (2e-6, "preset:authors-jobs")
    assert resolve_lr(tc(lr=5e-5)) == (5e-5, "config")  # an explicit rate is what trains
    assert resolve_lr(tc(lr=5e-5, lr_preset="paper")) == (1e-6, "preset:paper")


def test_epoch_sampler_depends_on_seed_and_epoch_only():
    from uld.training import EpochSampler

    a, b = EpochSampler(20, seed=4), EpochSampler(20, seed=4)
    a.set_epoch(1), b.set_epoch(1)
    assert list(a) == list(b) and sorted(a) == list(range(20))
    b.set_epoch(2)
    assert list(a) != list(b)


def test_length_buckets_keep_every_row_each_epoch_and_pad_less():
    from types import SimpleNamespace

    from uld.training import EncodedItem, EpochSampler, LengthBucketSampler
    from uld.training.rows import padding_stats

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(20, 400, (180,), generator=g).tolist()
    items = [EncodedItem(str(i), SimpleNamespace(input_ids=[0] * n)) for i, n in enumerate(lengths)]
    a, b, plain = LengthBucketSampler(lengths, 8, seed=1), LengthBucketSampler(lengths, 8, seed=1), EpochSampler(180, seed=1)
    orders = []
    for epoch in (0, 1):
        a.set_epoch(epoch), b.set_epoch(epoch), plain.set_epoch(epoch)
        order = list(a)
        assert order == list(b) and sorted(order) == list(range(180))  # seeded by (seed, epoch); every row once
        assert padding_stats(items, order, 8)["tokens"] == sum(lengths)
        assert padding_stats(items, order, 8)["padded"] < 0.8 * padding_stats(items, list(plain), 8)["padded"]
        orders.append(order)
    assert orders[0] != orders[1]  # other partners next epoch
    # the full batches come in a random order, not longest first
    widths = [max(lengths[i] for i in orders[0][k : k + 8]) for k in range(0, 176, 8)]
    assert widths != sorted(widths, reverse=True)


def test_fused_optimizer_keeps_the_first_ten_losses(world, tmp_path, monkeypatch):
    """Today's per-tensor AdamW and the fused one: same seeded run, losses of the first 10 optimizer
    steps within 1e-4 relative (float rounding only)."""
    from uld.training import loop, train

    cfg = make_config(world["root"], world["models"], method="uld", epochs=4, max_steps=10)
    cfg.training.optim.fused = True
    fused = train(cfg, new_run(cfg, tmp_path / "fused"), world["teacher_dir"])
    reset_accelerate()
    made = []
    real = loop.build_optimizer
    monkeypatch.setattr(loop, "build_optimizer", lambda *a: made.append(real(*a)) or made[-1])
    cfg.training.optim.fused = False
    train(cfg, new_run(cfg, tmp_path / "loop"), world["teacher_dir"])
    assert made and made[0].defaults["fused"] is None  # the default is torch's per-tensor update
    losses = {name: [r["loss"] for r in read_metrics(RunFolder(tmp_path / name)) if r["split"] == "train"]
              for name in ("fused", "loop")}
    assert fused["steps"] == 10 and len(losses["fused"]) == len(losses["loop"]) == 10
    assert losses["fused"] == pytest.approx(losses["loop"], rel=1e-4)
    assert losses["fused"][-1] < losses["fused"][0]  # it trains


def test_length_batching_trains_every_row(world, tmp_path):
    from uld.training import train

    cfg = make_config(world["root"], world["models"], method="uld", batching="length")
    summary = train(cfg, new_run(cfg, tmp_path / "run"), world["teacher_dir"])
    assert summary["steps"] == 6 and summary["train_rows"]["kept"] == 12
    assert all(math.isfinite(r["loss"]) for r in read_metrics(RunFolder(tmp_path / "run")))


# ---- losses of each method -------------------------------------------------------------------------


def _descends(model, batch, tcfg, **kw) -> list[float]:
    from uld.training import compute_losses

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(5):
        out = compute_losses(model, batch, tcfg, **kw)
        assert torch.isfinite(out.loss)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    return losses


@pytest.mark.parametrize(
    "method,online,student,alignment",
    [
        ("sft-teacher", False, "student", "positional"),
        ("uld", False, "student", "positional"),
        ("uld", True, "student", "positional"),
        ("uld", True, "student", "offsets"),
        ("uld-ot", True, "student", "positional"),
        ("uld", False, "seq2seq", "positional"),
    ],
)
def test_each_method_decreases_the_loss_on_a_fixed_batch(world, method, online, student, alignment):
    cfg = make_config(world["root"], world["models"], student=student, method=method, ot_top_k=8,
                      teacher_signal="online" if online else "cached", alignment=alignment)
    model, teacher, batch, enc_dec, tok = _batch(cfg, world["teacher_dir"], online=online)
    losses = _descends(model, batch, cfg.training, encoder_decoder=enc_dec, teacher=teacher, student_eos_id=tok.eos_token_id)
    assert losses[-1] < losses[0] - 1e-3, losses


def test_kd_kl_decreases_the_loss_with_a_same_tokenizer_teacher(world, tmp_path):
    from uld.testing import build_tiny_model

    models = dict(world["models"], kd_teacher=build_tiny_model(tmp_path / "kd-teacher", "student", seed=9))
    cfg = make_config(world["root"], models, teacher="kd_teacher", method="kd-kl", teacher_signal="online")
    # kd-kl needs rows encoded by the teacher's tokenizer: reuse the stage's answers, own prompts
    model, teacher, batch, enc_dec, tok = _batch(cfg, world["teacher_dir"], online=True)
    losses = _descends(model, batch, cfg.training, encoder_decoder=enc_dec, teacher=teacher, student_eos_id=tok.eos_token_id)
    assert losses[-1] < losses[0] - 1e-3, losses


def test_kd_kl_refuses_different_tokenizers(world):
    from uld.training import TrainingError, train

    cfg = make_config(world["root"], world["models"], method="kd-kl", teacher_signal="online")
    with pytest.raises(TrainingError, match="share one tokenizer"):
        train(cfg, new_run(cfg), world["teacher_dir"])


def test_cached_signal_matches_the_online_teacher(world):
    """Same batch: cached top-k ULD == online ULD with top_k=k (fp16 storage), <= the exact ULD,
    and the exact one exceeds it by at most the top-k bound 2 * min(tail_s, tail_t) per pair."""
    from uld.losses import TeacherSignal, answer_logit_mask, uld_loss

    cfg = make_config(world["root"], world["models"], method="uld", reduction="token")
    model, teacher, online, _, tok = _batch(cfg, world["teacher_dir"], online=True)
    cached = _batch(cfg, world["teacher_dir"], online=False)[2]
    assert online["row_ids"] == cached["row_ids"]
    with torch.no_grad():
        s_logits = model(input_ids=online["input_ids"], attention_mask=online["attention_mask"]).logits
        t_logits = teacher(input_ids=online["teacher_input_ids"], attention_mask=online["teacher_attention_mask"]).logits
    s_mask = answer_logit_mask(online["labels"], causal=True, skip_eos=True, eos_token_id=tok.eos_token_id)
    t_mask = answer_logit_mask(online["teacher_labels"], causal=True)
    # the stage stores one distribution per teacher answer position: the same positions as online
    assert t_mask.sum(1).tolist() == cached["signal_lengths"].tolist()
    c_mask = torch.arange(cached["signal_probs"].shape[1])[None] < cached["signal_lengths"][:, None]
    kw = dict(reduction="token")
    l_cached = uld_loss(s_logits, TeacherSignal(cached["signal_probs"], cached["signal_tail"]), s_mask, c_mask, **kw)
    l_topk = uld_loss(s_logits, t_logits, s_mask, t_mask, top_k=TOP_K, **kw)
    l_exact = uld_loss(s_logits, t_logits, s_mask, t_mask, top_k=None, **kw)
    assert float(l_cached) == pytest.approx(float(l_topk), abs=2e-3)
    s_tail = 1 - s_logits.float().softmax(-1).topk(TOP_K, dim=-1).values.sum(-1)
    t_tail = 1 - t_logits.float().softmax(-1).topk(TOP_K, dim=-1).values.sum(-1)
    from uld.losses import positional_pairs

    sr, sp, tr, tp = positional_pairs(s_mask, t_mask)
    bound = (2 * torch.minimum(s_tail[sr, sp], t_tail[tr, tp])).mean()
    assert float(l_topk) - 1e-5 <= float(l_exact) <= float(l_topk) + float(bound) + 1e-5


# ---- bad input ---------------------------------------------------------------------------------------


def test_empty_answers_are_dropped_and_counted(world):
    from uld.models import load_tokenizer, resolve_model
    from uld.training import TrainRow, encode_rows

    cfg = world["cfg"]
    tok = load_tokenizer(resolve_model(cfg.student), padding_side="right")
    rows = [TrainRow("a", "Context: x\nAnswer:", "Paris"), TrainRow("b", "Context: y\nAnswer:", "   "),
            TrainRow("c", "Context: z\nAnswer:", "")]
    items, counts = encode_rows(rows, tok, student_encoder_decoder=False, max_length=64)
    assert [it.row_id for it in items] == ["a"]
    assert counts["dropped_empty_answer"] == 2 and counts["dropped_row_ids"]["empty_answer"] == ["b", "c"]


def test_prompts_that_cannot_fit_are_dropped_and_counted(world):
    from uld.models import load_tokenizer, resolve_model
    from uld.training import TrainRow, encode_rows

    tok = load_tokenizer(resolve_model(world["cfg"].student), padding_side="right")
    long_ctx = "word " * 50
    rows = [TrainRow("fits", f"Context: {long_ctx}\nAnswer:", "Paris", context=long_ctx),  # context shortened
            TrainRow("no-ctx", f"Question: {long_ctx}\nAnswer:", "Paris")]  # nothing to shorten
    items, counts = encode_rows(rows, tok, student_encoder_decoder=False, max_length=20)
    assert [it.row_id for it in items] == ["fits"] and len(items[0].student.input_ids) <= 20
    assert counts["dropped_prompt_too_long"] == 1 and counts["truncated_context"] == 1


def test_signal_out_of_sync_with_answers_is_a_clear_error(world):
    from uld.teacher import TeacherSignalStore
    from uld.training import DistillationCollator, EncodedItem, RowMismatchError, encode_rows, load_training_rows
    from uld.models import load_tokenizer, resolve_model

    cfg = world["cfg"]
    tok = load_tokenizer(resolve_model(cfg.student), padding_side="right")
    rows, _, _ = load_training_rows(cfg, world["teacher_dir"])
    items, _ = encode_rows(rows[:2], tok, student_encoder_decoder=False, max_length=512)
    coll = DistillationCollator(tok.pad_token_id, None, TeacherSignalStore(world["teacher_dir"]))
    assert coll(items)["row_ids"] == [it.row_id for it in items]
    wrong_len = [dataclasses.replace(items[0], n_teacher_tokens=items[0].n_teacher_tokens + 3), items[1]]
    with pytest.raises(RowMismatchError, match=items[0].row_id):
        coll(wrong_len)
    unknown = [EncodedItem("not-a-row", items[0].student, None, None), items[1]]
    with pytest.raises(RowMismatchError, match="not-a-row"):
        coll(unknown)


def test_nan_loss_stops_with_step_rows_and_a_checkpoint(world, tmp_path, monkeypatch):
    from uld import training as TR
    from uld.training import loop

    cfg = make_config(world["root"], world["models"], method="sft-teacher", max_steps=4)
    real = loop.compute_losses
    calls = {"n": 0}

    def poisoned(model, batch, tcfg, **kw):
        out = real(model, batch, tcfg, **kw)
        calls["n"] += 1
        if calls["n"] == 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(loop, "compute_losses", poisoned)
    run = new_run(cfg, tmp_path / "run")
    with pytest.raises(TR.TrainingDiverged) as err:
        TR.train(cfg, run, world["teacher_dir"])
    assert err.value.step == 2 and len(err.value.row_ids) == 4
    assert (err.value.checkpoint / "model.safetensors").is_file()
    assert all(r in str(err.value) for r in err.value.row_ids)


# ---- whole runs ----------------------------------------------------------------------------------------


def test_full_run_writes_metrics_checkpoints_and_summary(world, tmp_path):
    from transformers import AutoModelForCausalLM

    from uld.training import train

    cfg = make_config(world["root"], world["models"], method="uld", grad_accum=2, eval_every=1)
    run = new_run(cfg, tmp_path / "run")
    summary = train(cfg, run, world["teacher_dir"])
    # 12 rows / batch 4 = 3 micro-batches per epoch -> 2 optimizer steps per epoch (windows of 2 and 1)
    assert summary["steps_per_epoch"] == 2 and summary["steps"] == summary["total_steps"] == 4
    recs = read_metrics(run)
    train_recs = [r for r in recs if r["split"] == "train"]
    val_recs = [r for r in recs if r["split"] == "val"]
    assert [r["step"] for r in train_recs] == [1, 2, 3, 4] and [r["step"] for r in val_recs] == [1, 2, 3, 4]
    for r in train_recs:
        assert math.isfinite(r["loss"]) and r["uld"] is not None and r["tokens_per_s"] > 0
        assert r["loss"] == pytest.approx(r["ce"] + cfg.training.lam * r["uld"], rel=1e-4)
    assert train_recs[0]["lr"] == pytest.approx(cfg.training.optim.lr / 2) and train_recs[-1]["lr"] == pytest.approx(cfg.training.optim.lr / 10)
    best = min(val_recs, key=lambda r: (r["loss"], r["step"]))
    assert summary["best_step"] == best["step"] and summary["best_val_loss"] == pytest.approx(best["loss"])
    assert json.loads(run.file("checkpoints", "best", "checkpoint.json").read_text())["step"] == best["step"]
    for sub in ("best", "last"):
        d = run.file("checkpoints", sub)
        assert (d / "model.safetensors").is_file() and (d / "tokenizer_config.json").is_file()
    AutoModelForCausalLM.from_pretrained(run.file("checkpoints", "best"))
    assert run.read_json("train_summary.json")["train_rows"]["kept"] == 12


@pytest.mark.slow
def test_best_checkpoint_is_the_lowest_validation_loss(world, tmp_path):
    """With a too-large learning rate the validation loss goes up: best must stay at the early step."""
    from safetensors.torch import load_file

    from uld.training import train

    cfg = make_config(world["root"], world["models"], method="sft-teacher", lr=0.5, max_steps=4, eval_every=1, scheduler="constant")
    run = new_run(cfg, tmp_path / "run")
    summary = train(cfg, run, world["teacher_dir"])
    val = [r for r in read_metrics(run) if r["split"] == "val"]
    best = min(val, key=lambda r: (r["loss"], r["step"]))
    assert summary["best_step"] == best["step"]
    if best["step"] != val[-1]["step"]:  # then best and last hold different weights
        a = load_file(run.file("checkpoints", "best", "model.safetensors"))
        b = load_file(run.file("checkpoints", "last", "model.safetensors"))
        assert any(not torch.equal(a[k], b[k]) for k in a)


def test_sft_gold_trains_on_reference_answers(world, tmp_path):
    from uld.training import train

    cfg = make_config(world["root"], world["models"], method="sft-gold", max_steps=2)
    summary = train(cfg, new_run(cfg, tmp_path / "run"), None)
    assert summary["data"]["source"] == "gold" and summary["train_rows"]["kept"] == 12 and summary["steps"] == 2


def test_train_fraction_uses_the_first_rows(world, tmp_path):
    from uld.training import load_training_rows

    full, val, _ = load_training_rows(world["cfg"], world["teacher_dir"])
    cfg = apply_overrides(world["cfg"], {"data.train_fraction": 0.25})
    part, val2, info = load_training_rows(cfg, world["teacher_dir"])
    assert [r.row_id for r in part] == [r.row_id for r in full[:3]] and val2 == val
    assert info["train_pool"] == 12 and info["train_after_fraction"] == 3


def test_method_none_is_a_no_op(world, tmp_path):
    from uld.training import train

    cfg = make_config(world["root"], world["models"], method="none")
    run = new_run(cfg, tmp_path / "run")
    assert train(cfg, run, None) == {"method": "none", "trained": False}
    assert not run.exists("checkpoints")


@pytest.mark.slow
def test_resume_with_a_different_config_is_refused_unless_forced(world, tmp_path, monkeypatch):
    from uld import training as TR
    from uld.training import loop

    cfg = make_config(world["root"], world["models"], method="sft-teacher", max_steps=4, save_every=1)
    run = new_run(cfg, tmp_path / "run")
    real, calls = loop.compute_losses, {"n": 0}

    def crash_on_third(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kw)

    monkeypatch.setattr(loop, "compute_losses", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        TR.train(cfg, run, world["teacher_dir"])
    monkeypatch.setattr(loop, "compute_losses", real)
    assert json.loads(run.file("checkpoints", "state", "trainer.json").read_text())["position"]["global_step"] == 2
    reset_accelerate()
    changed = apply_overrides(cfg, {"training.optim.lr": 2e-3})
    with pytest.raises(TR.ResumeError, match="config differs"):
        TR.train(changed, run, world["teacher_dir"], resume=True)
    reset_accelerate()
    summary = TR.train(changed, run, world["teacher_dir"], resume=True, force_resume=True)
    assert summary["resumed"] and summary["steps"] == 4
    assert [r["step"] for r in read_metrics(run) if r["split"] == "train"] == [1, 2, 3, 4]


def test_teacher_answers_are_required(world, tmp_path):
    from uld.training import TrainingError, train

    cfg = make_config(world["root"], world["models"], method="sft-teacher")
    with pytest.raises(TrainingError, match="answers.parquet"):
        train(cfg, new_run(cfg, tmp_path / "run"), tmp_path / "no-stage")
    cfg = make_config(world["root"], world["models"], method="uld", teacher_signal="cached")
    with pytest.raises(TrainingError, match="teacher_signal=cached"):
        train(cfg, new_run(cfg, tmp_path / "run2"), tmp_path / "no-stage")


# ---- options of the headroom study ---------------------------------------------------------------


@pytest.mark.parametrize("method,online", [("sft-teacher", False), ("uld", False), ("uld", True)])
def test_answer_only_logits_give_the_same_losses_and_gradients(world, method, online):
    """training.logits=answer projects only the answer-predicting positions: same loss, same gradient."""
    from uld.training import compute_losses

    results = []
    for mode in ("all", "answer"):
        cfg = make_config(world["root"], world["models"], method=method, logits=mode,
                          teacher_signal="online" if online else "cached", top_k=None)
        model, teacher, batch, enc_dec, tok = _batch(cfg, world["teacher_dir"], online=online)
        out = compute_losses(model, batch, cfg.training, encoder_decoder=enc_dec, teacher=teacher, student_eos_id=tok.eos_token_id)
        out.loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((float(out.loss), float(out.ce), None if out.distill is None else float(out.distill), grads))
    (l_all, ce_all, d_all, g_all), (l_ans, ce_ans, d_ans, g_ans) = results
    assert l_ans == pytest.approx(l_all, rel=1e-5) and ce_ans == pytest.approx(ce_all, rel=1e-5)
    if d_all is not None:
        assert d_ans == pytest.approx(d_all, rel=1e-5)
    assert torch.allclose(g_ans, g_all, rtol=1e-4, atol=1e-7)


def test_skip_teacher_eos_drops_the_last_cached_position(world):
    from uld.losses import TeacherSignal, answer_logit_mask, uld_loss
    from uld.training import compute_losses

    cfg = make_config(world["root"], world["models"], method="uld", skip_teacher_eos=True, reduction="token")
    model, _, batch, enc_dec, tok = _batch(cfg, world["teacher_dir"])
    with torch.no_grad():
        out = compute_losses(model, batch, cfg.training, encoder_decoder=enc_dec, student_eos_id=tok.eos_token_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    s_mask = answer_logit_mask(batch["labels"], causal=True, skip_eos=True, eos_token_id=tok.eos_token_id)
    lengths = batch["signal_lengths"] - 1
    t_mask = torch.arange(batch["signal_probs"].shape[1])[None] < lengths[:, None]
    want = uld_loss(logits, TeacherSignal(batch["signal_probs"], batch["signal_tail"]), s_mask, t_mask, reduction="token")
    assert float(out.distill) == pytest.approx(float(want), rel=1e-6)
    full = make_config(world["root"], world["models"], method="uld", reduction="token")
    with torch.no_grad():
        other = compute_losses(model, batch, full.training, encoder_decoder=enc_dec, student_eos_id=tok.eos_token_id)
    # the student skips its EOS position too: without skip_teacher_eos the last student answer
    # token is paired with the teacher's last answer token, with it the pairs end one earlier
    assert float(other.distill) != pytest.approx(float(out.distill), rel=1e-6)


def test_cached_signal_temperature_must_match_the_training_temperature(world, tmp_path):
    from uld.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="generation.signal_temperature"):
        load_config(None, ["training.distill.teacher_temperature=0.5"])
    cfg = load_config(None, ["training.distill.teacher_temperature=0.5", "generation.signal_temperature=0.5"])
    assert cfg.generation.signal_temperature == 0.5
    # online ULD re-tempers the logits itself: any temperature is fine
    load_config(None, ["training.distill.teacher_temperature=0.5", "training.distill.teacher_signal=online"])


def test_one_process_trains_runs_of_different_precisions_in_turn():
    # a table script trains bf16 and fp32 cells in one process: accelerate's process-wide state must not
    # pin the first run's precision on the next
    from uld.distributed import accelerator

    reset_accelerate()
    assert accelerator("no").mixed_precision == "no"
    assert accelerator("bf16").mixed_precision == "bf16"
    assert accelerator("no").mixed_precision == "no"
    reset_accelerate()

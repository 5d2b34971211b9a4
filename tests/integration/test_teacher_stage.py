"""Teacher stage end to end on the real SQuAD files (../shared/data): a tiny teacher, then the real
small teacher (Gemma-3-270M, slow)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import small_models_dir
from uld import teacher as T
from uld.config import ExperimentConfig, from_dict


def _cfg(out: Path, teacher: dict, data_dir: Path, **gen) -> ExperimentConfig:
    return from_dict(
        ExperimentConfig,
        {
            "teacher": teacher,
            "data": {"task": "squad", "dir": str(data_dir), "train_size": 20, "teacher_shots": 1},
            "generation": {"batch_size": 8, "chunk_size": 8, **gen},
            "output_dir": str(out),
        },
    )


def test_unregistered_tiny_teacher_on_real_squad(tmp_path, tiny_models, shared_data_dir):
    """A local folder that is not in the registry: the tokenizer's own chat template, 1 shot."""
    cfg = _cfg(tmp_path, {"path": str(tiny_models["teacher"])}, shared_data_dir, max_new_tokens=8, top_k_signal=32)
    folder = T.run_teacher_stage(cfg)
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["split"] == {"val_fraction": 0.1, "split_seed": 42, "n_train": 18, "n_val": 2}
    assert stats["n_rows"] == 20 and stats["n_skipped_too_long"] == 0
    answers = pd.read_parquet(folder / "answers.parquet")
    assert len(answers) == stats["n_kept"] == 20 - stats["n_dropped_empty"]
    # the gold answers come from the official file, and each prompt holds its own question once
    assert answers["gold"].map(len).min() >= 1
    assert all(p.count(q) == 1 for p, q in zip(answers["teacher_prompt"], answers["question"]))
    store = T.TeacherSignalStore(folder)
    signal, lengths = store.get(answers["row_id"].tolist())
    assert signal.probs.shape == (len(answers), int(lengths.max()), 32)
    assert torch.equal(lengths, torch.tensor(answers["n_answer_tokens"].to_numpy() + 1))


@pytest.mark.slow
def test_real_small_teacher_answers_squad(tmp_path, shared_data_dir):
    """Gemma-3-270M (base model, ``plain`` template) on 20 SQuAD training items; cache == online."""
    models = small_models_dir()
    if models is None:
        pytest.skip("~/.cache/small-models is absent (run ../shared/scripts/get-small-models)")
    teacher = {"name": "gemma-3-270m", "path": str(models / "gemma-3-270m")}
    cfg = _cfg(tmp_path, teacher, shared_data_dir, max_new_tokens=24, top_k_signal=64)
    folder = T.run_teacher_stage(cfg)
    answers = pd.read_parquet(folder / "answers.parquet")
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["n_kept"] >= 15, stats
    # answers look like answers: one short line, mostly words from the passage
    assert answers["answer"].map(lambda a: len(a.split())).median() <= 8
    in_context = [
        bool(set(re.findall(r"\w+", a.lower())) & set(re.findall(r"\w+", c.lower())))
        for a, c in zip(answers["answer"], answers["context"])
    ]
    assert sum(in_context) >= 0.6 * len(answers), list(answers["answer"])
    assert 0.0 <= stats["signal"]["mean_tail_mass"] < 0.5

    # the cache equals an online teacher-forced pass, to float16 precision
    from uld.models import load_model, load_tokenizer, resolve_model

    resolved = resolve_model(cfg.teacher)
    model = load_model(resolved).eval()
    tok = load_tokenizer(resolved)
    head = answers.head(6)
    online, lengths = T.online_teacher_signal(model, tok, head["teacher_prompt"].tolist(), head["answer"].tolist(), 64,
                                              batch_size=2)
    cached, c_len = T.TeacherSignalStore(folder).get(head["row_id"].tolist())
    assert torch.equal(lengths, c_len)
    torch.testing.assert_close(cached.probs, online.probs.half().float(), rtol=2e-3, atol=2e-4)
    torch.testing.assert_close(cached.tail, online.tail, rtol=2e-3, atol=2e-4)

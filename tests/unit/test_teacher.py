"""Teacher stage on tiny random models: outputs, resume, sharding, merge checks, cache == online."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from uld.config import ExperimentConfig, from_dict
from uld.data import ChatTemplateError, Example
from uld.losses import TeacherSignal, answer_logit_mask, uld_loss
from uld import teacher as T

TOP_K = 16

_WORDS = "the river city tower north king queen music paris school church science war army law".split()


def _squad_json(n_articles: int = 3, per_article: int = 5, long_every: int = 0) -> dict:
    """A small SQuAD v1.1 file; every ``long_every``-th paragraph is made very long."""
    data, q = [], 0
    for a in range(n_articles):
        paras = []
        for p in range(per_article):
            words = [_WORDS[(a * 7 + p * 3 + i) % len(_WORDS)] for i in range(12 + 3 * p)]
            if long_every and q % long_every == long_every - 1:
                words = words * 12
            context = " ".join(words).capitalize() + "."
            answer = words[2]
            paras.append(
                {
                    "context": context,
                    "qas": [{"id": f"q{q:03d}", "question": f"What is word {p}?",
                             "answers": [{"text": answer, "answer_start": context.lower().find(answer)}]}],
                }
            )
            q += 1
        data.append({"title": f"Article_{a}", "paragraphs": paras})
    return {"version": "1.1", "data": data}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("teacher-data") / "squad"
    d.mkdir(parents=True)
    (d / "train-v1.1.json").write_text(json.dumps(_squad_json(long_every=4)))
    (d / "dev-v1.1.json").write_text(json.dumps(_squad_json(1, 2)))
    return d.parent


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_models):
    """A model registry with the tiny teacher under a few settings (context length, template).

    Yields the folder of a copy of the tiny teacher whose tokenizer has no chat template.
    """
    tmp = tmp_path_factory.mktemp("teacher-registry")
    no_template = tmp / "tiny-teacher-no-template"
    shutil.copytree(tiny_models["teacher"], no_template)
    cfg_file = no_template / "tokenizer_config.json"
    conf = json.loads(cfg_file.read_text())
    conf.pop("chat_template", None)
    cfg_file.write_text(json.dumps(conf))
    for extra in no_template.glob("chat_template.*"):
        extra.unlink()

    base = "kind: chat\n  arch: decoder\n  dtype: float32\n  system_role: true\n  shots: {squad: 1}\n"
    text = (
        f"tiny-teacher:\n  hub_id: local/tiny-teacher\n  max_length: 2048\n  chat_template: null\n  {base}"
        f"tiny-teacher-plain:\n  hub_id: local/tiny-teacher-plain\n  max_length: 2048\n  chat_template: plain\n  {base}"
    )
    path = tmp / "models.yaml"
    path.write_text(text)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ULD_MODEL_REGISTRY", str(path))
        yield no_template


def _cfg(out: Path, teacher_dir: Path, data_dir: Path, *, name: str = "tiny-teacher", **gen) -> ExperimentConfig:
    return from_dict(
        ExperimentConfig,
        {
            "teacher": {"name": name, "path": str(teacher_dir)},
            "student": {"name": "tiny-student"},
            "data": {"task": "squad", "dir": str(data_dir), "val_fraction": 0.2},
            "generation": {"max_new_tokens": 6, "batch_size": 4, "chunk_size": 4, "top_k_signal": TOP_K, **gen},
            "output_dir": str(out),
        },
    )


def _read_signal(folder: Path):
    sig = folder / "signal"
    return (np.load(sig / "probs.npy"), np.load(sig / "tail.npy"), pd.read_parquet(sig / "index.parquet"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_models, data_dir, registry):
    """One complete stage, shared by the tests of this module (tests that modify it work on a copy)."""
    cfg = _cfg(tmp_path_factory.mktemp("teacher-full"), tiny_models["teacher"], data_dir)
    return cfg, T.run_teacher_stage(cfg)


def _copy(full_run, dest: Path):
    """A copy of the shared complete stage under another store root: (cfg, folder)."""
    cfg, folder = full_run
    new = from_dict(ExperimentConfig, {**_as_dict(cfg), "output_dir": str(dest)})
    target = T.RunFolder.for_config(new, kind="teacher").path
    shutil.copytree(folder, target)
    return new, target


# --------------------------------------------------------------------------------------------------


def test_shots_are_seeded_and_never_the_item():
    pool = [Example(id=f"r{i}", context=f"c{i}", question="q", answers=("a",)) for i in range(20)]
    shots = {ex.id: [s.id for s in T.select_teacher_shots(ex, pool, 3, seed=7)] for ex in pool}
    assert all(ex_id not in ids and len(ids) == 3 for ex_id, ids in shots.items())
    # one shared prompt prefix: items that are not shots all see the same shots
    common = {tuple(v) for k, v in shots.items() if k not in set(sum(shots.values(), []))}
    assert len(common) == 1
    assert shots == {ex.id: [s.id for s in T.select_teacher_shots(ex, pool, 3, seed=7)] for ex in pool}


def test_stage_outputs_schema_and_counts(full_run):
    cfg, folder = full_run
    assert (folder / T.DONE_MARKER).exists() and folder.parent.name == "teacher"
    answers = pd.read_parquet(folder / "answers.parquet")
    for col in ("row_id", "split", "context", "question", "title", "gold", "teacher_prompt", "answer", "n_answer_tokens"):
        assert col in answers.columns, col
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["n_rows"] == 15
    assert stats["n_kept"] + stats["n_dropped_empty"] + stats["n_skipped_too_long"] == 15
    assert stats["n_kept"] == len(answers) > 0
    assert stats["split"]["n_val"] == 3 and set(answers["split"]) <= {"train", "val"}
    assert (answers["answer"].str.strip() == answers["answer"]).all() and (answers["answer"] != "").all()
    assert not answers["answer"].str.contains("\n").any()
    # the item is never its own shot, and the prompt contains the item's question
    assert all(r not in shots for r, shots in zip(answers["row_id"], answers["shot_ids"]))
    assert all(q in p for q, p in zip(answers["question"], answers["teacher_prompt"]))

    probs, tail, index = _read_signal(folder)
    assert probs.dtype == np.float16 and probs.shape[1] == TOP_K and tail.dtype == np.float32
    assert index["row_id"].tolist() == answers["row_id"].tolist()
    # one position per answer token plus the EOS
    assert (index["length"].to_numpy() == answers["n_answer_tokens"].to_numpy() + 1).all()
    assert index["offset"].iloc[-1] + index["length"].iloc[-1] == len(probs)
    p = probs.astype(np.float32)
    assert (np.diff(p, axis=1) <= 0).all(), "top-k probabilities must be sorted descending"
    np.testing.assert_allclose(p.sum(1) + tail, 1.0, atol=5e-3)
    assert stats["signal"]["mean_tail_mass"] == pytest.approx(float(tail.mean()), rel=1e-5)
    assert stats["signal"]["bytes_per_1000_answers"] < stats["signal"]["full_logits_fp16_bytes_per_1000_answers"]
    gen = json.loads((folder / "generation.json").read_text())
    assert gen["shots"] == 1 and gen["decoding"]["max_new_tokens"] == 6
    assert (folder / "config.yaml").exists() and (folder / "env.json").exists()


def test_complete_stage_returns_at_once(full_run, monkeypatch):
    cfg, folder = full_run

    def boom(*a, **k):
        raise AssertionError("a complete stage must not regenerate anything")

    monkeypatch.setattr(T, "_process_chunk", boom)
    monkeypatch.setattr(T, "merge_chunks", boom)
    assert T.run_teacher_stage(cfg) == folder
    # another experiment that shares the teacher stage (other method) lands in the same folder
    other = from_dict(ExperimentConfig, {**_as_dict(cfg), "training": {"method": "sft-teacher"}, "name": "other"})
    assert T.run_teacher_stage(other) == folder


def _as_dict(cfg):
    from uld.config import to_dict

    return to_dict(cfg)


def test_resume_after_crash_equals_uninterrupted_run(tmp_path, tiny_models, data_dir, registry, full_run, monkeypatch):
    _, full = full_run
    cfg = _cfg(tmp_path / "crash", tiny_models["teacher"], data_dir)
    real_write = T._write_chunk
    written = []

    def crash_after_first(path, df, meta):
        if written:
            raise KeyboardInterrupt("simulated kill")
        real_write(path, df, meta)
        written.append(path)

    monkeypatch.setattr(T, "_write_chunk", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        T.run_teacher_stage(cfg)
    folder = T.RunFolder.for_config(cfg, kind="teacher").path
    assert [p.name for p in sorted((folder / "chunks").glob("*.parquet"))] == ["chunk-00000.parquet"]
    assert not (folder / T.DONE_MARKER).exists()
    first_chunk_mtime = written[0].stat().st_mtime_ns

    monkeypatch.setattr(T, "_write_chunk", real_write)
    done = []
    real_process = T._process_chunk
    monkeypatch.setattr(T, "_process_chunk", lambda *a, **k: done.append(a[2]) or real_process(*a, **k))
    assert T.run_teacher_stage(cfg) == folder
    assert done == [1, 2, 3], "finished chunks must not be regenerated"
    assert written[0].stat().st_mtime_ns == first_chunk_mtime
    _assert_same_stage(folder, full)


def _assert_same_stage(a: Path, b: Path) -> None:
    cols = ["row_id", "split", "teacher_prompt", "answer", "n_answer_tokens", "shot_ids"]
    pd.testing.assert_frame_equal(pd.read_parquet(a / "answers.parquet")[cols], pd.read_parquet(b / "answers.parquet")[cols])
    pa, ta, ia = _read_signal(a)
    pb, tb, ib = _read_signal(b)
    np.testing.assert_array_equal(pa, pb)
    np.testing.assert_array_equal(ta, tb)
    pd.testing.assert_frame_equal(ia, ib)


class _FakeRank:
    """One rank of a launch of ``world`` processes, alone: collectives hand back this rank's own value."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world, self.is_main, self.device = rank, world, rank == 0, torch.device("cpu")

    def barrier(self) -> None:
        pass

    def broadcast(self, obj):
        return obj


def test_two_shards_merge_to_the_single_process_result(tmp_path, tiny_models, data_dir, registry, full_run, monkeypatch):
    _, full = full_run
    cfg = _cfg(tmp_path / "sharded", tiny_models["teacher"], data_dir)
    seen = []
    real_process = T._process_chunk
    monkeypatch.setattr(T, "_process_chunk", lambda *a, **k: seen.append(a[2]) or real_process(*a, **k))
    # process 1 of 2 first: it runs chunks 1 and 3 and leaves the merge to process 0
    monkeypatch.setattr(T, "_dist", lambda: _FakeRank(1, 2))
    folder = T.run_teacher_stage(cfg)
    assert seen == [1, 3] and not (folder / T.DONE_MARKER).exists()
    with pytest.raises(T.TeacherStageError, match="chunk-00000.parquet is missing"):
        T.merge_chunks(folder, cfg=cfg)
    monkeypatch.setattr(T, "_dist", lambda: _FakeRank(0, 2))
    assert T.run_teacher_stage(cfg) == folder
    assert seen == [1, 3, 0, 2]
    _assert_same_stage(folder, full)


def test_merge_names_the_chunk_with_missing_rows(full_run, tmp_path):
    cfg, folder = _copy(full_run, tmp_path)
    chunk = folder / "chunks" / "chunk-00002.parquet"
    df, meta = T._read_chunk(chunk)
    T._write_chunk(chunk, df.iloc[1:].reset_index(drop=True), meta)
    with pytest.raises(T.TeacherStageError, match=r"chunk-00002\.parquet.*missing 1: \['q\d+'\]") as err:
        T.merge_chunks(folder, cfg=cfg)
    assert df["row_id"].iloc[0] in str(err.value)
    chunk.unlink()
    with pytest.raises(T.TeacherStageError, match=r"chunk-00002\.parquet is missing"):
        T.merge_chunks(folder, cfg=cfg)


def test_changed_chunk_size_is_refused_on_resume(full_run, tmp_path):
    cfg, folder = _copy(full_run, tmp_path)
    (folder / T.DONE_MARKER).unlink()
    cfg.generation.chunk_size = 5
    with pytest.raises(T.TeacherStageError, match="chunk_size"):
        T.run_teacher_stage(cfg)
    assert T.run_teacher_stage(cfg, force=True) == folder
    assert len(list((folder / "chunks").glob("*.parquet"))) == 3


def test_over_long_prompts_are_skipped_and_counted(tmp_path, tiny_models, data_dir, registry, full_run, monkeypatch):
    # The context limit sits in the middle of the measured prompt lengths (they depend on which
    # tokenizer the tiny teacher has), so some prompts fit and some do not.
    measured = pd.concat([T._read_chunk(p)[0] for p in sorted((full_run[1] / "chunks").glob("*.parquet"))])
    lengths = sorted(measured["n_prompt_tokens"])
    limit = lengths[len(lengths) // 2] + 6 + 1
    reg = tmp_path / "models.yaml"
    reg.write_text(
        f"tiny-teacher-short:\n  hub_id: local/tiny-teacher-short\n  max_length: {limit}\n  chat_template: null\n"
        "  kind: chat\n  arch: decoder\n  dtype: float32\n  system_role: true\n  shots: {squad: 1}\n"
    )
    monkeypatch.setenv("ULD_MODEL_REGISTRY", str(reg))
    cfg = _cfg(tmp_path / "short", tiny_models["teacher"], data_dir, name="tiny-teacher-short")
    folder = T.run_teacher_stage(cfg)
    stats = json.loads((folder / "stats.json").read_text())
    rows = pd.concat([T._read_chunk(p)[0] for p in sorted((folder / "chunks").glob("*.parquet"))])
    # Rule 1: no room for max_new_tokens (+ EOS) after the prompt: never generated.
    too_long = rows[rows["n_prompt_tokens"] + 6 + 1 > limit]
    assert 0 < len(too_long) < len(rows)
    # Rule 2: generated, but prompt + re-tokenized answer + EOS exceeds the limit: skipped as well.
    from transformers import AutoTokenizer

    from uld.data import PromptTooLong, encode_teacher_pair
    from uld.generation import keep_first_line

    tok = AutoTokenizer.from_pretrained(tiny_models["teacher"])
    second = []
    for r in rows[(rows["n_prompt_tokens"] + 6 + 1 <= limit) & (rows["status"] == "too_long")].itertuples():
        with pytest.raises(PromptTooLong):
            encode_teacher_pair(tok, r.teacher_prompt, keep_first_line(r.generation), max_length=limit)
        second.append(r.row_id)
    assert stats["n_skipped_too_long"] == len(too_long) + len(second)
    assert sorted(stats["skipped_row_ids"]) == sorted(list(too_long["row_id"]) + second)
    answers = pd.read_parquet(folder / "answers.parquet")
    assert not set(answers["row_id"]) & set(too_long["row_id"])
    # nothing was truncated: every kept prompt is intact (its full context is in it)
    assert all(c in p for c, p in zip(answers["context"], answers["teacher_prompt"]))


def test_teacher_without_chat_template(tmp_path, data_dir, registry):
    cfg = _cfg(tmp_path / "nt", registry, data_dir)  # `registry` is the template-less teacher folder
    with pytest.raises(ChatTemplateError, match="no chat template"):
        T.run_teacher_stage(cfg)
    plain = _cfg(tmp_path / "plain", registry, data_dir, name="tiny-teacher-plain")
    folder = T.run_teacher_stage(plain)
    prompt = pd.read_parquet(folder / "answers.parquet")["teacher_prompt"].iloc[0]
    assert prompt.rstrip().endswith("Answer:")


def test_empty_generations_are_dropped_and_counted(tmp_path, tiny_models, data_dir, registry, monkeypatch):
    real = T.greedy_generate

    def some_empty(model, tokenizer, prompt_ids, **kw):
        out = real(model, tokenizer, prompt_ids, **kw)
        out.answers = ["" if i % 3 == 0 else a for i, a in enumerate(out.answers)]
        return out

    monkeypatch.setattr(T, "greedy_generate", some_empty)
    folder = T.run_teacher_stage(_cfg(tmp_path / "empty", tiny_models["teacher"], data_dir))
    stats = json.loads((folder / "stats.json").read_text())
    answers = pd.read_parquet(folder / "answers.parquet")
    assert stats["n_dropped_empty"] >= 4
    assert set(stats["dropped_row_ids"]).isdisjoint(answers["row_id"])
    assert len(answers) == stats["n_kept"] == 15 - stats["n_dropped_empty"] - stats["n_skipped_too_long"]


# --------------------------------------------------------------------------------------------------
# cached signal == online teacher
# --------------------------------------------------------------------------------------------------


_LOADED: dict = {}


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if path not in _LOADED:
        tok = AutoTokenizer.from_pretrained(path)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        _LOADED[path] = (AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), tok)
    return _LOADED[path]


def test_cached_signal_equals_online_forward(full_run, tiny_models):
    _, folder = full_run
    answers = pd.read_parquet(folder / "answers.parquet")
    store = T.TeacherSignalStore(folder)
    ids = answers["row_id"].tolist()
    cached, lengths = store.get(ids)
    model, tok = _load(tiny_models["teacher"])
    # a different batch size and order than the stage used: the values must not depend on batching
    online, on_len = T.online_teacher_signal(model, tok, answers["teacher_prompt"].tolist()[::-1],
                                             answers["answer"].tolist()[::-1], TOP_K, batch_size=3)
    online = TeacherSignal(online.probs.flip(0), online.tail.flip(0))
    assert torch.equal(lengths, on_len.flip(0))
    torch.testing.assert_close(cached.probs, online.probs.half().float(), rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(cached.tail, online.tail, rtol=1e-4, atol=1e-5)
    # and both equal a plain unbatched forward pass of the teacher
    enc = T.encode_teacher_pair(tok, answers["teacher_prompt"].iloc[0], answers["answer"].iloc[0])
    ids0 = torch.as_tensor(enc.input_ids).view(1, -1)
    labels0 = torch.as_tensor(enc.labels).view(1, -1)
    with torch.no_grad():
        logits = model(input_ids=ids0).logits
    probs = logits[answer_logit_mask(labels0)].softmax(-1).sort(-1, descending=True).values[:, :TOP_K]
    n = int(lengths[0])
    torch.testing.assert_close(cached.probs[0, :n], probs.half().float(), rtol=1e-3, atol=1e-5)
    assert (cached.probs[0, n:] == 0).all()


def test_signal_is_cached_at_the_configured_temperature(tmp_path, tiny_models, data_dir, registry, full_run):
    cfg, folder = full_run
    sharp_cfg = _cfg(tmp_path, tiny_models["teacher"], data_dir, signal_temperature=0.5)
    assert T.RunFolder.for_config(sharp_cfg, kind="teacher").id != folder.name  # a new stage
    sharp = Path(T.run_teacher_stage(sharp_cfg))
    answers = pd.read_parquet(folder / "answers.parquet")
    # greedy answers do not depend on the signal temperature
    assert pd.read_parquet(sharp / "answers.parquet")["answer"].tolist() == answers["answer"].tolist()
    model, tok = _load(tiny_models["teacher"])
    ids = answers["row_id"].tolist()
    online, _ = T.online_teacher_signal(model, tok, answers["teacher_prompt"].tolist(), answers["answer"].tolist(),
                                        TOP_K, temperature=0.5)
    cached, _ = T.TeacherSignalStore(sharp).get(ids)
    torch.testing.assert_close(cached.probs, online.probs.half().float(), rtol=1e-3, atol=1e-5)
    assert json.loads((sharp / "generation.json").read_text())["signal"]["temperature"] == 0.5
    flat, _ = T.TeacherSignalStore(folder).get(ids)
    assert float(cached.probs[:, :, 0].mean()) > float(flat.probs[:, :, 0].mean())  # sharper


def test_uld_loss_with_cache_matches_online_teacher(full_run, tiny_models):
    from uld.data import collate, encode_pair, get_task

    _, folder = full_run
    answers = pd.read_parquet(folder / "answers.parquet").head(6)
    task = get_task("squad")
    t_model, t_tok = _load(tiny_models["teacher"])
    s_model, s_tok = _load(tiny_models["student"])

    exs = [Example(id=r.row_id, context=r.context, question=r.question, answers=tuple(r.gold), title=r.title)
           for r in answers.itertuples()]
    s_enc = [encode_pair(s_tok, task.student_prompt(e), a) for e, a in zip(exs, answers["answer"])]
    t_enc = [T.encode_teacher_pair(t_tok, p, a) for p, a in zip(answers["teacher_prompt"], answers["answer"])]
    sb = collate(s_enc, s_tok.pad_token_id, "right")
    tb = collate(t_enc, t_tok.pad_token_id, "right")
    with torch.no_grad():
        s_logits = s_model(input_ids=sb["input_ids"], attention_mask=sb["attention_mask"]).logits
        t_logits = t_model(input_ids=tb["input_ids"], attention_mask=tb["attention_mask"]).logits
    s_mask = answer_logit_mask(sb["labels"], skip_eos=True)
    t_mask = answer_logit_mask(tb["labels"])

    store = T.TeacherSignalStore(folder)
    signal, lengths = store.get(answers["row_id"].tolist())
    cached = uld_loss(s_logits, signal, s_mask, store.mask(lengths))
    online_topk = uld_loss(s_logits, t_logits, s_mask, t_mask, top_k=TOP_K)
    exact = uld_loss(s_logits, t_logits, s_mask, t_mask, top_k=None)
    assert float(cached) == pytest.approx(float(online_topk), abs=2e-3)
    # the top-k form is a lower bound of the exact distance, within 2 * tail mass per pair
    pairs = torch.minimum(s_mask.sum(1), lengths)
    bound = 2 * max(float(signal.tail[i, : int(pairs[i])].max()) for i in range(len(pairs)) if pairs[i] > 0)
    assert float(cached) <= float(exact) + 2e-3
    assert float(exact) - float(cached) <= bound + 2e-3


# --------------------------------------------------------------------------------------------------
# TeacherSignalStore
# --------------------------------------------------------------------------------------------------


def test_store_get_pads_folds_and_names_missing_rows(full_run):
    _, folder = full_run
    store = T.TeacherSignalStore(folder / "signal")
    ids = pd.read_parquet(folder / "answers.parquet")["row_id"].tolist()[:3]
    full, lengths = store.get(ids)
    assert full.probs.shape == (3, int(lengths.max()), TOP_K) and full.probs.dtype == torch.float32
    mask = store.mask(lengths)
    assert mask.sum() == lengths.sum() and (full.probs[~mask] == 0).all() and (full.tail[~mask] == 0).all()
    small, _ = store.get(ids, top_k=4)
    assert small.probs.shape[-1] == 4
    torch.testing.assert_close(small.probs, full.probs[..., :4])
    torch.testing.assert_close(small.tail, full.tail + full.probs[..., 4:].sum(-1))
    with pytest.raises(KeyError, match="no-such-row"):
        store.get(["no-such-row"])
    with pytest.raises(ValueError, match="k=16"):
        store.get(ids, top_k=TOP_K + 1)
    with pytest.raises(FileNotFoundError, match="probs.npy"):
        T.TeacherSignalStore(folder / "chunks")

"""The teacher signal as a public format (docs/signal_format.md): its version, the rule for stages written
before the version, export as parquet shards that `datasets` opens, import back bit for bit, the same
student trained from either, and one-line errors for bad shards."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from uld.cli import main
from uld.errors import SignalError
from uld.signal import FORMAT_VERSION, SHARD_META_KEY, TeacherSignalStore, read_signal_dataset, signal_format_version, write_signal
from uld.signal_export import export_signal, import_signal

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
DATA = SHARED_DATA if (SHARED_DATA / "squad").is_dir() else REPO / "tests" / "fixtures" / "data"
TOP_K = 16


@pytest.fixture(scope="module")
def stage(tiny_models, tmp_path_factory):
    from accelerate.state import PartialState

    store = tmp_path_factory.mktemp("store")
    assert main(["generate", str(REPO / "experiments" / "smoke.yaml"), f"teacher.path={tiny_models['teacher']}",
                 f"data.dir={DATA}", f"output_dir={store}", "data.train_size=12", "generation.max_new_tokens=6",
                 f"generation.top_k_signal={TOP_K}"]) == 0
    PartialState._reset_state()
    (folder,) = [p for p in (store / "teacher").iterdir() if not p.name.startswith(".")]
    return folder


@pytest.fixture(scope="module")
def exported(stage, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "signal"
    export_signal(stage, out, rows_per_shard=4)  # several shards per split
    return out


def _rows(n: int = 3, k: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        p = np.sort(rng.random((i + 2, k)).astype(np.float16), axis=1)[:, ::-1] / 4
        rows.append((p, (1 - p.astype(np.float32).sum(1)).astype(np.float32)))
    return [f"r{i}" for i in range(n)], rows


# --------------------------------------------------------------------------------------------------
# The version of a stage's signal/
# --------------------------------------------------------------------------------------------------


def test_every_written_signal_carries_its_version(tmp_path):
    ids, rows = _rows()
    meta = write_signal(tmp_path / "signal", ids, rows, k=4, temperature=1.0)
    assert meta["format_version"] == FORMAT_VERSION == 1
    assert json.loads((tmp_path / "signal" / "meta.json").read_text())["format_version"] == 1
    assert TeacherSignalStore(tmp_path).format_version == 1


def test_unknown_or_missing_version_is_an_error_naming_the_file(tmp_path):
    ids, rows = _rows()
    write_signal(tmp_path / "signal", ids, rows, k=4, temperature=1.0)
    meta_path = tmp_path / "signal" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "format_version": 2}))
    with pytest.raises(SignalError, match=rf"^{meta_path}: teacher-signal format_version 2 is not one"):
        TeacherSignalStore(tmp_path)
    del meta["format_version"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(SignalError, match=rf"^{meta_path}: the teacher signal has no format_version"):
        TeacherSignalStore(tmp_path)
    # the rule for stages written before the version: their generation.json describes the version-1 layout
    record = {"top_k": 4, "dtype": "float16", "tail_dtype": "float32", "positions": "answer tokens + EOS", "temperature": 1.0}
    (tmp_path / "generation.json").write_text(json.dumps({"signal": record}))
    assert TeacherSignalStore(tmp_path).format_version == 1
    (tmp_path / "generation.json").write_text(json.dumps({"signal": {**record, "dtype": "bfloat16"}}))
    with pytest.raises(SignalError, match="no format_version"):
        TeacherSignalStore(tmp_path)


def test_committed_teacher_stages_read_as_version_1():
    stages = [p for p in (REPO / "results" / "teacher").iterdir() if (p / ".done").is_file()]
    assert stages, "no committed teacher stage"
    for folder in stages:
        sig = folder / "signal"
        before = {p.name: p.read_bytes() for p in sig.iterdir()}
        # a stage written before versioning has no version on disk: the rule reads it as version 1
        on_disk = json.loads((sig / "meta.json").read_text()).get("format_version") if (sig / "meta.json").is_file() else None
        assert signal_format_version(sig) == (on_disk or 1)
        store = TeacherSignalStore(folder)
        assert store.format_version == 1 and len(store) > 0
        store.verify()
        assert {p.name: p.read_bytes() for p in sig.iterdir()} == before  # reading rewrites nothing


# --------------------------------------------------------------------------------------------------
# Export -> load_dataset -> import
# --------------------------------------------------------------------------------------------------


def test_export_opens_with_load_dataset(exported, stage, tmp_path):
    import datasets

    ds = datasets.load_dataset("parquet", data_dir=str(exported), cache_dir=str(tmp_path / "cache"))
    answers = pd.read_parquet(stage / "answers.parquet")
    assert set(ds) == {"train", "validation"}
    assert ds["train"].num_rows == int((answers["split"] == "train").sum())
    assert ds["validation"].num_rows == int((answers["split"] == "val").sum())
    row = ds["train"][0]
    assert row["format_version"] == 1 and len(row["probs"]) == row["n_positions"] == len(row["tail"]) == len(row["answer_token_ids"])
    assert len(row["probs"][0]) == TOP_K and ds["train"].features["probs"].feature.feature.dtype == "float16"
    card = (exported / "README.md").read_text()
    meta = json.loads(pq.read_schema(sorted((exported / "data").glob("*.parquet"))[0]).metadata[SHARD_META_KEY])
    assert card.startswith("---\nlicense: cc-by-sa-4.0\n") and "format version 1" in card
    assert meta["prompts"]["prompts_sha256"] in card and f"{meta['n_rows']} answers" in card
    assert meta["format_version"] == 1 and meta["k"] == TOP_K and meta["source_data"]["licence"] == "cc-by-sa-4.0"
    assert meta["teacher"] and meta["tokenizer"]["vocab_size"] > 0 and meta["prompts"]["prompts_sha256"]
    assert len(meta["shards"]) > 2  # 4 answers per shard


def test_answer_token_ids_are_the_teacher_tokens_the_positions_predict(exported, stage, tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["teacher"])
    data = read_signal_dataset(exported)
    for ids, answer in zip(data.answers["answer_token_ids"], data.answers["answer"]):
        assert ids[-1] == tok.eos_token_id and tok.decode(ids[:-1]).strip() == answer.strip()


def test_import_is_bit_identical(exported, stage, tmp_path):
    out = import_signal(exported, tmp_path / "imported")
    for name in ("probs.npy", "tail.npy"):
        assert (out / "signal" / name).read_bytes() == (stage / "signal" / name).read_bytes(), name
    pd.testing.assert_frame_equal(pd.read_parquet(out / "signal" / "index.parquet"), pd.read_parquet(stage / "signal" / "index.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(out / "answers.parquet"), pd.read_parquet(stage / "answers.parquet"))
    assert json.loads((out / "generation.json").read_text()) == json.loads((stage / "generation.json").read_text())
    assert (out / "config.yaml").read_text() == (stage / "config.yaml").read_text()
    original, back = TeacherSignalStore(stage), TeacherSignalStore.from_dataset(exported)
    assert back.format_version == 1 and back.row_ids() == original.row_ids()
    a, la = original.get(original.row_ids())
    b, lb = back.get(original.row_ids())
    assert torch.equal(a.probs, b.probs) and torch.equal(a.tail, b.tail) and torch.equal(la, lb)


def _train(stage_dir: Path, store: TeacherSignalStore, student: Path, steps: int = 3) -> list[float]:
    sys.path.insert(0, str(REPO / "examples"))
    try:
        from trainer_uld import collate, student_rows
    finally:
        sys.path.pop(0)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from uld import ULDLoss

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(student)
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(student, use_safetensors=True).train()
    rows = student_rows(stage_dir, tok)
    loss_fn, opt = ULDLoss(lam=1.5, student_eos_id=tok.eos_token_id), torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for step in range(steps):
        batch = collate(rows[step * 3 : step * 3 + 3], tok.pad_token_id)
        teacher, lengths = store.get(batch["row_ids"])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = loss_fn(logits, batch["labels"], teacher, teacher_lengths=lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_imported_signal_trains_the_same_student(exported, stage, tiny_models, tmp_path):
    out = import_signal(exported, tmp_path / "imported")
    original = _train(stage, TeacherSignalStore(stage), tiny_models["student"])
    assert _train(out, TeacherSignalStore(out), tiny_models["student"]) == original
    assert _train(stage, TeacherSignalStore.from_dataset(exported), tiny_models["student"]) == original
    assert len(original) == 3 and all(x > 0 for x in original)


def test_cli_export_and_import(stage, tmp_path, capsys):
    assert main(["signal", "export", str(stage), "--out", str(tmp_path / "x")]) == 0
    assert main(["signal", "import", str(tmp_path / "x"), "--out", str(tmp_path / "y")]) == 0
    assert (tmp_path / "y" / "signal" / "probs.npy").read_bytes() == (stage / "signal" / "probs.npy").read_bytes()
    assert main(["signal", "export", str(stage), "--out", str(tmp_path / "x")]) == 2  # not empty, no --force
    assert "exists and is not empty" in capsys.readouterr().err


def test_export_with_the_wrong_tokenizer_is_refused(stage, tiny_models, tmp_path):
    with pytest.raises(SignalError, match="the tokenizer is not the teacher's"):
        export_signal(stage, tmp_path / "x", tokenizer=str(tiny_models["student"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing left, staged copy included


# --------------------------------------------------------------------------------------------------
# Bad shards: one line naming the shard
# --------------------------------------------------------------------------------------------------


def _copy(exported: Path, dest: Path) -> tuple[Path, Path]:
    shutil.copytree(exported, dest)
    return dest, sorted((dest / "data").glob("train-*.parquet"))[1]


def _rewrite(shard: Path, edit) -> None:
    table = pq.read_table(shard)
    meta = json.loads(table.schema.metadata[SHARD_META_KEY])
    table, meta = edit(table, meta)
    pq.write_table(table.replace_schema_metadata({SHARD_META_KEY: json.dumps(meta).encode()} if meta else None), shard)


def _changed_value(table, meta):
    col = table.column("tail").combine_chunks()
    values = col.flatten().to_numpy().copy()
    values[0] += 0.25
    tail = pa.ListArray.from_arrays(col.offsets, pa.array(values, pa.float32()))
    return table.set_column(table.column_names.index("tail"), "tail", tail), meta


BAD = {
    "truncated": (lambda shard: shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2]), "unreadable parquet shard"),
    "not parquet": (lambda shard: shard.write_bytes(b"PAR1 broken"), "unreadable parquet shard"),
    "unknown version": (lambda shard: _rewrite(shard, lambda t, m: (t, {**m, "format_version": 7})), "format_version 7 is not one"),
    "no version": (lambda shard: _rewrite(shard, lambda t, m: (t, None)), "no teacher-signal format_version"),
    "altered values": (lambda shard: _rewrite(shard, _changed_value), "does not match its crc32"),
    "missing shard": (lambda shard: shard.unlink(), "shard missing"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_shard_is_one_line_naming_it(exported, tmp_path, case, capsys):
    folder, shard = _copy(exported, tmp_path / "copy")
    damage, message = BAD[case]
    damage(shard)
    with pytest.raises(SignalError, match=message) as err:
        TeacherSignalStore.from_dataset(folder)
    assert str(err.value).startswith(str(shard)) and "\n" not in str(err.value)
    assert main(["signal", "import", str(folder), "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(shard) in lines[0]
    assert not (tmp_path / "out").exists()

"""Task loading (fixtures in the original formats and the full ../shared data), splits, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from uld.config import DataConfig
from uld.data import (
    DATA_DIR_ENV,
    TASKS,
    DataError,
    Example,
    get_task,
    select_shots,
    split_pool,
    test_split,
    training_pool,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"

# ---- the splits the paper evaluates (and trains on), from the full public files -------------------
PAPER_COUNTS = {
    "squad": (87_599, 10_570),
    "qed": (7_167, 1_355),
    "fairytaleqa": (8_548 + 1_025, 1_007),
    "pubmedqa": (500, 500),
    "dialogsum": (12_460, 500),
}


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_split_counts_from_shared_data(shared_data_dir, name):
    task = get_task(name)
    train, test = task.load("train", shared_data_dir), task.load("test", shared_data_dir)
    assert (len(train), len(test)) == PAPER_COUNTS[name]
    assert len({e.id for e in train}) == len(train) and len({e.id for e in test}) == len(test)
    assert all(e.answers for e in test)
    assert not {e.id for e in train} & {e.id for e in test}


def test_shared_reference_shapes(shared_data_dir):
    squad = get_task("squad").load("test", shared_data_dir)
    assert squad[0].id == "56be4db0acb8001400a502ec" and squad[0].answers == ("Denver Broncos",) * 3
    dialogsum = get_task("dialogsum").load("test", shared_data_dir)
    assert all(len(e.answers) == 3 for e in dialogsum)
    qed = get_task("qed")
    qed_train = qed.load("train", shared_data_dir)
    # the 20 training rows the source marks as "no span" stay in the pool, without gold
    assert sum(1 for e in qed_train if not e.answers) == 20


def test_pubmedqa_embedded_test_ids_match_official_file(shared_data_dir):
    from uld.data._pubmedqa_test_ids import TEST_IDS

    official = json.loads((shared_data_dir / "pubmedqa" / "test_ground_truth.json").read_text())
    assert TEST_IDS == set(official)
    assert {e.id for e in get_task("pubmedqa").load("test", shared_data_dir)} == TEST_IDS


def test_fairytaleqa_reused_question_ids_are_disambiguated(shared_data_dir):
    train = get_task("fairytaleqa").load("train", shared_data_dir)
    suffixed = [e for e in train if "~" in e.id]
    assert len(suffixed) == 10
    assert "tale-of-tom-kitten/3~2" in {e.id for e in suffixed}


# ---- fixtures: loading logic without the full data -------------------------------------------------
@pytest.mark.parametrize(
    "name,n_train,n_test",
    [("squad", 4, 3), ("qed", 5, 3), ("fairytaleqa", 5, 2), ("pubmedqa", 3, 3), ("dialogsum", 3, 2)],
)
def test_fixture_counts(name, n_train, n_test):
    task = get_task(name)
    assert len(task.load("train", FIXTURES)) == n_train
    assert len(task.load("test", FIXTURES)) == n_test


def test_data_dir_from_env(monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(FIXTURES))
    assert len(get_task("squad").load("test")) == 3


def test_registry_and_aliases():
    assert sorted(TASKS) == ["dialogsum", "fairytaleqa", "pubmedqa", "qed", "squad"]
    assert get_task("pubmed_qa").name == "pubmedqa" and get_task("FairytaleQA").name == "fairytaleqa"
    with pytest.raises(DataError, match="unknown task 'nope'"):
        get_task("nope")


def test_references_protocols():
    qed = get_task("qed")
    ex = qed.load("test", FIXTURES)[0]
    assert ex.answers == ("Wilhelm Conrad R\u00f6ntgen , of Germany", "Wilhelm Conrad R\u00f6ntgen")
    assert qed.references(ex, "authors") == ["Wilhelm Conrad R\u00f6ntgen , of Germany"]
    assert qed.references(ex, "complete") == list(ex.answers)

    fq = get_task("fairytaleqa")
    ex = fq.load("test", FIXTURES)[0]
    assert ex.answers == ("golden hair", "golden hair")  # answer1 and the non-empty answer4
    assert fq.references(ex, "authors") == ["golden hair"]
    assert len(fq.references(ex, "complete")) == 2

    squad = get_task("squad")
    ex = squad.load("test", FIXTURES)[0]
    assert squad.references(ex) == ["Denver Broncos"] * 3 and squad.gold_answer(ex) == "Denver Broncos"

    pm = get_task("pubmedqa")
    ex = pm.load("test", FIXTURES)[0]
    assert pm.references(ex) == [ex.answers[0]] and ex.answers[0].startswith("Results depicted mitochondrial")

    ds = get_task("dialogsum")
    ex = ds.load("test", FIXTURES)[0]
    assert len(ds.references(ex)) == 3 and ds.gold_answer(ex).startswith("Ms. Dawson helps")
    with pytest.raises(ValueError, match="protocol"):
        ds.references(ex, "mine")


def test_qed_no_span_row_has_no_gold():
    qed = get_task("qed")
    ex = next(e for e in qed.load("train", FIXTURES) if e.id == "-4097303105425806790")
    assert ex.answers == ()
    with pytest.raises(DataError, match="no gold answer"):
        qed.gold_answer(ex)
    assert ex not in select_shots(qed.load("train", FIXTURES), 4, seed=0)


# ---- prompts -----------------------------------------------------------------------------------
EX = Example(id="q1", context="Tom has a red ball.", question="What color is the ball?", answers=("red",), title="Tom_toys")
SHOT = Example(id="s1", context="Ann owns a cat.", question="What pet does Ann own?", answers=("a cat",), title="Ann")


def test_student_prompts_golden():
    assert get_task("squad").student_prompt(EX) == "Context: Tom has a red ball.\nQuestion: What color is the ball?\nAnswer:"
    assert get_task("qed").student_prompt(EX) == get_task("squad").student_prompt(EX)
    assert get_task("fairytaleqa").student_prompt(EX) == get_task("squad").student_prompt(EX)
    assert (
        get_task("pubmedqa").student_prompt(EX)
        == "Medical paper: Tom has a red ball.\nQuestion: What color is the ball?\nAnswer:"
    )
    dlg = Example(id="d", context="#Person1#: Hi.\n#Person2#: Hello.", question="", answers=("They greet.",))
    assert get_task("dialogsum").student_prompt(dlg) == "Dialogue: #Person1#: Hi.\n#Person2#: Hello.\nSummary:"


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_prompt_parts_cover_prompt(name):
    task = get_task(name)
    ex = task.load("test", FIXTURES)[0]
    before, ctx, after = task.prompt_parts(ex)
    assert before + ctx + after == task.student_prompt(ex) and ctx == ex.context


def test_teacher_messages_golden():
    msgs = get_task("squad").teacher_messages(EX, [SHOT], title=True)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert "0 to 5 words" in msgs[0]["content"]
    assert msgs[1]["content"] == "Title: Ann\nContext: Ann owns a cat.\nQuestion: What pet does Ann own?\nAnswer:"
    assert msgs[2]["content"] == "a cat"
    assert msgs[3]["content"].startswith("Title: Tom toys\nContext: Tom has a red ball.")
    untitled = get_task("squad").teacher_messages(EX, [SHOT], title=False)
    assert untitled[3]["content"] == get_task("squad").student_prompt(EX)
    assert "15 words" in get_task("fairytaleqa").teacher_messages(EX, [], title=False)[0]["content"]
    with pytest.raises(DataError, match="few-shot example is the item"):
        get_task("squad").teacher_messages(EX, [EX], title=False)


# ---- shots and splits --------------------------------------------------------------------------
POOL = [Example(id=f"r{i}", context=f"c{i}", question=f"q{i}", answers=(f"a{i}",)) for i in range(100)]


def test_select_shots_deterministic_and_excludes():
    a = select_shots(POOL, 3, seed=7)
    assert a == select_shots(POOL, 3, seed=7) and len({e.id for e in a}) == 3
    assert a != select_shots(POOL, 3, seed=8)
    # excluding one shot only replaces that one; the others stay, in order
    b = select_shots(POOL, 3, seed=7, exclude=[a[1].id])
    assert a[1] not in b and [a[0], a[2]] == b[:2]
    assert select_shots(POOL, 0, seed=7) == []
    with pytest.raises(DataError, match="cannot draw"):
        select_shots(POOL[:2], 3, seed=0)


def test_split_pool_rules():
    full = split_pool(POOL, val_fraction=0.1, split_seed=42)
    train, val = full
    assert (len(train), len(val)) == (90, 10) and full.info["val_size"] == 10
    assert not {e.id for e in train} & {e.id for e in val}
    assert [int(e.id[1:]) for e in val] == sorted(int(e.id[1:]) for e in val)  # pool order kept
    assert split_pool(POOL, val_fraction=0.1, split_seed=42) == full  # deterministic
    assert split_pool(POOL, val_fraction=0.1, split_seed=43).val != val

    first = split_pool(POOL, val_fraction=0.1, split_seed=42, train_fraction=0.25)
    assert first.val == val  # the fraction never moves the hold-out
    assert first.train == train[:23] and first.info["train_size"] == 23  # ceil(0.25 * 90)

    rnd = split_pool(POOL, val_fraction=0.1, split_seed=42, train_fraction=0.25, fraction_mode="random")
    assert rnd.val == val and len(rnd.train) == 23 and rnd.train != first.train
    assert set(e.id for e in rnd.train) <= set(e.id for e in train)
    assert rnd == split_pool(POOL, val_fraction=0.1, split_seed=42, train_fraction=0.25, fraction_mode="random")

    sized = split_pool(POOL, train_size=50, val_fraction=0.2, split_seed=1)
    assert (len(sized.train), len(sized.val)) == (40, 10) and sized.info["after_train_size"] == 50
    assert all(int(e.id[1:]) < 50 for e in sized.train + sized.val)

    later = split_pool(POOL, train_start=50, train_size=40, val_fraction=0.1, split_seed=1)
    ids = [int(e.id[1:]) for e in later.train + later.val]
    assert sorted(ids) == list(range(50, 90)) and later.info["train_start"] == 50  # disjoint from the first 50


def test_training_pool_and_test_split_from_config():
    cfg = DataConfig(task="squad", dir=str(FIXTURES), val_fraction=0.25, test_size=2)
    train, val = pool = training_pool(cfg)
    assert (len(train), len(val)) == (3, 1) and pool.info["task"] == "squad" and pool.info["pool_size"] == 4
    assert [e.id for e in test_split(cfg)] == ["56be4db0acb8001400a502ec", "56be4db0acb8001400a502ed"]


# ---- bad input ---------------------------------------------------------------------------------
@pytest.fixture
def data_copy(tmp_path):
    dest = tmp_path / "data"
    shutil.copytree(FIXTURES, dest)
    return dest


def _rewrite_jsonl(path: Path, index: int, change):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    change(rows[index])
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_missing_file(data_copy):
    (data_copy / "qed" / "qed-dev.jsonlines").unlink()
    with pytest.raises(DataError, match=r"task 'qed', split 'test'.*missing file .*qed-dev.jsonlines"):
        get_task("qed").load("test", data_copy)


def test_missing_data_dir(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        get_task("qed").load("test", tmp_path / "nowhere")


def test_unknown_split():
    with pytest.raises(DataError, match="unknown split 'validation'"):
        get_task("qed").load("validation", FIXTURES)


@pytest.mark.parametrize(
    "task,file,field,change,message",
    [
        ("qed", "qed/qed-dev.jsonlines", "question_text", lambda r: r.pop("question_text"), "missing field"),
        ("qed", "qed/qed-dev.jsonlines", "question_text", lambda r: r.update(question_text="  "), "empty"),
        ("qed", "qed/qed-dev.jsonlines", "paragraph_text", lambda r: r.update(paragraph_text=""), "empty"),
        ("qed", "qed/qed-dev.jsonlines", "paragraph_text", lambda r: r.update(paragraph_text=3), "expected a string"),
        ("qed", "qed/qed-dev.jsonlines", "original_nq_answers", lambda r: r.update(original_nq_answers="x"), "non-empty list"),
        ("qed", "qed/qed-dev.jsonlines", "original_nq_answers", lambda r: r.update(original_nq_answers=[[{"start": -1, "end": -1, "string": ""}]]), "no annotated answer"),
        ("fairytaleqa", "fairytaleqa/test.jsonl", "answer1", lambda r: r.update(answer1=""), "empty"),
        ("fairytaleqa", "fairytaleqa/test.jsonl", "answer2", lambda r: r.update(answer2=["x"]), "expected a string"),
        ("fairytaleqa", "fairytaleqa/test.jsonl", "story_section", lambda r: r.pop("story_section"), "missing field"),
        ("dialogsum", "dialogsum/dialogsum.test.jsonl", "summary2", lambda r: r.update(summary2=""), "empty"),
        ("dialogsum", "dialogsum/dialogsum.test.jsonl", "dialogue", lambda r: r.update(dialogue=None), "expected a string"),
        ("dialogsum", "dialogsum/dialogsum.test.jsonl", "fname", lambda r: r.update(fname=""), "non-empty"),
    ],
)
def test_bad_row_names_task_split_row_field(data_copy, task, file, field, change, message):
    _rewrite_jsonl(data_copy / file, 1, change)
    with pytest.raises(DataError) as err:
        get_task(task).load("test", data_copy)
    e = err.value
    assert (e.task, e.split) == (task, "test") and e.field.startswith(field.split("[")[0])
    assert ":2" in e.row  # the second line of the file
    assert message in str(e) and f"task '{task}'" in str(e) and "row '" in str(e)
    # the lenient path used by `uld data summary` counts the row and keeps the rest
    rows, problems = get_task(task).load_report("test", data_copy)
    assert len(problems) == 1 and len(rows) == len(get_task(task).load("test", FIXTURES)) - 1


def test_duplicate_ids(data_copy):
    path = data_copy / "dialogsum" / "dialogsum.train.jsonl"
    _rewrite_jsonl(path, 2, lambda r: r.update(fname="train_0"))
    with pytest.raises(DataError, match=r"split 'train', row 'dialogsum.train.jsonl:3 \(fname=train_0\)', field 'id'.*duplicate id 'train_0'"):
        get_task("dialogsum").load("train", data_copy)


def test_fairytaleqa_identical_repeat_is_a_duplicate(data_copy):
    path = data_copy / "fairytaleqa" / "test.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[0]]) + "\n")
    with pytest.raises(DataError, match="duplicate id"):
        get_task("fairytaleqa").load("test", data_copy)


def test_invalid_json_line(data_copy):
    path = data_copy / "qed" / "qed-dev.jsonlines"
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(DataError, match=r"row 'qed-dev.jsonlines:4'.*not valid JSON"):
        get_task("qed").load("test", data_copy)


def test_squad_bad_structure_and_fields(data_copy):
    path = data_copy / "squad" / "dev-v1.1.json"
    doc = json.loads(path.read_text())
    doc["data"][0]["paragraphs"][0]["qas"][1]["answers"] = [{"text": ""}]
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"split 'test', row 'data\[0\].paragraphs\[0\].qas\[1\] \(id=56be4db0acb8001400a502ed\)', field 'answers\[0\]': empty answer"):
        get_task("squad").load("test", data_copy)
    doc["data"][0]["paragraphs"][0]["qas"][1]["answers"] = "Carolina"
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="field 'answers': expected a list"):
        get_task("squad").load("test", data_copy)
    path.write_text(json.dumps({"version": "1.1"}))
    with pytest.raises(DataError, match="'data' list"):
        get_task("squad").load("test", data_copy)
    path.write_text("{")
    with pytest.raises(DataError, match="invalid JSON"):
        get_task("squad").load("test", data_copy)


def test_pubmedqa_bad_inputs(data_copy):
    gt = data_copy / "pubmedqa" / "test_ground_truth.json"
    gt.write_text(json.dumps({"999": "yes", **json.loads(gt.read_text())}))
    with pytest.raises(DataError, match="test ids are not in ori_pqal.json"):
        get_task("pubmedqa").load("test", data_copy)
    gt.write_text(json.dumps({"21645374": "yes"}))
    items_path = data_copy / "pubmedqa" / "ori_pqal.json"
    items = json.loads(items_path.read_text())
    items["21645374"]["LONG_ANSWER"] = ""
    items["16418930"]["CONTEXTS"] = "text"
    items_path.write_text(json.dumps(items))
    with pytest.raises(DataError, match=r"row 'pubid=21645374', field 'LONG_ANSWER': empty"):
        get_task("pubmedqa").load("test", data_copy)
    with pytest.raises(DataError, match=r"row 'pubid=16418930', field 'CONTEXTS'"):
        get_task("pubmedqa").load("train", data_copy)


def test_cache_sees_file_changes(data_copy):
    task = get_task("dialogsum")
    assert len(task.load("test", data_copy)) == 2
    path = data_copy / "dialogsum" / "dialogsum.test.jsonl"
    path.write_text(path.read_text().splitlines()[0] + "\n")
    assert len(task.load("test", data_copy)) == 1

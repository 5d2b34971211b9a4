"""Seeded random samples of the training pool and of the evaluated split (data.pool_order / test_order):
seeded, disjoint where a study needs it, spread across articles; the defaults keep the first rows."""

from __future__ import annotations

import pytest

from uld.config import ConfigError, DataConfig, load_config
from uld.data import Example, articles, sample_articles, shuffled_order, split_pool, test_split


def _pool(n: int = 600, per_article: int = 50) -> list[Example]:
    # rows grouped by article in file order, as SQuAD's files are
    return [Example(id=f"q{i}", context=f"c{i // 5}", question=f"q{i}?", answers=(f"a{i}",), title=f"art{i // per_article}")
            for i in range(n)]


def _ids(rows) -> list[str]:
    return [ex.id for ex in rows]


def test_file_order_is_the_default_and_keeps_the_first_rows():
    pool = _pool()
    default = split_pool(pool, train_size=100)
    explicit = split_pool(pool, train_size=100, pool_order="file", sample_seed=7)
    assert _ids(default.train) == _ids(explicit.train) and _ids(default.val) == _ids(explicit.val)
    assert set(_ids(default.train) + _ids(default.val)) == {f"q{i}" for i in range(100)}
    assert "pool_order" not in default.info


def test_shuffled_pool_is_seeded_and_spread():
    pool = _pool()
    a = split_pool(pool, train_size=100, pool_order="shuffled", sample_seed=1)
    b = split_pool(pool, train_size=100, pool_order="shuffled", sample_seed=1)
    c = split_pool(pool, train_size=100, pool_order="shuffled", sample_seed=2)
    assert _ids(a.train) == _ids(b.train) and _ids(a.val) == _ids(b.val)
    assert set(_ids(a.train)) != set(_ids(c.train))
    # the first 100 rows would come from 2 articles; a random 100 of 600 from nearly all 12
    assert len(articles(a.train + a.val)) >= 10
    assert a.info["pool_order"] == "shuffled" and a.info["sample_seed"] == 1


def test_teacher_student_and_validation_slices_of_one_permutation_are_disjoint():
    pool = _pool()
    teacher = split_pool(pool, train_start=0, train_size=400, pool_order="shuffled", sample_seed=3)
    student = split_pool(pool, train_start=400, train_size=150, pool_order="shuffled", sample_seed=3)
    t_all = set(_ids(teacher.train)) | set(_ids(teacher.val))
    s_train, s_val = set(_ids(student.train)), set(_ids(student.val))
    assert len(t_all) == 400 and len(s_train) + len(s_val) == 150
    assert not t_all & (s_train | s_val)
    assert not s_train & s_val and not set(_ids(teacher.train)) & set(_ids(teacher.val))
    assert len(s_val) == 15


def test_shuffled_order_streams_are_independent():
    assert shuffled_order(50, 0, "pool") == shuffled_order(50, 0, "pool")
    assert shuffled_order(50, 0, "pool") != shuffled_order(50, 0, "test")
    assert sorted(shuffled_order(50, 0, "test")) == list(range(50))


def test_shuffled_test_split_needs_a_size():
    with pytest.raises(ConfigError, match="data.test_order"):
        load_config(None, ["data.test_order=shuffled"])


def test_new_fields_at_their_defaults_keep_the_committed_slices():
    cfg = DataConfig()
    assert (cfg.pool_order, cfg.test_order, cfg.sample_seed) == ("file", "file", 0)


def test_2000_sampled_dev_questions_cover_40_of_48_articles(shared_data_dir):
    cfg = DataConfig(task="squad", dir=str(shared_data_dir), test_size=2000, test_order="shuffled", sample_seed=0)
    rows = test_split(cfg)
    assert len(rows) == 2000 and len({ex.id for ex in rows}) == 2000
    assert _ids(rows) == _ids(test_split(cfg))  # seeded
    every = test_split(DataConfig(task="squad", dir=str(shared_data_dir)))
    position = {ex.id: i for i, ex in enumerate(every)}
    assert [position[ex.id] for ex in rows] == sorted(position[ex.id] for ex in rows)  # file order kept
    assert len(articles(every)) == 48
    assert len(articles(rows)) >= 40
    first = test_split(DataConfig(task="squad", dir=str(shared_data_dir), test_size=2000))
    assert len(articles(first)) < 40  # the first rows are what the sample replaces


def test_sample_articles_of_a_config(shared_data_dir):
    cfg = DataConfig(task="squad", dir=str(shared_data_dir), train_size=200, test_size=500)
    found = sample_articles(cfg)
    assert list(found["train"]) == ["University_of_Notre_Dame"] and list(found["test"]) == ["Super_Bowl_50"]
    assert sum(found["train"].values()) == 180 and sum(found["val"].values()) == 20


def test_model_card_names_the_permutation_of_a_shuffled_pool():
    from uld.config import expand_grid
    from uld.model_card import model_card

    shuffled = load_config(None, ["data.pool_order=shuffled", "data.sample_seed=9", "data.train_size=10",
                                  "training.method=sft-gold"])
    first = load_config(None, ["data.train_size=10", "training.method=sft-gold"])
    assert "training rows 0–10 of the pool shuffled with seed 9" in model_card(expand_grid(shuffled)[0], "r")
    card = model_card(expand_grid(first)[0], "r")
    assert "training rows 0–10 |" in card and "shuffled" not in card

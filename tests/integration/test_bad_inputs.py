"""Bad input through the real command line: a one-line error that names the culprit, and no record changed.

Each case breaks one thing (a config key, a data file, a model folder, the teacher store, a training
state, an evaluation argument, a record of the results store, the disk) in a fresh copy of a small
complete store, runs ``uld ...`` (in process, through ``uld.cli.main``), and checks three things: the
exit status is 2 (a user error, not a traceback), the one-line message matches what names the culprit
(file, field, row or holder), and every file of the store is byte for byte what it was before the
command ran.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest

from uld.cli import main

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "experiments" / "smoke.yaml"
SHARED_DATA = REPO.parent / "shared" / "data"
DATA = SHARED_DATA if (SHARED_DATA / "squad").is_dir() else REPO / "tests" / "fixtures" / "data"


def _tiny(models: dict, store: Path) -> list[str]:
    return [
        f"teacher.path={models['teacher']}", f"student.path={models['student']}", f"data.dir={DATA}", f"output_dir={store}",
        "training.method=uld", "data.train_size=12", "data.test_size=4", "data.max_length=256", "generation.max_new_tokens=6",
        "generation.batch_size=4", "generation.top_k_signal=16", "training.batch_size=4", "training.max_steps=2",
        "training.optim.lr=1e-3", "evaluation.max_new_tokens=6", "evaluation.batch_size=4",
        "training.checkpoints.keep_state=true",
    ]


def _reset() -> None:
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture(scope="module")
def base(tiny_models, tmp_path_factory):
    """A complete store: one teacher stage and one finished ULD run that kept its resumable state."""
    store = tmp_path_factory.mktemp("base-store")
    _reset()
    assert main(["run", str(SMOKE), *_tiny(tiny_models, store)]) == 0
    _reset()
    return store


@dataclass
class Ctx:
    store: Path  # a fresh copy of the base store
    models: dict
    tmp: Path

    @property
    def run(self) -> Path:
        return next((self.store / "runs").glob("smoke-*"))

    @property
    def stage(self) -> Path:
        return next(p for p in (self.store / "teacher").iterdir() if not p.name.startswith("."))

    def overrides(self) -> list[str]:
        return _tiny(self.models, self.store)

    def yaml(self, text: str, name: str = "bad.yaml") -> str:
        path = self.tmp / name
        path.write_text(textwrap.dedent(text))
        return str(path)


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.endswith(".lock"):
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# --------------------------------------------------------------------------------------------------
# The cases: (id, setup -> argv, message pattern)
# --------------------------------------------------------------------------------------------------

Case = tuple[str, Callable[[Ctx], list[str]], str]


def _config_cases() -> list[Case]:
    def cfg(text: str):
        return lambda c: ["config", c.yaml(text)]

    def over(*items: str):
        return lambda c: ["config", str(SMOKE), *items]

    return [
        ("config-unknown-key", cfg("training:\n  lrr: 0.1\n"), r"'training\.lrr' in .*bad\.yaml"),
        ("config-wrong-type", cfg("training:\n  batch_size: eight\n"), r"'training\.batch_size' in .*bad\.yaml.*integer"),
        ("config-bad-method", cfg("training:\n  method: magic\n"), r"'training\.method'.*magic"),
        ("config-base-cycle", cfg("base: bad.yaml\nname: x\n"), r"bad\.yaml: its 'base:' chain comes back to itself"),
        ("config-base-missing", cfg("base: nowhere.yaml\n"), r"config file not found: .*nowhere\.yaml \(the base of"),
        ("config-yaml-syntax", cfg("training: [\n"), r"bad\.yaml: invalid YAML"),
        ("config-top-level-list", cfg("- a\n- b\n"), r"bad\.yaml: the top level must be a mapping"),
        ("config-not-utf8", lambda c: ["config", _bytes(c.tmp / "bin.yaml", b"name: \xff\xfe\n")], r"bin\.yaml: not UTF-8"),
        ("config-nan-lr", over("training.optim.lr=.nan"), r"'training\.optim\.lr'.*finite"),
        ("config-inf-epochs", over("training.epochs=.inf"), r"'training\.epochs'.*finite"),
        ("config-negative-max-new-tokens", over("generation.max_new_tokens=-3"), r"'generation\.max_new_tokens'.*> 0"),
        ("config-negative-eval-tokens", over("evaluation.max_new_tokens=0"), r"'evaluation\.max_new_tokens'.*> 0"),
        ("config-warmup-negative", over("training.optim.warmup_ratio=-3"), r"'training\.optim\.warmup_ratio'.*\[0, 1\)"),
        ("config-warmup-above-one", over("training.optim.warmup_ratio=1.5"), r"'training\.optim\.warmup_ratio'"),
        ("config-train-fraction-zero", over("data.train_fraction=0"), r"'data\.train_fraction'.*\(0, 1\]"),
        ("config-val-fraction-one", over("data.val_fraction=1"), r"'data\.val_fraction'"),
        ("config-unknown-task", over("data.task=bogus"), r"'data\.task'.*bogus.*squad"),
        ("config-unknown-metric", over("evaluation.metrics=[f1,bogus]"), r"'evaluation\.metrics'.*bogus"),
        ("config-grid-not-a-field", over("grid={training.nope: [1]}"), r"grid key 'training\.nope'"),
        ("config-grid-not-a-list", over("grid={training.lam: 3}"), r"'grid\.training\.lam'|grid key 'training\.lam'"),
        ("config-override-without-equals", over("training.lam"), r"override 'training\.lam' must look like"),
        ("config-override-unknown", over("training.nope=1"), r"unknown key 'training\.nope'"),
        ("config-kd-kl-temperatures", over("training.method=kd-kl", "training.distill.teacher_temperature=2"),
         r"'training\.distill\.teacher_temperature'.*kd-kl uses one temperature"),
        ("config-cached-temperature", over("training.distill.teacher_temperature=0.5"),
         r"'training\.distill\.teacher_temperature'.*generation\.signal_temperature"),
        ("config-cached-top-k", over("training.distill.top_k=999"), r"'training\.distill\.top_k'.*top_k_signal=64"),
        ("config-embedding-without-model", over("training.method=uld-ot", "training.ot.cost=embedding"),
         r"'training\.ot\.embedding_model'"),
        ("config-batch-zero", over("training.batch_size=0"), r"'training\.batch_size'.*> 0"),
        ("config-grad-accum-negative", over("training.grad_accum=-1"), r"'training\.grad_accum'"),
        ("config-lambda-negative", over("training.lam=-1"), r"'training\.lam'.*>= 0"),
        ("config-train-start-negative", over("data.train_start=-5"), r"'data\.train_start'.*>= 0"),
        ("config-teacher-shots-negative", over("data.teacher_shots=-1"), r"'data\.teacher_shots'"),
        ("config-max-length-zero", over("data.max_length=0"), r"'data\.max_length'"),
        ("config-retired-value", cfg("generation:\n  do_sample: true\n"), r"'generation\.do_sample' in .*bad\.yaml was removed"),
        ("config-renamed-twice", cfg("training:\n  lr: 1.0e-5\n  optim:\n    lr: 2.0e-5\n"), r"'training\.lr'.*renamed to 'training\.optim\.lr'"),
        ("config-missing-file", lambda c: ["config", str(c.tmp / "none.yaml")], r"config file not found: .*none\.yaml"),
    ]


def _bytes(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _data_dir(c: Ctx) -> Path:
    d = c.tmp / "data"
    if not d.exists():
        shutil.copytree(REPO / "tests" / "fixtures" / "data", d)
    return d


def _squad_edit(c: Ctx, edit: Callable[[dict], None]) -> str:
    d = _data_dir(c)
    path = d / "squad" / "dev-v1.1.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    return str(d)


def _data_cases() -> list[Case]:
    def summary(setup):
        return lambda c: ["data", "summary", "squad", "--data-dir", setup(c)]

    def drop_answers(doc):
        del doc["data"][0]["paragraphs"][0]["qas"][0]["answers"]

    return [
        ("data-not-utf8", summary(lambda c: (_bytes(_data_dir(c) / "squad" / "dev-v1.1.json", b'{"data": "\xff"}'), str(_data_dir(c)))[1]),
         r"dev-v1\.1\.json: not UTF-8"),
        ("data-bad-json", summary(lambda c: (_bytes(_data_dir(c) / "squad" / "dev-v1.1.json", b'{"data": [}'), str(_data_dir(c)))[1]),
         r"dev-v1\.1\.json: invalid JSON"),
        ("data-missing-dir", lambda c: ["data", "summary", "squad", "--data-dir", str(c.tmp / "nope")], r"nope"),
        ("data-no-articles", summary(lambda c: _squad_edit(c, lambda d: d.update(data=7))), r"'data' list of articles"),
        ("data-row-without-answers", lambda c: ["evaluate", "--checkpoint", str(c.run / "checkpoints" / "best"), "--task", "squad",
                                                "--data-dir", _squad_edit(c, drop_answers), "--out", str(c.tmp / "o")],
         r"row 'data\[0\]\.paragraphs\[0\]\.qas\[0\].*field 'answers'"),
        ("data-unknown-task", lambda c: ["data", "summary", "bogus"], r"unknown task 'bogus'"),
    ]


def _break_weights(c: Ctx, drop: int = 3) -> str:
    from safetensors.torch import load_file, save_file

    folder = c.tmp / "ckpt"
    shutil.copytree(c.run / "checkpoints" / "best", folder)
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in list(weights.items())[drop:]}, folder / "model.safetensors")
    return str(folder)


def _model_cases() -> list[Case]:
    def evaluate(setup):
        return lambda c: ["evaluate", "--checkpoint", setup(c), "--task", "squad", "--data-dir", str(DATA), "--test-size", "2",
                          "--out", str(c.tmp / "eval-out")]

    def corrupt(c: Ctx) -> str:
        folder = Path(_break_weights(c, drop=0))
        (folder / "model.safetensors").write_bytes(b"\x00\x01 not a safetensors file")
        return str(folder)

    return [
        ("model-missing-tensors", evaluate(_break_weights), r"ckpt: weights do not match the model: 3 missing tensor"),
        ("model-corrupt-safetensors", evaluate(corrupt), r"ckpt: the weights do not load"),
        ("model-checkpoint-is-a-file", evaluate(lambda c: _bytes(c.tmp / "x.bin", b"0")), r"x\.bin is a file"),
        ("model-path-not-a-folder", lambda c: ["train", str(SMOKE), *c.overrides(), f"student.path={c.tmp / 'missing'}", "--force"],
         r"model path .*missing.* is not a folder"),
    ]


def _stage_file(c: Ctx, *parts: str) -> Path:
    return c.stage.joinpath(*parts)


def _retrain(c: Ctx) -> list[str]:
    """Train the run again from its (damaged) teacher stage: uld train --force."""
    return ["train", str(SMOKE), *c.overrides(), "--force"]


def _teacher_cases() -> list[Case]:
    def shift_index(c: Ctx) -> list[str]:
        path = _stage_file(c, "signal", "index.parquet")
        idx = pd.read_parquet(path)
        idx["offset"] = idx["offset"] + 1
        idx.to_parquet(path, index=False)
        return _retrain(c)

    def swap_rows(c: Ctx) -> list[str]:
        path = _stage_file(c, "signal", "index.parquet")
        idx = pd.read_parquet(path)
        same = idx.groupby("length").head(2)
        groups = same.groupby("length").filter(lambda g: len(g) == 2)
        a, b = groups.index[:2]
        idx.loc[[a, b], "row_id"] = idx.loc[[b, a], "row_id"].to_numpy()
        idx.to_parquet(path, index=False)
        return _retrain(c)

    def narrow(c: Ctx) -> list[str]:
        sig = _stage_file(c, "signal")
        np.save(sig / "probs.npy", np.load(sig / "probs.npy")[:, :8].copy())
        meta = json.loads((sig / "meta.json").read_text())
        (sig / "meta.json").write_text(json.dumps({**meta, "k": 8}))
        return _retrain(c)

    def lengths(c: Ctx) -> list[str]:
        path = _stage_file(c, "answers.parquet")
        df = pd.read_parquet(path)
        df.loc[0, "n_answer_tokens"] = int(df.loc[0, "n_answer_tokens"]) + 2
        df.to_parquet(path, index=False)
        return _retrain(c)

    def temperature(c: Ctx) -> list[str]:
        path = _stage_file(c, "signal", "meta.json")
        path.write_text(json.dumps({**json.loads(path.read_text()), "temperature": 0.5}))
        return _retrain(c)

    def version(c: Ctx) -> list[str]:
        path = _stage_file(c, "signal", "meta.json")
        path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": 99}))
        return _retrain(c)

    def corrupt_answers(c: Ctx) -> list[str]:
        _stage_file(c, "answers.parquet").write_bytes(b"PAR1 broken")
        return _retrain(c)

    def answers_column(c: Ctx) -> list[str]:
        path = _stage_file(c, "answers.parquet")
        pd.read_parquet(path).drop(columns=["teacher_prompt"]).to_parquet(path, index=False)
        return _retrain(c)

    def corrupt_probs(c: Ctx) -> list[str]:
        _stage_file(c, "signal", "probs.npy").write_bytes(b"\x93NUMPY broken")
        return _retrain(c)

    def corrupt_chunk(c: Ctx) -> list[str]:
        (_stage_file(c, ".done")).unlink()
        (_stage_file(c, "chunks", "chunk-00000.parquet")).write_bytes(b"PAR1 broken")
        return ["generate", str(SMOKE), *c.overrides()]

    def plan_changed(c: Ctx) -> list[str]:
        (_stage_file(c, ".done")).unlink()
        return ["generate", str(SMOKE), *c.overrides(), "generation.chunk_size=5"]

    def locked(c: Ctx) -> list[str]:
        from uld.store import RunFolder

        c.hold = RunFolder(c.stage).lock()  # another holder: released by the test after the command
        c.hold.__enter__()
        (_stage_file(c, ".done")).unlink()
        return ["generate", str(SMOKE), *c.overrides()]

    return [
        ("teacher-index-shifted", shift_index, r"index\.parquet: row .* starts at 1, expected 0"),
        ("teacher-index-rows-swapped", swap_rows, r"signal of row .* does not match its checksum"),
        ("teacher-signal-too-narrow", narrow, r"probs\.npy: the cached signal keeps the top 8 .*generation\.top_k_signal=16"),
        ("teacher-signal-lengths", lengths, r"row .* has \d+ cached positions but .*answers\.parquet says n_answer_tokens"),
        ("teacher-signal-temperature", temperature, r"signal was cached at temperature 0\.5, the config asks for 1\.0"),
        ("teacher-signal-version", version, r"signal/meta\.json: teacher-signal format_version 99 is not one this uld reads"),
        ("teacher-answers-corrupt", corrupt_answers, r"answers\.parquet: unreadable parquet file"),
        ("teacher-answers-column", answers_column, r"answers\.parquet: missing column\(s\) \['teacher_prompt'\]"),
        ("teacher-probs-corrupt", corrupt_probs, r"probs\.npy: unreadable \.npy file"),
        ("teacher-chunk-corrupt", corrupt_chunk, r"chunk file .*chunk-00000\.parquet is unreadable"),
        ("teacher-plan-changed", plan_changed, r"holds chunks made with a different plan \(chunk_size"),
        ("teacher-stage-locked", locked, r"teacher/.* is being computed by pid \d+"),
    ]


def _state_cases() -> list[Case]:
    def unfinish(c: Ctx) -> None:
        """Turn the finished run back into one interrupted after its last checkpoint."""
        state = c.run / "checkpoints" / "state"
        manifest = json.loads((state / "trainer.json").read_text())
        manifest.update(finished=False, summary=None)
        manifest["position"]["finished"] = False
        (state / "trainer.json").write_text(json.dumps(manifest))
        for name in ("train_summary.json", "scores.json"):
            (c.run / name).unlink()

    def pickle(c: Ctx) -> list[str]:
        import pickle as pkl

        unfinish(c)
        marker = c.tmp / "pwned"

        class Evil:
            def __reduce__(self):
                return (Path.write_text, (marker, "code ran"))

        (c.run / "checkpoints" / "state" / "optimizer.bin").write_bytes(pkl.dumps(Evil()))
        c.marker = marker
        return ["run", str(SMOKE), *c.overrides()]

    def altered(c: Ctx) -> list[str]:
        unfinish(c)
        path = c.run / "checkpoints" / "state" / "scheduler.json"
        path.write_text(path.read_text().replace("0", "1", 1))
        return ["run", str(SMOKE), *c.overrides()]

    def foreign(c: Ctx) -> list[str]:
        unfinish(c)
        path = c.run / "checkpoints" / "state" / "trainer.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "format": "accelerate"}))
        return ["run", str(SMOKE), *c.overrides()]

    def locked(c: Ctx) -> list[str]:
        from uld.store import RunFolder

        (c.run / "scores.json").unlink()
        c.hold = RunFolder(c.run).lock()
        c.hold.__enter__()
        return ["run", str(SMOKE), *c.overrides()]

    def torn_metrics(c: Ctx) -> list[str]:
        unfinish(c)
        path = c.run / "metrics.jsonl"
        lines = path.read_text().splitlines()
        path.write_text("\n".join(lines[:1] + ["{not json"] + lines[1:]) + "\n")
        return ["run", str(SMOKE), *c.overrides()]

    return [
        ("state-planted-pickle", pickle, r"optimizer\.bin: not written by this training run"),
        ("state-altered-file", altered, r"scheduler\.json was altered after it was saved"),
        ("state-foreign-format", foreign, r"trainer\.json: not a training state this code wrote"),
        ("state-run-locked", locked, r"runs/smoke-\w+ is being computed by pid \d+"),
        ("state-corrupt-metrics-line", torn_metrics, r"metrics\.jsonl:2: invalid JSON line"),
    ]


def _evaluation_cases() -> list[Case]:
    def ev(*extra: str):
        return lambda c: ["evaluate", "--checkpoint", str(c.run / "checkpoints" / "best"), "--task", "squad",
                          "--data-dir", str(DATA), *extra]

    def rescore(data: bytes):
        return lambda c: ["evaluate", "--rescore", _bytes(c.tmp / "p.jsonl", data), "--task", "squad"]

    return [
        ("eval-test-size-negative", ev("--test-size", "-1", "--out", "x"), r"--test-size must be a positive number of items, got -1"),
        ("eval-test-size-zero", ev("--test-size", "0", "--out", "x"), r"--test-size must be a positive"),
        ("eval-unknown-task", lambda c: ["evaluate", "--rescore", "x.jsonl", "--task", "bogus"], r"unknown task 'bogus'"),
        ("eval-out-is-a-run", lambda c: ev("--test-size", "2", "--out", str(c.run))(c), r"--out .*smoke-\w+ is a run folder"),
        ("eval-out-has-scores", lambda c: ev("--test-size", "2", "--out", str(_scored(c)))(c), r"scores\.json exists; pass --force"),
        ("eval-rescore-not-utf8", rescore(b'{"prediction": "\xff"}\n'), r"p\.jsonl: not UTF-8"),
        ("eval-rescore-bad-line", rescore(b'{"prediction": "a", "references": ["a"]}\n{oops\n'), r"p\.jsonl:2: invalid JSON"),
        ("eval-rescore-bad-field", rescore(b'{"prediction": 3, "references": ["a"]}\n'), r"p\.jsonl:1: prediction must be a str"),
        ("eval-rescore-missing", lambda c: ["evaluate", "--rescore", str(c.tmp / "none.jsonl")], r"none\.jsonl"),
        ("eval-config-without-run", lambda c: ["evaluate", str(SMOKE), *c.overrides(), "training.lam=0.7"], r"no run folder .*: train it first"),
    ]


def _scored(c: Ctx) -> Path:
    out = c.tmp / "scored"
    out.mkdir()
    (out / "scores.json").write_text("{}")
    return out


def _table_store(c: Ctx) -> Path:
    """The committed micro store's H100 runs, copied (one table's worth of real records)."""
    store = c.tmp / "micro-store"
    shutil.copytree(REPO / "results" / "micro_h100", store)
    return store


def _results_cases() -> list[Case]:
    def table(mutate):
        def setup(c: Ctx) -> list[str]:
            store = _table_store(c)
            mutate(next((store / "runs").iterdir()))
            return ["table", "micro", "--report-only", "--store", str(store), "--out", str(c.tmp / "tables")]

        return setup

    def bad_scores(run: Path) -> None:
        (run / "scores.json").write_text("{ broken")

    def text_metric(run: Path) -> None:
        data = json.loads((run / "scores.json").read_text())
        data["metrics"]["f1"] = "high"
        (run / "scores.json").write_text(json.dumps(data))

    def no_config(run: Path) -> None:
        (run / "config.yaml").unlink()

    def other_config(run: Path) -> None:
        text = (run / "config.yaml").read_text().replace("seed: 1", "seed: 77").replace("seed: 2", "seed: 77").replace("seed: 3", "seed: 77")
        (run / "config.yaml").write_text(text)

    def wrong_task(run: Path) -> None:
        data = json.loads((run / "scores.json").read_text())
        data["task"] = "qed"
        (run / "scores.json").write_text(json.dumps(data))

    def bad_predictions(run: Path) -> None:
        (run / "eval" / "predictions.jsonl").write_bytes(b"\xff\xfe")

    def bad_yaml(run: Path) -> None:
        (run / "config.yaml").write_text("name: [unclosed\n")

    return [
        ("results-corrupt-scores", table(bad_scores), r"scores\.json: invalid JSON \(line 1"),
        ("results-metric-not-a-number", table(text_metric), r"scores\.json: metric 'f1' must be a number"),
        ("results-scores-without-config", table(no_config), r"has scores\.json but no config\.yaml"),
        ("results-config-of-another-run", table(other_config), r"config\.yaml: this config's run id is .*, not the folder's"),
        ("results-task-mismatch", table(wrong_task), r"scores\.json: scores task 'qed' but the run's config says 'squad'"),
        ("results-predictions-not-utf8", table(bad_predictions), r"predictions\.jsonl: not UTF-8"),
        ("results-config-bad-yaml", table(bad_yaml), r"config\.yaml: invalid YAML"),
        ("results-unknown-table", lambda c: ["table", "nope", "--report-only"], r"unknown table 'nope'"),
    ]


def _disk_cases() -> list[Case]:
    def refuse(err: int, match: str):
        """Every write whose path matches fails as a read-only store or a full disk would."""

        def setup(c: Ctx) -> list[str]:
            c.refuse = (err, match)
            (c.run / "scores.json").unlink()  # evaluation has to write again
            return ["run", str(SMOKE), *c.overrides()]

        return setup

    def full_at_the_end(c: Ctx) -> list[str]:
        argv = refuse(errno.ENOSPC, "predictions.jsonl")(c)
        # the answers journaled before the disk filled stay, so the rerun does not answer them again
        c.expected_changes = {f"runs/{c.run.name}/eval/partial.0.jsonl"}
        return argv

    return [
        ("disk-read-only", refuse(errno.EROFS, ""), r"cannot write .*: the store is read-only; the previous version .* is unchanged"),
        ("disk-full-during-evaluation", full_at_the_end, r"cannot write .*predictions\.jsonl: the disk is full"),
        ("disk-full-on-log-append", lambda c: _append_full(c), r"cannot write .*metrics\.jsonl: the disk is full"),
    ]


def _append_full(c: Ctx) -> list[str]:
    c.refuse = (errno.ENOSPC, "metrics.jsonl")
    return ["train", str(SMOKE), *c.overrides(), "--force"]


def _name_cases() -> list[Case]:
    """Run names that would hide the run folder from the store's readers or put it elsewhere."""

    def run(*items: str):
        return lambda c: ["run", str(SMOKE), *c.overrides(), *items]

    def cfg(text: str):
        return lambda c: ["config", c.yaml(text)]

    return [
        ("name-leading-dot", run("name=.hidden"), r"'name' in the command line: must not start with '\.'.*'\.hidden'"),
        ("name-parent-dir", run("name=../x"), r"'name' in the command line: must not hold a path separator or '\.\.'.*'\.\./x'"),
        ("name-slash", run("name=a/b"), r"'name' in the command line: .*path separator.*'a/b'"),
        ("name-backslash", run("name=a\\b"), r"'name' in the command line: .*path separator"),
        ("name-empty", run("name=''"), r"'name' in the command line: must be a non-empty name"),
        ("name-in-yaml", cfg("name: .secret\n"), r"'name' in .*bad\.yaml: must not start with '\.'"),
        ("name-newline", cfg('name: "a\\nb"\n'), r"'name' in .*bad\.yaml: must be one line"),
        ("name-in-grid", lambda c: ["config", str(SMOKE), "grid={name: [ok, ../up]}"], r"'name' in grid point .*'\.\./up'"),
    ]


def _cli_cases() -> list[Case]:
    """Command-line options and overrides: the error names the command line, not the YAML file."""

    def over(*items: str):
        return lambda c: ["config", str(SMOKE), *items]

    def rescore(*extra: str):
        return lambda c: ["evaluate", "--rescore", _bytes(c.tmp / "p.jsonl", b'{"prediction": "a", "references": ["a"]}\n'),
                          "--task", "squad", *extra]

    big = "grid={training.lam: [0,1,2,3,4,5,6,7,8,9], training.seed: [1,2,3,4,5,6,7,8,9,10], data.test_size: [1,2,3,4,5,6,7,8,9,10,11]}"
    return [
        ("cli-unknown-stage", lambda c: ["run", str(SMOKE), *c.overrides(), "--stages", "teacher,bogus"],
         r"--stages 'teacher,bogus' in the command line: unknown value\(s\) 'bogus' \(choose from teacher, train, evaluate\)"),
        ("cli-empty-stages", lambda c: ["run", str(SMOKE), *c.overrides(), "--stages", ","], r"--stages ',' in the command line: no value"),
        ("cli-unknown-metric", rescore("--metrics", "f1,bleu"), r"--metrics 'f1,bleu' in the command line: unknown value\(s\) 'bleu'"),
        ("cli-unknown-metric-checkpoint", lambda c: ["evaluate", "--checkpoint", str(c.run / "checkpoints" / "best"), "--task",
                                                     "squad", "--metrics", "blue", "--out", str(c.tmp / "o")], r"--metrics 'blue'"),
        ("cli-override-range", over("training.lam=-1"), r"'training\.lam' in the command line: must be >= 0"),
        ("cli-override-finite", over("training.optim.lr=.nan"), r"'training\.optim\.lr' in the command line: .*finite"),
        ("cli-override-method-check", over("training.distill.teacher_temperature=0.5"),
         r"'training\.distill\.teacher_temperature' in the command line"),
        ("cli-override-metric", over("evaluation.metrics=[bleu]"), r"'evaluation\.metrics' in the command line: unknown metric"),
        ("cli-yaml-still-named", cfg_file_value(), r"'training\.lam' in .*lam\.yaml: must be >= 0"),
        ("cli-grid-too-large", over(big), r"'grid' in the command line: 1100 points .* exceed the limit of 1000; pass --large-grid"),
    ]


def cfg_file_value():
    """A bad value that comes from the file (while another key is overridden) is still the file's."""
    return lambda c: ["config", c.yaml("base: %s\ntraining:\n  lam: -2\n" % SMOKE, "lam.yaml"), "training.seed=3"]


def _duplicate_cases() -> list[Case]:
    """Item ids given twice would be counted twice in every corpus metric."""

    def rescore(data: bytes):
        return lambda c: ["evaluate", "--rescore", _bytes(c.tmp / "p.jsonl", data), "--task", "squad"]

    ours = b"".join(b'{"id": "%s", "prediction": "a", "references": ["a"]}\n' % i for i in (b"q1", b"q2", b"q3", b"q2"))
    authors = b"".join(b'{"id": "%s", "prediction_text": "a", "answers": {"text": ["a"]}}\n' % i for i in (b"x", b"x"))

    return [
        ("dup-rescore-ours", rescore(ours), r"p\.jsonl:4: item id 'q2' repeats line 2"),
        ("dup-rescore-authors", rescore(authors), r"p\.jsonl:2: item id 'x' repeats line 1"),
        ("dup-test-split-id", lambda c: ["evaluate", "--checkpoint", str(c.run / "checkpoints" / "best"), "--task", "squad",
                                         "--data-dir", _squad_edit(c, _repeat_question), "--out", str(c.tmp / "o")],
         r"duplicate id"),
    ]


def _repeat_question(doc: dict) -> None:
    qas = doc["data"][0]["paragraphs"][0]["qas"]
    qas.append(dict(qas[0]))


def _strip_tokenizer(c: Ctx, which: str) -> Path:
    folder = c.tmp / f"{which}-no-tokenizer"
    shutil.copytree(c.models[which], folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt",
                 "special_tokens_map.json", "chat_template.jinja", "merges.txt"):
        (folder / name).unlink(missing_ok=True)
    return folder


def _checkpoint_copy(c: Ctx, config_json: bytes) -> str:
    folder = c.tmp / "ckpt-config"
    shutil.copytree(c.run / "checkpoints" / "best", folder)
    (folder / "config.json").write_bytes(config_json)
    return str(folder)


def _model_file_cases() -> list[Case]:
    def evaluate(setup):
        return lambda c: ["evaluate", "--checkpoint", setup(c), "--task", "squad", "--data-dir", str(DATA), "--test-size", "2",
                          "--out", str(c.tmp / "eval-out")]

    return [
        ("modelfile-student-without-tokenizer",
         lambda c: ["train", str(SMOKE), *c.overrides(), f"student.path={_strip_tokenizer(c, 'student')}", "--force"],
         r"student-no-tokenizer: no tokenizer files \(tokenizer\.json"),
        ("modelfile-teacher-without-tokenizer",  # a forced stage is built in teacher/.<id>.regen: none may be left
         lambda c: ["generate", str(SMOKE), *c.overrides(), f"teacher.path={_strip_tokenizer(c, 'teacher')}", "--force"],
         r"teacher-no-tokenizer: no tokenizer files"),
        ("modelfile-config-json-corrupt", evaluate(lambda c: _checkpoint_copy(c, b'{"model_type": "gpt_neox",')),
         r"ckpt-config/config\.json: not a model config \(invalid JSON"),
        ("modelfile-config-json-list", evaluate(lambda c: _checkpoint_copy(c, b"[1, 2]")),
         r"ckpt-config/config\.json: not a model config \(a JSON list"),
        ("modelfile-config-json-not-utf8", evaluate(lambda c: _checkpoint_copy(c, b"\xff\xfe{}")), r"config\.json: not a model config"),
        ("modelfile-checkpoint-file-size-limit", _size_limited_retrain,
         r"cannot write .*checkpoints/(best|last|state).*: the file-size limit is exceeded \(ulimit -f\)"),
    ]


def _size_limited_retrain(c: Ctx) -> list[str]:
    """`ulimit -f` below the size of the student's weights: the first checkpoint save fails."""
    weights = (c.run / "checkpoints" / "best" / "model.safetensors").stat().st_size
    c.fsize = weights // 2
    return ["train", str(SMOKE), *c.overrides(), "--force"]


CASES = _config_cases() + _data_cases() + _model_cases() + _teacher_cases() + _state_cases() + _evaluation_cases() \
    + _results_cases() + _disk_cases() + _name_cases() + _cli_cases() + _duplicate_cases() + _model_file_cases()


def test_the_battery_is_large_and_covers_every_area():
    assert len(CASES) >= 60
    areas = {case_id.split("-")[0] for case_id, _, _ in CASES}
    assert areas == {"config", "data", "model", "teacher", "state", "eval", "results", "disk", "name", "cli", "dup", "modelfile"}
    assert len({case_id for case_id, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("case_id,setup,pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_one_line_error_naming_the_culprit(case_id, setup, pattern, base, tiny_models, tmp_path, capsys, monkeypatch):
    store = tmp_path / "store"
    shutil.copytree(base, store)
    c = Ctx(store=store, models=tiny_models, tmp=tmp_path)
    argv = setup(c)
    before = _snapshot(store)
    refuse = getattr(c, "refuse", None)
    if refuse is not None:
        _refuse_writes(monkeypatch, *refuse)
    _reset()
    capsys.readouterr()
    try:
        with _file_size_limit(getattr(c, "fsize", None)):
            rc = main(argv)
    finally:
        _reset()
        if getattr(c, "hold", None) is not None:
            c.hold.__exit__(None, None, None)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, f"{case_id}: exit status {rc}, stderr: {err[-5:]}"
    last = err[-1] if err else ""
    assert last.startswith("uld: error: "), f"{case_id}: not a one-line user error: {err[-5:]}"
    assert re.search(pattern, last), f"{case_id}: message does not name the culprit:\n  {last}\n  pattern: {pattern}"
    after = _snapshot(store)
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    changed -= getattr(c, "expected_changes", set())
    assert not changed, f"{case_id}: records changed: {sorted(changed)[:10]}"
    if getattr(c, "marker", None) is not None:
        assert not c.marker.exists(), "the planted pickle was executed"


@contextlib.contextmanager
def _file_size_limit(limit):
    """A real RLIMIT_FSIZE (`ulimit -f`) for the command: writes past it fail with EFBIG (Python ignores
    SIGXFSZ), exactly what a shell limit or a small quota does to a checkpoint save."""
    if limit is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def _refuse_writes(monkeypatch, err: int, match: str) -> None:
    import uld.io as io

    real_replace, real_append = io.os.replace, io.os.open

    def replace(src, dst):
        if match in str(dst):
            raise OSError(err, os.strerror(err))
        return real_replace(src, dst)

    def open_(path, flags, *a, **k):
        if flags & os.O_APPEND and match in str(path):
            raise OSError(err, os.strerror(err))
        return real_append(path, flags, *a, **k)

    monkeypatch.setattr(io.os, "replace", replace)
    monkeypatch.setattr(io.os, "open", open_)


# --------------------------------------------------------------------------------------------------
# Damage that has a correct result rather than an error: the command succeeds, repairs what it must,
# and changes nothing else
# --------------------------------------------------------------------------------------------------


def _full_snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file (lock files too) with its content hash and mtime: "writes nothing" means nothing."""
    return {p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _run_main(argv: list[str], capsys) -> tuple[int, str]:
    _reset()
    capsys.readouterr()
    try:
        rc = main(argv)
    finally:
        _reset()
    out = capsys.readouterr()
    return rc, out.out + out.err


def _damage(kind: str):
    def empty(p: Path) -> None:
        p.write_bytes(b"")

    def truncate(p: Path) -> None:
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])

    def garbage(p: Path) -> None:
        p.write_bytes(b"\x00\x01not json")

    def no_metrics(p: Path) -> None:
        p.write_text(json.dumps({"task": "squad"}))

    def duplicated(p: Path) -> None:  # a row written twice: its item would count twice
        lines = p.read_text().splitlines()
        p.write_text("\n".join([*lines, lines[0]]) + "\n")

    return {"empty": empty, "truncated": truncate, "garbage": garbage, "no-metrics": no_metrics, "duplicated": duplicated}[kind]


DAMAGED = [("scores.json", "empty"), ("scores.json", "truncated"), ("scores.json", "garbage"), ("scores.json", "no-metrics"),
           ("eval/scores.json", "empty"), ("eval/predictions.jsonl", "truncated"), ("eval/predictions.jsonl", "duplicated")]


@pytest.mark.parametrize("record,kind", DAMAGED, ids=[f"{r}-{k}" for r, k in DAMAGED])
def test_a_damaged_final_record_is_named_by_store_check_and_redone_by_run(record, kind, base, tiny_models, tmp_path, capsys):
    store = tmp_path / "store"
    shutil.copytree(base, store)
    c = Ctx(store=store, models=tiny_models, tmp=tmp_path)
    good = json.loads((c.run / "scores.json").read_text())
    _damage(kind)(c.run / record)
    before = _full_snapshot(store)
    rc, out = _run_main(["store", "check", "--store", str(store)], capsys)
    assert rc == 1, out
    assert re.search(rf"DAMAGED runs/{c.run.name}/{re.escape(record)}: .*{re.escape(record)}: ", out), out
    assert _full_snapshot(store) == before, "store check wrote to the store"

    before = _snapshot(store)
    rc, out = _run_main(["run", str(SMOKE), *c.overrides()], capsys)
    assert rc == 0, out
    again = json.loads((c.run / "scores.json").read_text())
    assert again["metrics"] == good["metrics"] and again["n"] == good["n"]
    after = _snapshot(store)
    redone = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    run = f"runs/{c.run.name}/"
    allowed = {run + "scores.json", run + "eval/scores.json", run + "eval/predictions.jsonl", run + "checkpoints/best/README.md"}
    assert redone <= allowed, f"the redo changed other records: {sorted(redone - allowed)}"
    assert not list(c.run.glob(".staging-*"))


@pytest.mark.parametrize("name", ["train", "eval"])
def test_a_leftover_staging_folder_is_removed_by_the_next_run_of_its_point(name, base, tiny_models, tmp_path, capsys):
    store = tmp_path / "store"
    shutil.copytree(base, store)
    c = Ctx(store=store, models=tiny_models, tmp=tmp_path)
    leftover = c.run / f".staging-{name}"
    shutil.copytree(c.run / "checkpoints" / "best", leftover / "checkpoints" / "best")  # what a killed --force leaves
    rc, out = _run_main(["store", "check", "--store", str(store)], capsys)
    assert f"leftover runs/{c.run.name}/.staging-{name}" in out
    before = {k: v for k, v in _snapshot(store).items() if ".staging-" not in k}
    rc, out = _run_main(["run", str(SMOKE), *c.overrides()], capsys)
    assert rc == 0, out
    assert not leftover.exists(), "the next run of the point left the staging folder"
    assert _snapshot(store) == before


def test_store_check_writes_nothing_even_to_lock_files(base, tmp_path, capsys):
    from uld.store import RunFolder

    store = tmp_path / "store"
    shutil.copytree(base, store)
    run = next((store / "runs").glob("smoke-*"))
    with RunFolder(run).lock():
        pass  # leaves an (empty) lock file, as every finished writer does
    before = _full_snapshot(store)
    rc, out = _run_main(["store", "check", "--store", str(store)], capsys)
    assert rc == 0 and "folders match their ids" in out, out
    assert _full_snapshot(store) == before


def test_report_only_with_out_writes_only_under_out(tmp_path, capsys):
    store = tmp_path / "store"
    shutil.copytree(REPO / "results" / "micro_h100", store)
    before = _full_snapshot(store)
    out = tmp_path / "elsewhere"
    rc, text = _run_main(["table", "micro", "--report-only", "--store", str(store), "--out", str(out)], capsys)
    assert rc == 0, text
    assert _full_snapshot(store) == before, "a --report-only --out DIR render wrote into the store"
    assert {p.name for p in out.iterdir()} >= {"table_micro.md", "table_micro.png", "table_micro.pdf"}


def _move_default(monkeypatch, cls, name: str, value) -> None:
    """Change a schema default as an edit of config.py would: the dataclass field and its __init__."""
    field_ = {f.name: f for f in dataclasses.fields(cls)}[name]
    monkeypatch.setattr(field_, "default", value)
    real = cls.__init__

    def init(self, *args, **kwargs):
        kwargs.setdefault(name, value)
        real(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__init__", init)


def test_a_table_says_which_changed_default_lost_its_runs(tmp_path, capsys, monkeypatch):
    from uld.config import DataConfig

    store = tmp_path / "store"
    shutil.copytree(REPO / "results" / "micro_h100", store)
    out = tmp_path / "tables"
    rc, text = _run_main(["table", "micro", "--report-only", "--store", str(store), "--out", str(out)], capsys)
    assert rc == 0 and " 0 missing" in text, text
    before = _full_snapshot(store)
    _move_default(monkeypatch, DataConfig, "split_seed", 7)  # a first-schema field: hashed at its value, always
    rc, text = _run_main(["table", "micro", "--report-only", "--store", str(store), "--out", str(out)], capsys)
    lost = [line for line in text.splitlines() if line.strip().startswith("LOST ")]
    assert rc == 0 and lost, text
    assert all("'data.split_seed' (the run's 42, today's default 7)" in line for line in lost), lost
    assert _full_snapshot(store) == before


def test_store_check_names_a_later_field_whose_default_moved(base, tmp_path, capsys, monkeypatch):
    from uld.config import DistillConfig

    store = tmp_path / "store"
    shutil.copytree(base, store)  # written by today's schema: every field is in its config.yaml
    _move_default(monkeypatch, DistillConfig, "skip_teacher_eos", True)  # added after the first schema
    before = _full_snapshot(store)
    rc, text = _run_main(["store", "check", "--store", str(store)], capsys)
    orphans = [line for line in text.splitlines() if "ORPHAN runs/" in line]
    assert rc == 1 and orphans, text
    assert all("'training.distill.skip_teacher_eos' (the run's False, today's default True)" in line for line in orphans), orphans
    assert _full_snapshot(store) == before


# --------------------------------------------------------------------------------------------------
# Real read-only and full file systems: a small tmpfs in a user namespace (skipped where the kernel
# does not allow one)
# --------------------------------------------------------------------------------------------------


def _namespaces_work() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


needs_namespaces = pytest.mark.skipif(not _namespaces_work(), reason="no unprivileged mount namespaces here")


def _in_tmpfs(tmp: Path, store: Path, then: str, command: list[str]) -> subprocess.CompletedProcess:
    """Copy ``store`` into a fresh tmpfs just larger than it, run the shell step ``then`` (make it
    read-only, fill it), then ``command`` against the copy; returns the finished process (its stdout
    lists the copy's files)."""
    mnt = tmp / "mnt"
    mnt.mkdir()
    files = [p for p in store.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size + 4096 for p in files) + (8 << 20)
    py = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "uld", *command])
    script = (f"mount -t tmpfs -o size={size} tmpfs {mnt} && cp -a {store} {mnt}/store && {then} && cd {mnt} && {py}; "
              f"rc=$?; echo '#FILES'; find {mnt}/store -type f | sort; exit $rc")
    import uld

    env = {**os.environ, "PYTHONPATH": str(Path(uld.__file__).resolve().parents[1])}  # the code under test
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env, timeout=300)


@needs_namespaces
@pytest.mark.parametrize("how", ["read-only", "full"])
def test_store_check_works_on_a_read_only_or_full_store(how, base, tmp_path):
    mnt = tmp_path / "mnt"
    then = f"mount -o remount,ro {mnt}" if how == "read-only" else f"(dd if=/dev/zero of={mnt}/fill bs=64k 2>/dev/null; true)"
    proc = _in_tmpfs(tmp_path, base, then, ["store", "check", "--store", f"{mnt}/store"])
    assert proc.returncode == 0, proc.stdout[:2000] + proc.stderr[-2000:]
    assert re.search(r"store .*: \d+ folders match their ids, 0 unfinished, 0 orphaned", proc.stdout), proc.stdout


@needs_namespaces
def test_an_evaluation_on_a_full_disk_is_one_line_and_leaves_nothing(base, tiny_models, tmp_path):
    """Evaluation's outputs do not fit: one line naming the file and the full disk; no staging folder
    left, the run's other records as they were."""
    mnt = tmp_path / "mnt"
    store = tmp_path / "store"
    shutil.copytree(base, store)
    c = Ctx(store=store, models=tiny_models, tmp=tmp_path)
    run = c.run.name
    (c.run / "scores.json").unlink()
    (c.run / "eval" / "predictions.jsonl").unlink()
    then = f"(dd if=/dev/zero of={mnt}/fill bs=4k 2>/dev/null; true)"
    overrides = [o if not o.startswith("output_dir=") else f"output_dir={mnt}/store" for o in c.overrides()]
    proc = _in_tmpfs(tmp_path, store, then, ["run", str(SMOKE), *overrides, "--stages", "evaluate"])
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert re.match(r"uld: error: StoreWriteError: cannot write .*: the disk is full", err[-1]), err[-3:]
    files = proc.stdout.split("#FILES")[-1].split()
    inside = sorted(f.split("/store/", 1)[1] for f in files if "/store/" in f)
    assert not [f for f in inside if ".staging-" in f or f.endswith(".tmp")], inside
    assert sorted(_snapshot(store)) == [f for f in inside if not f.endswith(".lock")], "records appeared or vanished"
    assert f"runs/{run}/checkpoints/best/model.safetensors" in inside

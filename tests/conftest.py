"""Shared fixtures. Tests never touch the network: the Hub is switched off for the whole session."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Grids in tests run one point at a time, so each test's process count and output stay what it asserts;
# the default a user gets (two workers on a CPU-only machine) is tested with this variable removed.
os.environ.setdefault("ULD_WORKERS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ULD_SHARED_DIR", REPO_ROOT.parent / "shared"))


# Where the code writes when a test gets its store wrong: the committed store, the fixtures, the notebooks.
WATCHED = ("results/", "tests/fixtures/", "analysis/")


def _checkout_status() -> set[str] | None:
    """`git status` lines under WATCHED, or None outside a git checkout."""
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        return None
    proc = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", *WATCHED], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    return set(proc.stdout.splitlines()) if proc.returncode == 0 else None


def pytest_sessionstart(session):
    session.config._uld_status = _checkout_status()


def pytest_sessionfinish(session, exitstatus):
    """A test run leaves the checkout as it found it: anything a test wrote into the repository fails the run."""
    before = getattr(session.config, "_uld_status", None)
    after = _checkout_status() if before is not None else None
    if after is None:
        return
    new = sorted(after - before)
    if new:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(f"the test run wrote into the checkout ({len(new)} paths), e.g.: {new[:5]}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` (datasets, tokenizers, the authors' references); skips the test when absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: this test needs the shared data folder")
    return SHARED


@pytest.fixture(scope="session")
def shared_data_dir(shared_dir: Path) -> Path:
    d = shared_dir / "data"
    if not d.is_dir():
        pytest.skip(f"{d} is absent")
    return d


@pytest.fixture(scope="session")
def shared_tokenizer(shared_dir: Path):
    """Factory: shared_tokenizer('llama-2-7b' | 'mistral-7b' | 'gpt2' | 'pythia')."""
    from transformers import AutoTokenizer

    cache = {}

    def load(name: str):
        d = shared_dir / "tokenizers" / name
        if not d.is_dir():
            pytest.skip(f"{d} is absent")
        if name not in cache:
            cache[name] = AutoTokenizer.from_pretrained(d)
        return cache[name]

    return load


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny random teacher (Llama arch) / student (GPT-NeoX) / seq2seq (T5) folders, different tokenizers."""
    from uld.testing import build_tiny_pair

    return build_tiny_pair(tmp_path_factory.mktemp("tiny-models"), seq2seq=True)


def small_models_dir() -> Path | None:
    """Real small models built by ../shared/scripts/get-small-models, when present."""
    d = Path(os.environ.get("SMALL_MODELS_DIR", Path.home() / ".cache" / "small-models"))
    ok = (d / "gemma-3-270m" / ".done").exists() and (d / "smollm2-135m-instruct" / ".done").exists()
    return d if ok else None


@pytest.fixture(scope="session")
def tiny_teacher_stage(tiny_models, tmp_path_factory) -> Path:
    """A teacher stage (12 answers of the tiny teacher, top-16 signal) written by `uld generate`: what the
    examples and the signal export start from."""
    from accelerate.state import PartialState

    from uld.cli import main

    shared_data = SHARED / "data"
    data = shared_data if (shared_data / "squad").is_dir() else REPO_ROOT / "tests" / "fixtures" / "data"
    store = tmp_path_factory.mktemp("stage-store")
    assert main(["generate", str(REPO_ROOT / "experiments" / "smoke.yaml"), f"teacher.path={tiny_models['teacher']}",
                 f"data.dir={data}", f"output_dir={store}", "data.train_size=12", "generation.max_new_tokens=6",
                 "generation.top_k_signal=16"]) == 0
    PartialState._reset_state()
    (folder,) = [p for p in (store / "teacher").iterdir() if not p.name.startswith(".")]
    return folder

"""A clean checkout stays clean: `make smoke` writes only into a git-ignored store, so `git status`
after the README's first command is what it was before."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from uld.config import expand_grid, load_config
from uld.store import RunFolder

REPO = Path(__file__).resolve().parents[2]


def _smoke_argv() -> list[str]:
    """The `uld run ...` line `make smoke` executes (dry run: nothing is installed or run)."""
    out = subprocess.run(["make", "-n", "smoke"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    (line,) = [ln for ln in out.splitlines() if "/uld run " in ln or ln.startswith("uld run ")]
    words = shlex.split(line)
    return words[words.index("run") + 1:]


def _ignored(paths: list[Path]) -> list[str]:
    rel = [str(p.relative_to(REPO)) for p in paths]
    proc = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=REPO, input="\n".join(rel) + "\n",
                          capture_output=True, text=True)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.stdout.split()


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="not a git checkout")
def test_make_smoke_writes_only_where_git_ignores():
    config, *overrides = _smoke_argv()
    cfg = load_config(REPO / config, overrides)
    store = Path(cfg.output_dir)
    store = store if store.is_absolute() else REPO / store  # make runs from the repository root
    written = [store / "tables" / f"{cfg.name}.md", store / "figures" / f"{cfg.name}.png"]
    for point in expand_grid(cfg):
        run = store / "runs" / RunFolder.for_config(point).id
        teacher = store / "teacher" / RunFolder.for_config(point, kind="teacher").id
        written += [run / "config.yaml", run / "scores.json", teacher / "config.yaml", teacher / "answers.parquet"]
    assert all(p.is_relative_to(REPO) for p in written), "the smoke store must stay inside the checkout"
    ignored = _ignored(written)
    leaks = [str(p.relative_to(REPO)) for p in written if str(p.relative_to(REPO)) not in ignored]
    assert not leaks, f"make smoke writes files git would show as untracked: {leaks}"


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="not a git checkout")
def test_the_committed_store_is_not_ignored():
    """The guard above cannot pass by ignoring the committed results themselves."""
    committed = [REPO / "results" / "runs" / "x" / "scores.json", REPO / "results" / "tables" / "table_micro.md"]
    assert _ignored(committed) == []

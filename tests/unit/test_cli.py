"""The `uld` CLI: help texts, argument errors, config resolution, and the commands of the README and docs/."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from uld.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]
SUBCOMMANDS = ["run", "generate", "train", "evaluate", "table", "data", "config"]


def test_top_level_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in SUBCOMMANDS:
        assert cmd in out


@pytest.mark.parametrize("cmd", SUBCOMMANDS + ["data summary"])
def test_every_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main(cmd.split() + ["--help"])
    assert exc.value.code == 0
    assert "usage: uld " + cmd.split()[0] in capsys.readouterr().out


def test_python_m_uld_is_the_same_program():
    out = subprocess.run([sys.executable, "-m", "uld", "--help"], capture_output=True, text=True, check=True).stdout
    assert "Universal Logit Distillation" in out


def test_config_command_prints_run_ids(capsys):
    assert main(["config", str(REPO / "experiments" / "smoke.yaml"), "--ids"]) == 0
    ids = capsys.readouterr().out.split()
    assert len(ids) == 2 and all(i.startswith("smoke-") for i in ids) and ids[0] != ids[1]


def test_overrides_may_follow_an_option(capsys):
    """`uld run CFG --stages teacher output_dir=...` once failed: argparse ends the overrides at an option."""
    cfg = str(REPO / "experiments" / "powered" / "powered_2_main.yaml")
    assert main(["config", cfg, "training.method=sft-teacher", "training.seed=1", "--ids"]) == 0
    before = capsys.readouterr().out.split()
    assert main(["config", cfg, "training.method=sft-teacher", "--ids", "training.seed=1"]) == 0
    assert capsys.readouterr().out.split() == before and len(before) == 1
    # later overrides win, as they do before the option
    assert main(["config", cfg, "training.seed=1", "--ids", "training.method=sft-teacher", "training.seed=2"]) == 0
    assert capsys.readouterr().out.split() != before
    for bad in (["--no-such-flag"], ["stray"]):
        with pytest.raises(SystemExit):
            main(["config", cfg, "--ids", *bad])
        assert "unrecognized arguments" in capsys.readouterr().err


def test_config_error_is_reported_with_key(capsys):
    assert main(["config", str(REPO / "experiments" / "smoke.yaml"), "training.bogus=1"]) == 2
    assert "training.bogus" in capsys.readouterr().err


def test_missing_file_is_one_clean_line(capsys, tmp_path):
    assert main(["evaluate", "--rescore", str(tmp_path / "nope.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "nope.jsonl" in err and "Traceback" not in err


# the front door and every page behind it: a command shown anywhere a reader is sent must run
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def _bash_lines(text: str) -> list[str]:
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line:
                cmds.append(line)
    return cmds


def _readme_commands() -> list[str]:
    """Every command line of a bash block in the README and the docs pages, each once, in page order."""
    return list(dict.fromkeys(c for page in DOCS for c in _bash_lines(page.read_text())))


def test_readme_has_the_two_make_commands():
    cmds = _bash_lines((REPO / "README.md").read_text())
    assert "make smoke" in cmds and "make test" in cmds


def test_command_blocks_of_the_study_pages_are_checked():
    """The study pages' commands are among those the tests below parse (a moved block stays checked)."""
    pages = sorted((REPO / "docs" / "studies").glob("*.md"))
    assert {p.stem for p in pages} >= {"micro", "headroom"}
    checked = set(_readme_commands())
    for page in pages:
        lines = _bash_lines(page.read_text())
        assert lines, f"{page.name} shows no command to run its study"
        assert set(lines) <= checked


@pytest.mark.parametrize("line", [c for c in _readme_commands() if re.search(r"(^|\s)make \S", c)])
def test_readme_make_targets_exist(line):
    target = line.split("make", 1)[1].split()[0]
    res = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def _without_env(line: str) -> list[str]:
    words = shlex.split(line)
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        words.pop(0)
    return words


@pytest.mark.parametrize("line", [c for c in _readme_commands() if _without_env(c)[:1] == ["uld"]])
def test_readme_uld_commands_parse(line):
    """Every `uld ...` line of the README and docs (env assignments in front allowed) parses, and its config resolves."""
    argv = _without_env(line)[1:]
    argv = [a.replace("<run_id>", "x") for a in argv]
    if argv == ["--help"]:
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(argv)
        assert exc.value.code == 0
        return
    args = build_parser().parse_args(argv)
    if getattr(args, "config", None) and args.config.endswith(".yaml"):
        from uld.config import load_config

        cfg = load_config(REPO / args.config, args.overrides)
        if args.command == "train":  # `uld train` takes exactly one grid point
            assert not cfg.grid, f"{line}: the config still sweeps {list(cfg.grid)}"


@pytest.mark.parametrize("line", [c for c in _readme_commands() if c.startswith("accelerate launch")])
def test_readme_accelerate_lines_name_shipped_configs_and_parse(line):
    """`accelerate launch --config_file F -m uld ...` in the README and docs: F is shipped and the uld part parses."""
    words = shlex.split(line)
    config_file = words[words.index("--config_file") + 1]
    assert (REPO / config_file).is_file(), f"{line}: no {config_file}"
    assert words[words.index("-m") + 1] == "uld", line
    argv = words[words.index("-m") + 2:]
    args = build_parser().parse_args(argv)
    from uld.config import load_config

    load_config(REPO / args.config, args.overrides)


def test_readme_shows_a_multi_process_launch():
    assert any(c.startswith("accelerate launch") for c in _bash_lines((REPO / "README.md").read_text()))


def test_run_writes_the_study_report_of_a_grid(tmp_path, monkeypatch, capsys):
    """`uld run` on a grid writes its study report; the pipeline it calls writes runs only."""
    import uld.pipeline
    from uld.config import expand_grid
    from uld.io import atomic_write_json
    from uld.store import RunFolder

    def fake_run_experiment(cfg, **kw):
        runs = []
        for i, point in enumerate(expand_grid(cfg)):
            run = RunFolder.for_config(point)
            run.init(point)
            atomic_write_json(run.file("scores.json"), {"metrics": {"f1": 10.0 + i}})
            runs.append(run)
        return runs

    monkeypatch.setattr(uld.pipeline, "run_experiment", fake_run_experiment)
    assert main(["run", str(REPO / "experiments" / "smoke.yaml"), f"output_dir={tmp_path}"]) == 0
    report = tmp_path / "tables" / "smoke.md"
    assert f"wrote {report}" in capsys.readouterr().out
    rows = [line for line in report.read_text().splitlines() if line.startswith("| smoke-")]
    assert len(rows) == 2 and "10" in rows[0] and "11" in rows[1]
    assert (tmp_path / "figures" / "smoke.png").stat().st_size > 0
    # evaluation not asked for: no scores to report, so no report
    report.unlink()
    assert main(["run", str(REPO / "experiments" / "smoke.yaml"), f"output_dir={tmp_path}", "--stages", "teacher"]) == 0
    assert not report.exists()

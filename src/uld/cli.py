"""`uld` command line: the only place that wires stages together for a user.

Every subcommand that takes an experiment config accepts dotted overrides after it, e.g.

    uld run experiments/smoke.yaml training.optim.lr=2e-6 data.train_size=32

Run ``uld <command> --help`` for each command's options.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from uld import __version__

EPILOG_OVERRIDES = (
    "Overrides: any config field as dotted key=value after the config file, e.g. "
    "training.optim.lr=2e-6 student.path=/models/smollm2 grid='{training.lam: [0, 1.5]}'. "
    "Environment: ULD_MODELS_DIR (folder of local model folders), ULD_DATA_DIR (local data folder)."
)

WORKERS_HELP = ("grid points side by side in this many processes, the cores split between them (default: $ULD_WORKERS, "
                "else 2 on a machine without an accelerator, with 2+ cores and 2+ points to run, else 1)")


def say(*args, **kwargs) -> None:
    """print, once per launch: only the main process of an `accelerate launch` speaks."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, **kwargs)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML (see experiments/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.add_argument("--large-grid", action="store_true", help="accept a grid of more than 1,000 points")


def _load(args):
    from uld.config import MAX_GRID_POINTS, load_config

    return load_config(args.config, args.overrides, max_grid_points=None if args.large_grid else MAX_GRID_POINTS)


def _listed(args, option: str, known) -> list[str]:
    """A comma-separated option's values, each checked against ``known``: a bad one is a one-line error
    naming the option (the command line, not the config file, is where it came from)."""
    from uld.errors import ConfigError

    text = getattr(args, option.lstrip("-").replace("-", "_"))
    values = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in values if v not in known]
    if unknown or not values:
        what = f"unknown value(s) {', '.join(map(repr, unknown))}" if unknown else "no value"
        raise ConfigError(f"{option} {text!r} in the command line: {what} (choose from {', '.join(known)})")
    return values


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="all stages of an experiment config (every grid point)",
                       description="Teacher generation, training and evaluation for every point of the "
                       "config's grid. Finished stages are skipped; a study table and plot are written "
                       "for grids.", epilog=EPILOG_OVERRIDES)
    _config_args(p)
    p.add_argument("--force", action="store_true", help="redo stages whose outputs exist")
    p.add_argument("--stages", default="teacher,train,evaluate", help="comma-separated subset of teacher,train,evaluate")
    p.add_argument("--no-resume", action="store_true", help="start training from scratch even if a checkpoint exists")
    p.add_argument("--wait", action="store_true", help="wait for another process computing the same run instead of failing")
    p.add_argument("--workers", type=int, default=None, help=WORKERS_HELP)
    p.set_defaults(func=cmd_run)


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="teacher answers (+ cached teacher signal) for a config",
                       description="Generate teacher answers on the training pool and cache the teacher's "
                       "top-k sorted probabilities. Resumable; shard with `accelerate launch`.",
                       epilog=EPILOG_OVERRIDES)
    _config_args(p)
    p.add_argument("--force", action="store_true", help="regenerate even if the stage is complete (built beside the old one)")
    p.add_argument("--wait", action="store_true", help="wait for another process generating the same stage instead of failing")
    p.set_defaults(func=cmd_generate)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train the student of a config (one grid point)",
                       description="Train the student (the teacher stage runs first when the method needs "
                       "it). Use `accelerate launch -m uld train ...` for several GPUs/processes.",
                       epilog=EPILOG_OVERRIDES)
    _config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from checkpoints/state (the default; kept for old scripts)")
    p.add_argument("--no-resume", action="store_true", help="start over; the old records stay until the new training is done")
    p.add_argument("--force", action="store_true", help="retrain a finished run (built beside the old records, then swapped in)")
    p.add_argument("--force-resume", action="store_true", help="resume even if the saved config or world size differs")
    p.add_argument("--wait", action="store_true", help="wait for another process training the same run instead of failing")
    p.set_defaults(func=cmd_train)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="generate and score on a task's test split",
                       description="Three forms: `uld evaluate CONFIG [overrides]` evaluates a run; "
                       "`uld evaluate --checkpoint DIR --task T` evaluates any HF model folder or Hub id; "
                       "`uld evaluate --rescore FILE` scores an existing predictions.jsonl.",
                       epilog=EPILOG_OVERRIDES)
    p.add_argument("config", nargs="?", help="experiment YAML")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--large-grid", action="store_true", help="accept a grid of more than 1,000 points")
    p.add_argument("--checkpoint", help="HF model folder or Hub id to evaluate")
    p.add_argument("--task", help="task name (squad, qed, fairytaleqa, pubmedqa, dialogsum)")
    p.add_argument("--tokenizer", help="tokenizer folder when the checkpoint has none")
    p.add_argument("--data-dir", help="local data folder (default: $ULD_DATA_DIR, else the Hub)")
    p.add_argument("--test-size", type=int, help="evaluate the first N test items")
    p.add_argument("--metrics", default="f1,em,rouge", help="comma-separated: f1,em,rouge,bertscore")
    p.add_argument("--out", help="output folder for predictions and scores")
    p.add_argument("--rescore", help="predictions.jsonl to score (ours or the authors' format)")
    p.add_argument("--protocol", default="authors", choices=["authors", "complete"], help="reference protocol")
    p.add_argument("--force", action="store_true", help="re-evaluate (a run) or replace the scores in --out")
    p.add_argument("--dtype", choices=["float32", "bfloat16"],
                   help="--checkpoint: weights' precision while generating (default: as the model loads)")
    p.add_argument("--batch-size", type=int, default=16, help="--checkpoint: prompts per generation batch")
    p.set_defaults(func=cmd_evaluate)


def _add_table(sub) -> None:
    p = sub.add_parser("table", help="build a paper table (runs what is missing)",
                       description="Build one paper table: declares its grid, runs missing runs (unless "
                       "--report-only), writes markdown and LaTeX with the authors' numbers beside ours.")
    p.add_argument("name", help="a table of paper_tables/ (main, student_size, data_fraction, encoder_decoder, cost_ablation, micro, headroom)")
    p.add_argument("--report-only", action="store_true", help="do not launch runs; render from the store")
    p.add_argument("--preset", default="paper", choices=["paper", "small"], help="paper grid or a small CPU preset")
    p.add_argument("--store", default="results", help="results store root")
    p.add_argument("--force", action="store_true", help="redo runs that exist")
    p.add_argument("--out", help="folder for the table files (default: STORE/tables)")
    p.add_argument("--workers", type=int, default=None, help=WORKERS_HELP)
    p.set_defaults(func=cmd_table)


def _add_rehearse(sub) -> None:
    p = sub.add_parser("rehearse", help="run every paper-grid cell for a few steps on tiny models of the real architectures",
                       description="Every grid point of the paper tables, end to end (teacher answers, signal, "
                       "training, evaluation, table row), with the paper's prompts, shots, templates, lengths, batch "
                       "sizes and learning rates, on tiny random models of the paper's architectures with their real "
                       "tokenizers where ../shared/tokenizers has them, and a few items per task. Exit 1 if a cell "
                       "does not reach its table.")
    p.add_argument("--store", default="results/rehearsal", help="where the rehearsal's runs and tables go")
    p.add_argument("--tables", default="main,student_size,data_fraction,encoder_decoder,cost_ablation",
                   help="comma-separated paper tables")
    p.add_argument("--data-dir", help="local data folder (default: $ULD_DATA_DIR, else the Hub)")
    p.set_defaults(func=cmd_rehearse)


def _add_store(sub) -> None:
    p = sub.add_parser("store", help="check or migrate a results store",
                       description="`uld store check` verifies every run and teacher-stage folder against the id "
                       "its config gives today and lists orphans, unfinished runs and leftovers of interrupted "
                       "writers (exit 1 when there are orphans). `uld store migrate` rewrites configs stored by "
                       "an older schema in today's layout (--apply; ids do not change).")
    ssub = p.add_subparsers(dest="store_command", metavar="SUBCOMMAND")
    ssub.required = True
    for name, func, text in (("check", cmd_store_check, "verify ids, list orphans"),
                             ("migrate", cmd_store_migrate, "rewrite old-schema configs")):
        q = ssub.add_parser(name, help=text, description=text)
        q.add_argument("--store", default="results", help="results store root (default: results)")
        if name == "migrate":
            q.add_argument("--apply", action="store_true", help="rewrite the files (default: only list them)")
        q.set_defaults(func=func)


def _add_diagnose(sub) -> None:
    p = sub.add_parser("diagnose", help="confidence and error diagnostics of finished runs",
                       description="For every finished grid point of a config: answer length and span-start errors "
                       "of its predictions, and its model's top-1 probability and p(gold) at the first answer token "
                       "on the evaluation questions (teacher-forced on the gold answer); written to "
                       "<run>/diagnostics.json. Runs without results are skipped.", epilog=EPILOG_OVERRIDES)
    _config_args(p)
    p.add_argument("--force", action="store_true", help="recompute diagnostics that exist")
    p.set_defaults(func=cmd_diagnose)


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="inspect tasks", description="Inspect the paper's tasks.")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    dsub.required = True
    d = dsub.add_parser("summary", help="split sizes, lengths, invalid rows and rendered prompts of a task",
                        description="Split sizes (train = whole training pool, test = evaluated split), "
                        "length statistics per tokenizer, empty/invalid rows, one teacher and one student prompt.")
    d.add_argument("task")
    d.add_argument("--data-dir", help="local data folder (default: $ULD_DATA_DIR, else the Hub)")
    d.add_argument("--tokenizer", action="append", default=[], help="tokenizer folder or Hub id (repeatable)")
    d.add_argument("--json", action="store_true", help="print one JSON object")
    d.set_defaults(func=cmd_data_summary)
    a = dsub.add_parser("articles", help="which articles a config's training, validation and test items come from",
                        description="For every grid point of a config: the source articles (titles) of its training, "
                        "validation and evaluated items, with counts (data.pool_order / data.test_order decide them).",
                        epilog=EPILOG_OVERRIDES)
    _config_args(a)
    a.add_argument("--json", action="store_true", help="print one JSON object per grid point")
    a.set_defaults(func=cmd_data_articles)


def _add_config(sub) -> None:
    p = sub.add_parser("config", help="print the resolved config(s) and run ids",
                       description="Resolve a config (+overrides), validate it, and print every grid point's "
                       "run id and resolved YAML.", epilog=EPILOG_OVERRIDES)
    _config_args(p)
    p.add_argument("--ids", action="store_true", help="print only the run ids")
    p.set_defaults(func=cmd_config)


def _add_signal(sub) -> None:
    p = sub.add_parser("signal", help="export or import a teacher signal as a Hugging Face dataset",
                       description="The cached teacher signal of a teacher stage as parquet shards plus a dataset "
                       "card (`datasets.load_dataset(\"parquet\", data_dir=DIR)` opens it), and back into a "
                       "teacher-stage folder. Format: docs/signal_format.md.")
    ssub = p.add_subparsers(dest="signal_command", metavar="SUBCOMMAND")
    ssub.required = True
    q = ssub.add_parser("export", help="teacher stage -> parquet shards + README.md", description="Export a complete "
                        "teacher stage (results/teacher/<id>) to DIR.")
    q.add_argument("stage", help="teacher-stage folder written by `uld generate`")
    q.add_argument("--out", required=True, help="output folder (must be empty or absent)")
    q.add_argument("--tokenizer", help="the teacher's tokenizer folder, when the one the stage recorded has moved")
    q.add_argument("--rows-per-shard", type=int, default=5000, help="answers per parquet shard (default 5000)")
    q.add_argument("--force", action="store_true", help="replace a non-empty --out")
    q.set_defaults(func=cmd_signal_export)
    q = ssub.add_parser("import", help="parquet shards -> teacher-stage folder", description="Check an exported signal "
                        "(version, every shard, a CRC per row) and write it as a teacher-stage folder.")
    q.add_argument("dataset", help="folder written by `uld signal export`")
    q.add_argument("--out", required=True, help="teacher-stage folder to write (e.g. results/teacher/<id> of the card)")
    q.add_argument("--force", action="store_true", help="replace a non-empty --out")
    q.set_defaults(func=cmd_signal_import)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uld",
        description=(
            "Universal Logit Distillation (ULD): distil a teacher LLM into a student with a different "
            "tokenizer. Stages: teacher answers (generate) -> student training (train) -> evaluation "
            "(evaluate); `run` chains them for every point of a config's grid; `table` builds a paper table."
        ),
        epilog=EPILOG_OVERRIDES,
    )
    parser.add_argument("--version", action="version", version=f"uld {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (_add_run, _add_generate, _add_train, _add_evaluate, _add_table, _add_rehearse, _add_store, _add_diagnose,
                _add_data, _add_config, _add_signal):
        add(sub)
    return parser


# --------------------------------------------------------------------------------------------------


def cmd_run(args) -> int:
    from uld.distributed import dist
    from uld.pipeline import STAGES, run_experiment

    stages = _listed(args, "--stages", STAGES)
    cfg = _load(args)
    runs = run_experiment(cfg, force=args.force, stages=stages, resume=not args.no_resume, wait=args.wait,
                          workers=args.workers)
    for r in runs:
        say(f"run: {r.path}")
    if cfg.grid and "evaluate" in stages and dist().is_main:
        from uld.reporting.study import write_study_report  # plotting stack: only once a grid is evaluated

        for path in write_study_report(cfg, runs):
            say(f"wrote {path}")
    return 0


def cmd_generate(args) -> int:
    from uld.teacher import run_teacher_stage

    from uld.config import expand_grid
    from uld.ids import teacher_stage_id

    cfg = _load(args)
    seen = set()
    for point in expand_grid(cfg):
        # grid points that differ only in student/training settings share one teacher stage
        if teacher_stage_id(point) in seen:
            continue
        seen.add(teacher_stage_id(point))
        say(f"teacher answers: {run_teacher_stage(point, force=args.force, wait=args.wait)}")
    return 0


def cmd_train(args) -> int:
    from uld.config import ConfigError
    from uld.pipeline import run_point

    cfg = _load(args)
    if cfg.grid:
        raise ConfigError("`uld train` takes one grid point: pin the grid keys with overrides or use `uld run`")
    # --force retrains the student; the teacher stage it learns from is reused (`uld generate --force` redoes it)
    run = run_point(cfg, stages=("teacher", "train"), resume=not args.no_resume, force={"train"} if args.force else False,
                    force_resume=args.force_resume, wait=args.wait)
    say(f"run: {run.path}")
    return 0


def cmd_evaluate(args) -> int:
    from uld import evaluation

    from uld.data import get_task
    from uld.errors import EvaluationError

    if args.task:
        get_task(args.task)  # an unknown task is an error naming the known ones
    if args.test_size is not None and args.test_size <= 0:
        raise EvaluationError(f"--test-size must be a positive number of items, got {args.test_size}")
    from uld.metrics import METRIC_GROUPS

    metrics = _listed(args, "--metrics", list(METRIC_GROUPS))
    if args.rescore:
        scores = evaluation.rescore_file(args.rescore, task=args.task, protocol=args.protocol, metrics=metrics)
        say(json.dumps(scores, indent=2))
        return 0
    if args.checkpoint:
        if not args.task:
            raise SystemExit("uld evaluate --checkpoint needs --task")
        from uld.config import EvaluationConfig

        if args.batch_size <= 0:
            raise EvaluationError(f"--batch-size must be a positive number of prompts, got {args.batch_size}")
        scores = evaluation.evaluate_checkpoint(
            args.checkpoint,
            args.task,
            data_dir=args.data_dir,
            test_size=args.test_size,
            out_dir=args.out or str(Path("results") / "evals" / Path(args.checkpoint).name),
            tokenizer=args.tokenizer,
            eval_cfg=EvaluationConfig(metrics=metrics, references=args.protocol, dtype=args.dtype,
                                      batch_size=args.batch_size),
            force=args.force,
        )
        say(json.dumps(scores, indent=2))
        return 0
    if not args.config:
        raise SystemExit("uld evaluate needs CONFIG, --checkpoint DIR --task T, or --rescore FILE")
    from uld.config import ConfigError, expand_grid
    from uld.store import RunFolder

    cfg = _load(args)
    for point in expand_grid(cfg):
        run = RunFolder.for_config(point)
        if not run.path.exists():
            raise ConfigError(f"no run folder {run.path}: train it first (`uld run {args.config}`)")
        scores = evaluation.evaluate_run(point, run, force=args.force)
        say(f"{run.path}: {json.dumps(scores.get('metrics', scores))}")
    return 0


def cmd_table(args) -> int:
    from uld.tables import table_script

    # the same code path as paper_tables/table_<name>.py
    argv = ["--preset", args.preset, "--store", args.store]
    argv += ["--report-only"] * args.report_only + ["--force"] * args.force
    argv += ["--out", args.out] if args.out else []
    argv += ["--workers", str(args.workers)] if args.workers is not None else []
    return table_script(args.name, argv)


def cmd_rehearse(args) -> int:
    from uld.rehearsal import rehearse

    report = rehearse(args.store, tables=[t.strip() for t in args.tables.split(",") if t.strip()], data_dir=args.data_dir)
    say(report.format())
    return 0 if report.ok else 1


def cmd_store_check(args) -> int:
    from uld.store import check_store

    report = check_store(args.store)
    say(report.format())
    return 0 if report.clean else 1


def cmd_store_migrate(args) -> int:
    from uld.store import migrate_store

    changed = migrate_store(args.store, apply=args.apply)
    verb = "rewrote" if args.apply else "would rewrite (pass --apply)"
    say(f"{verb} {len(changed)} config(s) stored by an older schema")
    for path in changed:
        say(f"  {path}")
    return 0


def cmd_data_summary(args) -> int:
    from uld.data.summary import format_summary, summarize_task

    tokenizers = {}
    if args.tokenizer:
        from transformers import AutoTokenizer

        for t in args.tokenizer:
            tokenizers[Path(t).name or t] = AutoTokenizer.from_pretrained(t)
    summary = summarize_task(args.task, data_dir=args.data_dir, tokenizers=tokenizers or None)
    say(json.dumps(summary, indent=2, default=str) if args.json else format_summary(summary))
    return 0


def cmd_data_articles(args) -> int:
    from uld.config import expand_grid
    from uld.data import sample_articles
    from uld.ids import run_id

    for point in expand_grid(_load(args)):
        found = sample_articles(point.data)
        if args.json:
            say(json.dumps({"run_id": run_id(point), **found}))
            continue
        say(f"# {run_id(point)}")
        for part, counts in found.items():
            say(f"{part}: {sum(counts.values())} items from {len(counts)} article{'' if len(counts) == 1 else 's'}: "
                + "; ".join(f"{title or '(untitled)'} ({n})" for title, n in counts.items()))
    return 0


def cmd_diagnose(args) -> int:
    from uld.config import expand_grid
    from uld.diagnostics import diagnose_run
    from uld.store import find_run

    cfg = _load(args)
    done = 0
    for point in expand_grid(cfg):
        run = find_run(point)
        if not run.is_complete:
            say(f"skip {run.id}: no results yet")
            continue
        record = diagnose_run(point, run, force=args.force)
        conf, pred = record["confidence_on_gold"], record["predictions"]
        say(f"{run.id}: first-token top-1 {conf['first_token_top1']:.3f}, p(gold) {conf['first_token_p_gold']:.3f}, "
            f"span-start errors {pred['span_start_error_rate']:.3f}, {pred['mean_answer_words']:.1f} words")
        done += 1
    say(f"{done} runs diagnosed")
    return 0


def cmd_signal_export(args) -> int:
    from uld.signal_export import export_signal

    shards = export_signal(args.stage, args.out, tokenizer=args.tokenizer, rows_per_shard=args.rows_per_shard, force=args.force)
    say(f"exported {len(shards)} shard(s) + README.md to {args.out}")
    return 0


def cmd_signal_import(args) -> int:
    from uld.signal_export import import_signal

    say(f"teacher stage: {import_signal(args.dataset, args.out, force=args.force)}")
    return 0


def cmd_config(args) -> int:
    from uld.config import dump_config, expand_grid
    from uld.ids import run_id

    cfg = _load(args)
    for point in expand_grid(cfg):
        if args.ids:
            say(run_id(point))
        else:
            say(f"# run id: {run_id(point)}")
            say(dump_config(point))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # argparse stops filling the overrides at the first option, so `uld run CFG --stages teacher a.b=1` would
    # refuse `a.b=1`; key=value words found after an option are overrides too, in command-line order
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    main_process = int(os.environ.get("RANK", "0")) == 0  # the other ranks of a launch log warnings only
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO if main_process else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.func(args)
    except _user_errors() as exc:
        # Bad input (config, files, rows) is reported in one line; -v shows the traceback.
        if args.verbose:
            raise
        print(f"uld: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # a full disk or a file-size limit met by a library's own write: still the user's limit, in one line
        from uld.io import LIMIT_ERRNOS, write_error

        if args.verbose or exc.errno not in LIMIT_ERRNOS:
            raise
        print(f"uld: error: StoreWriteError: {write_error(Path(exc.filename or '(a file)'), exc)}", file=sys.stderr)
        return 2
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Processes of a launch finish together: a rank that exits while the others still talk to it
    aborts the whole launch (gloo's "terminate called without an active exception")."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _user_errors() -> tuple[type[BaseException], ...]:
    from uld.errors import UldError

    return (UldError, FileNotFoundError)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

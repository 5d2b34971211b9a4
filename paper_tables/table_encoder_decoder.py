"""Encoder-decoder student: mT0-base distilled from both teachers, lambda=0 vs ULD.

Usage (from the repository root)::

    python paper_tables/table_encoder_decoder.py                  # run what is missing, then write the table
    python paper_tables/table_encoder_decoder.py --report-only    # only read the store
    python paper_tables/table_encoder_decoder.py --preset small   # the CPU grid (small models, small slices)

The grid is declared by experiments/encoder_decoder/<preset>_*.yaml. Output: <store>/tables/table_encoder_decoder[_small].{md,tex}
and a .cells.csv naming the run behind every number. Same as `uld table encoder_decoder`.
"""

from __future__ import annotations

import sys

from uld import reporting

TABLE = "encoder_decoder"


def main(argv: list[str] | None = None) -> int:
    args = reporting.parse_table_args(TABLE, argv, __doc__.splitlines()[0])
    plan = reporting.plan_table(TABLE, preset=args.preset, store_root=args.store)
    print(plan.summary())
    if not args.report_only:
        launched = reporting.launch_missing(plan, force=args.force)
        print(f"launched {len(launched.launched)} runs; {len(launched.failed)} failed")
        for run_id, error in launched.failed:
            print(f"  FAILED {run_id}: {error}")
    table = reporting.collect_table(plan)
    out_dir = args.out or f"{args.store}/tables"
    for path in reporting.write_table(table, out_dir, store_root=plan.store_root).values():
        print(f"wrote {path}")
    return 0 if args.report_only or not launched.failed else 1


if __name__ == "__main__":
    sys.exit(main())

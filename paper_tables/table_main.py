"""Table 1: five tasks x teachers Llama-2-7b-chat / Mistral-7B-Instruct x students OPT-350m / Pythia-410m / Bloomz-560m.

Usage (from the repository root)::

    python paper_tables/table_main.py                  # run what is missing, then write the table
    python paper_tables/table_main.py --report-only    # only read the store
    python paper_tables/table_main.py --preset small   # the CPU grid (small models, small slices)

The grid is declared by experiments/main/<preset>_*.yaml. Output: <store>/tables/table_main[_small].{md,tex}
and a .cells.csv naming the run behind every number. Same as `uld table main`.
"""

from __future__ import annotations

import sys

from uld import reporting

TABLE = "main"


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

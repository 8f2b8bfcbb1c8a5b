"""Time one cell stage by stage and report peak RSS.

    python bench/bench_run.py [--defense sdd] [--attack advbench-1k] [--profile smoke] [--workdir /tmp/bench_runs]

Runs ``sdd-bench run`` in a fresh work dir (nothing cached except the dequantized base model,
which is built first and not counted), timestamps every stage from the pipeline log, and
reports the process's peak resident memory.  Targets for the smoke profile on 2 CPU cores:
≤ 12 min per cell, ≤ 6 GB peak RSS.
"""
from __future__ import annotations

import argparse
import resource
import shutil
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--defense", default="sdd")
    ap.add_argument("--attack", default="advbench-1k")
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--workdir", default="/tmp/bench_runs")
    ap.add_argument("--keep", action="store_true", help="keep cached stages from an earlier bench run")
    ap.add_argument("--no-capability", action="store_true")
    args = ap.parse_args()

    from sdd_bench.harness import models, pipeline
    from sdd_bench.leaderboards import cell_cli
    from sdd_bench.harness.store import Store

    wd = Path(args.workdir)
    if wd.exists() and not args.keep:
        for sub in wd.iterdir():
            if sub.name != "model":
                shutil.rmtree(sub)
    store = Store(wd)
    models.materialize(pipeline.resolve(pipeline.spec_from_mapping({"profile": args.profile})).model, store)

    events = []
    t_start = time.perf_counter()

    def log(msg):
        events.append((time.perf_counter() - t_start, msg))
        print(f"[{events[-1][0]:7.1f}s] {msg}", flush=True)

    spec = pipeline.spec_from_mapping({"profile": args.profile, "defense": args.defense, "attack": args.attack,
                                       "capability": not args.no_capability})
    record, art = pipeline.run_cell(spec, store, progress=False, log=log)
    total = time.perf_counter() - t_start
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print()
    print(cell_cli.table(record))
    print(f"\nstage timings ({args.profile}, {args.defense} × {args.attack}):")
    for k, v in record["_wall_seconds_this_invocation"].items():
        print(f"  {k:20s} {v:8.1f} s  ({v / total:5.1%})")
    print(f"total {total / 60:.1f} min (target ≤ 12 min); peak RSS {rss_gb:.2f} GB (target ≤ 6 GB)")


if __name__ == "__main__":
    main()

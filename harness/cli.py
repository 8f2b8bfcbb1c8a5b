"""``sdd-bench`` command line.

Every sub-command is a thin layer over the Python API; errors of the ``SddBenchError``
family are printed as one line (exit 2), without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
import warnings

from .errors import SddBenchError

EPILOG = """examples:
  sdd-bench run --defense sdd --attack advbench-1k            # one cell, smoke profile (SmolLM2, CPU)
  sdd-bench run --profile tiny --defense sdd --attack advbench-10
  sdd-bench generate --model smollm2-135m --dataset beavertails-test --limit 8
  sdd-bench ls defenses | attacks | judges | models | datasets | tasks | backends
  sdd-bench validate configs/example_run.yaml
  sdd-bench grid configs/sdd_grid_smoke.yaml --plan     # a grid: plan, then run (resumable)
  sdd-bench grid configs/sdd_grid_smoke.yaml --max-minutes 90 --publish   # cells that fit; publish each to results/
  sdd-bench report results/smoke --out docs/leaderboard/smoke   # leaderboard from published records
  sdd-bench cache ls ; sdd-bench cache verify ; sdd-bench cache prune
data: set SDD_BENCH_DATA to the benchmark data directory (see README)."""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default=os.environ.get("SDD_BENCH_WORKDIR", "runs"),
                   help="artifact store directory (default ./runs or $SDD_BENCH_WORKDIR)")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1 …")
    p.add_argument("--quiet", action="store_true", help="no progress bars (ours, transformers' and datasets'; lm-eval's have no switch)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sdd-bench", description="Benchmark defenses against harmful fine-tuning of LLMs: "
                                 "defend → evaluate → attack → evaluate → record.",
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")

    p = sub.add_parser("ls", help="list plugins of a kind with one-line descriptions")
    p.add_argument("kind", help="defenses, attacks, judges, models, datasets, tasks or backends")
    p.add_argument("-v", "--verbose", action="store_true", help="also show each plugin's options and defaults")

    p = sub.add_parser("validate", help="validate a run or grid YAML config without running it (options, "
                       "finite numbers, judge options and credentials, checksums of every data file its cells read "
                       "including capability tasks, prompt overlaps); reports progress on a large grid")
    p.add_argument("config")

    p = sub.add_parser("generate", help="generate answers of a model on a dataset's prompts (cached artifact)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dataset", required=True)
    p.add_argument("--limit", type=int, default=None, help="first N prompts")
    p.add_argument("--template", default="chat", help="chat | alpaca | plain")
    p.add_argument("--backend", default="hf")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    _add_common(p)

    p = sub.add_parser("cache", help="inspect or prune the artifact store")
    csub = p.add_subparsers(dest="cache_cmd", metavar="ACTION")
    c = csub.add_parser("ls", help="list artifacts")
    c.add_argument("--workdir", default=os.environ.get("SDD_BENCH_WORKDIR", "runs"))
    c = csub.add_parser("verify", help="hash every artifact against its manifest; move damaged ones and ones without a "
                                       "manifest (written before manifests: unverifiable) aside, so they are rebuilt "
                                       "on the next run; exit 1 if any could not be proven intact")
    c.add_argument("--workdir", default=os.environ.get("SDD_BENCH_WORKDIR", "runs"))
    c.add_argument("--dry-run", action="store_true", help="report only, move nothing")
    c.add_argument("--adopt", action="store_true",
                   help="keep artifacts without a manifest whose structural checks pass (JSON/JSONL parse, row counts "
                        "against their summary, safetensors headers and tensor sizes) and write them a manifest; "
                        "those that fail are corrupt (README: legacy artifacts)")
    c = csub.add_parser("prune", help="remove incomplete, temp and corrupt artifacts (never a live run's temp dir; "
                                      "with options, complete ones too)")
    c.add_argument("--workdir", default=os.environ.get("SDD_BENCH_WORKDIR", "runs"))
    c.add_argument("--stage", help="remove every artifact of this stage")
    c.add_argument("--older-than", type=float, metavar="DAYS",
                   help="remove complete artifacts older than DAYS (a positive number; --all removes everything)")
    c.add_argument("--all", action="store_true", help="remove everything")
    c.add_argument("--dry-run", action="store_true")

    p = sub.add_parser("data", help="check the data directory: files, checksums, partition overlaps")
    p.add_argument("action", choices=["check"], nargs="?", default="check")

    for modname in EXTENSIONS:
        mod = importlib.import_module(modname)
        COMMANDS.update(mod.register_cli(sub, _add_common))
    return ap


# Modules that add sub-commands: each has ``register_cli(sub, add_common) -> {name: handler}``.
EXTENSIONS = ("sdd_bench.leaderboards.cell_cli", "sdd_bench.harness.grid", "sdd_bench.harness.publish",
              "sdd_bench.harness.capability", "sdd_bench.judges.cli", "sdd_bench.leaderboards.report",
              "sdd_bench.leaderboards.regress")


def _flag_names(parser: argparse.ArgumentParser, out: dict | None = None) -> dict[str, str]:
    """dest → how the user wrote it (``--workdir``, or the positional's metavar), over every sub-command."""
    out = {} if out is None else out
    for a in parser._actions:  # argparse keeps no public list of a parser's actions
        if isinstance(a, argparse._SubParsersAction):
            for sp in a.choices.values():
                _flag_names(sp, out)
        elif a.dest not in out:
            out[a.dest] = a.option_strings[-1] if a.option_strings else (a.metavar or a.dest)
    return out


def check_empty_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """No option takes an empty string: ``--workdir ""`` would write the store into the current directory,
    ``--out ""`` nowhere.  One line naming the option (an unset environment default such as
    ``SDD_BENCH_WORKDIR=`` is caught here too)."""
    names = None
    for dest, value in vars(args).items():
        vals = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and not v.strip() for v in vals):
            names = names or _flag_names(ap)
            flag = names.get(dest, dest)
            env = " (or the environment variable SDD_BENCH_WORKDIR, which is set but empty)" if dest == "workdir" else ""
            raise SddBenchError(f"{flag} is empty{env}; give a value, or leave the option out for its default.")


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not args.cmd:
        ap.print_help()
        return 0
    try:
        check_empty_args(ap, args)
    except SddBenchError as err:
        print(f"sdd-bench: error: {err}", file=sys.stderr)
        return 2
    # library deprecation notices (transformers' gradient_checkpointing → activation_checkpointing renames, raised
    # inside Trainer) say nothing to a benchmark user; our own calls use the current names
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft|trl)(\..*)?$")
    quiet = getattr(args, "quiet", False)
    if quiet:  # also the libraries' own bars (transformers' "Loading weights", datasets' maps); restored on return,
        import datasets  # since main() also runs in-process (tests)
        from transformers.utils import logging as hf_logging
        bars = (hf_logging.is_progress_bar_enabled(), datasets.is_progress_bar_enabled())
        hf_logging.disable_progress_bar()
        datasets.disable_progress_bars()
    try:
        return int(COMMANDS[args.cmd](args) or 0)
    except SddBenchError as err:
        print(f"sdd-bench: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # I/O, permissions, disk full: one line naming the path and the fix
        from .store import os_error_line
        print(f"sdd-bench: error: {os_error_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # a library's wrapped I/O error (SafetensorError on a full disk): one line too
        from .store import as_os_error, os_error_line
        oserr = as_os_error(err)
        if oserr is None:
            raise
        print(f"sdd-bench: error: {os_error_line(oserr)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdd-bench: interrupted; finished stages are kept in the store, unfinished ones were discarded.",
              file=sys.stderr)
        return 130
    finally:
        if quiet:
            if bars[0]:
                hf_logging.enable_progress_bar()
            if bars[1]:
                datasets.enable_progress_bars()


def cmd_ls(args) -> int:
    from . import plugins
    from .registry import registry
    plugins.declare()
    reg = registry(args.kind)
    for name, desc in reg.describe():
        print(f"{name:24s} {desc}")
        if args.verbose:
            obj = reg.get(name)
            cfg = getattr(obj, "Config", None)
            if cfg is not None:
                from .config import describe
                for fname, ftype, default, doc in describe(cfg):
                    print(f"    {fname} ({ftype}, default {default!r}): {doc}")
    return 0


def cmd_validate(args) -> int:
    from . import pipeline
    from .config import load_yaml
    data = load_yaml(args.config)
    from . import grid
    if grid.is_grid(data):
        cells: list = []
        g = grid.grid_from_mapping(data, where=args.config, cells_out=cells,
                                   progress=grid.Progress(f"validate {args.config}: expanded"))
        # every cell's data files (checksums; cached after the first cell), overlaps, judges' data and credentials
        grid.preflight_cells(cells, what=f"validate {args.config}: checked")
        big = f"; more than {grid.CONFIRM_CELLS}, so `grid` runs it only with --yes" \
            if len(cells) > grid.CONFIRM_CELLS else ""
        print(f"{args.config}: valid grid {g.name!r} ({len(cells)} cells, profile {g.profile}{big})")
        return 0
    summary = pipeline.validate_config(data, where=args.config)
    print(f"{args.config}: valid ({summary})")
    return 0


def cmd_generate(args) -> int:
    from . import data, models
    from .config import build
    from .generation import GenConfig, generate_stage
    from .store import Store, read_jsonl

    t0 = time.time()
    store = Store(args.workdir)
    store.check_no_legacy()
    cfg = build(GenConfig, {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
                            "do_sample": args.sample, "temperature": args.temperature, "top_p": args.top_p,
                            "seed": args.seed}, where="generate options")
    rows = data.load(args.dataset)
    if args.limit is not None:
        if args.limit < 1:
            raise SddBenchError(f"--limit must be >= 1, got {args.limit}.")
        rows = rows[:args.limit]
    ref = models.materialize(args.model, store)
    art, hit = generate_stage(store, ref, [r["prompt"] for r in rows], dataset=args.dataset, template=args.template,
                              cfg=cfg, backend=args.backend, device=args.device, progress=not args.quiet,
                              extra_spec={"limit": args.limit, "data": data.get(args.dataset).fingerprints()})
    summ = json.loads((art.path / "summary.json").read_text())
    gens = read_jsonl(art.path / "generations.jsonl")
    print(f"{'cache hit' if hit else 'generated'}: {art.path}  ({time.time() - t0:.1f}s)")
    print(f"model {ref.name}  dataset {args.dataset}  n={summ['n']}  template {summ['template']['name']}  "
          f"tokens {summ['completion_tokens']}  finish {summ['finish_reasons']}  "
          f"{(summ['tokens_per_s'] or 0):.1f} tok/s")
    bi = summ.get("backend_info") or {}
    if bi.get("engine"):
        print(f"backend {bi.get('backend')}: {bi.get('engine')} {bi.get('engine_version')} on {bi.get('platform')}, "
              f"dtype {bi.get('dtype')}")
    for g in gens[:20]:
        ans = " ".join(g["text"].split())
        print(f"  [{g['id']:3d}] {g['finish_reason']:6s} {g['completion_tokens']:4d} tok | {ans[:90]}")
    return 0


def cmd_cache(args) -> int:
    from .store import LEGACY, MANIFEST, Store
    store = Store(args.workdir)
    if args.cache_cmd in (None, "ls"):
        rows = store.list(check=True)  # sizes against each manifest; `cache verify` also hashes
        total = 0
        for r in rows:
            total += r["bytes"]
            state = (("LEGACY" if r.get("problem") == LEGACY else "CORRUPT") if r.get("problem") else "ok") \
                if r["complete"] else ("CORRUPT" if r["corrupt"] else "INCOMPLETE")
            print(f"{r['stage']:12s} {r['key']:34s} {r['bytes'] / 1e6:10.1f} MB  {state:10s} "
                  f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(r['mtime']))}")
        print(f"{len(rows)} artifacts, {total / 1e6:.1f} MB in {store.root}")
        for r in rows:
            if r.get("problem") == LEGACY:
                print(f"LEGACY {r['stage']}/{r['key']}: {r['problem']} (`sdd-bench cache verify --adopt` checks its "
                      f"structure and keeps it; `sdd-bench cache verify` moves it aside to be rebuilt)")
            elif r.get("problem"):
                print(f"CORRUPT {r['stage']}/{r['key']}: {r['problem']} (`sdd-bench cache verify` moves it aside; "
                      f"the next run rebuilds it)")
        return 0
    if args.cache_cmd == "verify":
        n = sum(r["complete"] for r in store.list())
        adopted: list = []
        bad = store.verify(move_aside=not args.dry_run, adopt=args.adopt and not args.dry_run, adopted=adopted)
        aside = "" if args.dry_run else " (moved aside)"
        for r in adopted:
            print(f"ADOPTED {r['stage']}/{r['key']}: no {MANIFEST}; its structural checks pass, a manifest was written")
        for r in bad:
            if r["legacy"]:
                print(f"UNVERIFIABLE {r['stage']}/{r['key']}: {r['problem']}{aside}; "
                      f"`--adopt` keeps it if its structural checks pass")
            else:
                print(f"CORRUPT {r['stage']}/{r['key']}: {r['problem']}{aside}")
        nleg = sum(r["legacy"] for r in bad)
        print(f"verified {n} artifacts in {store.root}: {n - len(bad)} ok"
              + (f" ({len(adopted)} adopted)" if adopted else "")
              + f", {len(bad) - nleg} corrupt, {nleg} unverifiable")
        return 1 if bad else 0
    if args.older_than is not None and not (math.isfinite(args.older_than) and args.older_than > 0):
        raise SddBenchError(f"--older-than must be a positive number of days, got {args.older_than:g}; "
                            f"to remove every artifact use --all.")
    removed = store.prune(stage=args.stage, older_than_s=args.older_than * 86400 if args.older_than else None,
                          everything=args.all, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for r in removed:
        print(f"{verb} {r['stage']}/{r['key']} ({r['bytes'] / 1e6:.1f} MB)")
    print(f"{verb} {len(removed)} artifacts")
    return 0


def cmd_data(args) -> int:
    from . import data
    bad = 0
    for rel in data.FILES:
        try:
            fp = data.fingerprint(rel)
            print(f"ok       {rel} ({fp['rows']} rows)")
        except SddBenchError as err:
            bad += 1
            print(f"PROBLEM  {err}")
    if not bad:
        groups = {k: [r["prompt"] for r in data.load(k)] for k in
                  ("beavertails-defense", "beavertails-attack", "beavertails-judge", "beavertails-test", "xstest", "advbench")}
        rep = data.overlap_report(groups)
        print(json.dumps(rep, indent=1))
    print(f"data dir {data.data_dir()}: {len(data.FILES) - bad}/{len(data.FILES)} files ok")
    return 1 if bad else 0


COMMANDS = {"ls": cmd_ls, "validate": cmd_validate, "generate": cmd_generate, "cache": cmd_cache, "data": cmd_data}

if __name__ == "__main__":
    sys.exit(main())

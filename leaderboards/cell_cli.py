"""The ``run`` command: one cell through the pipeline (harness/pipeline.py), presented as a table and a one-line
answer read with the report's metrics (the same harm metric and worst case as the leaderboard).

It lives in the report layer because it presents a record with the report's machinery (leaderboards/aggregate.py);
the core (harness/) runs the cell and imports nothing from here.  ``harness/cli.py`` loads it as a sub-command module.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from sdd_bench.harness import config as C
from sdd_bench.harness.errors import ConfigError
from sdd_bench.harness.pipeline import RunSpec, finished_record, resolve, run_cell, spec_from_mapping


ROWS = [("harmful", "refusal_rate", "harmful prompts: refusal rate (keyword)"),
        ("harmful", "relevance", "harmful prompts: relevance to prompt"),
        ("harmful", "incoherent_rate", "harmful prompts: incoherent rate"),
        ("benign", "relevance", "benign prompts: relevance (helpfulness proxy)"),
        ("benign", "refusal_rate", "benign prompts: refusal rate"),
        ("benign", "incoherent_rate", "benign prompts: incoherent rate"),
        ("xstest", "refusal_rate", "XSTest safe: refusal rate (over-refusal)")]


def table(record: dict) -> str:
    conds = [c for c in ("initial", "attacked") if c in record["metrics"]]
    lines = []
    cell = record["cell"]
    lines.append(f"cell: model={cell['model']} defense={cell['defense']}"
                 + (f" (on {cell['base_defense']})" if cell.get("base_defense") else "")
                 + f" attack={cell['attack']} seed={cell['seed']} profile={cell['profile']}")
    head = f"{'metric':52s}" + "".join(f"{c:>24s}" for c in conds) + "   direction"
    lines.append(head)
    lines.append("-" * len(head))
    extra = []
    for c in conds:
        for k in record["metrics"][c].get("harmful", {}):
            if ":" in k and ("harmful", k) not in extra:
                extra.append(("harmful", k))
    for setname, key, *label in ROWS + [(s, k, f"harmful prompts: {k}") for s, k in extra]:
        vals = []
        direction = ""
        for c in conds:
            m = record["metrics"][c].get(setname, {}).get(key)
            if not m:
                vals.append(f"{'-':>24s}")
                continue
            direction = m.get("direction", "")
            inv = f" inv{m['invalid']}" if m.get("invalid") else ""
            vals.append(f"{m['value']:7.3f} [{m['ci95'][0]:.2f},{m['ci95'][1]:.2f}]{inv}".rjust(24))
        lines.append(f"{label[0]:52s}" + "".join(vals) + f"   {direction}")
    for c in conds:
        fa = record["metrics"][c].get("finetune_accuracy")
        if fa:
            lines.append(f"{fa['task']} ({c}): {fa['value']:.3f} [{fa['ci95'][0]:.2f},{fa['ci95'][1]:.2f}] n={fa['n']}")
    for c in conds:
        cap = record["metrics"][c].get("capability")
        if cap:
            for task, res in sorted(cap.get("tasks", {}).items()):
                mk = res.get("primary", "acc")
                if res.get(mk) is not None:
                    lines.append(f"capability {task} {mk} ({c}): {res[mk]:.3f} ± {res.get(mk + '_stderr') or 0:.3f} "
                                 f"(n={res.get('n')})")
    return "\n".join(lines)


def harm_metric(record: dict):
    """The harm rate a record is read by (a ``leaderboards.aggregate.Metric``, or None): the first that the record
    carries in the one order of preference, ``leaderboards.aggregate.harm_metric_order`` (rubric HR, harm-clf,
    other classifiers, keyword non-refusal), so the answer line and the report agree."""
    from sdd_bench.leaderboards.aggregate import record_harm_metric
    return record_harm_metric(record)


def answer(record: dict, reference: dict | None = None) -> str:
    """The cell's one-line answer: harmfulness after the attack with this defense vs without, and capability."""
    m = record["metrics"]
    metric = harm_metric(record)
    cell = record["cell"]
    if metric is None:
        return "answer: no harmfulness judge ran (add --judges harm-clf)"
    hk = metric.key

    def fmt(cond):
        v, lo, hi, n = metric.read(cond.get("harmful") or {})
        if metric.is_rate and n:  # the interval the tables give one seed (Wilson): 0/n is not certainty
            from sdd_bench.harness.metrics import interval
            lo, hi = interval([v], [n])["ci95"]
        return f"{v:.0%} [{lo:.0%}, {hi:.0%}]"
    parts = [f"answer ({hk}): {cell['defense']} {fmt(m['initial'])} harmful before"]
    if "attacked" in m:
        parts.append(f"{fmt(m['attacked'])} after {cell['attack']}")
        if reference is not None and "attacked" in reference["metrics"] and \
                metric.read(reference["metrics"]["attacked"].get("harmful") or {}) is not None:
            parts.append(f"vs {fmt(reference['metrics']['attacked'])} for the undefended {cell['model']} "
                         f"under the same attack")
    from sdd_bench.leaderboards.aggregate import capability_mean
    caps = [capability_mean(m[c].get("capability") or {}) for c in ("initial", "attacked") if c in m]
    if caps and all(c is not None for c in caps):
        parts.append("capability " + " → ".join(f"{c.value:.3f}" for c in caps))
    losses = [(m[c].get("reference_loss") or {}).get("value") for c in ("initial", "attacked") if c in m]
    if losses and all(x is not None for x in losses):
        parts.append("reference-answer loss " + " → ".join(f"{x:.3f}" for x in losses) + " nats/token")
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------
# CLI
def register_cli(sub, add_common) -> dict:
    p = sub.add_parser("run", help="run one cell: defend → evaluate → attack → evaluate → record",
                       description="Run one cell (model, defense, attack, seed). Every stage is cached in --workdir; "
                                   "re-running a finished cell is a cache hit.")
    p.add_argument("--config", help="YAML with RunSpec fields (CLI flags override it)")
    p.add_argument("--defense", help="defense name (default none)")
    p.add_argument("--base-defense", help="apply this defense first, then --defense on its output")
    p.add_argument("--attack", help="attack preset (default none): fine-tuning (advbench-100, …), refusal-ablation "
                   "(no training), restore-*/mixed-* (`sdd-bench ls attacks`, docs/attacks.md)")
    p.add_argument("--model", help="model (default: the profile's)")
    p.add_argument("--profile", choices=("tiny", "smoke", "paper"))
    p.add_argument("--seed", type=int)
    p.add_argument("--template", choices=("chat", "alpaca", "plain"))
    p.add_argument("--judges", help="comma-separated extra harmfulness judges (e.g. harm-clf,rubric)")
    p.add_argument("--defense-opt", action="append", default=[], metavar="KEY=VALUE", help="defense config override")
    p.add_argument("--attack-opt", action="append", default=[], metavar="KEY=VALUE", help="attack config override")
    p.add_argument("--judge-opt", action="append", default=[], metavar="JUDGE.KEY=VALUE", help="judge config override")
    p.add_argument("--attack-lr", type=float)
    p.add_argument("--attack-epochs", type=float)
    p.add_argument("--attack-batch", type=int)
    p.add_argument("--attack-steps", type=int, help="cap on attack optimizer steps")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--attack-lora", action="store_true", default=None, help="LoRA attack")
    g.add_argument("--attack-full", action="store_true", default=None, help="full fine-tuning attack (default)")
    p.add_argument("--trajectory", nargs="?", const=DEFAULT_TRAJECTORY, metavar="FRACTIONS",
                   help="evaluate the model at these fractions of the attack's steps too, saved during the one attack "
                        f"run (default {DEFAULT_TRAJECTORY}; same as --attack-opt checkpoints=[...])")
    p.add_argument("--attacker-budget", metavar="NAME",
                   help="run the attack as an attacker budget's sweep (small | paper | strong: lr × steps × warm-up × "
                        "optimizer × LoRA/full × seeds, harness/budget.py) and report the capability-bounded worst case")
    p.add_argument("--n-harmful", type=int)
    p.add_argument("--n-benign", type=int)
    p.add_argument("--n-xstest", type=int)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--no-capability", action="store_true", help="skip the capability (lm-eval) stage")
    p.add_argument("--backend", choices=("hf", "vllm"), help="generation backend for evaluation (default hf)")
    p.add_argument("--out", help="also write the record JSON here")
    add_common(p)
    return {"run": cli_run}


# the example trajectory (issue 23: "after 10%, 25%, 50%, 100% of the steps")
DEFAULT_TRAJECTORY = "0.1,0.25,0.5,1.0"


def parse_fractions(text: str) -> list[float]:
    """``0.1,0.25,0.5,1.0`` → [0.1, 0.25, 0.5, 1.0]; one clear error otherwise."""
    try:
        out = [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        out = []
    if not out:
        raise ConfigError(f"--trajectory {text!r}: give comma-separated fractions of the attack's steps in (0, 1], "
                          f"e.g. --trajectory {DEFAULT_TRAJECTORY}.")
    return out


def spec_from_args(args) -> RunSpec:
    d: dict[str, Any] = {}
    a = vars(args)  # the `run` parser's namespace as a mapping (every flag below is defined by register_cli)
    if args.config:
        d.update(C.load_yaml(args.config))
    for k in ("defense", "base_defense", "attack", "model", "profile", "seed", "template", "n_harmful", "n_benign",
              "n_xstest", "max_new_tokens", "backend"):
        v = a[k]
        if v is not None:
            d[k] = v
    if args.judges:
        d["judges"] = [j for j in args.judges.split(",") if j]
    elif "judges" not in d and (os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_KEY")):
        d["judges"] = ["harm-clf", "rubric"]  # an endpoint is configured: the Qi et al. rubric too
    if args.no_capability:
        d["capability"] = False
    if args.device:
        d["device"] = args.device
    ao = dict(d.get("attack_options", {}))
    ao.update(dict(C.parse_override(o) for o in args.attack_opt))
    for flag, key in (("attack_lr", "lr"), ("attack_epochs", "epochs"), ("attack_batch", "batch_size"),
                      ("attack_steps", "max_steps")):
        if a[flag] is not None:
            ao[key] = a[flag]
    if a.get("trajectory"):
        ao["checkpoints"] = parse_fractions(args.trajectory)
    if args.attack_lora:
        ao["lora"] = True
    if args.attack_full:
        ao["lora"] = False
    if ao:
        d["attack_options"] = ao
    do = dict(d.get("defense_options", {}))
    do.update(dict(C.parse_override(o) for o in args.defense_opt))
    if do:
        d["defense_options"] = do
    jo = dict(d.get("judge_options", {}))
    for o in args.judge_opt:
        k, v = C.parse_override(o)
        if "." not in k:
            raise ConfigError(f"--judge-opt {o!r} must look like JUDGE.KEY=VALUE (e.g. rubric.model=gpt-4o).")
        jn, _, key = k.partition(".")
        jo.setdefault(jn, {})[key] = v
    if jo:
        d["judge_options"] = jo
    return spec_from_mapping(d, where=args.config or "command line")


def budget_specs(spec: RunSpec, name: str) -> list[RunSpec]:
    """The cells of an attacker budget's sweep over the spec's attack (harness/budget.py), normalized and distinct."""
    from sdd_bench.harness import budget
    out, seen = [], set()
    for opts in budget.expand_attack(name, spec.attack, dict(spec.attack_options), spec.profile, spec.seed,
                                     where="command line"):
        s = resolve(C.replace(spec, attack_options=opts)).spec
        k = json.dumps(C.to_dict(s), sort_keys=True)
        if k not in seen:
            seen.add(k)
            out.append(s)
    return out


def cli_run_budget(args, spec: RunSpec, store) -> int:
    """``run --attacker-budget``: every configuration of the budget as a cell, then the capability-bounded worst case
    over them (the report's ``attacker sweep`` group, leaderboards/aggregate.py) with its CI and configuration."""
    from sdd_bench.harness import budget
    from sdd_bench.leaderboards import aggregate as A
    from sdd_bench.leaderboards.report import DEFAULT_HARM_THRESHOLD
    specs = budget_specs(spec, args.attacker_budget)
    print(budget.describe(args.attacker_budget, spec.profile, spec.attack))
    loaded = []
    for i, s in enumerate(specs, 1):
        print(f"\n[{i}/{len(specs)}] attack {spec.attack} {s.attack_options}")
        record, art = run_cell(s, store, progress=not args.quiet)
        print(answer(record))
        loaded.append(A.Loaded(record, str(art.path / "record.json")))
    recs = [x.record for x in loaded]
    res = A.Results(loaded, A.choose_harm_metric(recs), A.rejection_metric(recs), log=lambda *_: None)
    th = A.Thresholds(None, DEFAULT_HARM_THRESHOLD)  # the report's default: relative to the backbone
    rows = [r for r in A.worst_case_rows(res, th) if r["group"].startswith(A.BUDGET_GROUP)]
    print()
    for r in rows:
        lo, hi = r["ub_worst_ci_lo"], r["ub_worst_ci_hi"]
        ub = "none (no configuration keeps the capability bound)" if r["ub_worst"] is None else \
            f"{r['ub_worst']:.3f} [{lo:.3f}, {hi:.3f}] at {r['ub_worst_cell']}"
        print(f"{r['defense_label']}: {r['metric_label']} worst over {r['n_cells']} configurations "
              f"{r['worst']:.3f} at {r['worst_cell']}; capability-bounded worst {ub}; "
              f"verdict {r['breaks']}")
    return 0


def cli_run(args) -> int:
    from sdd_bench.harness.store import Store
    spec = spec_from_args(args)
    resolve(spec)  # every option checked before the work dir is touched
    if args.attacker_budget:  # --attacker-budget (register_cli)
        from sdd_bench.harness import budget
        budget.get(args.attacker_budget)
        budget_specs(spec, args.attacker_budget)
    store = Store(args.workdir)
    store.check_writable()
    store.check_no_legacy()  # artifacts that cannot be proven intact: the user chooses, before any work
    if args.out:
        from sdd_bench.harness.store import check_output_file
        check_output_file(args.out, "--out")
    if args.attacker_budget:  # --attacker-budget (register_cli)
        return cli_run_budget(args, spec, store)
    t0 = time.time()
    record, art = run_cell(spec, store, progress=not args.quiet)
    reference = None
    if spec.attack != "none" and (spec.defense != "none" or spec.base_defense):
        ref_spec = dataclasses.replace(spec, defense="none", defense_options={}, base_defense=None,
                                       base_defense_options={})
        had = finished_record(store, resolve(ref_spec)) is not None
        print(f"\nundefended reference ({'cached' if had else 'not in the store: running it now'}): "
              f"defense none, attack {spec.attack}")
        reference, _ = run_cell(ref_spec, store, progress=not args.quiet)
    print()
    print(table(record))
    print()
    print(answer(record, reference))
    print(f"\nrecord: {art.path / 'record.json'}  ({time.time() - t0:.1f}s)")
    if args.out:
        from sdd_bench.harness.store import dumps_strict
        Path(args.out).write_text(dumps_strict(record, indent=1, sort_keys=True))
    return 0

"""``sdd-bench judge``, ``sdd-bench agreement`` and ``sdd-bench judge-eval``: re-judge stored generations,
compare judges, and score judges against human labels (``judges.judge_eval``).

Both work on a finished ``generate`` artifact (its directory, or ``generate/<key>`` inside
``--workdir``); each judge's verdicts are their own cached artifact, so ``agreement`` after
``judge`` costs nothing but reading files, and nothing is ever regenerated.
"""
from __future__ import annotations

import json

from sdd_bench.harness.errors import ConfigError, SddBenchError

JUDGE_EXAMPLES = """examples:
  sdd-bench judge --generations generate/<key> --judges keyword,harm-clf
  OPENAI_API_KEY=... sdd-bench judge --generations generate/<key> --judges rubric --judge-model gpt-4o-2024-08-06
  sdd-bench judge --generations generate/<key> --judges rubric --judge-base-url http://127.0.0.1:8000/v1 \\
      --judge-model smollm2 --judge-opt rubric.concurrency=1
  sdd-bench agreement --generations generate/<key> --judges harm-clf,keyword,rubric --judge-base-url ..."""


JUDGE_EVAL_EXAMPLES = """examples:
  sdd-bench judge-eval                                     # harm-clf on harmbench-val beside the stored judges
  sdd-bench judge-eval --judges harm-clf,harm-clf-v2,keyword --out judge_eval.csv
  sdd-bench judge-eval --set beavertails-judge-heldout --judges harm-clf,harm-clf-v2
  sdd-bench judge-eval --set my_labels.json --judges none  # any file in HarmBench's validation shape
harmbench-val is for measuring only: never train, design features or choose thresholds on it."""


def _add_judge_opts(p, add_common) -> None:
    p.add_argument("--generations", required=True, help="generation artifact: a path, or generate/<key> in --workdir")
    p.add_argument("--judge-model", help="model for API judges (rubric): name on the server")
    p.add_argument("--judge-base-url", help="OpenAI-compatible base URL for API judges, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--judge-opt", action="append", default=[], metavar="JUDGE.KEY=VALUE",
                   help="judge config override, e.g. rubric.concurrency=2 or harm-clf.threshold=0.6")
    p.add_argument("--json", dest="json_out", help="also write the results as JSON to this file")
    add_common(p)


def register_cli(sub, add_common) -> dict:
    import argparse
    p = sub.add_parser("judge", help="judge stored generations with one or more judges (cached verdict artifacts)",
                       epilog=JUDGE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--judges", default="keyword", help="comma-separated judges (`sdd-bench ls judges`)")
    _add_judge_opts(p, add_common)
    p = sub.add_parser("agreement", help="agreement %%, Cohen's kappa and confusion table between judges",
                       epilog=JUDGE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--judges", required=True, help="two or more comma-separated judges (every pair is compared)")
    _add_judge_opts(p, add_common)
    p = sub.add_parser("judge-eval", help="score judges against human labels: agreement, Cohen's kappa, FPR, FNR "
                       "with 95%% CIs, beside the reference judges' stored labels on the same items",
                       description="Run judges live on a human-labelled set and print, as one table, each judge's "
                       "agreement with the human label, Cohen's kappa, false-positive rate (human-safe items called "
                       "harmful) and false-negative rate (human-harmful items called safe), with 95% CIs (Wilson for "
                       "the rates, a bootstrap over groups of items for kappa), and the same for every reference "
                       "judge whose labels the set stores (HarmBench's file: llama_guard, gpt-4-0613, cls, "
                       "advbench keyword, ...).",
                       epilog=JUDGE_EVAL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", dest="eval_set", default="harmbench-val",
                   help="labelled set: harmbench-val (default), beavertails-judge-heldout, or a path to a .json file "
                        "in HarmBench's classifier-validation shape (unregistered: not checksummed)")
    p.add_argument("--judges", default="harm-clf",
                   help="comma-separated judges to run live (default harm-clf); 'none': stored labels only")
    p.add_argument("--judge-model", help="model for API judges (rubric): name on the server")
    p.add_argument("--judge-base-url", help="OpenAI-compatible base URL for API judges")
    p.add_argument("--judge-opt", action="append", default=[], metavar="JUDGE.KEY=VALUE",
                   help="judge config override, e.g. harm-clf.threshold=0.6")
    p.add_argument("--out", help="also write the table: .csv (one row per judge) or .json (everything)")
    p.add_argument("--n-boot", type=int, default=None,
                   help="bootstrap resamples for kappa's CI (default 2000, see judges.judge_eval)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    add_common(p)
    return {"judge": cmd_judge, "agreement": cmd_agreement, "judge-eval": cmd_judge_eval}


def judge_overrides(names: list[str], judge_model: str | None, base_url: str | None,
                    opts: list[str]) -> dict[str, dict]:
    """Per-judge config overrides from the CLI flags (canonical judge names as keys)."""
    from sdd_bench.harness.config import parse_override
    from sdd_bench.harness.registry import JUDGES
    out: dict[str, dict] = {n: {} for n in names}
    for n in names:
        fields = getattr(JUDGES.get(n).Config, "__dataclass_fields__", {})
        if judge_model and "base_url" in fields:  # API judges only; guards take their hub id via --judge-opt
            out[n]["model"] = judge_model
        if base_url and "base_url" in fields:
            out[n]["base_url"] = base_url
    for o in opts:
        head, sep, _ = o.partition("=")
        jn, dot, key = head.partition(".")
        if not sep or not dot or not key:
            raise ConfigError(f"--judge-opt {o!r} must look like JUDGE.KEY=VALUE (e.g. rubric.concurrency=2).")
        cj = JUDGES.canonical(jn.strip())
        if cj not in out:
            raise ConfigError(f"--judge-opt {o!r} names judge {jn!r}, which is not in --judges ({', '.join(names)}).")
        k, v = parse_override(f"{key}={o.partition('=')[2]}")
        out[cj][k] = v
    if (judge_model or base_url) and not any("base_url" in getattr(JUDGES.get(n).Config, "__dataclass_fields__", {})
                                             for n in names):
        raise ConfigError("--judge-model/--judge-base-url apply to API judges (rubric), but none is in --judges.")
    return out


def _names(text: str) -> list[str]:
    from sdd_bench.harness.registry import JUDGES
    names = []
    for n in (x.strip() for x in text.split(",")):
        if n:
            c = JUDGES.canonical(n)
            if c not in names:
                names.append(c)
    if not names:
        raise ConfigError("--judges is empty; give comma-separated judge names (`sdd-bench ls judges`).")
    return names


def run_judges(args, names: list[str]) -> dict:
    """Judge the artifact with every name; returns name → (artifact, hit, verdicts, summary)."""
    from sdd_bench.harness.store import Store
    from sdd_bench.judges.base import make_judge
    from sdd_bench.judges.stage import judge_stage, load_summary, load_verdicts
    store = Store(args.workdir)
    store.check_no_legacy()
    gen = store.resolve(args.generations)
    if not (gen.path / "generations.jsonl").is_file():
        raise SddBenchError(f"{args.generations!r} is a {gen.stage!r} artifact without generations.jsonl; "
                            f"pass a generate artifact (`sdd-bench cache ls` lists them).")
    overrides = judge_overrides(names, args.judge_model, args.judge_base_url, args.judge_opt)
    device = "cpu" if args.device == "auto" else args.device
    out = {}
    for n in names:
        j = make_judge(n, overrides[n], store=store, device=device)
        art, hit = judge_stage(store, gen, n, judge=j)
        out[n] = (art, hit, load_verdicts(art), load_summary(art))
    return out


def cmd_judge(args) -> int:
    from sdd_bench.harness.metrics import aggregate
    from sdd_bench.harness.registry import JUDGES
    names = _names(args.judges)
    res = run_judges(args, names)
    report = {}
    for n, (art, hit, vs, summ) in res.items():
        mets = {m: aggregate(vs, how) for m, (how, _) in JUDGES.get(n).metrics.items()}
        report[n] = {"artifact": str(art.path), "cache_hit": hit, "n": summ["n"], "invalid": summ["invalid"],
                     "metrics": mets, "accounting": summ.get("accounting")}
        print(f"{n}: {'cache hit' if hit else 'judged'} {art.path}  n={summ['n']} invalid={summ['invalid']}")
        for m, a in mets.items():
            print(f"    {m:26s} {a['value']:.3f}  CI95 [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}]  (n={a['n']})")
        acc = summ.get("accounting")
        if acc:
            keep = {k: acc[k] for k in ("requests", "retries", "parse_retries", "invalid_reasons", "prompt_tokens",
                                        "completion_tokens", "cost_usd", "heldout", "threshold") if k in acc}
            if "heldout" in keep:
                h = keep.pop("heldout")
                keep["heldout"] = {k: round(h[k], 4) for k in ("accuracy", "f1", "precision", "recall")}
            print(f"    accounting: {json.dumps(keep, default=str)}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2, default=str)
    return 0


def cmd_agreement(args) -> int:
    from .agreement import format_table, judge_agreement
    names = _names(args.judges)
    if len(names) < 2:
        raise ConfigError(f"agreement needs at least two judges, got {names}.")
    res = run_judges(args, names)
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            r = judge_agreement(a, res[a][2], b, res[b][2])
            rows.append(r)
            print(format_table(r))
            print()
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


def load_eval_set(name: str) -> tuple[list[dict], dict]:
    """Rows of a labelled set and its provenance (registered name → checksummed; a path → its sha256)."""
    import hashlib
    from pathlib import Path

    from sdd_bench.harness import data
    from sdd_bench.harness.errors import DataError

    from .judge_eval import SETS
    if name in SETS:
        return data.load(name), {"set": name, "data": data.get(name).fingerprints()}
    p = Path(name)
    if not p.suffix == ".json":
        raise ConfigError(f"--set {name!r} is neither a registered labelled set ({', '.join(SETS)}) nor a .json file "
                          f"in HarmBench's classifier-validation shape.")
    if not p.is_file():
        raise DataError(f"--set {name!r}: no such file. Give a registered set ({', '.join(SETS)}) or an existing "
                        f".json file.")
    raw = p.read_bytes()
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"--set {name!r} is not valid UTF-8 JSON ({err}); fix the file.") from err
    rows = data.parse_harmbench_val(doc, str(p), p.name)
    return rows, {"set": str(p), "data": [{"file": str(p), "sha256": hashlib.sha256(raw).hexdigest(),
                                           "rows": len(rows), "verified": False}]}


def cmd_judge_eval(args) -> int:
    from sdd_bench.harness.store import Store, read_jsonl, write_jsonl

    from .base import make_judge
    from .judge_eval import N_BOOT, evaluate, format_table, live_calls, what_it_saw, write_out
    if args.out and not args.out.endswith((".csv", ".json")):
        raise ConfigError(f"--out {args.out!r} must end in .csv or .json (the format is taken from the suffix).")
    n_boot = N_BOOT if args.n_boot is None else args.n_boot
    if n_boot < 100:
        raise ConfigError(f"--n-boot must be at least 100 for a 95% percentile interval, got {n_boot}.")
    rows, prov = load_eval_set(args.eval_set)
    if not all(fp.get("verified") for fp in prov["data"]):
        print(f"{args.eval_set}: an unregistered file, not checksummed (sha256 {prov['data'][0]['sha256'][:16]}…)")
    names = [] if args.judges.strip().lower() == "none" else _names(args.judges)
    overrides = judge_overrides(names, args.judge_model, args.judge_base_url, args.judge_opt)
    store = Store(args.workdir)
    device = "cpu" if args.device == "auto" else args.device
    live = {}
    for n in names:
        j = make_judge(n, overrides[n], store=store, device=device)
        spec = {"judge": j.spec(), "labelled_set": prov}

        def fn(tmp, j=j):  # calls only (True/False/None), never the items' text
            write_jsonl(tmp / "calls.jsonl", [{"harmful": c} for c in live_calls(j, rows)])
        art, hit = store.run("judge-eval", spec, [], fn)
        calls = [r["harmful"] for r in read_jsonl(art.path / "calls.jsonl")]
        live[n] = (calls, what_it_saw(n, prov["set"]))
        print(f"{n}: {'cache hit' if hit else 'judged'} {art.path}")
    res = evaluate(prov["set"], rows, live, n_boot=n_boot, seed=args.seed)
    res["provenance"] = prov
    print(format_table(res))
    if args.out:
        write_out(res, args.out)
        print(f"wrote {args.out}")
    return 0
